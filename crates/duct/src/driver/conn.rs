//! One established connection driven inline, on the threads of its callers.
//!
//! There is no background thread in this driver: `send` writes on the caller's thread, `recv`
//! reads on the caller's thread. Several threads may use one connection at once; two flags
//! under the connection's lock make sure only one of them reads and only one writes at a time,
//! and a condition variable wakes the others when a message, room in the send queue, or the
//! end of the connection arrives.
//!
//! - **Send**: the message is queued in the session; if no other thread is writing, the caller
//!   becomes the writer and writes everything queued (its own frames and any that other
//!   threads queued meanwhile: one `sendmsg` for many frames) until the queue is empty or its
//!   deadline passes. A message that is queued is accepted: `send` returns `Ok`, and any
//!   remainder is written by the next call on the pipe (send, recv or close).
//! - **Recv**: a message already delivered is returned at once; otherwise the caller reads
//!   from the socket itself (one `recv` fills many frames), or, if another thread is reading,
//!   waits for it to deliver.
//! - **Close**: queues CLOSE behind everything already queued, flushes for up to the linger
//!   time, then shuts the socket down, which wakes every thread blocked on it.
//!
//! Lock order: `shared` may be held while taking `read` or `write`, and `read`/`write` may be
//! held while taking `shared`: both are safe because only the thread that set the matching
//! flag ever takes `read` (or `write`), so those two locks are never contended.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use duct_proto::{Delivered, Event, Session};

use super::handshake::Handshake;
use super::io::{self as dio, Interest, ReadBuf, WriteQueue};
use super::proto_error;
use crate::transport::Stream;
use crate::{Addr, ChannelStats, Error, ErrorKind, PipeState, PipeStats, StateChange};

/// Callbacks and limits of one connection, taken from its options.
#[derive(Clone)]
pub(crate) struct ConnConfig {
    /// Most bytes (headers included) queued for writing; `send` blocks above it.
    pub(crate) send_queue_bytes: usize,
    /// Most frames queued for writing.
    pub(crate) send_queue_frames: usize,
    /// Default deadline of `send` when the caller gives none.
    pub(crate) send_timeout: Duration,
    /// Default linger of `close`.
    pub(crate) linger: Duration,
    pub(crate) on_state_change: Option<crate::options::StateCallback>,
    pub(crate) on_error: Option<crate::options::ErrorCallback>,
}

struct Shared {
    session: Session,
    state: PipeState,
    session_id: u64,
    reading: bool,
    writing: bool,
    /// Bytes in the write queue (mirrors `WriteQueue::bytes`, readable without its lock).
    wq_bytes: usize,
    wq_frames: usize,
    /// Threads waiting on the condition variable.
    waiters: usize,
    /// Why the connection ended; every later call returns it.
    terminal: Option<Error>,
    local_closed: bool,
    stats: PipeStats,
    channels: ChannelTable,
    /// Callbacks to run once the lock is released.
    pending_callbacks: Vec<StateChange>,
}

/// Hashes a channel number with one multiplication (keys are u16 and chosen by our own user,
/// so SipHash's flooding resistance buys nothing here and costs ~30 instructions a message).
#[derive(Default)]
struct ChannelHasher(u64);

impl Hasher for ChannelHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Per-channel counters, with the last channel used cached (traffic comes in runs).
#[derive(Default)]
struct ChannelTable {
    map: HashMap<u16, ChannelStats, BuildHasherDefault<ChannelHasher>>,
    last: Option<(u16, ChannelStats)>,
}

impl ChannelTable {
    #[inline]
    fn get(&mut self, channel: u16) -> &mut ChannelStats {
        if self.last.as_ref().is_none_or(|(c, _)| *c != channel) {
            if let Some((c, st)) = self.last.take() {
                self.map.insert(c, st);
            }
            let st = self.map.remove(&channel).unwrap_or_default();
            self.last = Some((channel, st));
        }
        &mut self.last.as_mut().expect("set above").1
    }

