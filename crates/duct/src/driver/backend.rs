//! The reactor's backends: what tells a reactor thread that registered fds became ready, and
//! which one runs (chosen once per process, when the reactor starts).
//!
//! - **epoll** (through mio; kqueue on macOS and the BSDs, IOCP on Windows): a registration
//!   is an `epoll_ctl` made by whichever thread asks, at once.
//! - **io_uring** (Linux, cargo feature `io-uring`): one ring per reactor thread, a multishot
//!   poll per registered connection; registrations go through the thread's inbox, and only
//!   the reactor thread touches its ring. Listening sockets are watched by an epoll instance
//!   that the ring polls (see `sys/uring.rs` for both reasons).
//!
//! Both give the driver the same contract (`driver/mod.rs`): one event per new readiness after
//! a call returned `WouldBlock`, and a fresh registration reports readiness already there.
//! Callers read and write inline on both, and the reactor reads, writes and runs timers only
//! while nobody calls (or, on io_uring, for callers that poll without waiting), so the backend
//! does not change the fast path. What io_uring adds: the reactor's reads and writes of one
//! pass (tcp and uds) go to a second ring of its thread and are submitted in one system call
//! (`reactor::stage_recv`, `reactor::stage_send`, `duct_sys::uring::IoRing`; off with
//! `DUCT_URING_IO=0`).
//!
//! The choice: [`set_backend`], else the environment variable `DUCT_BACKEND`
//! (`auto`, `epoll`, `uring`), else `auto`: io_uring when the kernel lets this process set up
//! a ring and supports multishot polls (Linux 5.13), else epoll, with one log line that says
//! why (`EPERM`: `kernel.io_uring_disabled` or a seccomp filter; `ENOSYS`: no io_uring).
//! Asking for `uring` where it cannot start falls back to epoll the same way, with a warning:
//! a `listen` or `dial` never fails for want of io_uring.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use mio::{Events, Poll, Registry, Token, Waker};

use super::reactor::Ready;
#[cfg(duct_uring)]
use super::sys::uring::{UringPoller, UringWaker};

/// Which mechanism the reactor threads wait on: chosen with [`set_backend`] or the
/// `DUCT_BACKEND` environment variable, reported by [`backend`].
///
/// Callers do a pipe's I/O on their own threads on either backend, so the backend changes
/// what a registration, a wake-up and the reactor's own reads cost, not the inline send and
/// receive path. Both backends give the same behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring where the kernel allows it, else epoll (the default). `DUCT_BACKEND=auto`.
    #[default]
    Auto,
    /// The system's readiness poller through mio: epoll on Linux (kqueue on macOS and the
    /// BSDs, IOCP on Windows, where it is the only backend). `DUCT_BACKEND=epoll`.
    Epoll,
    /// io_uring: a multishot poll per watched connection (Linux 5.13 or later, with the cargo
    /// feature `io-uring`, on by default; listening sockets are watched through an epoll
    /// instance the ring polls), and the reactor's reads and writes of tcp and uds pipes
    /// batched: those of one pass in one system call (see [`crate::PipeStats::ring_reads`],
    /// [`crate::PipeStats::ring_writes`]). Where it cannot start (an older kernel, io_uring disabled by
    /// `kernel.io_uring_disabled` or a seccomp filter, another system), the reactor falls back
    /// to epoll and logs a warning saying why. `DUCT_BACKEND=uring`.
    ///
    /// One difference can be seen from outside: when a process dies, the kernel closes the
    /// sockets its rings watch a few milliseconds after the process is gone (with epoll: at
    /// once), so peers see a crash that much later.
    Uring,
}

impl Backend {
    /// The backend's name, as `DUCT_BACKEND` spells it: `auto`, `epoll` or `uring`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::Uring => "uring",
        }
    }

    fn code(self) -> u8 {
        match self {
            Backend::Auto => 1,
            Backend::Epoll => 2,
            Backend::Uring => 3,
        }
    }

    fn from_code(code: u8) -> Option<Backend> {
        match code {
            1 => Some(Backend::Auto),
            2 => Some(Backend::Epoll),
            3 => Some(Backend::Uring),
            _ => None,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = crate::Error;

    /// `auto`, `epoll` or `uring` (also `io_uring`, `io-uring`), in any case.
    fn from_str(s: &str) -> crate::Result<Backend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "epoll" => Ok(Backend::Epoll),
            "uring" | "io_uring" | "io-uring" => Ok(Backend::Uring),
            other => Err(crate::Error::new(
                crate::ErrorKind::Unsupported,
                format!("unknown reactor backend {other:?}: expected auto, epoll or uring"),
            )),
        }
    }
}

/// What [`set_backend`] asked for (0: nothing).
static REQUESTED: AtomicU8 = AtomicU8::new(0);
/// What runs, once the reactor has started.
static RUNNING: OnceLock<Backend> = OnceLock::new();

