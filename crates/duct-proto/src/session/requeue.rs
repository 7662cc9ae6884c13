//! Moving unsent messages from a broken connection to the next one.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};

use super::Transmit;
use crate::wire::{flags, FrameKind, Header};

/// The messages recovered from the frames of a broken connection by [`requeue`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Whole messages, `(channel, payload)`, in the order they were queued (per channel).
    pub messages: Vec<(u16, Bytes)>,
    /// Messages that cannot be sent again: their first fragments were already written to
    /// the old connection (the peer dropped them with it).
    pub lost: usize,
    /// The channel of each lost message.
    pub lost_channels: Vec<u16>,
    /// Channels whose last message starts here but does not end: its other fragments were
    /// never framed (they are still in the outbox, which sends the message again whole: see
    /// `Outbox::rewind`), or they are missing, and the message is lost.
    pub open: Vec<u16>,
}

/// Recovers whole messages from `frames`, the frames a broken connection never wrote (in the
/// order they were queued), so that they can be sent again on a new session, which may
/// fragment them differently.
///
/// Single-frame messages come back as the same `Bytes` (no copy); fragmented ones are joined
/// (one copy, on this rare path). Control frames are skipped: they belong to the old session;
/// so are reliable frames, which the outbox sends again itself.
/// A message whose first fragments are missing (already written) is counted in
/// [`Requeued::lost`]; one whose last fragments are missing is reported in [`Requeued::open`].
pub fn requeue(frames: impl IntoIterator<Item = Transmit>) -> Requeued {
    let mut out = Requeued::default();
    // Messages being joined, by channel (fragments of different channels may interleave).
    let mut partial: HashMap<u16, BytesMut> = HashMap::new();
    // Channels whose current message is lost (its start was missing).
    let mut orphan: HashSet<u16> = HashSet::new();
    for t in frames {
        let Ok(h) = Header::decode(&t.header) else {
            continue;
        };
        if h.kind != FrameKind::Data || h.has(flags::RELIABLE) {
            // Reliable messages are in the outbox's unacknowledged record (or under way in
            // it): they are sent again from there, with their numbers.
            continue;
        }
        let more = h.has(flags::MORE_FRAGMENTS);
        let cont = h.has(flags::CONTINUATION);
        match (cont, more) {
            (false, false) => {
                if partial.remove(&h.channel).is_some() {
                    out.lost += 1;
                    out.lost_channels.push(h.channel);
                }
                out.messages.push((h.channel, t.payload));
            }
            (false, true) => {
                let mut buf = BytesMut::with_capacity((h.aux as usize).max(t.payload.len()));
                buf.extend_from_slice(&t.payload);
                if partial.insert(h.channel, buf).is_some() {
                    out.lost += 1;
                    out.lost_channels.push(h.channel);
                }
                orphan.remove(&h.channel);
            }
            (true, _) => match partial.get_mut(&h.channel) {
                Some(buf) => {
                    buf.extend_from_slice(&t.payload);
                    if !more {
                        let whole = partial.remove(&h.channel).expect("present").freeze();
                        out.messages.push((h.channel, whole));
                    }
                }
                None => {
                    // The start went out on the old connection: this message is lost, once.
                    if orphan.insert(h.channel) {
                        out.lost += 1;
                        out.lost_channels.push(h.channel);
                    }
                    if !more {
                        orphan.remove(&h.channel);
                    }
                }
            },
        }
    }
    out.open = partial.into_keys().collect();
    out.open.sort_unstable();
    out
}
