//! The reactor: background threads that serve every pipe of the process while the application
//! is not calling duct.
//!
//! One reactor thread by default (see [`crate::set_reactor_threads`] and the
//! `DUCT_REACTOR_THREADS` environment variable), shared by every pipe: a thousand idle pipes
//! are a thousand registrations, not a thousand threads. Each thread owns a poller (see
//! [`super::backend`]: a `mio::Poll`, which is epoll on Linux, kqueue and IOCP elsewhere; or
//! on Linux an io_uring), a timer heap and a small command inbox.
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
//! before events are dispatched, so no readiness event can arrive for an unknown source. (With
//! io_uring, registrations of connected sockets go through the inbox, and the thread applies
//! them after the `Add`s it took with them.) The inbox is also drained before every wait:
//! commands the reactor thread sends itself (a source's timer, from its `on_ready`) do not
//! wake it.
//!
//! What is registered differs by OS (an fd on Unix; on Windows a socket's watch, or a named
//! pipe that stays registered for its whole life and passes its events on): see
//! [`super::sys`].

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use mio::{Interest, Token};

use super::backend::{self, Backend, Control, Poller};
use super::sys::{self, Readiness};
use super::wakers;

/// Something the reactor serves: a pipe (or, later, a listener).
pub(crate) trait Reactive: Send + Sync {
    /// The registered fd became ready. Readiness is edge-triggered: a source that stops
    /// before `WouldBlock` must re-register (or schedule a timer) to hear of the rest.
    /// `closed`: the event reports a hang-up or an error (then readable and writable too),
    /// which raises no event again: a reader goes on to the end, past a short read.
    fn on_ready(&self, readable: bool, writable: bool, closed: bool);
    /// A timer the source scheduled is due (spurious calls are possible and harmless).
    ///
    /// A source has one timer: [`ReactorHandle::schedule`] moves it earlier, never later, and
    /// it fires once. A source that still needs a later deadline than the one that fired asks
    /// for it again (here, or whenever it learns of it).
    fn on_timer(&self, now: Instant);
    /// A receive the source staged with [`stage_recv`] completed: the buffer it lent, back
    /// and extended by what arrived, and the result (`Ok(0)`: end of stream; `WouldBlock`:
    /// nothing there).
    #[cfg(duct_uring)]
    fn on_recv(&self, buf: bytes::BytesMut, result: io::Result<usize>) {
        let _ = (buf, result);
    }
    /// A send the source staged with [`stage_send`] completed: the write queue it lent, back,
    /// and the bytes the socket took (`WouldBlock`: none, it was full).
    #[cfg(duct_uring)]
    fn on_send(&self, queue: Box<super::io::WriteQueue>, result: io::Result<usize>) {
        let _ = (queue, result);
    }
}

/// A registered source became ready (what a backend's wait reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) token: usize,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// A hang-up or an error (see [`Reactive::on_ready`]).
    pub(crate) closed: bool,
}

impl Ready {
    /// What an event of mio's epoll says, as every backend reports it: an error or a hang-up
    /// (either direction) counts as readable and writable too.
    pub(crate) fn of(ev: &mio::event::Event) -> Ready {
        let hup = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
        Ready {
            token: ev.token().0,
            readable: ev.is_readable() || hup,
            writable: ev.is_writable() || hup,
            closed: hup,
        }
    }
}

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
    control: Control,
    inbox: Mutex<Inbox>,
    next_token: AtomicUsize,
}

/// Commands an inbox has room for from the start (it grows if a pass brings more, and keeps
/// what it grew to): a timer command per pipe of a pass and then some, so that a reactor
/// serving a few hundred pipes allocates nothing for its commands however they bunch up.
const INBOX_COMMANDS: usize = 512;

struct Inbox {
    commands: Vec<Command>,
    /// io_uring: the registration each source wants, the latest per source (bounded by the
    /// live sources), applied by the thread after the commands taken with it.
    #[cfg(duct_uring)]
    interest: TokenMap<WantedInterest>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            commands: Vec::with_capacity(INBOX_COMMANDS),
            #[cfg(duct_uring)]
            interest: TokenMap::default(),
        }
    }
}

