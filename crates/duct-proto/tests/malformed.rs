//! Hostile and broken input: every malformed class is refused with an error (never a panic),
//! the session is closed afterwards, and where the protocol says so a CLOSE or REJECT telling
//! the peer why is queued. Also: what is *not* an error (a partial header or payload just
//! waits; unknown capability bits, extensions and reserved flag bits are ignored).

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::wire::control::{
    self, close_code, reject_code, Close, Extension, Hello, Reject, Welcome, VERSION_MAJOR,
    VERSION_MINOR,
};
use duct_proto::wire::{flags, FrameKind, Header, WireError, HANDSHAKE_MAX_PAYLOAD, HEADER_LEN};
use duct_proto::{Category, Config, Error, Event, Role, Session, State};
use proptest::prelude::*;

use common::{
    control_frame, data_header, established, feed, frame, frames, messages, queued_close,
    queued_reject, raw_frame, small_frames, Pair,
};

const MORE: u8 = flags::MORE_FRAGMENTS;
const CONT: u8 = flags::CONTINUATION;

fn fresh_listener(now: Instant) -> Session {
    Session::new(Config::default(), Role::Listener, now)
}

/// A dialer whose HELLO has been taken (as if written to the transport).
fn dialer_after_hello(now: Instant) -> Session {
    let mut d = Session::new(Config::default(), Role::Dialer, now);
    let fs = frames(&mut d);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0].0.kind, FrameKind::Hello);
    d
}

/// An established listener with `config`, its dialer dropped.
fn established_listener(config: Config, now: Instant) -> Session {
    established(Config::default(), config, now).1
}

/// Checks that `r` is an error and that the session failed cleanly: closed, nothing held in
/// reassembly, no deadline, and later input ignored.
fn failed(s: &mut Session, r: Result<(), Error>, now: Instant) -> Error {
    let e = r.expect_err("malformed input must be refused");
    assert_eq!(s.state(), State::Closed, "closed after {e}");
    assert_eq!(s.reassembly_bytes(), 0);
    assert_eq!(s.poll_timeout(), None);
    // Whatever arrives afterwards is ignored, not delivered and not an error.
    let before = s.message_len();
    let (r, _) = feed(s, &frame(Header::data(1, 0), b"late"), now);
    assert_eq!(r, Ok(()));
    assert_eq!(
        s.handle_frame(Header::data(1, 1), Bytes::from_static(b"x"), now),
        Ok(())
    );
    assert_eq!(s.handle_timeout(now + Duration::from_secs(3600)), Ok(()));
    assert_eq!(s.message_len(), before);
    e
}

/// A partial header, or a header whose payload has not all arrived, is not an error: the
/// session waits for more bytes and consumes nothing.
#[test]
fn partial_frames_wait_for_more_bytes() {
    let now = Instant::now();
    let hello = control_frame(FrameKind::Hello, &common::hello().encode());
    for cut in 0..hello.len() {
        let mut l = fresh_listener(now);
        let (r, left) = feed(&mut l, &hello[..cut], now);
        assert_eq!(r, Ok(()), "{cut} bytes of a HELLO");
        assert_eq!(left.len(), cut, "nothing consumed");
        assert_eq!(l.state(), State::Handshaking);
        // The rest completes it.
        let mut buf = left;
        buf.extend_from_slice(&hello[cut..]);
        l.handle_input(&mut buf, now).unwrap();
        assert_eq!(l.state(), State::Established);
    }

    let mut l = established_listener(Config::default(), now);
    let data = frame(Header::data(2, 0), b"payload");
    let mut buf = BytesMut::new();
    for &b in data.iter() {
        assert_eq!(l.message_len(), 0);
        buf.extend_from_slice(&[b]);
        l.handle_input(&mut buf, now).unwrap();
    }
    assert_eq!(messages(&mut l)[0].payload, &b"payload"[..]);
    assert!(buf.is_empty());
}

/// A control frame whose (complete) payload is too short for its layout is an error.
#[test]
fn truncated_control_payloads_are_errors() {
    let now = Instant::now();

    // HELLO cut short after a valid preamble: REJECT(PROTOCOL_ERROR).
    let hello = common::hello().encode();
    for cut in [6, 20, 47] {
        let mut l = fresh_listener(now);
        let (r, _) = feed(&mut l, &control_frame(FrameKind::Hello, &hello[..cut]), now);
        let e = failed(&mut l, r, now);
        assert_eq!(e, Error::Wire(WireError::Truncated));
        assert_eq!(queued_reject(&mut l).code, reject_code::PROTOCOL_ERROR);
    }
    // HELLO too short even for magic and version: not duct, dropped without a REJECT.
    for cut in [0, 3, 5] {
        let mut l = fresh_listener(now);
        let (r, _) = feed(&mut l, &control_frame(FrameKind::Hello, &hello[..cut]), now);
        assert_eq!(failed(&mut l, r, now), Error::Wire(WireError::Truncated));
        assert!(frames(&mut l).is_empty());
    }

    // WELCOME and REJECT cut short, at the dialer.
    let welcome = common::welcome().encode();
    for cut in [0, 5, 30, 47] {
        let mut d = dialer_after_hello(now);
        let (r, _) = feed(
            &mut d,
            &control_frame(FrameKind::Welcome, &welcome[..cut]),
            now,
        );
        assert_eq!(failed(&mut d, r, now).category(), Category::Protocol);
        assert!(frames(&mut d).is_empty());
    }
    let reject = Reject {
        version: (1, 0),
        code: 4,
        reason: "busy".into(),
    }
    .encode();
    for cut in [0, 5, 7] {
        let mut d = dialer_after_hello(now);
        let (r, _) = feed(
            &mut d,
            &control_frame(FrameKind::Reject, &reject[..cut]),
            now,
        );
        assert_eq!(failed(&mut d, r, now), Error::Wire(WireError::Truncated));
    }

    // CLOSE, PING, PONG, ACK with short or wrong-sized payloads, once established:
    // CLOSE(PROTOCOL_ERROR) goes back.
    let cases: [(FrameKind, &[u8]); 6] = [
        (FrameKind::Close, b""),
        (FrameKind::Close, b"\x00"),
        (FrameKind::Ping, b"1234567"),
        (FrameKind::Pong, b"123456789"),
        (FrameKind::Ping, b""),
        (FrameKind::Ack, b"1234567"),
    ];
    for (kind, payload) in cases {
        let mut l = established_listener(Config::default(), now);
        let (r, _) = feed(&mut l, &control_frame(kind, payload), now);
        let e = failed(&mut l, r, now);
        assert!(
            matches!(
                e,
                Error::Wire(WireError::Truncated | WireError::Malformed(_))
            ),
            "{e:?}"
        );
        assert_eq!(
            queued_close(&mut l).code,
            close_code::PROTOCOL_ERROR,
            "{kind:?}"
        );
    }
}