    fn snapshot(&self) -> Vec<(u16, ChannelStats)> {
        let mut v: Vec<_> = self.map.iter().map(|(c, s)| (*c, *s)).collect();
        if let Some((c, s)) = &self.last {
            v.push((*c, *s));
        }
        v
    }
}

pub(crate) struct Conn {
    stream: Stream,
    shared: Mutex<Shared>,
    cv: Condvar,
    read: Mutex<ReadBuf>,
    write: Mutex<WriteQueue>,
    local_addr: Addr,
    peer_addr: Addr,
    config: ConnConfig,
    /// Set when `pending_callbacks` is not empty, so the hot path skips the lock.
    callbacks_pending: AtomicBool,
}

/// How `recv` may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Do not block.
    No,
    /// Until the deadline.
    Until(Instant),
    /// Until a message, close or error.
    Forever,
}

/// Messages of one channel counted together (traffic comes in runs), so that the counters
/// are touched once per run instead of once per message.
#[derive(Clone, Copy, Default)]
struct Run {
    channel: u16,
    msgs: u64,
    bytes: u64,
}

impl Run {
    fn start(channel: u16, len: usize) -> Run {
        Run {
            channel,
            msgs: 1,
            bytes: len as u64,
        }
    }

    /// Adds a message if it continues the run (or the run is empty).
    #[inline]
    fn add(&mut self, channel: u16, len: usize) -> bool {
        if self.msgs != 0 && self.channel != channel {
            return false;
        }
        self.channel = channel;
        self.msgs += 1;
        self.bytes += len as u64;
        true
    }
}

impl Shared {
    fn count_sent(&mut self, run: Run) {
        if run.msgs == 0 {
            return;
        }
        self.stats.msgs_sent += run.msgs;
        self.stats.bytes_sent += run.bytes;
        let ch = self.channels.get(run.channel);
        ch.msgs_sent += run.msgs;
        ch.bytes_sent += run.bytes;
    }

    fn count_received(&mut self, run: Run) {
        if run.msgs == 0 {
            return;
        }
        self.stats.msgs_received += run.msgs;
        self.stats.bytes_received += run.bytes;
        let ch = self.channels.get(run.channel);
        ch.msgs_received += run.msgs;
        ch.bytes_received += run.bytes;
    }
}

impl Conn {
    /// Wraps an established handshake.
    pub(crate) fn new(mut hs: Handshake, config: ConnConfig) -> Conn {
        let session_id = hs.take_connected();
        let local_addr = hs.stream.local_addr();
        let peer_addr = hs.peer.clone();
        let mut wq = hs.wq;
        wq.take_from(&mut hs.session);
        let shared = Shared {
            session: hs.session,
            state: PipeState::Connected,
            session_id,
            reading: false,
            writing: false,
            wq_bytes: wq.bytes(),
            wq_frames: wq.frames(),
            waiters: 0,
            terminal: None,
            local_closed: false,
            stats: PipeStats::default(),
            channels: ChannelTable::default(),
            pending_callbacks: vec![StateChange {
                from: PipeState::Connecting,
                to: PipeState::Connected,
                session_id,
                cause: None,
            }],
        };
        let conn = Conn {
            stream: hs.stream,
            shared: Mutex::new(shared),
            cv: Condvar::new(),
            read: Mutex::new(hs.rbuf),
            write: Mutex::new(wq),
            local_addr,
            peer_addr,
            config,
            callbacks_pending: AtomicBool::new(true),
        };
        conn.run_callbacks();
        conn
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock (a bug, or a panicking callback elsewhere) must not
        // turn every later call into a panic: the state itself stays consistent.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn local_addr(&self) -> Addr {
        self.local_addr.clone()
    }

    pub(crate) fn peer_addr(&self) -> Addr {
        self.peer_addr.clone()
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.config.send_timeout
    }

    pub(crate) fn linger(&self) -> Duration {
        self.config.linger
    }

    pub(crate) fn state(&self) -> PipeState {
        self.lock().state
    }

