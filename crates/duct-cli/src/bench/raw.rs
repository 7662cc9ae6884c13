//! The raw baseline: what a careful user writes by hand with blocking std sockets.
//!
//! Framing is a 4-byte big-endian length prefix per message. The receiving side reads
//! through a `BufReader` (one `read` syscall usually brings in a whole small frame, or
//! many; payloads of 16 KiB and more are read straight into place); the sending side
//! writes through a `BufWriter`, flushed after every message in ping-pong (one `write` per
//! message) and only when full, and at the end, in stream — that is the baseline's
//! equivalent of duct's batching; frames larger than the buffer go out with one `writev`.
//! TCP has TCP_NODELAY on both ends.
//! Nothing here allocates per message: payloads are prebuilt, and the receive buffer is
//! allocated once per connection.
//!
//! tls is the same over a rustls session without duct ([`crate::bench::tls`]): the same
//! frames, `BufReader` and `BufWriter`, on a TLS 1.3 stream over TCP with TCP_NODELAY
//! (rustls itself allocates as it encrypts, which its `allocs_per_msg` shows).

use std::io::{self, BufRead, BufReader, BufWriter, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::bench::spec::Transport;
use crate::bench::tls::{self, RawTlsListener, TlsStream};
use crate::bench::workload::{MsgConn, FLAG_LAST, FLAG_MORE};
use crate::error::{bail, Context, Result};

/// Buffer capacity of the baseline's `BufReader` and `BufWriter`.
const BUF_CAPACITY: usize = 64 * 1024;

/// Payloads from this size on are read past the `BufReader`, straight into place.
const DIRECT_READ_MIN: usize = 16 * 1024;

/// A connected baseline socket.
pub enum RawStream {
    /// TCP, with TCP_NODELAY.
    Tcp(TcpStream),
    /// A Unix-domain stream socket.
    #[cfg(unix)]
    Uds(std::os::unix::net::UnixStream),
    /// A rustls session over TCP (TCP_NODELAY), handshake done; clones share the session.
    Tls(TlsStream),
}

impl RawStream {
    fn try_clone(&self) -> io::Result<RawStream> {
        Ok(match self {
            RawStream::Tcp(s) => RawStream::Tcp(s.try_clone()?),
            #[cfg(unix)]
            RawStream::Uds(s) => RawStream::Uds(s.try_clone()?),
            RawStream::Tls(s) => RawStream::Tls(s.clone()),
        })
    }
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            RawStream::Uds(s) => s.read(buf),
            RawStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            RawStream::Uds(s) => s.write(buf),
            RawStream::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write_vectored(bufs),
            #[cfg(unix)]
            RawStream::Uds(s) => s.write_vectored(bufs),
            RawStream::Tls(s) => s.write_vectored(bufs),
        }
    }

    /// Sockets send on `write`; rustls does too, and its flush surfaces what went wrong.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            RawStream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

/// Writes all of `a` then all of `b` with `writev`, resuming after partial writes.
fn write_all_vectored(w: &mut impl Write, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        match w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let from_a = n.min(a.len());
                a = &a[from_a..];
                b = &b[n - from_a..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A listening baseline socket, bound to a fresh address.
pub enum RawListener {
    /// TCP on 127.0.0.1, port picked by the kernel.
    Tcp(TcpListener),
    /// A Unix-domain socket.
    #[cfg(unix)]
    Uds(std::os::unix::net::UnixListener),
    /// TLS over TCP on 127.0.0.1 ([`RawListener::bind_tls`]).
    Tls(RawTlsListener),
}

/// Splits a duct-style address into the transport's own form: `tcp://H:P` to `H:P`,
/// `uds://@name` to an abstract name (`@name`), `uds:///path` to a path.
fn strip_scheme<'a>(addr: &'a str, scheme: &str) -> Result<&'a str> {
    match addr
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
    {
        Some(rest) => Ok(rest),
        None => bail!("address {addr:?} is not a {scheme}:// address"),
    }
}

