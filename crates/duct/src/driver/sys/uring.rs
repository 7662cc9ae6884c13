//! Linux: the reactor's io_uring backend. One ring per reactor thread; each registered
//! connection's fd is watched by one multishot `POLL_ADD`, which gives the same contract as
//! edge-triggered epoll: a poll reports the readiness already there when it is armed, then
//! one completion per new wake-up of the file. (Listening sockets are the exception: see
//! below.) The reads and writes the thread makes for its pipes go through a second ring of its
//! own (`reactor::stage_recv`, `reactor::stage_send`), whose completions never mix with these.
//!
//! # Who touches the ring
//! Only the reactor thread: it sets the ring up, submits and reaps. io_uring runs a request's
//! completion work in the task that submitted it, so polls submitted from callers' threads
//! would post their completions only when those threads next enter the kernel (or from a
//! kernel worker once they have exited), and the reactor would hear of readiness late. So a
//! caller's `set_interest` does not touch the ring: it records the wanted registration in the
//! reactor's inbox (one entry per source, the latest wins: bounded by the live sources) and
//! wakes the thread, which brings its polls in line ([`UringPoller::set`]) after it has taken
//! the inbox's `Add`s, so the reactor's ordering guarantee (an `Add` is seen before any event
//! for it) holds. The costs: a registration takes effect when the reactor next runs (a fresh
//! registration still reports readiness already there, so nothing is missed), and a poll that
//! fails does so in a completion, not in the call: the source is then told it is ready, and
//! its next I/O call reports the error.
//!
//! Since the thread arms a poll later than the call, the fd number the source lent may by
//! then be closed and name another file (a new socket of another pipe). So the registering
//! thread duplicates the fd while it is lent, the thread polls the duplicate, and closes it
//! once the kernel has taken the poll (and with it a reference to the file). To poll again
//! later without the source (a poll that ended), the thread duplicates the source's fd number
//! only if it still names the file registered ([`duct_sys::uring::dup_if_same_file`]);
//! otherwise the source is told to look, and finds its end or registers its new fd.
//!
//! # Tags (`user_data`)
//! `kind << 56 | generation << 32 | slot`: the kind of request (a source's poll, the removal
//! of one, the waker's poll, the epoll instance's poll), a 24-bit generation and the index of
//! the source's slot here (0 for the waker and the epoll instance). Every poll armed gets a
//! new generation, and a completion counts only if its slot still has that poll armed: the
//! last completions of a poll that was removed or replaced, or of a source that is gone (its
//! slot reused), are ignored.
//!
//! # Polls that end, completions that are lost
//! A multishot poll can end (a completion without `IORING_CQE_F_MORE`: the kernel could not
//! post to a full completion queue, or it cancelled the request): if the source still wants
//! readiness it is armed again, which reports what is there already. A poll that fails (a bad
//! fd) tells the source it is ready (it finds the error itself) and is armed again at most
//! [`MAX_FAILURES`] times in a row. Completions are drained on every wake; with
//! `IORING_FEAT_NODROP` (Linux 5.5) the kernel keeps those that found the queue full and
//! hands them over on the next submit. Should it report completions dropped after all, every
//! poll is re-armed (remove, then add): a fresh poll reports the readiness already there, so
//! no source misses an event.
//!
//! # Removing a poll
//! A poll is removed by cancelling it (`ASYNC_CANCEL`), never with `POLL_REMOVE`: the kernel
//! refuses a `POLL_REMOVE` with `EALREADY` while a wake-up of the file is being handled, and
//! leaves the poll armed, holding the file, for the ring's life. (That happened: a connection
//! whose peer hung up just as it was closed here kept its socket open until the process
//! exited, and `duct shm` went on listing it.) A cancellation marks the poll cancelled
//! whoever is handling it. Should a kernel answer `EALREADY` all the same (before Linux 5.18
//! it may), the removal is queued again at the next wait.
//!
//! # Listening sockets: epoll, watched by the ring
//! io_uring holds a reference to every file it polls until the poll is removed (epoll does
//! not). For a connection that is harmless: its owner shuts it down before it closes it, so a
//! file that lives on until the reactor has removed the poll (microseconds) is not seen. For a
//! listening socket it is not: its address stays taken after `Listener::close` returns (a
//! dialer still connects, a new listener cannot bind), and when the process dies, the kernel
//! tears its ring down a few milliseconds after the process is gone (measured here: 5-7 ms),
//! so a listener restarted at once after a crash would find its address in use. So listening
//! sockets (`SO_ACCEPTCONN`) are registered, at once and from any thread, with an epoll
//! instance of the reactor thread (mio's, as on the epoll backend), and the ring watches that
//! instance's fd with a multishot poll of its own; when it completes, the thread takes the
//! instance's events. Listeners keep epoll's behaviour exactly.
//!
//! What stays different for connections: when a process dies, its connections are closed
//! when its ring is torn down, a few milliseconds later than on epoll (a peer sees the end
//! that much later). Within a live process nothing differs that a peer can see.
//!
//! # The waker
//! An eventfd watched by a multishot poll of its own; other threads write to it
//! ([`UringWaker::wake`]). Setting it up doubles as the probe that the kernel supports
//! multishot polls (Linux 5.13): the thread writes to it once and expects a completion that
//! stays armed.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use duct_sys::uring::{Completion, FileId, Ring};
use mio::{Events, Interest, Poll, Registry};
use rustix::event::{EventfdFlags, PollFlags};
use rustix::io::Errno;

