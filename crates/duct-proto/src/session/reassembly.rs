//! Reassembly of fragmented messages, per channel, bounded in bytes and time.
//!
//! Fragments of one message arrive in order on one channel (the sender never interleaves two
//! messages of the same channel); fragments of different channels may interleave. So there is
//! at most one message in reassembly per channel.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::Error;

/// Free buffers of reassembled messages kept for the next ones, at most: what a pipe keeps
/// of its own once the application has dropped every message.
const SPARES: usize = 2;
/// Handles on buffers of reassembled messages kept, free or not, at most. A buffer the
/// application still holds (a message queued unread, or kept) costs nothing more to keep a
/// handle on, and is reused once it lets go: so a stream of large messages that the
/// application takes a few behind allocates nothing in the steady state, as long as it is
/// at most this many behind.
const HANDLES: usize = 32;
/// Bytes of the buffers handles are kept on, at most (the oldest go first): what a pipe may
/// still hold of its own right after the application lets go of the messages it kept, until
/// the next message or the session's next timer ([`ReassemblyBuffer::trim`]) frees all but
/// [`SPARES`] of them. (1 MiB messages taken up to seven behind still reuse their buffers.)
const KEPT_BYTES: usize = 8 << 20;
/// Only buffers of messages up to this size are kept for reuse.
const SPARE_MAX: usize = 1 << 20;

struct Partial {
    buf: BytesMut,
    /// The announced length.
    total: usize,
    /// The bytes the fragments whose headers came carry: `buf.len()` and what is still to
    /// come of the last one.
    promised: usize,
    started: Instant,
}

/// Makes room in `p.buf` for `n` more bytes: at least doubling (a message grows in few
/// steps), never past the announced length.
fn grow(p: &mut Partial, n: usize) {
    let new_len = p.buf.len() + n;
    if p.buf.capacity() < new_len {
        let target = (p.buf.capacity() * 2).max(new_len).min(p.total);
        p.buf.reserve(target - p.buf.len());
    }
}

/// A handle on the buffer of a reassembled message, kept for a later one.
struct Kept {
    buf: BytesMut,
    /// Nothing else refers to the buffer, which `buf` has taken back whole.
    free: bool,
    /// The buffer's size: its message and the room left after it when it was kept.
    size: usize,
}

impl Kept {
    /// Whether nothing else refers to the buffer (no message made in it is alive); if so,
    /// `buf` takes back the whole allocation. (Asking for more than the room it has left makes
    /// `try_reclaim` check; room left after a message still alive does not count.)
    fn is_free(&mut self) -> bool {
        if !self.free {
            self.free = self.buf.try_reclaim(self.buf.capacity() + 1);
        }
        self.free
    }
}

/// Messages in reassembly, at most one per channel.
pub(crate) struct ReassemblyBuffer {
    partials: HashMap<u16, Partial>,
    held: usize,
    limit: usize,
    max_message: usize,
    timeout: Duration,
    /// Handles on the buffers of the last messages reassembled, oldest first (at most
    /// [`HANDLES`], of which at most [`SPARES`] free): once the application has dropped such
    /// a message, its buffer takes the next one, which then grows without allocating as far
    /// as the last one did (a stream of large messages allocates nothing in the steady
    /// state).
    spares: VecDeque<Kept>,
}

impl ReassemblyBuffer {
    pub(crate) fn new(limit: usize, max_message: usize, timeout: Duration) -> Self {
        ReassemblyBuffer {
            partials: HashMap::new(),
            held: 0,
            limit,
            max_message,
            timeout,
            spares: VecDeque::new(),
        }
    }

    /// Bytes currently held in partial messages.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    #[inline]
    pub(crate) fn in_progress(&self, channel: u16) -> bool {
        !self.partials.is_empty() && self.partials.contains_key(&channel)
    }

    fn charge(&mut self, n: usize) -> Result<(), Error> {
        let needed = self.held + n;
        if needed > self.limit {
            return Err(Error::ReassemblyLimit {
                needed: needed as u64,
                limit: self.limit as u64,
            });
        }
        self.held = needed;
        Ok(())
    }

