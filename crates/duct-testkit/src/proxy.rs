//! [`ChaosProxy`]: a fault-injecting TCP proxy. This module owns the listening socket, the
//! accepted and outgoing connections and their threads; what a fault means to the protocol
//! above is the tests' business.
//!
//! Threads: one accept thread per proxy, and one forwarding thread per direction per
//! connection. Every blocking call has a short timeout ([`TICK`]) so that threads notice fault
//! changes, resets and the proxy's drop promptly.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::SockRef;

/// The longest any proxy thread blocks before it looks at the faults and the stop flags again.
const TICK: Duration = Duration::from_millis(5);
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes a direction holds back (under `delay`) before it stops reading and lets TCP push
/// back on the sender.
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Under `throttle`, bytes go out in slices of about this fraction of a second's worth.
const THROTTLE_SLICES_PER_SEC: u64 = 50;
/// How long the proxy waits for the target to accept a new connection.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Numbers the proxies of a process, for thread names.
static NEXT_PROXY_ID: AtomicUsize = AtomicUsize::new(0);

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client (who dialed [`ChaosProxy::addr`]) to the target.
    ToTarget,
    /// From the target back to the client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToTarget => 0,
            Direction::ToClient => 1,
        }
    }
}

/// The faults in force. They combine (a delay and a throttle add up); a blackhole or a cut
/// overrides the rest for the directions it covers.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    blackhole: bool,
    delay: Duration,
    throttle: Option<u64>,
    cut: [bool; 2],
}

impl Faults {
    fn forwards(&self, dir: Direction) -> bool {
        !self.blackhole && !self.cut[dir.index()]
    }
}

/// A TCP proxy on `127.0.0.1` in front of a target address that injects faults on command.
///
/// Clients dial [`ChaosProxy::addr`]; for each connection the proxy dials the target and
/// forwards bytes both ways. The fault controls ([`pass`](Self::pass),
/// [`reset_all`](Self::reset_all), [`blackhole`](Self::blackhole), [`delay`](Self::delay),
/// [`throttle`](Self::throttle), [`cut`](Self::cut), [`refuse`](Self::refuse)) may be called
/// at any time from any thread and apply to every open connection and every later one, within
/// a few milliseconds.
///
/// Faults are byte-level and silent: bytes the proxy does not forward (blackhole, cut) are
/// read and thrown away, never delivered later, and neither end is told. Switching back to
/// [`pass`](Self::pass) forwards only bytes read from then on, so a framed protocol on top will
/// usually see a corrupt stream after a blackhole or cut it did not detect.
///
/// What it does not do: UDP, TLS awareness, corruption or reordering of bytes, partition of
/// one connection from another (faults are proxy-wide), or rates high enough for benchmarks.
///
/// # Drop
/// Dropping the proxy stops accepting, closes the listening socket and every proxied socket
/// (an orderly close, which the kernel turns into a reset when unread bytes remain), and joins
/// every thread it started before it returns: no thread or descriptor outlives it.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

/// State shared by the proxy handle, its accept thread and its forwarding threads.
struct Shared {
    id: usize,
    target: SocketAddr,
    faults: Mutex<Faults>,
    stopping: AtomicBool,
    /// `None` while refusing.
    listener: Mutex<Option<TcpListener>>,
    conns: Mutex<Vec<Arc<Conn>>>,
    accepted: AtomicU64,
    open: AtomicUsize,
    forwarded: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
}

