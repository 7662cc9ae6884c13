//! `Session::handle_input_to`: whole messages that need nothing more go straight to a caller
//! waiting for them, without being queued and taken again, exactly as
//! `poll_received_at` would have handed them out (same messages, same order, same bytes);
//! everything else is queued as `handle_input` queues it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::qos::{ChannelConfig, QosConfig};
use duct_proto::{Config, Payload, Received, Session, State, Transmit};

use common::{established, pattern, small_frames, wire};

/// Collects messages as a driver's batch of views does: a message of the chunk named last
/// is read from that chunk's handle, taken once per chunk (so a chunk number given to two
/// different chunks shows as wrong bytes).
#[derive(Default)]
struct Views {
    chunks: Vec<Bytes>,
    last: Option<u32>,
    msgs: Vec<(u16, usize, std::ops::Range<usize>)>,
}

impl Views {
    fn take(&mut self, r: Received<'_>) {
        let (chunk, range) = match r.payload {
            Payload::Whole(b) => {
                let len = b.len();
                self.chunks.push(b);
                self.last = None;
                (self.chunks.len() - 1, 0..len)
            }
            Payload::Part(p) => {
                let range = p.range();
                if self.last != Some(p.chunk_id()) {
                    self.last = Some(p.chunk_id());
                    self.chunks.push(p.take_chunk());
                }
                (self.chunks.len() - 1, range)
            }
        };
        self.msgs.push((r.channel, chunk, range));
    }

    fn messages(&self) -> Vec<(u16, Bytes)> {
        let m = self.msgs.iter();
        m.map(|(c, k, r)| (*c, self.chunks[*k].slice(r.clone())))
            .collect()
    }
}