use crate::driver::reactor::Ready;

/// Submission queue entries: a burst of registrations bigger than this is submitted in parts.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries: completions are drained on every wake, and the kernel keeps
/// those that find the queue full (`IORING_FEAT_NODROP`). As many as epoll's events buffer.
const CQ_ENTRIES: u32 = crate::driver::backend::READY_CAPACITY as u32;
/// A poll that fails this many times in a row is not armed again until the source
/// registers afresh.
const MAX_FAILURES: u8 = 3;
/// How long the thread waits at most while its waker is not armed (it then looks at its
/// inbox this often instead of being woken).
const UNWOKEN_WAIT: Duration = Duration::from_millis(10);

/// The environment variable that makes the io_uring setup fail, as if the kernel refused it
/// (`EPERM`), to test the fallback to epoll.
pub(crate) const FORCE_FAILURE_ENV: &str = "DUCT_BACKEND_FORCE_URING_FAILURE";

const KIND_POLL: u64 = 1;
const KIND_REMOVE: u64 = 2;
const KIND_WAKER: u64 = 3;
const KIND_EPOLL: u64 = 4;
const GEN_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
/// Slot numbers from here on name the thread's own polls in the tags of their removals
/// (`OWN_SLOTS + kind`); sources' slots stay below.
const OWN_SLOTS: u32 = u32::MAX - 15;

fn tag(kind: u64, generation: u32, slot: u32) -> u64 {
    (kind << 56) | (u64::from(generation & GEN_MASK) << 32) | u64::from(slot)
}

fn untag(user_data: u64) -> (u64, u32, u32) {
    (
        user_data >> 56,
        (user_data >> 32) as u32 & GEN_MASK,
        user_data as u32,
    )
}

/// The tag of the removal of the poll tagged `target` (a source's, or one of the thread's).
fn removal_of(target: u64) -> u64 {
    let (kind, generation, slot) = untag(target);
    let slot = if kind == KIND_POLL {
        slot
    } else {
        OWN_SLOTS + kind as u32
    };
    tag(KIND_REMOVE, generation, slot)
}

/// The tag of the poll the removal tagged `removal` removes (the inverse of [`removal_of`]).
fn removed_by(removal: u64) -> u64 {
    let (_, generation, slot) = untag(removal);
    if slot >= OWN_SLOTS {
        tag(u64::from(slot - OWN_SLOTS), generation, 0)
    } else {
        tag(KIND_POLL, generation, slot)
    }
}

fn bits(f: PollFlags) -> u32 {
    u32::from(f.bits())
}

/// The `poll(2)` events a registration for `interest` asks for: as mio asks epoll for them
/// (readable: `POLLIN | POLLRDHUP`; writable: `POLLOUT`), errors and hang-ups always.
fn events_for(interest: Option<Interest>) -> u32 {
    let Some(i) = interest else { return 0 };
    let mut events = bits(PollFlags::ERR | PollFlags::HUP);
    if i.is_readable() {
        events |= bits(PollFlags::IN | PollFlags::RDHUP);
    }
    if i.is_writable() {
        events |= bits(PollFlags::OUT);
    }
    events
}

/// What a poll's result means to a source, as the epoll path reads mio's events: an error or
/// a hang-up (either direction) is reported as both readable and writable.
fn readiness(revents: u32) -> (bool, bool, bool) {
    let has = |f: PollFlags| revents & bits(f) != 0;
    let hup =
        has(PollFlags::ERR) || has(PollFlags::HUP) || (has(PollFlags::IN) && has(PollFlags::RDHUP));
    (
        has(PollFlags::IN) || has(PollFlags::PRI) || hup,
        has(PollFlags::OUT) || hup,
        hup,
    )
}

/// Whether `fd` is a listening socket: those are watched through epoll (see the module's
/// docs).
pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false)
}

