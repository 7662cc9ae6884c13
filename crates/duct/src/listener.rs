//! [`Listener`]: accepts pipes, and [`listen`], which creates one.
//!
//! The reactor accepts connections and runs their handshakes in the background, each one on
//! its own as its bytes arrive, so a slow or silent client never holds up the others and
//! handshakes progress even while no thread is in `accept`. Finished pipes wait in a queue for
//! `accept`. Both are bounded by [`ListenOptions::max_pending_handshakes`]:
//! - handshakes under way: a new connection at the bound pushes out the oldest handshake
//!   (reported to `on_error`), so that a flood of silent connections cannot lock real dialers
//!   out for the whole handshake timeout;
//! - finished pipes no `accept` has taken: at the bound the listener stops accepting, and the
//!   kernel's backlog holds further dialers until the application accepts again.
//!
//! Each handshake has [`ListenOptions::handshake_timeout`] to complete.
//!
//! **Resume.** Accepted pipes of dialers that reconnect are remembered by the dialer's
//! instance id (weakly: the application owns its pipes). A HELLO that asks to resume one
//! whose session is still held ([`ListenOptions::resume_window`]) re-attaches the new
//! connection to that pipe instead of making a new one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use duct_proto::lifecycle::Policy;
use duct_proto::wire::control::caps;
use duct_proto::{Role, Session};
use mio::Interest;

use crate::addr;
use crate::driver::conn::{resumable, Conn, ConnConfig};
use crate::driver::handshake::{Handshake, Progress};
use crate::driver::reactor::{self, Reactive, ReactorHandle};
use crate::driver::wakers::{WaitFor, WakerSet};
use crate::driver::{proto_error, StreamTransport};
use crate::pipe::{conn_config, session_config};
use crate::transport::{self, RawListener, ServerTls};
use crate::{Addr, Error, ErrorKind, ListenOptions, PeerInfo, Pipe, Result};

/// How long the listener pauses accepting after an accept error such as running out of file
/// descriptors, before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts pipes from dialers.
///
/// Every transport accepts with the same calls. `accept` blocks; [`Listener::accept_timeout`]
/// bounds the wait; [`Listener::close`] (from any thread) or dropping the listener stops
/// accepting and wakes blocked `accept` calls with [`ErrorKind::Closed`]. Pipes already accepted
/// are not affected by closing the listener; pipes whose handshake completed but that no
/// `accept` took yet are closed with it.
///
/// Handshakes run in duct's background reactor: a dialer completes its handshake (and may
/// start sending) before the application calls `accept`. Failed handshakes (a peer that is not
/// duct, an incompatible protocol version, a timeout) never reach `accept`; they are reported
/// to [`ListenOptions::on_error`], which runs on the reactor thread and must not block.
///
/// ```no_run
/// # fn main() -> duct::Result<()> {
/// let listener = duct::listen("tcp://127.0.0.1:0", duct::ListenOptions::default())?;
/// println!("listening on {}", listener.local_addr());
/// let pipe = listener.accept()?;
/// while let Ok(msg) = pipe.recv() {
///     pipe.send(msg)?; // echo
/// }
/// # Ok(())
/// # }
/// ```
pub struct Listener {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// TLS on every accepted connection, when the listener serves TLS.
    tls: Option<ServerTls>,
    local_addr: Addr,
    opts: ListenOptions,
    /// The channels' QoS settings, shared by every accepted pipe.
    qos: Arc<duct_proto::qos::QosConfig>,
    state: Mutex<State>,
    cv: Condvar,
    reactor: OnceLock<ReactorHandle>,
    me: Weak<Inner>,
    /// Accepted pipes a reconnecting dialer may resume, by the dialer's instance id.
    resumable: Mutex<ResumeTable>,
    /// Pipes of this listener not yet dropped (bounded by `max_pipes`).
    live_pipes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Accepted pipes by dialer instance id, held weakly; entries of dropped pipes are pruned
/// as the table grows, so it stays within twice the live pipes (plus a constant).
#[derive(Default)]
struct ResumeTable {
    pipes: HashMap<u64, Weak<Conn>>,
    /// Size at which the next prune runs.
    prune_at: usize,
}

impl ResumeTable {
    fn insert(&mut self, instance_id: u64, conn: &Arc<Conn>) {
        if self.pipes.len() >= self.prune_at {
            self.pipes.retain(|_, c| c.strong_count() > 0);
            self.prune_at = (self.pipes.len() * 2).max(64);
        }
        self.pipes.insert(instance_id, Arc::downgrade(conn));
    }