/// The frame payload cap: 4096 bytes before the handshake, the receiver's own
/// `max_frame_payload` after it. The header alone is enough to refuse.
#[test]
fn payload_length_beyond_the_cap_is_refused_at_the_header() {
    let now = Instant::now();
    let mut over = Header::new(FrameKind::Hello);
    over.payload_len = HANDSHAKE_MAX_PAYLOAD + 1;

    let mut l = fresh_listener(now);
    assert_eq!(l.max_input_payload(), HANDSHAKE_MAX_PAYLOAD);
    let (r, _) = feed(&mut l, &over.encode(), now);
    let e = failed(&mut l, r, now);
    assert_eq!(
        e,
        Error::Wire(WireError::FrameTooLarge {
            len: 4097,
            max: 4096
        })
    );
    assert!(
        frames(&mut l).is_empty(),
        "nothing is sent to a peer that is not speaking duct"
    );

    let mut d = dialer_after_hello(now);
    over.kind = FrameKind::Welcome;
    let (r, _) = feed(&mut d, &over.encode(), now);
    assert_eq!(
        failed(&mut d, r, now),
        Error::Wire(WireError::FrameTooLarge {
            len: 4097,
            max: 4096
        })
    );

    // Exactly 4096 waits for the payload.
    let mut l = fresh_listener(now);
    let mut at = Header::new(FrameKind::Hello);
    at.payload_len = HANDSHAKE_MAX_PAYLOAD;
    let (r, left) = feed(&mut l, &at.encode(), now);
    assert_eq!(
        (r, left.len(), l.state()),
        (Ok(()), HEADER_LEN, State::Handshaking)
    );

    // After the handshake: the listener's own limit (2048 here), whatever the dialer's.
    let mut l = established_listener(
        Config {
            max_frame_payload: 2048,
            ..Config::default()
        },
        now,
    );
    assert_eq!(l.max_input_payload(), 2048);
    let (r, left) = feed(&mut l, &Header::data(1, 2048).encode(), now);
    assert_eq!(
        (r, left.len()),
        (Ok(()), HEADER_LEN),
        "2048 is allowed: waits"
    );
    let (r, _) = feed(&mut l, &Header::data(1, 2049).encode(), now);
    let e = failed(&mut l, r, now);
    assert_eq!(
        e,
        Error::Wire(WireError::FrameTooLarge {
            len: 2049,
            max: 2048
        })
    );
    assert_eq!(queued_close(&mut l).code, close_code::PROTOCOL_ERROR);

    // Whole frames (the shm path) are held to the same cap, and their header must match the
    // payload they come with.
    let mut l = established_listener(
        Config {
            max_frame_payload: 2048,
            ..Config::default()
        },
        now,
    );
    let r = l.handle_frame(Header::data(1, 2049), Bytes::from(vec![0; 2049]), now);
    failed(&mut l, r, now);
    let mut l = established_listener(Config::default(), now);
    let r = l.handle_frame(Header::data(1, 10), Bytes::from_static(b"short"), now);
    assert_eq!(failed(&mut l, r, now).category(), Category::Protocol);
    assert_eq!(queued_close(&mut l).code, close_code::PROTOCOL_ERROR);
}

#[test]
fn unknown_frame_kinds_are_refused() {
    let now = Instant::now();
    for kind in [0x00, 0x06, 0x0f, 0x13, 0x7f, 0xff] {
        let mut b = Header::data(0, 0).encode();
        b[0] = kind;
        let mut l = fresh_listener(now);
        let (r, _) = feed(&mut l, &b, now);
        assert_eq!(
            failed(&mut l, r, now),
            Error::Wire(WireError::UnknownKind(kind))
        );
        assert!(frames(&mut l).is_empty());

        let mut l = established_listener(Config::default(), now);
        let (r, _) = feed(&mut l, &b, now);
        assert_eq!(
            failed(&mut l, r, now),
            Error::Wire(WireError::UnknownKind(kind))
        );
        assert_eq!(queued_close(&mut l).code, close_code::PROTOCOL_ERROR);
    }
}

