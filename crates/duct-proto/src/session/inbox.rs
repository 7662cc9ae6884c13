//! The receive queue: messages waiting for the application, by the priority of their channel.
//!
//! A run of whole frames that arrived together (one read of a stream transport) is kept as one
//! *chunk*: the messages in it are queued as places in that chunk, and the chunk's bytes have
//! one handle however many messages it holds. So a message costs no reference count until the
//! application asks for a handle of its own ([`Payload::into_bytes`]); one that only looks at
//! the bytes ([`Payload::as_slice`], a driver filling a batch of views) costs none at all.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use bytes::{Buf, Bytes};

use super::Delivered;

/// Chunks kept while the oldest of them still has messages queued (a low-priority message
/// left waiting while higher priorities are taken, say). Beyond this many, the oldest chunk's
/// messages are given handles of their own and the chunk is let go, so the queue of chunks
/// stays bounded whatever the application leaves unread.
pub(super) const MAX_CHUNKS: usize = 256;

/// Where a queued message's payload is.
enum Held {
    /// In bytes of its own.
    Whole(Bytes),
    /// `len` bytes at `start` of the chunk numbered `chunk` (see [`Inbox::chunks`]).
    Part { chunk: u32, start: u32, len: u32 },
}

impl Held {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Held::Whole(b) => b.len(),
            Held::Part { len, .. } => *len as usize,
        }
    }
}

/// A received message waiting for the application, laid out flat in 40 bytes (every message
/// is moved into the queue and out again).
struct Inbound {
    payload: Held,
    channel: u16,
    /// It expires, at the next deadline in its class's `deadlines`.
    timed: bool,
}

// The layout the comment above promises: `Held::Part` fits beside `Bytes`'s pointers.
const _: () = assert!(std::mem::size_of::<Inbound>() <= 40);

/// The received messages of one priority.
struct Class {
    priority: u8,
    queue: VecDeque<Inbound>,
    /// The deadlines of the timed messages in `queue`, in the same order.
    deadlines: VecDeque<Instant>,
}

/// A message taken off the queue by [`Inbox::pop_next`], not yet handed out.
pub(super) struct Popped {
    m: Inbound,
    expires: Option<Instant>,
}

impl Popped {
    #[inline]
    pub(super) fn channel(&self) -> u16 {
        self.m.channel
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.m.payload.len()
    }

    #[inline]
    pub(super) fn expires(&self) -> Option<Instant> {
        self.expires
    }
}

/// Bytes that queued messages share (see the module's documentation).
struct Chunk {
    bytes: Bytes,
    /// Queued messages in it; 0 once let go (its bytes are then empty).
    parts: u32,
}

/// Received messages waiting for the application, by the priority of their channel (highest
/// first), in arrival order inside a priority: a realtime message never waits for the
/// application to take bulk that arrived before it.
#[derive(Default)]
pub(super) struct Inbox {
    /// Sorted by priority, highest first; a class stays once made (at most 256).
    classes: Vec<Class>,
    len: usize,
    /// The chunks messages are queued in, in the order they came, numbered from
    /// `first_chunk` on (wrapping); each still has messages queued, or a younger one does.
    chunks: VecDeque<Chunk>,
    first_chunk: u32,
    /// Messages [`Inbox::push_part`] queued for the chunk [`Inbox::add_chunk`] adds next.
    pending: u32,
    /// The class of the last message [`Inbox::push_part`] queued.
    last_part: usize,
}

/// Where the messages a receive hands out go ([`Session::poll_received_at`],
/// [`Session::handle_input_to`]): any `FnMut(Received)`, or a type of the driver's whose
/// [`ReceiveSink::deliver`] is inlined into the session's loops (a closure, even one marked
/// for inlining, is often left a call per message).
///
/// [`Session::poll_received_at`]: super::Session::poll_received_at
/// [`Session::handle_input_to`]: super::Session::handle_input_to
pub trait ReceiveSink {
    /// Takes one message.
    fn deliver(&mut self, r: Received<'_>);
}

impl<F: FnMut(Received<'_>) + ?Sized> ReceiveSink for F {
    #[inline(always)]
    fn deliver(&mut self, r: Received<'_>) {
        self(r)
    }
}

/// A message handed out by [`Session::poll_received_at`](super::Session::poll_received_at).
pub struct Received<'a> {
    /// The channel it arrived on.
    pub channel: u16,
    /// Where its payload is.
    pub payload: Payload<'a>,
}

