//! The reactor: background threads that serve every pipe of the process while the application
//! is not calling duct.
//!
//! One reactor thread by default (see [`crate::set_reactor_threads`] and the
//! `DUCT_REACTOR_THREADS` environment variable), shared by every pipe: a thousand idle pipes
//! are a thousand registrations, not a thousand threads. Each thread owns a `mio::Poll` (epoll
//! on Linux, kqueue and IOCP elsewhere), a timer heap and a small command inbox.
//!
//! What a reactor thread does for a pipe is the pipe's business: the reactor only reports
//! readiness ([`Reactive::on_ready`]) and due timers ([`Reactive::on_timer`]). The pipe decides
//! whether the reactor or a waiting caller does the I/O (see `conn.rs`: the caller's inline
//! path is kept, and the reactor stays out of its way while it is active).
//!
//! Lifetime: the threads start on first use and live for the process. They hold only weak
//! references to pipes, and never keep a process from exiting (Rust does not wait for them
//! when `main` returns).
//!
//! Ordering guarantee: a source's entry in the reactor's table is added (through the inbox)
//! before its fd is registered with the poller, and the inbox is drained after every wait and
//! before events are dispatched, so no readiness event can arrive for an unknown source.
//!
//! What is registered differs by OS (an fd on Unix; on Windows a socket's watch, or a named
//! pipe that stays registered for its whole life and passes its events on): see
//! [`super::sys`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::sys::{self, Readiness};

/// Something the reactor serves: a pipe (or, later, a listener).
pub(crate) trait Reactive: Send + Sync {
    /// The registered fd became ready. Readiness is edge-triggered: a source that stops
    /// before `WouldBlock` must re-register (or schedule a timer) to hear of the rest.
    fn on_ready(&self, readable: bool, writable: bool);
    /// A timer the source scheduled is due (spurious calls are possible and harmless).
    fn on_timer(&self, now: Instant);
}

/// Token of the inbox waker.
const WAKER: Token = Token(usize::MAX);

enum Command {
    Add(usize, Weak<dyn Reactive>),
    Remove(usize),
    Timer(usize, Instant),
    /// Keep the source alive (a pipe lingering after its last handle was dropped).
    Hold(usize, Arc<dyn Reactive>),
    /// Stop keeping it alive.
    Release(usize),
}

struct Worker {
    registry: Registry,
    waker: Waker,
    inbox: Mutex<Vec<Command>>,
    next_token: AtomicUsize,
}

/// A source's registration with one reactor thread. Dropping it removes the source.
pub(crate) struct ReactorHandle {
    worker: Arc<Worker>,
    token: usize,
    /// The source itself: where a named pipe's readiness is sent while this source watches
    /// it (Windows; see `sys::set_interest`).
    #[cfg(windows)]
    source: Weak<dyn Reactive>,
}

static REACTOR: OnceLock<Vec<Arc<Worker>>> = OnceLock::new();
static REQUESTED_THREADS: AtomicUsize = AtomicUsize::new(0);
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(0);

/// Sets how many reactor threads serve the process's pipes and listeners (default 1, or the
/// `DUCT_REACTOR_THREADS` environment variable). Pipes are spread over them round-robin.
///
/// Must be called before the first `listen` or `dial`; afterwards it fails with
/// [`crate::ErrorKind::Unsupported`], since the threads are already running. Counts are
/// clamped to 1..=64. The threads (named `duct-reactor-N`) live for the process and never keep
/// it from exiting.
///
/// ```
/// duct::set_reactor_threads(2).expect("before the first pipe");
/// ```
pub fn set_reactor_threads(threads: usize) -> crate::Result<()> {
    if REACTOR.get().is_some() {
        return Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "set_reactor_threads: the reactor is already running; call it before the first \
             listen or dial",
        ));
    }
    REQUESTED_THREADS.store(threads.clamp(1, 64), Ordering::SeqCst);
    Ok(())
}

fn thread_count() -> usize {
    match REQUESTED_THREADS.load(Ordering::SeqCst) {
        0 => std::env::var("DUCT_REACTOR_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(1, |n| n.clamp(1, 64)),
        n => n,
    }
}

fn workers() -> io::Result<&'static [Arc<Worker>]> {
    if let Some(w) = REACTOR.get() {
        return Ok(w);
    }
    // One initialiser at a time, so that racing first uses start the threads once.
    static INIT: Mutex<()> = Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = REACTOR.get() {
        return Ok(w);
    }
    let started = (0..thread_count())
        .map(start)
        .collect::<io::Result<Vec<_>>>()?;
    let _ = REACTOR.set(started);
    Ok(REACTOR.get().expect("set above"))
}

fn start(index: usize) -> io::Result<Arc<Worker>> {
    let poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let worker = Arc::new(Worker {
        registry,
        waker,
        inbox: Mutex::new(Vec::new()),
        next_token: AtomicUsize::new(0),
    });
    let w = Arc::clone(&worker);
    std::thread::Builder::new()
        .name(format!("duct-reactor-{index}"))
        .spawn(move || run(w, poll))?;
    Ok(worker)
}