/// What a source asked the io_uring backend to watch.
#[cfg(duct_uring)]
struct WantedInterest {
    /// The source's own fd number (to duplicate again when its poll must be re-armed: the
    /// backend checks that it still names the same file). `hold` is what is polled first.
    fd: std::os::fd::RawFd,
    /// A duplicate of the source's fd, made while the source lent it: the thread arms its
    /// poll later, when the source may have closed its fd and the number may name another
    /// file; the duplicate keeps naming this one until the kernel has taken it.
    hold: Option<std::os::fd::OwnedFd>,
    interest: Option<Interest>,
    /// Arm a new poll even if the same one is armed: a registration (or a change of
    /// interest, as epoll's `EPOLL_CTL_MOD`) reports readiness that is already there.
    fresh: bool,
}

thread_local! {
    /// The worker whose reactor thread this is (its address), or 0.
    static CURRENT_WORKER: Cell<usize> = const { Cell::new(0) };
}

/// An io_uring reactor thread's batched receives and sends (see [`stage_recv`],
/// [`stage_send`]).
#[cfg(duct_uring)]
struct RingIo {
    ring: duct_sys::uring::IoRing<super::io::WriteQueue>,
    /// The pipe that staged each queued request, by the request's tag. (The fd a request
    /// uses stays open until its completion: the pipe keeps its transport while a request
    /// holds its read or write side, and a lent write queue holds it too.)
    staged: Vec<Option<Arc<dyn Reactive>>>,
    /// Requests may be staged now: the thread is dispatching events and timers, and
    /// completes what was staged before it waits again.
    open: bool,
    /// Readiness events in the pass being dispatched.
    pass_events: usize,
    /// Completions being handed out (kept for its capacity).
    done: Vec<(
        Arc<dyn Reactive>,
        duct_sys::uring::Done<super::io::WriteQueue>,
    )>,
}

/// Requests one reactor pass may queue: twice the events one wait takes at most (the
/// poller's completion queue, `sys/uring.rs`), so that every pipe of a pass fits with a
/// receive and a send (a pipe that finds the ring full makes its own system call instead).
#[cfg(duct_uring)]
const RING_IO_ENTRIES: u32 = 2048;

/// The environment variable that keeps the reactor's reads and writes off its io_uring ring
/// (`0`): each pipe then makes its own `recv` and `sendmsg`, as on epoll. For comparisons; the
/// default is on.
#[cfg(duct_uring)]
pub(crate) const RING_IO_ENV: &str = "DUCT_URING_IO";

#[cfg(duct_uring)]
thread_local! {
    /// An io_uring reactor thread's I/O ring, if it could set one up.
    static RING_IO: std::cell::RefCell<Option<RingIo>> = const { std::cell::RefCell::new(None) };
}

/// Sets up this (io_uring reactor) thread's I/O ring; without one, pipes read with `recv`.
#[cfg(duct_uring)]
fn start_ring_io() {
    if std::env::var_os(RING_IO_ENV).is_some_and(|v| v == "0") {
        tracing::debug!("duct reactor (io_uring): reads and writes through the ring are off");
        return;
    }
    match duct_sys::uring::IoRing::new(RING_IO_ENTRIES) {
        Ok(ring) => RING_IO.with(|c| {
            *c.borrow_mut() = Some(RingIo {
                ring,
                staged: (0..RING_IO_ENTRIES).map(|_| None).collect(),
                open: false,
                pass_events: 0,
                done: Vec::with_capacity(RING_IO_ENTRIES as usize),
            });
        }),
        Err(e) => tracing::info!(
            error = %e,
            "duct reactor (io_uring): no ring for reads and writes; pipes make their own calls"
        ),
    }
}

/// On an io_uring reactor thread while it dispatches events and timers: queues a receive
/// from the socket `fd` into the spare capacity of `buf` in the thread's I/O ring, to be
/// submitted with every other receive of this pass in one system call. The result comes to
/// `source`'s [`Reactive::on_recv`] before the thread waits again (or before it blocks on a
/// pipe: see [`complete_staged`]); `source` keeps the transport `fd` belongs to until then.
/// Anywhere else, or with the ring full, gives `buf` back: the caller reads itself.
#[cfg(duct_uring)]
pub(crate) fn stage_recv(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: bytes::BytesMut,
    source: Arc<dyn Reactive>,
) -> Result<(), bytes::BytesMut> {
    stage(buf, source, |ring, buf| ring.push_recv(fd, buf))
}

