//! TLS support for the shared test code (feature `tls`): a generated PKI (a CA and a server
//! certificate for localhost and 127.0.0.1, written as PEM files in a [`TempDir`]), the duct
//! options that use it, and a rustls session over a blocking TCP socket, so that the raw
//! (non-duct) peers of [`super::RawStream`] and [`super::RawListener`] can speak `tls://`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use duct::TlsOptions;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::{TempDir, T};

/// A CA and a server certificate it signed (for `localhost` and `127.0.0.1`), as PEM files
/// in a temp dir (removed on drop) for duct's [`TlsOptions`], and in memory for rustls.
pub struct Pki {
    dir: TempDir,
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl Pki {
    pub fn generate() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "duct conformance CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "duct conformance server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &ca).unwrap();

        let dir = TempDir::new();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
        };
        write("ca.pem", &ca.pem());
        write("server.pem", &cert.pem());
        write("server.key", &key.serialize_pem());
        Pki {
            ca: ca.der().clone(),
            server_chain: vec![cert.der().clone()],
            server_key: key.serialize_der(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// duct's settings for a listener: the server certificate and key.
    pub fn server_options(&self) -> TlsOptions {
        TlsOptions::server(self.path("server.pem"), self.path("server.key"))
    }

    /// duct's settings for a dialer: trusts the CA.
    pub fn client_options(&self) -> TlsOptions {
        TlsOptions::client(self.path("ca.pem"))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A rustls client configuration that trusts the CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A rustls server configuration with the server certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let config = ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap();
        Arc::new(config)
    }
}

/// A rustls session over a blocking TCP socket: reads and writes plaintext, and moves the
/// records itself. The TLS handshake is completed when it is made (within [`T`]), so later
/// reads and writes carry application data only.
pub struct TlsRaw {
    sock: TcpStream,
    conn: rustls::Connection,
}

impl TlsRaw {
    /// Connects to `tls://host:port` (`rest` is `host:port`) as a client of `pki`.
    pub fn connect(rest: &str, pki: &Pki) -> io::Result<TlsRaw> {
        let sa: SocketAddr = rest.parse().map_err(io::Error::other)?;
        let sock = TcpStream::connect_timeout(&sa, T)?;
        let name = ServerName::from(sa.ip());
        let conn = ClientConnection::new(pki.client_config(), name).map_err(io::Error::other)?;
        TlsRaw::handshake(sock, conn.into())
    }

    /// Serves an accepted socket as the server of `pki`.
    pub fn accept(sock: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsRaw> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        TlsRaw::handshake(sock, conn.into())
    }

    fn handshake(sock: TcpStream, conn: rustls::Connection) -> io::Result<TlsRaw> {
        sock.set_read_timeout(Some(T))?;
        sock.set_write_timeout(Some(T))?;
        let mut s = TlsRaw { sock, conn };
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        s.write_records()?;
        sock_timeouts_off(&s.sock)?;
        Ok(s)
    }

    /// Writes every record rustls holds (blocking).
    fn write_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    /// Sends close_notify first for a write shutdown.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.conn.send_close_notify();
            self.write_records()?;
        }
        self.sock.shutdown(how)
    }
}

fn sock_timeouts_off(sock: &TcpStream) -> io::Result<()> {
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)
}

impl Read for TlsRaw {
    /// Plaintext; `Ok(0)` at the peer's close_notify or at a TCP end without one (a raw peer
    /// treats both as end of stream, as duct does). A read timeout set on the socket returns
    /// `WouldBlock`/`TimedOut` with the session intact.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.conn.read_tls(&mut self.sock)?;
            let processed = self.conn.process_new_packets();
            // Alerts, key updates: out at once (best effort when the session failed).
            let written = self.write_records();
            processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            written?;
        }
    }
}

impl Write for TlsRaw {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.write_records()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_records()
    }
}

/// A raw TCP listener whose accepted streams are served as TLS servers of a [`Pki`].
pub struct TlsRawListener {
    pub listener: TcpListener,
    pub config: Arc<ServerConfig>,
}

impl TlsRawListener {
    pub fn accept(&self) -> io::Result<TlsRaw> {
        let (sock, _) = self.listener.accept()?;
        TlsRaw::accept(sock, self.config.clone())
    }
}
