//! [`Message`], the unit that duct moves, and [`MessageBuf`], a writable buffer that becomes
//! one.
//!
//! This module owns only the value types. How a message is framed, fragmented, queued and
//! delivered belongs to the protocol core (duct-proto) and the driver.

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::{Bytes, BytesMut};

/// One message: a payload of bytes and the channel it travels on.
///
/// duct preserves message boundaries: what one `send` sends, one `recv` returns, whole, however
/// the transport split it. The payload is a [`bytes::Bytes`], so cloning a `Message` (or
/// taking its payload with [`into_bytes`](Message::into_bytes)) never copies the payload; it
/// bumps a reference count. On shared memory a received payload may be a view into the shared
/// pool, returned to the pool when the last clone is dropped.
///
/// A new message is on channel 0 unless [`with_channel`](Message::with_channel) says otherwise;
/// a received message reports the channel it arrived on.
///
/// ```
/// use duct::Message;
///
/// let msg = Message::from("player 7 moved").with_channel(2);
/// assert_eq!(msg.payload(), b"player 7 moved");
/// assert_eq!(msg.channel(), 2);
/// assert_eq!(msg.len(), 14);
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Message {
    payload: Bytes,
    channel: u16,
}

impl Message {
    /// A message on channel 0 with this payload. Accepts anything that converts into
    /// [`Bytes`] (`Vec<u8>`, `String`, `&'static [u8]`, `&'static str`, `Bytes`) without
    /// copying it.
    #[inline]
    pub fn new(payload: impl Into<Bytes>) -> Message {
        Message {
            payload: payload.into(),
            channel: 0,
        }
    }

    /// The same message on `channel` (0..=65535). Which channels exist and how each behaves
    /// is set with [`ChannelOptions`](crate::ChannelOptions); a send's
    /// [`SendOptions::channel`](crate::SendOptions::channel) overrides this.
    #[must_use]
    #[inline]
    pub fn with_channel(mut self, channel: u16) -> Message {
        self.channel = channel;
        self
    }

    /// The payload bytes.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as a [`Bytes`] handle (clone it to keep it without copying).
    #[inline]
    pub fn bytes(&self) -> &Bytes {
        &self.payload
    }

    /// Takes the payload out of the message, without copying.
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        self.payload
    }

    /// The channel this message is sent on, or arrived on.
    #[inline]
    pub fn channel(&self) -> u16 {
        self.channel
    }

    /// The payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// Whether the payload is empty. Empty messages are valid and are delivered.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

impl fmt::Debug for Message {
    // The payload can be megabytes; show its size and a short prefix, not all of it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PREFIX: usize = 16;
        let shown = &self.payload[..self.payload.len().min(PREFIX)];
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("len", &self.payload.len())
            .field("payload", &Bytes::copy_from_slice(shown))
            .finish_non_exhaustive()
    }
}

impl AsRef<[u8]> for Message {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

impl From<Bytes> for Message {
    fn from(payload: Bytes) -> Message {
        Message::new(payload)
    }
}

impl From<Vec<u8>> for Message {
    fn from(payload: Vec<u8>) -> Message {
        Message::new(payload)
    }
}

impl From<&'static [u8]> for Message {
    fn from(payload: &'static [u8]) -> Message {
        Message::new(payload)
    }
}

impl<const N: usize> From<&'static [u8; N]> for Message {
    fn from(payload: &'static [u8; N]) -> Message {
        Message::new(&payload[..])
    }
}

impl From<&'static str> for Message {
    fn from(payload: &'static str) -> Message {
        Message::new(payload)
    }
}

impl From<String> for Message {
    fn from(payload: String) -> Message {
        Message::new(payload)
    }
}

impl From<MessageBuf> for Message {
    fn from(buf: MessageBuf) -> Message {
        buf.freeze()
    }
}

/// A writable buffer that becomes a [`Message`] with [`freeze`](MessageBuf::freeze),
/// without copying.
///
/// Get one from [`Pipe::alloc`](crate::Pipe::alloc), fill it through
/// `DerefMut<Target = [u8]>`, freeze it and send it. On `shm://` the buffer lies in the
/// connection's shared pool, so the message moves to the peer without a copy (when it fits one
/// frame and is sent on that connection; see [`PipeStats::zero_copy_frames`]); elsewhere it is
/// an ordinary heap buffer and the code stays the same.
///
/// A heap buffer starts zeroed. A shared-memory buffer's contents are unspecified (bytes of
/// earlier messages of this connection): write all of it, or [`truncate`](MessageBuf::truncate)
/// it to what you wrote.
///
/// ```
/// # use duct::MessageBuf;
/// # fn fill(buf: MessageBuf) -> duct::Message {
/// let mut buf = buf;
/// buf[..5].copy_from_slice(b"hello");
/// buf.truncate(5);
/// let msg = buf.freeze().with_channel(3);
/// # msg }
/// ```
///
/// [`PipeStats::zero_copy_frames`]: crate::PipeStats::zero_copy_frames
pub struct MessageBuf {
    inner: BufInner,
}

