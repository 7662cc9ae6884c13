//! The bodies of the fuzz targets, as plain functions: libFuzzer calls them from
//! `fuzz_targets/*.rs` (nightly), and `crates/duct-proto/tests/fuzz_corpus.rs` replays every
//! file of `fuzz/corpus/<target>/` through them on stable, so the corpus is a regression suite.
//!
//! No input may make them panic. The assertions inside are the oracles: decoders agree with
//! encoders, a session that fails is closed, reassembly stays under its cap, and every frame a
//! session queues is itself well-formed. The `session` target (two sessions driven by
//! structured operations) is in [`session`], with its own oracles.
#![allow(dead_code)]

pub mod session;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::wire::control::{self, Close, Hello, Reject, Welcome, MAX_REASON_LEN};
use duct_proto::wire::{Deframer, FrameKind, Header, WireError, HANDSHAKE_MAX_PAYLOAD, HEADER_LEN};
use duct_proto::{Config, Event, Role, Session, State};

/// Target `frame_decoder`: arbitrary bytes into the header decoder, every control decoder and
/// the deframer (whole and byte by byte, at three payload caps).
pub fn frame_decoder(data: &[u8]) {
    if let Ok(h) = Header::decode(data) {
        assert_eq!(
            h.encode()[..],
            data[..HEADER_LEN],
            "header re-encodes to its input"
        );
    }
    check_control_decoders(data);
    for max in [HANDSHAKE_MAX_PAYLOAD, 1024, 64 * 1024] {
        let whole = deframe_whole(data, max);
        if max == 1024 {
            assert_eq!(
                deframe_bytewise(data, max),
                whole,
                "deframing depends on the split"
            );
        }
    }
}

/// Frames (and the final error, if any) the deframer cuts from `data` handed over at once.
fn deframe_whole(data: &[u8], max: u32) -> (Vec<(Header, Bytes)>, Option<WireError>) {
    let deframer = Deframer::new(max);
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    let mut consumed = 0;
    loop {
        let before = buf.len();
        let needed = deframer.needed(&buf);
        assert!((HEADER_LEN..=HEADER_LEN + max as usize).contains(&needed));
        match deframer.decode(&mut buf) {
            Ok(Some((h, payload))) => {
                assert!(h.payload_len <= max);
                assert_eq!(payload.len(), h.payload_len as usize);
                assert_eq!(before - buf.len(), HEADER_LEN + payload.len());
                assert_eq!(needed, HEADER_LEN + payload.len());
                assert_eq!(h.encode()[..], data[consumed..consumed + HEADER_LEN]);
                assert_eq!(payload[..], data[consumed + HEADER_LEN..][..payload.len()]);
                consumed += HEADER_LEN + payload.len();
                check_control_decoders(&payload);
                out.push((h, payload));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "nothing consumed while waiting");
                assert!(before < needed, "waits only for bytes it needs");
                return (out, None);
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "an error consumes nothing");
                match &e {
                    WireError::UnknownKind(k) => assert_eq!(*k, buf[0]),
                    WireError::FrameTooLarge { len, max: m } => {
                        assert!(*len > max && *m == max)
                    }
                    other => panic!("the deframer returned {other:?}"),
                }
                return (out, Some(e));
            }
        }
    }
}

