//! Transports: opening, accepting and naming byte streams (tcp, Unix domain sockets, Windows
//! named pipes).
//!
//! A transport moves bytes and knows nothing of the protocol: framing, handshakes, channels
//! and timers belong to duct-proto and the driver. This module owns the platform side of
//! connection setup: resolving and trying addresses within a deadline, socket options
//! (`TCP_NODELAY`), Unix socket files (taking over stale ones, removing our own on drop),
//! mapping OS errors to duct errors that name the address, and reporting addresses as
//! [`Addr`].
//!
//! [`Stream`] and [`RawListener`] are thin enums over the std socket types, so the driver can
//! read and write them through their fds with rustix and register them with a poller. Streams
//! come back in blocking mode on Unix (single calls are made non-blocking with
//! `MSG_DONTWAIT`); on Windows, tcp sockets are non-blocking from the start, since Winsock
//! has no such flag.
//!
//! The driver contract (`crate::driver::StreamTransport`) is implemented once per OS:
//! `unix.rs` (tcp, uds, tls, shm) and `windows.rs` (tcp, tls, pipe). Each also defines
//! [`TcpSock`] and [`TcpListenSock`], the tcp sockets as the transports hold them: the std
//! types on Unix; on Windows, the std types with the watch that registers them with the
//! reactor.
//!
//! `tls://` (feature `tls`) is tcp underneath: [`connect`] and [`RawListener::bind`] open
//! the TCP side, and [`tls`] wraps the stream in a rustls session ([`Stream::Tls`]).
//!
//! `shm://` (Linux) is a Unix socket for the rendezvous and a shared segment for the frames
//! ([`shm`]); [`Stream::Shm`] hands the driver whole frames (`FrameIo`) instead of bytes.
//!
//! `pipe://` (Windows) is a named pipe, `\\.\pipe\NAME` (`pipe.rs`): a byte stream like uds,
//! driven through mio's overlapped `NamedPipe` (`Stream::Pipe`). Elsewhere [`connect`] and
//! [`RawListener::bind`] refuse it with [`ErrorKind::Unsupported`]; on Windows, `uds://` and
//! `shm://` are refused the same way. Each message names the platform.

#[cfg(windows)]
mod pipe;
#[cfg(duct_shm)]
pub(crate) mod shm;
mod tcp;
#[cfg(feature = "tls")]
pub(crate) mod tls;
#[cfg(unix)]
mod uds;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

// The platform's implementation of the driver contract, under one name.
#[cfg(unix)]
use unix as sys;
#[cfg(windows)]
use windows as sys;

pub(crate) use sys::{TcpListenSock, TcpSock};