/// A poll of the thread's own: the waker's eventfd, or the epoll instance of listening
/// sockets. Armed for the thread's life, armed again whenever it ends.
struct OwnPoll {
    kind: u64,
    fd: RawFd,
    /// The generation of the armed poll, if one is armed.
    armed: Option<u32>,
    generation: u32,
}

impl OwnPoll {
    fn new(kind: u64, fd: RawFd) -> OwnPoll {
        OwnPoll {
            kind,
            fd,
            armed: None,
            generation: 0,
        }
    }

    /// Queues the poll if it is not armed; `false` when the submission queue is full.
    fn arm(&mut self, ring: &mut Ring) -> bool {
        if self.armed.is_some() {
            return true;
        }
        let generation = self.generation.wrapping_add(1) & GEN_MASK;
        let events = bits(PollFlags::IN);
        if !ring.push_poll_multishot(self.fd, events, tag(self.kind, generation, 0)) {
            return false;
        }
        self.generation = generation;
        self.armed = Some(generation);
        true
    }

    /// Queues the removal of the armed poll, to arm a new one (after lost completions).
    fn disarm(&mut self, ring: &mut Ring) {
        if let Some(generation) = self.armed.take() {
            let target = tag(self.kind, generation, 0);
            if !ring.push_cancel(target, removal_of(target)) {
                // No room: the old poll stays beside the new one (an event then completes
                // twice, which is harmless).
                tracing::debug!("duct reactor (io_uring): could not remove a poll of its own");
            }
        }
    }

    /// A completion of this poll: whether it is the armed one (then readiness came). A last
    /// completion leaves it to be armed again.
    fn complete(&mut self, c: &Completion, generation: u32) -> bool {
        if self.armed != Some(generation) {
            return false;
        }
        if !c.more {
            if c.result < 0 {
                tracing::warn!(
                    error = %io::Error::from_raw_os_error(-c.result),
                    "duct reactor (io_uring): a poll of its own failed; arming it again"
                );
            }
            self.armed = None;
        }
        true
    }
}

/// The poll armed for a slot.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Armed {
    generation: u32,
    fd: RawFd,
    events: u32,
}

/// One source's registration.
struct Slot {
    /// The source; `None` once it is gone (the slot is freed when its poll's removal is
    /// queued) or while the slot is free.
    token: Option<usize>,
    /// What the source wants watched: the fd number to poll and the events (0: nothing).
    fd: RawFd,
    events: u32,
    /// The duplicate `fd` is, until a poll of it is queued (then it moves to `retired`).
    hold: Option<OwnedFd>,
    /// The source's own fd number, and the file it named when the source registered it: to
    /// poll it again later (a poll that ended), the thread duplicates that number if it still
    /// names that file.
    source_fd: RawFd,
    file: Option<FileId>,
    /// Arm afresh even if the same poll is armed: a registration reports readiness that is
    /// already there.
    fresh: bool,
    armed: Option<Armed>,
    /// The generation of the last poll armed (kept when the slot is reused).
    generation: u32,
    /// Polls of this registration that failed in a row.
    failures: u8,
    /// In the list of slots to bring in line before the next wait.
    dirty: bool,
    /// Where this slot's readiness is in this wait's output, to merge several completions
    /// into one event (`round` is the wait's number).
    ready_round: u64,
    ready_at: usize,
}

/// Wakes a reactor thread that waits on its ring: written by other threads.
#[derive(Debug)]
pub(crate) struct UringWaker {
    fd: OwnedFd,
}

impl UringWaker {
    /// Makes the reactor's wait return (soon, if it is not waiting now).
    pub(crate) fn wake(&self) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {
                    // The counter is at its maximum (never read: each write is an event of
                    // the multishot poll): reset it and write again, as mio's waker does.
                    let mut buf = [0u8; 8];
                    match rustix::io::read(&self.fd, &mut buf) {
                        Ok(_) | Err(Errno::AGAIN) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The reactor thread's side: its ring and every source's registration.
pub(crate) struct UringPoller {
    ring: Ring,
    waker: std::sync::Arc<UringWaker>,
    waker_poll: OwnPoll,
    /// The epoll instance of listening sockets, and the ring's poll of it.
    listeners: Poll,
    listener_events: Events,
    listeners_poll: OwnPoll,
    /// The epoll instance has events to take (its poll completed).
    listeners_ready: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_token: HashMap<usize, u32>,
    dirty: Vec<u32>,
    /// Duplicate fds that queued polls name: closed once the kernel has taken every queued
    /// entry (it holds its own reference to the file from then on).
    retired: Vec<OwnedFd>,
    /// Sources to tell they are ready: their poll could not be armed again (their fd is
    /// gone).
    told: Vec<usize>,
    /// Removals to queue again: the kernel answered `EALREADY` (the poll was being handled),
    /// and the poll may still be armed, holding its file. One per removed poll at most.
    removals_again: Vec<u64>,
    /// Completions taken from the ring, being handled (kept for its capacity).
    taken: Vec<Completion>,
    /// Completions the kernel reported dropped, as last seen.
    dropped_seen: u32,
    round: u64,
}

impl std::fmt::Debug for UringPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringPoller")
            .field("ring", &self.ring)
            .field("registrations", &self.by_token.len())
            .finish()
    }
}

impl UringPoller {
    /// Sets up the ring, the waker and the epoll instance of listening sockets (returning the
    /// waker and the instance's registry, for other threads), and checks that multishot polls
    /// work. Runs on the reactor thread, which is then the only one to submit (see the
    /// module's docs). Fails with the kernel's error (`EPERM`, `ENOSYS`, `EINVAL`, ...), which
    /// the caller logs before it falls back to epoll.
    pub(crate) fn new() -> io::Result<(UringPoller, std::sync::Arc<UringWaker>, Registry)> {
        UringPoller::with_sizes(SQ_ENTRIES, CQ_ENTRIES)
    }

