//! Helpers shared by the integration tests: moving frames between sessions, building frames
//! by hand, deterministic payloads, and [`Pair`], a two-session harness over in-memory byte
//! links with virtual time and a seeded RNG.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use duct_proto::wire::control::{self, Close, Hello, Reject, Welcome};
use duct_proto::wire::{FrameKind, Header, HEADER_LEN};
use duct_proto::{Config, Delivered, Error, Event, Role, Session, State};
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

/// A proptest configuration with `cases` cases that writes no regression files.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

/// `len` bytes of seeded pseudo-random content: a shifted or truncated copy never compares
/// equal to the original.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut v);
    Bytes::from(v)
}

/// Takes every queued frame out of `s`, checking that each header decodes and matches its
/// payload length.
pub fn frames(s: &mut Session) -> Vec<(Header, Bytes)> {
    let mut out = Vec::new();
    while let Some(t) = s.poll_transmit() {
        let h = Header::decode(&t.header).expect("a session writes only valid headers");
        assert_eq!(
            h.payload_len as usize,
            t.payload.len(),
            "payload_len of {h:?}"
        );
        out.push((h, t.payload));
    }
    out
}

/// Takes every queued frame out of `s` as the bytes a stream transport would carry.
pub fn wire(s: &mut Session) -> BytesMut {
    let mut out = BytesMut::new();
    while let Some(t) = s.poll_transmit() {
        out.extend_from_slice(&t.header);
        out.extend_from_slice(&t.payload);
    }
    out
}

/// The bytes of a frame with header `h` as given (its `payload_len` is not corrected).
pub fn raw_frame(h: Header, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_slice(&h.encode());
    out.put_slice(payload);
    out
}

/// The bytes of a frame with header `h` and `payload`, `payload_len` set to fit.
pub fn frame(mut h: Header, payload: &[u8]) -> BytesMut {
    h.payload_len = payload.len() as u32;
    raw_frame(h, payload)
}

/// The bytes of a control frame of `kind` carrying `payload`.
pub fn control_frame(kind: FrameKind, payload: &[u8]) -> BytesMut {
    frame(Header::new(kind), payload)
}

/// A DATA header with the given flags and aux word (payload_len is set by [`frame`]).
pub fn data_header(channel: u16, flags: u8, aux: u32) -> Header {
    let mut h = Header::data(channel, 0);
    h.flags = flags;
    h.aux = aux;
    h
}

/// The HELLO a default dialer of the current version sends.
pub fn hello() -> Hello {
    Hello {
        version: (control::VERSION_MAJOR, control::VERSION_MINOR),
        capabilities: 0,
        max_frame_payload: 64 * 1024,
        heartbeat_ms: 0,
        max_message_size: 64 * 1024 * 1024,
        last_received_seq: 0,
        instance_id: 1,
        resume_session_id: 0,
        extensions: Vec::new(),
    }
}

/// A WELCOME a listener of the current version might send.
pub fn welcome() -> Welcome {
    Welcome {
        version: (control::VERSION_MAJOR, control::VERSION_MINOR),
        capabilities: 0,
        max_frame_payload: 64 * 1024,
        heartbeat_ms: 0,
        max_message_size: 64 * 1024 * 1024,
        last_received_seq: 0,
        session_id: 5,
        resumed: false,
        extensions: Vec::new(),
    }
}

/// Feeds `bytes` to `s` through the stream path; returns what is left unconsumed with the
/// result.
pub fn feed(s: &mut Session, bytes: &[u8], now: Instant) -> (Result<(), Error>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let r = s.handle_input(&mut buf, now);
    (r, buf)
}

/// Hands every frame of `from` to `to` through the whole-frame path, stopping at an error.
pub fn pump_frames(from: &mut Session, to: &mut Session, now: Instant) -> Result<(), Error> {
    for (h, p) in frames(from) {
        to.handle_frame(h, p, now)?;
    }
    Ok(())
}