    fn get(&self, instance_id: u64) -> Option<Arc<Conn>> {
        self.pipes.get(&instance_id).and_then(Weak::upgrade)
    }
}

struct State {
    /// Pipes whose handshake completed, waiting for `accept`.
    ready: VecDeque<Pipe>,
    /// Handshakes under way, by id (oldest first). They are owned here; the reactor holds
    /// weak references.
    pending: BTreeMap<u64, Arc<PendingHandshake>>,
    next_id: u64,
    /// The listening fd is registered with the reactor.
    armed: bool,
    /// Accepting is paused until this instant (after an accept error).
    backoff_until: Option<Instant>,
    /// An accept batch stopped with connections possibly still queued: the next timer call
    /// accepts more, once the reactor has served the handshakes that batch started.
    accept_more: bool,
    /// An accept error for the next `accept` call.
    error: Option<Error>,
    closed: bool,
    /// The listening socket; `None` once closed, so that closing frees the address at once
    /// (the reactor may still hold the listener for a moment after a close).
    raw: Option<RawListener>,
    /// Pending `accept_async` calls, woken wherever the condition variable is notified.
    wakers: WakerSet,
}

/// One connection's handshake, driven by the reactor.
struct PendingHandshake {
    id: u64,
    listener: Weak<Inner>,
    hs: Mutex<Option<Handshake>>,
    reactor: OnceLock<ReactorHandle>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

/// Listens at `addr` for dialers.
///
/// `addr` is `tcp://host:port` (port 0 picks a free port: read it back from
/// [`Listener::local_addr`]), `uds:///absolute/path` (a socket file left by a dead process is
/// replaced; a live listener's is [`ErrorKind::AddressInUse`]; the file is removed when the
/// listener is dropped) or `uds://@abstract-name` (Linux); `tls://host:port` (or `tcp://` with
/// [`ListenOptions::tls`]) serves TLS; `pipe://name` (Windows) serves the named pipe
/// `\\.\pipe\name` (a name in use, by another listener or by pipes still open, is
/// [`ErrorKind::AddressInUse`]).
pub fn listen(addr: &str, opts: ListenOptions) -> Result<Listener> {
    let ep = addr::parse(addr)?;
    // TLS settings are checked and loaded (certificate, key, client CA) before binding.
    let tls = transport::server_tls(&ep, opts.tls.as_ref())?;
    let raw = RawListener::bind(&ep)?;
    raw.set_nonblocking(true)
        .map_err(|e| Error::io(e, format_args!("listen {addr}")))?;
    let local_addr = transport::shown_addr(raw.local_addr(), tls.is_some());
    #[cfg(unix)]
    if let Addr::Uds(path) = &local_addr {
        // Who may connect: the file's permission bits (the umask decided them at bind).
        // At most 0o777 (the option masks it): fits `mode_t`, 16 bits on macOS.
        let mode =
            rustix::fs::Mode::from_raw_mode(opts.socket_mode_or_default() as rustix::fs::RawMode);
        rustix::fs::chmod(path, mode).map_err(|e| {
            Error::io(
                std::io::Error::from(e),
                format_args!("listen {addr}: setting the socket file's mode"),
            )
        })?;
    }
    let inner = Arc::new_cyclic(|me| Inner {
        tls,
        local_addr,
        qos: opts.qos(),
        opts,
        state: Mutex::new(State {
            ready: VecDeque::new(),
            pending: BTreeMap::new(),
            next_id: 0,
            armed: false,
            backoff_until: None,
            accept_more: false,
            error: None,
            closed: false,
            raw: Some(raw),
            wakers: WakerSet::default(),
        }),
        cv: Condvar::new(),
        reactor: OnceLock::new(),
        me: me.clone(),
        resumable: Mutex::new(ResumeTable::default()),
        live_pipes: Arc::default(),
    });
    let weak: Weak<dyn Reactive> = Arc::downgrade(&inner) as Weak<Inner>;
    let handle = reactor::register(weak).map_err(|e| Error::io(e, "starting the duct reactor"))?;
    let _ = inner.reactor.set(handle);
    {
        let mut st = inner.lock();
        inner.arm(&mut st)?;
    }
    tracing::info!(
        name: "listening",
        target: "duct::listener",
        addr = %inner.local_addr,
        "listening"
    );
    Ok(Listener { inner })
}

impl Listener {
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Waits for the next dialer whose handshake completed.
    pub fn accept(&self) -> Result<Pipe> {
        self.inner.accept_until(None)
    }