/// The same, with `data` arriving one byte at a time.
fn deframe_bytewise(data: &[u8], max: u32) -> (Vec<(Header, Bytes)>, Option<WireError>) {
    let deframer = Deframer::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match deframer.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// Runs every control decoder over `payload`; whatever decodes must re-encode to something
/// that decodes to the same value (and, for the canonical layouts, to the same bytes).
pub fn check_control_decoders(payload: &[u8]) {
    if let Ok(v) = control::decode_preamble(payload) {
        assert_eq!(&payload[..4], b"DUCT");
        assert_eq!(v, (payload[4], payload[5]));
    }
    if let Ok(h) = Hello::decode(payload) {
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }
    if let Ok(w) = Welcome::decode(payload) {
        assert_eq!(Welcome::decode(&w.encode()), Ok(w));
    }
    if let Ok(r) = Reject::decode(payload) {
        assert!(r.reason.len() <= MAX_REASON_LEN);
        assert_eq!(r.encode()[..], *payload);
    }
    if let Ok(c) = Close::decode(payload) {
        assert!(c.reason.len() <= MAX_REASON_LEN);
        assert_eq!(c.encode()[..], *payload);
    }
    if let Ok(token) = control::decode_ping(payload) {
        assert_eq!(control::encode_ping(token)[..], *payload);
    }
    if let Ok(ranges) = control::decode_sack(payload) {
        let encoded: Vec<u8> = ranges
            .iter()
            .flat_map(|(a, b)| a.to_be_bytes().into_iter().chain(b.to_be_bytes()))
            .collect();
        assert_eq!(encoded[..], *payload);
    }
}

/// The configuration of every fuzzed session: small limits, so inputs of a few KiB reach them.
pub fn fuzz_config() -> Config {
    Config {
        max_frame_payload: 1024,
        max_message_size: 8 * 1024,
        reassembly_limit: 12 * 1024,
        reassembly_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(5),
        heartbeat_interval: Some(Duration::from_secs(1)),
        instance_id: 9,
        session_id: 7,
        ..Config::default()
    }
}

/// How the `handshake` target feeds its input, chosen by the input's first byte.
#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    /// A fresh listener; bytes through `handle_input`.
    FreshListener,
    /// A dialer whose HELLO went out; bytes through `handle_input`.
    DialerAfterHello,
    /// An established listener; bytes through `handle_input`.
    EstablishedListener,
    /// An established dialer; bytes through `handle_input`.
    EstablishedDialer,
    /// An established listener; the bytes cut into (header, payload) pairs for `handle_frame`.
    EstablishedListenerFrames,
    /// A fresh listener; (header, payload) pairs for `handle_frame`.
    FreshListenerFrames,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::FreshListener,
    Scenario::DialerAfterHello,
    Scenario::EstablishedListener,
    Scenario::EstablishedDialer,
    Scenario::EstablishedListenerFrames,
    Scenario::FreshListenerFrames,
];

/// The input layout of the `handshake` target: `[mode, chunking, tick, bytes...]`.
///
/// - `(mode & 0x3f) % 6` picks the [`Scenario`]; `mode & 0x80` makes an established session close
///   itself (queue CLOSE) before the bytes arrive; `mode & 0x40` lowers the session's
///   `max_message_size` to 600 bytes, below its frame payload cap.
/// - `chunking`: 0 hands the bytes over at once; otherwise reads are 1..=2*chunking bytes
///   long, sizes from a small generator seeded with it.
/// - `tick`: after every read the clock moves `tick * 50` ms and due deadlines fire.
pub fn handshake_input(mode: u8, chunking: u8, tick: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode, chunking, tick];
    v.extend_from_slice(bytes);
    v
}

/// Target `handshake`: arbitrary bytes into a session (see [`handshake_input`] for the layout).
pub fn handshake(data: &[u8]) {
    let [mode, chunking, tick, input @ ..] = data else {
        return;
    };
    let scenario = SCENARIOS[(mode & 0x3f) as usize % SCENARIOS.len()];
    let close_first = mode & 0x80 != 0;
    let small_messages = mode & 0x40 != 0;
    let start = Instant::now();
    let mut now = start;
    let step = Duration::from_millis(u64::from(*tick) * 50);
    let mut config = fuzz_config();
    if small_messages {
        config.max_message_size = 600;
    }
    let limit = config.reassembly_limit;
    let max_message = config.max_message_size as usize;

    let mut s = match scenario {
        Scenario::FreshListener | Scenario::FreshListenerFrames => {
            Session::new(config, Role::Listener, now)
        }
        Scenario::DialerAfterHello => {
            let mut d = Session::new(config, Role::Dialer, now);
            while d.poll_transmit().is_some() {}
            d
        }
        Scenario::EstablishedListener | Scenario::EstablishedListenerFrames => {
            connected(config, Role::Listener, now)
        }
        Scenario::EstablishedDialer => connected(config, Role::Dialer, now),
    };
    let mut watch = Watch::default();
    if close_first {
        s.close(5000, "fuzz", now);
        watch.drain(&mut s, max_message);
    }

    let by_frames = matches!(
        scenario,
        Scenario::EstablishedListenerFrames | Scenario::FreshListenerFrames
    );
    if by_frames {
        let mut rest = input;
        while rest.len() >= HEADER_LEN {
            let Ok(h) = Header::decode(rest) else { break };
            let n = (h.payload_len as usize).min(rest.len() - HEADER_LEN);
            let payload = Bytes::copy_from_slice(&rest[HEADER_LEN..HEADER_LEN + n]);
            rest = &rest[HEADER_LEN + n..];
            let r = s.handle_frame(h, payload, now);
            watch.after_call(&mut s, r.is_err(), limit, max_message);
            now += step;
            tick_clock(&mut s, now, &mut watch, limit, max_message);
        }
    } else {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut rng = u32::from(*chunking);
        while fed < input.len() {
            let n = if *chunking == 0 {
                input.len()
            } else {
                rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                1 + (rng >> 16) as usize % (2 * *chunking as usize)
            };
            let n = n.min(input.len() - fed);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
            let r = s.handle_input(&mut buf, now);
            watch.after_call(&mut s, r.is_err(), limit, max_message);
            // A partial frame left in the buffer is less than one frame at the current cap.
            if s.state() != State::Closed {
                assert!(
                    buf.len() < s.input_needed(&buf),
                    "a whole frame was left unread"
                );
            }
            now += step;
            tick_clock(&mut s, now, &mut watch, limit, max_message);
        }
    }
    s.transport_lost(now);
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.reassembly_bytes(), 0);
}