    /// The header of a message's first fragment: a message of `total` bytes whose first
    /// frame carries `frame_len` of them, to come with [`ReassemblyBuffer::extend`] (or a
    /// lent buffer: [`ReassemblyBuffer::lend`]).
    pub(crate) fn start_frame(
        &mut self,
        channel: u16,
        total: usize,
        frame_len: usize,
        now: Instant,
    ) -> Result<(), Error> {
        if self.in_progress(channel) {
            return Err(Error::Fragment {
                channel,
                what: "a new message began before the previous fragmented message finished",
            });
        }
        if total > self.max_message {
            return Err(Error::MessageTooLarge {
                size: total as u64,
                max: self.max_message as u64,
            });
        }
        if frame_len == 0 {
            return Err(Error::Fragment {
                channel,
                what: "empty non-final fragment",
            });
        }
        if frame_len >= total {
            return Err(Error::Fragment {
                channel,
                what: "first fragment is not shorter than the announced message length",
            });
        }
        // Grow with the data actually received (or one frame's worth, which the frame
        // limit bounds), not with the announced length: a peer that announces a large
        // message and sends one frame makes us allocate that frame. (Any reservation for the
        // announced length is multiplied by the number of channels a peer can open.) A kept
        // buffer of an earlier message, which the data received then grew, serves first.
        // (A free one first; else room left after a message still alive.)
        let found = (self.spares.iter_mut())
            .position(|k| k.is_free() && k.buf.capacity() >= frame_len)
            .or_else(|| (self.spares.iter_mut()).position(|k| k.buf.try_reclaim(frame_len)));
        let buf = match found {
            Some(i) => self.spares.remove(i).expect("found").buf,
            None => BytesMut::new(),
        };
        self.partials.insert(
            channel,
            Partial {
                buf,
                total,
                promised: frame_len,
                started: now,
            },
        );
        Ok(())
    }

    /// The header of a continuation fragment carrying `frame_len` bytes (to come with
    /// [`ReassemblyBuffer::extend`] or a lent buffer), checked against the announced length;
    /// the message is complete once they came, if `last` (see [`ReassemblyBuffer::finish`]).
    pub(crate) fn next_frame(
        &mut self,
        channel: u16,
        frame_len: usize,
        last: bool,
    ) -> Result<(), Error> {
        let Some(p) = self.partials.get_mut(&channel) else {
            return Err(Error::Fragment {
                channel,
                what: "continuation fragment without a first fragment",
            });
        };
        debug_assert_eq!(p.promised, p.buf.len(), "the previous frame is complete");
        let new_len = p.promised + frame_len;
        if new_len > p.total {
            return Err(Error::Fragment {
                channel,
                what: "fragments exceed the announced message length",
            });
        }
        if !last && frame_len == 0 {
            return Err(Error::Fragment {
                channel,
                what: "empty non-final fragment",
            });
        }
        if last && new_len != p.total {
            return Err(Error::Fragment {
                channel,
                what: "final fragment ends before the announced message length",
            });
        }
        p.promised = new_len;
        Ok(())
    }

    /// Bytes of the current fragment of `channel`'s message (at most what its header
    /// announced: the caller cuts them so).
    pub(crate) fn extend(&mut self, channel: u16, data: &[u8]) -> Result<(), Error> {
        self.charge(data.len())?;
        let p = self
            .partials
            .get_mut(&channel)
            .expect("a fragment's bytes follow its header");
        debug_assert!(p.buf.len() + data.len() <= p.promised);
        grow(p, data.len());
        p.buf.extend_from_slice(data);
        Ok(())
    }

    /// The buffer of `channel`'s message, with room for `room` more bytes of its current
    /// fragment, lent out to be read into in place (no copy); give it back with
    /// [`ReassemblyBuffer::give_back`]. `None`: no message in reassembly there.
    pub(crate) fn lend(&mut self, channel: u16, room: usize) -> Option<BytesMut> {
        let p = self.partials.get_mut(&channel)?;
        debug_assert!(p.buf.len() + room <= p.promised);
        grow(p, room);
        Some(std::mem::take(&mut p.buf))
    }

