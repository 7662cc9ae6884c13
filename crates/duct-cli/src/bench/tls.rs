//! TLS for `duct bench --transport tls`: throwaway certificates made at run time, duct's
//! [`TlsOptions`] for them, and the raw baseline's rustls side.
//!
//! - [`BenchCerts`]: a CA and a server certificate for `localhost` and 127.0.0.1 signed by
//!   it (ECDSA P-256, rcgen with ring), written as PEM files into a fresh private temporary
//!   directory that is removed when the value is dropped. Nothing is asked of the user.
//! - duct listens on `tls://127.0.0.1:0` with `TlsOptions::server(cert, key)`; the peer
//!   dials with `TlsOptions::client(ca).server_name("localhost")` ([`client_options`]).
//! - The raw baseline is the tcp baseline (same framing, buffering and batching, see
//!   [`crate::bench::raw`]) over a rustls session without duct: TLS 1.3, the ring provider,
//!   the same certificates and server name, TCP_NODELAY. The session is a
//!   `rustls::StreamOwned` over the socket read through a 64 KiB buffer ([`BufSock`]), so
//!   that rustls, which asks for about 4 KiB of records per read, pays one `recv` per
//!   64 KiB as duct's TLS does. The handshake completes before the run starts
//!   ([`connect_tls`], [`RawTlsListener::accept`]), as duct's does in `dial`/`accept`.
//! - [`duct_has_tls`]: whether this build of duct speaks TLS at all, so that `all` can
//!   leave tls out quietly where it does not.

use std::fmt;
use std::fs;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duct::{DialOptions, ListenOptions, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, StreamOwned,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::bench::spec::{Job, Transport};
use crate::error::{bail, Context, Result};

/// The name in the server certificate that both systems verify (it also holds 127.0.0.1).
pub const SERVER_NAME: &str = "localhost";

/// Read buffer of the socket under a raw TLS session (ciphertext), as duct's TLS reads.
const SOCKET_READ_BUFFER: usize = 64 * 1024;

/// The longest a raw TLS handshake may take (both ends on this machine: milliseconds).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA and a server certificate signed by it, as PEM files in a private temporary
/// directory, removed on drop.
pub struct BenchCerts {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl BenchCerts {
    /// Generates the CA and the server certificate (for [`SERVER_NAME`] and 127.0.0.1)
    /// into a fresh directory under the system's temporary directory.
    pub fn generate() -> Result<BenchCerts> {
        let dir = fresh_private_dir()?;
        // From here on, dropping `certs` removes the directory, whatever fails next.
        let certs = BenchCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        let (ca_pem, cert_pem, key_pem) = generate_pems().context("tls: making certificates")?;
        write_file(&certs.ca, &ca_pem)?;
        write_file(&certs.cert, &cert_pem)?;
        write_file(&certs.key, &key_pem)?;
        Ok(certs)
    }

    /// The directory that holds the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM): what a client trusts.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The server certificate (PEM), signed by the CA.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The server's private key (PEM).
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// duct's listener settings: `TlsOptions::server(cert, key)`.
    pub fn server_options(&self) -> TlsOptions {
        TlsOptions::server(&self.cert, &self.key)
    }
}

impl Drop for BenchCerts {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for BenchCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BenchCerts")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What the measuring end of a run with tls holds: the certificates, the raw server's
/// configuration (built once), and the CA's path as job lines carry it.
#[derive(Debug)]
pub struct TlsSetup {
    certs: BenchCerts,
    raw_server: Arc<ServerConfig>,
    ca: String,
}

impl TlsSetup {
    /// Takes `certs` for the run; an error if the CA's path is not UTF-8 (a job line could
    /// not carry it) or the raw server cannot load the certificate and key.
    pub fn new(certs: BenchCerts) -> Result<TlsSetup> {
        let Some(ca) = certs.ca().to_str().map(str::to_string) else {
            bail!(
                "tls: the temporary directory {} is not a UTF-8 path",
                certs.dir().display()
            );
        };
        let raw_server = raw_server_config(certs.cert(), certs.key())?;
        Ok(TlsSetup {
            certs,
            raw_server,
            ca,
        })
    }

    /// The certificates.
    pub fn certs(&self) -> &BenchCerts {
        &self.certs
    }

    /// The raw server's configuration.
    pub fn raw_server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.raw_server)
    }

    /// The CA's path, for [`crate::bench::spec::Job::tls_ca`].
    pub fn ca_for_job(&self) -> &str {
        &self.ca
    }
}

/// `options` with the run's TLS server settings (`TlsOptions::server(cert, key)`) if `job`
/// is tls: what the measuring end listens with.
pub fn listen_tls(options: ListenOptions, job: &Job, tls: Option<&TlsSetup>) -> ListenOptions {
    match tls {
        Some(tls) if job.transport == Transport::Tls => options.tls(tls.certs().server_options()),
        _ => options,
    }
}

/// `options` with the client TLS settings of `job` ([`client_options`] for its CA) if it is
/// tls: what the peer dials with.
pub fn dial_tls(options: DialOptions, job: &Job) -> DialOptions {
    match &job.tls_ca {
        Some(ca) => options.tls(client_options(Path::new(ca))),
        None => options,
    }
}

/// duct's dialer settings: trust the CA in `ca`, verify the server as [`SERVER_NAME`].
pub fn client_options(ca: &Path) -> TlsOptions {
    TlsOptions::client(ca).server_name(SERVER_NAME)
}

/// A new directory `duct-bench-tls-<pid>-<n>-<ns>` under the temporary directory, readable
/// by this user only.
fn fresh_private_dir() -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "duct-bench-tls-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&dir)
        .with_context(|| format!("tls: creating {}", dir.display()))?;
    Ok(dir)
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("tls: writing {}", path.display()))
}