use std::io;
#[cfg(test)]
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::addr::{Addr, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::options::PeerCredentials;

/// The longest timeout honoured as such; longer ones (up to `Duration::MAX`) are cut to it
/// so that deadline arithmetic cannot overflow. A year is "forever" for a connect.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A connected byte stream of any transport, in blocking mode (single calls are made
/// non-blocking with `MSG_DONTWAIT` where needed).
///
/// Read and write it with [`Read`]/[`Write`] (also implemented for `&Stream`, so a reader
/// and a writer can share one stream).
#[derive(Debug)]
pub(crate) enum Stream {
    /// A TCP connection, with `TCP_NODELAY` set.
    Tcp(TcpSock),
    /// A Unix domain socket connection.
    #[cfg(unix)]
    Unix(UnixStream),
    /// A TLS session over a TCP connection.
    #[cfg(feature = "tls")]
    Tls(Box<tls::TlsStream>),
    /// A shared-memory connection (frames in a segment, a Unix socket beside it).
    #[cfg(duct_shm)]
    Shm(Box<shm::ShmStream>),
    /// A Windows named pipe (either end).
    #[cfg(windows)]
    Pipe(pipe::PipeStream),
}

impl Stream {
    /// The transport's name as logs and metrics give it (the address scheme): `tcp`, `tls`,
    /// `uds`, `shm` or `pipe`.
    pub(crate) fn transport_name(&self) -> &'static str {
        match self {
            Stream::Tcp(_) => "tcp",
            #[cfg(unix)]
            Stream::Unix(_) => "uds",
            #[cfg(feature = "tls")]
            Stream::Tls(_) => "tls",
            #[cfg(duct_shm)]
            Stream::Shm(_) => "shm",
            #[cfg(windows)]
            Stream::Pipe(_) => "pipe",
        }
    }

    /// This end's address; [`Addr::Unknown`] when the OS cannot say or the socket is unnamed
    /// (the dialing end of a Unix socket).
    pub(crate) fn local_addr(&self) -> Addr {
        match self {
            Stream::Tcp(s) => s.local_addr().map_or(Addr::Unknown, Addr::Tcp),
            #[cfg(unix)]
            Stream::Unix(s) => s
                .local_addr()
                .map_or(Addr::Unknown, |a| uds::unix_addr_to_addr(&a)),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.local_addr(),
            #[cfg(duct_shm)]
            Stream::Shm(s) => s.local_addr(),
            #[cfg(windows)]
            Stream::Pipe(s) => s.addr(),
        }
    }

    /// The other end's address; [`Addr::Unknown`] when the OS cannot say (for example after
    /// the connection was reset) or the peer's socket is unnamed (an accepted Unix socket).
    pub(crate) fn peer_addr(&self) -> Addr {
        match self {
            Stream::Tcp(s) => s.peer_addr().map_or(Addr::Unknown, Addr::Tcp),
            #[cfg(unix)]
            Stream::Unix(s) => s
                .peer_addr()
                .map_or(Addr::Unknown, |a| uds::unix_addr_to_addr(&a)),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.peer_addr(),
            #[cfg(duct_shm)]
            Stream::Shm(s) => s.peer_addr(),
            #[cfg(windows)]
            Stream::Pipe(s) => s.addr(),
        }
    }

    /// The largest frame payload this side accepts on this stream: `user` (the option), or
    /// the transport's default (64 KiB; on shm the largest pool slot, which also caps `user`).
    pub(crate) fn frame_limit(&self, user: Option<u32>) -> u32 {
        #[cfg(duct_shm)]
        if let Stream::Shm(s) = self {
            let slot = s.max_payload();
            return user.map_or(slot, |u| u.min(slot));
        }
        user.unwrap_or(crate::options::DEFAULT_MAX_FRAME_PAYLOAD)
    }

    /// Applies the pipe's spin setting (shm: how long a blocked receive spins before it
    /// parks; see `DialOptions::spin`). Other transports have nothing to set.
    pub(crate) fn set_spin(&self, spin: Option<std::time::Duration>) {
        #[cfg(duct_shm)]
        if let Stream::Shm(s) = self {
            s.set_spin(spin.unwrap_or(crate::options::DEFAULT_SHM_SPIN));
        }
        let _ = spin;
    }

    /// Sets TCP keepalive from the heartbeat settings (probes after `interval × misses` of
    /// idleness, then every `interval`, `misses` of them), as a second line of defence behind
    /// duct's own heartbeats. Other transports have nothing to set.
    pub(crate) fn set_keepalive(&self, hb: &crate::options::Heartbeat) -> io::Result<()> {
        let s = match self {
            Stream::Tcp(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp(),
            #[cfg(unix)]
            Stream::Unix(_) => return Ok(()),
            #[cfg(duct_shm)]
            Stream::Shm(_) => return Ok(()),
            #[cfg(windows)]
            Stream::Pipe(_) => return Ok(()),
        };
        if !hb.enabled() {
            return Ok(());
        }
        let ka = socket2::TcpKeepalive::new()
            .with_time(hb.silence_timeout().max(std::time::Duration::from_secs(1)))
            .with_interval(hb.interval.max(std::time::Duration::from_secs(1)));
        #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
        let ka = ka.with_retries(hb.misses.max(1));
        socket2::SockRef::from(s).set_tcp_keepalive(&ka)
    }

    /// Shuts down the read half, the write half or both (the peer reads EOF after a write
    /// shutdown). Fails with `NotConnected` if the connection is already gone, which callers
    /// closing a pipe can ignore. A named pipe has no half-close: shutting its write half
    /// down shuts it down altogether.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(how),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.shutdown(how),
            #[cfg(duct_shm)]
            Stream::Shm(s) => {
                if how == Shutdown::Read {
                    s.shutdown_read();
                } else {
                    s.shutdown();
                }
                Ok(())
            }
            #[cfg(windows)]
            Stream::Pipe(s) => {
                if how == Shutdown::Read {
                    s.shutdown_read();
                } else {
                    s.shutdown();
                }
                Ok(())
            }
        }
    }

    /// The peer process's credentials as the kernel recorded them at connect time: Unix
    /// sockets (and shm's control socket) on Linux, Android and macOS; `None` elsewhere, on
    /// tcp and on named pipes.
    pub(crate) fn peer_credentials(&self) -> Option<PeerCredentials> {
        match self {
            Stream::Tcp(_) => None,
            #[cfg(unix)]
            Stream::Unix(s) => uds::peer_credentials(s),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => None,
            #[cfg(duct_shm)]
            Stream::Shm(s) => s.peer_credentials(),
            #[cfg(windows)]
            Stream::Pipe(_) => None,
        }
    }
}