    pub(crate) fn session_id(&self) -> u64 {
        self.lock().session_id
    }

    pub(crate) fn stats(&self) -> PipeStats {
        let g = self.lock();
        let mut s = g.stats.clone();
        s.set_channels(g.channels.snapshot());
        s
    }

    /// Waits on the condition variable until notified or `deadline`; returns the guard and
    /// whether the deadline passed.
    fn wait_cv<'a>(
        &self,
        mut g: MutexGuard<'a, Shared>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, Shared>, bool) {
        g.waiters += 1;
        let timed_out = match deadline {
            None => {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                false
            }
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    true
                } else {
                    let (ng, r) = self
                        .cv
                        .wait_timeout(g, left)
                        .unwrap_or_else(|p| p.into_inner());
                    g = ng;
                    r.timed_out() && Instant::now() >= d
                }
            }
        };
        g.waiters -= 1;
        (g, timed_out)
    }

    fn notify(&self, g: &Shared) {
        if g.waiters > 0 {
            self.cv.notify_all();
        }
    }

    /// Sends one message. `Ok` means the message is accepted (written, or queued behind frames
    /// a writer is flushing); `TimedOut` means it was not accepted and nothing of it is sent.
    pub(crate) fn send(
        &self,
        channel: u16,
        payload: Bytes,
        now: Instant,
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = now + timeout;
        let len = payload.len();
        let mut g = self.lock();
        loop {
            if let Some(e) = &g.terminal {
                return Err(e.clone());
            }
            let queued = g.session.transmit_bytes() + g.wq_bytes;
            let frames = g.session.transmit_len() + g.wq_frames;
            if queued == 0
                || (queued + len <= self.config.send_queue_bytes
                    && frames < self.config.send_queue_frames)
            {
                break;
            }
            if !g.writing {
                // Nobody is flushing: do it ourselves until there is room or the deadline.
                g.writing = true;
                g = self.flush(g, Some(deadline))?;
                if Instant::now() >= deadline {
                    let queued = g.session.transmit_bytes() + g.wq_bytes;
                    if queued != 0 && queued + len > self.config.send_queue_bytes {
                        return Err(self.queue_full(channel, queued));
                    }
                }
                continue;
            }
            let (ng, timed_out) = self.wait_cv(g, Some(deadline));
            g = ng;
            if timed_out {
                let queued = g.session.transmit_bytes() + g.wq_bytes;
                return Err(self.queue_full(channel, queued));
            }
        }
        if let Err(e) = g.session.send(channel, payload, now) {
            return Err(self.send_error(e, channel));
        }
        g.count_sent(Run::start(channel, len));
        if g.writing {
            return Ok(());
        }
        g.writing = true;
        let g = self.flush(g, Some(deadline))?;
        drop(g);
        Ok(())
    }

    /// Sends several messages under one lock and one flush: the frames go out in as few
    /// `sendmsg` calls as the socket allows. Returns how many were accepted; an error is
    /// returned only if none was.
    pub(crate) fn send_batch(
        &self,
        msgs: &mut dyn Iterator<Item = (u16, Bytes)>,
        deadline: Instant,
    ) -> Result<usize, Error> {
        let mut sent = 0usize;
        let now = Instant::now();
        let mut run = Run::default();
        let mut g = self.lock();
        for (channel, payload) in msgs {
            let len = payload.len();
            loop {
                if let Some(e) = &g.terminal {
                    let e = e.clone();
                    g.count_sent(run);
                    drop(g);
                    return if sent == 0 { Err(e) } else { Ok(sent) };
                }
                let queued = g.session.transmit_bytes() + g.wq_bytes;
                let frames = g.session.transmit_len() + g.wq_frames;
                if queued == 0
                    || (queued + len <= self.config.send_queue_bytes
                        && frames < self.config.send_queue_frames)
                {
                    break;
                }
                if !g.writing {
                    g.writing = true;
                    g = match self.flush(g, Some(deadline)) {
                        Ok(g) => g,
                        Err(e) => {
                            self.lock().count_sent(run);
                            return if sent == 0 { Err(e) } else { Ok(sent) };
                        }
                    };
                } else {
                    let (ng, _) = self.wait_cv(g, Some(deadline));
                    g = ng;
                }
                if Instant::now() >= deadline {
                    let queued = g.session.transmit_bytes() + g.wq_bytes;
                    if queued != 0 && queued + len > self.config.send_queue_bytes {
                        let e = self.queue_full(channel, queued);
                        g.count_sent(run);
                        drop(g);
                        return if sent == 0 { Err(e) } else { Ok(sent) };
                    }
                }
            }
            if let Err(e) = g.session.send(channel, payload, now) {
                let e = self.send_error(e, channel);
                g.count_sent(run);
                drop(g);
                return if sent == 0 { Err(e) } else { Ok(sent) };
            }
            sent += 1;
            if !run.add(channel, len) {
                g.count_sent(run);
                run = Run::start(channel, len);
            }
        }
        g.count_sent(run);
        if !g.writing && (g.session.transmit_len() > 0 || g.wq_frames > 0) {
            g.writing = true;
            match self.flush(g, Some(deadline)) {
                Ok(_) => {}
                Err(e) if sent == 0 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(sent)
    }

    fn queue_full(&self, channel: u16, queued: usize) -> Error {
        Error::new(
            ErrorKind::TimedOut,
            format!(
                "send to {} on channel {channel} timed out: {queued} bytes already queued \
                 (limit {} bytes) and the peer is not reading; the message was not sent",
                self.peer_addr, self.config.send_queue_bytes
            ),
        )
    }

    fn send_error(&self, e: duct_proto::Error, channel: u16) -> Error {
        match e {
            duct_proto::Error::MessageTooLarge { size, max } => Error::new(
                ErrorKind::MessageTooLarge,
                format!(
                    "message of {size} bytes on channel {channel} exceeds the limit of {max} bytes \
                     that {} accepts",
                    self.peer_addr
                ),
            ),
            duct_proto::Error::Closed | duct_proto::Error::NotConnected => Error::new(
                ErrorKind::Closed,
                format!("pipe to {} is closed", self.peer_addr),
            ),
            other => proto_error(other, &self.peer_addr),
        }
    }

    /// Writes queued frames until the queue is empty or `deadline` passes. The caller has set
    /// `writing`; this clears it. Errors end the connection.
    fn flush<'a>(
        &'a self,
        mut g: MutexGuard<'a, Shared>,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, Shared>, Error> {
        let mut w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            w.take_from(&mut g.session);
            g.wq_bytes = w.bytes();
            g.wq_frames = w.frames();
            if w.is_empty() {
                g.writing = false;
                self.notify(&g);
                return Ok(g);
            }
            drop(g);
            let res = w.write_nonblocking(self.stream.as_fd());
            g = self.lock();
            g.wq_bytes = w.bytes();
            g.wq_frames = w.frames();
            match res {
                Ok(true) => continue,
                Ok(false) => {
                    self.notify(&g);
                    let past = deadline.is_some_and(|d| Instant::now() >= d);
                    if past || g.terminal.is_some() {
                        g.writing = false;
                        self.notify(&g);
                        return Ok(g);
                    }
                    drop(g);
                    let r = dio::wait(self.stream.as_fd(), Interest::Write, deadline);
                    g = self.lock();
                    if let Err(e) = r {
                        g.writing = false;
                        let err = self.fail_transport(&mut g, e);
                        return Err(err);
                    }
                }
                Err(e) => {
                    g.writing = false;
                    let err = self.fail_transport(&mut g, e);
                    return Err(err);
                }
            }
        }
    }

    /// Tries to write pending output now without blocking, if no one else is writing.
    fn flush_if_idle<'a>(&'a self, mut g: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        if !g.writing && (g.session.transmit_len() > 0 || g.wq_frames > 0) {
            g.writing = true;
            match self.flush(g, Some(Instant::now())) {
                Ok(ng) => ng,
                Err(_) => self.lock(),
            }
        } else {
            g
        }
    }

    /// Receives one message. `Ok(None)` only with `Wait::No`.
    pub(crate) fn recv(&self, wait: Wait) -> Result<Option<Delivered>, Error> {
        let mut out = None;
        self.recv_into(wait, 1, &mut |d| out = Some(d))?;
        Ok(out)
    }

    /// Receives up to `max` (at least 1) messages, handing each to `sink` in order, under one
    /// lock. Waits as `wait` says for the first; returns how many were delivered (0 only with
    /// `Wait::No`). Once the pipe has ended, messages received before the end are still
    /// delivered; the error comes when there are none left.
    pub(crate) fn recv_into(
        &self,
        wait: Wait,
        max: usize,
        sink: &mut dyn FnMut(Delivered),
    ) -> Result<usize, Error> {
        let deadline = match wait {
            Wait::Until(d) => Some(d),
            Wait::No => Some(Instant::now()),
            Wait::Forever => None,
        };
        let mut g = self.lock();
        let mut attempted = false;
        loop {
            let mut n = 0;
            let mut run = Run::default();
            while n < max {
                let Some(d) = g.session.poll_message() else {
                    break;
                };
                if !run.add(d.channel, d.payload.len()) {
                    g.count_received(run);
                    run = Run::start(d.channel, d.payload.len());
                }
                sink(d);
                n += 1;
            }
            g.count_received(run);
            if n > 0 {
                drop(g);
                self.run_callbacks();
                return Ok(n);
            }
            if let Some(e) = &g.terminal {
                let e = e.clone();
                drop(g);
                self.run_callbacks();
                return Err(e);
            }
            let past = deadline.is_some_and(|d| Instant::now() >= d);
            if (wait == Wait::No && attempted) || (past && wait != Wait::No) {
                drop(g);
                return match wait {
                    Wait::No => Ok(0),
                    _ => Err(Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "no message from {} before the receive timeout",
                            self.peer_addr
                        ),
                    )),
                };
            }
            g = self.flush_if_idle(g);
            if g.reading {
                if wait == Wait::No {
                    return Ok(0);
                }
                let (ng, _) = self.wait_cv(g, deadline);
                g = ng;
                continue;
            }
            g.reading = true;
            let mut r = self.read.lock().unwrap_or_else(|p| p.into_inner());
            let needed = g.session.input_needed(&r.data);
            // Output that a writer left behind must not wait for our read: poll for both.
            let output_pending = g.wq_frames > 0 || g.session.transmit_len() > 0;
            drop(g);
            let res = self.read_once(&mut r, needed, wait, deadline, output_pending);
            attempted = true;
            g = self.lock();
            g.reading = false;
            match res {
                Ok(0) => self.on_eof(&mut g),
                Ok(_) => {
                    if let Err(e) = g.session.handle_input(&mut r.data, Instant::now()) {
                        let err = proto_error(e, &self.peer_addr);
                        self.end(&mut g, err, PipeState::Closed);
                    }
                    self.drain_events(&mut g);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.fail_transport(&mut g, e);
                }
            }
            drop(r);
            self.notify(&g);
            g = self.flush_if_idle(g);
            if g.terminal.is_some() && g.session.message_len() == 0 {
                // Make sure a blocked writer notices too.
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// One read attempt. `WouldBlock` when nothing arrived before the deadline.
    fn read_once(
        &self,
        r: &mut ReadBuf,
        needed: usize,
        wait: Wait,
        deadline: Option<Instant>,
        output_pending: bool,
    ) -> io::Result<usize> {
        let fd = self.stream.as_fd();
        match wait {
            Wait::No => r.recv(fd, needed, true),
            Wait::Forever if !output_pending => r.recv(fd, needed, false),
            _ => {
                // With output pending, wake at least every 10 ms to write it.
                let slice = output_pending.then(|| Instant::now() + Duration::from_millis(10));
                let until = match (deadline, slice) {
                    (Some(d), Some(s)) => Some(d.min(s)),
                    (d, s) => d.or(s),
                };
                let ready = dio::wait(fd, Interest::Read, until)?;
                if ready.readable {
                    r.recv(fd, needed, true)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
        }
    }

    fn drain_events(&self, g: &mut Shared) {
        while let Some(ev) = g.session.poll_event() {
            match ev {
                Event::PeerClosed(c) => {
                    let err = Error::closed(c.code, c.reason, true);
                    self.end(g, err, PipeState::Closed);
                }
                Event::Connected { .. } | Event::Pong { .. } => {}
            }
        }
    }

    fn on_eof(&self, g: &mut Shared) {
        g.session.transport_lost(Instant::now());
        if g.terminal.is_none() {
            let err = Error::new(
                ErrorKind::Disconnected,
                format!(
                    "{} closed the connection without a CLOSE frame",
                    self.peer_addr
                ),
            );
            self.end(g, err, PipeState::Disconnected);
        }
    }

    fn fail_transport(&self, g: &mut Shared, e: io::Error) -> Error {
        if let Some(t) = &g.terminal {
            return t.clone();
        }
        g.session.transport_lost(Instant::now());
        let err = Error::io(e, format_args!("connection to {}", self.peer_addr));
        let state = if err.kind() == ErrorKind::Disconnected {
            PipeState::Disconnected
        } else {
            PipeState::Closed
        };
        self.end(g, err.clone(), state);
        err
    }

    /// Records the end of the connection (first cause wins) and wakes every waiter.
    fn end(&self, g: &mut Shared, err: Error, state: PipeState) {
        if g.terminal.is_some() {
            return;
        }
        let from = g.state;
        g.state = state;
        g.terminal = Some(err.clone());
        g.pending_callbacks.push(StateChange {
            from,
            to: state,
            session_id: g.session_id,
            cause: Some(err),
        });
        self.callbacks_pending.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    /// Closes the connection: CLOSE with `code` and `reason` goes out behind everything queued,
    /// flushed for up to `linger`; then the socket is shut down, which wakes blocked callers.
    pub(crate) fn close(&self, code: u16, reason: &str, linger: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + linger;
        let mut g = self.lock();
        if g.local_closed {
            return Ok(());
        }
        g.local_closed = true;
        g.session.close(code, reason, Instant::now());
        while g.writing {
            let (ng, timed_out) = self.wait_cv(g, Some(deadline));
            g = ng;
            if timed_out {
                break;
            }
        }
        let mut result = Ok(());
        if !g.writing && g.terminal.is_none() {
            g.writing = true;
            match self.flush(g, Some(deadline)) {
                Ok(ng) => g = ng,
                Err(e) => {
                    result = Err(e);
                    g = self.lock();
                }
            }
        }
        let err = Error::closed(code, reason, false);
        self.end(&mut g, err, PipeState::Closed);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        drop(g);
        self.run_callbacks();
        // A transport error while flushing the goodbye is not the caller's problem unless
        // nothing else told them: report it through on_error instead of failing close.
        if let (Err(e), Some(cb)) = (&result, &self.config.on_error) {
            cb(e);
        }
        Ok(())
    }

    /// Runs state-change callbacks queued under the lock, without holding it.
    fn run_callbacks(&self) {
        if !self.callbacks_pending.load(Ordering::Acquire) {
            return;
        }
        let list = {
            let mut g = self.lock();
            if g.pending_callbacks.is_empty() {
                return;
            }
            self.callbacks_pending.store(false, Ordering::Release);
            std::mem::take(&mut g.pending_callbacks)
        };
        if let Some(cb) = &self.config.on_state_change {
            for change in list {
                cb(change);
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Last handle gone without close(): say goodbye without blocking.
        let _ = self.close(
            duct_proto::wire::control::close_code::NORMAL,
            "pipe dropped",
            Duration::ZERO,
        );
    }
}
