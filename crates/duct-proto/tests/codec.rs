//! Codec round-trips and deframing: every frame kind's header and payload encodes and decodes
//! back to itself, the deframer cuts any split of a stream into the same frames, and length
//! caps are checked before anything is allocated. Also the hex dumps in docs/PROTOCOL.md.

#[path = "common/alloc.rs"]
mod alloc;
mod common;

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use duct_proto::wire::control::{
    self, clamp_reason, Close, Extension, Hello, Reject, Welcome, HELLO_FIXED_LEN, MAX_EXTENSIONS,
    MAX_REASON_LEN, MAX_SACK_RANGES, REJECT_FIXED_LEN, WELCOME_FIXED_LEN,
};
use duct_proto::wire::header::{put_u32, set_flag};
use duct_proto::wire::{
    flags, Deframer, FrameKind, Header, WireError, DATA_RUN_MAX, HANDSHAKE_MAX_PAYLOAD, HEADER_LEN,
};
use duct_proto::{Config, Error, Role, Session, State};
use proptest::prelude::*;

use common::{established, frame, proptest_config};

const KINDS: [FrameKind; 8] = [
    FrameKind::Data,
    FrameKind::Ack,
    FrameKind::Ping,
    FrameKind::Pong,
    FrameKind::Close,
    FrameKind::Hello,
    FrameKind::Welcome,
    FrameKind::Reject,
];

fn arb_kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(KINDS.to_vec())
}

prop_compose! {
    fn arb_header()(
        kind in arb_kind(),
        flags in any::<u8>(),
        channel in any::<u16>(),
        payload_len in any::<u32>(),
        seq in any::<u32>(),
        ack in any::<u32>(),
        ttl_ms in any::<u32>(),
        aux in any::<u32>(),
    ) -> Header {
        Header { kind, flags, channel, payload_len, seq, ack, ttl_ms, aux }
    }
}

fn arb_extensions() -> impl Strategy<Value = Vec<Extension>> {
    prop::collection::vec(
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..48)).prop_map(|(kind, v)| Extension {
            kind,
            value: Bytes::from(v),
        }),
        0..=MAX_EXTENSIONS,
    )
}

/// Reason texts from empty to well past [`MAX_REASON_LEN`] bytes (up to 600 chars of up to 4
/// bytes each), so clamping at a char boundary is exercised.
fn arb_reason() -> impl Strategy<Value = String> {
    "\\PC{0,600}"
}

prop_compose! {
    fn arb_hello()(
        version in any::<(u8, u8)>(),
        capabilities in any::<u64>(),
        max_frame_payload in any::<u32>(),
        heartbeat_ms in any::<u32>(),
        max_message_size in any::<u32>(),
        last_received_seq in any::<u32>(),
        instance_id in any::<u64>(),
        resume_session_id in any::<u64>(),
        extensions in arb_extensions(),
    ) -> Hello {
        Hello {
            version,
            capabilities,
            max_frame_payload,
            heartbeat_ms,
            max_message_size,
            last_received_seq,
            instance_id,
            resume_session_id,
            extensions,
        }
    }
}

prop_compose! {
    fn arb_welcome()(
        version in any::<(u8, u8)>(),
        capabilities in any::<u64>(),
        max_frame_payload in any::<u32>(),
        heartbeat_ms in any::<u32>(),
        max_message_size in any::<u32>(),
        last_received_seq in any::<u32>(),
        session_id in any::<u64>(),
        resumed in any::<bool>(),
        extensions in arb_extensions(),
    ) -> Welcome {
        Welcome {
            version,
            capabilities,
            max_frame_payload,
            heartbeat_ms,
            max_message_size,
            last_received_seq,
            session_id,
            resumed,
            extensions,
        }
    }
}

fn encode_sack(ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * 8);
    for &(first, last) in ranges {
        out.put_u32(first);
        out.put_u32(last);
    }
    out
}

fn extensions_len(exts: &[Extension]) -> usize {
    exts.iter().map(|e| 4 + e.value.len()).sum()
}