// Tests read and write streams directly; the driver goes through `StreamTransport`.
#[cfg(test)]
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => (&*s).read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(duct_shm)]
            Stream::Shm(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(windows)]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).read_vectored(bufs),
            #[cfg(unix)]
            Stream::Unix(s) => (&*s).read_vectored(bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(duct_shm)]
            Stream::Shm(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(windows)]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

// Tests read and write streams directly; the driver goes through `StreamTransport`.
#[cfg(test)]
impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

// Tests read and write streams directly; the driver goes through `StreamTransport`.
#[cfg(test)]
impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => (&*s).write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(duct_shm)]
            Stream::Shm(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(windows)]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&*s).write_vectored(bufs),
            #[cfg(unix)]
            Stream::Unix(s) => (&*s).write_vectored(bufs),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(duct_shm)]
            Stream::Shm(_) => Err(io::ErrorKind::Unsupported.into()),
            #[cfg(windows)]
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Sockets have no user-space buffer to flush.
        Ok(())
    }
}

// Tests read and write streams directly; the driver goes through `StreamTransport`.
#[cfg(test)]
impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp().as_fd(),
            #[cfg(duct_shm)]
            Stream::Shm(s) => s.ctl().as_fd(),
        }
    }
}

/// Connects to `ep` within `timeout` (name resolution included), returning a blocking
/// stream.
///
/// - tcp: the name resolves to one or more addresses, tried in turn, each with an equal
///   share of the time left; the first that connects wins. `TCP_NODELAY` is set.
/// - uds (path or, on Linux, abstract name): a listener whose queue is full is retried until
///   the deadline.
/// - tls: tcp (the caller starts the TLS session: [`secure_client`]).
/// - shm: the rendezvous socket, then the segment the listener passes (within `timeout`).
/// - pipe (Windows; elsewhere [`ErrorKind::Unsupported`]): the client end of the named pipe;
///   while every instance is busy, waits for a free one until the deadline.
///
/// Errors name the address: [`ErrorKind::ConnectionRefused`] when nobody listens (for uds,
/// also when the socket file does not exist; for pipe, when no pipe has the name),
/// [`ErrorKind::TimedOut`] when the deadline
/// passes (a zero `timeout` fails at once), [`ErrorKind::InvalidAddress`] when the name
/// does not resolve.
pub(crate) fn connect(ep: &Endpoint, timeout: Duration) -> Result<Stream> {
    let timeout = timeout.min(MAX_TIMEOUT);
    if timeout.is_zero() {
        return Err(Error::new(
            ErrorKind::TimedOut,
            format!("connecting to {ep}: the timeout is zero"),
        ));
    }
    let stream = match ep {
        Endpoint::Tcp { host, port } => tcp_stream(ep, tcp::connect(ep, host, *port, timeout)?),
        #[cfg(unix)]
        Endpoint::Uds(path) => uds::connect_path(ep, path, timeout).map(Stream::Unix),
        #[cfg(unix)]
        Endpoint::UdsAbstract(name) => uds::connect_abstract(ep, name, timeout).map(Stream::Unix),
        #[cfg(not(unix))]
        Endpoint::Uds(_) | Endpoint::UdsAbstract(_) => Err(at(ep, uds_unavailable())),
        #[cfg(feature = "tls")]
        Endpoint::Tls { host, port } => tcp_stream(ep, tcp::connect(ep, host, *port, timeout)?),
        #[cfg(not(feature = "tls"))]
        Endpoint::Tls { .. } => Err(at(ep, tls_feature_off())),
        #[cfg(duct_shm)]
        Endpoint::Shm(name) => {
            let deadline = std::time::Instant::now() + timeout;
            let ctl =
                shm::connect_rendezvous(ep, name, timeout).map_err(|e| shm_not_listening(ep, e))?;
            shm::ShmStream::client(ctl, ep, name, deadline).map(|s| Stream::Shm(Box::new(s)))
        }
        #[cfg(not(duct_shm))]
        Endpoint::Shm(_) => Err(at(ep, shm_unavailable())),
        #[cfg(windows)]
        Endpoint::Pipe(name) => pipe::connect(ep, name, timeout).map(Stream::Pipe),
        #[cfg(not(windows))]
        Endpoint::Pipe(_) => Err(at(ep, pipe_unsupported())),
    }?;
    #[cfg(unix)]
    no_sigpipe(&stream);
    Ok(stream)
}