/// A HELLO without the DUCT magic is not duct: refused, and no REJECT is sent.
#[test]
fn bad_magic_in_hello_is_refused() {
    let now = Instant::now();
    let mut payload = common::hello().encode().to_vec();
    payload[3] = b'X';
    let mut l = fresh_listener(now);
    let (r, _) = feed(&mut l, &control_frame(FrameKind::Hello, &payload), now);
    let e = failed(&mut l, r, now);
    assert_eq!(e, Error::Wire(WireError::BadMagic));
    assert_eq!(e.category(), Category::Protocol);
    assert!(frames(&mut l).is_empty());

    let mut d = dialer_after_hello(now);
    let mut payload = common::welcome().encode().to_vec();
    payload[0] = b'd';
    let (r, _) = feed(&mut d, &control_frame(FrameKind::Welcome, &payload), now);
    assert_eq!(failed(&mut d, r, now), Error::Wire(WireError::BadMagic));
}

/// A HELLO of another major version gets REJECT(INCOMPATIBLE_VERSION), whatever its layout
/// after the preamble, and the listener's error is `Incompatible`.
#[test]
fn unknown_major_version_in_hello_is_rejected_as_incompatible() {
    let now = Instant::now();
    let mut payloads: Vec<(Vec<u8>, (u8, u8))> = [(0, 1), (2, 0), (2, 7), (255, 255)]
        .into_iter()
        .map(|v| {
            (
                Hello {
                    version: v,
                    ..common::hello()
                }
                .encode()
                .to_vec(),
                v,
            )
        })
        .collect();
    // A future major may lay HELLO out differently: only magic and version are read.
    payloads.push((b"DUCT\x03\x01short".to_vec(), (3, 1)));
    for (payload, version) in payloads {
        let mut l = fresh_listener(now);
        let (r, _) = feed(&mut l, &control_frame(FrameKind::Hello, &payload), now);
        let e = failed(&mut l, r, now);
        assert_eq!(
            e,
            Error::Incompatible {
                local: (VERSION_MAJOR, VERSION_MINOR),
                peer: version
            }
        );
        assert_eq!(e.category(), Category::Incompatible);
        let reject = queued_reject(&mut l);
        assert_eq!(reject.code, reject_code::INCOMPATIBLE_VERSION);
        assert_eq!(
            reject.version,
            (control::VERSION_MAJOR, control::VERSION_MINOR)
        );
        assert!(
            reject
                .reason
                .contains(&format!("{}.{}", version.0, version.1)),
            "{reject:?}"
        );
    }
}

/// At the dialer, REJECT(INCOMPATIBLE_VERSION) and a WELCOME of another major both surface as
/// category Incompatible; other REJECT codes map to their categories.
#[test]
fn dialer_reports_incompatible_and_rejected() {
    let now = Instant::now();
    let mut d = dialer_after_hello(now);
    let reject = Reject {
        version: (2, 0),
        code: reject_code::INCOMPATIBLE_VERSION,
        reason: "v2 only".into(),
    };
    let (r, _) = feed(
        &mut d,
        &control_frame(FrameKind::Reject, &reject.encode()),
        now,
    );
    let e = failed(&mut d, r, now);
    assert_eq!(
        e,
        Error::Incompatible {
            local: (VERSION_MAJOR, VERSION_MINOR),
            peer: (2, 0)
        }
    );
    assert_eq!(e.category(), Category::Incompatible);
    assert!(frames(&mut d).is_empty());

    for payload in [
        Welcome {
            version: (2, 0),
            ..common::welcome()
        }
        .encode()
        .to_vec(),
        b"DUCT\x02\x00".to_vec(), // a v2 WELCOME need not have v1's layout
    ] {
        let mut d = dialer_after_hello(now);
        let (r, _) = feed(&mut d, &control_frame(FrameKind::Welcome, &payload), now);
        let e = failed(&mut d, r, now);
        assert_eq!(
            e,
            Error::Incompatible {
                local: (VERSION_MAJOR, VERSION_MINOR),
                peer: (2, 0)
            }
        );
        assert_eq!(e.category(), Category::Incompatible);
    }

    for (code, category) in [
        (reject_code::PROTOCOL_ERROR, Category::Protocol),
        (reject_code::PERMISSION_DENIED, Category::PermissionDenied),
        (reject_code::UNAVAILABLE, Category::Unavailable),
        (999, Category::Protocol),
    ] {
        let mut d = dialer_after_hello(now);
        let reject = Reject {
            version: (1, 0),
            code,
            reason: "because".into(),
        };
        let (r, _) = feed(
            &mut d,
            &control_frame(FrameKind::Reject, &reject.encode()),
            now,
        );
        let e = failed(&mut d, r, now);
        assert_eq!(
            e,
            Error::Rejected {
                code,
                reason: "because".into()
            }
        );
        assert_eq!(e.category(), category);
    }
}

/// End to end over byte links: a dialer announcing major 2 meets a v1 listener.
#[test]
fn version_mismatch_end_to_end() {
    for seed in 0..20 {
        let dialer = Config {
            version: (2, 0),
            ..Config::default()
        };
        let mut p = Pair::new(seed, dialer, Config::default());
        p.run();
        let incompatible =
            |errors: &[Error]| errors.len() == 1 && errors[0].category() == Category::Incompatible;
        assert!(
            incompatible(&p.listener.errors),
            "seed {seed}: {:?}",
            p.listener.errors
        );
        assert!(
            incompatible(&p.dialer.errors),
            "seed {seed}: {:?}",
            p.dialer.errors
        );
        assert_eq!(p.dialer.session.state(), State::Closed, "seed {seed}");
        assert_eq!(p.listener.session.state(), State::Closed, "seed {seed}");
    }
}