proptest! {
    #![proptest_config(proptest_config(512))]

    #[test]
    fn header_round_trips_with_its_documented_layout(h in arb_header(), trailing in prop::collection::vec(any::<u8>(), 0..8)) {
        let b = h.encode();
        prop_assert_eq!(b[0], h.kind as u8);
        prop_assert_eq!(b[1], h.flags);
        prop_assert_eq!(&b[2..4], &h.channel.to_be_bytes()[..]);
        prop_assert_eq!(&b[4..8], &h.payload_len.to_be_bytes()[..]);
        prop_assert_eq!(&b[8..12], &h.seq.to_be_bytes()[..]);
        prop_assert_eq!(&b[12..16], &h.ack.to_be_bytes()[..]);
        prop_assert_eq!(&b[16..20], &h.ttl_ms.to_be_bytes()[..]);
        prop_assert_eq!(&b[20..24], &h.aux.to_be_bytes()[..]);
        prop_assert_eq!(Header::decode(&b), Ok(h));
        // Bytes after the header (the payload) do not disturb it.
        let mut longer = b.to_vec();
        longer.extend_from_slice(&trailing);
        prop_assert_eq!(Header::decode(&longer), Ok(h));
    }

    #[test]
    fn header_fields_written_in_place_change_only_their_bytes(
        h in arb_header(),
        field in 1usize..6,
        v in any::<u32>(),
        flag in any::<u8>(),
    ) {
        // `put_u32` at each 4-byte field but the first (kind, flags, channel), `set_flag`:
        // as the header with that field set, encoded.
        let mut b = h.encode();
        put_u32(&mut b, field * 4, v);
        let mut want = h;
        *[
            &mut want.payload_len,
            &mut want.seq,
            &mut want.ack,
            &mut want.ttl_ms,
            &mut want.aux,
        ][field - 1] = v;
        prop_assert_eq!(b, want.encode());
        set_flag(&mut b, flag);
        want.flags |= flag;
        prop_assert_eq!(b, want.encode());
    }

    #[test]
    fn header_with_unknown_kind_is_refused(h in arb_header(), kind in any::<u8>()) {
        prop_assume!(FrameKind::from_u8(kind).is_none());
        let mut b = h.encode();
        b[0] = kind;
        prop_assert_eq!(Header::decode(&b), Err(WireError::UnknownKind(kind)));
    }

    #[test]
    fn header_prefix_is_truncated(h in arb_header(), len in 0..HEADER_LEN) {
        prop_assert_eq!(Header::decode(&h.encode()[..len]), Err(WireError::Truncated));
    }

    #[test]
    fn hello_round_trips(hello in arb_hello()) {
        let b = hello.encode();
        prop_assert_eq!(b.len(), HELLO_FIXED_LEN + extensions_len(&hello.extensions));
        prop_assert_eq!(&b[..4], b"DUCT");
        prop_assert_eq!(control::decode_preamble(&b), Ok(hello.version));
        prop_assert_eq!(Hello::decode(&b), Ok(hello));
    }

    #[test]
    fn welcome_round_trips(welcome in arb_welcome()) {
        let b = welcome.encode();
        prop_assert_eq!(b.len(), WELCOME_FIXED_LEN + extensions_len(&welcome.extensions));
        prop_assert_eq!(control::decode_preamble(&b), Ok(welcome.version));
        prop_assert_eq!(Welcome::decode(&b), Ok(welcome));
    }

    #[test]
    fn reject_round_trips_with_the_reason_clamped(
        version in any::<(u8, u8)>(),
        code in any::<u16>(),
        reason in arb_reason(),
    ) {
        let b = Reject { version, code, reason: reason.clone() }.encode();
        let sent = clamp_reason(&reason);
        prop_assert!(sent.len() <= MAX_REASON_LEN);
        prop_assert!(reason.starts_with(sent));
        // Clamping cuts only what does not fit: the next char would have crossed the limit.
        if let Some(next) = reason[sent.len()..].chars().next() {
            prop_assert!(sent.len() + next.len_utf8() > MAX_REASON_LEN);
        }
        prop_assert_eq!(b.len(), REJECT_FIXED_LEN + sent.len());
        let expected = Reject { version, code, reason: sent.to_owned() };
        prop_assert_eq!(Reject::decode(&b), Ok(expected));
    }

    #[test]
    fn close_round_trips_with_the_reason_clamped(code in any::<u16>(), reason in arb_reason()) {
        let b = Close { code, reason: reason.clone() }.encode();
        let sent = clamp_reason(&reason);
        prop_assert_eq!(b.len(), 2 + sent.len());
        prop_assert_eq!(&b[..2], &code.to_be_bytes()[..]);
        prop_assert_eq!(Close::decode(&b), Ok(Close { code, reason: sent.to_owned() }));
    }

    #[test]
    fn ping_and_pong_tokens_round_trip(token in any::<u64>()) {
        let b = control::encode_ping(token);
        prop_assert_eq!(&b[..], &token.to_be_bytes()[..]);
        prop_assert_eq!(control::decode_ping(&b), Ok(token));
    }

    #[test]
    fn ping_payload_of_another_length_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        prop_assume!(bytes.len() != 8);
        prop_assert!(matches!(control::decode_ping(&bytes), Err(WireError::Malformed(_))));
    }

    #[test]
    fn sack_ranges_round_trip(ranges in prop::collection::vec(any::<(u32, u32)>(), 0..=MAX_SACK_RANGES)) {
        prop_assert_eq!(control::decode_sack(&encode_sack(&ranges)), Ok(ranges));
    }

    #[test]
    fn sack_payload_not_a_whole_number_of_ranges_is_refused(
        ranges in prop::collection::vec(any::<(u32, u32)>(), 0..4),
        extra in 1usize..8,
    ) {
        let mut b = encode_sack(&ranges);
        b.extend(std::iter::repeat_n(0u8, extra));
        prop_assert!(matches!(control::decode_sack(&b), Err(WireError::Malformed(_))));
    }

    #[test]
    fn any_prefix_of_a_fixed_control_payload_is_refused(hello in arb_hello(), welcome in arb_welcome(), cut in 0usize..48) {
        prop_assert!(Hello::decode(&hello.encode()[..cut]).is_err());
        prop_assert!(Welcome::decode(&welcome.encode()[..cut]).is_err());
        if cut < REJECT_FIXED_LEN {
            let r = Reject { version: (1, 0), code: 1, reason: String::new() }.encode();
            prop_assert!(Reject::decode(&r[..cut]).is_err());
        }
    }
}