/// A dialer and a listener whose handshake is done, with their `Connected` events drained.
pub fn established(dialer: Config, listener: Config, now: Instant) -> (Session, Session) {
    let mut d = Session::new(dialer, Role::Dialer, now);
    let mut l = Session::new(listener, Role::Listener, now);
    pump_frames(&mut d, &mut l, now).expect("listener accepts the HELLO");
    pump_frames(&mut l, &mut d, now).expect("dialer accepts the WELCOME");
    assert_eq!(d.state(), State::Established);
    assert_eq!(l.state(), State::Established);
    assert!(matches!(d.poll_event(), Some(Event::Connected { .. })));
    assert!(matches!(l.poll_event(), Some(Event::Connected { .. })));
    (d, l)
}

/// A session config with a small frame payload (1024 bytes), so messages fragment a lot.
pub fn small_frames() -> Config {
    Config {
        max_frame_payload: 1024,
        ..Config::default()
    }
}

/// Every message `s` has delivered so far.
pub fn messages(s: &mut Session) -> Vec<Delivered> {
    std::iter::from_fn(|| s.poll_message()).collect()
}

/// Every event `s` has queued so far.
pub fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The single CLOSE frame `s` has queued (and nothing else), decoded.
pub fn queued_close(s: &mut Session) -> Close {
    let fs = frames(s);
    let closes: Vec<_> = fs
        .iter()
        .filter(|(h, _)| h.kind == FrameKind::Close)
        .collect();
    assert_eq!(closes.len(), 1, "expected exactly one CLOSE, got {fs:?}");
    assert_eq!(
        fs.last().map(|(h, _)| h.kind),
        Some(FrameKind::Close),
        "CLOSE comes last"
    );
    Close::decode(&closes[0].1).expect("our CLOSE decodes")
}

/// The single REJECT frame `s` has queued, decoded.
pub fn queued_reject(s: &mut Session) -> Reject {
    let fs = frames(s);
    assert_eq!(fs.len(), 1, "expected exactly one REJECT, got {fs:?}");
    assert_eq!(fs[0].0.kind, FrameKind::Reject);
    Reject::decode(&fs[0].1).expect("our REJECT decodes")
}

/// One side of a [`Pair`].
pub struct Side {
    /// The session.
    pub session: Session,
    /// Bytes this side has read off its link but not yet consumed (a partial frame).
    rx: BytesMut,
    /// Messages delivered to this side's application.
    pub inbox: Vec<Delivered>,
    /// Events this side reported.
    pub events: Vec<Event>,
    /// Errors this side's `handle_*` calls returned.
    pub errors: Vec<Error>,
}