impl Received<'_> {
    /// The message with a handle of its own on its payload.
    #[inline]
    pub fn into_delivered(self) -> Delivered {
        Delivered {
            channel: self.channel,
            payload: self.payload.into_bytes(),
        }
    }
}

/// The payload of a [`Received`] message.
pub enum Payload<'a> {
    /// In bytes of its own.
    Whole(Bytes),
    /// A place in a chunk of bytes that other messages of the same read share.
    Part(Part<'a>),
}

impl Payload<'_> {
    /// The payload's length.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Payload::Whole(b) => b.len(),
            Payload::Part(p) => p.len,
        }
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload's bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Whole(b) => b,
            Payload::Part(p) => p.as_slice(),
        }
    }

    /// The payload with a handle of its own (one reference count; none for the last message
    /// of a chunk, which takes the chunk's own handle).
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        match self {
            Payload::Whole(b) => b,
            Payload::Part(p) => p.into_bytes(),
        }
    }
}

/// A message's place in a chunk of received bytes (see [`Payload::Part`]).
pub struct Part<'a> {
    chunk: &'a mut Bytes,
    /// The chunk's number (low 32 bits) and [`LAST`]. One word: a sink that is not inlined
    /// reads its argument back in whole words, and a word put together from a 4-byte and a
    /// 1-byte store cannot be forwarded to such a read (a stall on every message).
    tag: u64,
    start: usize,
    len: usize,
}

/// [`Part::tag`]'s bit for "the chunk has no other message queued".
const LAST: u64 = 1 << 32;

impl<'a> Part<'a> {
    /// The message at `range` of `chunk`, the chunk numbered `id`; `last`: no other message
    /// of the chunk follows (the sink may take the chunk's own handle).
    #[inline(always)]
    pub(super) fn new(chunk: &'a mut Bytes, id: u32, last: bool, range: Range<usize>) -> Self {
        Part {
            chunk,
            tag: u64::from(id) | if last { LAST } else { 0 },
            start: range.start,
            len: range.len(),
        }
    }

    /// The chunk's number: the same for every message of one chunk, while any of them is
    /// queued (numbers are reused after 2³² chunks).
    #[inline]
    pub fn chunk_id(&self) -> u32 {
        self.tag as u32
    }

    /// The chunk has no other message queued.
    #[inline]
    fn last(&self) -> bool {
        self.tag & LAST != 0
    }

    /// Where the payload is in [`Part::take_chunk`]'s bytes.
    #[inline]
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// The payload's bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.chunk[self.range()]
    }

    /// A handle on the whole chunk: its own when this is the chunk's last queued message,
    /// else a new one (one reference count).
    #[inline]
    pub fn take_chunk(self) -> Bytes {
        if self.last() {
            std::mem::take(self.chunk)
        } else {
            self.chunk.clone()
        }
    }

    /// The payload with a handle of its own.
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        let range = self.range();
        if self.last() {
            let mut b = std::mem::take(self.chunk);
            b.truncate(range.end);
            b.advance(range.start);
            b
        } else {
            self.chunk.slice(range)
        }
    }
}

impl Inbox {
    #[inline]
    pub(super) fn push(&mut self, priority: u8, d: Delivered, expires: Option<Instant>) {
        let c = self.class(priority);
        let class = &mut self.classes[c];
        if let Some(e) = expires {
            class.deadlines.push_back(e);
        }
        class.queue.push_back(Inbound {
            payload: Held::Whole(d.payload),
            channel: d.channel,
            timed: expires.is_some(),
        });
        self.len += 1;
    }