/// The CA certificate, the server certificate and the server key, as PEM.
fn generate_pems() -> Result<(String, String, String), rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "duct bench throwaway CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![SERVER_NAME.to_string(), "127.0.0.1".into()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Whether this build of duct speaks TLS: `Ok(true)` if it listens on `tls://127.0.0.1:0`
/// with `certs`, `Ok(false)` if it answers [`duct::ErrorKind::Unsupported`]; any other
/// failure is an error.
pub fn duct_has_tls(certs: &BenchCerts) -> Result<bool> {
    let options = duct::ListenOptions::default().tls(certs.server_options());
    match duct::listen("tls://127.0.0.1:0", options) {
        Ok(listener) => {
            drop(listener);
            Ok(true)
        }
        Err(e) if e.kind() == duct::ErrorKind::Unsupported => Ok(false),
        Err(e) => Err(e).context("duct: listen tls://127.0.0.1:0"),
    }
}

// ---------------------------------------------------------------------------------------------
// The raw baseline's rustls side
// ---------------------------------------------------------------------------------------------

/// The crypto provider of every raw configuration: ring, as duct's.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls: reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("tls: no certificate in {}", path.display());
    }
    Ok(certs)
}

/// The raw server's configuration: TLS 1.3, ring, no client certificates, the certificate
/// chain and key from these PEM files.
pub fn raw_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("tls: reading the key {}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("tls: server configuration")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls: server certificate and key")?;
    Ok(Arc::new(config))
}

/// The raw client's configuration: TLS 1.3, ring, trusting the CA in the PEM file `ca`.
pub fn raw_client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("tls: the CA in {}", ca.display()))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("tls: client configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TCP socket under a raw TLS session. Reads go through a 64 KiB buffer, so that rustls,
/// which reads about 4 KiB of records at a time, costs one `recv` per 64 KiB; writes go
/// straight to the socket (rustls hands over whole records, vectored).
#[derive(Debug)]
pub struct BufSock(BufReader<TcpStream>);

impl BufSock {
    fn new(sock: TcpStream) -> BufSock {
        BufSock(BufReader::with_capacity(SOCKET_READ_BUFFER, sock))
    }

    fn tcp(&self) -> &TcpStream {
        self.0.get_ref()
    }
}

impl Read for BufSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for BufSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One end of a raw TLS session after its handshake.
enum Session {
    Client(StreamOwned<ClientConnection, BufSock>),
    Server(StreamOwned<ServerConnection, BufSock>),
}

/// A raw TLS connection, handshake done. Clones share the one session (behind a mutex), so
/// that the baseline's `BufReader` and `BufWriter` can each hold one, as they hold two
/// handles of a tcp socket; one thread uses both, so the lock is never contended (tens of
/// ns per call, next to the µs of the syscall that most calls make). duct's own TLS stream
/// keeps its rustls session behind a mutex too.
#[derive(Clone)]
pub struct TlsStream(Arc<Mutex<Session>>);

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsStream")
    }
}

impl TlsStream {
    fn lock(&self) -> MutexGuard<'_, Session> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Session::Client(s) => s.read(buf),
            Session::Server(s) => s.read(buf),
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.lock() {
            Session::Client(s) => s.write(buf),
            Session::Server(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut *self.lock() {
            Session::Client(s) => s.write_vectored(bufs),
            Session::Server(s) => s.write_vectored(bufs),
        }
    }

    /// Writes out whatever records rustls still holds, and reports an error that a write
    /// (which rustls lets pass silently) ran into.
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.lock() {
            Session::Client(s) => s.flush(),
            Session::Server(s) => s.flush(),
        }
    }
}