/// One proxied connection: the client's socket and ours to the target. The forwarding threads
/// own duplicates of both; the sockets close when this and the threads are gone.
struct Conn {
    client: TcpStream,
    target: TcpStream,
    /// Set to make both forwarding threads quit (a reset, or one side failed).
    abort: AtomicBool,
    /// Forwarding threads that have finished (0..=2).
    finished: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later call into a second panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Closes `stream` with a reset (RST) rather than a FIN once its last descriptor is dropped.
fn set_reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

impl ChaosProxy {
    /// Starts a proxy on `127.0.0.1` (a free port) in front of `target`, forwarding
    /// untouched. The target is dialed once per accepted connection; when that fails, the
    /// client's connection is reset.
    pub fn start(target: SocketAddr) -> io::Result<ChaosProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            id: NEXT_PROXY_ID.fetch_add(1, Ordering::Relaxed),
            target,
            faults: Mutex::new(Faults::default()),
            stopping: AtomicBool::new(false),
            listener: Mutex::new(Some(listener)),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            dropped: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("chaos{}-accept", shared.id))
            .spawn(move || accept_shared.accept_loop())?;
        Ok(ChaosProxy {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address clients dial: `127.0.0.1` and the proxy's port (the same for the proxy's
    /// whole life, refusals included).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Forwards both directions untouched, clearing every fault set by
    /// [`blackhole`](Self::blackhole), [`delay`](Self::delay), [`throttle`](Self::throttle)
    /// and [`cut`](Self::cut). The default. [`refuse`](Self::refuse) is separate and stays as
    /// it is.
    pub fn pass(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// Resets every open connection on both sides (the client and the target each see
    /// `ECONNRESET`, or EOF if they were not reading), and keeps accepting new ones, which
    /// the faults in force apply to. Returns once the connections are gone.
    pub fn reset_all(&self) {
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in &conns {
            conn.abort();
        }
        for conn in conns {
            self.shared.retire(conn);
        }
    }

    /// Forwards nothing, either way, and tells nobody: the proxy keeps reading (so TCP sees
    /// every byte acknowledged), throws the bytes away and keeps every connection open, as a
    /// half-open link or a frozen host looks. New connections are accepted and blackholed
    /// too. [`pass`](Self::pass) ends it.
    pub fn blackhole(&self) {
        lock(&self.shared.faults).blackhole = true;
    }

    /// Holds every chunk read for `delay` before forwarding it, in both directions, keeping
    /// the order; a round trip through the proxy therefore takes at least twice `delay`.
    /// Chunks already held keep their release time. `Duration::ZERO` removes the delay.
    pub fn delay(&self, delay: Duration) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Forwards at most `bytes_per_sec` in each direction, in slices of about 1/50 s worth
    /// each: `n` bytes take at least `n / bytes_per_sec` seconds to arrive.
    ///
    /// # Panics
    /// If `bytes_per_sec` is zero (use [`blackhole`](Self::blackhole) or [`cut`](Self::cut)
    /// to stop traffic).
    pub fn throttle(&self, bytes_per_sec: u64) {
        assert!(bytes_per_sec > 0, "throttle(0): use blackhole() or cut()");
        lock(&self.shared.faults).throttle = Some(bytes_per_sec);
    }

    /// Stops forwarding in one direction, silently (bytes are read and thrown away, as in a
    /// blackhole); the other direction keeps working. Cuts add up: cutting both directions is
    /// a blackhole. [`pass`](Self::pass) ends them.
    pub fn cut(&self, dir: Direction) {
        lock(&self.shared.faults).cut[dir.index()] = true;
    }

    /// `true`: stop listening, so that new connections are refused (`ECONNREFUSED`), as a
    /// port with no server looks; connections already open keep going under the faults in
    /// force. `false`: listen again on the same address.
    ///
    /// Both take effect before the call returns. Listening again fails (with the bind
    /// error) if something else took the port meanwhile.
    pub fn refuse(&self, refuse: bool) -> io::Result<()> {
        let mut listener = lock(&self.shared.listener);
        if refuse {
            *listener = None;
        } else if listener.is_none() {
            let l = TcpListener::bind(self.addr)?;
            l.set_nonblocking(true)?;
            *listener = Some(l);
        }
        Ok(())
    }

    /// How many connections the proxy has accepted so far (including those whose target
    /// connect failed).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// How many proxied connections are open now. A connection counts until both of its
    /// directions have ended and its sockets are closed, which follows the ends' closes within
    /// a few milliseconds.
    pub fn connections_open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Bytes forwarded in `dir` so far, over every connection.
    pub fn bytes_forwarded(&self, dir: Direction) -> u64 {
        self.shared.forwarded[dir.index()].load(Ordering::Relaxed)
    }

    /// Bytes read in `dir` and thrown away (blackhole, cut) so far, over every connection.
    pub fn bytes_dropped(&self, dir: Direction) -> u64 {
        self.shared.dropped[dir.index()].load(Ordering::Relaxed)
    }
}

impl fmt::Debug for ChaosProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("faults", &*lock(&self.shared.faults))
            .field("refusing", &lock(&self.shared.listener).is_none())
            .field("connections_open", &self.connections_open())
            .finish()
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        *lock(&self.shared.listener) = None;
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in conns {
            self.shared.retire(conn);
        }
    }
}

impl Shared {
    fn faults(&self) -> Faults {
        *lock(&self.faults)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn accept_loop(self: Arc<Shared>) {
        while !self.stopping() {
            self.reap_finished();
            let accepted = match lock(&self.listener).as_ref() {
                Some(l) => l.accept(),
                None => Err(io::ErrorKind::WouldBlock.into()),
            };
            match accepted {
                Ok((client, _)) => self.open_conn(client),
                // Nothing to accept, refusing, or a transient error (ECONNABORTED, EMFILE).
                Err(_) => thread::sleep(TICK),
            }
        }
    }

    /// Retires connections whose two forwarding threads have finished.
    fn reap_finished(&self) {
        let done: Vec<Arc<Conn>> = {
            let mut conns = lock(&self.conns);
            let (done, live) = std::mem::take(&mut *conns)
                .into_iter()
                .partition(|c| c.finished.load(Ordering::Acquire) == 2);
            *conns = live;
            done
        };
        for conn in done {
            self.retire(conn);
        }
    }

    /// Joins a connection's threads (after they were told to stop, or finished) and closes
    /// its sockets.
    fn retire(&self, conn: Arc<Conn>) {
        let threads = std::mem::take(&mut *lock(&conn.threads));
        for t in threads {
            let _ = t.join();
        }
        drop(conn);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn open_conn(self: &Arc<Shared>, client: TcpStream) {
        let n = self.accepted.fetch_add(1, Ordering::Relaxed);
        let target = match TcpStream::connect_timeout(&self.target, TARGET_CONNECT_TIMEOUT) {
            Ok(t) => t,
            Err(_) => {
                set_reset_on_close(&client);
                return;
            }
        };
        // Registered under the same lock as the threads start, so that `reset_all` and drop
        // see every connection that may already have forwarded a byte.
        let mut conns = lock(&self.conns);
        // On failure the sockets were reset, which the client sees.
        if let Ok(conn) = self.spawn_forwarders(n, client, target) {
            self.open.fetch_add(1, Ordering::Relaxed);
            conns.push(conn);
        }
    }

    fn spawn_forwarders(
        self: &Arc<Shared>,
        n: u64,
        client: TcpStream,
        target: TcpStream,
    ) -> io::Result<Arc<Conn>> {
        let setup = |conn: &Conn| -> io::Result<()> {
            // Accepted sockets do not inherit the listener's non-blocking mode on Linux, but
            // other systems differ.
            conn.client.set_nonblocking(false)?;
            for s in [&conn.client, &conn.target] {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(TICK))?;
            }
            Ok(())
        };
        let conn = Arc::new(Conn {
            client,
            target,
            abort: AtomicBool::new(false),
            finished: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let spawned = setup(&conn).and_then(|()| {
            for dir in [Direction::ToTarget, Direction::ToClient] {
                let (src, dst) = match dir {
                    Direction::ToTarget => (&conn.client, &conn.target),
                    Direction::ToClient => (&conn.target, &conn.client),
                };
                let fwd = Forwarder {
                    shared: Arc::clone(self),
                    conn: Arc::clone(&conn),
                    dir,
                    src: src.try_clone()?,
                    dst: dst.try_clone()?,
                    pending: VecDeque::new(),
                    pending_bytes: 0,
                    paced_until: Instant::now(),
                };
                let arrow = if dir == Direction::ToTarget { '>' } else { '<' };
                let t = thread::Builder::new()
                    .name(format!("chaos{}-{n}{arrow}", self.id))
                    .spawn(move || fwd.run())?;
                lock(&conn.threads).push(t);
            }
            Ok(())
        });
        match spawned {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.abort();
                let threads = std::mem::take(&mut *lock(&conn.threads));
                for t in threads {
                    let _ = t.join();
                }
                Err(e)
            }
        }
    }
}

impl Conn {
    /// Makes both forwarding threads quit, and the sockets close with a reset.
    fn abort(&self) {
        set_reset_on_close(&self.client);
        set_reset_on_close(&self.target);
        self.abort.store(true, Ordering::Release);
    }
}

/// Why a forwarding thread stops early: the proxy is dropped, the connection was reset, or a
/// socket failed (and the connection is being reset because of it).
struct Halt;

/// One direction of one connection: reads `src`, applies the faults, writes `dst`.
struct Forwarder {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    dir: Direction,
    src: TcpStream,
    dst: TcpStream,
    /// Chunks read and held until their release time (under `delay`), in order.
    pending: VecDeque<(Instant, Vec<u8>)>,
    pending_bytes: usize,
    /// Under `throttle`: when the bytes sent so far have used up their share of the rate.
    paced_until: Instant,
}

impl Forwarder {
    fn run(mut self) {
        let _ = self.forward();
        self.conn.finished.fetch_add(1, Ordering::Release);
    }

    fn forward(&mut self) -> Result<(), Halt> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut src_closed = false;
        loop {
            self.check()?;
            let faults = self.shared.faults();
            if faults.forwards(self.dir) {
                self.release_due()?;
            } else {
                self.discard_pending();
            }
            if src_closed {
                // Pass the close on once everything before it is out; while this direction
                // forwards nothing, the close is held back too.
                if faults.forwards(self.dir) && self.pending.is_empty() {
                    let _ = self.dst.shutdown(Shutdown::Write);
                    return Ok(());
                }
                thread::sleep(self.wait());
                continue;
            }
            if self.pending_bytes >= MAX_PENDING_BYTES {
                thread::sleep(self.wait());
                continue;
            }
            if self.src.set_read_timeout(Some(self.wait())).is_err() {
                return self.fail();
            }
            match self.src.read(&mut buf) {
                Ok(0) => src_closed = true,
                Ok(n) => {
                    let faults = self.shared.faults();
                    if faults.forwards(self.dir) {
                        self.pending
                            .push_back((Instant::now() + faults.delay, buf[..n].to_vec()));
                        self.pending_bytes += n;
                    } else {
                        self.count_dropped(n);
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => return self.fail(),
            }
        }
    }

    /// Stops if the proxy is going away or the connection is being reset.
    fn check(&self) -> Result<(), Halt> {
        if self.shared.stopping() || self.conn.abort.load(Ordering::Acquire) {
            Err(Halt)
        } else {
            Ok(())
        }
    }

    /// A socket failed: reset the whole connection, as a router would once one side is gone.
    fn fail(&self) -> Result<(), Halt> {
        self.conn.abort();
        Err(Halt)
    }

    /// How long to block next: until the next held chunk is due, at most a tick.
    fn wait(&self) -> Duration {
        match self.pending.front() {
            Some((due, _)) => due
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), TICK),
            None => TICK,
        }
    }

    fn count_dropped(&self, n: usize) {
        self.shared.dropped[self.dir.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    fn discard_pending(&mut self) {
        if self.pending_bytes > 0 {
            self.count_dropped(self.pending_bytes);
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Sends every held chunk whose time has come, in order.
    fn release_due(&mut self) -> Result<(), Halt> {
        while self
            .pending
            .front()
            .is_some_and(|(due, _)| *due <= Instant::now())
        {
            let Some((_, chunk)) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= chunk.len();
            self.send(&chunk)?;
        }
        Ok(())
    }

    /// Sends one chunk under the faults in force, which may change while it goes out.
    fn send(&mut self, chunk: &[u8]) -> Result<(), Halt> {
        let mut rest = chunk;
        while !rest.is_empty() {
            let faults = self.shared.faults();
            if !faults.forwards(self.dir) {
                self.count_dropped(rest.len());
                return Ok(());
            }
            let n = match faults.throttle {
                Some(rate) => {
                    let slice = (rate / THROTTLE_SLICES_PER_SEC).clamp(1, READ_CHUNK as u64);
                    let n = rest.len().min(slice as usize);
                    // The slice leaves once the rate allows all bytes so far, itself
                    // included: n bytes never arrive sooner than n / rate.
                    let now = Instant::now();
                    self.paced_until =
                        self.paced_until.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
                    self.sleep_until(self.paced_until)?;
                    n
                }
                None => rest.len(),
            };
            let (piece, tail) = rest.split_at(n);
            self.write_all(piece)?;
            self.shared.forwarded[self.dir.index()].fetch_add(n as u64, Ordering::Relaxed);
            rest = tail;
        }
        Ok(())
    }

    fn sleep_until(&self, until: Instant) -> Result<(), Halt> {
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            thread::sleep((until - now).min(TICK));
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), Halt> {
        while !data.is_empty() {
            self.check()?;
            match self.dst.write(data) {
                Ok(0) => return self.fail(),
                Ok(n) => data = &data[n..],
                Err(e) if is_timeout(&e) => {}
                Err(_) => return self.fail(),
            }
        }
        Ok(())
    }
}