#[cfg(unix)]
fn unix_addr(spec: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    match spec.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "abstract socket names exist only on Linux",
        )),
        None => std::os::unix::net::SocketAddr::from_pathname(spec),
    }
}

impl RawListener {
    /// Binds for `transport` (tcp or uds; tls has [`RawListener::bind_tls`]); `uds_spec` is
    /// the address to use for uds (`@name` or a path). Returns the listener and its address
    /// in duct's form, for the peer.
    #[cfg_attr(not(unix), allow(unused_variables))]
    pub fn bind(transport: Transport, uds_spec: &str) -> Result<(RawListener, String)> {
        match transport {
            Transport::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").context("raw tcp: bind 127.0.0.1:0")?;
                let addr = format!("tcp://{}", l.local_addr()?);
                Ok((RawListener::Tcp(l), addr))
            }
            #[cfg(unix)]
            Transport::Uds => {
                let addr = unix_addr(uds_spec)?;
                let l = std::os::unix::net::UnixListener::bind_addr(&addr)
                    .with_context(|| format!("raw uds: bind {uds_spec}"))?;
                Ok((RawListener::Uds(l), format!("uds://{uds_spec}")))
            }
            Transport::Tls => bail!("raw tls: bind with RawListener::bind_tls"),
            other => bail!("the raw baseline has no {} transport yet", other.name()),
        }
    }

    /// Binds TLS over TCP on 127.0.0.1 (port picked by the kernel), serving with `config`.
    /// Returns the listener and its address, `tls://127.0.0.1:PORT`.
    pub fn bind_tls(config: std::sync::Arc<rustls::ServerConfig>) -> Result<(RawListener, String)> {
        let (listener, addr) = RawTlsListener::bind(config)?;
        Ok((RawListener::Tls(listener), addr))
    }

    /// Accepts one connection, polling every millisecond so that `check` (is the peer
    /// still fine?) runs while waiting; gives up after `timeout`. tls: then completes the
    /// TLS handshake (bounded on its own, see [`crate::bench::tls`]).
    pub fn accept(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<RawStream> {
        let deadline = Instant::now() + timeout;
        self.set_nonblocking(true)?;
        loop {
            let accepted = match self {
                RawListener::Tcp(l) => l.accept().map(|(s, _)| RawStream::Tcp(s)),
                #[cfg(unix)]
                RawListener::Uds(l) => l.accept().map(|(s, _)| RawStream::Uds(s)),
                RawListener::Tls(l) => l.tcp().accept().map(|(s, _)| RawStream::Tcp(s)),
            };
            match accepted {
                Ok(stream) => {
                    match &stream {
                        RawStream::Tcp(s) => {
                            s.set_nonblocking(false)?;
                            s.set_nodelay(true)?;
                        }
                        #[cfg(unix)]
                        RawStream::Uds(s) => s.set_nonblocking(false)?,
                        RawStream::Tls(_) => {}
                    }
                    return match (self, stream) {
                        (RawListener::Tls(l), RawStream::Tcp(tcp)) => {
                            Ok(RawStream::Tls(l.accept(tcp)?))
                        }
                        (_, stream) => Ok(stream),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    check()?;
                    if Instant::now() >= deadline {
                        bail!("raw: no connection from the peer within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("raw: accept"),
            }
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            RawListener::Tcp(l) => l.set_nonblocking(on),
            #[cfg(unix)]
            RawListener::Uds(l) => l.set_nonblocking(on),
            RawListener::Tls(l) => l.tcp().set_nonblocking(on),
        }
    }
}

/// Connects to a baseline listener at `addr` (duct form, from [`RawListener::bind`]); tcp
/// and uds (tls has [`connect_tls`]).
pub fn connect(transport: Transport, addr: &str) -> Result<RawStream> {
    match transport {
        Transport::Tcp => {
            let hostport = strip_scheme(addr, "tcp")?;
            let s = TcpStream::connect(hostport).with_context(|| format!("raw: connect {addr}"))?;
            s.set_nodelay(true)?;
            Ok(RawStream::Tcp(s))
        }
        #[cfg(unix)]
        Transport::Uds => {
            let spec = strip_scheme(addr, "uds")?;
            let s = std::os::unix::net::UnixStream::connect_addr(&unix_addr(spec)?)
                .with_context(|| format!("raw: connect {addr}"))?;
            Ok(RawStream::Uds(s))
        }
        Transport::Tls => bail!("raw tls: connect with connect_tls"),
        other => bail!("the raw baseline has no {} transport yet", other.name()),
    }
}

/// Connects to a raw TLS listener at `addr` (`tls://127.0.0.1:PORT`, from
/// [`RawListener::bind_tls`]) with `config`, and completes the handshake.
pub fn connect_tls(addr: &str, config: std::sync::Arc<rustls::ClientConfig>) -> Result<RawStream> {
    tls::connect_tls(addr, config).map(RawStream::Tls)
}

/// A baseline connection, ready for the workloads.
pub struct RawConn {
    reader: BufReader<RawStream>,
    writer: BufWriter<RawStream>,
    /// The length prefix every message carries.
    header: [u8; 4],
    /// Ordinary payload (first byte [`FLAG_MORE`]).
    payload: Vec<u8>,
    /// Payload of the last message (first byte [`FLAG_LAST`]).
    last_payload: Vec<u8>,
    /// Receive buffer: a header slot, then the payload, so that an echo goes back in one
    /// write.
    frame: Vec<u8>,
}

impl RawConn {
    /// Wraps a connected stream for messages of `size` bytes (at least 1).
    pub fn new(stream: RawStream, size: usize) -> Result<RawConn> {
        let Ok(len) = u32::try_from(size) else {
            bail!("raw: size {size} does not fit the 4-byte length prefix");
        };
        let reader = BufReader::with_capacity(BUF_CAPACITY, stream.try_clone()?);
        let writer = BufWriter::with_capacity(BUF_CAPACITY, stream);
        let mut payload = vec![0xA5u8; size];
        payload[0] = FLAG_MORE;
        let mut last_payload = payload.clone();
        last_payload[0] = FLAG_LAST;
        Ok(RawConn {
            reader,
            writer,
            header: len.to_be_bytes(),
            payload,
            last_payload,
            frame: vec![0u8; 4 + size],
        })
    }

    /// Reads one frame into `self.frame`; returns its last-message flag.
    #[inline]
    fn read_frame(&mut self) -> Result<bool> {
        self.reader.read_exact(&mut self.frame[..4])?;
        if self.frame[..4] != self.header {
            let got =
                u32::from_be_bytes([self.frame[0], self.frame[1], self.frame[2], self.frame[3]]);
            bail!(
                "raw: protocol error: frame of {got} bytes, expected {}",
                self.frame.len() - 4
            );
        }
        let payload = &mut self.frame[4..];
        let buffered = self.reader.buffer();
        if payload.len() <= buffered.len() || payload.len() < DIRECT_READ_MIN {
            self.reader.read_exact(payload)?;
        } else {
            // A large payload: take what is buffered, then read the rest straight into
            // place, rather than through the buffer (a second copy).
            let n = buffered.len();
            payload[..n].copy_from_slice(buffered);
            self.reader.consume(n);
            self.reader.get_mut().read_exact(&mut payload[n..])?;
        }
        Ok(self.frame[4] == FLAG_LAST)
    }

    /// Queues one frame. A frame that fits the buffer's room is copied in; a larger one
    /// goes out as the buffered bytes, then header and payload in one `writev` — what a
    /// careful user does, rather than letting `BufWriter` send the 4-byte header as a
    /// segment of its own and the payload in a second syscall.
    #[inline]
    fn write_frame(&mut self, last: bool) -> io::Result<()> {
        let payload = if last {
            &self.last_payload
        } else {
            &self.payload
        };
        let room = self.writer.capacity() - self.writer.buffer().len();
        if self.header.len() + payload.len() <= room {
            self.writer.write_all(&self.header)?;
            self.writer.write_all(payload)
        } else {
            self.writer.flush()?;
            write_all_vectored(self.writer.get_mut(), &self.header, payload)
        }
    }
}

impl MsgConn for RawConn {
    fn send_one(&mut self, last: bool) -> Result<()> {
        self.write_frame(last)?;
        self.writer.flush()?;
        Ok(())
    }

    fn recv_one(&mut self) -> Result<bool> {
        self.read_frame()
    }

    fn echo_one(&mut self) -> Result<bool> {
        let last = self.read_frame()?;
        self.writer.write_all(&self.frame)?;
        self.writer.flush()?;
        Ok(last)
    }

    fn send_many(&mut self, n: usize, last: bool) -> Result<()> {
        for i in 0..n {
            self.write_frame(last && i + 1 == n)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush()?;
        Ok(())
    }

    fn recv_some(&mut self) -> Result<(u64, bool)> {
        Ok((1, self.read_frame()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::Amount;
    use crate::bench::workload::{drive_pingpong, drive_stream, serve_echo, serve_stream, Plan};

    fn pair(transport: Transport, name: &str) -> (RawConn, std::thread::JoinHandle<RawStream>) {
        let (listener, addr) = RawListener::bind(transport, name).unwrap();
        let t = std::thread::spawn(move || connect(transport, &addr).unwrap());
        let s = listener.accept(Duration::from_secs(10), || Ok(())).unwrap();
        (RawConn::new(s, 64).unwrap(), t)
    }

    #[test]
    fn pingpong_over_tcp() {
        let (mut a, t) = pair(Transport::Tcp, "");
        let b = t.join().unwrap();
        let echo = std::thread::spawn(move || serve_echo(&mut RawConn::new(b, 64).unwrap(), 10));
        let plan = Plan {
            warmup: 10,
            amount: Amount::Messages(100),
            batch: 1,
        };
        let out = drive_pingpong(&mut a, &plan).unwrap();
        assert_eq!(out.messages, 100);
        assert_eq!(echo.join().unwrap().unwrap().messages, 100);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stream_over_uds() {
        let name = format!("@duct-cli-raw-test-{}", std::process::id());
        let (mut a, t) = pair(Transport::Uds, &name);
        let b = t.join().unwrap();
        let rx = std::thread::spawn(move || serve_stream(&mut RawConn::new(b, 64).unwrap(), 100));
        let plan = Plan {
            warmup: 100,
            amount: Amount::Messages(10_000),
            batch: 64,
        };
        let out = drive_stream(&mut a, &plan).unwrap();
        assert_eq!(out.messages, 10_000);
        let report = rx.join().unwrap().unwrap();
        assert_eq!(report.messages, 10_000);
        assert_eq!(report.rate_messages, 10_000 - 1);
    }

    /// A raw TLS pair: the listening end's stream, and the dialing end's from a thread.
    fn tls_pair() -> (
        RawStream,
        std::thread::JoinHandle<RawStream>,
        tls::BenchCerts,
    ) {
        let certs = tls::BenchCerts::generate().unwrap();
        let server = tls::raw_server_config(certs.cert(), certs.key()).unwrap();
        let client = tls::raw_client_config(certs.ca()).unwrap();
        let (listener, addr) = RawListener::bind_tls(server).unwrap();
        assert!(addr.starts_with("tls://127.0.0.1:"), "{addr}");
        let t = std::thread::spawn(move || connect_tls(&addr, client).unwrap());
        let s = listener.accept(Duration::from_secs(10), || Ok(())).unwrap();
        (s, t, certs)
    }

    #[test]
    fn pingpong_over_tls() {
        let (a, t, _certs) = tls_pair();
        let b = t.join().unwrap();
        assert!(matches!((&a, &b), (RawStream::Tls(_), RawStream::Tls(_))));
        let echo = std::thread::spawn(move || serve_echo(&mut RawConn::new(b, 64).unwrap(), 10));
        let plan = Plan {
            warmup: 10,
            amount: Amount::Messages(200),
            batch: 1,
        };
        let out = drive_pingpong(&mut RawConn::new(a, 64).unwrap(), &plan).unwrap();
        assert_eq!(out.messages, 200);
        assert_eq!(out.rtt.len(), 200);
        let report = echo.join().unwrap().unwrap();
        assert_eq!(report.messages, 200);
    }

    #[test]
    fn stream_over_tls() {
        let (a, t, _certs) = tls_pair();
        let b = t.join().unwrap();
        let rx = std::thread::spawn(move || serve_stream(&mut RawConn::new(b, 64).unwrap(), 100));
        let plan = Plan {
            warmup: 100,
            amount: Amount::Messages(20_000),
            batch: 64,
        };
        let out = drive_stream(&mut RawConn::new(a, 64).unwrap(), &plan).unwrap();
        assert_eq!(out.messages, 20_000);
        let report = rx.join().unwrap().unwrap();
        assert_eq!(report.messages, 20_000);
        assert_eq!(report.rate_messages, 20_000 - 1);
        assert!(report.elapsed_ns > 0);
    }

    #[test]
    fn large_frames_pass_intact_over_tls() {
        // Frames past the buffers: vectored writes through rustls (records of 16 KiB) and
        // direct reads of the plaintext.
        let size = 3 * BUF_CAPACITY + 5;
        let (a, t, _certs) = tls_pair();
        let b = t.join().unwrap();
        let rx = std::thread::spawn(move || serve_stream(&mut RawConn::new(b, size).unwrap(), 2));
        let plan = Plan {
            warmup: 2,
            amount: Amount::Messages(20),
            batch: 4,
        };
        drive_stream(&mut RawConn::new(a, size).unwrap(), &plan).unwrap();
        assert_eq!(rx.join().unwrap().unwrap().messages, 20);
    }

    #[test]
    fn tls_needs_its_own_bind_and_connect() {
        assert!(RawListener::bind(Transport::Tls, "").is_err());
        assert!(connect(Transport::Tls, "tls://127.0.0.1:1").is_err());
    }

    /// Accepts at most 3 bytes per call, to exercise partial writes.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut budget = 3;
            for b in bufs {
                let n = b.len().min(budget);
                self.0.extend_from_slice(&b[..n]);
                budget -= n;
            }
            Ok(3 - budget)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_resume_after_partial_writes() {
        let mut w = Trickle(Vec::new());
        write_all_vectored(&mut w, b"head", b"payload!").unwrap();
        assert_eq!(w.0, b"headpayload!");
    }

    #[test]
    fn large_frames_pass_intact() {
        let (listener, addr) = RawListener::bind(Transport::Tcp, "").unwrap();
        let size = 3 * BUF_CAPACITY + 5;
        let t = std::thread::spawn(move || {
            let s = connect(Transport::Tcp, &addr).unwrap();
            serve_stream(&mut RawConn::new(s, size).unwrap(), 2)
        });
        let s = listener.accept(Duration::from_secs(10), || Ok(())).unwrap();
        let mut conn = RawConn::new(s, size).unwrap();
        let plan = Plan {
            warmup: 2,
            amount: Amount::Messages(20),
            batch: 4,
        };
        drive_stream(&mut conn, &plan).unwrap();
        assert_eq!(t.join().unwrap().unwrap().messages, 20);
    }

    #[test]
    fn wrong_size_is_a_protocol_error() {
        let (listener, addr) = RawListener::bind(Transport::Tcp, "").unwrap();
        let t = std::thread::spawn(move || {
            let mut s = connect(Transport::Tcp, &addr).unwrap();
            s.write_all(&[0, 0, 0, 3, 1, 2, 3]).unwrap();
            s
        });
        let s = listener.accept(Duration::from_secs(10), || Ok(())).unwrap();
        let mut conn = RawConn::new(s, 64).unwrap();
        let err = conn.recv_one().unwrap_err();
        assert!(err.to_string().contains("protocol error"), "{err}");
        drop(t.join());
    }
}
