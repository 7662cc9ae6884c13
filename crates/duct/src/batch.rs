//! [`MessageBatch`]: messages received together, held as views of the bytes they arrived in.

use std::fmt;

use bytes::Bytes;
use duct_proto::{Delivered, Payload, Received};

use crate::driver::conn::Sink;

use crate::Message;

/// Messages received together by [`Pipe::recv_into`](crate::Pipe::recv_into), kept as views
/// of the bytes they arrived in: the messages of one read share one handle on those bytes,
/// so taking a message costs no reference count and no allocation (a [`Message`] holds a
/// reference-counted handle of its own, two atomic operations over its life, which a stream
/// of small messages feels). Look at them through [`MessageRef`]; keep one beyond the batch
/// with [`MessageRef::to_message`] (no copy).
///
/// Reuse one batch for every call: `recv_into` replaces what it held, and its buffers keep
/// their capacity. Messages held by a batch keep the bytes they arrived in from being reused
/// for the next read, so clear or refill it when done with them.
///
/// ```no_run
/// # fn main() -> duct::Result<()> {
/// use duct::{MessageBatch, RecvOptions};
///
/// let pipe = duct::dial("uds://@world-1", duct::DialOptions::default())?;
/// let mut batch = MessageBatch::new();
/// loop {
///     pipe.recv_into(&mut batch, 1024, &RecvOptions::default())?;
///     for msg in &batch {
///         match msg.channel() {
///             1 => println!("position update, {} bytes", msg.len()),
///             _ => println!("{:?}", msg.payload()),
///         }
///     }
/// }
/// # }
/// ```
#[derive(Default)]
pub struct MessageBatch {
    /// The bytes the messages are in: a read's worth shared by its messages, or one
    /// message's own.
    chunks: Vec<Bytes>,
    entries: Vec<Entry>,
    /// While filling: the session's number of the chunk last added to `chunks`.
    last: Option<u32>,
}

#[derive(Clone, Copy)]
struct Entry {
    chunk: usize,
    channel: u16,
    start: usize,
    len: usize,
}

impl MessageBatch {
    /// An empty batch.
    pub fn new() -> MessageBatch {
        MessageBatch::default()
    }

    /// An empty batch with room for `messages` without growing.
    pub fn with_capacity(messages: usize) -> MessageBatch {
        MessageBatch {
            chunks: Vec::new(),
            entries: Vec::with_capacity(messages),
            last: None,
        }
    }

    /// How many messages it holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no message.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the messages (keeping the capacity), which lets the bytes they were in be reused.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.entries.clear();
        self.last = None;
    }

    /// The `i`th message, in the order received.
    #[inline]
    pub fn get(&self, i: usize) -> Option<MessageRef<'_>> {
        self.entries.get(i).map(|e| self.view(e))
    }

    /// The messages in the order received.
    #[inline]
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            batch: self,
            entries: self.entries.iter(),
        }
    }

    #[inline]
    fn view(&self, e: &Entry) -> MessageRef<'_> {
        MessageRef {
            bytes: &self.chunks[e.chunk],
            channel: e.channel,
            start: e.start,
            len: e.len,
        }
    }

    /// Adds a received message: a place in the chunk added last, or a new chunk.
    #[inline(always)]
    pub(crate) fn push(&mut self, r: Received<'_>) {
        let (start, len) = match r.payload {
            Payload::Whole(b) => {
                let len = b.len();
                self.chunks.push(b);
                self.last = None;
                (0, len)
            }
            Payload::Part(p) => {
                let range = p.range();
                // (`last` is cleared with the batch: `Some` means a chunk is there.)
                if self.last != Some(p.chunk_id()) {
                    self.last = Some(p.chunk_id());
                    self.chunks.push(p.take_chunk());
                }
                (range.start, range.len())
            }
        };
        self.entries.push(Entry {
            chunk: self.chunks.len() - 1,
            channel: r.channel,
            start,
            len,
        });
    }
}

impl Sink for MessageBatch {
    #[inline]
    fn owned(&mut self, d: Delivered) {
        self.push(Received {
            channel: d.channel,
            payload: Payload::Whole(d.payload),
        });
    }

    #[inline(always)]
    fn received(&mut self, r: Received<'_>) {
        self.push(r);
    }
}

/// `Pipe::recv_batch`'s messages.
impl Sink for Vec<Message> {
    #[inline]
    fn owned(&mut self, d: Delivered) {
        self.push(Message::new(d.payload).with_channel(d.channel));
    }

    #[inline]
    fn received(&mut self, r: Received<'_>) {
        self.push(Message::new(r.payload.into_bytes()).with_channel(r.channel));
    }
}

impl fmt::Debug for MessageBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a MessageBatch {
    type Item = MessageRef<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The messages of a [`MessageBatch`], in the order received.
pub struct Iter<'a> {
    batch: &'a MessageBatch,
    entries: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = MessageRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<MessageRef<'a>> {
        let e = self.entries.next()?;
        Some(self.batch.view(e))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let e = self.entries.next_back()?;
        Some(self.batch.view(e))
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// A message in a [`MessageBatch`]: its channel and a view of its payload.
#[derive(Clone, Copy)]
pub struct MessageRef<'a> {
    bytes: &'a Bytes,
    channel: u16,
    start: usize,
    len: usize,
}

impl<'a> MessageRef<'a> {
    /// The channel it arrived on.
    #[inline]
    pub fn channel(&self) -> u16 {
        self.channel
    }

    /// The payload bytes.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    /// The payload's length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message as a [`Message`] of its own, which outlives the batch: a handle on the
    /// same bytes, not a copy (one reference count).
    pub fn to_message(&self) -> Message {
        Message::new(self.bytes.slice(self.start..self.start + self.len)).with_channel(self.channel)
    }
}

impl fmt::Debug for MessageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PREFIX: usize = 16;
        let payload = self.payload();
        f.debug_struct("MessageRef")
            .field("channel", &self.channel)
            .field("len", &self.len)
            .field(
                "payload",
                &Bytes::copy_from_slice(&payload[..payload.len().min(PREFIX)]),
            )
            .finish_non_exhaustive()
    }
}
