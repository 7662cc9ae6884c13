//! Large fragments read in place (`Session::lend_direct` / `return_direct`): a driver that
//! reads the rest of a fragment straight into the message's buffer, one that reads it into
//! the input buffer as before, and any mix of the two in any read sizes deliver the same
//! messages, intact and in order; a message read in place is the buffer it was read into
//! (no copy); a driver's mistake or a session that ends while the buffer is out fails
//! cleanly, never panics.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use duct_proto::qos::{Admission, QosConfig};
use duct_proto::wire::HEADER_LEN;
use duct_proto::{Config, Error, Session, State, DIRECT_MIN};
use proptest::prelude::*;

use common::{established, messages, pattern, proptest_config, wire};

const KIB: usize = 1024;

/// How a simulated driver reads `stream` into `rx`: `reads` gives the size of each read (in
/// turn, repeated), `direct` whether a read uses the lent buffer when there is one (in
/// turn), `tail` how much of what follows a fragment one read takes into the input buffer
/// with it. Returns how many bytes went in place.
fn drive(rx: &mut Session, stream: &[u8], reads: &[usize], direct: &[bool], tail: usize) -> usize {
    let now = Instant::now();
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut in_place = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = reads[i % reads.len()].min(stream.len() - at);
        let lent = if direct[i % direct.len()] {
            rx.lend_direct()
        } else {
            None
        };
        i += 1;
        let mut chunk = &stream[at..at + n];
        at += n;
        if let Some(mut d) = lent {
            let k = d.room().min(chunk.len());
            assert!(
                d.buf().capacity() - d.buf().len() >= d.room(),
                "room as promised"
            );
            d.buf().extend_from_slice(&chunk[..k]);
            in_place += k;
            chunk = &chunk[k..];
            // (A vectored read: what follows the fragment, up to `tail`, into the buffer;
            // the rest of this read comes with the next one.)
            let t = chunk.len().min(tail);
            at -= chunk.len() - t;
            chunk = &chunk[..t];
            rx.return_direct(d, now)
                .expect("a read in place is taken back");
        }
        buf.extend_from_slice(chunk);
        rx.handle_input(&mut buf, now).expect("valid input");
    }
    assert!(buf.is_empty(), "every byte taken");
    in_place
}

/// A sender's configuration whose channels queue all that [`sizes`] makes (up to seven
/// messages of 1 MiB; the default send mark, a few MiB, would hold some back: they would
/// then never be sent).
fn roomy() -> Config {
    let mut qos = QosConfig::default();
    qos.default.snd_hwm_bytes = 16 << 20;
    Config {
        qos: std::sync::Arc::new(qos),
        ..Config::default()
    }
}

/// Messages of every size class: small, one frame, just over, several frames.
fn sizes() -> impl Strategy<Value = Vec<(u16, usize, bool)>> {
    let size = prop_oneof![
        0usize..300,
        (64 * KIB - 40)..(64 * KIB + 40),
        (64 * KIB + 1)..(300 * KIB),
        Just(1024 * KIB),
    ];
    proptest::collection::vec((0u16..3, size, any::<bool>()), 1..8)
}