/// Feeds `bytes` to `s` for a caller waiting for `max` messages; returns what went straight
/// to it.
fn feed_to(s: &mut Session, bytes: &[u8], max: usize, now: Instant) -> Vec<(u16, Bytes)> {
    let mut views = Views::default();
    let mut buf = BytesMut::from(bytes);
    let n = s
        .handle_input_to(&mut buf, now, max, &mut |r: Received<'_>| views.take(r))
        .expect("valid input");
    assert!(buf.is_empty(), "whole frames only");
    let got = views.messages();
    assert_eq!(n, got.len(), "the count returned is what the sink got");
    got
}

/// What waits in `s`'s receive queue, in order.
fn queued(s: &mut Session) -> Vec<(u16, Bytes)> {
    std::iter::from_fn(|| s.poll_message())
        .map(|d| (d.channel, d.payload))
        .collect()
}

/// What a session like `s` (made with `config`) hands out for `bytes` the usual way:
/// queued by `handle_input`, then taken.
fn reference(config: &Config, bytes: &[u8], now: Instant) -> Vec<(u16, Bytes)> {
    let (_, mut other) = established(config.clone(), config.clone(), now);
    let mut buf = BytesMut::from(bytes);
    other.handle_input(&mut buf, now).expect("valid input");
    queued(&mut other)
}

/// The frames `s` has to write, whole, as a frame transport (shared memory) carries them.
fn whole_frames(s: &mut Session) -> Vec<Transmit> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// Feeds whole frames to `s` as a frame transport's driver does for a caller waiting for
/// `max` messages (`Session::handle_raw_frame_untimed_to` where the frame needs no time, else
/// `handle_raw_frame`); returns what went straight to the caller, or the first error.
fn feed_frames_to(
    s: &mut Session,
    frames: &[Transmit],
    max: usize,
    now: Instant,
) -> Result<Vec<(u16, Bytes)>, duct_proto::Error> {
    let mut views = Views::default();
    let mut left = max;
    for t in frames {
        if s.frame_is_timeless(&t.header) {
            let sink = &mut |r: Received<'_>| views.take(r);
            s.handle_raw_frame_untimed_to(&t.header, t.payload.clone(), &mut left, sink)?;
        } else {
            s.handle_raw_frame(&t.header, t.payload.clone(), now)?;
        }
    }
    let got = views.messages();
    assert_eq!(
        max - left,
        got.len(),
        "what is counted off is what the sink got"
    );
    Ok(got)
}

fn send(s: &mut Session, channel: u16, payload: &Bytes, now: Instant) {
    s.send(channel, payload.clone(), now).expect("queued");
}

fn send_all(s: &mut Session, msgs: &[(u16, Bytes)], now: Instant) {
    for (c, p) in msgs {
        send(s, *c, p, now);
    }
}

#[test]
fn messages_go_straight_to_the_caller_up_to_max_and_the_rest_queue_in_order() {
    let now = Instant::now();
    let config = Config::default();
    let (mut d, mut l) = established(config.clone(), config.clone(), now);
    // Ten messages of different lengths on channels 0, 1 and 2 in turn.
    let sent: Vec<(u16, Bytes)> = (0..10u64)
        .map(|i| ((i % 3) as u16, pattern(i as usize * 13, i)))
        .collect();
    send_all(&mut d, &sent, now);
    let bytes = wire(&mut d);
    let usual = reference(&config, &bytes, now);
    assert_eq!(usual.len(), 10);
    let handed = feed_to(&mut l, &bytes, 4, now);
    assert_eq!(handed, usual[..4]);
    assert_eq!(l.message_len(), 6, "the rest waits in the queue");
    assert_eq!(queued(&mut l), usual[4..]);
    // A caller that waits for more than came takes all of it.
    send_all(&mut d, &sent, now);
    let bytes = wire(&mut d);
    assert_eq!(feed_to(&mut l, &bytes, 100, now), usual);
    assert_eq!(l.message_len(), 0);
    assert_eq!(l.message_bytes(), 0, "nothing counted as queued");
    // The same as whole frames (shared memory).
    send_all(&mut d, &sent, now);
    let frames = whole_frames(&mut d);
    assert_eq!(wire_of(&frames), bytes, "the same frames");
    let handed = feed_frames_to(&mut l, &frames, 4, now).expect("valid frames");
    assert_eq!(handed, usual[..4], "whole frames: up to max");
    assert_eq!(
        l.message_len(),
        6,
        "whole frames: the rest waits in the queue"
    );
    assert_eq!(queued(&mut l), usual[4..]);
    assert_eq!(
        l.message_bytes(),
        0,
        "nothing handed over counted as queued"
    );
    // One at a time, as `recv` takes them: each goes straight while nothing waits.
    for (c, p) in &sent {
        send(&mut d, *c, p, now);
        let frames = whole_frames(&mut d);
        assert_eq!(
            feed_frames_to(&mut l, &frames, 1, now).expect("valid frames"),
            [(*c, p.clone())]
        );
    }
    assert_eq!(l.message_len(), 0);
}

/// Sends, on one channel (the sender keeps their order): three small messages, a fragmented
/// one (over `small_frames`' 1024-byte frame limit), one more, one with a time to live, and
/// three more.
fn send_run_with_a_fragment_and_a_ttl(d: &mut Session, now: Instant) {
    let small = |i: u64| pattern(40, i);
    for i in 1..=3 {
        send(d, 1, &small(i), now);
    }
    send(d, 1, &pattern(5000, 9), now);
    send(d, 1, &small(4), now);
    let ttl = pattern(30, 10);
    d.send_with(1, ttl, Some(Duration::from_secs(60)), now)
        .expect("queued");
    for i in 5..8 {
        send(d, 1, &small(i), now);
    }
}

#[test]
fn a_message_that_needs_the_general_way_stops_the_hand_over() {
    let now = Instant::now();
    let config = small_frames();
    let (mut d, mut l) = established(config.clone(), config.clone(), now);
    send_run_with_a_fragment_and_a_ttl(&mut d, now);
    let bytes = wire(&mut d);
    let usual = reference(&config, &bytes, now);
    assert_eq!(usual.len(), 9);
    let handed = feed_to(&mut l, &bytes, 100, now);
    assert_eq!(handed, usual[..3], "up to the fragmented message");
    assert_eq!(queued(&mut l), usual[3..], "the rest in order, behind it");
    // The same as whole frames (shared memory).
    send_run_with_a_fragment_and_a_ttl(&mut d, now);
    let frames = whole_frames(&mut d);
    assert_eq!(wire_of(&frames), bytes, "the same frames");
    let handed = feed_frames_to(&mut l, &frames, 100, now).expect("valid frames");
    assert_eq!(
        handed,
        usual[..3],
        "whole frames: up to the fragmented message"
    );
    assert_eq!(
        queued(&mut l),
        usual[3..],
        "whole frames: the rest in order"
    );
}

#[test]
fn nothing_goes_straight_past_messages_already_waiting() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    let first: Vec<Bytes> = (0..3).map(|i| pattern(20, i)).collect();
    for p in &first {
        send(&mut d, 0, p, now);
    }
    // Read ahead for nobody: queued.
    let bytes = wire(&mut d);
    assert!(feed_to(&mut l, &bytes, 0, now).is_empty());
    let second: Vec<Bytes> = (3..6).map(|i| pattern(20, i)).collect();
    for p in &second {
        send(&mut d, 0, p, now);
    }
    let bytes = wire(&mut d);
    assert!(
        feed_to(&mut l, &bytes, 10, now).is_empty(),
        "behind the queued"
    );
    let all: Vec<(u16, Bytes)> = first
        .iter()
        .chain(&second)
        .map(|p| (0, p.clone()))
        .collect();
    assert_eq!(queued(&mut l), all);
}

#[test]
fn channels_of_different_receive_priorities_always_queue() {
    let now = Instant::now();
    let urgent = ChannelConfig {
        priority: 200,
        ..ChannelConfig::default()
    };
    let listener = Config {
        qos: Arc::new(QosConfig {
            channels: BTreeMap::from([(7u16, urgent)]),
            ..QosConfig::default()
        }),
        ..Config::default()
    };
    let (mut d, mut l) = established(Config::default(), listener, now);
    let bulk = pattern(100, 1);
    let ping = pattern(8, 2);
    let send_both = |d: &mut Session| {
        send(d, 0, &bulk, now);
        send(d, 7, &ping, now);
    };
    send_both(&mut d);
    let bytes = wire(&mut d);
    assert!(feed_to(&mut l, &bytes, 10, now).is_empty());
    // The later, more urgent message first, as the queue orders them.
    assert_eq!(queued(&mut l), [(7, ping.clone()), (0, bulk.clone())]);
    // The same as whole frames (shared memory).
    send_both(&mut d);
    let frames = whole_frames(&mut d);
    let handed = feed_frames_to(&mut l, &frames, 10, now).expect("valid frames");
    assert!(handed.is_empty());
    assert_eq!(queued(&mut l), [(7, ping), (0, bulk)]);
}