    /// Like [`Listener::accept`], but gives up after `timeout` with [`ErrorKind::TimedOut`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Pipe> {
        self.inner.accept_until(Some(Instant::now() + timeout))
    }

    /// The bound address, with the port resolved (`tcp://127.0.0.1:41231`).
    pub fn local_addr(&self) -> Addr {
        self.inner.local_addr.clone()
    }

    /// Stops accepting. Blocked and later `accept` calls fail with [`ErrorKind::Closed`];
    /// handshakes under way are dropped, and completed pipes no `accept` took are closed.
    /// Idempotent.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn max_pending(&self) -> usize {
        self.opts.max_pending_handshakes_or_default().max(1)
    }

    /// Most connections one `accept_ready` call takes from the backlog: a fraction of
    /// `max_pending`, so that a burst is taken in several turns of the reactor and each
    /// handshake has a few turns to read its HELLO before newer connections can push it out.
    fn accept_batch(&self) -> usize {
        (self.max_pending() / 4).max(1)
    }

    /// Registers the listening fd with the reactor if it should be watched: open, not backing
    /// off, and below the bound of handshakes plus waiting pipes. Registration reports a
    /// backlog that is already there.
    fn arm(&self, st: &mut State) -> Result<()> {
        let want = !st.closed && st.backoff_until.is_none() && st.ready.len() < self.max_pending();
        if want == st.armed {
            return Ok(());
        }
        let Some(handle) = self.reactor.get() else {
            return Ok(());
        };
        let Some(raw) = &st.raw else {
            st.armed = false;
            return Ok(());
        };
        let (from, to) = if want {
            (None, Some(Interest::READABLE))
        } else {
            (Some(Interest::READABLE), None)
        };
        handle
            .set_interest(raw.readiness(), from, to)
            .map_err(|e| Error::io(e, format_args!("listen {}: reactor", self.local_addr)))?;
        st.armed = want;
        Ok(())
    }

    fn report(&self, err: &Error) {
        // A refused peer (authentication, peer credentials, mTLS) is worth a warning; other
        // failures (a scanner, a dialer that gave up) are routine.
        if err.kind() == ErrorKind::PermissionDenied {
            tracing::warn!(
                name: "handshake_failed",
                target: "duct::listener",
                listener = %self.local_addr,
                error = %err,
                error_kind = ?err.kind(),
                "handshake failed"
            );
        } else {
            tracing::debug!(
                name: "handshake_failed",
                target: "duct::listener",
                listener = %self.local_addr,
                error = %err,
                error_kind = ?err.kind(),
                "handshake failed"
            );
        }
        if let Some(cb) = &self.opts.on_error {
            cb(err);
        }
    }

