//! Windows under the driver contract (`crate::driver::StreamTransport`): Winsock sockets (tcp,
//! and tls over tcp), and named pipes (`pipe://`, whose transport is `transport/pipe.rs`).
//! (`uds://` and `shm://` are Unix-only.) `transport/unix.rs` is the same contract on Unix.
//!
//! How it differs from Unix, and why:
//! - **Non-blocking sockets.** Winsock has no `MSG_DONTWAIT`, so a connected socket is made
//!   non-blocking when the transport takes it ([`TcpSock`]), and a blocking receive waits
//!   for readability itself (`WSAPoll`), then receives.
//! - **Readiness.** mio watches a duplicate handle of the socket ([`SocketWatch`]); every call
//!   that returns `WouldBlock` re-arms it, so that the reactor hears of the next readiness
//!   (see `crate::driver::sys`).
//! - **Waking blocked callers.** A local `shutdown` is not promised to wake a `WSAPoll` on the
//!   same socket, so waits run in slices of [`WAIT_SLICE`] and look at a flag the shutdown
//!   sets; after it, a receive reports the end of the stream (as `recv` does on Unix after
//!   `shutdown(SHUT_RD)`) instead of Winsock's `WSAESHUTDOWN`.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::windows::io::{AsSocket, BorrowedSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::fd::AsFd;

use super::Stream;
use crate::addr::Addr;
use crate::driver::io::Interest;
use crate::driver::sys::{Readiness, SocketWatch};
use crate::options::PeerCredentials;

/// The longest a blocking wait sleeps before it looks whether the socket was shut down.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A connected tcp socket as the transports hold it on Windows: non-blocking, with the watch
/// the reactor registers, and the flag a local shutdown sets for blocked callers.
///
/// Every receive and send goes through its methods (never through the std stream directly),
/// so that a `WouldBlock` re-arms the watch.
#[derive(Debug)]
pub(crate) struct TcpSock {
    stream: TcpStream,
    watch: SocketWatch,
    /// The receiving direction was shut down here.
    read_shut: AtomicBool,
}

/// Makes a connected tcp socket ready for the transports: non-blocking.
pub(super) fn tcp_sock(stream: TcpStream) -> io::Result<TcpSock> {
    stream.set_nonblocking(true)?;
    Ok(TcpSock {
        stream,
        watch: SocketWatch::default(),
        read_shut: AtomicBool::new(false),
    })
}

/// One receive into `buf`'s spare capacity that never blocks.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(super) fn recv_nonblocking(sock: &TcpSock, buf: &mut BytesMut) -> io::Result<usize> {
    sock.recv_into(buf, true)
}

/// One vectored send that never blocks.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(super) fn send_nonblocking(sock: &TcpSock, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    sock.send_vectored(iov)
}

/// Waits until `sock` is readable (or closed, or shut down here) or `deadline` passes.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(super) fn wait_readable(sock: &TcpSock, deadline: Option<Instant>) -> io::Result<bool> {
    sock.wait(Interest::Read, deadline)
}

impl TcpSock {
    /// What the reactor watches.
    pub(crate) fn readiness(&self) -> Readiness<'_> {
        Readiness::Socket {
            socket: self.stream.as_fd(),
            watch: &self.watch,
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    #[cfg(test)]
    pub(crate) fn nodelay(&self) -> io::Result<bool> {
        self.stream.nodelay()
    }

    /// Shuts the socket down; shutting the receiving direction wakes blocked waits within
    /// [`WAIT_SLICE`], and later receives report the end of the stream.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.read_shut.store(true, Ordering::Release);
        }
        self.stream.shutdown(how)
    }

    fn read_shut(&self) -> bool {
        self.read_shut.load(Ordering::Acquire)
    }

    /// One receive into `buf`'s spare capacity; `Ok(0)` is the end of the stream. With
    /// `nonblocking`, nothing to read is `WouldBlock` (the watch re-armed); otherwise waits.
    pub(crate) fn recv_into(&self, buf: &mut BytesMut, nonblocking: bool) -> io::Result<usize> {
        loop {
            if self.read_shut() {
                return Ok(0);
            }
            match duct_sys::net::recv_into(self.stream.as_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.watch.rearm();
                    if nonblocking {
                        return Err(e);
                    }
                    self.wait(Interest::Read, None)?;
                }
                // After a local shutdown Winsock says WSAESHUTDOWN: the end, as on Unix.
                Err(_) if self.read_shut() => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// One vectored send (`WSASend`) that never blocks; a full socket is `WouldBlock` (the
    /// watch re-armed).
    pub(crate) fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            match (&self.stream).write_vectored(iov) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.watch.rearm();
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Waits until the socket is ready for `interest` (error and hang-up count as ready) or
    /// `deadline` passes, in slices of [`WAIT_SLICE`]. A local shutdown of the receiving
    /// direction counts as ready.
    pub(crate) fn wait(&self, interest: Interest, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            if self.read_shut() {
                return Ok(true);
            }
            let slice = Instant::now() + WAIT_SLICE;
            let until = deadline.map_or(slice, |d| d.min(slice));
            if crate::driver::io::wait(self.stream.as_fd(), interest, Some(until))? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// Bytes received by the system and not yet read.
    fn pending(&self) -> usize {
        rustix::io::ioctl_fionread(self.stream.as_fd()).map_or(0, |n| n as usize)
    }
}

impl AsSocket for TcpSock {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.stream.as_socket()
    }
}

// Tests read and write streams directly, blocking; the driver goes through its methods.
#[cfg(test)]
impl io::Read for &TcpSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.stream).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(Interest::Read, None)?;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
impl Write for &TcpSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            match (&self.stream).write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(Interest::ReadWrite, None)?;
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening tcp socket as the transports hold it on Windows: with the watch the reactor
/// registers, re-armed when `accept` finds nothing.
#[derive(Debug)]
pub(crate) struct TcpListenSock {
    listener: TcpListener,
    watch: SocketWatch,
}