    /// Takes back a buffer [`ReassemblyBuffer::lend`] lent, `filled` bytes longer than it was
    /// (counted as those of [`ReassemblyBuffer::extend`]). A buffer whose message was dropped
    /// meanwhile (the session failed or closed) is dropped.
    pub(crate) fn give_back(
        &mut self,
        channel: u16,
        buf: BytesMut,
        filled: usize,
    ) -> Result<(), Error> {
        let Some(p) = self.partials.get_mut(&channel) else {
            return Ok(());
        };
        debug_assert!(p.buf.is_empty(), "lent");
        debug_assert!(buf.len() <= p.promised);
        p.buf = buf;
        self.charge(filled)
    }

    /// The message on `channel`, complete (the last fragment's bytes all came): taken out of
    /// reassembly.
    pub(crate) fn finish(&mut self, channel: u16) -> Bytes {
        let mut p = self
            .partials
            .remove(&channel)
            .expect("a message in reassembly");
        debug_assert_eq!(p.buf.len(), p.total);
        self.held -= p.buf.len();
        let message = p.buf.split().freeze();
        if message.len() <= SPARE_MAX {
            let size = message.len() + p.buf.capacity();
            self.keep(p.buf, size);
        }
        message
    }

    /// Keeps a handle on `buf` (`size` bytes), whose message was just handed out, for a
    /// later message: lets go of the oldest handles beyond [`HANDLES`] or [`KEPT_BYTES`],
    /// and of the oldest free buffers beyond [`SPARES`] (a free buffer is taken back whole,
    /// which the next message would do anyway).
    fn keep(&mut self, buf: BytesMut, size: usize) {
        self.spares.push_back(Kept {
            buf,
            free: false,
            size,
        });
        let mut bytes = self.kept_bytes();
        while self.spares.len() > HANDLES || bytes > KEPT_BYTES {
            let Some(k) = self.spares.pop_front() else {
                break;
            };
            bytes -= k.size;
        }
        self.trim();
    }

    /// Bytes of the buffers handles are kept on (see [`KEPT_BYTES`]).
    fn kept_bytes(&self) -> usize {
        self.spares.iter().map(|k| k.size).sum()
    }

    /// Lets go of the oldest free buffers beyond [`SPARES`]: what the application let go of
    /// since the last message does not stay with the pipe. Called at every message kept and
    /// by the session's timer.
    pub(crate) fn trim(&mut self) {
        let mut free = 0;
        // Newest first: the free ones kept are the most recently used.
        for i in (0..self.spares.len()).rev() {
            if self.spares[i].is_free() {
                free += 1;
                if free > SPARES {
                    self.spares.remove(i);
                }
            }
        }
    }