/// A connected tcp socket as the transports hold it (non-blocking on Windows).
fn tcp_stream(ep: &Endpoint, stream: std::net::TcpStream) -> Result<Stream> {
    sys::tcp_sock(stream)
        .map(Stream::Tcp)
        .map_err(|e| Error::io(e, format_args!("connecting to {ep}")))
}

/// `MSG_NOSIGNAL` for sends where the platform has it; on macOS the sockets carry
/// `SO_NOSIGPIPE` instead ([`no_sigpipe`]), so that a write to a vanished peer is `EPIPE`,
/// never a `SIGPIPE` that would kill a process that did not ignore it.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) const NO_SIGNAL: rustix::net::SendFlags = rustix::net::SendFlags::NOSIGNAL;
#[cfg(all(
    unix,
    not(any(target_os = "linux", target_os = "android", target_os = "freebsd"))
))]
pub(crate) const NO_SIGNAL: rustix::net::SendFlags = rustix::net::SendFlags::empty();

/// Sets `SO_NOSIGPIPE` on a socket where sends cannot say `MSG_NOSIGNAL` (macOS); nothing
/// elsewhere.
#[cfg(unix)]
pub(crate) fn no_sigpipe<S: AsFd>(sock: &S) {
    #[cfg(target_vendor = "apple")]
    if let Err(err) = socket2::SockRef::from(sock).set_nosigpipe(true) {
        tracing::debug!(%err, "could not set SO_NOSIGPIPE");
    }
    let _ = sock;
}

/// Connecting to a shm rendezvous socket failed: say so in the terms of `shm://`.
#[cfg(duct_shm)]
fn shm_not_listening(ep: &Endpoint, e: Error) -> Error {
    if e.kind() == ErrorKind::ConnectionRefused {
        Error::new(
            ErrorKind::ConnectionRefused,
            format!("connecting to {ep}: nothing listens on this shared-memory name"),
        )
    } else {
        e
    }
}

/// A dialer's TLS settings, ready to start sessions: the configuration and the name the
/// server's certificate must carry.
#[cfg(feature = "tls")]
pub(crate) struct ClientTls {
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}
/// A dialer's TLS settings (this build has no TLS: never made).
#[cfg(not(feature = "tls"))]
pub(crate) enum ClientTls {}

