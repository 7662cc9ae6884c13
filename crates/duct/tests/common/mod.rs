//! Test support shared by duct's integration tests.
//!
//! - [`Fixture`]: one transport (tcp IPv4, tcp IPv6, uds path, uds abstract, tls over tcp
//!   IPv4, shm, Windows named pipes) that hands out fresh, unique listen addresses and the options the transport
//!   needs ([`Fixture::listen_opts`], [`Fixture::dial_opts`]: TLS settings from a PKI
//!   generated per fixture); the conformance suite is written against it once.
//! - Guards that clean up even when a test fails: [`TempDir`] (removed on drop),
//!   [`EchoServer`] (closes its listener and pipes and joins its threads on drop).
//! - [`RawStream`] and [`RawPeer`]: a byte stream to a duct endpoint on any transport, and a
//!   hand-driven `duct_proto::Session` over it, for tests that speak (or break) the wire
//!   protocol themselves. Over `tls://` the raw side speaks TLS (rustls, [`pki`]): get those
//!   from the fixture ([`Fixture::raw_listener`], [`Fixture::raw_connect`],
//!   [`Fixture::raw_dial`]). Over `pipe://` (Windows) the raw side is a named pipe driven by
//!   a mio `Poll` of its own ([`RawPipe`]). Over `shm://` there is no byte stream to speak it
//!   on (frames travel through shared-memory rings): [`Fixture::has_raw_peer`] says so.
//!
//! Every wait has a deadline ([`T`], generous): a broken library fails a test, it does not
//! hang the suite.

#![allow(dead_code)] // each test binary uses a different part of this module

#[cfg(feature = "tls")]
pub mod pki;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use duct::{
    dial, listen, CloseOptions, DialOptions, Error, ErrorKind, ListenOptions, Listener, Message,
    Pipe, RecvOptions,
};
use duct_proto::wire::{Header, HEADER_LEN};
use duct_proto::{Config, Role, Session, State};

