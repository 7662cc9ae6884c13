//! `pipe://NAME` (Windows): named pipes (`\\.\pipe\NAME`) under the driver contract
//! (`crate::driver::StreamTransport`), with the framing, handshake and features of uds.
//!
//! What this module owns: opening the client end (waiting out "pipe busy" within the dial
//! timeout), the listener's waiting server instances, and bridging mio's overlapped
//! `NamedPipe` to the readiness contract the driver expects. The Win32 calls themselves are
//! in `duct_sys::pipe`; framing, handshakes and timers are the driver's and the Session's.
//!
//! # How a pipe meets the driver
//! mio's `NamedPipe` does its I/O only while it is registered with a `Poll` (reads come from
//! an internal buffer that overlapped reads fill as the poll processes their completions; a
//! write is copied and completes in the background), it cannot move to another `Poll`, and
//! registering needs `&mut`. So each [`PipeStream`] has a [`PipeCore`], a reactor source of
//! its own, under whose token the pipe is registered once and stays registered until the
//! stream is dropped.
//!
//! **Every call into mio runs on that reactor thread** (the core's "pump": registering,
//! connecting, reading, writing). Callers of the driver contract only move bytes in and out
//! of two buffers beside it: `inbound` (filled by the pump from mio, up to [`IN_CAP`]) and
//! `outbound` (drained by the pump into mio, up to [`OUT_CAP`]). Why not read and write
//! through mio on the callers' threads, which its API allows: an overlapped operation that
//! completes at once has its completion status written by the thread that started it, after
//! the call returns, and Wine (where the Windows tests run) may queue the completion before
//! that; the reactor then dequeues it, finds the status still pending
//! (`ERROR_IO_INCOMPLETE`), and mio drops the data it read. Operations started on the
//! thread that also dequeues their completions cannot race so. The costs: one copy more each
//! way, and a hop to the reactor thread for each write.
//!
//! Readiness toward the driver: the core passes readiness on to whichever source watches the
//! pipe now (the listener, then a handshake, then the pipe's connection), for the interest
//! that source asked for through `driver::sys::set_interest` ([`PipeSource`]): readable when
//! the pump brought bytes (or the end, or an error) into `inbound`, writable when `outbound`
//! has room again after a write was refused. Nothing is ever deregistered: a source that stops
//! watching only stops hearing of it, and one that starts (or adds an interest) is told at
//! once, from the reactor thread, of readiness there already (the level check a socket's
//! fresh registration makes). Blocking waits (a caller's `recv` with a timeout, a dialer's
//! handshake) wait on a condition variable that the pump notifies.
//!
//! Shutting down (or dropping) the stream lets the pump write what `outbound` still holds,
//! then closes the pipe (the reactor keeps the core alive meanwhile, at most
//! [`FLUSH_MAX`]): the peer reads everything, then the end.
//!
//! # Listening
//! A [`PipeListener`] keeps one server instance waiting for a client, its connect in flight.
//! The first is made with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a second listener on a name
//! in use fails with `AddressInUse`. When a client connects, `accept` makes the next instance
//! before it hands the connected one to the handshake, so dialers meet "pipe busy" only for
//! that moment (and wait it out: [`connect`]).
//!
//! A name stays in use as long as any instance of it is open: a listener's accepted pipes
//! keep it, after the listener closed, until they are closed too.

use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use duct_sys::pipe::PipePath;
use mio::windows::NamedPipe;
use mio::Interest;

use crate::addr::{Addr, Endpoint};
use crate::driver::reactor::{self, Reactive, ReactorHandle};
use crate::driver::sys::{PipeSource, Readiness};
use crate::error::{Error, ErrorKind, Result};

/// The most one read takes from mio's buffer (mio reads at most this much from the pipe).
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read ahead into `inbound`; above it the pump stops reading until callers take
/// some (the pipe's own buffer then pushes back on the writer).
const IN_CAP: usize = 256 * 1024;
/// Bytes callers may queue in `outbound` ahead of the pipe; a full queue is `WouldBlock`.
const OUT_CAP: usize = 1024 * 1024;
/// How long a shut-down pipe may take to write what it still holds before it is closed
/// anyway.
const FLUSH_MAX: Duration = Duration::from_secs(10);
/// How long a dialer waits for a busy pipe before it tries again.
const BUSY_SLICE: Duration = Duration::from_millis(50);