    /// The index in `classes` of `priority`'s queue (made if need be). It stays valid until
    /// a queue is made for another priority.
    #[inline]
    pub(super) fn class(&mut self, priority: u8) -> usize {
        match self.classes.first() {
            Some(c) if c.priority == priority => 0,
            _ => self.find_class(priority),
        }
    }

    fn find_class(&mut self, priority: u8) -> usize {
        match self.classes.iter().position(|c| c.priority == priority) {
            Some(i) => i,
            None => {
                let i = self.classes.partition_point(|c| c.priority > priority);
                let class = Class {
                    priority,
                    queue: VecDeque::new(),
                    deadlines: VecDeque::new(),
                };
                self.classes.insert(i, class);
                i
            }
        }
    }

    /// Nothing is queued, and no chunk kept: a message handed out now, without queueing,
    /// overtakes none.
    #[inline]
    pub(super) fn is_idle(&self) -> bool {
        self.len == 0 && self.pending == 0 && self.chunks.is_empty()
    }

    /// Messages of the chunk numbered `id` (what [`Inbox::next_chunk`] said) were handed out
    /// without queueing: the number is used, and a later chunk gets another (a sink tells
    /// chunks apart by their numbers). (A chunk added under that number already used it.)
    #[inline]
    pub(super) fn used_chunk_number(&mut self, id: u32) {
        if self.next_chunk() == id {
            debug_assert!(self.chunks.is_empty(), "handed out only while idle");
            self.first_chunk = self.first_chunk.wrapping_add(1);
        }
    }

    /// The number the next chunk will have (see [`Inbox::add_chunk`]).
    #[inline]
    pub(super) fn next_chunk(&self) -> u32 {
        self.first_chunk.wrapping_add(self.chunks.len() as u32)
    }

    /// Queues, without deadline in the queue `class`, the message at `range` of `run`: as a
    /// place in the chunk [`Inbox::add_chunk`] adds next (`run`), which it must add before
    /// anything else is asked of the inbox. A range too large for a place (more than 4 GiB
    /// into a chunk, which frame limits rule out) gets a handle of its own.
    #[inline(always)]
    pub(super) fn push_part(
        &mut self,
        class: usize,
        channel: u16,
        run: &Bytes,
        range: Range<usize>,
    ) {
        // (One comparison: the range's end bounds its start and length.)
        if range.end <= u32::MAX as usize {
            self.pending += 1;
            self.last_part = class;
            // Built in the queue's slot, not in a local that is then copied: the copy's wide
            // loads would wait for the narrow stores of the fields (no store forwarding),
            // on every message.
            let chunk = self.next_chunk();
            self.push_held(
                class,
                channel,
                Held::Part {
                    chunk,
                    start: range.start as u32,
                    len: range.len() as u32,
                },
            );
        } else {
            let payload = whole(run, range);
            self.push_held(class, channel, payload);
        }
    }

    #[inline(always)]
    fn push_held(&mut self, class: usize, channel: u16, payload: Held) {
        self.classes[class].queue.push_back(Inbound {
            payload,
            channel,
            timed: false,
        });
        self.len += 1;
    }

    /// Adds the chunk the messages [`Inbox::push_part`] queued since the last call are in
    /// (none: nothing to keep). Keeps at most [`MAX_CHUNKS`] chunks.
    #[inline]
    pub(super) fn add_chunk(&mut self, mut bytes: Bytes) {
        let parts = std::mem::take(&mut self.pending);
        if parts == 0 {
            return;
        }
        if parts == 1 {
            // A read of one message (a ping-pong's): the message takes the chunk's handle,
            // unless a message of its class was queued after it (then the chunk is kept).
            let id = self.next_chunk();
            let back = self.classes.get_mut(self.last_part);
            if let Some(m) = back.and_then(|c| c.queue.back_mut()) {
                if let Held::Part { chunk, start, len } = m.payload {
                    if chunk == id {
                        bytes.truncate(start as usize + len as usize);
                        bytes.advance(start as usize);
                        m.payload = Held::Whole(bytes);
                        return;
                    }
                }
            }
        }
        self.chunks.push_back(Chunk { bytes, parts });
        if self.chunks.len() > MAX_CHUNKS {
            self.detach_first();
        }
    }