/// A frame as a test generates it: header fields with `payload_len` matching the payload.
fn arb_frame(max_payload: usize) -> impl Strategy<Value = (Header, Vec<u8>)> {
    (
        arb_header(),
        prop::collection::vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(|(mut h, p)| {
            h.payload_len = p.len() as u32;
            (h, p)
        })
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// However a stream of frames is cut into reads, the deframer yields the same frames, each
    /// as soon as its last byte has arrived, and never consumes a partial frame.
    #[test]
    fn deframer_yields_the_same_frames_for_any_split(
        frames in prop::collection::vec(arb_frame(600), 0..12),
        cuts in prop::collection::vec(1usize..200, 1..40),
    ) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (h, p) in &frames {
            stream.extend_from_slice(&h.encode());
            stream.extend_from_slice(p);
            ends.push(stream.len());
        }
        let deframer = Deframer::new(600);
        let mut buf = BytesMut::new();
        let mut got: Vec<(Header, Bytes)> = Vec::new();
        let mut fed = 0;
        let mut cut = cuts.iter().cycle();
        while fed < stream.len() {
            let n = (*cut.next().unwrap()).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            while let Some(f) = deframer.decode(&mut buf).expect("valid frames decode") {
                got.push(f);
            }
            // Every frame whose last byte has arrived is out; what remains is less than one.
            let complete = ends.iter().filter(|&&e| e <= fed).count();
            prop_assert_eq!(got.len(), complete);
            let start = if complete == 0 { 0 } else { ends[complete - 1] };
            prop_assert_eq!(buf.len(), fed - start);
            prop_assert!(deframer.needed(&buf) > buf.len());
        }
        prop_assert_eq!(got.len(), frames.len());
        for ((h, p), (gh, gp)) in frames.iter().zip(&got) {
            prop_assert_eq!(h, gh);
            prop_assert_eq!(&p[..], &gp[..]);
        }
    }

    /// A header over the limit fails as soon as the header is in, leaving the buffer as it was.
    #[test]
    fn deframer_refuses_a_payload_over_its_limit_at_the_header(
        h in arb_header(),
        max in 0u32..100_000,
    ) {
        prop_assume!(h.payload_len > max);
        let deframer = Deframer::new(max);
        let mut buf = BytesMut::from(&h.encode()[..]);
        prop_assert_eq!(
            deframer.decode(&mut buf),
            Err(WireError::FrameTooLarge { len: h.payload_len, max })
        );
        prop_assert_eq!(buf.len(), HEADER_LEN);
        prop_assert_eq!(deframer.needed(&buf), HEADER_LEN);
    }
}