/// A listener's TLS settings, ready to start sessions.
#[cfg(feature = "tls")]
pub(crate) struct ServerTls(std::sync::Arc<rustls::ServerConfig>);
/// A listener's TLS settings (this build has no TLS: never made).
#[cfg(not(feature = "tls"))]
pub(crate) enum ServerTls {}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

/// Whether `ep` with `opts` asks for TLS: the host and the settings, or `None`. `tls://`
/// requires settings (`setter` says which option gives them); tcp:// takes them; other
/// transports refuse them.
fn tls_wanted<'a>(
    ep: &'a Endpoint,
    opts: Option<&'a crate::TlsOptions>,
    setter: &str,
) -> Result<Option<(&'a str, &'a crate::TlsOptions)>> {
    match (ep, opts) {
        (Endpoint::Tls { .. }, None) => Err(at(
            ep,
            Error::new(
                ErrorKind::Tls,
                format!("a tls:// address needs TLS settings: {setter}"),
            ),
        )),
        (_, None) => Ok(None),
        (Endpoint::Tls { host, .. } | Endpoint::Tcp { host, .. }, Some(opts)) => {
            Ok(Some((host.as_str(), opts)))
        }
        (_, Some(_)) => Err(at(ep, tls_needs_tcp())),
    }
}

/// Checks the TLS settings of a dial to `ep` and loads them (certificates and keys are read
/// here, once per dial): `None` when the dial is not TLS. TLS is on for `tls://` (which
/// requires settings) and for `tcp://` with settings; other transports refuse them.
pub(crate) fn client_tls(
    ep: &Endpoint,
    opts: Option<&crate::TlsOptions>,
) -> Result<Option<ClientTls>> {
    let Some((host, opts)) = tls_wanted(ep, opts, "DialOptions::tls(TlsOptions::client(ca_pem))")?
    else {
        return Ok(None);
    };
    #[cfg(feature = "tls")]
    {
        let config = tls::client_config(opts).map_err(|e| at(ep, e))?;
        let name = tls::server_name(opts, host).map_err(|e| at(ep, e))?;
        Ok(Some(ClientTls { config, name }))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (host, opts);
        Err(at(ep, tls_feature_off()))
    }
}

/// Checks and loads a listener's TLS settings, like [`client_tls`].
pub(crate) fn server_tls(
    ep: &Endpoint,
    opts: Option<&crate::TlsOptions>,
) -> Result<Option<ServerTls>> {
    let Some((_, opts)) = tls_wanted(
        ep,
        opts,
        "ListenOptions::tls(TlsOptions::server(cert_pem, key_pem))",
    )?
    else {
        return Ok(None);
    };
    #[cfg(feature = "tls")]
    {
        tls::server_config(opts)
            .map(|c| Some(ServerTls(c)))
            .map_err(|e| at(ep, e))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = opts;
        Err(at(ep, tls_feature_off()))
    }
}

/// Starts a TLS client session on a connected tcp stream (the handshake runs with the first
/// reads and writes).
pub(crate) fn secure_client(stream: Stream, tls: Option<&ClientTls>) -> Result<Stream> {
    let Some(tls) = tls else { return Ok(stream) };
    #[cfg(feature = "tls")]
    {
        let Stream::Tcp(sock) = stream else {
            return Err(tls_needs_tcp());
        };
        tls::TlsStream::client(sock, std::sync::Arc::clone(&tls.config), tls.name.clone())
            .map(|s| Stream::Tls(Box::new(s)))
    }
    #[cfg(not(feature = "tls"))]
    match *tls {}
}

/// Starts a TLS server session on an accepted tcp stream.
pub(crate) fn secure_server(stream: Stream, tls: Option<&ServerTls>) -> Result<Stream> {
    let Some(tls) = tls else { return Ok(stream) };
    #[cfg(feature = "tls")]
    {
        let Stream::Tcp(sock) = stream else {
            return Err(tls_needs_tcp());
        };
        tls::TlsStream::server(sock, std::sync::Arc::clone(&tls.0))
            .map(|s| Stream::Tls(Box::new(s)))
    }
    #[cfg(not(feature = "tls"))]
    match *tls {}
}