/// A session of `role` with `config` whose handshake with a well-behaved peer is done.
fn connected(config: Config, role: Role, now: Instant) -> Session {
    let (dialer, listener) = match role {
        Role::Dialer => (config, fuzz_config()),
        Role::Listener => (fuzz_config(), config),
    };
    let mut d = Session::new(dialer, Role::Dialer, now);
    let mut l = Session::new(listener, Role::Listener, now);
    while let Some(t) = d.poll_transmit() {
        let h = Header::decode(&t.header).expect("valid HELLO header");
        l.handle_frame(h, t.payload, now).expect("HELLO accepted");
    }
    while let Some(t) = l.poll_transmit() {
        let h = Header::decode(&t.header).expect("valid WELCOME header");
        d.handle_frame(h, t.payload, now).expect("WELCOME accepted");
    }
    let mut s = if role == Role::Dialer { d } else { l };
    assert_eq!(s.state(), State::Established);
    while s.poll_event().is_some() {}
    s
}

fn tick_clock(s: &mut Session, now: Instant, watch: &mut Watch, limit: usize, max_message: usize) {
    if s.poll_timeout().is_some_and(|t| t <= now) {
        let r = s.handle_timeout(now);
        watch.after_call(s, r.is_err(), limit, max_message);
    }
}

/// What the oracles remember between calls.
#[derive(Default)]
struct Watch {
    /// A CLOSE or REJECT has been queued: nothing may follow it.
    final_frame_sent: bool,
    connected: bool,
}

impl Watch {
    fn after_call(&mut self, s: &mut Session, failed: bool, limit: usize, max_message: usize) {
        if failed {
            assert_eq!(s.state(), State::Closed, "a failed session is closed");
        }
        assert!(s.reassembly_bytes() <= limit, "reassembly over its cap");
        if s.state() == State::Closed {
            assert_eq!(s.reassembly_bytes(), 0);
            assert_eq!(s.poll_timeout(), None);
        }
        self.drain(s, max_message);
    }

    fn drain(&mut self, s: &mut Session, max_message: usize) {
        while let Some(t) = s.poll_transmit() {
            assert!(
                !self.final_frame_sent,
                "a frame queued after CLOSE or REJECT"
            );
            let h = Header::decode(&t.header).expect("queued header decodes");
            assert_eq!(h.payload_len as usize, t.payload.len());
            match h.kind {
                FrameKind::Close => {
                    Close::decode(&t.payload).expect("queued CLOSE decodes");
                    self.final_frame_sent = true;
                }
                FrameKind::Reject => {
                    Reject::decode(&t.payload).expect("queued REJECT decodes");
                    self.final_frame_sent = true;
                }
                FrameKind::Welcome => {
                    Welcome::decode(&t.payload).expect("queued WELCOME decodes");
                }
                FrameKind::Pong | FrameKind::Ping => {
                    control::decode_ping(&t.payload).expect("queued PING/PONG decodes");
                }
                FrameKind::Hello => {
                    Hello::decode(&t.payload).expect("queued HELLO decodes");
                }
                FrameKind::Data | FrameKind::Ack => {}
            }
        }
        while let Some(m) = s.poll_message() {
            assert!(
                m.payload.len() <= max_message,
                "delivered a message over the limit"
            );
        }
        while let Some(e) = s.poll_event() {
            match e {
                Event::Connected { session_id } => {
                    assert!(!self.connected, "connected twice");
                    assert_ne!(session_id, 0);
                    self.connected = true;
                }
                Event::PeerClosed(c) => {
                    assert!(c.reason.len() <= MAX_REASON_LEN);
                    assert_eq!(s.state(), State::Closed);
                }
                Event::Pong { .. } => {}
            }
        }
    }
}