/// A higher minor version of the same major is compatible both ways.
#[test]
fn higher_minor_version_is_accepted() {
    let now = Instant::now();
    let mut l = fresh_listener(now);
    let hello = Hello {
        version: (1, 9),
        ..common::hello()
    };
    l.handle_input(&mut control_frame(FrameKind::Hello, &hello.encode()), now)
        .unwrap();
    assert_eq!(l.negotiated().unwrap().peer_version, (1, 9));

    let mut d = dialer_after_hello(now);
    let welcome = Welcome {
        version: (1, 200),
        ..common::welcome()
    };
    d.handle_input(
        &mut control_frame(FrameKind::Welcome, &welcome.encode()),
        now,
    )
    .unwrap();
    assert_eq!(d.negotiated().unwrap().peer_version, (1, 200));
}

/// Unknown capability bits and unknown extension types are ignored: the handshake succeeds
/// and the capabilities in force are the intersection.
#[test]
fn unknown_capabilities_and_extensions_are_ignored() {
    let now = Instant::now();
    // A listener offering every bit there is: only what this version supports remains.
    let mut l = Session::new(
        Config {
            capabilities: u64::MAX,
            ..Config::default()
        },
        Role::Listener,
        now,
    );
    let hello = Hello {
        capabilities: u64::MAX,
        extensions: vec![
            Extension {
                kind: 0x7777,
                value: Bytes::from_static(b"future"),
            },
            Extension {
                kind: control::EXT_TOKEN,
                value: Bytes::new(),
            },
        ],
        ..common::hello()
    };
    l.handle_input(&mut control_frame(FrameKind::Hello, &hello.encode()), now)
        .unwrap();
    assert_eq!(l.state(), State::Established);
    assert_eq!(
        l.negotiated().unwrap().capabilities,
        control::caps::SUPPORTED
    );
    let fs = frames(&mut l);
    assert_eq!(fs[0].0.kind, FrameKind::Welcome);
    assert_eq!(
        Welcome::decode(&fs[0].1).unwrap().capabilities,
        control::caps::SUPPORTED
    );

    let mut d = dialer_after_hello(now);
    let welcome = Welcome {
        capabilities: u64::MAX,
        extensions: vec![Extension {
            kind: 0xffff,
            value: Bytes::from_static(b"?"),
        }],
        ..common::welcome()
    };
    d.handle_input(
        &mut control_frame(FrameKind::Welcome, &welcome.encode()),
        now,
    )
    .unwrap();
    assert_eq!(d.state(), State::Established);
    // This dialer offered TTL, RELIABLE and ACK_REQUEST (the default): WELCOME's extra bits
    // add none.
    assert_eq!(
        d.negotiated().unwrap().capabilities,
        control::caps::TTL | control::caps::RELIABLE | control::caps::ACK_REQUEST
    );
}

/// Reserved header flag bits, and the reliability/TTL fields no v1 peer negotiates, are
/// ignored on receipt; so are the header fields control frames do not use.
#[test]
fn reserved_header_bits_and_fields_are_ignored() {
    let now = Instant::now();
    // Nothing agreed (a peer that offers no capability): the flags that need one are ignored.
    let none = Config {
        capabilities: 0,
        ..Config::default()
    };
    let mut l = established_listener(none, now);
    let mut h = data_header(
        6,
        0xe0 | flags::RELIABLE | flags::ACK_PRESENT | flags::TTL_PRESENT,
        77,
    );
    h.seq = 5;
    h.ack = 6;
    h.ttl_ms = 7;
    l.handle_input(&mut frame(h, b"still delivered"), now)
        .unwrap();
    let m = messages(&mut l);
    assert_eq!(
        (m[0].channel, &m[0].payload[..]),
        (6, &b"still delivered"[..])
    );

    let mut ping = Header::new(FrameKind::Ping);
    ping.channel = 9;
    ping.flags = 0xff;
    ping.aux = 1;
    l.handle_input(&mut frame(ping, &control::encode_ping(3)), now)
        .unwrap();
    let fs = frames(&mut l);
    assert_eq!(fs[0].0.kind, FrameKind::Pong);
    assert_eq!(control::decode_ping(&fs[0].1), Ok(3));
}

#[test]
fn out_of_range_handshake_parameters_are_refused() {
    let now = Instant::now();
    for hello in [
        Hello {
            max_frame_payload: 1023,
            ..common::hello()
        },
        Hello {
            max_frame_payload: 0,
            ..common::hello()
        },
        Hello {
            max_message_size: 0,
            ..common::hello()
        },
    ] {
        let mut l = fresh_listener(now);
        let (r, _) = feed(
            &mut l,
            &control_frame(FrameKind::Hello, &hello.encode()),
            now,
        );
        assert!(matches!(failed(&mut l, r, now), Error::BadParameter(_)));
        assert_eq!(queued_reject(&mut l).code, reject_code::PROTOCOL_ERROR);
    }
    for welcome in [
        Welcome {
            session_id: 0,
            ..common::welcome()
        },
        Welcome {
            max_frame_payload: 1000,
            ..common::welcome()
        },
        Welcome {
            max_message_size: 0,
            ..common::welcome()
        },
    ] {
        let mut d = dialer_after_hello(now);
        let (r, _) = feed(
            &mut d,
            &control_frame(FrameKind::Welcome, &welcome.encode()),
            now,
        );
        assert!(matches!(failed(&mut d, r, now), Error::BadParameter(_)));
    }
    let mut d = dialer_after_hello(now);
    let mut payload = common::welcome().encode().to_vec();
    payload[40] = 2; // resumed is neither 0 nor 1
    let (r, _) = feed(&mut d, &control_frame(FrameKind::Welcome, &payload), now);
    assert!(matches!(
        failed(&mut d, r, now),
        Error::Wire(WireError::Malformed(_))
    ));
}