impl Side {
    fn new(session: Session) -> Side {
        Side {
            session,
            rx: BytesMut::new(),
            inbox: Vec::new(),
            events: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn collect(&mut self) {
        self.inbox
            .extend(std::iter::from_fn(|| self.session.poll_message()));
        self.events
            .extend(std::iter::from_fn(|| self.session.poll_event()));
    }
}

/// Two sessions joined by in-memory byte links, one per direction, with virtual time.
///
/// Writes are taken from `poll_transmit` in order; reads take a chunk of seeded random size
/// off the front of the link, so frames are cut at arbitrary byte boundaries. Time moves
/// only when [`Pair::advance`] jumps it to the earliest `poll_timeout`. Everything is a pure
/// function of the seed: a failing seed replays exactly.
pub struct Pair {
    /// The seed everything random derives from; include it in assertion messages.
    pub seed: u64,
    rng: fastrand::Rng,
    /// The virtual clock.
    pub now: Instant,
    /// The dialing side.
    pub dialer: Side,
    /// The listening side.
    pub listener: Side,
    to_listener: BytesMut,
    to_dialer: BytesMut,
    /// Largest read chunk (except that a quarter of the reads take all there is).
    pub max_chunk: usize,
}

impl Pair {
    /// Two fresh sessions (the dialer's HELLO queued), nothing moved yet.
    pub fn new(seed: u64, dialer: Config, listener: Config) -> Pair {
        let now = Instant::now();
        Pair {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            now,
            dialer: Side::new(Session::new(dialer, Role::Dialer, now)),
            listener: Side::new(Session::new(listener, Role::Listener, now)),
            to_listener: BytesMut::new(),
            to_dialer: BytesMut::new(),
            max_chunk: 3000,
        }
    }

    /// Like [`Pair::new`], then runs the handshake and checks it completed.
    pub fn connected(seed: u64, dialer: Config, listener: Config) -> Pair {
        let mut p = Pair::new(seed, dialer, listener);
        p.run();
        p.assert_no_errors();
        assert_eq!(p.dialer.session.state(), State::Established, "seed {seed}");
        assert_eq!(
            p.listener.session.state(),
            State::Established,
            "seed {seed}"
        );
        p
    }

    /// Moves every queued frame of both sessions onto the links.
    pub fn flush(&mut self) {
        while let Some(t) = self.dialer.session.poll_transmit() {
            self.to_listener.extend_from_slice(&t.header);
            self.to_listener.extend_from_slice(&t.payload);
        }
        while let Some(t) = self.listener.session.poll_transmit() {
            self.to_dialer.extend_from_slice(&t.header);
            self.to_dialer.extend_from_slice(&t.payload);
        }
    }

    fn chunk_len(&mut self, available: usize) -> usize {
        if self.rng.u8(..) < 64 {
            available
        } else {
            self.rng.usize(1..=available.min(self.max_chunk))
        }
    }

    /// One read on one link (chosen at random among those with bytes). Returns false when
    /// nothing could move.
    pub fn step(&mut self) -> bool {
        self.flush();
        let to_l = !self.to_listener.is_empty();
        let to_d = !self.to_dialer.is_empty();
        let listener_reads = match (to_l, to_d) {
            (false, false) => return false,
            (true, true) => self.rng.bool(),
            (l, _) => l,
        };
        let now = self.now;
        let available = if listener_reads {
            self.to_listener.len()
        } else {
            self.to_dialer.len()
        };
        let n = self.chunk_len(available);
        let (link, side) = if listener_reads {
            (&mut self.to_listener, &mut self.listener)
        } else {
            (&mut self.to_dialer, &mut self.dialer)
        };
        side.rx.extend_from_slice(&link.split_to(n));
        if let Err(e) = side.session.handle_input(&mut side.rx, now) {
            side.errors.push(e);
        }
        side.collect();
        true
    }

    /// Steps until no bytes can move.
    pub fn run(&mut self) {
        for _ in 0..10_000_000u64 {
            if !self.step() {
                self.dialer.collect();
                self.listener.collect();
                return;
            }
        }
        panic!("seed {}: the pair did not go quiet", self.seed);
    }

    /// Jumps the clock to the earliest deadline of either session and hands it to both.
    /// Returns false if neither has a deadline.
    pub fn advance(&mut self) -> bool {
        let next = match (
            self.dialer.session.poll_timeout(),
            self.listener.session.poll_timeout(),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => return false,
            },
        };
        assert!(
            next >= self.now,
            "seed {}: a deadline in the past",
            self.seed
        );
        self.now = next;
        for side in [&mut self.dialer, &mut self.listener] {
            if let Err(e) = side.session.handle_timeout(next) {
                side.errors.push(e);
            }
            side.collect();
        }
        true
    }

    /// Flushes, then keeps only the first `keep` bytes in flight to the listener: the rest is
    /// lost (a link that dies and never comes back, without the listener noticing).
    pub fn lose_to_listener_after(&mut self, keep: usize) {
        self.flush();
        self.to_listener.truncate(keep);
    }

    /// Time elapsed on the virtual clock.
    pub fn elapsed(&self, since: Instant) -> Duration {
        self.now - since
    }

    /// The seeded RNG, for tests that draw their own workload from the seed.
    pub fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// Panics (naming the seed) if either side reported an error.
    pub fn assert_no_errors(&self) {
        assert!(
            self.dialer.errors.is_empty() && self.listener.errors.is_empty(),
            "seed {}: dialer errors {:?}, listener errors {:?}",
            self.seed,
            self.dialer.errors,
            self.listener.errors
        );
    }
}
