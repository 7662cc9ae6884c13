//! TLS over tcp with rustls (feature `tls`, on by default): configurations built from
//! [`TlsOptions`] (PEM files), and [`TlsStream`], a TCP connection with a rustls session that
//! plugs into the driver contract like a plain socket.
//!
//! # How bytes move
//! - Receiving: one `recv` pulls up to 64 KiB of ciphertext into `inbuf` (rustls itself reads
//!   at most 4 KiB per call, which would cost one syscall per 4 KiB). The records are fed to
//!   rustls from there and decrypted, and the plaintext is copied into the caller's buffer
//!   (the same one copy a plain socket read makes). `WouldBlock` means what it means on a
//!   socket: no plaintext is buffered, no ciphertext is waiting in `inbuf`, and the socket
//!   itself is empty. Between calls, data may wait in `inbuf` or in rustls (when the caller's
//!   buffer filled up): [`TlsStream::buffered_input`] says so, and readiness waits return at
//!   once then.
//! - Sending: a send first writes out records rustls still holds from before; if the socket
//!   takes them all, the new plaintext is encrypted (records of up to 16 KiB, several frames
//!   per record) and written as far as the socket takes it. What the socket did not take
//!   stays in rustls (at most one send's worth: nothing new is accepted while records are
//!   waiting), and [`TlsStream::flush_backlog`] writes it when the socket has room again.
//! - The TLS handshake runs inside the first reads and writes, so it is covered by the duct
//!   handshake's deadline. TLS 1.3 and 1.2 with the ring provider's default cipher suites.
//!
//! # Errors
//! rustls errors become `io::Error`s carrying a [`Classified`] cause, which `Error::io` turns
//! into [`ErrorKind::Tls`] (our side refused: an unknown CA, a name mismatch, a bad record),
//! or [`ErrorKind::PermissionDenied`] when the peer sent an alert refusing us (our
//! certificate is missing, unknown or bad). Neither is retryable. The alert that tells the
//! peer why is written before the error is returned.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::sys::{recv_nonblocking, send_nonblocking, wait_readable};
use super::TcpSock;
use crate::error::Classified;
use crate::options::{TlsOptions, TlsRole};
use crate::{Addr, Error, ErrorKind, Result};

/// Ciphertext read from the socket per `recv`.
const READ_CHUNK: usize = 64 * 1024;

/// The crypto provider every configuration uses (ring), built once.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