    fn with_sizes(
        sq_entries: u32,
        cq_entries: u32,
    ) -> io::Result<(UringPoller, std::sync::Arc<UringWaker>, Registry)> {
        if std::env::var_os(FORCE_FAILURE_ENV).is_some_and(|v| v == "1") {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("io_uring_setup: refused on purpose ({FORCE_FAILURE_ENV}=1, as EPERM)"),
            ));
        }
        let ring = Ring::new(sq_entries, cq_entries).map_err(describe)?;
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let waker = std::sync::Arc::new(UringWaker { fd });
        let listeners = Poll::new()?;
        let registry = listeners.registry().try_clone()?;
        let mut poller = UringPoller {
            ring,
            waker_poll: OwnPoll::new(KIND_WAKER, waker.fd.as_raw_fd()),
            waker: std::sync::Arc::clone(&waker),
            listeners_poll: OwnPoll::new(KIND_EPOLL, listeners.as_raw_fd()),
            listeners,
            listener_events: Events::with_capacity(256),
            listeners_ready: false,
            slots: Vec::new(),
            free: Vec::new(),
            by_token: HashMap::new(),
            dirty: Vec::new(),
            retired: Vec::new(),
            told: Vec::new(),
            removals_again: Vec::new(),
            taken: Vec::with_capacity(cq_entries as usize),
            dropped_seen: 0,
            round: 0,
        };
        poller.dropped_seen = poller.ring.dropped();
        poller.probe()?;
        tracing::debug!(
            sq_entries,
            cq_entries = poller.ring.cq_entries(),
            keeps_overflow = poller.ring.keeps_overflow(),
            "duct reactor: io_uring ring set up"
        );
        Ok((poller, waker, registry))
    }

    /// Arms the waker's poll, wakes it, and expects a completion that stays armed: the
    /// kernel supports multishot polls. Leaves the waker armed.
    fn probe(&mut self) -> io::Result<()> {
        if !self.waker_poll.arm(&mut self.ring) {
            return Err(io::Error::other("io_uring: no room to submit the probe"));
        }
        self.waker.wake()?;
        self.ring.wait(Some(Duration::from_secs(5)))?;
        let mut seen = None;
        let armed = self.waker_poll.armed;
        self.ring.drain(|c| {
            let (kind, generation, _) = untag(c.user_data);
            if kind == KIND_WAKER && Some(generation) == armed {
                seen = Some(c);
            }
        });
        match seen {
            Some(c) if c.result > 0 && c.more => Ok(()),
            Some(c) if c.result < 0 => Err(io::Error::from_raw_os_error(-c.result))
                .map_err(|e| io::Error::new(e.kind(), format!("io_uring multishot poll: {e}"))),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring: multishot polls end after one completion (Linux 5.13 needed)",
            )),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "io_uring: the probe's poll did not complete",
            )),
        }
    }

    /// Makes the registration of `token` watch the source's fd `source_fd` for `interest`
    /// (`None`: nothing). `hold`: a duplicate of it, made while the source lent it (polled in
    /// its place, and kept open until the kernel has taken the poll).
    /// `fresh`: arm a new poll even if the same is armed, so that readiness already there is
    /// reported (a registration, or a change of interest). Takes effect at the next
    /// [`Self::wait`].
    pub(crate) fn set(
        &mut self,
        token: usize,
        source_fd: RawFd,
        hold: Option<OwnedFd>,
        interest: Option<Interest>,
        fresh: bool,
    ) {
        let events = events_for(interest);
        let index = match self.by_token.get(&token) {
            Some(&i) => i,
            None if events == 0 => return,
            None => {
                let Some(i) = self.alloc(token) else {
                    tracing::error!(token, "duct reactor (io_uring): too many registrations");
                    return;
                };
                self.by_token.insert(token, i);
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.source_fd = source_fd;
        slot.file = hold
            .as_ref()
            .and_then(|h| duct_sys::uring::file_id(h.as_fd()).ok());
        slot.fd = hold.as_ref().map_or(source_fd, |h| h.as_raw_fd());
        // (A duplicate replaced here was never named by a queued poll: those moved on.)
        slot.hold = hold;
        slot.events = events;
        if fresh {
            slot.fresh = true;
            slot.failures = 0;
        }
        self.mark(index);
    }

    /// Forgets `token` (its source is gone): its poll is removed at the next wait, which
    /// releases the kernel's reference to the file.
    pub(crate) fn remove(&mut self, token: usize) {
        if let Some(index) = self.by_token.remove(&token) {
            let slot = &mut self.slots[index as usize];
            slot.token = None;
            slot.events = 0;
            slot.hold = None;
            self.mark(index);
        }
    }

    fn alloc(&mut self, token: usize) -> Option<u32> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i < OWN_SLOTS)?;
                self.slots.push(Slot {
                    token: None,
                    fd: -1,
                    events: 0,
                    hold: None,
                    source_fd: -1,
                    file: None,
                    fresh: false,
                    armed: None,
                    generation: 0,
                    failures: 0,
                    dirty: false,
                    ready_round: 0,
                    ready_at: 0,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.token = Some(token);
        slot.failures = 0;
        slot.fresh = false;
        Some(index)
    }

    fn mark(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(index);
        }
    }

    /// Queues what brings slot `index` in line: the removal of a poll that is not wanted as
    /// armed, then a new poll. `false`: the submission queue is full (what was queued is
    /// recorded; call again after a submit).
    fn sync(&mut self, index: u32) -> bool {
        let slot = &mut self.slots[index as usize];
        if let Some(a) = slot.armed {
            let wanted = Armed {
                generation: a.generation,
                fd: slot.fd,
                events: slot.events,
            };
            if slot.fresh || slot.events == 0 || a != wanted {
                let target = tag(KIND_POLL, a.generation, index);
                if !self.ring.push_cancel(target, removal_of(target)) {
                    return false;
                }
                slot.armed = None;
            }
        }
        let rearm = slot.armed.is_none() && slot.events != 0 && slot.hold.is_none();
        if rearm && slot.token.is_some() {
            if let Some(file) = slot.file {
                // Armed before: its duplicate is gone. Take a new one, if the source's fd
                // still names the file it registered.
                match duct_sys::uring::dup_if_same_file(slot.source_fd, file) {
                    Ok(Some(dup)) => {
                        slot.fd = dup.as_raw_fd();
                        slot.hold = Some(dup);
                    }
                    gone => {
                        if let Err(e) = gone {
                            tracing::debug!(error = %e, "duct reactor (io_uring): dup failed");
                        }
                        // The source closed or replaced its fd: tell it to look (it finds
                        // the end, or registers its new fd).
                        slot.events = 0;
                        if let Some(token) = slot.token {
                            self.told.push(token);
                        }
                    }
                }
            }
        }
        if slot.armed.is_none() && slot.events != 0 && slot.token.is_some() {
            let generation = slot.generation.wrapping_add(1) & GEN_MASK;
            let user_data = tag(KIND_POLL, generation, index);
            if !self
                .ring
                .push_poll_multishot(slot.fd, slot.events, user_data)
            {
                return false;
            }
            if let Some(hold) = slot.hold.take() {
                self.retired.push(hold);
            }
            slot.generation = generation;
            slot.armed = Some(Armed {
                generation,
                fd: slot.fd,
                events: slot.events,
            });
        }
        slot.fresh = false;
        slot.dirty = false;
        if slot.token.is_none() && slot.armed.is_none() {
            self.free.push(index);
        }
        true
    }

    /// Queues the polls and removals of every slot that changed, submitting when the
    /// submission queue fills. Returns whether all are queued (otherwise the rest stay in
    /// the list for the next round).
    fn flush(&mut self) -> bool {
        for own in [&mut self.waker_poll, &mut self.listeners_poll] {
            if !with_room(&mut self.ring, |ring| own.arm(ring)) {
                return false;
            }
        }
        while let Some(&removal) = self.removals_again.last() {
            if !with_room(&mut self.ring, |ring| {
                ring.push_cancel(removed_by(removal), removal)
            }) {
                return false;
            }
            self.removals_again.pop();
        }
        let mut done = 0;
        while done < self.dirty.len() {
            let index = self.dirty[done];
            if self.sync(index) {
                done += 1;
                continue;
            }
            // The submission queue is full: hand it to the kernel and try once more.
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "duct reactor (io_uring): submit failed; retrying");
                break;
            }
            if !self.sync(index) {
                break;
            }
            done += 1;
        }
        self.dirty.drain(..done);
        self.dirty.is_empty()
    }

    /// Submits what changed, waits for completions until `timeout` (`None`: no limit) and
    /// puts the readiness they report into `ready`, one entry per source.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> io::Result<()> {
        ready.clear();
        self.round += 1;
        let all_queued = self.flush();
        let timeout = if !all_queued {
            Some(Duration::ZERO) // the rest goes in once the kernel took this part
        } else if self.waker_poll.armed.is_none() {
            Some(timeout.map_or(UNWOKEN_WAIT, |t| t.min(UNWOKEN_WAIT)))
        } else {
            timeout
        };
        let waited = self.ring.wait(timeout);
        if self.ring.unsubmitted() == 0 {
            // The kernel has taken every queued poll, and with it a reference to each file.
            self.retired.clear();
        }
        match waited {
            Ok(()) => {}
            // A signal, or the kernel is short of room for completions: reap what is there,
            // and the reactor loops.
            Err(e)
                if matches!(
                    e.raw_os_error().map(Errno::from_raw_os_error),
                    Some(Errno::INTR | Errno::BUSY | Errno::AGAIN)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap(ready);
        Ok(())
    }

    /// Drains the completion queue (and what the kernel kept aside after an overflow), then
    /// re-arms everything if completions were lost.
    fn reap(&mut self, ready: &mut Vec<Ready>) {
        for token in self.told.drain(..) {
            ready.push(Ready {
                token,
                readable: true,
                writable: true,
                closed: true,
            });
        }
        // Bounded: the queue is drained completely each time; the kernel's overflow list can
        // refill it a few times after a burst, and what is left waits for the next wake.
        for _ in 0..4 {
            let mut taken = std::mem::take(&mut self.taken);
            self.ring.drain(|c| taken.push(c));
            for c in taken.drain(..) {
                self.complete(c, ready);
            }
            self.taken = taken;
            if !self.ring.overflowed() {
                break;
            }
            // The kernel kept completions that found the queue full: a submit (which then
            // asks for events) moves them in.
            if let Err(e) = self.ring.submit() {
                tracing::debug!(error = %e, "duct reactor (io_uring): taking kept completions");
                break;
            }
        }
        let dropped = self.ring.dropped();
        if dropped != self.dropped_seen {
            tracing::warn!(
                lost = dropped.wrapping_sub(self.dropped_seen),
                "duct reactor (io_uring): completions were lost to a full completion queue; \
                 re-arming every registration"
            );
            self.dropped_seen = dropped;
            self.rearm_all();
        }
        if std::mem::take(&mut self.listeners_ready) {
            self.take_listener_events(ready);
        }
    }

    /// Takes the events of the epoll instance of listening sockets (its fd completed a poll,
    /// or completions were lost).
    fn take_listener_events(&mut self, ready: &mut Vec<Ready>) {
        // Bounded: a full batch means there may be more; the instance holds the rest until
        // the next call, and its poll completes again only on new readiness, so read on.
        for _ in 0..64 {
            match self
                .listeners
                .poll(&mut self.listener_events, Some(Duration::ZERO))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "duct reactor (io_uring): epoll_wait failed");
                    return;
                }
            }
            let mut n = 0;
            for ev in self.listener_events.iter() {
                n += 1;
                ready.push(Ready::of(ev));
            }
            if n < self.listener_events.capacity() {
                return;
            }
        }
    }

    /// After lost completions: every poll is removed and armed again (reporting readiness
    /// that is there), the waker's too.
    fn rearm_all(&mut self) {
        for index in 0..self.slots.len() as u32 {
            let slot = &mut self.slots[index as usize];
            if slot.token.is_some() && slot.events != 0 {
                slot.fresh = true;
                slot.failures = 0;
                self.mark(index);
            }
        }
        self.waker_poll.disarm(&mut self.ring);
        self.listeners_poll.disarm(&mut self.ring);
        // (Events of listening sockets whose poll completion was lost.)
        self.listeners_ready = true;
    }

    fn complete(&mut self, c: Completion, ready: &mut Vec<Ready>) {
        let (kind, generation, index) = untag(c.user_data);
        match kind {
            KIND_POLL => self.complete_poll(c, generation, index, ready),
            KIND_WAKER => {
                // (Only wakes the thread: the reactor takes its inbox after every wait.)
                self.waker_poll.complete(&c, generation);
            }
            KIND_EPOLL => {
                if self.listeners_poll.complete(&c, generation) {
                    self.listeners_ready = true;
                }
            }
            KIND_REMOVE => {
                // 0: removed; ENOENT: it had ended. EALREADY (kernels before 5.18 may answer
                // so while the poll is being handled): it may still be armed and hold its
                // file, so the removal is queued again.
                if c.result == -Errno::ALREADY.raw_os_error() {
                    self.removals_again.push(c.user_data);
                } else if c.result != 0 && c.result != -Errno::NOENT.raw_os_error() {
                    tracing::debug!(
                        error = %io::Error::from_raw_os_error(-c.result),
                        "duct reactor (io_uring): removing a poll failed"
                    );
                }
            }
            _ => tracing::debug!(
                user_data = c.user_data,
                "duct reactor (io_uring): a completion with an unknown tag"
            ),
        }
    }

    fn complete_poll(
        &mut self,
        c: Completion,
        generation: u32,
        index: u32,
        ready: &mut Vec<Ready>,
    ) {
        let round = self.round;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.armed.is_none_or(|a| a.generation != generation) {
            return; // a poll removed or replaced since: its last words
        }
        let Some(token) = slot.token else { return };
        if !c.more {
            slot.armed = None;
        }
        let (readable, writable, closed, rearm) = if c.result >= 0 {
            slot.failures = 0;
            let (r, w, hup) = readiness(c.result as u32);
            (r, w, hup, true)
        } else {
            slot.failures = slot.failures.saturating_add(1);
            let err = Errno::from_raw_os_error(-c.result);
            if err == Errno::CANCELED {
                // The kernel cancelled it (not us: our removals change the generation first).
                (false, false, false, slot.failures < MAX_FAILURES)
            } else {
                tracing::debug!(
                    token,
                    error = %io::Error::from(err),
                    "duct reactor (io_uring): a poll failed; the source is told to look"
                );
                (true, true, true, slot.failures < MAX_FAILURES)
            }
        };
        if !c.more && slot.events != 0 && rearm {
            // Ended (a full completion queue, a cancellation, an error): arm it again, which
            // reports readiness that is there already.
            self.mark(index);
        }
        if !(readable || writable) {
            return;
        }
        let slot = &mut self.slots[index as usize];
        if slot.ready_round == round {
            let r = &mut ready[slot.ready_at];
            r.readable |= readable;
            r.writable |= writable;
            r.closed |= closed;
        } else {
            slot.ready_round = round;
            slot.ready_at = ready.len();
            ready.push(Ready {
                token,
                readable,
                writable,
                closed,
            });
        }
    }
}