/// A run of DATA frames ends at a frame boundary once it reaches `DATA_RUN_MAX` bytes, at a
/// frame of another kind, or before a partial frame; its first whole DATA frame is always in
/// it, however large; runs taken one after the other cover every DATA frame.
#[test]
fn data_runs_end_at_frame_boundaries_and_about_data_run_max() {
    let deframer = Deframer::new(64 * 1024);
    let mut stream = BytesMut::new();
    let mut ends = Vec::new();
    // Small frames past the bound, a frame larger than it, more small ones, a PING.
    let sizes = (0..400)
        .map(|i| 40 + i % 90)
        .chain([40_000])
        .chain((0..300).map(|i| 7 * i % 200));
    for (i, len) in sizes.enumerate() {
        stream.extend_from_slice(&frame(Header::data(1, 0), &vec![i as u8; len]));
        ends.push(stream.len());
    }
    let data_end = stream.len();
    let ping = Header {
        kind: FrameKind::Ping,
        ..Header::data(0, 0)
    };
    stream.extend_from_slice(&frame(ping, b""));
    let mut at = 0;
    let mut runs = 0;
    while at < data_end {
        let run = deframer.data_run(&stream[at..]);
        assert!(run > 0, "no progress at {at}");
        let end = at + run;
        let k = ends
            .iter()
            .position(|&e| e == end)
            .expect("a run ends at a frame boundary");
        // Every frame of the run but its last starts before the bound.
        let last_start = if k == 0 { 0 } else { ends[k - 1] };
        assert!(
            last_start == at || last_start - at < DATA_RUN_MAX,
            "run {at}..{end}"
        );
        // It stops only at the bound (or at the end of the DATA frames).
        assert!(
            end == data_end || run >= DATA_RUN_MAX,
            "a short run {at}..{end}"
        );
        at = end;
        runs += 1;
    }
    assert_eq!(at, data_end);
    assert!(runs > 3, "{runs} runs");
    assert_eq!(deframer.data_run(&stream[at..]), 0, "a PING is not DATA");
    // A partial frame at the end is left out.
    let cut = &stream[..ends[2] + 10];
    assert_eq!(deframer.data_run(cut), ends[2]);
}

#[test]
fn deframer_accepts_a_payload_of_exactly_its_limit() {
    let deframer = Deframer::new(1024);
    let payload = vec![7u8; 1024];
    let mut buf = frame(Header::data(1, 0), &payload);
    let last = buf.split_off(buf.len() - 1);
    assert_eq!(deframer.decode(&mut buf), Ok(None), "one byte short: waits");
    assert_eq!(deframer.needed(&buf), HEADER_LEN + 1024);
    buf.unsplit(last);
    let (h, p) = deframer.decode(&mut buf).unwrap().unwrap();
    assert_eq!((h.payload_len, &p[..]), (1024, &payload[..]));
    assert!(buf.is_empty());
}

