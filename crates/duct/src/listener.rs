//! [`Listener`]: accepts pipes, and [`listen`], which creates one.
//!
//! Handshakes are multiplexed: `accept` polls the listening socket and every connection whose
//! handshake is under way, so a slow or silent client never holds up the others. Pending
//! handshakes are bounded in number ([`ListenOptions::max_pending_handshakes`]) and in time
//! ([`ListenOptions::handshake_timeout`]).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use duct_proto::{Role, Session};
use rustix::event::{PollFd, PollFlags};

use crate::addr;
use crate::driver::conn::{Conn, ConnConfig};
use crate::driver::handshake::{Handshake, Progress};
use crate::driver::io::timespec_until;
use crate::pipe::{
    session_config, RECV_QUEUE_BYTES, RECV_QUEUE_MSGS, SEND_QUEUE_BYTES, SEND_QUEUE_FRAMES,
};
use crate::transport::{self, RawListener};
use crate::{Addr, Error, ErrorKind, ListenOptions, Pipe, Result};

/// Accepts pipes from dialers.
///
/// Every transport accepts with the same calls. `accept` blocks; [`Listener::accept_timeout`]
/// bounds the wait; [`Listener::close`] (from any thread) or dropping the listener stops
/// accepting and wakes blocked `accept` calls with [`ErrorKind::Closed`]. Pipes already accepted
/// are not affected by closing the listener.
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
    raw: RawListener,
    local_addr: Addr,
    opts: ListenOptions,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    closed: AtomicBool,
    state: Mutex<AcceptState>,
    cv: Condvar,
}

struct AcceptState {
    pending: Vec<Handshake>,
    accepting: bool,
    waiters: usize,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// Listens at `addr` for dialers.
///
/// `addr` is `tcp://host:port` (port 0 picks a free port: read it back from
/// [`Listener::local_addr`]), `uds:///absolute/path` (a socket file left by a dead process is
/// replaced; a live listener's is [`ErrorKind::AddressInUse`]; the file is removed when the
/// listener is dropped) or `uds://@abstract-name` (Linux).
pub fn listen(addr: &str, opts: ListenOptions) -> Result<Listener> {
    opts.check_supported()?;
    let ep = addr::parse(addr)?;
    let raw = RawListener::bind(&ep)?;
    raw.set_nonblocking(true)
        .map_err(|e| Error::io(e, format_args!("listen {addr}")))?;
    let local_addr = raw.local_addr();
    let (wake_rx, wake_tx) =
        UnixStream::pair().map_err(|e| Error::io(e, format_args!("listen {addr}: wake pipe")))?;
    wake_rx
        .set_nonblocking(true)
        .map_err(|e| Error::io(e, "listener wake pipe"))?;
    wake_tx
        .set_nonblocking(true)
        .map_err(|e| Error::io(e, "listener wake pipe"))?;
    tracing::debug!(addr = %local_addr, "listening");
    Ok(Listener {
        raw,
        local_addr,
        opts,
        wake_rx,
        wake_tx,
        closed: AtomicBool::new(false),
        state: Mutex::new(AcceptState {
            pending: Vec::new(),
            accepting: false,
            waiters: 0,
        }),
        cv: Condvar::new(),
    })
}

impl Listener {
    /// Waits for the next dialer and completes its handshake.
    pub fn accept(&self) -> Result<Pipe> {
        self.accept_until(None)
    }

    /// Like [`Listener::accept`], but gives up after `timeout` with [`ErrorKind::TimedOut`].
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Pipe> {
        self.accept_until(Some(Instant::now() + timeout))
    }

    /// The bound address, with the port resolved (`tcp://127.0.0.1:41231`).
    pub fn local_addr(&self) -> Addr {
        self.local_addr.clone()
    }

    /// Stops accepting. Blocked and later `accept` calls fail with [`ErrorKind::Closed`];
    /// handshakes under way are dropped. Idempotent.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = (&self.wake_tx).write(&[1]);
            let mut st = self.lock();
            st.pending.clear();
            self.cv.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, AcceptState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed_error(&self) -> Error {
        Error::new(
            ErrorKind::Closed,
            format!("listener {} is closed", self.local_addr),
        )
    }

    fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::TimedOut,
            format!(
                "no dialer completed a handshake with {} before the timeout",
                self.local_addr
            ),
        )
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Pipe> {
        let mut st = self.lock();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(self.closed_error());
            }
            if !st.accepting {
                break;
            }
            st.waiters += 1;
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            st.waiters -= 1;
            if deadline.is_some_and(|d| Instant::now() >= d) && st.accepting {
                return Err(self.timed_out());
            }
        }
        st.accepting = true;
        let mut pending = std::mem::take(&mut st.pending);
        drop(st);
        let result = self.accept_loop(&mut pending, deadline);
        let mut st = self.lock();
        if !self.closed.load(Ordering::SeqCst) {
            st.pending = pending;
        }
        st.accepting = false;
        if st.waiters > 0 {
            self.cv.notify_all();
        }
        result
    }

    fn report(&self, err: &Error) {
        tracing::debug!(listener = %self.local_addr, error = %err, "handshake failed");
        if let Some(cb) = &self.opts.on_error {
            cb(err);
        }
    }

    fn new_handshake(&self, stream: transport::Stream, peer: Addr, now: Instant) -> Handshake {
        let mut config = session_config(&self.opts.limits);
        config.session_id = fastrand::u64(1..);
        config.handshake_timeout = self.opts.handshake_timeout_or_default();
        Handshake::new(stream, Session::new(config, Role::Listener, now), peer, now)
    }

    fn accept_loop(&self, pending: &mut Vec<Handshake>, deadline: Option<Instant>) -> Result<Pipe> {
        let max_pending = self.opts.max_pending_handshakes_or_default().max(1);
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(self.closed_error());
            }
            let now = Instant::now();
            pending.retain_mut(|h| match h.check_timeout(now) {
                Ok(()) => true,
                Err(e) => {
                    self.report(&e);
                    false
                }
            });
            if deadline.is_some_and(|d| now >= d) {
                return Err(self.timed_out());
            }
            let next_hs = pending
                .iter()
                .filter_map(|h| h.session.poll_timeout())
                .min();
            let until = match (deadline, next_hs) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut fds = Vec::with_capacity(2 + pending.len());
            fds.push(PollFd::new(&self.raw, PollFlags::IN));
            fds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
            for h in pending.iter() {
                fds.push(PollFd::from_borrowed_fd(h.stream.as_fd(), PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, timespec_until(until).as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::io(
                        e.into(),
                        format_args!("accept on {}", self.local_addr),
                    ))
                }
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            if ready[1] {
                let mut sink = [0u8; 16];
                while matches!((&self.wake_rx).read(&mut sink), Ok(n) if n > 0) {}
                continue; // the loop head checks `closed`
            }
            // Advance handshakes that have input; return the first one done.
            let mut i = 0;
            let mut idx = 2;
            let mut done = None;
            while i < pending.len() {
                let readable = ready[idx];
                idx += 1;
                if !readable {
                    i += 1;
                    continue;
                }
                match pending[i].on_readable() {
                    Ok(Progress::Pending) => i += 1,
                    Ok(Progress::Done) => {
                        done = Some(pending.remove(i));
                        break;
                    }
                    Err(e) => {
                        self.report(&e);
                        pending.remove(i);
                    }
                }
            }
            if ready[0] {
                self.accept_new(pending, max_pending)?;
            }
            if let Some(mut hs) = done {
                if let Err(e) = hs.flush_nonblocking() {
                    self.report(&e);
                    continue;
                }
                return Ok(Pipe::from_conn(Conn::start(hs, self.conn_config())?));
            }
        }
    }

    fn accept_new(&self, pending: &mut Vec<Handshake>, max_pending: usize) -> Result<()> {
        loop {
            match self.raw.accept() {
                Ok((stream, peer)) => {
                    if pending.len() >= max_pending {
                        let old = pending.remove(0);
                        self.report(&Error::new(
                            ErrorKind::TimedOut,
                            format!(
                                "{}: dropped the handshake with {} to make room: more than \
                                 {max_pending} handshakes pending",
                                self.local_addr, old.peer
                            ),
                        ));
                    }
                    pending.push(self.new_handshake(stream, peer, Instant::now()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    return Err(Error::io(e, format_args!("accept on {}", self.local_addr)));
                }
            }
        }
    }

    fn conn_config(&self) -> ConnConfig {
        ConnConfig {
            send_queue_bytes: SEND_QUEUE_BYTES,
            send_queue_frames: SEND_QUEUE_FRAMES,
            recv_queue_msgs: RECV_QUEUE_MSGS,
            recv_queue_bytes: RECV_QUEUE_BYTES,
            send_timeout: self.opts.limits.send_timeout,
            linger: self.opts.limits.linger,
            on_state_change: None,
            on_error: self.opts.on_error.clone(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}