/// A listener's address as dialers should write it: `tls://` when it serves TLS.
pub(crate) fn shown_addr(addr: Addr, tls: bool) -> Addr {
    match addr {
        Addr::Tcp(a) if tls => Addr::Tls(a),
        other => other,
    }
}

fn tls_needs_tcp() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "TLS runs over tcp only (tls:// or tcp:// with TLS settings)",
    )
}

#[cfg(not(feature = "tls"))]
fn tls_feature_off() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "tls:// needs duct built with its `tls` feature (on by default)",
    )
}

/// Prefixes an error with the address it concerns, as the user wrote it.
fn at(ep: &Endpoint, e: Error) -> Error {
    Error::new(e.kind(), format!("{ep}: {e}"))
}

/// The error for `pipe://` off Windows, the only platform with named pipes.
#[cfg(not(windows))]
fn pipe_unsupported() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "pipe:// (named pipes) is only available on Windows, not on {}",
            std::env::consts::OS
        ),
    )
}

#[cfg(not(unix))]
fn uds_unavailable() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "uds:// (Unix domain sockets) is only available on Unix platforms, not on {}",
            std::env::consts::OS
        ),
    )
}

/// The error for `shm://` where it is not implemented (it is on Linux and macOS).
#[cfg(not(duct_shm))]
fn shm_unavailable() -> Error {
    Error::unsupported(&format!("shm:// on {}", std::env::consts::OS))
}

/// A listening tcp socket as the transports hold it.
fn tcp_listener(listener: std::net::TcpListener) -> RawListener {
    RawListener::Tcp(sys::tcp_listen_sock(listener))
}

/// A bound, listening socket of any transport. Dropping it stops listening; a Unix socket
/// file it created is removed then (if it is still ours).
#[derive(Debug)]
pub(crate) enum RawListener {
    /// A TCP listener.
    Tcp(TcpListenSock),
    /// A Unix domain socket listener, on a path or an abstract name.
    #[cfg(unix)]
    Unix(uds::UnixSocketListener),
    /// A shm rendezvous socket (abstract `duct-shm/NAME`), and the shm name.
    #[cfg(duct_shm)]
    Shm(uds::UnixSocketListener, String),
    /// A named pipe's name, with the instance waiting for the next client.
    #[cfg(windows)]
    Pipe(pipe::PipeListener),
}

impl RawListener {
    /// Binds and listens on `ep`, in blocking mode.
    ///
    /// - tcp: the name resolves, and the first address that binds is used (a name with
    ///   several addresses listens on one of them). Port 0 picks a free port; see
    ///   [`local_addr`](RawListener::local_addr).
    /// - uds path: a socket file left by a process that is gone is replaced; a file with a
    ///   live listener behind it, or a file that is not a socket, is
    ///   [`ErrorKind::AddressInUse`] and is left alone.
    /// - uds abstract name (Linux): a name in use is [`ErrorKind::AddressInUse`].
    /// - tls: tcp (accepted streams are wrapped by [`secure_server`]).
    /// - shm: the abstract socket `@duct-shm/NAME`; `accept` passes each dialer a segment.
    /// - pipe (Windows; elsewhere [`ErrorKind::Unsupported`]): the first instance of the
    ///   name; a name served already (by anyone) is [`ErrorKind::AddressInUse`].
    pub(crate) fn bind(ep: &Endpoint) -> Result<RawListener> {
        match ep {
            Endpoint::Tcp { host, port } => tcp::bind(ep, host, *port).map(tcp_listener),
            #[cfg(unix)]
            Endpoint::Uds(path) => uds::bind_path(ep, path).map(RawListener::Unix),
            #[cfg(unix)]
            Endpoint::UdsAbstract(name) => uds::bind_abstract(ep, name).map(RawListener::Unix),
            #[cfg(not(unix))]
            Endpoint::Uds(_) | Endpoint::UdsAbstract(_) => Err(at(ep, uds_unavailable())),
            #[cfg(feature = "tls")]
            Endpoint::Tls { host, port } => tcp::bind(ep, host, *port).map(tcp_listener),
            #[cfg(not(feature = "tls"))]
            Endpoint::Tls { .. } => Err(at(ep, tls_feature_off())),
            #[cfg(duct_shm)]
            Endpoint::Shm(name) => shm::bind_rendezvous(ep, name)
                .map(|l| RawListener::Shm(l, name.clone()))
                .map_err(|e| {
                    if e.kind() == ErrorKind::AddressInUse {
                        Error::new(
                            ErrorKind::AddressInUse,
                            format!("cannot listen on {ep}: another listener has this name"),
                        )
                    } else {
                        e
                    }
                }),
            #[cfg(not(duct_shm))]
            Endpoint::Shm(_) => Err(at(ep, shm_unavailable())),
            #[cfg(windows)]
            Endpoint::Pipe(name) => pipe::bind(ep, name).map(RawListener::Pipe),
            #[cfg(not(windows))]
            Endpoint::Pipe(_) => Err(at(ep, pipe_unsupported())),
        }
    }