#[test]
fn deframer_waits_for_a_whole_header() {
    let deframer = Deframer::new(1024);
    let whole = frame(Header::data(1, 0), b"abc");
    for len in 0..HEADER_LEN {
        let mut buf = BytesMut::from(&whole[..len]);
        assert_eq!(deframer.decode(&mut buf), Ok(None), "{len} bytes");
        assert_eq!(buf.len(), len, "nothing consumed");
        assert_eq!(deframer.needed(&buf), HEADER_LEN);
    }
}

/// A header claiming a 4 GiB payload fails at once, allocating nothing of that size, in the
/// bare deframer and in a session before and after the handshake.
#[test]
fn four_gib_payload_claim_fails_immediately_without_allocating_it() {
    let mut h = Header::data(3, u32::MAX);
    h.flags = flags::MORE_FRAGMENTS;
    let header = h.encode();

    for max in [HANDSHAKE_MAX_PAYLOAD, 64 * 1024, 16 * 1024 * 1024] {
        let mut buf = BytesMut::from(&header[..]);
        let (r, usage) = alloc::measure(|| Deframer::new(max).decode(&mut buf));
        assert_eq!(r, Err(WireError::FrameTooLarge { len: u32::MAX, max }));
        assert_eq!(buf.len(), HEADER_LEN);
        assert!(usage.largest < 64 * 1024, "deframer allocated {usage:?}");
    }

    let now = Instant::now();
    let mut fresh = Session::new(Config::default(), Role::Listener, now);
    let (_, mut est) = established(Config::default(), Config::default(), now);
    for (s, max) in [(&mut fresh, HANDSHAKE_MAX_PAYLOAD), (&mut est, 64 * 1024)] {
        let mut buf = BytesMut::from(&header[..]);
        let (r, usage) = alloc::measure(|| s.handle_input(&mut buf, now));
        assert_eq!(
            r,
            Err(Error::Wire(WireError::FrameTooLarge { len: u32::MAX, max }))
        );
        assert!(usage.largest < 64 * 1024, "session allocated {usage:?}");
        assert_eq!(s.state(), State::Closed);
    }
}