/// Inputs worth starting from: valid frames and sequences for every scenario. Written to
/// `fuzz/corpus/` by the ignored test `write_seed_corpus`, and replayed by the test suite.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let hello = frame(FrameKind::Hello, 0, 0, 0, &hello_payload((1, 0)));
    let welcome = frame(FrameKind::Welcome, 0, 0, 0, &welcome_payload());
    let reject = frame(
        FrameKind::Reject,
        0,
        0,
        0,
        &Reject {
            version: (1, 0),
            code: 1,
            reason: "no".into(),
        }
        .encode(),
    );
    let close = frame(
        FrameKind::Close,
        0,
        0,
        0,
        &Close {
            code: 5000,
            reason: "bye".into(),
        }
        .encode(),
    );
    let ping = frame(FrameKind::Ping, 0, 0, 0, &control::encode_ping(42));
    let pong = frame(FrameKind::Pong, 0, 0, 0, &control::encode_ping(42));
    let ack = frame(FrameKind::Ack, 0, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 5]);
    let data = frame(FrameKind::Data, 0, 3, 0, b"hi");
    let more = 0x04;
    let cont = 0x08;
    let mut fragmented = frame(FrameKind::Data, more, 1, 2500, &[1; 1024]);
    fragmented.extend(frame(FrameKind::Data, more | cont, 1, 0, &[2; 1024]));
    fragmented.extend(frame(FrameKind::Data, cont, 1, 0, &[3; 452]));
    let mut interleaved = frame(FrameKind::Data, more, 1, 1500, &[1; 1000]);
    interleaved.extend(frame(FrameKind::Data, more, 2, 1100, &[2; 1000]));
    interleaved.extend(frame(FrameKind::Data, 0, 3, 0, b"x"));
    interleaved.extend(frame(FrameKind::Data, cont, 2, 0, &[2; 100]));
    interleaved.extend(frame(FrameKind::Data, cont, 1, 0, &[1; 500]));
    let established_mix: Vec<u8> = [&data, &ping, &pong, &ack, &fragmented, &interleaved, &close]
        .iter()
        .flat_map(|f| f.iter().copied())
        .collect();

    for (name, f) in [
        ("hello", &hello),
        ("welcome", &welcome),
        ("reject", &reject),
        ("close", &close),
        ("ping", &ping),
        ("ack", &ack),
        ("data", &data),
        ("fragmented", &fragmented),
        ("mix", &established_mix),
    ] {
        out.push(("frame_decoder", format!("seed-{name}"), f.clone()));
    }

    let mut hello_then = hello.clone();
    hello_then.extend_from_slice(&established_mix);
    let mut welcome_then = welcome.clone();
    welcome_then.extend_from_slice(&established_mix);
    let v2_hello = frame(FrameKind::Hello, 0, 0, 0, &hello_payload((2, 0)));
    let hs = [
        ("listener-hello", 0, 0, 0, hello.clone()),
        ("listener-hello-chunked", 0, 7, 1, hello_then.clone()),
        ("listener-v2-hello", 0, 0, 0, v2_hello),
        ("dialer-welcome", 1, 0, 0, welcome_then),
        ("dialer-reject", 1, 3, 0, reject),
        ("established-listener", 2, 0, 0, established_mix.clone()),
        ("established-listener-slow", 2, 50, 10, fragmented.clone()),
        ("established-dialer", 3, 9, 0, established_mix.clone()),
        (
            "established-listener-frames",
            4,
            0,
            0,
            established_mix.clone(),
        ),
        ("fresh-listener-frames", 5, 0, 0, hello_then),
        ("closing-listener-ping", 0x82, 0, 0, ping),
        ("closing-dialer-mix", 0x83, 5, 0, established_mix.clone()),
        ("small-messages-listener", 0x42, 0, 0, established_mix),
    ];
    for (name, mode, chunking, tick, bytes) in hs {
        out.push((
            "handshake",
            format!("seed-{name}"),
            handshake_input(mode, chunking, tick, &bytes),
        ));
    }
    out
}

fn frame(kind: FrameKind, flags: u8, channel: u16, aux: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        kind,
        flags,
        channel,
        payload_len: payload.len() as u32,
        seq: 0,
        ack: 0,
        ttl_ms: 0,
        aux,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

fn hello_payload(version: (u8, u8)) -> Bytes {
    Hello {
        version,
        capabilities: 0,
        max_frame_payload: 1024,
        heartbeat_ms: 500,
        max_message_size: 8192,
        last_received_seq: 0,
        instance_id: 1,
        resume_session_id: 0,
        extensions: vec![control::Extension {
            kind: 0x7777,
            value: Bytes::from_static(b"x"),
        }],
    }
    .encode()
}

fn welcome_payload() -> Bytes {
    Welcome {
        version: (1, 0),
        capabilities: 0,
        max_frame_payload: 1024,
        heartbeat_ms: 500,
        max_message_size: 8192,
        last_received_seq: 0,
        session_id: 3,
        resumed: false,
        extensions: Vec::new(),
    }
    .encode()
}