/// Drives the handshake of `conn` over `sock` to its end, within [`HANDSHAKE_TIMEOUT`].
fn handshake<D>(conn: &mut ConnectionCommon<D>, sock: &mut BufSock) -> io::Result<()> {
    let tcp = sock.tcp();
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    let tcp = sock.tcp();
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)
}

/// Connects to a raw TLS listener at `addr` (`tls://127.0.0.1:PORT`), verifying the
/// server as [`SERVER_NAME`] with `config`, and completes the handshake.
pub fn connect_tls(addr: &str, config: Arc<ClientConfig>) -> Result<TlsStream> {
    let Some(hostport) = addr.strip_prefix("tls://") else {
        bail!("address {addr:?} is not a tls:// address");
    };
    let tcp = TcpStream::connect(hostport).with_context(|| format!("raw: connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME).context("tls: server name")?;
    let mut conn = ClientConnection::new(config, name).context("tls: client session")?;
    let mut sock = BufSock::new(tcp);
    handshake(&mut conn, &mut sock).with_context(|| format!("raw: TLS handshake with {addr}"))?;
    Ok(TlsStream(Arc::new(Mutex::new(Session::Client(
        StreamOwned::new(conn, sock),
    )))))
}

/// A raw TLS listener: TCP on 127.0.0.1, port picked by the kernel, and a server
/// configuration.
pub struct RawTlsListener {
    tcp: TcpListener,
    config: Arc<ServerConfig>,
}

impl RawTlsListener {
    /// Binds 127.0.0.1:0; returns the listener and its address as `tls://127.0.0.1:PORT`.
    pub fn bind(config: Arc<ServerConfig>) -> Result<(RawTlsListener, String)> {
        let tcp = TcpListener::bind("127.0.0.1:0").context("raw tls: bind 127.0.0.1:0")?;
        let addr = format!("tls://{}", tcp.local_addr()?);
        Ok((RawTlsListener { tcp, config }, addr))
    }

    /// The TCP listener, for the accept loop.
    pub fn tcp(&self) -> &TcpListener {
        &self.tcp
    }

    /// Completes the TLS handshake on a TCP connection accepted from [`Self::tcp`]
    /// (blocking, TCP_NODELAY already set).
    pub fn accept(&self, tcp: TcpStream) -> Result<TlsStream> {
        let started = Instant::now();
        let mut conn =
            ServerConnection::new(Arc::clone(&self.config)).context("tls: server session")?;
        let mut sock = BufSock::new(tcp);
        handshake(&mut conn, &mut sock).with_context(|| {
            format!(
                "raw: TLS handshake (after {:.1} ms)",
                started.elapsed().as_secs_f64() * 1e3
            )
        })?;
        Ok(TlsStream(Arc::new(Mutex::new(Session::Server(
            StreamOwned::new(conn, sock),
        )))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_and_removed() {
        let certs = BenchCerts::generate().unwrap();
        let dir = certs.dir().to_path_buf();
        for path in [certs.ca(), certs.cert(), certs.key()] {
            let text = fs::read_to_string(path).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        assert_eq!(
            certs.server_options(),
            TlsOptions::server(certs.cert(), certs.key())
        );
        assert_eq!(
            client_options(certs.ca()),
            TlsOptions::client(certs.ca()).server_name("localhost")
        );
        // Both configurations accept what was made.
        raw_server_config(certs.cert(), certs.key()).unwrap();
        raw_client_config(certs.ca()).unwrap();
        drop(certs);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn two_sets_of_certificates_do_not_share_a_directory() {
        let a = BenchCerts::generate().unwrap();
        let b = BenchCerts::generate().unwrap();
        assert_ne!(a.dir(), b.dir());
        assert_ne!(
            fs::read(a.ca()).unwrap(),
            fs::read(b.ca()).unwrap(),
            "each run has its own CA"
        );
    }

    #[test]
    fn a_client_that_trusts_another_ca_is_refused() {
        let certs = BenchCerts::generate().unwrap();
        let other = BenchCerts::generate().unwrap();
        let (listener, addr) =
            RawTlsListener::bind(raw_server_config(certs.cert(), certs.key()).unwrap()).unwrap();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.tcp().accept().unwrap();
            listener.accept(tcp).map(drop)
        });
        let err = connect_tls(&addr, raw_client_config(other.ca()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("handshake"), "{err}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn missing_or_empty_files_are_errors() {
        let certs = BenchCerts::generate().unwrap();
        let empty = certs.dir().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let err = raw_client_config(&empty).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(raw_client_config(&certs.dir().join("nope.pem")).is_err());
        assert!(raw_server_config(certs.cert(), &empty).is_err());
    }

    #[test]
    fn probing_duct_for_tls_gives_an_answer() {
        // false before duct's TLS lands, true after: never an error with good certificates.
        let certs = BenchCerts::generate().unwrap();
        duct_has_tls(&certs).unwrap();
    }
}