    /// Lets go of the oldest chunk, its queued messages given handles of their own.
    #[cold]
    fn detach_first(&mut self) {
        let Some(first) = self.chunks.pop_front() else {
            return;
        };
        let id = self.first_chunk;
        self.first_chunk = id.wrapping_add(1);
        let mut left = first.parts;
        for class in &mut self.classes {
            for m in class.queue.iter_mut() {
                if left == 0 {
                    break;
                }
                if let Held::Part { chunk, start, len } = m.payload {
                    if chunk == id {
                        let range = start as usize..start as usize + len as usize;
                        m.payload = Held::Whole(first.bytes.slice(range));
                        left -= 1;
                    }
                }
            }
        }
        self.drop_released();
    }

    /// The message the application takes next, and its deadline.
    #[inline]
    fn pop_entry(&mut self) -> Option<(Inbound, Option<Instant>)> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        for class in &mut self.classes {
            if let Some(m) = class.queue.pop_front() {
                let expires = if m.timed {
                    class.deadlines.pop_front()
                } else {
                    None
                };
                return Some((m, expires));
            }
        }
        None
    }

    /// The next message and its deadline.
    #[inline]
    pub(super) fn pop(&mut self) -> Option<(Delivered, Option<Instant>)> {
        let (m, expires) = self.pop_entry()?;
        let channel = m.channel;
        if let Held::Whole(payload) = m.payload {
            return Some((Delivered { channel, payload }, expires));
        }
        let mut d = None;
        self.hand(Popped { m, expires: None }, &mut |r: Received<'_>| {
            d = Some(r.into_delivered());
        });
        let d = d.unwrap_or(Delivered {
            channel,
            payload: Bytes::new(),
        });
        Some((d, expires))
    }

    /// The message the application takes next, for [`Inbox::hand`] or [`Inbox::discard`].
    #[inline]
    pub(super) fn pop_next(&mut self) -> Option<Popped> {
        let (m, expires) = self.pop_entry()?;
        Some(Popped { m, expires })
    }

    /// Hands `p` to `sink` as a [`Received`] (a chunk's message without a handle of its own).
    #[inline]
    pub(super) fn hand(&mut self, p: Popped, sink: &mut (impl ReceiveSink + ?Sized)) {
        let channel = p.m.channel;
        match p.m.payload {
            Held::Whole(payload) => sink.deliver(Received {
                channel,
                payload: Payload::Whole(payload),
            }),
            Held::Part { chunk, start, len } => {
                // (Counted out first: the chunk is let go after its last message.)
                let Some((i, c)) = self.count_out(chunk) else {
                    return;
                };
                let last = c.parts == 0;
                let (start, len) = (start as usize, len as usize);
                if start + len <= c.bytes.len() {
                    sink.deliver(Received {
                        channel,
                        payload: Payload::Part(Part {
                            chunk: &mut c.bytes,
                            tag: u64::from(chunk) | if last { LAST } else { 0 },
                            start,
                            len,
                        }),
                    });
                } else {
                    debug_assert!(false, "a queued message outside its chunk");
                }
                if last {
                    self.let_go(i);
                }
            }
        }
    }

    /// Drops `p`.
    #[inline]
    pub(super) fn discard(&mut self, p: Popped) {
        if let Held::Part { chunk, .. } = p.m.payload {
            if let Some((i, c)) = self.count_out(chunk) {
                if c.parts == 0 {
                    self.let_go(i);
                }
            }
        }
    }

    /// One message of chunk `id` left the queue: the chunk's index in `chunks` and the chunk
    /// (with no part left when that was its last: the caller then lets it go,
    /// [`Inbox::let_go`]).
    #[inline]
    fn count_out(&mut self, id: u32) -> Option<(usize, &mut Chunk)> {
        let i = id.wrapping_sub(self.first_chunk) as usize;
        let Some(c) = self.chunks.get_mut(i) else {
            debug_assert!(false, "a message of an unknown chunk");
            return None;
        };
        c.parts = c.parts.saturating_sub(1);
        Some((i, c))
    }

    /// Lets go of the chunk at `i` in `chunks`, which has no message queued any more.
    #[inline]
    fn let_go(&mut self, i: usize) {
        if let Some(c) = self.chunks.get_mut(i) {
            c.bytes = Bytes::new();
        }
        if i == 0 {
            self.drop_released();
        }
    }

    /// Drops the chunks let go at the front.
    #[inline]
    fn drop_released(&mut self) {
        while self.chunks.front().is_some_and(|c| c.parts == 0) {
            self.chunks.pop_front();
            self.first_chunk = self.first_chunk.wrapping_add(1);
        }
    }

    /// Removes the messages whose deadline is at or before `now`, each reported to `gone`
    /// with its channel and length. Returns the earliest deadline left. (Timed messages are
    /// always [`Held::Whole`]: only untimed ones are queued in chunks.)
    pub(super) fn expire(&mut self, now: Instant, gone: &mut Vec<(u16, usize)>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let before = gone.len();
        for class in &mut self.classes {
            if class.deadlines.is_empty() {
                continue;
            }
            let mut deadlines = std::mem::take(&mut class.deadlines).into_iter();
            let kept = &mut class.deadlines;
            class.queue.retain(|m| {
                if !m.timed {
                    return true;
                }
                let Some(e) = deadlines.next() else {
                    return true;
                };
                if now >= e {
                    gone.push((m.channel, m.payload.len()));
                    return false;
                }
                next = Some(next.map_or(e, |n| n.min(e)));
                kept.push_back(e);
                true
            });
        }
        self.len -= gone.len() - before;
        next
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Chunks kept (for tests of the bound).
    #[cfg(test)]
    pub(super) fn chunks(&self) -> usize {
        self.chunks.len()
    }
}