    /// Accepts one connection: the stream (blocking, whatever the listener's mode; tcp with
    /// `TCP_NODELAY`) and the peer's address ([`Addr::Unknown`] for Unix sockets, whose
    /// dialers are unnamed; the pipe's own name for a named pipe). In non-blocking mode, no
    /// pending connection is `io::ErrorKind::WouldBlock`; a pipe listener is always
    /// non-blocking. Errors are raw `io::Error`s: most (`ECONNABORTED`,
    /// `EMFILE`, `EINTR`) concern one attempt, not the listener, and the caller decides.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Addr)> {
        match self {
            RawListener::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                // The accepted socket does not inherit O_NONBLOCK on Linux, but does on some
                // BSDs: make it explicit. (On Windows `tcp_sock` makes it non-blocking.)
                #[cfg(unix)]
                stream.set_nonblocking(false)?;
                if let Err(err) = stream.set_nodelay(true) {
                    // The connection may already be reset; its first read or write will say
                    // so, with better context than here.
                    tracing::debug!(%peer, %err, "could not set TCP_NODELAY on an accepted connection");
                }
                #[cfg(unix)]
                no_sigpipe(&stream);
                Ok((Stream::Tcp(sys::tcp_sock(stream)?), Addr::Tcp(peer)))
            }
            #[cfg(unix)]
            RawListener::Unix(listener) => {
                let (stream, peer) = listener.accept()?;
                no_sigpipe(&stream);
                Ok((Stream::Unix(stream), peer))
            }
            #[cfg(duct_shm)]
            RawListener::Shm(listener, name) => {
                let (ctl, _) = listener.accept()?;
                // A new segment for this dialer, passed on the socket it connected with.
                let stream = shm::ShmStream::server(ctl, name).map_err(io::Error::other)?;
                Ok((Stream::Shm(Box::new(stream)), Addr::Unknown))
            }
            #[cfg(windows)]
            RawListener::Pipe(listener) => {
                let (stream, peer) = listener.accept()?;
                Ok((Stream::Pipe(stream), peer))
            }
        }
    }

    /// The bound address, with port 0 resolved to the port picked: what `listen`'s
    /// `local_addr` shows. For a Unix socket, the path or name as given.
    pub(crate) fn local_addr(&self) -> Addr {
        match self {
            RawListener::Tcp(listener) => listener.local_addr().map_or(Addr::Unknown, Addr::Tcp),
            #[cfg(unix)]
            RawListener::Unix(listener) => listener.local_addr(),
            #[cfg(duct_shm)]
            RawListener::Shm(_, name) => Addr::Shm(name.clone()),
            #[cfg(windows)]
            RawListener::Pipe(listener) => listener.local_addr(),
        }
    }

    /// Switches `accept` between blocking and non-blocking mode.
    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            RawListener::Tcp(listener) => listener.set_nonblocking(nonblocking),
            #[cfg(unix)]
            RawListener::Unix(listener) => listener.set_nonblocking(nonblocking),
            #[cfg(duct_shm)]
            RawListener::Shm(listener, _) => listener.set_nonblocking(nonblocking),
            // (Its accept never blocks: the reactor reports connecting clients.)
            #[cfg(windows)]
            RawListener::Pipe(_) => Ok(()),
        }
    }
}

