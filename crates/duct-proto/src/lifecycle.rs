//! A pipe's life across connections: the state machine above [`crate::Session`].
//!
//! A session lives and dies with one connection; a pipe may outlive several. [`Lifecycle`]
//! decides what a pipe does when its connection ends: dial again with backoff (a dialer with
//! a [`Backoff`]), keep the session for a reconnecting dialer (a listener with a resume
//! window, when RESUME was agreed), or end. Like the session it does no I/O and reads no
//! clock or RNG: the driver passes `now` and a uniform random draw in, and carries out the
//! [`Next`] step it gets back (schedule an attempt, schedule the end of the window).
//!
//! ```text
//!                connected                     broke (redial or resumable)
//!  Connecting ─────────────▶ Connected ────────────────────────────────▶ Reconnecting
//!       │                     │  ▲  │ peer_closed (redial)                   │  │
//!       │                     │  │  └──────────────────────────────────────▶ │  │
//!       │                     │  └──────────────── connected ──────────────┘  │
//!       │                     │ broke (no redial,                             │ expired (window)
//!       │                     │  not resumable)                               ▼
//!       │                     └──────────────────────────────────────────▶ Disconnected
//!       │ close / fail / peer_closed / attempts exhausted
//!       └──────────────── (from any phase that is not final) ─────────────▶ Closed
//! ```
//!
//! `Disconnected` and `Closed` are final: nothing leaves them.

use std::time::{Duration, Instant};

/// Where a pipe is in its life (the `duct` crate's `PipeState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The first connection and its handshake are under way.
    Connecting,
    /// A connection is up.
    Connected,
    /// The connection broke and the pipe ended with it (final).
    Disconnected,
    /// Between connections: a dialer retrying, or a listener holding the session for its
    /// dialer's return.
    Reconnecting,
    /// Closed by either side or by a failure (final).
    Closed,
}

impl Phase {
    /// Whether nothing can follow this phase.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Disconnected | Phase::Closed)
    }
}

/// Exponential backoff with jitter between reconnect attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait before the first attempt.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// The random part of each wait: each wait is drawn from `[d × (1 − jitter), d]`.
    /// Clamped to `0.0..=1.0`; NaN counts as 0.
    pub jitter: f64,
    /// Failed attempts in a row after which the pipe gives up (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// The wait before attempt number `attempt` (0 for the first): `initial × 2^attempt`,
    /// capped at `max`, less the jitter's share of `random` (a uniform draw from `0.0..1.0`).
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        let delay = self
            .initial
            .saturating_mul(factor)
            .min(self.max.max(self.initial));
        let clamp = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        let cut = clamp(self.jitter) * clamp(random);
        // Not `mul_f64`: it panics when rounding takes a huge delay past `Duration::MAX`.
        Duration::try_from_secs_f64(delay.as_secs_f64() * (1.0 - cut))
            .map_or(delay, |jittered| jittered.min(delay))
    }
}

/// What a pipe does when its connection breaks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Policy {
    /// Dial again with this backoff (dialers that asked for it).
    pub redial: Option<Backoff>,
    /// Keep a session on which RESUME was agreed for this long, for the dialer to come
    /// back (listeners).
    pub resume_window: Option<Duration>,
}

/// One change of phase, for the application's callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
    /// The session id after the change (0 before the first connection).
    pub session_id: u64,
}

/// What the driver must arrange after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing.
    Nothing,
    /// Make a reconnect attempt at this instant, then report its outcome with
    /// [`Lifecycle::connected`] or [`Lifecycle::attempt_failed`].
    AttemptAt(Instant),
    /// Call [`Lifecycle::expired`] at this instant unless the dialer came back.
    ExpireAt(Instant),
}

/// An event that does not apply in the current phase (a bug in the driver, or a race it
/// lost and must ignore).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// The phase the event found.
    pub phase: Phase,
}

/// The state machine of one pipe. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Lifecycle {
    policy: Policy,
    phase: Phase,
    session_id: u64,
    /// Failed attempts in a row since the break.
    attempts: u32,
    /// End of the resume window, while a listener holds the session.
    resume_deadline: Option<Instant>,
}