/// DATA frames on channel 1 as (flags, aux, payload).
type Fragments = Vec<(u8, u32, Vec<u8>)>;

/// Fragment sequences that do not form a message, each after a valid partial message on
/// another channel (which is dropped with the session).
#[test]
fn broken_fragment_sequences_are_refused() {
    let now = Instant::now();
    let k = |n: usize| vec![0x5a; n];
    #[rustfmt::skip]
    let cases: Vec<(&str, Fragments)> = vec![
        ("continuation without a first fragment", vec![(CONT, 0, k(10))]),
        ("non-final continuation without a first", vec![(CONT | MORE, 0, k(10))]),
        ("unfragmented message while one is incomplete", vec![(MORE, 3000, k(1024)), (0, 0, k(5))]),
        ("new first fragment while one is incomplete", vec![(MORE, 3000, k(1024)), (MORE, 3000, k(1024))]),
        ("final fragment past the total", vec![(MORE, 1500, k(1024)), (CONT, 0, k(1000))]),
        ("non-final fragment past the total", vec![(MORE, 1500, k(1024)), (CONT | MORE, 0, k(1000))]),
        ("final fragment short of the total", vec![(MORE, 3000, k(1024)), (CONT, 0, k(100))]),
        ("empty first fragment", vec![(MORE, 100, k(0))]),
        ("empty non-final continuation", vec![(MORE, 3000, k(1024)), (CONT | MORE, 0, k(0))]),
        ("first fragment as long as the total", vec![(MORE, 10, k(10))]),
        ("first fragment with a total of 0", vec![(MORE, 0, k(5))]),
    ];
    for (what, seq) in cases {
        let mut l = established_listener(small_frames(), now);
        let other = frame(data_header(2, MORE, 5000), &k(1000));
        l.handle_input(&mut other.clone(), now).unwrap();
        assert_eq!(l.reassembly_bytes(), 1000);
        let mut r = Ok(());
        for (flags, aux, payload) in seq {
            r = l.handle_input(&mut frame(data_header(1, flags, aux), &payload), now);
            if r.is_err() {
                break;
            }
        }
        let e = failed(&mut l, r, now);
        assert!(
            matches!(e, Error::Fragment { channel: 1, .. }),
            "{what}: {e:?}"
        );
        assert_eq!(e.category(), Category::Protocol, "{what}");
        assert_eq!(
            queued_close(&mut l).code,
            close_code::PROTOCOL_ERROR,
            "{what}"
        );
        assert!(messages(&mut l).is_empty(), "{what}");
    }
}

/// A final fragment may be empty when the fragments before it already reached the total
/// (only non-final fragments must carry bytes).
#[test]
fn empty_final_fragment_completing_the_total_is_accepted() {
    let now = Instant::now();
    let mut l = established_listener(small_frames(), now);
    let body = common::pattern(2000, 1);
    let mut buf = frame(data_header(1, MORE, 2000), &body[..1024]);
    buf.extend_from_slice(&frame(data_header(1, CONT | MORE, 0), &body[1024..]));
    buf.extend_from_slice(&frame(data_header(1, CONT, 0), b""));
    l.handle_input(&mut buf, now).unwrap();
    assert_eq!(messages(&mut l)[0].payload, body);
}

/// `Config::reassembly_limit` caps the bytes held across all channels' partial messages.
#[test]
fn reassembly_over_the_cap_is_refused() {
    let now = Instant::now();
    let config = Config {
        reassembly_limit: 3000,
        ..small_frames()
    };
    let first = |channel| frame(data_header(channel, MORE, 5000), &[1; 1024]);

    let mut l = established_listener(config.clone(), now);
    l.handle_input(&mut first(1), now).unwrap();
    l.handle_input(&mut first(2), now).unwrap();
    assert_eq!(l.reassembly_bytes(), 2048);
    let (r, _) = feed(&mut l, &first(3), now);
    let e = failed(&mut l, r, now);
    assert_eq!(
        e,
        Error::ReassemblyLimit {
            needed: 3072,
            limit: 3000
        }
    );
    assert_eq!(e.category(), Category::Protocol);
    assert_eq!(queued_close(&mut l).code, close_code::PROTOCOL_ERROR);

    // One channel alone, growing past the cap.
    let mut l = established_listener(config, now);
    let next = frame(data_header(1, CONT | MORE, 0), &[1; 1024]);
    l.handle_input(&mut first(1), now).unwrap();
    l.handle_input(&mut next.clone(), now).unwrap();
    let (r, _) = feed(&mut l, &next, now);
    assert_eq!(
        failed(&mut l, r, now),
        Error::ReassemblyLimit {
            needed: 3072,
            limit: 3000
        }
    );

    // Exactly at the cap is allowed.
    let mut l = established_listener(
        Config {
            reassembly_limit: 3072,
            ..small_frames()
        },
        now,
    );
    for channel in 1..=3 {
        l.handle_input(&mut first(channel), now).unwrap();
    }
    assert_eq!(l.reassembly_bytes(), 3072);
}