fn config_error(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tls, what.to_string())
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| config_error(format_args!("reading the {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(format_args!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        config_error(format_args!(
            "reading the private key {}: {e}",
            path.display()
        ))
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA file")? {
        roots.add(cert).map_err(|e| {
            config_error(format_args!(
                "the CA file {} holds an unusable certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The client configuration for a dialer: trusts the CA, presents the identity if any.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>> {
    if opts.role != TlsRole::Client {
        return Err(config_error(
            "a dialer needs client TLS settings (TlsOptions::client), not TlsOptions::server",
        ));
    }
    let Some(ca) = &opts.ca else {
        return Err(config_error("TlsOptions::client needs a CA file"));
    };
    let roots = Arc::new(load_roots(ca)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| config_error(format_args!("the CA file {}: {e}", ca.display())))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_webpki_verifier(verifier);
    let config = match &opts.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert, "certificate chain")?, load_key(key)?)
            .map_err(|e| {
                config_error(format_args!(
                    "the client identity {} / {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server configuration for a listener: presents its identity; with a client CA,
/// requires client certificates signed by it.
pub(crate) fn server_config(opts: &TlsOptions) -> Result<Arc<ServerConfig>> {
    if opts.role != TlsRole::Server {
        return Err(config_error(
            "a listener needs server TLS settings (TlsOptions::server), not TlsOptions::client",
        ));
    }
    let Some((cert, key)) = &opts.identity else {
        return Err(config_error(
            "TlsOptions::server needs a certificate and a key",
        ));
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &opts.ca {
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| {
                    config_error(format_args!("the client CA file {}: {e}", ca.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certs(cert, "certificate chain")?, load_key(key)?)
        .map_err(|e| {
            config_error(format_args!(
                "the server identity {} / {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the option, else `host`
/// (a DNS name or an IP address).
pub(crate) fn server_name(opts: &TlsOptions, host: &str) -> Result<ServerName<'static>> {
    let name = opts.server_name.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned()).map_err(|e| {
        config_error(format_args!(
            "{name:?} is not a valid TLS server name ({e}); set TlsOptions::server_name"
        ))
    })
}

/// Turns a rustls error into an `io::Error` whose cause says how duct classifies it.
fn tls_failure(err: &rustls::Error) -> io::Error {
    let (kind, text) = match err {
        rustls::Error::AlertReceived(alert) if refuses_us(*alert) => (
            ErrorKind::PermissionDenied,
            format!("TLS: the peer refused us: {err}"),
        ),
        _ => (ErrorKind::Tls, format!("TLS: {err}")),
    };
    io::Error::new(io::ErrorKind::InvalidData, Classified::new(kind, text))
}

/// Alerts a peer sends when it does not accept who we are (our certificate or its absence).
fn refuses_us(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// A TCP connection with a TLS session on it.
pub(crate) struct TlsStream {
    sock: TcpSock,
    state: Mutex<State>,
    /// The transport's address scheme: `tls://`.
    local: Addr,
    peer: Addr,
}

struct State {
    conn: rustls::Connection,
    /// Ciphertext received and not yet handed to rustls.
    inbuf: BytesMut,
    /// The socket reported end of stream.
    eof: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn tls_addr(a: std::io::Result<std::net::SocketAddr>) -> Addr {
    a.map_or(Addr::Unknown, Addr::Tls)
}

impl TlsStream {
    /// The client end over `sock`, verifying the server as `name`. The handshake starts with
    /// the first write.
    pub(crate) fn client(
        sock: TcpSock,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsStream> {
        let conn = ClientConnection::new(config, name)
            .map_err(|e| config_error(format_args!("starting a TLS client: {e}")))?;
        Ok(Self::new(sock, rustls::Connection::Client(conn)))
    }

    /// The server end over `sock` (an accepted connection).
    pub(crate) fn server(sock: TcpSock, config: Arc<ServerConfig>) -> Result<TlsStream> {
        let conn = rustls::ServerConnection::new(config)
            .map_err(|e| config_error(format_args!("starting a TLS server: {e}")))?;
        Ok(Self::new(sock, rustls::Connection::Server(conn)))
    }

    fn new(sock: TcpSock, conn: rustls::Connection) -> TlsStream {
        TlsStream {
            local: tls_addr(sock.local_addr()),
            peer: tls_addr(sock.peer_addr()),
            sock,
            state: Mutex::new(State {
                conn,
                inbuf: BytesMut::new(),
                eof: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn tcp(&self) -> &TcpSock {
        &self.sock
    }

    pub(crate) fn local_addr(&self) -> Addr {
        self.local.clone()
    }

    pub(crate) fn peer_addr(&self) -> Addr {
        self.peer.clone()
    }

    /// Receives plaintext into the spare capacity of `buf` (see the module docs).
    pub(crate) fn recv_into(&self, buf: &mut BytesMut, nonblocking: bool) -> io::Result<usize> {
        self.recv_with(nonblocking, |st, sock| st.drain(sock, buf, usize::MAX))
    }

    /// Receives plaintext into the spare capacity of `first`'s buffer, at most its limit, and
    /// on into that of `second`'s (see `StreamTransport::recv_into_direct`): how many bytes
    /// each got.
    pub(crate) fn recv_into_two(
        &self,
        (first, first_max): (&mut BytesMut, usize),
        (second, second_max): (&mut BytesMut, usize),
        nonblocking: bool,
    ) -> io::Result<(usize, usize)> {
        let mut got = (0, 0);
        self.recv_with(nonblocking, |st, sock| {
            // (As `duct_sys::net::recv_into_two`: on into the second once the first is full,
            // to its limit or its capacity.)
            let first_room = (first.capacity() - first.len()).min(first_max);
            let a = st.drain(sock, first, first_max)?;
            let b = if a == first_room {
                st.drain(sock, second, second_max)?
            } else {
                0
            };
            got = (a, b);
            Ok(a + b)
        })?;
        Ok(got)
    }

    /// Takes plaintext with `drain` (how many bytes it took), reading and decrypting from the
    /// socket until some came, the stream ended (`Ok(0)`) or, `nonblocking`, the socket is
    /// empty (`WouldBlock`).
    fn recv_with(
        &self,
        nonblocking: bool,
        mut drain: impl FnMut(&mut State, &TcpSock) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            let mut st = self.lock();
            let n = drain(&mut st, &self.sock)?;
            if n > 0 {
                return Ok(n);
            }
            if st.finished() {
                return Ok(0);
            }
            // Nothing decrypted and no ciphertext left: ask the socket.
            if st.inbuf.capacity() - st.inbuf.len() < READ_CHUNK {
                st.inbuf.reserve(READ_CHUNK);
            }
            match recv_nonblocking(&self.sock, &mut st.inbuf) {
                Ok(0) => st.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(st);
                    if nonblocking {
                        return Err(e);
                    }
                    wait_readable(&self.sock, None)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether plaintext or ciphertext waits in user space (the socket may be empty while
    /// a read would still return data).
    pub(crate) fn buffered_input(&self) -> bool {
        let mut st = self.lock();
        !st.inbuf.is_empty() || st.eof || st.has_plaintext()
    }

    /// Ciphertext and plaintext waiting in user space, in bytes.
    pub(crate) fn buffered_len(&self) -> usize {
        let mut st = self.lock();
        let plain = st.conn.reader().fill_buf_len();
        st.inbuf.len() + plain
    }

    /// Encrypts and sends what the socket takes (see the module docs). `WouldBlock` while
    /// records from an earlier send are still waiting for the socket.
    pub(crate) fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut st = self.lock();
        if !st.write_out(&self.sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = io::Write::write_vectored(&mut st.conn.writer(), iov)?;
        if n == 0 && iov.iter().any(|s| !s.is_empty()) {
            // rustls's buffer limit (plaintext queued during the handshake): wait for the
            // handshake's records to move.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        st.write_out(&self.sock)?;
        Ok(n)
    }

    /// Writes records rustls holds; `Ok(true)` when none is left.
    pub(crate) fn flush_backlog(&self) -> io::Result<bool> {
        self.lock().write_out(&self.sock)
    }

    /// Sends close_notify (best effort, without blocking) and shuts the socket down.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            let mut st = self.lock();
            st.conn.send_close_notify();
            let _ = st.write_out(&self.sock);
        }
        self.sock.shutdown(how)
    }

    /// Waits until a read would return something, or `deadline` passes.
    pub(crate) fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        if self.buffered_input() {
            return Ok(true);
        }
        wait_readable(&self.sock, deadline)
    }
}

/// `Reader::fill_buf` length without the borrow: how much plaintext is ready.
trait FillLen {
    fn fill_buf_len(self) -> usize;
}

impl FillLen for rustls::Reader<'_> {
    fn fill_buf_len(mut self) -> usize {
        io::BufRead::fill_buf(&mut self).map_or(0, <[u8]>::len)
    }
}

impl State {
    fn has_plaintext(&mut self) -> bool {
        self.conn.reader().fill_buf_len() > 0
    }

    /// The session can deliver nothing more: the peer closed it (close_notify) or the socket
    /// ended, and everything received was delivered.
    fn finished(&self) -> bool {
        self.eof && self.inbuf.is_empty()
    }

    /// Copies plaintext into `buf`'s spare capacity, feeding rustls from `inbuf` as needed.
    /// Returns the bytes copied; 0 when nothing is left to decrypt (or no room).
    fn drain(&mut self, sock: &TcpSock, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        let mut copied = 0;
        loop {
            let room = (buf.capacity() - buf.len()).min(max - copied);
            if room == 0 {
                return Ok(copied);
            }
            let mut reader = self.conn.reader();
            match io::BufRead::fill_buf(&mut reader) {
                Ok(chunk) if !chunk.is_empty() => {
                    let k = chunk.len().min(room);
                    buf.extend_from_slice(&chunk[..k]);
                    io::BufRead::consume(&mut reader, k);
                    copied += k;
                    continue;
                }
                // Empty chunk: the peer sent close_notify; nothing more will come.
                Ok(_) => {
                    self.eof = true;
                    self.inbuf.clear();
                    return Ok(copied);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A TCP end without close_notify (the peer process died, say): an end of
                // stream like any other; duct's own CLOSE frame says whether it was orderly.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(copied),
                Err(e) => return Err(e),
            }
            if self.inbuf.is_empty() {
                return Ok(copied);
            }
            let mut ciphertext = &self.inbuf[..];
            let fed = self.conn.read_tls(&mut ciphertext)?;
            self.inbuf.advance(fed);
            if self.inbuf.is_empty() {
                self.inbuf.clear(); // keeps the allocation for the next read
            }
            if let Err(err) = self.conn.process_new_packets() {
                // Tell the peer why (the alert rustls queued), best effort.
                let _ = self.write_out(sock);
                return Err(tls_failure(&err));
            }
            // Handshake messages, key updates: out at once.
            let _ = self.write_out(sock);
            if fed == 0 && !self.inbuf.is_empty() {
                // rustls took nothing although its plaintext was drained: cannot happen with
                // rustls 0.23; guard against spinning regardless.
                return Err(io::Error::other(
                    "TLS: the record layer stopped taking input",
                ));
            }
        }
    }

    /// Writes the records rustls holds until the socket is full. `Ok(true)`: none left.
    fn write_out(&mut self, sock: &TcpSock) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SockWriter(sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Non-blocking writes to the socket (on Unix `MSG_DONTWAIT`, no SIGPIPE).
struct SockWriter<'a>(&'a TcpSock);

impl io::Write for SockWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_nonblocking(self.0, bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