/// On an io_uring reactor thread while it dispatches events and timers: queues a send of
/// `queue`'s unwritten bytes (from its own memory) to the socket `fd` in the thread's I/O
/// ring, to be submitted with every other request of this pass in one system call. The
/// queue comes back to `source`'s [`Reactive::on_send`] with the result, as in
/// [`stage_recv`]. Anywhere else, or with the ring full, gives `queue` back: the caller
/// writes itself.
#[cfg(duct_uring)]
pub(crate) fn stage_send(
    fd: std::os::fd::BorrowedFd<'_>,
    queue: Box<super::io::WriteQueue>,
    source: Arc<dyn Reactive>,
) -> Result<(), Box<super::io::WriteQueue>> {
    stage(queue, source, |ring, queue| ring.push_send(fd, queue))
}

/// Queues a request with `push` in this thread's I/O ring if it is open for staging, and
/// remembers whose it is; otherwise (or with the ring full) gives `item` back.
#[cfg(duct_uring)]
fn stage<T>(
    item: T,
    source: Arc<dyn Reactive>,
    push: impl FnOnce(&mut duct_sys::uring::IoRing<super::io::WriteQueue>, T) -> Result<usize, T>,
) -> Result<(), T> {
    RING_IO.with(|c| {
        let Ok(mut io) = c.try_borrow_mut() else {
            return Err(item);
        };
        let Some(io) = io.as_mut().filter(|io| io.open) else {
            return Err(item);
        };
        let tag = push(&mut io.ring, item)?;
        if io.staged.len() <= tag {
            io.staged.resize_with(tag + 1, || None);
        }
        io.staged[tag] = Some(source);
        Ok(())
    })
}

/// Whether this thread has an I/O ring for which `f` holds.
#[cfg(duct_uring)]
fn ring_io_is(f: impl FnOnce(&RingIo) -> bool) -> bool {
    RING_IO.with(|c| c.try_borrow().is_ok_and(|io| io.as_ref().is_some_and(f)))
}

/// Whether requests may be staged on this thread now (see [`stage_recv`]).
#[cfg(duct_uring)]
pub(crate) fn can_stage() -> bool {
    ring_io_is(|io| io.open)
}

/// Pipes a pass must have ready for the reactor to read for callers that poll (see
/// [`reads_for_pollers`]).
#[cfg(duct_uring)]
const POLLED_BATCH: usize = 4;

/// Whether the reactor should read for a pipe whose caller polls (`try_recv`) rather than
/// leave the socket to it: when its reads go through the ring and this pass has several pipes
/// ready, so that one system call replaces several pollers' `recv`s. (For one pipe, the
/// poller's own `recv` is cheaper than a read here plus the hand-off of what it brought.)
#[cfg(duct_uring)]
pub(crate) fn reads_for_pollers() -> bool {
    ring_io_is(|io| io.open && io.pass_events >= POLLED_BATCH)
}

/// Whether this thread has requests staged and not completed.
#[cfg(duct_uring)]
pub(crate) fn has_staged() -> bool {
    ring_io_is(|io| io.ring.outstanding() > 0)
}

/// Submits this thread's staged receives and sends in one system call and hands each its
/// result. The reactor calls it after every pass; a pipe calls it before its reactor thread
/// would block on a pipe (a staged request holds that pipe's read or write side until it
/// completes). Nothing is staged while the results are handed out (those pipes make their
/// own calls).
#[cfg(duct_uring)]
pub(crate) fn complete_staged() {
    RING_IO.with(|c| {
        let (mut done, open) = {
            let Ok(mut io) = c.try_borrow_mut() else {
                return;
            };
            let Some(io) = io.as_mut() else { return };
            if io.ring.outstanding() == 0 {
                return;
            }
            let mut done = std::mem::take(&mut io.done);
            let RingIo { ring, staged, .. } = io;
            if let Err(e) = ring.complete_all(|tag, d| {
                if let Some(s) = staged.get_mut(tag).and_then(Option::take) {
                    done.push((s, d));
                }
            }) {
                // The requests stay queued: the next pass submits them again.
                tracing::warn!(error = %e, "duct reactor (io_uring): submitting I/O failed");
            }
            (done, std::mem::replace(&mut io.open, false))
        };
        for (source, d) in done.drain(..) {
            match d {
                duct_sys::uring::Done::Recv(buf, res) => source.on_recv(buf, res),
                duct_sys::uring::Done::Send(queue, res) => source.on_send(queue, res),
            }
            wakers::wake_deferred();
        }
        if let Ok(mut io) = c.try_borrow_mut() {
            if let Some(io) = io.as_mut() {
                io.open = open;
                io.done = done;
            }
        }
    });
}