    fn closed_error(&self) -> Error {
        Error::new(
            ErrorKind::Closed,
            format!("listener {} is closed", self.local_addr),
        )
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Pipe> {
        let mut st = self.lock();
        loop {
            if let Some(p) = st.ready.pop_front() {
                let _ = self.arm(&mut st); // room again below the bound
                return Ok(p);
            }
            if st.closed {
                return Err(self.closed_error());
            }
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::new(
                            ErrorKind::TimedOut,
                            format!(
                                "no dialer completed a handshake with {} before the timeout",
                                self.local_addr
                            ),
                        ));
                    }
                    self.cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// The async form of `accept`: a pipe if one is ready (or the error a blocking `accept`
    /// would return), else registers `waker` in the slot `key` and returns `None`.
    pub(crate) fn poll_accept(
        &self,
        waker: &std::task::Waker,
        key: &mut Option<usize>,
    ) -> Option<Result<Pipe>> {
        let mut st = self.lock();
        if let Some(p) = st.ready.pop_front() {
            let _ = self.arm(&mut st); // room again below the bound
            return Some(Ok(p));
        }
        if st.closed {
            return Some(Err(self.closed_error()));
        }
        if let Some(e) = st.error.take() {
            return Some(Err(e));
        }
        st.wakers.register(key, waker, WaitFor::Other, None);
        None
    }

    /// Frees an `accept_async` call's waker slot (it completed or was dropped).
    pub(crate) fn forget_waiter(&self, key: usize) {
        self.lock().wakers.remove(key);
    }

    /// Waker slots held for `accept_async` calls.
    pub(crate) fn waiter_slots(&self) -> usize {
        self.lock().wakers.slots()
    }

    fn close(&self) {
        let (pending, ready) = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            // Out of the reactor first, then closed: the address is free when this returns.
            let _ = self.arm(&mut st);
            st.raw = None;
            self.cv.notify_all();
            st.wakers.wake_all();
            (
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.ready),
            )
        };
        // Dropped outside the lock: closing a pipe may write its goodbye.
        drop(pending);
        drop(ready);
    }

    /// Accepts every connection the backlog holds, up to the bound, and starts their
    /// handshakes.
    fn accept_ready(&self) {
        // Errors are reported once the lock is released: callbacks never run under it.
        let mut reports = Vec::new();
        // Evicted handshakes close after their report (whoever sees the drop finds it there).
        let mut evicted = Vec::new();
        let mut st = self.lock();
        st.accept_more = false;
        // Handshakes this call starts get at least one turn of the reactor (their HELLO may
        // already be waiting) before a newer connection may push them out.
        let batch_start = st.next_id;
        let mut budget = self.accept_batch();
        while !st.closed && st.ready.len() < self.max_pending() {
            let at_bound = st.pending.len() + st.ready.len() >= self.max_pending();
            let oldest_is_new = st
                .pending
                .first_key_value()
                .is_some_and(|(id, _)| *id >= batch_start);
            if budget == 0 || (at_bound && oldest_is_new) {
                // The listening fd is edge-triggered: a timer brings us back for the rest,
                // after the readiness events already reported are served.
                st.accept_more = true;
                if let Some(h) = self.reactor.get() {
                    h.schedule(Instant::now());
                }
                break;
            }
            budget -= 1;
            let Some(raw) = &st.raw else { break };
            match raw.accept() {
                Ok((stream, peer)) => {
                    let peer = transport::shown_addr(peer, self.tls.is_some());
                    let stream = match transport::secure_server(stream, self.tls.as_ref()) {
                        Ok(stream) => stream,
                        Err(e) => {
                            reports.push(e);
                            continue;
                        }
                    };
                    stream.set_spin(self.opts.limits.spin);
                    let heartbeat = self.opts.heartbeat_or_default();
                    if let Err(e) = stream.set_keepalive(&heartbeat) {
                        tracing::debug!(%peer, error = %e, "could not set TCP keepalive");
                    }
                    if st.pending.len() + st.ready.len() >= self.max_pending() {
                        if let Some((err, old)) = self.evict_oldest(&mut st, &peer) {
                            reports.push(err);
                            evicted.push(old);
                        }
                    }
                    let now = Instant::now();
                    let mut config =
                        session_config(&self.opts.limits, heartbeat, self.qos.clone(), &stream);
                    config.session_id = fastrand::u64(1..);
                    config.handshake_timeout = self.opts.handshake_timeout_or_default();
                    // The listener decides on each HELLO: resume a pipe, or a fresh one.
                    config.defer_welcome = true;
                    if !self.opts.resume_window_or_default().is_zero() {
                        config.capabilities |= caps::RESUME;
                    }
                    let session = Session::new(config, Role::Listener, now);
                    let hs = Handshake::new(stream, session, peer, now);
                    let id = st.next_id;
                    st.next_id += 1;
                    let p = Arc::new(PendingHandshake {
                        id,
                        listener: self.me.clone(),
                        hs: Mutex::new(Some(hs)),
                        reactor: OnceLock::new(),
                    });
                    match p.start() {
                        Ok(()) => {
                            st.pending.insert(id, p);
                        }
                        Err(e) => reports.push(e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors or memory: tell the application (next accept,
                    // and on_error), pause, and try again later.
                    let err = Error::io(e, format_args!("accept on {}", self.local_addr));
                    reports.push(err.clone());
                    st.error = Some(err);
                    let until = Instant::now() + ACCEPT_BACKOFF;
                    st.backoff_until = Some(until);
                    if let Some(h) = self.reactor.get() {
                        h.schedule(until);
                    }
                    self.cv.notify_all();
                    st.wakers.wake_all();
                    break;
                }
            }
        }
        let _ = self.arm(&mut st);
        drop(st);
        for e in &reports {
            self.report(e);
        }
        drop(evicted);
    }

    /// Drops the oldest handshake under way to make room for the connection from `newcomer`.
    fn evict_oldest(
        &self,
        st: &mut State,
        newcomer: &Addr,
    ) -> Option<(Error, Arc<PendingHandshake>)> {
        let (_, old) = st.pending.pop_first()?;
        let who = old
            .hs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(Addr::Unknown, |h| h.peer.clone());
        let err = Error::new(
            ErrorKind::TimedOut,
            format!(
                "{}: dropped the handshake with {who} to make room for {newcomer}: more than {} \
                 handshakes pending",
                self.local_addr,
                self.max_pending()
            ),
        );
        Some((err, old))
    }

    /// A handshake ended in a resumed pipe: it leaves the pending set (no new pipe).
    fn handshake_resumed(&self, id: u64) {
        let mut st = self.lock();
        st.pending.remove(&id);
        let _ = self.arm(&mut st);
    }

    /// Answers a HELLO: re-attaches the connection to the pipe it asks to resume if that
    /// pipe still holds the session (`Ok(None)`), or welcomes it as a fresh session.
    fn decide(&self, mut hs: Handshake) -> Result<Option<Handshake>> {
        let credentials = hs.stream.peer_credentials();
        if self.opts.allow_uids.is_some() || self.opts.allow_gids.is_some() {
            let listed =
                |list: &Option<Vec<u32>>, id: u32| list.as_ref().is_some_and(|l| l.contains(&id));
            let refusal = match credentials {
                Some(c)
                    if listed(&self.opts.allow_uids, c.uid)
                        || listed(&self.opts.allow_gids, c.gid) =>
                {
                    None
                }
                Some(c) => Some(format!(
                    "peer process (pid {}, uid {}, gid {}) is not in the allowed users or groups",
                    c.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                    c.uid,
                    c.gid
                )),
                None => Some(
                    "peer credentials are required (allowed users or groups) and this transport \
                     has none"
                        .to_owned(),
                ),
            };
            if let Some(reason) = refusal {
                return Err(self.refuse(&mut hs, &reason));
            }
        }
        if let Some(authenticate) = &self.opts.authenticate {
            let token = hs.session.pending_hello().and_then(|h| {
                h.extensions
                    .iter()
                    .find(|e| e.kind == duct_proto::wire::control::EXT_TOKEN)
                    .map(|e| e.value.to_vec())
            });
            let peer = PeerInfo::new(hs.peer.clone(), token, credentials);
            if let Err(reason) = authenticate(&peer) {
                return Err(self.refuse(&mut hs, &reason));
            }
        }
        if let Some(resume_id) = hs.session.resume_requested() {
            let instance_id = hs.session.pending_hello().map_or(0, |h| h.instance_id);
            let conn = self
                .resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(instance_id);
            if let Some(conn) = conn {
                match conn.try_resume(Box::new(hs), resume_id) {
                    Ok(()) => {
                        tracing::debug!(listener = %self.local_addr, instance_id, "pipe resumed");
                        return Ok(None);
                    }
                    Err(back) => hs = *back,
                }
            }
            tracing::debug!(
                listener = %self.local_addr,
                instance_id,
                "cannot resume session {resume_id:#x}: not held (any more); a fresh session"
            );
        }
        let live = self.live_pipes.load(std::sync::atomic::Ordering::Acquire);
        let max = self.opts.max_pipes_or_default();
        if live >= max {
            return Err(self.refuse_with(
                &mut hs,
                duct_proto::wire::control::reject_code::UNAVAILABLE,
                ErrorKind::ConnectionRefused,
                &format!("the listener is at its limit of {max} pipes; try again later"),
            ));
        }
        hs.session
            .welcome(false, Instant::now())
            .map_err(|e| proto_error(e, &hs.peer))?;
        Ok(Some(hs))
    }

    /// Refuses a handshake: REJECT `PERMISSION_DENIED` with `reason` (the dialer gets
    /// PermissionDenied, not retryable) and the error this listener reports.
    fn refuse(&self, hs: &mut Handshake, reason: &str) -> Error {
        self.refuse_with(
            hs,
            duct_proto::wire::control::reject_code::PERMISSION_DENIED,
            ErrorKind::PermissionDenied,
            reason,
        )
    }

    /// Refuses a handshake with REJECT `code` and `reason`; returns the error (of `kind`)
    /// this listener reports.
    fn refuse_with(&self, hs: &mut Handshake, code: u16, kind: ErrorKind, reason: &str) -> Error {
        hs.session.refuse(code, reason);
        let _ = hs.flush_nonblocking();
        Error::new(
            kind,
            format!(
                "listener {}: refused {}: {reason}",
                self.local_addr, hs.peer
            ),
        )
    }

    /// Starts the pipe of a fresh session, remembered for resume when its dialer reconnects.
    fn start_pipe(&self, hs: Handshake) -> Result<Pipe> {
        let instance_id = hs.session.negotiated().map_or(0, |n| n.instance_id);
        let remember = resumable(&hs.session) && instance_id != 0;
        let conn = Conn::start(hs, self.conn_config(instance_id))?;
        if remember {
            self.resumable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(instance_id, &conn);
        }
        Ok(Pipe::from_conn(conn))
    }

    /// A handshake finished (`pipe`) or failed (`error`): it leaves the pending set.
    fn handshake_done(&self, id: u64, result: Result<Pipe>) {
        let mut st = self.lock();
        st.pending.remove(&id);
        match result {
            Ok(pipe) if !st.closed => {
                st.ready.push_back(pipe);
                self.cv.notify_one();
                // All of them: one that is woken and then dropped must not leave the pipe
                // waiting while another waits too.
                st.wakers.wake_all();
            }
            Ok(pipe) => {
                drop(st);
                drop(pipe);
                return;
            }
            Err(e) => {
                drop(st);
                self.report(&e);
                st = self.lock();
            }
        }
        let _ = self.arm(&mut st);
    }

    fn conn_config(&self, pipe_id: u64) -> ConnConfig {
        let mut config = conn_config(
            &self.opts.limits,
            self.opts.on_state_change.clone(),
            self.opts.on_error.clone(),
            None,
        );
        let window = self.opts.resume_window_or_default();
        config.policy = Policy {
            redial: None,
            resume_window: (!window.is_zero()).then_some(window),
        };
        config.pipe_id = pipe_id;
        config.live = Some(Arc::clone(&self.live_pipes));
        config
    }
}

impl Reactive for Inner {
    fn on_ready(&self, readable: bool, _writable: bool, _closed: bool) {
        // After a batch that stopped early, the timer takes the rest: only after the reactor
        // has served the readiness of the handshakes that batch started.
        if readable && !self.lock().accept_more {
            self.accept_ready();
        }
    }

    fn on_timer(&self, now: Instant) {
        let mut st = self.lock();
        if st.backoff_until.is_some_and(|t| t <= now) {
            st.backoff_until = None;
            drop(st);
            self.accept_ready();
        } else if st.accept_more && st.backoff_until.is_none() {
            drop(st);
            self.accept_ready();
        } else if let (Some(until), Some(h)) = (st.backoff_until, self.reactor.get()) {
            // An earlier timer fired (the reactor keeps the earliest): the pause still ends.
            h.schedule(until);
        }
    }
}

impl PendingHandshake {
    /// Hands the connection to the reactor: it watches for the HELLO and the deadline.
    fn start(self: &Arc<Self>) -> Result<()> {
        let weak: Weak<dyn Reactive> = Arc::downgrade(self) as Weak<PendingHandshake>;
        let handle =
            reactor::register(weak).map_err(|e| Error::io(e, "starting the duct reactor"))?;
        let guard = self.hs.lock().unwrap_or_else(|p| p.into_inner());
        let hs = guard.as_ref().expect("a new handshake");
        handle
            .set_interest(hs.stream.readiness(), None, Some(Interest::READABLE))
            .map_err(|e| Error::io(e, format_args!("handshake with {}", hs.peer)))?;
        if let Some(deadline) = hs.session.poll_timeout() {
            handle.schedule(deadline);
        }
        drop(guard);
        let _ = self.reactor.set(handle);
        Ok(())
    }

    /// Takes the handshake out, unregistering its fd (the pipe registers it afresh).
    fn take(&self, slot: &mut Option<Handshake>) -> Option<Handshake> {
        let hs = slot.take()?;
        if let Some(h) = self.reactor.get() {
            let _ = h.set_interest(hs.stream.readiness(), Some(Interest::READABLE), None);
        }
        Some(hs)
    }

    fn finish(&self, result: Result<Pipe>) {
        if let Some(l) = self.listener.upgrade() {
            l.handshake_done(self.id, result);
        }
    }
}

impl Reactive for PendingHandshake {
    fn on_ready(&self, readable: bool, _writable: bool, _closed: bool) {
        if !readable {
            return;
        }
        let mut slot = self.hs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(hs) = slot.as_mut() else { return };
        // Edge-triggered: read until the socket is empty or the handshake is decided.
        let outcome = loop {
            match hs.on_readable() {
                Ok(Progress::Done | Progress::Hello) => break Some(Ok(())),
                Ok(Progress::Drained) => break None,
                Ok(Progress::Pending) => continue,
                Err(e) => break Some(Err(e)),
            }
        };
        let Some(outcome) = outcome else { return };
        let hs = self.take(&mut slot);
        drop(slot);
        let Some(hs) = hs else { return };
        let Some(listener) = self.listener.upgrade() else {
            return;
        };
        match outcome {
            Ok(()) => {
                let result = match listener.decide(hs) {
                    Ok(Some(hs)) => listener.start_pipe(hs),
                    Ok(None) => {
                        listener.handshake_resumed(self.id);
                        return;
                    }
                    Err(e) => Err(e),
                };
                drop(listener);
                self.finish(result);
            }
            Err(e) => {
                // Report first, then close: whoever sees the connection drop can count on the
                // report being there.
                drop(listener);
                self.finish(Err(e));
                drop(hs);
            }
        }
    }

    fn on_timer(&self, now: Instant) {
        let mut slot = self.hs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(hs) = slot.as_mut() else { return };
        if let Err(e) = hs.check_timeout(now) {
            let hs = self.take(&mut slot);
            drop(slot);
            self.finish(Err(e)); // reported before the connection closes
            drop(hs);
        } else if let (Some(at), Some(h)) = (hs.session.poll_timeout(), self.reactor.get()) {
            // Not yet: the reactor's one timer for us fired early (it is at our next deadline
            // only while we ask).
            h.schedule(at);
        }
    }
}