/// One end of a connected named pipe (or a listener's instance waiting for a client).
/// Dropping it shuts it down (see [`PipeStream::shutdown`]).
#[derive(Debug)]
pub(crate) struct PipeStream {
    core: Arc<PipeCore>,
}

/// The shared part of a [`PipeStream`]: the pipe (touched only on its reactor thread), the
/// buffers callers use, and the reactor source that pumps between them.
pub(crate) struct PipeCore {
    /// The name after `pipe://`.
    name: String,
    /// What only the pump touches (and `PipeListener::drop`, to disconnect).
    io: Mutex<PipeIo>,
    state: Mutex<State>,
    /// Notified whenever the pump changes what a blocked call waits for, and on shutdown.
    cv: Condvar,
    /// The registration of the core with its reactor thread.
    reactor: OnceLock<ReactorHandle>,
}

impl std::fmt::Debug for PipeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeCore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The pump's side.
struct PipeIo {
    /// The pipe; `None` once closed. Dropping it closes the handle as soon as a write in
    /// flight completes (mio cancels only reads).
    pipe: Option<NamedPipe>,
    /// Registered with the reactor's poller (or registration failed: `State` has the error).
    registered: bool,
    /// A listener's instance: its connect was started.
    connect_started: bool,
    /// A write was handed to mio and has not completed (no writable event since).
    write_in_flight: bool,
    /// A cleared buffer kept for the next `outbound` (only a small one: an idle pipe should
    /// not keep a megabyte).
    spare: Vec<u8>,
}

/// The largest cleared write buffer a pipe keeps for reuse.
const SPARE_MAX: usize = 64 * 1024;