#[test]
fn control_decoders_refuse_bad_input() {
    assert_eq!(control::decode_preamble(b"DUC"), Err(WireError::Truncated));
    assert_eq!(
        control::decode_preamble(b"DUCK\x01\x00"),
        Err(WireError::BadMagic)
    );
    assert_eq!(
        control::decode_preamble(b"DUCT\x01"),
        Err(WireError::Truncated)
    );
    assert_eq!(control::decode_preamble(b"DUCT\x01\x00"), Ok((1, 0)));

    // A reason of 1025 bytes, or one that is not UTF-8, is refused on receipt.
    let mut close = 0u16.to_be_bytes().to_vec();
    close.extend(std::iter::repeat_n(b'x', MAX_REASON_LEN + 1));
    assert!(matches!(
        Close::decode(&close),
        Err(WireError::Malformed(_))
    ));
    close.truncate(2 + MAX_REASON_LEN);
    assert_eq!(Close::decode(&close).unwrap().reason.len(), MAX_REASON_LEN);
    assert!(matches!(
        Close::decode(b"\x00\x01\xff\xfe"),
        Err(WireError::Malformed(_))
    ));
    assert_eq!(Close::decode(b"\x00"), Err(WireError::Truncated));
    let mut reject = b"DUCT\x01\x00\x00\x02".to_vec();
    reject.push(0xc3); // a lone UTF-8 lead byte
    assert!(matches!(
        Reject::decode(&reject),
        Err(WireError::Malformed(_))
    ));

    // More than 16 extensions; an extension running past the payload.
    let mut hello = common::hello();
    hello.extensions = vec![
        Extension {
            kind: 9,
            value: Bytes::new()
        };
        MAX_EXTENSIONS
    ];
    let mut b = hello.encode().to_vec();
    assert_eq!(Hello::decode(&b).unwrap().extensions.len(), MAX_EXTENSIONS);
    b.extend_from_slice(&[0, 9, 0, 0]);
    assert!(matches!(Hello::decode(&b), Err(WireError::Malformed(_))));
    let mut b = common::hello().encode().to_vec();
    b.extend_from_slice(&[0, 9, 0, 5, 1, 2]);
    assert_eq!(Hello::decode(&b), Err(WireError::Truncated));
    let mut b = common::hello().encode().to_vec();
    b.extend_from_slice(&[0, 9, 0]);
    assert_eq!(Hello::decode(&b), Err(WireError::Truncated));

    // WELCOME's resumed byte is 0 or 1.
    let mut b = common::welcome().encode().to_vec();
    b[40] = 2;
    assert!(matches!(Welcome::decode(&b), Err(WireError::Malformed(_))));

    // 33 SACK ranges.
    let b = encode_sack(&[(1, 2); MAX_SACK_RANGES + 1]);
    assert!(matches!(
        control::decode_sack(&b),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn reason_is_clamped_at_a_char_boundary() {
    // 1023 ASCII bytes then a 2-byte char: the char would end at 1025, so it is cut.
    let s = format!("{}é", "a".repeat(MAX_REASON_LEN - 1));
    assert_eq!(clamp_reason(&s).len(), MAX_REASON_LEN - 1);
    let s = "€".repeat(400); // 3 bytes each
    assert_eq!(clamp_reason(&s).len(), 1023);
    let s = "x".repeat(MAX_REASON_LEN);
    assert_eq!(clamp_reason(&s), s);
}

/// Reserved bytes of HELLO and WELCOME are ignored on receipt (a later minor version may use
/// them); reserved flag bits survive decoding unchanged.
#[test]
fn reserved_fields_are_ignored_on_receipt() {
    let hello = common::hello();
    let mut b = hello.encode().to_vec();
    b[6] = 0xff;
    b[7] = 0xff;
    assert_eq!(Hello::decode(&b), Ok(hello));
    let welcome = common::welcome();
    let mut b = welcome.encode().to_vec();
    for x in &mut b[41..48] {
        *x = 0xaa;
    }
    assert_eq!(Welcome::decode(&b), Ok(welcome));

    let mut h = Header::data(1, 0);
    h.flags = 0xc0;
    assert_eq!(
        Header::decode(&h.encode()).unwrap().flags & !flags::KNOWN,
        0xc0
    );
}

fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:04x}  ", i * 16));
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let (a, b) = hex.split_at(hex.len().min(8));
        out.push_str(&a.join(" "));
        if !b.is_empty() {
            out.push_str("  ");
            out.push_str(&b.join(" "));
        }
        out.push('\n');
    }
    out
}

/// The example frames in docs/PROTOCOL.md are what this implementation sends: the HELLO of a
/// dialer with instance id 0x0123456789abcdef and a 1 s heartbeat, the WELCOME of a listener
/// with session id 42, and a DATA frame carrying "hi" on channel 3.
#[test]
fn protocol_md_examples_match_the_implementation() {
    let now = Instant::now();
    let dialer = Config {
        instance_id: 0x0123_4567_89ab_cdef,
        heartbeat_interval: Some(std::time::Duration::from_secs(1)),
        ..Config::default()
    };
    let listener = Config {
        session_id: 42,
        ..Config::default()
    };
    let mut d = Session::new(dialer, Role::Dialer, now);
    let mut l = Session::new(listener, Role::Listener, now);
    let hello = common::wire(&mut d);
    l.handle_input(&mut hello.clone(), now).unwrap();
    let welcome = common::wire(&mut l);
    d.handle_input(&mut welcome.clone(), now).unwrap();
    d.send(3, Bytes::from_static(b"hi"), now).unwrap();
    let data = common::wire(&mut d);

    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/PROTOCOL.md exists");
    for (name, bytes) in [("HELLO", &hello), ("WELCOME", &welcome), ("DATA", &data)] {
        let dump = hexdump(bytes);
        assert!(
            doc.contains(&dump),
            "docs/PROTOCOL.md lacks the {name} example:\n{dump}"
        );
    }
}