/// Makes a listening tcp socket ready for the transports.
pub(super) fn tcp_listen_sock(listener: TcpListener) -> TcpListenSock {
    TcpListenSock {
        listener,
        watch: SocketWatch::default(),
    }
}

impl TcpListenSock {
    /// Accepts one connection; nothing pending is `WouldBlock` (non-blocking mode), which
    /// re-arms the watch.
    pub(crate) fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let res = self.listener.accept();
        if matches!(&res, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.watch.rearm();
        }
        res
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.listener.set_nonblocking(nonblocking)
    }
}

impl AsSocket for TcpListenSock {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        self.listener.as_socket()
    }
}

impl super::RawListener {
    /// What the reactor watches for the listener.
    pub(crate) fn readiness(&self) -> Readiness<'_> {
        match self {
            super::RawListener::Tcp(l) => Readiness::Socket {
                socket: l.listener.as_fd(),
                watch: &l.watch,
            },
            super::RawListener::Pipe(l) => Readiness::Pipe(l),
        }
    }
}

impl crate::driver::StreamTransport for Stream {
    fn writes_slices(&self) -> bool {
        // (A named pipe's write copies the slices into its outbound buffer; Winsock's takes
        // several buffers.)
        matches!(self, Stream::Tcp(_) | Stream::Pipe(_))
    }

    fn readiness(&self) -> Readiness<'_> {
        match self {
            Stream::Tcp(s) => s.readiness(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp().readiness(),
            Stream::Pipe(s) => s.readiness(),
        }
    }

    fn recv_into(&self, buf: &mut BytesMut, nonblocking: bool) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.recv_into(buf, nonblocking),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.recv_into(buf, nonblocking),
            Stream::Pipe(s) => s.recv_into(buf, nonblocking),
        }
    }

    fn recv_into_direct(
        &self,
        direct: (&mut BytesMut, usize),
        buf: (&mut BytesMut, usize),
        nonblocking: bool,
    ) -> io::Result<(usize, usize)> {
        match self {
            // (TLS decrypts into either; Winsock's receive takes one buffer here.)
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.recv_into_two(direct, buf, nonblocking),
            _ => {
                let _ = direct;
                self.recv_into(buf.0, nonblocking).map(|n| (0, n))
            }
        }
    }

    fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.send_vectored(iov),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.send_vectored(iov),
            Stream::Pipe(s) => s.send_vectored(iov),
        }
    }

    fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        match self {
            Stream::Tcp(s) => s.wait(Interest::Read, deadline),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.wait_readable(deadline),
            Stream::Pipe(s) => s.wait_readable(deadline),
        }
    }

    fn wait_writable(&self, deadline: Instant) -> io::Result<bool> {
        match self {
            Stream::Tcp(s) => s.wait(Interest::Write, Some(deadline)),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp().wait(Interest::Write, Some(deadline)),
            Stream::Pipe(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn wait_io(&self, deadline: Option<Instant>) -> io::Result<bool> {
        match self {
            Stream::Tcp(s) => s.wait(Interest::ReadWrite, deadline),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp().wait(Interest::ReadWrite, deadline),
            Stream::Pipe(s) => s.wait_io(deadline),
        }
    }

    fn pending_input(&self) -> usize {
        match self {
            Stream::Tcp(s) => s.pending(),
            // Ciphertext in the kernel counts as about its plaintext size.
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.tcp().pending() + s.buffered_len(),
            Stream::Pipe(s) => s.pending_input(),
        }
    }

    fn buffered_input(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Stream::Tls(s) = self {
            return s.buffered_input();
        }
        false
    }

    fn flush_backlog(&self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Stream::Tls(s) = self {
            return s.flush_backlog();
        }
        Ok(true)
    }

    fn peer_credentials(&self) -> Option<PeerCredentials> {
        None
    }

    fn shutdown(&self) {
        let _ = Stream::shutdown(self, Shutdown::Both);
    }

    fn shutdown_read(&self) {
        let _ = Stream::shutdown(self, Shutdown::Read);
    }

    fn local_addr(&self) -> Addr {
        Stream::local_addr(self)
    }

    fn peer_addr(&self) -> Addr {
        Stream::peer_addr(self)
    }
}