thread_local! {
    /// Where the pump reads to before the bytes join a pipe's `inbound` (safe code cannot
    /// read into uninitialised memory): one per reactor thread, shared by its pipes.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What callers and the pump share, under one lock.
#[derive(Default)]
struct State {
    /// The source that watches the pipe now, and for what.
    owner: Option<Weak<dyn Reactive>>,
    interest: Option<Interest>,
    /// The watcher gained an interest: tell it of readiness already there.
    level_due: bool,
    /// A listener's instance whose client has not been accepted yet: the arrival of the
    /// client (or the failure of the connect) is reported to the listener as readable.
    awaiting_client: bool,
    client_arrived: bool,
    connect_error: Option<io::Error>,
    /// Bytes read and not yet taken by a caller.
    inbound: BytesMut,
    /// The peer closed its end (after the bytes in `inbound`).
    eof: bool,
    /// A read failed (after the bytes in `inbound`): its kind and text, returned to every
    /// later read.
    read_error: Option<(io::ErrorKind, String)>,
    /// The pump stopped reading with `inbound` full.
    read_paused: bool,
    /// Bytes callers wrote and the pump has not handed to mio.
    outbound: Vec<u8>,
    /// A write failed: every later write returns it.
    write_error: Option<(io::ErrorKind, String)>,
    /// A caller's write found `outbound` full: tell the watcher when there is room.
    write_blocked: bool,
    /// A pump is scheduled (callers need not schedule another).
    pump_due: bool,
    /// Shut down here: reads report the end, writes fail, blocked waits return.
    read_shut: bool,
    shut_at: Option<Instant>,
    /// The pump closed the pipe.
    closed: bool,
    /// The reactor holds the core alive until the pipe is closed.
    held: bool,
}

impl State {
    fn readable(&self) -> bool {
        !self.inbound.is_empty() || self.eof || self.read_error.is_some() || self.read_shut
    }

    fn writable(&self) -> bool {
        self.outbound.len() < OUT_CAP || self.write_error.is_some() || self.shut_at.is_some()
    }

    /// What of `(readable, writable)` goes to the watcher, and the watcher.
    fn pass_on(&self, readable: bool, writable: bool) -> Option<(Weak<dyn Reactive>, bool, bool)> {
        let interest = self.interest?;
        let r = readable && interest.is_readable();
        let w = writable && interest.is_writable();
        if !(r || w) {
            return None;
        }
        Some((self.owner.clone()?, r, w))
    }
}

/// An error that can be handed out again (`io::Error` is not `Clone`).
fn keep(e: &io::Error) -> (io::ErrorKind, String) {
    (e.kind(), e.to_string())
}

fn again((kind, text): &(io::ErrorKind, String)) -> io::Error {
    io::Error::new(*kind, text.clone())
}

/// Hands readiness to the source that watches the pipe (outside every lock of the pipe: the
/// source may change its interest from there).
fn deliver(to: Option<(Weak<dyn Reactive>, bool, bool)>) {
    if let Some((owner, r, w)) = to {
        if let Some(owner) = owner.upgrade() {
            // (No hang-up flag: a pipe's reads always go on to `WouldBlock` or its end, see
            // `StreamTransport::short_read_drains`.)
            owner.on_ready(r, w, false);
        }
    }
}

impl PipeCore {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_io(&self) -> MutexGuard<'_, PipeIo> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a pump on the reactor thread, unless one is due already.
    fn schedule_pump(&self, st: &mut State) {
        if !st.pump_due {
            st.pump_due = true;
            if let Some(h) = self.reactor.get() {
                h.schedule(Instant::now());
            }
        }
    }

    fn set_owner(&self, owner: &Weak<dyn Reactive>, interest: Option<Interest>) {
        let mut st = self.lock();
        let same_owner = st.owner.as_ref().is_some_and(|o| Weak::ptr_eq(o, owner));
        let before = if same_owner { st.interest } else { None };
        st.owner = Some(Weak::clone(owner));
        st.interest = interest;
        let Some(now) = interest else { return };
        let gained_r = now.is_readable() && !before.is_some_and(|b| b.is_readable());
        let gained_w = now.is_writable() && !before.is_some_and(|b| b.is_writable());
        if gained_r || gained_w {
            st.level_due = true;
            self.schedule_pump(&mut st);
        }
    }

    /// The pump: every call into mio, on the core's reactor thread. `event`: a readiness
    /// event of the pipe brought us here (`writable`: a write or a connect completed).
    fn pump(&self, event: bool, writable: bool) {
        let mut io_guard = self.lock_io();
        let io = &mut *io_guard;
        let mut st = self.lock();
        st.pump_due = false;
        let mut fresh_r = false;
        let mut fresh_w = false;
        if writable {
            io.write_in_flight = false;
        }
        // Registration, on the first pump.
        if !io.registered {
            io.registered = true;
            if let (Some(pipe), Some(h)) = (io.pipe.as_mut(), self.reactor.get()) {
                if let Err(e) = h.register_for_life(pipe) {
                    let kept = keep(&e);
                    st.read_error = Some(kept.clone());
                    st.write_error = Some(kept);
                    if st.awaiting_client {
                        st.client_arrived = true;
                        st.connect_error = Some(e);
                    }
                    io.pipe = None;
                    fresh_r = true;
                }
            }
        }
        // A listener's instance: connect, and notice the client.
        if st.awaiting_client && !st.client_arrived && st.shut_at.is_none() {
            if let Some(pipe) = io.pipe.as_ref() {
                if !io.connect_started {
                    io.connect_started = true;
                    match pipe.connect() {
                        Ok(()) => st.client_arrived = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            st.client_arrived = true;
                            st.connect_error = Some(e);
                        }
                    }
                } else if event {
                    // The connect completed (mio reports it writable), well or not.
                    st.client_arrived = true;
                    st.connect_error = pipe.take_error().unwrap_or_else(Some);
                }
                fresh_r |= st.client_arrived;
            }
        }
        let connected = !st.awaiting_client || (st.client_arrived && st.connect_error.is_none());
        if let (Some(pipe), true) = (io.pipe.as_ref(), connected) {
            // Writes: all of `outbound` at once (mio copies it), one write in flight.
            if !io.write_in_flight && !st.outbound.is_empty() && st.write_error.is_none() {
                let data = std::mem::replace(&mut st.outbound, std::mem::take(&mut io.spare));
                drop(st);
                let res = (&mut &*pipe).write(&data);
                st = self.lock();
                match res {
                    Ok(n) => {
                        io.write_in_flight = true;
                        if n < data.len() {
                            // (mio takes all; should a write ever be shorter, keep the rest
                            // in front.)
                            let mut rest = data[n..].to_vec();
                            rest.extend_from_slice(&st.outbound);
                            st.outbound = rest;
                        } else if data.capacity() <= SPARE_MAX {
                            let mut data = data;
                            data.clear();
                            io.spare = data;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        io.write_in_flight = true;
                        let mut data = data;
                        data.extend_from_slice(&st.outbound);
                        st.outbound = data;
                    }
                    Err(e) => {
                        st.write_error = Some(keep(&e));
                        st.outbound.clear();
                    }
                }
                if st.write_blocked && st.writable() {
                    st.write_blocked = false;
                    fresh_w = true;
                }
            }
            // Reads: until mio has nothing, the end, or `inbound` is full (none once nobody
            // reads any more).
            loop {
                if st.eof || st.read_error.is_some() || st.read_shut {
                    break;
                }
                if st.inbound.len() >= IN_CAP {
                    st.read_paused = true;
                    break;
                }
                // (A copy out of mio's buffer: brief, under the lock.)
                let res = SCRATCH.with_borrow_mut(|scratch| {
                    if scratch.len() < READ_CHUNK {
                        scratch.resize(READ_CHUNK, 0);
                    }
                    let res = (&mut &*pipe).read(scratch);
                    if let Ok(n) = res {
                        st.inbound.extend_from_slice(&scratch[..n]);
                    }
                    res
                });
                match res {
                    Ok(0) => st.eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // The other end is gone (closed, or the server disconnected us): the end
                    // of the stream, as a socket reports it.
                    Err(e) if peer_gone(&e) => st.eof = true,
                    Err(e) => st.read_error = Some(keep(&e)),
                }
                fresh_r = true;
            }
        }
        // Closing, once what was written has been handed to mio (or cannot be).
        if let Some(at) = st.shut_at {
            let flushed = st.outbound.is_empty() || st.write_error.is_some();
            if !st.closed && (flushed || io.pipe.is_none() || at.elapsed() >= FLUSH_MAX) {
                st.closed = true;
                io.pipe = None;
                if std::mem::take(&mut st.held) {
                    if let Some(h) = self.reactor.get() {
                        h.release();
                    }
                }
            }
        }
        if fresh_r || fresh_w {
            self.cv.notify_all();
        }
        let to = if st.awaiting_client {
            let due = std::mem::take(&mut st.level_due);
            st.pass_on((fresh_r || due) && st.client_arrived, false)
        } else if std::mem::take(&mut st.level_due) {
            let (r, w) = (st.readable(), st.writable());
            st.pass_on(r || fresh_r, w || fresh_w)
        } else {
            st.pass_on(fresh_r, fresh_w)
        };
        drop(st);
        drop(io_guard);
        deliver(to);
    }
}

impl PipeSource for PipeCore {
    fn set_owner(&self, owner: &Weak<dyn Reactive>, interest: Option<Interest>) {
        PipeCore::set_owner(self, owner, interest);
    }
}

impl Reactive for PipeCore {
    fn on_ready(&self, _readable: bool, writable: bool, _closed: bool) {
        self.pump(true, writable);
    }

    fn on_timer(&self, _now: Instant) {
        self.pump(false, false);
        // A pump due at once may have fired in place of the flush deadline (the reactor keeps
        // one timer per source, the earliest): ask for that again while it matters.
        let st = self.lock();
        if let (Some(at), false, Some(h)) = (st.shut_at, st.closed, self.reactor.get()) {
            h.schedule(at + FLUSH_MAX);
        }
    }
}

impl PipeStream {
    /// Hands `pipe` to a reactor thread, which registers it (and, for a server instance,
    /// starts its connect: `awaiting_client`).
    fn new(pipe: NamedPipe, name: &str, awaiting_client: bool) -> io::Result<PipeStream> {
        let core = Arc::new(PipeCore {
            name: name.to_owned(),
            io: Mutex::new(PipeIo {
                pipe: Some(pipe),
                registered: false,
                connect_started: false,
                write_in_flight: false,
                spare: Vec::new(),
            }),
            state: Mutex::new(State {
                awaiting_client,
                ..State::default()
            }),
            cv: Condvar::new(),
            reactor: OnceLock::new(),
        });
        let weak: Weak<dyn Reactive> = Arc::downgrade(&core) as Weak<PipeCore>;
        let handle = reactor::register(weak)?;
        let _ = core.reactor.set(handle);
        core.schedule_pump(&mut core.lock());
        Ok(PipeStream { core })
    }

    /// A new server instance of `path`, waiting for a client.
    fn serve(path: &PipePath, name: &str, first: bool) -> io::Result<PipeStream> {
        let pipe = duct_sys::pipe::create_instance(path, first)?;
        PipeStream::new(pipe, name, true)
    }

    /// What the reactor watches.
    pub(crate) fn readiness(&self) -> Readiness<'_> {
        Readiness::Pipe(&*self.core)
    }

    /// Takes what was read (up to `buf`'s spare capacity) into `buf`; `Ok(0)` is the end of
    /// the stream. With `nonblocking`, nothing there is `WouldBlock`; otherwise waits.
    pub(crate) fn recv_into(&self, buf: &mut BytesMut, nonblocking: bool) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        if room == 0 {
            return Ok(0);
        }
        let mut st = self.core.lock();
        loop {
            if st.read_shut {
                return Ok(0);
            }
            if !st.inbound.is_empty() {
                let n = room.min(st.inbound.len());
                buf.extend_from_slice(&st.inbound[..n]);
                st.inbound.advance(n);
                if st.read_paused && st.inbound.len() <= IN_CAP / 2 {
                    st.read_paused = false;
                    self.core.schedule_pump(&mut st);
                }
                return Ok(n);
            }
            if st.eof {
                return Ok(0);
            }
            if let Some(e) = &st.read_error {
                return Err(again(e));
            }
            if nonblocking {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            st = self.core.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Queues bytes for the pump to write (up to its room); a full queue is `WouldBlock`
    /// (the pipe turns writable when the pump has made room).
    pub(crate) fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut st = self.core.lock();
        if st.shut_at.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the pipe was shut down here",
            ));
        }
        if let Some(e) = &st.write_error {
            return Err(again(e));
        }
        let mut room = OUT_CAP.saturating_sub(st.outbound.len());
        if room == 0 {
            st.write_blocked = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for s in iov {
            let take = s.len().min(room);
            st.outbound.extend_from_slice(&s[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        if n > 0 {
            self.core.schedule_pump(&mut st);
        }
        Ok(n)
    }

    /// Waits until a read finds something (or the end, or the pipe was shut down here) or
    /// `deadline` passes; returns whether it does.
    pub(crate) fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        Ok(self.wait_for(deadline, State::readable))
    }

    /// Waits until a read finds something or a write has room (or the pipe was shut down
    /// here) or `deadline` passes.
    pub(crate) fn wait_io(&self, deadline: Option<Instant>) -> io::Result<bool> {
        Ok(self.wait_for(deadline, |st| st.readable() || st.writable()))
    }

    fn wait_for(&self, deadline: Option<Instant>, ready: impl Fn(&State) -> bool) -> bool {
        let mut st = self.core.lock();
        loop {
            if ready(&st) || st.shut_at.is_some() {
                return true;
            }
            st = match deadline {
                None => self.core.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.core
                        .cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Bytes read ahead and not yet taken, plus those still in the pipe.
    pub(crate) fn pending_input(&self) -> usize {
        let in_pipe = self
            .core
            .lock_io()
            .pipe
            .as_ref()
            .and_then(|p| duct_sys::pipe::bytes_available(p).ok())
            .unwrap_or(0);
        self.core.lock().inbound.len() + in_pipe
    }

    /// Shuts the pipe down: blocked waits return, reads report the end and writes fail at
    /// once; the pump writes what was queued before, then closes the handle (the peer reads
    /// all of it, then the end). Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut st = self.core.lock();
        st.read_shut = true;
        if st.shut_at.is_none() {
            st.shut_at = Some(Instant::now());
            if !st.closed {
                if let Some(h) = self.core.reactor.get() {
                    // Alive until the pump has closed the pipe, even if dropped before.
                    st.held = true;
                    h.hold(Arc::clone(&self.core) as Arc<dyn Reactive>);
                    h.schedule(Instant::now() + FLUSH_MAX);
                }
            }
            self.core.schedule_pump(&mut st);
        }
        self.core.cv.notify_all();
    }

    /// Shuts the receiving direction down here: blocked waits return and reads report the
    /// end; writing goes on.
    pub(crate) fn shutdown_read(&self) {
        let mut st = self.core.lock();
        st.read_shut = true;
        self.core.cv.notify_all();
    }

    /// `pipe://NAME`, the same on both ends.
    pub(crate) fn addr(&self) -> Addr {
        Addr::Pipe(self.core.name.clone())
    }

    /// A listener's instance whose client connected becomes a connection: it stops reporting
    /// to the listener; whoever watches it next hears of what it read meanwhile.
    fn into_connection(self) -> PipeStream {
        let mut st = self.core.lock();
        st.awaiting_client = false;
        st.owner = None;
        st.interest = None;
        drop(st);
        self
    }
}

impl Drop for PipeStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether a read error means that the other end is gone.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// The path of `pipe://name`, or the address error.
fn path_of(ep: &Endpoint, name: &str) -> Result<PipePath> {
    PipePath::new(name).map_err(|e| {
        Error::new(
            ErrorKind::InvalidAddress,
            format!("invalid address \"{ep}\": {e}"),
        )
    })
}

/// Opens the client end of `pipe://name` within `timeout`.
///
/// Every instance busy (the listener has not made the next one yet): waits for one to be
/// free and tries again, until the deadline; then [`ErrorKind::TimedOut`]. No pipe of that
/// name: [`ErrorKind::ConnectionRefused`].
pub(crate) fn connect(ep: &Endpoint, name: &str, timeout: Duration) -> Result<PipeStream> {
    let path = path_of(ep, name)?;
    let deadline = Instant::now() + timeout;
    loop {
        match duct_sys::pipe::open(&path) {
            Ok(pipe) => {
                return PipeStream::new(pipe, name, false)
                    .map_err(|e| Error::io(e, format_args!("connecting to {ep}")))
            }
            Err(e) if duct_sys::pipe::is_not_found(&e) => {
                return Err(Error::new(
                    ErrorKind::ConnectionRefused,
                    format!("connecting to {ep}: nothing listens on this pipe name"),
                ))
            }
            Err(e) if duct_sys::pipe::is_busy(&e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "connecting to {ep}: every instance of the pipe stayed busy for \
                             {timeout:?} (its listener is not accepting)"
                        ),
                    ));
                }
                // Ok or not, look again: the wait ends when an instance is free, when the
                // slice passes, or at once when the name is gone (the open then says so).
                let started = Instant::now();
                let _ = duct_sys::pipe::wait_available(&path, left.min(BUSY_SLICE));
                if started.elapsed() < Duration::from_millis(1) {
                    // (A wait that returns at once while the pipe stays busy must not spin.)
                    std::thread::sleep(Duration::from_millis(1).min(left));
                }
            }
            Err(e) => return Err(Error::io(e, format_args!("connecting to {ep}"))),
        }
    }
}

