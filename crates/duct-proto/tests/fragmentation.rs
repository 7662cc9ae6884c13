//! Fragmentation and reassembly between two sessions: messages around the frame-size
//! boundaries and up to 16 MiB arrive intact, fragments of different channels interleave
//! freely, and order per channel holds. Frames are moved whole (`poll_transmit` →
//! `handle_frame`), in interleavings built by hand or drawn by proptest.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use duct_proto::wire::{flags, FrameKind, Header};
use duct_proto::{Config, Session};
use proptest::prelude::*;

use common::{established, frames, messages, pattern, proptest_config, small_frames};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Sends `payload` on `channel` from `s` and returns its frames, checking the fragment flags,
/// the total length announced on the first fragment, and that every fragment is a view of
/// `payload` (not a copy).
fn send_frames(
    s: &mut Session,
    channel: u16,
    payload: &Bytes,
    frame_max: usize,
) -> Vec<(Header, Bytes)> {
    s.send(channel, payload.clone(), Instant::now())
        .expect("send");
    let fs = frames(s);
    let expected = payload.len().div_ceil(frame_max).max(1);
    assert_eq!(
        fs.len(),
        expected,
        "fragments of a {} byte message",
        payload.len()
    );
    let mut off = 0;
    for (i, (h, p)) in fs.iter().enumerate() {
        let (first, last) = (i == 0, i + 1 == fs.len());
        assert_eq!(h.kind, FrameKind::Data);
        assert_eq!(h.channel, channel);
        assert_eq!(
            h.has(flags::MORE_FRAGMENTS),
            !last,
            "MORE_FRAGMENTS on fragment {i}"
        );
        assert_eq!(
            h.has(flags::CONTINUATION),
            !first,
            "CONTINUATION on fragment {i}"
        );
        let aux = if first && !last {
            payload.len() as u32
        } else {
            0
        };
        assert_eq!(h.aux, aux, "aux on fragment {i}");
        assert!(p.len() <= frame_max);
        assert!(last || !p.is_empty(), "non-final fragments are not empty");
        if !p.is_empty() {
            assert_eq!(
                p.as_ptr(),
                payload[off..].as_ptr(),
                "fragment {i} is a view of the message"
            );
        }
        off += p.len();
    }
    assert_eq!(off, payload.len());
    fs
}

/// Feeds per-channel frame queues to `to`, taking the next frame from the queue `pick` names
/// among the non-empty ones, until all are empty; checks after every frame that reassembly
/// holds no more than `reassembly_limit`. Returns what `to` delivered.
fn deliver_interleaved(
    to: &mut Session,
    mut queues: Vec<VecDeque<(Header, Bytes)>>,
    reassembly_limit: usize,
    mut pick: impl FnMut(usize) -> usize,
) -> Vec<(u16, Bytes)> {
    let now = Instant::now();
    loop {
        let live: Vec<usize> = (0..queues.len())
            .filter(|&i| !queues[i].is_empty())
            .collect();
        if live.is_empty() {
            break;
        }
        let q = live[pick(live.len()) % live.len()];
        let (h, p) = queues[q].pop_front().unwrap();
        to.handle_frame(h, p, now)
            .expect("well-formed fragments are accepted");
        assert!(to.reassembly_bytes() <= reassembly_limit);
    }
    assert_eq!(to.reassembly_bytes(), 0, "nothing left in reassembly");
    messages(to)
        .into_iter()
        .map(|m| (m.channel, m.payload))
        .collect()
}

fn by_channel(msgs: impl IntoIterator<Item = (u16, Bytes)>) -> BTreeMap<u16, Vec<Bytes>> {
    let mut m: BTreeMap<u16, Vec<Bytes>> = BTreeMap::new();
    for (c, p) in msgs {
        m.entry(c).or_default().push(p);
    }
    m
}

/// Messages of 0, 1, 64 KiB−1, 64 KiB, 64 KiB+1 and 16 MiB bytes, each on its own channel,
/// with the fragments of all channels dealt out round-robin (dialer → listener) and in a
/// seeded random interleaving (listener → dialer).
#[test]
fn boundary_sizes_arrive_intact_with_channels_interleaved() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    let limit = Config::default().reassembly_limit;
    let frame_max = 64 * KIB;
    let sizes = [0, 1, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 16 * MIB];
    let sent: Vec<(u16, Bytes)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| (10 + i as u16, pattern(size, i as u64)))
        .collect();

    let queues = sent
        .iter()
        .map(|(c, p)| send_frames(&mut d, *c, p, frame_max).into())
        .collect();
    let mut turn = 0usize;
    let got = deliver_interleaved(&mut l, queues, limit, |live| {
        turn += 1;
        turn % live
    });
    assert_eq!(by_channel(got), by_channel(sent.clone()));

    let queues = sent
        .iter()
        .map(|(c, p)| send_frames(&mut l, *c, p, frame_max).into())
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let got = deliver_interleaved(&mut d, queues, limit, |live| rng.usize(..live));
    assert_eq!(by_channel(got), by_channel(sent));
}

