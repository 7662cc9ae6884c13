//! Memory stays bounded by the configured caps, not by what a peer announces: a counting
//! allocator measures what the session allocates while a hostile peer opens fragmented
//! messages on many channels.

#[path = "common/alloc.rs"]
mod alloc;
mod common;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use duct_proto::wire::{flags, Header};
use duct_proto::Config;

use common::{data_header, established, frames, pattern};

const CHANNELS: u16 = 2048;

/// 2048 channels each start a message announced at 1 MB with a 1-byte first fragment: the
/// session holds 2048 bytes and must not allocate for the announced totals.
#[test]
fn announced_totals_do_not_reserve_memory() {
    let now = Instant::now();
    let (_, mut l) = established(Config::default(), Config::default(), now);
    let (_, usage) = alloc::measure(|| {
        for channel in 0..CHANNELS {
            let mut h = data_header(channel, flags::MORE_FRAGMENTS, 1_000_000);
            h.payload_len = 1;
            l.handle_frame(h, Bytes::from_static(b"x"), now).unwrap();
        }
    });
    assert_eq!(l.reassembly_bytes(), CHANNELS as usize);
    // Bookkeeping per partial message is allowed (a map entry, a small buffer); 64 KiB per
    // channel, 128 MiB in all, is not.
    assert!(
        usage.peak < 2 * 1024 * 1024,
        "2048 one-byte partials allocated {usage:?}"
    );
}

/// Partial messages grown one small fragment at a time hold at most about twice their bytes.
#[test]
fn growing_partials_stay_within_a_small_multiple_of_their_bytes() {
    let now = Instant::now();
    let (_, mut l) = established(Config::default(), Config::default(), now);
    let chunk = Bytes::from(vec![7u8; 100]);
    let (_, usage) = alloc::measure(|| {
        for channel in 0..64u16 {
            let h = Header {
                payload_len: 100,
                ..data_header(channel, flags::MORE_FRAGMENTS, 1 << 24)
            };
            l.handle_frame(h, chunk.clone(), now).unwrap();
        }
        for _ in 0..99 {
            for channel in 0..64u16 {
                let flags = flags::CONTINUATION | flags::MORE_FRAGMENTS;
                let h = Header {
                    payload_len: 100,
                    ..data_header(channel, flags, 0)
                };
                l.handle_frame(h, chunk.clone(), now).unwrap();
            }
        }
    });
    let held = l.reassembly_bytes();
    assert_eq!(held, 64 * 100 * 100);
    assert!(
        usage.peak <= 2 * held + 256 * 1024,
        "{held} bytes held, allocated {usage:?}"
    );
}

/// The measurement itself works: without this, a broken allocator hook would make every
/// "allocated little" assertion above pass vacuously.
#[test]
fn measurement_sees_allocations() {
    let (v, usage) = alloc::measure(|| vec![1u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(usage.largest >= 1 << 20, "{usage:?}");
    assert!(usage.peak >= 1 << 20, "{usage:?}");
}

/// A receiver that takes large (fragmented) messages a few behind, holding the last five
/// while the next one arrives, reuses their buffers: once it has warmed up, reassembling
/// more of them allocates nothing as large as a message (what was left is bookkeeping: frame
/// lists, queue slots).
#[test]
fn large_messages_taken_a_few_behind_reuse_their_buffers() {
    const MESSAGE: usize = 200_000;
    const BEHIND: usize = 5;
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    let message = pattern(MESSAGE, 7);
    let mut held: VecDeque<Bytes> = VecDeque::new();
    let mut one = |d: &mut duct_proto::Session, l: &mut duct_proto::Session| {
        let got = fragmented(d, l, &message, now);
        assert_eq!(got, message);
        held.push_back(got);
        if held.len() > BEHIND {
            held.pop_front();
        }
    };
    for _ in 0..2 * BEHIND {
        one(&mut d, &mut l);
    }
    let ((), usage) = alloc::measure(|| {
        for _ in 0..50 {
            one(&mut d, &mut l);
        }
    });
    assert!(
        usage.largest < MESSAGE,
        "reassembly allocated a message's worth: {usage:?}"
    );
}

/// Buffers of large messages the application held and has let go of do not stay with the
/// pipe: at the session's next timer it keeps two of them (for the next messages), not one
/// for each message it was holding.
#[test]
fn buffers_let_go_of_are_freed_at_the_next_timer() {
    const MESSAGE: usize = 200_000;
    const HELD: usize = 12;
    let now = Instant::now();
    let (mut d, mut l) = established(Config::default(), Config::default(), now);
    let message = pattern(MESSAGE, 3);
    let ((), usage) = alloc::measure(|| {
        let mut held = Vec::new();
        for _ in 0..HELD {
            held.push(fragmented(&mut d, &mut l, &message, now));
        }
        drop(held);
        l.handle_timeout(now).expect("timer");
    });
    // (Two buffers, each grown a little past the message, and bookkeeping: frame lists,
    // queue slots.)
    assert!(
        usage.kept < (3 * MESSAGE) as isize,
        "{} bytes kept after the application let go of {HELD} messages of {MESSAGE}",
        usage.kept
    );
}

/// Sends `message` from `d` to `l` (in more than one frame) and returns it as `l` reassembled
/// it.
fn fragmented(
    d: &mut duct_proto::Session,
    l: &mut duct_proto::Session,
    message: &Bytes,
    now: Instant,
) -> Bytes {
    d.send(0, message.clone(), now).expect("send");
    let fs = frames(d);
    assert!(fs.len() > 1, "fragmented");
    for (h, p) in fs {
        l.handle_frame(h, p, now).expect("accepted");
    }
    l.poll_message().expect("reassembled").payload
}