impl Lifecycle {
    /// A pipe that is connecting, with `policy` for breaks.
    pub fn new(policy: Policy) -> Lifecycle {
        Lifecycle {
            policy,
            phase: Phase::Connecting,
            session_id: 0,
            attempts: 0,
            resume_deadline: None,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The id of the current (or last) session; 0 before the first connection.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Failed reconnect attempts since the connection broke.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the resume window ends, while a listener holds the session.
    pub fn resume_deadline(&self) -> Option<Instant> {
        self.resume_deadline
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn go(&mut self, to: Phase) -> Change {
        let from = std::mem::replace(&mut self.phase, to);
        Change {
            from,
            to,
            session_id: self.session_id,
        }
    }

    /// A connection's handshake completed with `session_id`: from `Connecting` (the first)
    /// or `Reconnecting` (a reconnect, or a resume on a listener).
    pub fn connected(&mut self, session_id: u64) -> Result<Change, Ignored> {
        match self.phase {
            Phase::Connecting | Phase::Reconnecting => {
                self.session_id = session_id;
                self.attempts = 0;
                self.resume_deadline = None;
                Ok(self.go(Phase::Connected))
            }
            phase => Err(Ignored { phase }),
        }
    }

    /// The connection broke without a CLOSE (EOF, reset, heartbeat loss, a new connection
    /// of the same dialer taking over). `resumable`: RESUME was agreed on the session.
    /// `random` is a uniform draw from `0.0..1.0` for the jitter.
    pub fn broke(
        &mut self,
        now: Instant,
        resumable: bool,
        random: f64,
    ) -> Result<(Change, Next), Ignored> {
        if self.phase != Phase::Connected {
            return Err(Ignored { phase: self.phase });
        }
        if let Some(backoff) = self.policy.redial {
            self.attempts = 0;
            let at = now + backoff.delay(0, random);
            return Ok((self.go(Phase::Reconnecting), Next::AttemptAt(at)));
        }
        match self.policy.resume_window {
            Some(window) if resumable && !window.is_zero() => {
                let at = now + window;
                self.resume_deadline = Some(at);
                Ok((self.go(Phase::Reconnecting), Next::ExpireAt(at)))
            }
            _ => Ok((self.go(Phase::Disconnected), Next::Nothing)),
        }
    }

    /// The peer closed the session with CLOSE. A dialer that redials connects again (a
    /// server restarting closes its connections first); otherwise the pipe is closed.
    pub fn peer_closed(&mut self, now: Instant, random: f64) -> Result<(Change, Next), Ignored> {
        if self.phase != Phase::Connected {
            return Err(Ignored { phase: self.phase });
        }
        match self.policy.redial {
            Some(backoff) => {
                self.attempts = 0;
                let at = now + backoff.delay(0, random);
                Ok((self.go(Phase::Reconnecting), Next::AttemptAt(at)))
            }
            None => Ok((self.go(Phase::Closed), Next::Nothing)),
        }
    }

    /// A reconnect attempt failed: the next one is due at the returned instant, or, when
    /// the attempts are used up, the pipe is closed (`Err` with the change).
    pub fn attempt_failed(
        &mut self,
        now: Instant,
        random: f64,
    ) -> Result<Result<Instant, Change>, Ignored> {
        let Some(backoff) = self
            .policy
            .redial
            .filter(|_| self.phase == Phase::Reconnecting)
        else {
            return Err(Ignored { phase: self.phase });
        };
        self.attempts = self.attempts.saturating_add(1);
        if backoff.max_attempts.is_some_and(|m| self.attempts >= m) {
            return Ok(Err(self.go(Phase::Closed)));
        }
        Ok(Ok(now + backoff.delay(self.attempts, random)))
    }

    /// The resume window may have passed: if it has (at `now`) and the dialer did not come
    /// back, the session ends (`Disconnected`). Early or stale calls are ignored.
    pub fn expired(&mut self, now: Instant) -> Result<Change, Ignored> {
        match self.resume_deadline {
            Some(d) if self.phase == Phase::Reconnecting && now >= d => {
                self.resume_deadline = None;
                Ok(self.go(Phase::Disconnected))
            }
            _ => Err(Ignored { phase: self.phase }),
        }
    }

    /// The application closed the pipe, or it failed beyond repair (a protocol error): from
    /// any phase that is not final to `Closed`.
    pub fn close(&mut self) -> Result<Change, Ignored> {
        if self.phase.is_final() {
            return Err(Ignored { phase: self.phase });
        }
        self.resume_deadline = None;
        Ok(self.go(Phase::Closed))
    }
}