proptest! {
    #![proptest_config(proptest_config(48))]

    #[test]
    fn messages_arrive_the_same_whichever_way_their_fragments_are_read(
        msgs in sizes(),
        reads in proptest::collection::vec(1usize..150_000, 1..6),
        direct in proptest::collection::vec(any::<bool>(), 1..4),
        tail in prop_oneof![Just(0usize), 1usize..100, Just(4096), Just(usize::MAX)],
    ) {
        let now = Instant::now();
        let (mut tx, mut rx) = established(roomy(), Config::default(), now);
        let mut sent: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
        for (i, &(channel, len, reliable)) in msgs.iter().enumerate() {
            let p = pattern(len, i as u64);
            let admitted = tx.send_message(channel, p.clone(), None, Some(reliable), now);
            prop_assert!(matches!(admitted, Ok(Admission::Queued)), "queued: {:?}", admitted.map(|_| ()));
            sent.entry(channel).or_default().push(p);
        }
        let stream = wire(&mut tx);
        drive(&mut rx, &stream, &reads, &direct, tail);
        let mut got: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
        for d in messages(&mut rx) {
            got.entry(d.channel).or_default().push(d.payload);
        }
        prop_assert_eq!(got, sent);
        prop_assert_eq!(rx.reassembly_bytes(), 0);
        prop_assert_eq!(rx.state(), State::Established);
        prop_assert!(rx.lend_direct().is_none(), "nothing pending at the end");
    }

    #[test]
    fn corrupt_input_read_in_place_or_not_fails_cleanly(
        msgs in sizes(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        reads in proptest::collection::vec(1usize..150_000, 1..6),
        direct in proptest::collection::vec(any::<bool>(), 1..4),
    ) {
        let now = Instant::now();
        let (mut tx, mut rx) = established(roomy(), Config::default(), now);
        for (i, &(channel, len, reliable)) in msgs.iter().enumerate() {
            let admitted = tx.send_message(channel, pattern(len, i as u64), None, Some(reliable), now);
            prop_assert!(matches!(admitted, Ok(Admission::Queued)), "queued: {:?}", admitted.map(|_| ()));
        }
        let mut stream = wire(&mut tx);
        for (at, x) in flips {
            let i = at.index(stream.len());
            stream[i] ^= x | 1;
        }
        // A driver as `drive`, which stops at the first error: the session is closed then,
        // lends nothing and holds nothing.
        let mut buf = BytesMut::new();
        let (mut at, mut i) = (0, 0);
        let mut failed = false;
        while at < stream.len() && !failed {
            let n = reads[i % reads.len()].min(stream.len() - at);
            let lent = if direct[i % direct.len()] { rx.lend_direct() } else { None };
            i += 1;
            let mut chunk = &stream[at..at + n];
            at += n;
            if let Some(mut d) = lent {
                let k = d.room().min(chunk.len());
                d.buf().extend_from_slice(&chunk[..k]);
                chunk = &chunk[k..];
                failed = rx.return_direct(d, now).is_err();
            }
            buf.extend_from_slice(chunk);
            failed = failed || rx.handle_input(&mut buf, now).is_err();
        }
        if failed {
            prop_assert_eq!(rx.state(), State::Closed);
            prop_assert_eq!(rx.reassembly_bytes(), 0);
            prop_assert!(rx.lend_direct().is_none());
        }
        let _ = messages(&mut rx);
    }
}

#[test]
fn a_message_read_in_place_is_the_buffer_it_was_read_into() {
    let now = Instant::now();
    let (mut tx, mut rx) = established(Config::default(), Config::default(), now);
    let payload = pattern(1024 * KIB, 7);
    tx.send(3, payload.clone(), now).unwrap();
    let stream = wire(&mut tx);
    // Reads of 4 KiB into the input buffer; whenever a fragment is under way, the rest of it
    // in place, alone (`tail` 0, the next header comes with the next read).
    let in_place = drive(&mut rx, &stream, &[4 * KIB], &[true], 0);
    let frames = 1024 * KIB / (64 * KIB);
    // All but the first 4 KiB read of each fragment (less its header) came in place.
    assert_eq!(in_place, payload.len() - frames * (4 * KIB - HEADER_LEN));
    let got = messages(&mut rx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, payload);

    // Again: the message's buffer was kept, and takes the next message; every read in place
    // lands in it (its address does not change once it has grown).
    let at = got[0].payload.as_ptr();
    drop(got);
    tx.send(3, payload.clone(), now).unwrap();
    let stream = wire(&mut tx);
    let mut buf = BytesMut::new();
    let mut pos = 0;
    let mut lends = 0;
    while pos < stream.len() {
        if let Some(mut d) = rx.lend_direct() {
            assert_eq!(d.buf().as_ptr(), at, "the kept buffer");
            let k = d.room().min(stream.len() - pos);
            d.buf().extend_from_slice(&stream[pos..pos + k]);
            pos += k;
            lends += 1;
            rx.return_direct(d, now).unwrap();
            continue;
        }
        let k = (4 * KIB).min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + k]);
        pos += k;
        rx.handle_input(&mut buf, now).unwrap();
    }
    rx.handle_input(&mut buf, now).unwrap();
    assert_eq!(lends, frames);
    let got = messages(&mut rx);
    assert_eq!(got[0].payload, payload);
    assert_eq!(got[0].payload.as_ptr(), at, "no copy: the buffer read into");
}

#[test]
fn only_a_fragment_far_from_complete_is_lent() {
    let now = Instant::now();
    let (mut tx, mut rx) = established(Config::default(), Config::default(), now);
    tx.send(1, pattern(200 * KIB, 1), now).unwrap();
    let mut stream = wire(&mut tx);
    tx.send(2, pattern(60 * KIB, 2), now).unwrap();
    stream.extend_from_slice(&wire(&mut tx));
    let first = HEADER_LEN + 64 * KIB;
    let mut buf = BytesMut::new();
    // A fragment with less than DIRECT_MIN to come: taken from the buffer.
    buf.extend_from_slice(&stream[..first - DIRECT_MIN + 1]);
    rx.handle_input(&mut buf, now).unwrap();
    assert!(rx.lend_direct().is_none());
    assert_eq!(buf.len(), first - DIRECT_MIN + 1, "left in the buffer");
    assert_eq!(rx.input_needed(&buf), first, "the whole frame");
    buf.extend_from_slice(&stream[first - DIRECT_MIN + 1..first + HEADER_LEN + 10]);
    rx.handle_input(&mut buf, now).unwrap();
    // The second fragment: all but 10 bytes to come.
    assert_eq!(rx.input_needed(&buf), 64 * KIB - 10 + HEADER_LEN);
    let d = rx.lend_direct().expect("lent");
    assert_eq!(d.room(), 64 * KIB - 10);
    assert!(rx.lend_direct().is_none(), "lent once");
    rx.return_direct(d, now).unwrap();
    // A whole message that is one frame (no fragment) is never read in place: it is a view
    // of the input as it is.
    let mut rest = BytesMut::from(&stream[first + HEADER_LEN + 10..]);
    rx.handle_input(&mut rest, now).unwrap();
    assert!(rx.lend_direct().is_none());
    let got = messages(&mut rx);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, pattern(200 * KIB, 1));
    assert_eq!(got[1].payload, pattern(60 * KIB, 2));
}