/// The receiver's `max_message_size` holds for the total a first fragment announces and for
/// an unfragmented message alike.
#[test]
fn messages_over_max_message_size_are_refused() {
    let now = Instant::now();
    let config = Config {
        max_message_size: 4096,
        ..small_frames()
    };
    let mut l = established_listener(config.clone(), now);
    l.handle_input(&mut frame(data_header(1, MORE, 4096), &[0; 1024]), now)
        .unwrap();
    let (r, _) = feed(&mut l, &frame(data_header(2, MORE, 4097), &[0; 1024]), now);
    let e = failed(&mut l, r, now);
    assert_eq!(
        e,
        Error::MessageTooLarge {
            size: 4097,
            max: 4096
        }
    );
    assert_eq!(e.category(), Category::MessageTooLarge);
    assert_eq!(queued_close(&mut l).code, close_code::MESSAGE_TOO_LARGE);

    // A limit below the frame size: a single frame larger than the message limit.
    let config = Config {
        max_message_size: 100,
        ..small_frames()
    };
    let mut l = established_listener(config, now);
    l.handle_input(&mut frame(Header::data(1, 0), &[0; 100]), now)
        .unwrap();
    let (r, _) = feed(&mut l, &frame(Header::data(1, 0), &[0; 101]), now);
    assert_eq!(
        failed(&mut l, r, now),
        Error::MessageTooLarge {
            size: 101,
            max: 100
        }
    );
    assert_eq!(queued_close(&mut l).code, close_code::MESSAGE_TOO_LARGE);
}

#[test]
fn stalled_reassembly_times_out() {
    let t0 = Instant::now();
    let secs = Duration::from_secs;
    let mut l = established_listener(small_frames(), t0);
    assert_eq!(
        l.poll_timeout(),
        None,
        "no deadline while nothing is partial"
    );
    l.handle_input(&mut frame(data_header(1, MORE, 5000), &[0; 1024]), t0)
        .unwrap();
    assert_eq!(l.poll_timeout(), Some(t0 + secs(30)));
    l.handle_input(
        &mut frame(data_header(2, MORE, 5000), &[0; 1024]),
        t0 + secs(10),
    )
    .unwrap();
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + secs(30)),
        "the earliest partial decides"
    );
    assert_eq!(
        l.handle_timeout(t0 + secs(30) - Duration::from_millis(1)),
        Ok(())
    );
    assert_eq!(l.state(), State::Established);
    let r = l.handle_timeout(t0 + secs(30));
    let e = failed(&mut l, r, t0);
    assert_eq!(
        e,
        Error::ReassemblyTimeout {
            channel: 1,
            after: secs(30)
        }
    );
    assert_eq!(e.category(), Category::TimedOut);
    assert_eq!(queued_close(&mut l).code, close_code::TIMEOUT);

    // A completed message takes its deadline with it.
    let mut l = established_listener(small_frames(), t0);
    l.handle_input(&mut frame(data_header(1, MORE, 1025), &[0; 1024]), t0)
        .unwrap();
    l.handle_input(&mut frame(data_header(1, CONT, 0), &[0; 1]), t0)
        .unwrap();
    assert_eq!(l.poll_timeout(), None);
    assert_eq!(l.handle_timeout(t0 + secs(3600)), Ok(()));
}

/// When several partial messages expire at once, the error names the lowest channel, so the
/// outcome does not depend on hash order (runs replay exactly).
#[test]
fn simultaneous_reassembly_timeouts_report_the_lowest_channel() {
    let t0 = Instant::now();
    for _ in 0..20 {
        let mut l = established_listener(small_frames(), t0);
        for channel in [900, 7, 65535, 12, 300] {
            l.handle_input(&mut frame(data_header(channel, MORE, 5000), &[0; 10]), t0)
                .unwrap();
        }
        let e = l.handle_timeout(t0 + Duration::from_secs(30)).unwrap_err();
        assert_eq!(
            e,
            Error::ReassemblyTimeout {
                channel: 7,
                after: Duration::from_secs(30)
            }
        );
    }
}

/// End to end: the link stalls in the middle of a fragmented message; at the listener's
/// deadline it closes with TIMEOUT, and the dialer learns so from the CLOSE.
#[test]
fn reassembly_timeout_end_to_end() {
    for seed in 0..10 {
        let mut p = Pair::connected(seed, Config::default(), small_frames());
        let start = p.now;
        p.dialer
            .session
            .send(1, common::pattern(10_000, seed), p.now)
            .unwrap();
        // Three of the ten 1024-byte fragments make it; the rest are lost.
        p.lose_to_listener_after(3 * (HEADER_LEN + 1024));
        p.run();
        assert_eq!(
            p.listener.session.reassembly_bytes(),
            3 * 1024,
            "seed {seed}"
        );
        assert!(p.advance(), "seed {seed}: a reassembly deadline");
        assert_eq!(p.elapsed(start), Duration::from_secs(30), "seed {seed}");
        p.run();
        assert_eq!(
            p.listener.errors,
            vec![Error::ReassemblyTimeout {
                channel: 1,
                after: Duration::from_secs(30)
            }],
            "seed {seed}"
        );
        assert!(
            p.dialer.errors.is_empty(),
            "seed {seed}: {:?}",
            p.dialer.errors
        );
        match p.dialer.events.last() {
            Some(Event::PeerClosed(Close { code, .. })) => assert_eq!(*code, close_code::TIMEOUT),
            other => panic!("seed {seed}: expected PeerClosed, got {other:?}"),
        }
        assert!(p.listener.inbox.is_empty(), "seed {seed}");
    }
}