/// Opens this thread's I/O ring for staging, for a pass of `events` readiness events (or
/// closes it: `None`).
#[cfg(duct_uring)]
fn open_staging(events: Option<usize>) {
    RING_IO.with(|c| {
        if let Ok(mut io) = c.try_borrow_mut() {
            if let Some(io) = io.as_mut() {
                io.open = events.is_some();
                io.pass_events = events.unwrap_or(0);
            }
        }
    });
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
    let requested = backend::requested();
    let mut uring = matches!(requested, Backend::Auto | Backend::Uring);
    if requested == Backend::Uring && !cfg!(duct_uring) {
        tracing::warn!(
            "duct reactor: io_uring was asked for, but this build has no io_uring backend \
             (Linux with the `io-uring` feature); using {}",
            Backend::Epoll
        );
        uring = false;
    }
    let mut started = Vec::new();
    let mut running = Backend::Uring;
    for index in 0..thread_count() {
        let (worker, backend) = start(index, uring, requested)?;
        if backend != Backend::Uring {
            // The others would fail the same way: they start on epoll at once.
            uring = false;
            running = backend;
        }
        started.push(worker);
    }
    backend::set_running(running);
    let _ = REACTOR.set(started);
    Ok(REACTOR.get().expect("set above"))
}

/// Starts reactor thread `index` on io_uring if `uring` and it can, else on epoll (saying
/// why, as a warning if io_uring was asked for by name).
fn start(index: usize, uring: bool, requested: Backend) -> io::Result<(Arc<Worker>, Backend)> {
    #[cfg(duct_uring)]
    if uring {
        match start_on(index, Poller::uring) {
            Ok(started) => return Ok(started),
            Err(e) if requested == Backend::Uring => tracing::warn!(
                error = %e,
                "duct reactor: io_uring cannot start; using epoll"
            ),
            Err(e) => tracing::info!(
                error = %e,
                "duct reactor: io_uring unavailable; using epoll"
            ),
        }
    }
    let _ = (uring, requested);
    start_on(index, Poller::epoll)
}