#[cfg(unix)]
impl AsFd for RawListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            RawListener::Tcp(listener) => listener.as_fd(),
            RawListener::Unix(listener) => listener.as_fd(),
            #[cfg(duct_shm)]
            RawListener::Shm(listener, _) => listener.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::parse;

    #[test]
    fn unsupported_schemes() {
        let shm = format!("shm:// on {} is not implemented yet", std::env::consts::OS);
        let uds = format!(
            "uds:// (Unix domain sockets) is only available on Unix platforms, not on {}",
            std::env::consts::OS
        );
        let mut cases = Vec::new();
        if cfg!(not(duct_shm)) {
            cases.push(("shm://game", shm.as_str()));
        }
        if cfg!(not(unix)) {
            cases.push(("uds:///tmp/game.sock", uds.as_str()));
        }
        for (addr, expected) in cases {
            let ep = parse(addr).unwrap();
            for err in [
                connect(&ep, Duration::from_secs(1)).unwrap_err(),
                RawListener::bind(&ep).unwrap_err(),
            ] {
                assert_eq!(err.kind(), ErrorKind::Unsupported);
                let text = err.to_string();
                assert!(text.starts_with(addr) && text.contains(expected), "{err}");
            }
        }
        #[cfg(not(windows))]
        {
            let ep = parse("pipe://game").unwrap();
            for err in [
                connect(&ep, Duration::from_secs(1)).unwrap_err(),
                RawListener::bind(&ep).unwrap_err(),
            ] {
                assert_eq!(err.kind(), ErrorKind::Unsupported);
                let text = err.to_string();
                assert!(
                    text.starts_with("pipe://game") && text.contains("only available on Windows"),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn tls_settings_must_match_the_address() {
        let tls = crate::TlsOptions::client("/nonexistent/ca.pem");
        // tls:// without settings.
        let err = client_tls(&parse("tls://127.0.0.1:1").unwrap(), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls);
        assert!(err.to_string().contains("DialOptions::tls"), "{err}");
        let err = server_tls(&parse("tls://127.0.0.1:0").unwrap(), None).unwrap_err();
        assert!(err.to_string().contains("ListenOptions::tls"), "{err}");
        // Settings on a transport that is not tcp.
        let err = client_tls(&parse("uds://@x").unwrap(), Some(&tls)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("TLS runs over tcp only"), "{err}");
        // No TLS asked for.
        assert!(client_tls(&parse("tcp://127.0.0.1:1").unwrap(), None)
            .unwrap()
            .is_none());
        // A missing CA file is named.
        #[cfg(feature = "tls")]
        {
            let err = client_tls(&parse("tcp://127.0.0.1:1").unwrap(), Some(&tls)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Tls);
            assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
            // Server settings on a dialer and the other way round.
            let server = crate::TlsOptions::server("/x/c.pem", "/x/k.pem");
            let err = client_tls(&parse("tls://h:1").unwrap(), Some(&server)).unwrap_err();
            assert!(err.to_string().contains("TlsOptions::client"), "{err}");
            let err = server_tls(&parse("tls://h:1").unwrap(), Some(&tls)).unwrap_err();
            assert!(err.to_string().contains("TlsOptions::server"), "{err}");
        }
    }

    #[test]
    fn zero_timeout_fails_at_once() {
        let ep = parse("tcp://127.0.0.1:9").unwrap();
        let err = connect(&ep, Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert!(err.to_string().contains("tcp://127.0.0.1:9"), "{err}");
    }
}