#[test]
fn reads_handed_over_one_after_the_other_are_told_apart() {
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    let mut views = Views::default();
    let mut sent = Vec::new();
    for read in 0..4u64 {
        for i in 0..5 {
            let p = pattern(30 + i, read * 10 + i as u64);
            send(&mut d, 0, &p, now);
            sent.push((0u16, p));
        }
        let mut buf = wire(&mut d);
        // One sink across the reads, as a batch that a caller fills over several calls.
        let n = l
            .handle_input_to(&mut buf, now, 100, &mut |r: Received<'_>| views.take(r))
            .expect("valid input");
        assert_eq!(n, 5);
    }
    assert_eq!(views.chunks.len(), 4, "one chunk per read");
    assert_eq!(views.messages(), sent);
}

#[test]
fn reliable_messages_go_straight_once_and_their_duplicates_not_at_all() {
    let now = Instant::now();
    let reliable = Config {
        qos: Arc::new(QosConfig {
            default: ChannelConfig {
                reliable: true,
                ..ChannelConfig::default()
            },
            ..QosConfig::default()
        }),
        ..Config::default()
    };
    let (mut d, mut l) = established(reliable.clone(), reliable, now);
    let sent: Vec<(u16, Bytes)> = (0..6).map(|i| (3u16, pattern(50, i))).collect();
    send_all(&mut d, &sent, now);
    let bytes = wire(&mut d);
    assert_eq!(feed_to(&mut l, &bytes, 100, now), sent);
    // The same frames again (a retransmission that crossed an ack): dropped.
    assert!(feed_to(&mut l, &bytes, 100, now).is_empty());
    assert_eq!(l.message_len(), 0);
    // They are owed an ack like any other.
    let later = now + Duration::from_secs(1);
    l.handle_timeout(later).expect("no failure");
    let acks = wire(&mut l);
    assert!(!acks.is_empty(), "an ack for the messages handed over");
}

#[test]
fn a_whole_frame_that_breaks_the_rules_fails_the_session_and_is_handed_to_nobody() {
    let now = Instant::now();
    let config = Config {
        max_message_size: 100,
        ..Config::default()
    };
    // A payload that is not as long as its header says.
    let (mut d, mut l) = established(Config::default(), config.clone(), now);
    send(&mut d, 0, &pattern(50, 1), now);
    let mut frames = whole_frames(&mut d);
    frames[0].payload.truncate(49);
    assert!(feed_frames_to(&mut l, &frames, 10, now).is_err());
    assert_eq!(l.state(), State::Closed);
    assert_eq!(l.message_len(), 0);
    // A message over the receiving side's size limit (which a sender that keeps to it
    // does not send: the frame is made longer).
    fails_lengthened(Config::default(), config.clone(), 100, 101, now);
    // A frame over the receiving side's frame limit (1024 bytes), within its message limit.
    let config = small_frames();
    fails_lengthened(config.clone(), config.clone(), 1000, 2000, now);
    // A whole message on a channel where a fragmented one is under way.
    let (mut d, mut l) = established(config.clone(), config, now);
    send(&mut d, 0, &pattern(3000, 3), now);
    let mut frames = whole_frames(&mut d);
    assert!(frames.len() > 1, "fragmented");
    frames.truncate(1);
    send(&mut d, 0, &pattern(10, 4), now);
    frames.extend(whole_frames(&mut d));
    assert!(feed_frames_to(&mut l, &frames, 10, now).is_err());
    assert_eq!(l.state(), State::Closed);
}

/// A `len`-byte message the dialer (`dialer`) sends, made `longer` bytes on the way (what a
/// sender that keeps to the limits does not send), fails the listener (`listener`) as a
/// whole frame.
fn fails_lengthened(dialer: Config, listener: Config, len: usize, longer: u32, now: Instant) {
    let (mut d, mut l) = established(dialer, listener, now);
    send(&mut d, 0, &pattern(len, 7), now);
    let mut frames = whole_frames(&mut d);
    frames[0].header[4..8].copy_from_slice(&longer.to_be_bytes());
    frames[0].payload = pattern(longer as usize, 7);
    assert!(feed_frames_to(&mut l, &frames, 10, now).is_err());
    assert_eq!(l.state(), State::Closed);
    assert_eq!(l.message_len(), 0);
}

/// The bytes a byte stream would carry for `frames`.
fn wire_of(frames: &[Transmit]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in frames {
        out.extend_from_slice(&t.header);
        out.extend_from_slice(&t.payload);
    }
    out
}