/// The deadline for anything that should happen "at once": generous, so that a loaded
/// machine does not fail a test, and finite, so that a broken library does not hang one.
pub const T: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number no other call in this process returns.
pub fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and transports
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        // Short names: a Unix socket path must fit in 108 bytes.
        let path = std::env::temp_dir().join(format!("duct-t{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory that nothing uses yet.
    pub fn fresh(&self, stem: &str) -> PathBuf {
        self.path.join(format!("{stem}{}.sock", unique()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The transports the conformance suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp4,
    Tcp6,
    UdsPath,
    UdsAbstract,
    /// `tls://127.0.0.1:0`: TLS over tcp IPv4, with a PKI generated for the fixture.
    Tls,
    /// `shm://duct-test-<pid>-<n>`: shared memory (Linux only). Frames travel through
    /// shared-memory rings, not as bytes on a socket, so a raw (byte-level) peer cannot
    /// talk to it: see [`Fixture::has_raw_peer`].
    Shm,
    /// `pipe://duct-test-<pid>-<n>`: a Windows named pipe (Windows only).
    Pipe,
}

/// Whether this machine has an IPv6 loopback to bind.
pub fn has_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// One transport, as a factory of fresh listen addresses.
pub struct Fixture {
    pub kind: Kind,
    dir: Option<TempDir>,
    /// Kind::Tls: the CA and server certificate its listeners and dialers use.
    #[cfg(feature = "tls")]
    pki: Option<pki::Pki>,
}

impl Fixture {
    /// The fixture for `kind`, or `None` (after printing why) when the machine cannot run it.
    pub fn new(kind: Kind) -> Option<Fixture> {
        if kind == Kind::Tcp6 && !has_ipv6_loopback() {
            eprintln!("SKIPPED: this machine has no IPv6 loopback ([::1] does not bind)");
            return None;
        }
        #[cfg(not(feature = "tls"))]
        if kind == Kind::Tls {
            eprintln!("SKIPPED: duct is built without the `tls` feature");
            return None;
        }
        #[cfg(not(target_os = "linux"))]
        if kind == Kind::Shm {
            eprintln!("SKIPPED: shm:// is implemented on Linux only");
            return None;
        }
        #[cfg(not(unix))]
        if matches!(kind, Kind::UdsPath | Kind::UdsAbstract) {
            eprintln!("SKIPPED: uds:// is Unix only");
            return None;
        }
        #[cfg(not(windows))]
        if kind == Kind::Pipe {
            eprintln!("SKIPPED: pipe:// (named pipes) is Windows only");
            return None;
        }
        let dir = (kind == Kind::UdsPath).then(TempDir::new);
        Some(Fixture {
            kind,
            dir,
            #[cfg(feature = "tls")]
            pki: (kind == Kind::Tls).then(pki::Pki::generate),
        })
    }

    #[cfg(feature = "tls")]
    fn pki(&self) -> &pki::Pki {
        self.pki.as_ref().expect("a tls fixture has a PKI")
    }

    /// `opts` with what this transport needs to listen: for [`Kind::Tls`], the server's TLS
    /// settings (replacing any set before); otherwise `opts` unchanged.
    pub fn listen_opts(&self, opts: ListenOptions) -> ListenOptions {
        match self.kind {
            #[cfg(feature = "tls")]
            Kind::Tls => opts.tls(self.pki().server_options()),
            _ => opts,
        }
    }

    /// `opts` with what this transport needs to dial: for [`Kind::Tls`], the client's TLS
    /// settings (trusting the fixture's CA; replacing any set before); otherwise `opts`
    /// unchanged.
    pub fn dial_opts(&self, opts: DialOptions) -> DialOptions {
        match self.kind {
            #[cfg(feature = "tls")]
            Kind::Tls => opts.tls(self.pki().client_options()),
            _ => opts,
        }
    }

    /// Whether this transport carries bytes that a raw (non-duct) peer can speak the wire
    /// protocol on ([`Fixture::raw_listener`], [`Fixture::raw_connect`],
    /// [`Fixture::raw_dial`]): every transport but [`Kind::Shm`], whose frames travel through
    /// shared-memory rings.
    pub fn has_raw_peer(&self) -> bool {
        self.kind != Kind::Shm
    }

    /// A raw (non-duct) byte stream to `addr` on this transport (over TLS for [`Kind::Tls`],
    /// the TLS handshake done). Not for [`Kind::Shm`] (see [`Fixture::has_raw_peer`]).
    pub fn raw_connect(&self, addr: &str) -> io::Result<RawStream> {
        if self.kind == Kind::Shm {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("raw connect {addr}: shm:// has no byte stream for a raw peer"),
            ));
        }
        #[cfg(feature = "tls")]
        if let Some(rest) = addr.strip_prefix("tls://") {
            return pki::TlsRaw::connect(rest, self.pki()).map(|s| RawStream::Tls(Box::new(s)));
        }
        RawStream::connect(addr)
    }

    /// A [`RawPeer`] dialing `addr` on this transport (its HELLO is queued, not yet written).
    pub fn raw_dial(&self, addr: &str) -> RawPeer {
        let stream = self
            .raw_connect(addr)
            .unwrap_or_else(|e| panic!("raw connect {addr}: {e}"));
        RawPeer::new(stream, RawPeer::dialer_config(), Role::Dialer)
    }

    /// A listen address no other listener in this process uses (tcp: port 0).
    pub fn addr(&self) -> String {
        match self.kind {
            Kind::Tcp4 => "tcp://127.0.0.1:0".to_owned(),
            Kind::Tcp6 => "tcp://[::1]:0".to_owned(),
            Kind::UdsPath => {
                let dir = self.dir.as_ref().expect("uds fixture has a dir");
                format!("uds://{}", dir.fresh("s").display())
            }
            Kind::UdsAbstract => {
                format!("uds://@duct-test-{}-{}", std::process::id(), unique())
            }
            Kind::Tls => "tls://127.0.0.1:0".to_owned(),
            Kind::Shm => format!("shm://duct-test-{}-{}", std::process::id(), unique()),
            Kind::Pipe => format!("pipe://duct-test-{}-{}", std::process::id(), unique()),
        }
    }

    /// A raw (non-duct) listener on a fresh address of this transport, and that address.
    /// For [`Kind::Tls`] it serves TLS with the fixture's server certificate: `accept`
    /// returns a stream whose TLS handshake is done. Panics for [`Kind::Shm`] (see
    /// [`Fixture::has_raw_peer`]).
    pub fn raw_listener(&self) -> (RawListener, String) {
        match self.kind {
            Kind::Shm => panic!("shm:// has no byte stream for a raw listener (has_raw_peer)"),
            #[cfg(feature = "tls")]
            Kind::Tls => {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind raw tcp listener");
                let addr = format!("tls://{}", l.local_addr().unwrap());
                let raw = pki::TlsRawListener {
                    listener: l,
                    config: self.pki().server_config(),
                };
                (RawListener::Tls(raw), addr)
            }
            #[cfg(not(feature = "tls"))]
            Kind::Tls => unreachable!("Fixture::new refuses Kind::Tls without the tls feature"),
            Kind::Tcp4 | Kind::Tcp6 => {
                let ip = if self.kind == Kind::Tcp4 {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let l = TcpListener::bind(ip).expect("bind raw tcp listener");
                let addr = format!("tcp://{}", l.local_addr().unwrap());
                (RawListener::Tcp(l), addr)
            }
            #[cfg(unix)]
            Kind::UdsPath => {
                let addr = self.addr();
                let path = addr.strip_prefix("uds://").unwrap().to_owned();
                let l = UnixListener::bind(&path).expect("bind raw uds listener");
                (RawListener::Unix(l), addr)
            }
            #[cfg(unix)]
            Kind::UdsAbstract => {
                let addr = self.addr();
                let name = addr.strip_prefix("uds://@").unwrap();
                let sa = abstract_addr(name).unwrap();
                let l = UnixListener::bind_addr(&sa).expect("bind raw abstract listener");
                (RawListener::Unix(l), addr)
            }
            #[cfg(not(unix))]
            Kind::UdsPath | Kind::UdsAbstract => {
                unreachable!("Fixture::new refuses uds:// off Unix")
            }
            #[cfg(windows)]
            Kind::Pipe => {
                let addr = self.addr();
                let name = addr.strip_prefix("pipe://").unwrap();
                let l = RawPipeListener::bind(name).expect("bind raw pipe listener");
                (RawListener::Pipe(l), addr)
            }
            #[cfg(not(windows))]
            Kind::Pipe => unreachable!("Fixture::new refuses pipe:// off Windows"),
        }
    }
}

/// The socket address of the abstract name `name` (Linux; `Unsupported` elsewhere).
#[cfg(unix)]
pub fn abstract_addr(name: &str) -> io::Result<UnixAddr> {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        UnixAddr::from_abstract_name(name.as_bytes())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        Err(io::ErrorKind::Unsupported.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Pipes
// ---------------------------------------------------------------------------------------------

/// A listener and the two ends of one pipe through it.
pub struct Pair {
    pub listener: Listener,
    /// The end that dialed.
    pub dialer: Pipe,
    /// The end the listener accepted.
    pub accepted: Pipe,
}

/// A pipe over `f` with default options.
pub fn pair(f: &Fixture) -> Pair {
    pair_with(f, ListenOptions::default(), DialOptions::default())
}

/// A pipe over `f`: listens, accepts in a thread while dialing. The fixture's options
/// ([`Fixture::listen_opts`], [`Fixture::dial_opts`]) are added to `lopts` and `dopts`.
pub fn pair_with(f: &Fixture, lopts: ListenOptions, dopts: DialOptions) -> Pair {
    let (lopts, dopts) = (f.listen_opts(lopts), f.dial_opts(dopts));
    let listener = listen(&f.addr(), lopts).unwrap_or_else(|e| panic!("listen: {e}"));
    let addr = listener.local_addr().to_string();
    let (dialed, accepted) = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let dialed = dial(&addr, dopts);
        (dialed, acceptor.join().expect("accept thread"))
    });
    let dialer = dialed.unwrap_or_else(|e| panic!("dial {addr}: {e}"));
    let accepted = accepted.unwrap_or_else(|e| panic!("accept on {addr}: {e}"));
    Pair {
        listener,
        dialer,
        accepted,
    }
}

/// Receives one message within [`T`], or panics naming the error.
pub fn recv(p: &Pipe) -> Message {
    p.recv_with(&RecvOptions::default().timeout(T))
        .unwrap_or_else(|e| panic!("recv: {e} ({:?})", e.kind()))
}

/// `recv` with a deadline of [`T`], returning the error.
pub fn recv_t(p: &Pipe) -> duct::Result<Message> {
    p.recv_with(&RecvOptions::default().timeout(T))
}

/// Asserts that `r` is an error of `kind`, and returns the error.
#[track_caller]
pub fn expect_kind<T: std::fmt::Debug>(r: duct::Result<T>, kind: ErrorKind) -> Error {
    match r {
        Ok(v) => panic!("expected an error of kind {kind:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "wrong kind for error: {e}");
            e
        }
    }
}

/// Keeps calling `recv` on `p` (which expects no message) until `done()` returns true.
///
/// The inline driver documents that "frames left queued are written by the next call on the
/// pipe (send, recv, close)": a `send` may return once its message is accepted, with part of
/// it still queued. A side that has sent and has nothing else to do calls this while its peer
/// reads, so that the rest is written.
pub fn pump_until(p: &Pipe, done: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "pumped for {T:?} and the peer is not done"
        );
        match p.recv_with(&RecvOptions::default().timeout(Duration::from_millis(5))) {
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Ok(m) => panic!("pump: unexpected message of {} bytes", m.len()),
            Err(e) => panic!("pump: {e}"),
        }
    }
}

/// `len` bytes of a pattern that is not constant and does not repeat with any power-of-two
/// period (its block is 65 521 bytes, a prime), so a lost, repeated or misplaced fragment
/// changes the content. `seed` makes messages distinguishable.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    const BLOCK: usize = 65_521;
    let block: Vec<u8> = (0..BLOCK.min(len) as u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(0x9E37_79B9);
            (x >> 11) as u8 ^ (i as u8)
        })
        .collect();
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let n = (len - v.len()).min(block.len());
        v.extend_from_slice(&block[..n]);
    }
    v
}