/// A message's own handle on its bytes, for a place that does not fit [`Held::Part`].
#[cold]
fn whole(run: &Bytes, range: Range<usize>) -> Held {
    Held::Whole(run.slice(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues `msgs` (channel, payload) as parts of one chunk, in `class`es by channel:
    /// channel 1 in the first class made, channel 2 in the second.
    fn add_run(inbox: &mut Inbox, msgs: &[(u16, &[u8])]) {
        let mut ranges = Vec::new();
        let mut chunk = Vec::new();
        for (_, payload) in msgs {
            ranges.push(chunk.len()..chunk.len() + payload.len());
            chunk.extend_from_slice(payload);
        }
        let chunk = Bytes::from(chunk);
        for ((channel, _), range) in msgs.iter().zip(ranges) {
            let class = inbox.class(if *channel == 1 { 200 } else { 0 });
            inbox.push_part(class, *channel, &chunk, range);
        }
        inbox.add_chunk(chunk);
    }

    /// Takes one message as a `Received`, returning its channel, payload and chunk number.
    fn take(inbox: &mut Inbox) -> Option<(u16, Vec<u8>, Option<u32>)> {
        let p = inbox.pop_next()?;
        let mut out = None;
        inbox.hand(p, &mut |r: Received<'_>| {
            let id = match &r.payload {
                Payload::Part(p) => Some(p.chunk_id()),
                Payload::Whole(_) => None,
            };
            out = Some((r.channel, r.payload.as_slice().to_vec(), id));
        });
        out
    }

    #[test]
    fn a_part_s_word_keeps_its_chunk_number_and_whether_it_is_the_last_apart() {
        for id in [0u32, 1, 0x8000_0000, u32::MAX] {
            for last in [false, true] {
                let mut chunk = Bytes::from_static(b"abcdef");
                let p = Part {
                    chunk: &mut chunk,
                    tag: u64::from(id) | if last { LAST } else { 0 },
                    start: 2,
                    len: 3,
                };
                assert_eq!((p.chunk_id(), p.last()), (id, last));
                assert_eq!(p.as_slice(), b"cde");
                // The last message takes the chunk's own handle; others share it.
                assert_eq!(&p.into_bytes()[..], b"cde");
                assert_eq!(chunk.is_empty(), last, "id {id:#x}, last {last}");
            }
        }
    }

    #[test]
    fn parts_come_out_by_priority_and_their_chunks_are_let_go_with_the_last() {
        let mut inbox = Inbox::default();
        add_run(&mut inbox, &[(2, b"low-a"), (1, b"high-a"), (2, b"low-b")]);
        add_run(&mut inbox, &[(1, b"high-b"), (2, b"low-c")]);
        assert_eq!((inbox.len(), inbox.chunks()), (5, 2));
        let got: Vec<_> = std::iter::from_fn(|| take(&mut inbox)).collect();
        let order: Vec<(u16, &[u8])> = got.iter().map(|(c, p, _)| (*c, &p[..])).collect();
        assert_eq!(
            order,
            [
                (1, &b"high-a"[..]),
                (1, b"high-b"),
                (2, b"low-a"),
                (2, b"low-b"),
                (2, b"low-c")
            ]
        );
        // Messages of one chunk share its number; the two chunks' numbers differ.
        assert_eq!(got[0].2, got[2].2);
        assert_ne!(got[0].2, got[1].2);
        assert_eq!((inbox.len(), inbox.chunks()), (0, 0));
    }

    #[test]
    fn an_owned_pop_takes_the_chunk_s_own_handle_with_its_last_message() {
        let mut inbox = Inbox::default();
        add_run(&mut inbox, &[(1, b"one"), (1, b"two")]);
        let (first, _) = inbox.pop().unwrap();
        assert_eq!(&first.payload[..], b"one");
        let (second, _) = inbox.pop().unwrap();
        assert_eq!(&second.payload[..], b"two");
        // The last message took the chunk's handle: only `first` shares the bytes with it.
        drop(first);
        assert!(
            second.payload.is_unique(),
            "the chunk is still held elsewhere"
        );
        assert_eq!(inbox.chunks(), 0);
    }

    #[test]
    fn chunks_stay_bounded_while_a_low_priority_message_waits() {
        let mut inbox = Inbox::default();
        // Each read brings a high and a low message; the application takes only the high
        // ones (strict priority) for many reads.
        let rounds = 3 * MAX_CHUNKS as u32;
        for i in 0..rounds {
            let (hi, lo) = (format!("hi {i}"), format!("lo {i}"));
            add_run(&mut inbox, &[(2, lo.as_bytes()), (1, hi.as_bytes())]);
            assert!(inbox.chunks() <= MAX_CHUNKS, "{} chunks", inbox.chunks());
            let (channel, payload, _) = take(&mut inbox).unwrap();
            assert_eq!((channel, payload), (1, hi.into_bytes()));
        }
        // The low ones, every one intact and in order, those of chunks let go included.
        for i in 0..rounds {
            let (channel, payload, _) = take(&mut inbox).unwrap();
            assert_eq!((channel, payload), (2, format!("lo {i}").into_bytes()));
        }
        assert!(take(&mut inbox).is_none());
        assert_eq!((inbox.len(), inbox.chunks()), (0, 0));
    }

    #[test]
    fn discarded_parts_let_their_chunk_go() {
        let mut inbox = Inbox::default();
        add_run(&mut inbox, &[(1, b"a"), (1, b"b")]);
        let p = inbox.pop_next().unwrap();
        inbox.discard(p);
        assert_eq!(inbox.chunks(), 1);
        assert_eq!(take(&mut inbox).unwrap().1, b"b");
        assert_eq!(inbox.chunks(), 0);
    }
}