    /// The earliest moment a partial message expires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.partials
            .values()
            .map(|p| p.started + self.timeout)
            .min()
    }

    /// Fails if a partial message has been waiting for longer than the timeout. Of several
    /// expired ones the lowest channel is named, so the outcome does not depend on hash order.
    pub(crate) fn check_timeouts(&self, now: Instant) -> Result<(), Error> {
        let expired = self
            .partials
            .iter()
            .filter(|(_, p)| now >= p.started + self.timeout)
            .map(|(&channel, _)| channel)
            .min();
        match expired {
            Some(channel) => Err(Error::ReassemblyTimeout {
                channel,
                after: self.timeout,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.partials.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(r: &mut ReassemblyBuffer, channel: u16, data: &[u8], now: Instant) -> Bytes {
        let half = data.len() / 2;
        r.start_frame(channel, data.len(), half, now).unwrap();
        r.extend(channel, &data[..half]).unwrap();
        r.next_frame(channel, data.len() - half, true).unwrap();
        r.extend(channel, &data[half..]).unwrap();
        r.finish(channel)
    }

    #[test]
    fn a_message_s_buffer_takes_the_next_once_the_application_dropped_it() {
        let now = Instant::now();
        let mut r = ReassemblyBuffer::new(64 << 20, 64 << 20, Duration::from_secs(1));
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let first = whole(&mut r, 1, &data, now);
        assert_eq!(first[..], data[..]);
        let at = first.as_ptr();
        // Still held: the next message gets a buffer of its own.
        let second = whole(&mut r, 2, &data, now);
        assert_eq!(second[..], data[..]);
        assert_ne!(second.as_ptr(), at);
        drop(first);
        // Dropped: its buffer takes the next one.
        let third = whole(&mut r, 1, &data[..150_000], now);
        assert_eq!((third.as_ptr(), &third[..]), (at, &data[..150_000]));
        assert_eq!(r.held(), 0);
        drop((second, third));
        // Larger than SPARE_MAX: reassembled, not kept.
        let big = vec![9u8; SPARE_MAX + 1];
        let kept = r.spares.len();
        assert_eq!(whole(&mut r, 3, &big, now)[..], big[..]);
        assert_eq!(r.spares.len(), kept);
        // A peer that announces much and sends little still costs only what came before:
        // at most a kept buffer, never the announced length.
        r.start_frame(4, 60 << 20, 1, now).unwrap();
        r.extend(4, b"x").unwrap();
        assert!(r.partials[&4].buf.capacity() <= SPARE_MAX);
        assert!(r.spares.len() <= SPARES);
    }

    /// An application that takes its messages a few behind (here it holds the last five
    /// while the next one arrives): handles on the buffers it holds are kept, so that each
    /// is reused once let go; once it has let go of them all, two stay. (That nothing is
    /// allocated then is tests/memory.rs's to show: addresses alone cannot tell a reused
    /// buffer from a new one the allocator put where a freed one was.)
    #[test]
    fn messages_taken_a_few_behind_reuse_their_buffers() {
        let now = Instant::now();
        let mut r = ReassemblyBuffer::new(64 << 20, 64 << 20, Duration::from_secs(1));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut held = std::collections::VecDeque::new();
        let mut buffers = std::collections::HashSet::new();
        for i in 0..40 {
            let message = whole(&mut r, 1, &data, now);
            assert_eq!(message[..], data[..]);
            buffers.insert(message.as_ptr());
            // Kept: the five held before it came, this one, and at most two free.
            let kept = r.spares.len();
            assert!(
                (i.min(5) + 1..=8).contains(&kept),
                "message {i}: {kept} kept"
            );
            held.push_back(message);
            if held.len() > 5 {
                held.pop_front();
            }
        }
        assert_eq!(buffers.len(), 6);
        drop(held);
        let message = whole(&mut r, 1, &data, now);
        assert!(buffers.contains(&message.as_ptr()));
        drop(message);
        // Only two of the freed buffers stay with the pipe (beside the one still held).
        let last = whole(&mut r, 2, &data[..10], now);
        let free = r
            .spares
            .iter_mut()
            .map(Kept::is_free)
            .filter(|&f| f)
            .count();
        assert_eq!((free, r.spares.len()), (SPARES, SPARES + 1));
        drop(last);
    }

    /// Handles on buffers the application holds are kept up to [`KEPT_BYTES`] in all (the
    /// oldest go first): an application holding many large messages does not leave the
    /// pipe with as many buffers once it lets go.
    #[test]
    fn handles_kept_are_bounded_in_bytes() {
        let now = Instant::now();
        let mut r = ReassemblyBuffer::new(64 << 20, 64 << 20, Duration::from_secs(1));
        let data = vec![5u8; 1_000_000];
        let mut held = Vec::new();
        for i in 0..12 {
            let message = whole(&mut r, 1, &data, now);
            let bytes = r.kept_bytes();
            assert!(bytes <= KEPT_BYTES, "message {i}: {bytes} bytes kept");
            assert!(bytes >= data.len(), "message {i}: its own buffer is kept");
            held.push(message);
        }
        // (As many as fit: more than the two free ones an application that lets go keeps.)
        assert_eq!(r.spares.len(), KEPT_BYTES / data.len());
        drop(held);
        r.trim();
        assert_eq!(r.spares.len(), SPARES);
    }
}