/// Compares payloads without printing megabytes when they differ.
#[track_caller]
pub fn assert_payload(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: payload differs: got {} bytes, want {} bytes, first difference at {:?}",
        got.len(),
        want.len(),
        first
    );
}

/// An `on_error` callback that forwards every error into a channel, and its receiver.
pub fn error_sink() -> (
    impl Fn(&Error) + Send + Sync + 'static,
    mpsc::Receiver<Error>,
) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cb = move |e: &Error| {
        let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(e.clone());
    };
    (cb, rx)
}

/// An `on_state_change` callback that forwards every change into a channel, and its receiver.
pub fn state_sink() -> (
    impl Fn(duct::StateChange) + Send + Sync + 'static,
    mpsc::Receiver<duct::StateChange>,
) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cb = move |c: duct::StateChange| {
        let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(c);
    };
    (cb, rx)
}

/// The next change from `rx` that `want` accepts, skipping others; panics (naming `what`)
/// when none came within [`T`].
pub fn wait_for_change(
    rx: &mpsc::Receiver<duct::StateChange>,
    what: &str,
    want: impl Fn(&duct::StateChange) -> bool,
) -> duct::StateChange {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let c = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {what} within {T:?}"));
        if want(&c) {
            return c;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Echo server
// ---------------------------------------------------------------------------------------------

/// A duct listener that accepts in a thread and echoes every message of every pipe back on
/// its channel, one thread per pipe. Each pipe's last error (why its echo loop ended) is
/// reported on [`EchoServer::ended`] with the pipe's peer address. Dropping it closes the
/// listener and every pipe and joins every thread.
pub struct EchoServer {
    listener: Arc<Listener>,
    pub addr: String,
    accept_thread: Option<JoinHandle<Option<Error>>>,
    pipes: Arc<Mutex<Vec<Pipe>>>,
    echoers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub ended: mpsc::Receiver<(String, Error)>,
}

impl EchoServer {
    pub fn start(addr: &str, opts: ListenOptions) -> EchoServer {
        let listener =
            Arc::new(listen(addr, opts).unwrap_or_else(|e| panic!("listen {addr}: {e}")));
        let local = listener.local_addr().to_string();
        let pipes: Arc<Mutex<Vec<Pipe>>> = Arc::default();
        let echoers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (tx, ended) = mpsc::channel();
        let accept_thread = {
            let (listener, pipes, echoers) = (listener.clone(), pipes.clone(), echoers.clone());
            thread::spawn(move || loop {
                match listener.accept() {
                    Ok(pipe) => {
                        pipes.lock().unwrap().push(pipe.clone());
                        let tx = tx.clone();
                        let h = thread::spawn(move || echo_loop(pipe, tx));
                        echoers.lock().unwrap().push(h);
                    }
                    Err(e) if e.kind() == ErrorKind::Closed => return None,
                    Err(e) => return Some(e),
                }
            })
        };
        EchoServer {
            listener,
            addr: local,
            accept_thread: Some(accept_thread),
            pipes,
            echoers,
            ended,
        }
    }

    /// Dials the server, echoes `n` messages and closes; panics on any failure.
    pub fn check_echo(&self, n: u32) {
        check_echo(&self.addr, n);
    }
}

/// Dials the echo server at `addr`, echoes `n` messages and closes; panics on any failure.
pub fn check_echo(addr: &str, n: u32) {
    check_echo_with(addr, n, DialOptions::default());
}

/// [`check_echo`] dialing with `opts` (a dial timeout of [`T`] is added).
pub fn check_echo_with(addr: &str, n: u32, opts: DialOptions) {
    {
        let p =
            dial(addr, opts.timeout(T)).unwrap_or_else(|e| panic!("dial echo server {addr}: {e}"));
        for i in 0..n {
            let payload = pattern(100 + i as usize, i);
            p.send(Message::new(payload.clone()).with_channel(i as u16))
                .unwrap_or_else(|e| panic!("send to echo server: {e}"));
            let m = recv(&p);
            assert_eq!(m.channel(), i as u16);
            assert_payload(m.payload(), &payload, "echo");
        }
        p.close().unwrap();
    }
}

fn echo_loop(pipe: Pipe, tx: mpsc::Sender<(String, Error)>) {
    let peer = pipe.peer_addr().to_string();
    loop {
        let result = pipe.recv().and_then(|m| pipe.send(m));
        if let Err(e) = result {
            let _ = tx.send((peer, e));
            return;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.listener.close();
        let accept_error = self.accept_thread.take().map(|h| h.join());
        for p in self
            .pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = p.close_with(CloseOptions::default().linger(Duration::ZERO));
        }
        let handles: Vec<_> = self
            .echoers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for h in handles {
            let _ = h.join();
        }
        if !thread::panicking() {
            match accept_error {
                Some(Ok(None)) | None => {}
                Some(Ok(Some(e))) => panic!("echo server accept failed: {e}"),
                Some(Err(_)) => panic!("echo server accept thread panicked"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw streams and a hand-driven protocol peer
// ---------------------------------------------------------------------------------------------

/// A byte stream on any transport, without duct.
pub enum RawStream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    /// A TLS session over tcp (handshake done); reads and writes are plaintext.
    #[cfg(feature = "tls")]
    Tls(Box<pki::TlsRaw>),
    /// A Windows named pipe (either end).
    #[cfg(windows)]
    Pipe(RawPipe),
}

impl RawStream {
    /// Connects to a duct address (as `Addr` or its `Display` form). `tls://` needs the
    /// fixture's PKI: use [`Fixture::raw_connect`].
    pub fn connect(addr: &str) -> io::Result<RawStream> {
        if let Some(rest) = addr.strip_prefix("tcp://") {
            let sa: SocketAddr = rest.parse().map_err(io::Error::other)?;
            return TcpStream::connect_timeout(&sa, T).map(RawStream::Tcp);
        }
        #[cfg(unix)]
        if let Some(name) = addr.strip_prefix("uds://@") {
            let sa = abstract_addr(name)?;
            return UnixStream::connect_addr(&sa).map(RawStream::Unix);
        }
        #[cfg(unix)]
        if let Some(path) = addr.strip_prefix("uds://") {
            return UnixStream::connect(path).map(RawStream::Unix);
        }
        #[cfg(windows)]
        if let Some(name) = addr.strip_prefix("pipe://") {
            return RawPipe::connect(name).map(RawStream::Pipe);
        }
        Err(io::Error::other(format!(
            "raw connect: unsupported address {addr}"
        )))
    }

    pub fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        match self {
            RawStream::Tcp(s) => s.set_read_timeout(t),
            #[cfg(unix)]
            RawStream::Unix(s) => s.set_read_timeout(t),
            #[cfg(feature = "tls")]
            RawStream::Tls(s) => s.sock().set_read_timeout(t),
            #[cfg(windows)]
            RawStream::Pipe(s) => {
                s.read_timeout = t;
                Ok(())
            }
        }
    }

    /// Over TLS, a write shutdown sends close_notify first.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        match self {
            RawStream::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            RawStream::Unix(s) => s.shutdown(how),
            #[cfg(feature = "tls")]
            RawStream::Tls(s) => s.shutdown(how),
            // No half-close on a pipe: closed altogether.
            #[cfg(windows)]
            RawStream::Pipe(s) => {
                s.close();
                Ok(())
            }
        }
    }

    /// This end's address in duct's `Display` form (`tcp://127.0.0.1:5000`; `unknown` for an
    /// unnamed Unix socket).
    pub fn local_addr_string(&self) -> String {
        match self {
            RawStream::Tcp(s) => format!("tcp://{}", s.local_addr().unwrap()),
            #[cfg(unix)]
            RawStream::Unix(_) => "unknown".to_owned(),
            #[cfg(feature = "tls")]
            RawStream::Tls(s) => format!("tls://{}", s.sock().local_addr().unwrap()),
            #[cfg(windows)]
            RawStream::Pipe(s) => format!("pipe://{}", s.name),
        }
    }

    /// Reads until end of stream or a reset, within `within`; returns the bytes read and
    /// whether it ended by a reset (`Err` when the deadline passed first).
    pub fn read_until_closed(&mut self, within: Duration) -> Result<(Vec<u8>, bool), String> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the peer neither closed nor reset the connection within {within:?} \
                     ({} bytes read)",
                    out.len()
                ));
            }
            self.set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.read(&mut buf) {
                Ok(0) => return Ok((out, false)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok((out, true))
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads one frame (header and payload, the payload capped at 1 MiB) within [`T`].
    pub fn read_frame(&mut self) -> io::Result<(Header, Vec<u8>)> {
        self.set_read_timeout(Some(T))?;
        let mut h = [0u8; HEADER_LEN];
        self.read_exact(&mut h)?;
        let header = Header::decode(&h).map_err(io::Error::other)?;
        if header.payload_len > 1 << 20 {
            return Err(io::Error::other(format!(
                "frame payload of {} bytes",
                header.payload_len
            )));
        }
        let mut payload = vec![0u8; header.payload_len as usize];
        self.read_exact(&mut payload)?;
        Ok((header, payload))
    }
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            RawStream::Unix(s) => s.read(buf),
            #[cfg(feature = "tls")]
            RawStream::Tls(s) => s.read(buf),
            #[cfg(windows)]
            RawStream::Pipe(s) => s.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            RawStream::Unix(s) => s.write(buf),
            #[cfg(feature = "tls")]
            RawStream::Tls(s) => s.write(buf),
            #[cfg(windows)]
            RawStream::Pipe(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            #[cfg(feature = "tls")]
            RawStream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

/// A listener without duct, on any transport.
pub enum RawListener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
    /// Serves TLS: `accept` completes the TLS handshake.
    #[cfg(feature = "tls")]
    Tls(pki::TlsRawListener),
    /// A named pipe's one instance (accepts a single client).
    #[cfg(windows)]
    Pipe(RawPipeListener),
}

impl RawListener {
    pub fn accept(&self) -> io::Result<RawStream> {
        match self {
            RawListener::Tcp(l) => l.accept().map(|(s, _)| RawStream::Tcp(s)),
            #[cfg(unix)]
            RawListener::Unix(l) => l.accept().map(|(s, _)| RawStream::Unix(s)),
            #[cfg(feature = "tls")]
            RawListener::Tls(l) => l.accept().map(|s| RawStream::Tls(Box::new(s))),
            #[cfg(windows)]
            RawListener::Pipe(l) => l.accept().map(RawStream::Pipe),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw named pipes (Windows)
// ---------------------------------------------------------------------------------------------

/// The token of a raw pipe in its own poll.
#[cfg(windows)]
const RAW_PIPE: mio::Token = mio::Token(0);

/// A named pipe end without duct, used blocking: a mio `NamedPipe` (overlapped I/O) with a
/// `Poll` of its own that each call runs until its I/O is done. Reads honour the read
/// timeout ([`RawStream::set_read_timeout`]); a write returns once the pipe took all of it.
/// Dropping it closes the handle (after the poll has seen the cancelled read out).
#[cfg(windows)]
pub struct RawPipe {
    pipe: Option<mio::windows::NamedPipe>,
    poll: mio::Poll,
    events: mio::Events,
    read_timeout: Option<Duration>,
    name: String,
}

#[cfg(windows)]
impl RawPipe {
    fn new(mut pipe: mio::windows::NamedPipe, name: &str) -> io::Result<RawPipe> {
        let poll = mio::Poll::new()?;
        poll.registry().register(
            &mut pipe,
            RAW_PIPE,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        let mut raw = RawPipe {
            pipe: Some(pipe),
            poll,
            events: mio::Events::with_capacity(16),
            read_timeout: None,
            name: name.to_owned(),
        };
        // The registration's own readiness, so that a write's wait sees its completion only.
        raw.poll_once(Some(Duration::ZERO))?;
        Ok(raw)
    }

    /// Connects to the pipe `name`, waiting up to [`T`] while it is busy.
    pub fn connect(name: &str) -> io::Result<RawPipe> {
        let path = duct_sys::pipe::PipePath::new(name)?;
        let deadline = Instant::now() + T;
        loop {
            match duct_sys::pipe::open(&path) {
                Ok(pipe) => return RawPipe::new(pipe, name),
                Err(e) if duct_sys::pipe::is_busy(&e) && Instant::now() < deadline => {
                    let _ = duct_sys::pipe::wait_available(&path, Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn pipe(&self) -> io::Result<&mio::windows::NamedPipe> {
        self.pipe
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "raw pipe closed"))
    }

    /// Runs the poll once, up to `timeout`; returns (readable, writable) events seen.
    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<(bool, bool)> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok((false, false)),
            Err(e) => return Err(e),
        }
        let mut seen = (false, false);
        for ev in self.events.iter() {
            seen.0 |= ev.is_readable();
            seen.1 |= ev.is_writable();
        }
        Ok(seen)
    }

    /// Closes the pipe: the peer reads what was written, then the end.
    pub fn close(&mut self) {
        if self.pipe.take().is_some() {
            // The cancelled read's completion holds the handle open until the poll sees it.
            for _ in 0..5 {
                let _ = self.poll_once(Some(Duration::from_millis(20)));
            }
        }
    }
}

#[cfg(windows)]
impl Read for RawPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        loop {
            match (&mut self.pipe()?).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    self.poll_once(left)?;
                }
                other => return other,
            }
        }
    }
}

#[cfg(windows)]
impl Write for RawPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let deadline = Instant::now() + T;
        loop {
            match (&mut self.pipe()?).write(buf) {
                Ok(n) => {
                    // Done once its completion makes the pipe writable.
                    let left = |d: Instant| d.saturating_duration_since(Instant::now());
                    while !self.poll_once(Some(left(deadline)))?.1 {
                        if Instant::now() >= deadline {
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    self.poll_once(Some(Duration::from_millis(10)))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(windows)]
impl Drop for RawPipe {
    fn drop(&mut self) {
        self.close();
    }
}

/// A raw named-pipe server: one instance, made at once (dialers find the name), connected to
/// its client by `accept`.
#[cfg(windows)]
pub struct RawPipeListener {
    instance: Mutex<Option<RawPipe>>,
}

#[cfg(windows)]
impl RawPipeListener {
    pub fn bind(name: &str) -> io::Result<RawPipeListener> {
        let path = duct_sys::pipe::PipePath::new(name)?;
        let pipe = duct_sys::pipe::create_instance(&path, true)?;
        let raw = RawPipe::new(pipe, name)?;
        Ok(RawPipeListener {
            instance: Mutex::new(Some(raw)),
        })
    }

    /// Waits up to [`T`] for the client; the instance then is its stream (a second call
    /// fails).
    pub fn accept(&self) -> io::Result<RawPipe> {
        let mut raw = self
            .instance
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| io::Error::other("a raw pipe listener accepts once"))?;
        match raw.pipe()?.connect() {
            Ok(()) => return Ok(raw),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let (r, w) = raw.poll_once(Some(left))?;
            if r || w {
                if let Some(e) = raw.pipe()?.take_error()? {
                    return Err(e);
                }
                return Ok(raw);
            }
        }
    }
}

/// Encodes one frame: the header (its `payload_len` set from `payload`) and the payload.
pub fn frame(mut header: Header, payload: &[u8]) -> Vec<u8> {
    header.payload_len = payload.len() as u32;
    let mut v = header.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A `duct_proto::Session` driven by hand over a [`RawStream`]: the test decides what is
/// written and when, and can write bytes the session would never produce.
pub struct RawPeer {
    pub stream: RawStream,
    pub session: Session,
    inbuf: BytesMut,
}

impl RawPeer {
    /// A session for `role` with `config` over `stream` (a dialer's HELLO is queued, not
    /// yet written).
    pub fn new(stream: RawStream, config: Config, role: Role) -> RawPeer {
        RawPeer {
            stream,
            session: Session::new(config, role, Instant::now()),
            inbuf: BytesMut::new(),
        }
    }

    /// Connects to `addr` as a dialer with `config`.
    pub fn dial_with(addr: &str, config: Config) -> RawPeer {
        let stream = RawStream::connect(addr).unwrap_or_else(|e| panic!("raw connect {addr}: {e}"));
        RawPeer::new(stream, config, Role::Dialer)
    }

    /// Connects to `addr` as a dialer (its HELLO is queued, not yet written). Over `tls://`
    /// use [`Fixture::raw_dial`].
    pub fn dial(addr: &str) -> RawPeer {
        RawPeer::dial_with(addr, RawPeer::dialer_config())
    }

    /// The configuration [`RawPeer::dial`] uses.
    pub fn dialer_config() -> Config {
        Config {
            instance_id: 0x5eed,
            ..Config::default()
        }
    }

    /// Serves an accepted stream as a listener.
    pub fn serve(stream: RawStream) -> RawPeer {
        let config = Config {
            session_id: 0xABCD,
            ..Config::default()
        };
        RawPeer::new(stream, config, Role::Listener)
    }

    /// Writes every frame the session has queued.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(t) = self.session.poll_transmit() {
            self.stream.write_all(&t.header)?;
            self.stream.write_all(&t.payload)?;
        }
        self.stream.flush()
    }

    /// One read (waiting at most `within`) handed to the session. `Ok(0)` is end of stream.
    pub fn read_once(&mut self, within: Duration) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(within))?;
        let mut buf = [0u8; 64 * 1024];
        let n = self.stream.read(&mut buf)?;
        self.inbuf.extend_from_slice(&buf[..n]);
        self.session
            .handle_input(&mut self.inbuf, Instant::now())
            .map_err(io::Error::other)?;
        Ok(n)
    }

    /// Completes the handshake within [`T`] (HELLO out, WELCOME in; or HELLO in, WELCOME out).
    pub fn handshake(&mut self) {
        let deadline = Instant::now() + T;
        self.flush().expect("raw peer: write handshake");
        while self.session.state() != State::Established {
            assert!(
                Instant::now() < deadline,
                "raw peer: no handshake within {T:?}"
            );
            match self.read_once(Duration::from_millis(200)) {
                Ok(0) => panic!("raw peer: EOF during the handshake"),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("raw peer: handshake failed: {e}"),
            }
            self.flush().expect("raw peer: write handshake");
        }
    }

    /// Reads until the session reports an event or a message, or `within` passes.
    pub fn read_until_event(&mut self, within: Duration) -> Option<duct_proto::Event> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(ev) = self.session.poll_event() {
                if !matches!(ev, duct_proto::Event::Connected { .. }) {
                    return Some(ev);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.read_once(left) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }
}

/// A chaos proxy in front of `listener` (a tcp listener), and the `tcp://` address to dial
/// through it.
pub fn proxy_in_front(listener: &duct::Listener) -> (duct_testkit::ChaosProxy, String) {
    let target = match listener.local_addr() {
        duct::Addr::Tcp(a) => a,
        other => panic!("a chaos proxy needs a tcp listener, not {other}"),
    };
    let proxy = duct_testkit::ChaosProxy::start(target).expect("start the chaos proxy");
    let addr = format!("tcp://{}", proxy.addr());
    (proxy, addr)
}

/// CPU time the calling thread has used (Linux: `/proc/thread-self/stat`, user + system, in
/// clock ticks of 10 ms): for tests that a blocked call sleeps instead of spinning.
#[cfg(target_os = "linux")]
pub fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    Duration::from_millis(cpu_ticks(&stat) * 10)
}

/// User plus system CPU time, in clock ticks (10 ms), from the text of a `/proc/.../stat`.
pub fn cpu_ticks(stat: &str) -> u64 {
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// A duct echo server on tcp (heartbeats off) that accepts every (re)connection and echoes
/// on each, in threads; it lives as long as this value.
pub struct TcpEcho {
    pub addr: SocketAddr,
    _listener: Arc<Listener>,
}

pub fn tcp_echo_server() -> TcpEcho {
    let listener = Arc::new(
        listen(
            "tcp://127.0.0.1:0",
            ListenOptions::default().heartbeat(duct::Heartbeat::off()),
        )
        .expect("listen"),
    );
    let addr = match listener.local_addr() {
        duct::Addr::Tcp(a) => a,
        other => panic!("{other}"),
    };
    let l = Arc::clone(&listener);
    thread::spawn(move || {
        while let Ok(p) = l.accept() {
            thread::spawn(move || {
                while let Ok(m) = p.recv() {
                    if p.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    TcpEcho {
        addr,
        _listener: listener,
    }
}