enum BufInner {
    Heap(BytesMut),
    /// A slot of a shared-memory pool (Linux).
    #[cfg(duct_shm)]
    Shm(duct_sys::shm::pool::TxSlot),
}

impl MessageBuf {
    /// A zeroed heap buffer of `len` bytes. The caller checks `len` against the pipe's
    /// `max_message_size` first, so that a huge length fails as `MessageTooLarge` instead of
    /// allocating.
    pub(crate) fn heap(len: usize) -> MessageBuf {
        MessageBuf {
            inner: BufInner::Heap(BytesMut::zeroed(len)),
        }
    }

    /// A buffer in a shared-memory slot (its length already set).
    #[cfg(duct_shm)]
    pub(crate) fn shm(slot: duct_sys::shm::pool::TxSlot) -> MessageBuf {
        MessageBuf {
            inner: BufInner::Shm(slot),
        }
    }

    /// The buffer's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.deref().len()
    }

    /// Whether the buffer has length 0.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the buffer to `len` bytes (no effect if it is not longer).
    pub fn truncate(&mut self, len: usize) {
        match &mut self.inner {
            BufInner::Heap(b) => b.truncate(len),
            #[cfg(duct_shm)]
            BufInner::Shm(s) => {
                if len < s.len() {
                    s.set_len(len);
                }
            }
        }
    }

    /// Whether the buffer lies in shared memory (it will move to the peer without a copy).
    pub fn is_shared(&self) -> bool {
        match &self.inner {
            BufInner::Heap(_) => false,
            #[cfg(duct_shm)]
            BufInner::Shm(_) => true,
        }
    }

    /// Turns the buffer into a message on channel 0, without copying.
    pub fn freeze(self) -> Message {
        match self.inner {
            BufInner::Heap(b) => Message::new(b.freeze()),
            #[cfg(duct_shm)]
            BufInner::Shm(s) => Message::new(Bytes::from_owner(s.into_loan())),
        }
    }
}

impl Deref for MessageBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            BufInner::Heap(b) => b,
            #[cfg(duct_shm)]
            BufInner::Shm(s) => s.as_slice(),
        }
    }
}

impl DerefMut for MessageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            BufInner::Heap(b) => b,
            #[cfg(duct_shm)]
            BufInner::Shm(s) => {
                let len = s.len();
                &mut s.as_mut_slice()[..len]
            }
        }
    }
}

impl fmt::Debug for MessageBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageBuf")
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_the_payload() {
        let msg = Message::from(vec![1u8; 4096]);
        let copy = msg.clone();
        assert_eq!(msg.payload().as_ptr(), copy.payload().as_ptr());
        assert_eq!(msg, copy);
        let bytes = copy.into_bytes();
        assert_eq!(bytes.as_ptr(), msg.payload().as_ptr());
        assert_eq!(msg.bytes().as_ptr(), msg.payload().as_ptr());
    }

    #[test]
    fn conversions_keep_the_payload() {
        let expected: &[u8] = b"abc";
        let all = [
            Message::from(b"abc".to_vec()),
            Message::from(Bytes::from_static(b"abc")),
            Message::from(&b"abc"[..]),
            Message::from(b"abc"),
            Message::from("abc"),
            Message::from(String::from("abc")),
            Message::new("abc"),
        ];
        for msg in all {
            assert_eq!(msg.payload(), expected);
            assert_eq!(msg.channel(), 0);
            assert_eq!(msg.len(), 3);
            assert!(!msg.is_empty());
        }
    }

    #[test]
    fn vec_conversion_does_not_copy() {
        let v = vec![9u8; 100];
        let ptr = v.as_ptr();
        assert_eq!(Message::from(v).payload().as_ptr(), ptr);
    }

    #[test]
    fn with_channel_sets_the_channel() {
        let msg = Message::from("x").with_channel(65535);
        assert_eq!(msg.channel(), 65535);
        assert_ne!(msg, Message::from("x"));
    }

    #[test]
    fn empty_message() {
        let msg = Message::new(Bytes::new());
        assert!(msg.is_empty());
        assert_eq!(msg.len(), 0);
        assert_eq!(Message::default(), msg);
    }

    #[test]
    fn debug_is_bounded() {
        let text = format!("{:?}", Message::from(vec![b'a'; 10_000]));
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("10000"));
    }

    #[test]
    fn message_buf_is_zeroed_writable_and_freezes_without_copy() {
        let mut buf = MessageBuf::heap(8);
        assert_eq!(buf.len(), 8);
        assert!(!buf.is_empty());
        assert!(buf.iter().all(|&b| b == 0));
        buf[..3].copy_from_slice(b"hey");
        let ptr = buf.as_ptr();
        let msg = buf.freeze();
        assert_eq!(msg.payload(), b"hey\0\0\0\0\0");
        assert_eq!(msg.payload().as_ptr(), ptr);
        assert_eq!(msg.channel(), 0);
    }

    #[test]
    fn empty_message_buf() {
        let buf = MessageBuf::heap(0);
        assert!(buf.is_empty());
        assert!(Message::from(buf).is_empty());
    }

    #[test]
    fn message_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Message>();
        assert_send_sync::<MessageBuf>();
    }
}