#[test]
fn the_configured_direct_min_decides_which_fragments_are_taken_as_they_come() {
    let now = Instant::now();
    // 1 KiB frames: a 5,000-byte message is five fragments, none near the default.
    let small_frames = Config {
        max_frame_payload: 1024,
        ..Config::default()
    };
    let stream = |rx: &Config| {
        let (mut tx, rx) = established(Config::default(), rx.clone(), now);
        tx.send(1, pattern(5000, 7), now).unwrap();
        (wire(&mut tx), rx)
    };
    // Reads of 100 bytes, lending whenever there is something to lend.
    let (bytes, mut rx) = stream(&small_frames);
    assert_eq!(drive(&mut rx, &bytes, &[100], &[true], HEADER_LEN), 0);
    assert_eq!(messages(&mut rx)[0].payload, pattern(5000, 7));
    let (bytes, mut rx) = stream(&Config {
        direct_min: 200,
        ..small_frames
    });
    let in_place = drive(&mut rx, &bytes, &[100], &[true], HEADER_LEN);
    assert!(
        in_place > 2000,
        "{in_place} bytes in place: every fragment with 200 bytes or more to come is lent"
    );
    assert_eq!(messages(&mut rx)[0].payload, pattern(5000, 7));
}

/// A receiver that has the header and the first 100 bytes of a 300 KiB message's first
/// fragment (on channel 1), the whole stream of that message, and the time.
fn inside_a_large_fragment() -> (Session, BytesMut, Instant) {
    let now = Instant::now();
    let (mut tx, mut rx) = established(Config::default(), Config::default(), now);
    tx.send(1, pattern(300 * KIB, 1), now).unwrap();
    let stream = wire(&mut tx);
    let mut buf = BytesMut::from(&stream[..HEADER_LEN + 100]);
    rx.handle_input(&mut buf, now).unwrap();
    (rx, stream, now)
}

#[test]
fn a_driver_that_reads_past_the_fragment_fails_the_session_without_a_panic() {
    let (mut rx, _, now) = inside_a_large_fragment();
    let mut d = rx.lend_direct().expect("lent");
    let room = d.room();
    d.buf().extend_from_slice(&vec![0u8; room + 1]);
    let e = rx.return_direct(d, now).unwrap_err();
    assert!(matches!(e, Error::Fragment { channel: 1, .. }), "{e:?}");
    assert_eq!(rx.state(), State::Closed);
    assert_eq!(rx.reassembly_bytes(), 0);
    assert!(rx.lend_direct().is_none());
}

#[test]
fn a_buffer_lent_when_the_session_ends_is_dropped() {
    let (mut rx, stream, now) = inside_a_large_fragment();
    let mut d = rx.lend_direct().expect("lent");
    d.buf()
        .extend_from_slice(&stream[HEADER_LEN + 100..HEADER_LEN + 200]);
    rx.transport_lost(now);
    rx.return_direct(d, now).unwrap();
    assert_eq!(rx.reassembly_bytes(), 0);
    assert!(rx.lend_direct().is_none());
    assert!(messages(&mut rx).is_empty());
}

#[test]
fn a_fragment_header_that_breaks_the_rules_fails_before_its_payload_comes() {
    let now = Instant::now();
    let (mut tx, mut rx) = established(Config::default(), Config::default(), now);
    tx.send(1, pattern(300 * KIB, 1), now).unwrap();
    let mut stream = wire(&mut tx);
    // The first fragment announces a message shorter than itself.
    stream[20..24].copy_from_slice(&(1000u32).to_be_bytes());
    let mut buf = BytesMut::from(&stream[..HEADER_LEN + 100]);
    let e = rx.handle_input(&mut buf, now).unwrap_err();
    assert!(matches!(e, Error::Fragment { channel: 1, .. }), "{e:?}");
    assert_eq!(rx.state(), State::Closed);
    assert!(rx.lend_direct().is_none());
}

#[test]
fn input_while_the_buffer_is_lent_fails_the_session_without_a_panic() {
    let (mut rx, stream, now) = inside_a_large_fragment();
    let d = rx.lend_direct().expect("lent");
    // (A driver that forgot the lent buffer and hands the fragment's bytes as input.)
    let mut more = BytesMut::from(&stream[HEADER_LEN + 100..HEADER_LEN + 200]);
    let e = rx.handle_input(&mut more, now).unwrap_err();
    assert!(matches!(e, Error::Fragment { channel: 1, .. }), "{e:?}");
    assert_eq!(rx.state(), State::Closed);
    rx.return_direct(d, now).unwrap();
    assert_eq!(rx.reassembly_bytes(), 0);
}