/// Two fragmented messages and a small one on one channel, interleaved with another
/// channel's fragments: each channel's messages arrive in the order sent.
#[test]
fn order_per_channel_holds_while_other_channels_interleave() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), small_frames(), now);
    let a1 = pattern(3000, 1);
    let a2 = pattern(5 * KIB, 2);
    let a3 = pattern(10, 3);
    let b1 = pattern(2500, 4);
    let b2 = pattern(0, 5);
    let mut qa: VecDeque<_> = send_frames(&mut d, 1, &a1, KIB).into();
    qa.extend(send_frames(&mut d, 1, &a2, KIB));
    qa.extend(send_frames(&mut d, 1, &a3, KIB));
    let mut qb: VecDeque<_> = send_frames(&mut d, 2, &b1, KIB).into();
    qb.extend(send_frames(&mut d, 2, &b2, KIB));
    assert_eq!((qa.len(), qb.len()), (3 + 5 + 1, 3 + 1));

    // By hand: b, a, a, b, a, b, a..., then the rest of b.
    let order = [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1];
    let mut queues = [qa, qb];
    for &q in &order {
        let (h, p) = queues[q]
            .pop_front()
            .expect("the order names only live queues");
        l.handle_frame(h, p, now).unwrap();
    }
    assert!(queues.iter().all(VecDeque::is_empty));
    let got: Vec<_> = messages(&mut l)
        .into_iter()
        .map(|m| (m.channel, m.payload))
        .collect();
    // b1 completes at its third fragment (the 6th frame), a1 at the 5th.
    let expected = vec![(1, a1), (2, b1), (1, a2), (1, a3), (2, b2)];
    assert_eq!(got, expected);
    assert_eq!(l.reassembly_bytes(), 0);
}

/// The frame limit is the peer's: with a 1024-byte limit, 1024 bytes go in one frame and
/// 1025 in two (1024 + 1).
#[test]
fn the_peer_frame_limit_decides_where_messages_are_cut() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), small_frames(), now);
    let one = send_frames(&mut d, 0, &pattern(1024, 1), KIB);
    assert_eq!(one.len(), 1);
    let two = send_frames(&mut d, 0, &pattern(1025, 2), KIB);
    assert_eq!((two[0].1.len(), two[1].1.len()), (1024, 1));
    for (h, p) in one.into_iter().chain(two) {
        l.handle_frame(h, p, now).unwrap();
    }
    let got = messages(&mut l);
    assert_eq!(got[0].payload, pattern(1024, 1));
    assert_eq!(got[1].payload, pattern(1025, 2));
    // The dialer itself accepts 64 KiB frames, so the listener sends it 1025 bytes whole.
    let back = send_frames(&mut l, 0, &pattern(1025, 3), 64 * KIB);
    assert_eq!(back.len(), 1);
}

/// A message exactly as large as the peer allows is sent and reassembled.
#[test]
fn message_of_exactly_the_max_message_size_arrives() {
    let now = Instant::now();
    let listener = Config {
        max_message_size: 10_000,
        ..small_frames()
    };
    let (mut d, mut l) = established(Config::default(), listener, now);
    let payload = pattern(10_000, 9);
    for (h, p) in send_frames(&mut d, 4, &payload, KIB) {
        l.handle_frame(h, p, now).unwrap();
    }
    assert_eq!(messages(&mut l)[0].payload, payload);
}

/// A workload: messages as (channel, size), sent in this order.
fn arb_workload() -> impl Strategy<Value = Vec<(u16, usize)>> {
    prop::collection::vec((0u16..4, prop_oneof![0usize..1100, 0usize..6000]), 1..24)
}

proptest! {
    #![proptest_config(proptest_config(96))]

    /// Random sizes on random channels, fragments dealt to the receiver in a random
    /// interleaving across channels: every message arrives intact and in order per channel,
    /// and reassembly never holds more than its cap.
    #[test]
    fn random_messages_and_interleavings_arrive_intact(
        workload in arb_workload(),
        seed in any::<u64>(),
        dialer_sends in any::<bool>(),
    ) {
        let now = Instant::now();
        // Four channels with at most one partial message of under 6000 bytes each.
        let limit = 4 * 6000;
        let config = Config { reassembly_limit: limit, ..small_frames() };
        let (mut d, mut l) = established(config.clone(), config, now);
        let (from, to) = if dialer_sends { (&mut d, &mut l) } else { (&mut l, &mut d) };
        let mut queues: Vec<VecDeque<(Header, Bytes)>> = vec![VecDeque::new(); 4];
        let mut sent = Vec::new();
        for (i, &(channel, size)) in workload.iter().enumerate() {
            let payload = pattern(size, seed ^ i as u64);
            queues[channel as usize].extend(send_frames(from, channel, &payload, KIB));
            sent.push((channel, payload));
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let got = deliver_interleaved(to, queues, limit, |live| rng.usize(..live));
        prop_assert_eq!(by_channel(got), by_channel(sent));
    }
}