/// Registers `source` with a reactor thread (round-robin) and returns its handle. The fd is
/// not polled until [`ReactorHandle::set_interest`] asks for it.
pub(crate) fn register(source: Weak<dyn Reactive>) -> io::Result<ReactorHandle> {
    let all = workers()?;
    let worker = Arc::clone(&all[NEXT_WORKER.fetch_add(1, Ordering::Relaxed) % all.len()]);
    let token = worker.next_token.fetch_add(1, Ordering::Relaxed);
    #[cfg(windows)]
    let own = Weak::clone(&source);
    worker.send(Command::Add(token, source));
    Ok(ReactorHandle {
        worker,
        token,
        #[cfg(windows)]
        source: own,
    })
}

impl Worker {
    fn send(&self, cmd: Command) {
        self.inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd);
        // A failed wake means the poller is gone; nothing more can be done for this source.
        let _ = self.waker.wake();
    }
}

impl ReactorHandle {
    /// Changes which readiness the reactor watches for `src`: `from` is what is registered
    /// now, `to` what should be (`None`: nothing). Registration (`None` → `Some`) reports
    /// readiness that already exists, so re-arming never misses data that arrived meanwhile.
    pub(crate) fn set_interest(
        &self,
        src: Readiness<'_>,
        from: Option<Interest>,
        to: Option<Interest>,
    ) -> io::Result<()> {
        #[cfg(unix)]
        return sys::set_interest(&self.worker.registry, Token(self.token), src, from, to);
        #[cfg(windows)]
        return sys::set_interest(
            &self.worker.registry,
            Token(self.token),
            &self.source,
            src,
            from,
            to,
        );
    }

    /// Registers `source` with this thread's poller under this handle's token, for good: a
    /// Windows named pipe, whose overlapped I/O works only while it is registered (its events
    /// reach the source that owns this handle, which passes them on).
    #[cfg(windows)]
    pub(crate) fn register_for_life(&self, source: &mut impl mio::event::Source) -> io::Result<()> {
        self.worker.registry.register(
            source,
            Token(self.token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Asks for [`Reactive::on_timer`] at `at` (or soon after).
    pub(crate) fn schedule(&self, at: Instant) {
        self.worker.send(Command::Timer(self.token, at));
    }

    /// Keeps `source` alive until [`ReactorHandle::release`]: for a pipe whose last handle
    /// was dropped while output was still queued, so that the reactor can finish writing it.
    pub(crate) fn hold(&self, source: Arc<dyn Reactive>) {
        self.worker.send(Command::Hold(self.token, source));
    }

    /// Ends a [`ReactorHandle::hold`]; the source is dropped on the reactor thread.
    pub(crate) fn release(&self) {
        self.worker.send(Command::Release(self.token));
    }
}

impl Drop for ReactorHandle {
    fn drop(&mut self) {
        self.worker.send(Command::Remove(self.token));
    }
}

fn run(worker: Arc<Worker>, mut poll: Poll) {
    let mut events = Events::with_capacity(1024);
    let mut sources: HashMap<usize, Weak<dyn Reactive>> = HashMap::new();
    let mut timers: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut held: HashMap<usize, Arc<dyn Reactive>> = HashMap::new();
    let mut inbox = Vec::new();
    loop {
        let timeout = timers
            .peek()
            .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "duct reactor: poll failed; retrying");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        std::mem::swap(
            &mut inbox,
            &mut *worker.inbox.lock().unwrap_or_else(|p| p.into_inner()),
        );
        for cmd in inbox.drain(..) {
            match cmd {
                Command::Add(t, s) => {
                    sources.insert(t, s);
                }
                Command::Remove(t) => {
                    sources.remove(&t);
                }
                Command::Timer(t, at) => timers.push(Reverse((at, t))),
                Command::Hold(t, s) => {
                    held.insert(t, s);
                }
                Command::Release(t) => {
                    held.remove(&t);
                }
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let Some(source) = sources.get(&ev.token().0).and_then(Weak::upgrade) else {
                continue;
            };
            let hup = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
            source.on_ready(ev.is_readable() || hup, ev.is_writable() || hup);
        }
        let now = Instant::now();
        while let Some(Reverse((at, token))) = timers.peek().copied() {
            if at > now {
                break;
            }
            timers.pop();
            if let Some(source) = sources.get(&token).and_then(Weak::upgrade) {
                source.on_timer(now);
            }
        }
        // Drop timers of sources that are gone, so the heap stays bounded by live sources'
        // pending deadlines.
        if timers.len() > 4 * sources.len() + 64 {
            timers.retain(|Reverse((_, t))| sources.contains_key(t));
        }
    }
}