#[test]
fn handshake_times_out() {
    let t0 = Instant::now();
    let timeout = Config::default().handshake_timeout;
    let mut l = fresh_listener(t0);
    let mut d = dialer_after_hello(t0);
    for s in [&mut l, &mut d] {
        assert_eq!(s.poll_timeout(), Some(t0 + timeout));
        assert_eq!(
            s.handle_timeout(t0 + timeout - Duration::from_millis(1)),
            Ok(())
        );
        assert_eq!(s.state(), State::Handshaking);
        let r = s.handle_timeout(t0 + timeout);
        let e = failed(s, r, t0);
        assert_eq!(e, Error::HandshakeTimeout { after: timeout });
        assert_eq!(e.category(), Category::TimedOut);
        assert!(
            frames(s).is_empty(),
            "nothing is sent on a handshake timeout"
        );
    }

    // A half-received HELLO does not hold the deadline off.
    let mut l = fresh_listener(t0);
    let hello = control_frame(FrameKind::Hello, &common::hello().encode());
    let (r, _) = feed(&mut l, &hello[..30], t0);
    assert_eq!(r, Ok(()));
    assert_eq!(l.poll_timeout(), Some(t0 + timeout));
    assert!(matches!(
        l.handle_timeout(t0 + timeout),
        Err(Error::HandshakeTimeout { .. })
    ));

    // Once established there is no handshake deadline; a spurious call is harmless.
    let (mut d, mut l) = established(Config::default(), Config::default(), t0);
    for s in [&mut d, &mut l] {
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.handle_timeout(t0 + timeout * 10), Ok(()));
        assert_eq!(s.state(), State::Established);
    }
}

/// Before the handshake only HELLO (at the listener) and WELCOME or REJECT (at the dialer)
/// are allowed; nothing is sent back.
#[test]
fn frames_before_the_handshake_are_refused() {
    let now = Instant::now();
    let ping = control::encode_ping(1);
    let close = Close {
        code: 0,
        reason: String::new(),
    }
    .encode();
    let welcome = common::welcome().encode();
    let reject = Reject {
        version: (1, 0),
        code: 4,
        reason: String::new(),
    }
    .encode();
    let hello = common::hello().encode();
    let at_listener: [(FrameKind, &[u8]); 6] = [
        (FrameKind::Data, b"early"),
        (FrameKind::Ping, &ping),
        (FrameKind::Ack, b""),
        (FrameKind::Close, &close),
        (FrameKind::Welcome, &welcome),
        (FrameKind::Reject, &reject),
    ];
    for (kind, payload) in at_listener {
        let mut l = fresh_listener(now);
        let (r, _) = feed(&mut l, &control_frame(kind, payload), now);
        let e = failed(&mut l, r, now);
        assert_eq!(
            e,
            Error::UnexpectedFrame {
                kind,
                state: "handshaking"
            }
        );
        assert!(frames(&mut l).is_empty());
    }
    let at_dialer: [(FrameKind, &[u8]); 4] = [
        (FrameKind::Data, b"early"),
        (FrameKind::Hello, &hello),
        (FrameKind::Pong, &ping),
        (FrameKind::Close, &close),
    ];
    for (kind, payload) in at_dialer {
        let mut d = dialer_after_hello(now);
        let (r, _) = feed(&mut d, &control_frame(kind, payload), now);
        assert_eq!(
            failed(&mut d, r, now),
            Error::UnexpectedFrame {
                kind,
                state: "handshaking"
            }
        );
    }
}

#[test]
fn handshake_frames_after_the_handshake_are_refused() {
    let now = Instant::now();
    let frames_in: [(FrameKind, Vec<u8>); 3] = [
        (FrameKind::Hello, common::hello().encode().to_vec()),
        (FrameKind::Welcome, common::welcome().encode().to_vec()),
        (
            FrameKind::Reject,
            Reject {
                version: (1, 0),
                code: 4,
                reason: String::new(),
            }
            .encode()
            .to_vec(),
        ),
    ];
    for (kind, payload) in &frames_in {
        let (mut d, mut l) = established(Config::default(), Config::default(), now);
        for s in [&mut d, &mut l] {
            let (r, _) = feed(s, &control_frame(*kind, payload), now);
            let e = failed(s, r, now);
            assert_eq!(
                e,
                Error::UnexpectedFrame {
                    kind: *kind,
                    state: "established"
                }
            );
            assert_eq!(queued_close(s).code, close_code::PROTOCOL_ERROR);
        }
    }
}

/// A CLOSE whose reason is not UTF-8 or longer than 1024 bytes is a protocol error.
#[test]
fn malformed_close_reason_is_refused() {
    let now = Instant::now();
    let mut long = 5000u16.to_be_bytes().to_vec();
    long.extend(std::iter::repeat_n(b'r', 1025));
    for payload in [b"\x13\x88\xc3\x28".to_vec(), long] {
        let mut l = established_listener(Config::default(), now);
        let (r, _) = feed(&mut l, &control_frame(FrameKind::Close, &payload), now);
        assert!(matches!(
            failed(&mut l, r, now),
            Error::Wire(WireError::Malformed(_))
        ));
        assert!(
            l.poll_event().is_none(),
            "no PeerClosed for a malformed CLOSE"
        );
    }
}