/// Chooses the backend of the reactor threads (default [`Backend::Auto`], or the
/// `DUCT_BACKEND` environment variable: `auto`, `epoll` or `uring`; this call wins over it).
///
/// Must be called before the first `listen` or `dial` (and before [`set_reactor_threads`]'s
/// threads start, which is the same moment); afterwards it fails with
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), since the reactor runs already.
/// Asking for [`Backend::Uring`] where io_uring cannot start is not an error: the reactor
/// runs on epoll and logs a warning with the reason; [`backend`] tells which one runs.
///
/// [`set_reactor_threads`]: crate::set_reactor_threads
///
/// ```
/// use duct::Backend;
///
/// duct::set_backend(Backend::Epoll).expect("before the first pipe");
/// let listener = duct::listen("tcp://127.0.0.1:0", duct::ListenOptions::default())?;
/// assert_eq!(duct::backend(), Some(Backend::Epoll));
/// # drop(listener);
/// # Ok::<(), duct::Error>(())
/// ```
pub fn set_backend(backend: Backend) -> crate::Result<()> {
    if RUNNING.get().is_some() {
        return Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!(
                "set_backend({backend}): the reactor is already running; call it before the \
                 first listen or dial"
            ),
        ));
    }
    REQUESTED.store(backend.code(), Ordering::SeqCst);
    Ok(())
}

/// The backend the reactor threads run on: [`Backend::Uring`] or [`Backend::Epoll`] once the
/// first `listen` or `dial` has started them, `None` before.
///
/// ```
/// let _listener = duct::listen("tcp://127.0.0.1:0", duct::ListenOptions::default())?;
/// let running = duct::backend().expect("the reactor runs");
/// println!("duct's reactor runs on {running}"); // "uring" or "epoll"
/// # Ok::<(), duct::Error>(())
/// ```
pub fn backend() -> Option<Backend> {
    RUNNING.get().copied()
}

/// What was asked for: [`set_backend`], else `DUCT_BACKEND`, else auto.
pub(crate) fn requested() -> Backend {
    if let Some(b) = Backend::from_code(REQUESTED.load(Ordering::SeqCst)) {
        return b;
    }
    match std::env::var("DUCT_BACKEND") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "DUCT_BACKEND ignored; using auto");
            Backend::Auto
        }),
        _ => Backend::Auto,
    }
}

/// Records what runs (the reactor has started).
pub(crate) fn set_running(backend: Backend) {
    let _ = RUNNING.set(backend);
}

/// Token of the inbox waker (epoll).
const WAKER: Token = Token(usize::MAX);

/// The part of a reactor thread's backend that other threads use: to register fds (epoll)
/// and to wake the thread.
pub(crate) enum Control {
    Epoll {
        registry: Registry,
        waker: Waker,
    },
    /// io_uring: the waker, and the registry of the epoll instance the ring watches for
    /// listening sockets (see `sys/uring.rs`).
    #[cfg(duct_uring)]
    Uring {
        waker: std::sync::Arc<UringWaker>,
        listeners: Registry,
    },
}

impl Control {
    /// Makes the thread's wait return. A failure means the poller is gone; nothing more can
    /// be done for its sources.
    pub(crate) fn wake(&self) {
        let _ = match self {
            Control::Epoll { waker, .. } => waker.wake(),
            #[cfg(duct_uring)]
            Control::Uring { waker, .. } => waker.wake(),
        };
    }
}

/// Readiness events one wait reports at most, as a rule: epoll's events buffer holds this
/// many, and io_uring's completion queue as many (`sys/uring.rs`). The reactor's list of
/// ready sources starts with room for them.
pub(crate) const READY_CAPACITY: usize = 1024;

/// The part of a reactor thread's backend that the thread owns.
pub(crate) enum Poller {
    Epoll {
        poll: Poll,
        events: Events,
    },
    #[cfg(duct_uring)]
    Uring(Box<UringPoller>),
}

impl Poller {
    /// An epoll (kqueue, IOCP) poller and its control.
    pub(crate) fn epoll() -> io::Result<(Poller, Control)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let poller = Poller::Epoll {
            poll,
            events: Events::with_capacity(READY_CAPACITY),
        };
        Ok((poller, Control::Epoll { registry, waker }))
    }

    /// An io_uring poller and its control. Call it on the thread that will wait on it.
    #[cfg(duct_uring)]
    pub(crate) fn uring() -> io::Result<(Poller, Control)> {
        let (poller, waker, listeners) = UringPoller::new()?;
        let control = Control::Uring { waker, listeners };
        Ok((Poller::Uring(Box::new(poller)), control))
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Poller::Epoll { .. } => Backend::Epoll,
            #[cfg(duct_uring)]
            Poller::Uring(_) => Backend::Uring,
        }
    }

    /// Waits until a registered fd is ready, the thread is woken, or `timeout` passes
    /// (`None`: no limit), and puts what became ready into `ready` (cleared first).
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<Ready>,
    ) -> io::Result<()> {
        ready.clear();
        match self {
            Poller::Epoll { poll, events } => {
                poll.poll(events, timeout)?;
                for ev in events.iter() {
                    if ev.token() == WAKER {
                        continue;
                    }
                    ready.push(Ready::of(ev));
                }
                Ok(())
            }
            #[cfg(duct_uring)]
            Poller::Uring(p) => p.wait(timeout, ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip_and_unknown_ones_are_refused() {
        for b in [Backend::Auto, Backend::Epoll, Backend::Uring] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
            assert_eq!(Backend::from_code(b.code()), Some(b));
        }
        assert_eq!(" IO_URING ".parse::<Backend>().unwrap(), Backend::Uring);
        assert_eq!("io-uring".parse::<Backend>().unwrap(), Backend::Uring);
        let e = "kqueue".parse::<Backend>().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(e.to_string().contains("kqueue"), "{e}");
        assert_eq!(Backend::from_code(0), None);
    }
}