/// A listening pipe name: the instance waiting for the next client.
pub(crate) struct PipeListener {
    name: String,
    path: PipePath,
    state: Mutex<ListenState>,
}

struct ListenState {
    /// The instance waiting for a client; `None` when making the next one failed (`accept`
    /// tries again).
    waiting: Option<PipeStream>,
    /// The source watching the listener, and for what: every new instance reports to it.
    owner: Option<(Weak<dyn Reactive>, Option<Interest>)>,
}

impl std::fmt::Debug for PipeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeListener")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Listens on `pipe://name`: [`ErrorKind::AddressInUse`] when the name is served already.
pub(crate) fn bind(ep: &Endpoint, name: &str) -> Result<PipeListener> {
    let path = path_of(ep, name)?;
    let in_use = || {
        Error::new(
            ErrorKind::AddressInUse,
            format!(
                "cannot listen on {ep}: the pipe name is in use (another listener, or pipes \
                 of a closed one that are still open)"
            ),
        )
    };
    // Windows refuses a first instance of a name in use; Wine does not: ask first too.
    if duct_sys::pipe::name_in_use(&path) {
        return Err(in_use());
    }
    let first = PipeStream::serve(&path, name, true).map_err(|e| {
        if duct_sys::pipe::is_name_taken(&e) {
            in_use()
        } else {
            Error::io(e, format_args!("listen {ep}"))
        }
    })?;
    Ok(PipeListener {
        name: name.to_owned(),
        path,
        state: Mutex::new(ListenState {
            waiting: Some(first),
            owner: None,
        }),
    })
}