/// Bytes after a CLOSE in the same read are not looked at.
#[test]
fn nothing_after_a_close_is_processed() {
    let now = Instant::now();
    let mut l = established_listener(Config::default(), now);
    let mut buf = frame(Header::data(1, 0), b"before");
    buf.extend_from_slice(&control_frame(
        FrameKind::Close,
        &Close {
            code: 7,
            reason: "x".into(),
        }
        .encode(),
    ));
    buf.extend_from_slice(&frame(Header::data(1, 0), b"after"));
    buf.extend_from_slice(&[0xff; 30]); // garbage that would be an error
    assert_eq!(l.handle_input(&mut buf, now), Ok(()));
    assert_eq!(l.state(), State::Closed);
    let m = messages(&mut l);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].payload, &b"before"[..]);
    assert_eq!(
        l.poll_event(),
        Some(Event::PeerClosed(Close {
            code: 7,
            reason: "x".into()
        }))
    );
}

/// Feeds `bytes` to `s` in chunks cut at `cuts`, checking the invariants after every call.
fn feed_hostile(
    s: &mut Session,
    bytes: &[u8],
    cuts: &[usize],
    limit: usize,
    now: Instant,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut cut = cuts.iter().cycle();
    while fed < bytes.len() {
        let n = (*cut.next().unwrap()).min(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        let r = s.handle_input(&mut buf, now);
        prop_assert!(s.reassembly_bytes() <= limit);
        if r.is_err() {
            prop_assert_eq!(s.state(), State::Closed);
        }
        // Whatever the session queued must itself be well-formed.
        frames(s);
    }
    Ok(())
}

/// A frame drawn near the valid space: DATA with fragment flags and totals around the
/// limits, or a control frame, on a few channels.
fn arb_near_valid_frame() -> impl Strategy<Value = BytesMut> {
    let data = (
        0u16..4,
        prop::sample::select(vec![0, MORE, CONT, MORE | CONT, 0x80 | MORE]),
        prop_oneof![Just(0u32), 0u32..6000, any::<u32>()],
        0usize..1100,
    )
        .prop_map(|(channel, flags, aux, len)| {
            frame(data_header(channel, flags, aux), &vec![0xab; len])
        });
    let control = (
        prop::sample::select(vec![
            FrameKind::Ping,
            FrameKind::Pong,
            FrameKind::Ack,
            FrameKind::Close,
        ]),
        prop::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(kind, p)| control_frame(kind, &p));
    prop_oneof![8 => data, 1 => control]
}

proptest! {
    #![proptest_config(common::proptest_config(256))]

    /// Arbitrary bytes at a fresh listener, optionally after a valid HELLO so they reach the
    /// established state, in arbitrary chunks: no panic, bounded reassembly.
    #[test]
    fn arbitrary_bytes_at_a_fresh_listener(
        bytes in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(1usize..300, 1..20),
        after_hello in any::<bool>(),
    ) {
        let now = Instant::now();
        let config = Config { reassembly_limit: 4096, ..small_frames() };
        let mut s = Session::new(config, Role::Listener, now);
        let mut input = Vec::new();
        if after_hello {
            input.extend_from_slice(&control_frame(FrameKind::Hello, &common::hello().encode()));
        }
        input.extend_from_slice(&bytes);
        feed_hostile(&mut s, &input, &cuts, 4096, now)?;
    }

    /// Arbitrary bytes at an established session, either role.
    #[test]
    fn arbitrary_bytes_at_an_established_session(
        bytes in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(1usize..300, 1..20),
        dialer in any::<bool>(),
    ) {
        let now = Instant::now();
        let config = Config { reassembly_limit: 4096, ..small_frames() };
        let (d, l) = established(config.clone(), config, now);
        let mut s = if dialer { d } else { l };
        feed_hostile(&mut s, &bytes, &cuts, 4096, now)?;
    }

    /// Sequences of nearly valid frames reach deep into reassembly: still no panic, the cap
    /// holds, and nothing delivered exceeds the message limit.
    #[test]
    fn near_valid_frames_at_an_established_listener(
        frames_in in prop::collection::vec(arb_near_valid_frame(), 1..40),
        cuts in prop::collection::vec(1usize..2000, 1..8),
    ) {
        let now = Instant::now();
        let config = Config { reassembly_limit: 3000, max_message_size: 4000, ..small_frames() };
        let mut l = established_listener(config, now);
        let bytes: Vec<u8> = frames_in.iter().flat_map(|f| f.iter().copied()).collect();
        feed_hostile(&mut l, &bytes, &cuts, 3000, now)?;
        for m in messages(&mut l) {
            prop_assert!(m.payload.len() <= 4000);
        }
    }
}

/// A header promising more payload than has arrived is just an incomplete frame.
#[test]
fn a_header_promising_more_than_arrives_just_waits() {
    let now = Instant::now();
    let mut l = established_listener(Config::default(), now);
    let h = Header::data(1, 100);
    let (r, left) = feed(&mut l, &raw_frame(h, &[1; 60]), now);
    assert_eq!((r, left.len()), (Ok(()), HEADER_LEN + 60));
    assert_eq!(l.message_len(), 0);
}