/// Starts reactor thread `index` with the poller `make` sets up on that thread (io_uring wants
/// the thread that submits to be the one that waits). Returns once it is set up.
fn start_on(
    index: usize,
    make: fn() -> io::Result<(Poller, Control)>,
) -> io::Result<(Arc<Worker>, Backend)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("duct-reactor-{index}"))
        .spawn(move || match make() {
            Ok((poller, control)) => {
                #[cfg(duct_uring)]
                if poller.backend() == Backend::Uring {
                    start_ring_io();
                }
                let worker = Arc::new(Worker {
                    control,
                    inbox: Mutex::new(Inbox::default()),
                    next_token: AtomicUsize::new(0),
                });
                let _ = tx.send(Ok((Arc::clone(&worker), poller.backend())));
                run(worker, poller);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
    match rx.recv() {
        Ok(Ok(started)) => Ok(started),
        Ok(Err(e)) => {
            // The thread ends at once: wait for it, so that it is gone before another thread
            // takes its name.
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other("the reactor thread ended while starting")),
    }
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
            .commands
            .push(cmd);
        self.wake();
    }

    /// Wakes the thread, unless this is the thread: it takes its inbox before it waits.
    fn wake(&self) {
        if CURRENT_WORKER.with(Cell::get) != self as *const Worker as usize {
            self.control.wake();
        }
    }

    /// io_uring: records what `token`'s source wants watched, for the thread to apply.
    #[cfg(duct_uring)]
    fn want_interest(
        &self,
        token: usize,
        src: Readiness<'_>,
        from: Option<Interest>,
        to: Option<Interest>,
    ) {
        if from == to {
            return;
        }
        use std::os::fd::AsRawFd;
        let hold = match to {
            Some(_) => src
                .try_clone_to_owned()
                .map_err(|e| {
                    // (Out of fds: poll the number itself; see `WantedInterest::hold`.)
                    tracing::debug!(error = %e, "duct reactor (io_uring): cannot duplicate an fd");
                })
                .ok(),
            None => None,
        };
        // (Not the duplicate's number: the duplicate is closed once the kernel has taken the
        // poll, and its number may then name any other file.)
        let fd = src.as_raw_fd();
        let fresh = to.is_some();
        {
            let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
            let earlier = inbox.interest.get(&token).is_some_and(|w| w.fresh);
            inbox.interest.insert(
                token,
                WantedInterest {
                    fd,
                    hold,
                    interest: to,
                    fresh: earlier || fresh,
                },
            );
        }
        self.wake();
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
        match &self.worker.control {
            #[cfg(unix)]
            Control::Epoll { registry, .. } => {
                sys::set_interest(registry, Token(self.token), src, from, to)
            }
            #[cfg(windows)]
            Control::Epoll { registry, .. } => {
                sys::set_interest(registry, Token(self.token), &self.source, src, from, to)
            }
            // Listening sockets go to the thread's epoll instance, at once (see
            // `sys/uring.rs`: io_uring would keep a closed listener's address taken).
            #[cfg(duct_uring)]
            Control::Uring { listeners, .. } if sys::uring::is_listening(src) => {
                sys::set_interest(listeners, Token(self.token), src, from, to)
            }
            #[cfg(duct_uring)]
            Control::Uring { .. } => {
                self.worker.want_interest(self.token, src, from, to);
                Ok(())
            }
        }
    }

    /// Registers `source` with this thread's poller under this handle's token, for good: a
    /// Windows named pipe, whose overlapped I/O works only while it is registered (its events
    /// reach the source that owns this handle, which passes them on).
    #[cfg(windows)]
    pub(crate) fn register_for_life(&self, source: &mut impl mio::event::Source) -> io::Result<()> {
        let Control::Epoll { registry, .. } = &self.worker.control;
        registry.register(
            source,
            Token(self.token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Asks for [`Reactive::on_timer`] at `at` (or soon after), or earlier if an earlier
    /// deadline is pending: the source's one timer fires at the earliest it asked for since
    /// it last fired (see [`Reactive::on_timer`]).
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

/// A map keyed by source token, hashed with one multiplication (looked up on every event and
/// timer; the tokens are numbers the reactor hands out itself).
type TokenMap<V> = HashMap<usize, V, std::hash::BuildHasherDefault<duct_proto::qos::ChannelHasher>>;

/// What the reactor thread keeps for its sources.
#[derive(Default)]
struct Table {
    sources: TokenMap<Weak<dyn Reactive>>,
    timers: Timers,
    held: TokenMap<Arc<dyn Reactive>>,
}

/// The sources' timers: one per source, at the earliest deadline it asked for since it last
/// fired.
///
/// A source that moves its deadline earlier leaves the later entry in the heap, stale (its
/// time is not the source's deadline any more): it is skipped when it comes up. So that such
/// entries cannot pile up (a thousand pipes that each move a deadline earlier every few
/// milliseconds, while a later one is pending, would leave tens of thousands), the heap is
/// rebuilt from the deadlines once it holds twice as many entries as there are deadlines (and
/// 64 more): a cost of O(n) after at least n pushes.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Each source's deadline (sources without one: absent).
    due: TokenMap<Instant>,
}

impl Timers {
    /// `token`'s timer fires at `at`, unless it fires earlier already.
    fn schedule(&mut self, token: usize, at: Instant) {
        match self.due.entry(token) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if *e.get() <= at {
                    return;
                }
                e.insert(at);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(at);
            }
        }
        self.heap.push(Reverse((at, token)));
        if self.heap.len() > 2 * self.due.len() + 64 {
            // In place: the heap keeps its memory.
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            entries.clear();
            entries.extend(self.due.iter().map(|(&t, &at)| Reverse((at, t))));
            self.heap = BinaryHeap::from(entries);
        }
    }

    /// Forgets `token`'s timer (its source is gone).
    fn cancel(&mut self, token: usize) {
        self.due.remove(&token);
        if self.due.is_empty() {
            self.heap.clear();
        }
    }

    /// The earliest deadline pending (perhaps a stale entry's: waking for it is harmless).
    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes a source whose timer is due at `now`, if any.
    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        while let Some(&Reverse((at, token))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.due.get(&token) == Some(&at) {
                self.due.remove(&token);
                return Some(token);
            }
        }
        None
    }
}

fn run(worker: Arc<Worker>, mut poller: Poller) {
    CURRENT_WORKER.with(|c| c.set(Arc::as_ptr(&worker) as usize));
    // Async calls a source wakes are woken once it has let go of its lock.
    wakers::defer_wakes_here();
    // Room for what one wait reports (io_uring: a completion queue's worth; epoll: its
    // events buffer), so that no burst of events allocates.
    let mut ready = Vec::with_capacity(super::backend::READY_CAPACITY);
    let mut table = Table::default();
    let mut inbox = Inbox::default();
    loop {
        take_inbox(&worker, &mut inbox, &mut table, &mut poller);
        wakers::wake_deferred();
        let timeout = table
            .timers
            .next()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poller.wait(timeout, &mut ready) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "duct reactor: poll failed; retrying");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        take_inbox(&worker, &mut inbox, &mut table, &mut poller);
        #[cfg(duct_uring)]
        open_staging(Some(ready.len()));
        for ev in ready.drain(..) {
            let Some(source) = table.sources.get(&ev.token).and_then(Weak::upgrade) else {
                continue;
            };
            source.on_ready(ev.readable, ev.writable, ev.closed);
            wakers::wake_deferred();
        }
        let now = Instant::now();
        while let Some(token) = table.timers.pop_due(now) {
            if let Some(source) = table.sources.get(&token).and_then(Weak::upgrade) {
                source.on_timer(now);
                wakers::wake_deferred();
            }
        }
        // The reads and writes this pass staged, in one system call.
        #[cfg(duct_uring)]
        {
            complete_staged();
            open_staging(None);
        }
    }
}