impl PipeListener {
    fn lock(&self) -> MutexGuard<'_, ListenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new waiting instance, reporting to the listener's watcher.
    fn next_instance(&self, st: &ListenState) -> io::Result<PipeStream> {
        let next = PipeStream::serve(&self.path, &self.name, false)?;
        if let Some((owner, interest)) = &st.owner {
            next.core.set_owner(owner, *interest);
        }
        Ok(next)
    }

    /// Takes the connected instance, if a client came, after making the next one. Never
    /// blocks: no client yet is `WouldBlock`. A connect that failed is `ConnectionAborted`
    /// (the instance is replaced).
    pub(crate) fn accept(&self) -> io::Result<(PipeStream, Addr)> {
        let mut st = self.lock();
        let arrived = match &st.waiting {
            Some(w) => w.core.lock().client_arrived,
            None => {
                // Making the last one failed: try again (an error makes the caller back off).
                let next = self.next_instance(&st)?;
                st.waiting = Some(next);
                return Err(io::ErrorKind::WouldBlock.into());
            }
        };
        if !arrived {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // The next instance first, so that the name is served all along.
        let next = self.next_instance(&st);
        let (connected, next_err) = match next {
            Ok(next) => (st.waiting.replace(next), None),
            Err(e) => (st.waiting.take(), Some(e)),
        };
        drop(st);
        let connected = connected.expect("a waiting instance");
        let failed = connected.core.lock().connect_error.take();
        if let Some(e) = failed {
            tracing::debug!(pipe = %self.name, error = %e, "a client's connect failed");
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        if let Some(e) = next_err {
            // Served until the next accept makes an instance again.
            tracing::debug!(pipe = %self.name, error = %e, "making the next pipe instance failed");
        }
        let addr = Addr::Pipe(self.name.clone());
        Ok((connected.into_connection(), addr))
    }

    pub(crate) fn local_addr(&self) -> Addr {
        Addr::Pipe(self.name.clone())
    }
}

impl PipeSource for PipeListener {
    fn set_owner(&self, owner: &Weak<dyn Reactive>, interest: Option<Interest>) {
        let mut st = self.lock();
        st.owner = Some((Weak::clone(owner), interest));
        if let Some(w) = &st.waiting {
            w.core.set_owner(owner, interest);
        }
    }
}

impl Drop for PipeListener {
    fn drop(&mut self) {
        // Disconnect the waiting instance at once: until its handle is closed (on the
        // reactor thread, a moment later), dialers find it busy rather than connect to a
        // listener that is gone. (A synchronous call, safe on any thread.)
        let waiting = self.lock().waiting.take();
        if let Some(w) = waiting {
            if let Some(pipe) = w.core.lock_io().pipe.as_ref() {
                let _ = pipe.disconnect();
            }
        }
    }
}