/// Queues an entry with `push`; when the submission queue is full, hands it to the kernel
/// and tries once more. `false`: still no room.
fn with_room(ring: &mut Ring, mut push: impl FnMut(&mut Ring) -> bool) -> bool {
    if push(ring) {
        return true;
    }
    let _ = ring.submit();
    push(ring)
}

/// Adds what the kernel's refusal means to its error: `EPERM` names the sysctl that may be
/// why, `ENOSYS` says the kernel has no io_uring.
fn describe(e: io::Error) -> io::Error {
    let why = match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::PERM) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|v| format!("kernel.io_uring_disabled = {}", v.trim()))
                .unwrap_or_else(|_| "kernel.io_uring_disabled unreadable".to_owned());
            format!("not permitted ({sysctl}, or a seccomp filter)")
        }
        Some(Errno::NOSYS) => "this kernel has no io_uring".to_owned(),
        _ => return e,
    };
    io::Error::new(e.kind(), format!("io_uring_setup: {e}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_kinds_never_collide() {
        for (kind, generation, slot) in [
            (KIND_POLL, 0, 0),
            (KIND_POLL, GEN_MASK, u32::MAX),
            (KIND_REMOVE, 12345, 77),
            (KIND_WAKER, 1, 0),
        ] {
            assert_eq!(untag(tag(kind, generation, slot)), (kind, generation, slot));
        }
        // A generation wraps within its bits, never into the kind.
        assert_eq!(untag(tag(KIND_POLL, GEN_MASK + 1, 5)), (KIND_POLL, 0, 5));
    }

    /// A ring far too small for its registrations: polls are submitted in parts (a full
    /// submission queue), completions overflow the completion queue (the kernel keeps them,
    /// and ends the multishot polls that could not post), and still every source hears of its
    /// readiness, round after round (ended polls are armed again).
    #[test]
    fn a_tiny_ring_loses_no_readiness() {
        use std::collections::HashSet;
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        const N: usize = 64;
        let (mut p, _waker, _listeners) = match UringPoller::with_sizes(4, 8) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("SKIPPED: no io_uring here ({e})");
                return;
            }
        };
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..N).map(|_| UnixStream::pair().unwrap()).collect();
        for (a, _) in &pairs {
            a.set_nonblocking(true).unwrap();
        }
        for (token, (a, _)) in pairs.iter().enumerate() {
            let hold = a.as_fd().try_clone_to_owned().ok();
            p.set(token, a.as_raw_fd(), hold, Some(Interest::READABLE), true);
        }
        let mut ready = Vec::new();
        p.wait(Some(Duration::ZERO), &mut ready).unwrap();
        for round in 0..3 {
            for (_, b) in &pairs {
                (&*b).write_all(b"x").unwrap();
            }
            let mut seen = HashSet::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while seen.len() < N {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: {seen:?}"
                );
                p.wait(Some(Duration::from_millis(10)), &mut ready).unwrap();
                for r in &ready {
                    assert!(r.readable);
                    seen.insert(r.token);
                }
            }
            // Read everything: the next round's byte is new readiness.
            for (a, _) in &pairs {
                let mut buf = [0u8; 16];
                while (&*a).read(&mut buf).is_ok() {}
            }
        }
        assert!(p.by_token.len() == N);
    }

    #[test]
    fn a_removal_s_tag_names_the_poll_it_removes() {
        for target in [
            tag(KIND_POLL, 0, 0),
            tag(KIND_POLL, GEN_MASK, OWN_SLOTS - 1),
            tag(KIND_WAKER, 7, 0),
            tag(KIND_EPOLL, GEN_MASK, 0),
        ] {
            let removal = removal_of(target);
            assert_eq!(untag(removal).0, KIND_REMOVE);
            assert_eq!(removed_by(removal), target);
        }
        assert_ne!(
            removal_of(tag(KIND_WAKER, 3, 0)),
            removal_of(tag(KIND_EPOLL, 3, 0))
        );
    }

    /// A removal the kernel answers with `EALREADY` (the poll was being handled, and stays
    /// armed) is queued again: the poll goes, and with it the kernel's hold on the socket,
    /// whose peer then sees the end.
    #[test]
    fn a_removal_answered_ealready_is_made_again_and_lets_the_file_go() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let (mut p, _waker, _listeners) = match UringPoller::new() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("SKIPPED: no io_uring here ({e})");
                return;
            }
        };
        let (a, b) = UnixStream::pair().unwrap();
        let hold = a.as_fd().try_clone_to_owned().ok();
        p.set(1, a.as_raw_fd(), hold, Some(Interest::READABLE), true);
        let mut ready = Vec::new();
        p.wait(Some(Duration::ZERO), &mut ready).unwrap();
        let index = p.by_token[&1];
        let armed = p.slots[index as usize].armed.expect("armed");
        let target = tag(KIND_POLL, armed.generation, index);
        // The state a refused removal leaves: the source forgotten here, its poll still armed
        // in the kernel, and the answer EALREADY.
        p.by_token.remove(&1);
        let slot = &mut p.slots[index as usize];
        (slot.token, slot.events, slot.armed) = (None, 0, None);
        p.free.push(index);
        p.complete(
            Completion {
                user_data: removal_of(target),
                result: -Errno::ALREADY.raw_os_error(),
                more: false,
            },
            &mut ready,
        );
        drop(a);
        b.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 1];
        loop {
            p.wait(Some(Duration::from_millis(10)), &mut ready).unwrap();
            match (&b).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => panic!("no data was sent"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the poll still holds the socket"
            );
        }
        assert!(p.removals_again.is_empty());
    }

    #[test]
    fn events_and_readiness_follow_the_epoll_path() {
        let ready = bits(PollFlags::IN | PollFlags::RDHUP);
        assert_eq!(
            events_for(Some(Interest::READABLE)),
            ready | bits(PollFlags::ERR | PollFlags::HUP)
        );
        assert_eq!(events_for(None), 0);
        assert_eq!(readiness(bits(PollFlags::IN)), (true, false, false));
        assert_eq!(readiness(bits(PollFlags::OUT)), (false, true, false));
        assert_eq!(
            readiness(bits(PollFlags::IN | PollFlags::OUT)),
            (true, true, false)
        );
        // The peer's FIN, an error, a hang-up: both directions, as the epoll path reports.
        assert_eq!(readiness(ready), (true, true, true));
        assert_eq!(readiness(bits(PollFlags::ERR)), (true, true, true));
        assert_eq!(readiness(bits(PollFlags::HUP)), (true, true, true));
    }
}