/// Takes the inbox's commands (and, with io_uring, registrations) and applies them.
fn take_inbox(worker: &Worker, inbox: &mut Inbox, table: &mut Table, poller: &mut Poller) {
    {
        let mut shared = worker.inbox.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut inbox.commands, &mut shared.commands);
        #[cfg(duct_uring)]
        std::mem::swap(&mut inbox.interest, &mut shared.interest);
    }
    for cmd in inbox.commands.drain(..) {
        match cmd {
            Command::Add(t, s) => {
                table.sources.insert(t, s);
            }
            Command::Remove(t) => {
                table.sources.remove(&t);
                table.timers.cancel(t);
                #[cfg(duct_uring)]
                if let Poller::Uring(p) = poller {
                    p.remove(t);
                }
            }
            Command::Timer(t, at) => table.timers.schedule(t, at),
            Command::Hold(t, s) => {
                table.held.insert(t, s);
            }
            Command::Release(t) => {
                table.held.remove(&t);
            }
        }
    }
    #[cfg(duct_uring)]
    for (token, w) in inbox.interest.drain() {
        // (A source removed meanwhile has nothing to watch.)
        if let (Poller::Uring(p), true) = (&mut *poller, table.sources.contains_key(&token)) {
            p.set(token, w.fd, w.hold, w.interest, w.fresh);
        }
    }
    let _ = poller;
}

#[cfg(test)]
mod tests {
    use super::Timers;
    use std::time::{Duration, Instant};

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn a_source_s_timer_fires_once_at_the_earliest_it_asked_for() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(1, ms(t0, 50));
        timers.schedule(1, ms(t0, 20)); // earlier: moves it
        timers.schedule(1, ms(t0, 30)); // later: ignored
        timers.schedule(2, ms(t0, 40));
        assert_eq!(timers.next(), Some(ms(t0, 20)));
        assert_eq!(timers.pop_due(ms(t0, 19)), None);
        assert_eq!(timers.pop_due(ms(t0, 25)), Some(1));
        assert_eq!(timers.pop_due(ms(t0, 25)), None);
        // The 50 ms entry is stale: source 1 fires again only if it asks again.
        assert_eq!(timers.pop_due(ms(t0, 60)), Some(2));
        assert_eq!(timers.pop_due(ms(t0, 60)), None);
        timers.schedule(1, ms(t0, 70));
        timers.schedule(3, ms(t0, 70));
        timers.cancel(3);
        assert_eq!(timers.pop_due(ms(t0, 80)), Some(1));
        assert_eq!(timers.pop_due(ms(t0, 80)), None);
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn deadlines_moved_earlier_over_and_over_leave_a_bounded_heap() {
        // A thousand sources, each with a far deadline, moving a near one earlier again and
        // again (a pipe's heartbeat and its 20 ms receive check): the stale far entries must
        // not pile up.
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut now = t0;
        for round in 0..200u64 {
            for token in 0..1000 {
                timers.schedule(token, ms(now, 1000));
                timers.schedule(token, ms(now, 20));
            }
            assert!(
                timers.heap.len() <= 2 * timers.due.len() + 64,
                "round {round}: {} entries for {} deadlines",
                timers.heap.len(),
                timers.due.len()
            );
            now = ms(now, 20);
            let mut fired = 0;
            while timers.pop_due(now).is_some() {
                fired += 1;
            }
            assert_eq!(fired, 1000, "round {round}");
        }
        // Every source gone: nothing left to fire, whatever stale entries remain.
        for token in 0..1000 {
            timers.cancel(token);
        }
        assert_eq!(timers.pop_due(ms(now, 10_000)), None);
    }
}
