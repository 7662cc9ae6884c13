//! The fixed 24-byte frame header that starts every frame on every transport.
//!
//! Layout (network byte order), normative in docs/PROTOCOL.md:
//!
//! | offset | size | field        |
//! |--------|------|--------------|
//! | 0      | 1    | kind         |
//! | 1      | 1    | flags        |
//! | 2      | 2    | channel_id   |
//! | 4      | 4    | payload_len  |
//! | 8      | 4    | seq          |
//! | 12     | 4    | ack          |
//! | 16     | 4    | ttl_ms       |
//! | 20     | 4    | aux          |

use super::WireError;

/// Size of every frame header in bytes.
pub const HEADER_LEN: usize = 24;

/// What a frame carries. The numeric values are the wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A message, or one fragment of a message, on a channel.
    Data = 0x01,
    /// A stand-alone acknowledgement (cumulative `ack` plus optional selective ranges).
    Ack = 0x02,
    /// A liveness probe; the peer answers with [`FrameKind::Pong`] echoing the payload.
    Ping = 0x03,
    /// The answer to a [`FrameKind::Ping`].
    Pong = 0x04,
    /// An orderly close with a code and a reason text.
    Close = 0x05,
    /// The dialer's opening handshake frame.
    Hello = 0x10,
    /// The listener's acceptance of a [`FrameKind::Hello`].
    Welcome = 0x11,
    /// The listener's refusal of a [`FrameKind::Hello`].
    Reject = 0x12,
}

impl FrameKind {
    /// Parses a wire value; `None` for a kind this version does not know.
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            0x01 => FrameKind::Data,
            0x02 => FrameKind::Ack,
            0x03 => FrameKind::Ping,
            0x04 => FrameKind::Pong,
            0x05 => FrameKind::Close,
            0x10 => FrameKind::Hello,
            0x11 => FrameKind::Welcome,
            0x12 => FrameKind::Reject,
            _ => return None,
        })
    }

    /// Whether this kind belongs to the handshake (valid only before the session is established).
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            FrameKind::Hello | FrameKind::Welcome | FrameKind::Reject
        )
    }
}

/// Header flag bits. Bits not named here are reserved: sent as zero, ignored on receipt.
pub mod flags {
    /// The frame belongs to a reliable channel; `seq` is valid.
    pub const RELIABLE: u8 = 0x01;
    /// `ack` carries a valid cumulative acknowledgement.
    pub const ACK_PRESENT: u8 = 0x02;
    /// More fragments of this message follow on the same channel.
    pub const MORE_FRAGMENTS: u8 = 0x04;
    /// This frame continues a message begun by an earlier fragment on the same channel.
    pub const CONTINUATION: u8 = 0x08;
    /// `ttl_ms` carries the remaining time to live of the message.
    pub const TTL_PRESENT: u8 = 0x10;
    /// On a reliable frame: the sender's reliable window is half full, acknowledge at once
    /// (with capability `ACK_REQUEST`, since 1.3).
    pub const ACK_REQUEST: u8 = 0x20;
    /// Every flag bit this version defines.
    pub const KNOWN: u8 =
        RELIABLE | ACK_PRESENT | MORE_FRAGMENTS | CONTINUATION | TTL_PRESENT | ACK_REQUEST;
}

/// A decoded frame header. Plain data: any combination of values can be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: FrameKind,
    /// Flag bits (see [`flags`]).
    pub flags: u8,
    /// Channel the frame belongs to (0 for control frames).
    pub channel: u16,
    /// Number of payload bytes that follow the header.
    pub payload_len: u32,
    /// Sequence number of a reliable frame (valid with [`flags::RELIABLE`]).
    pub seq: u32,
    /// Piggybacked cumulative acknowledgement (valid with [`flags::ACK_PRESENT`]).
    pub ack: u32,
    /// Remaining time to live in milliseconds (valid with [`flags::TTL_PRESENT`]).
    pub ttl_ms: u32,
    /// Kind-specific extra word: on the first fragment of a fragmented message, the total
    /// message length; otherwise zero.
    pub aux: u32,
}

impl Header {
    /// The channel of the frame whose encoded header is `b`, read in place (no decode).
    #[inline]
    pub fn channel_of(b: &[u8; HEADER_LEN]) -> u16 {
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The payload length of the frame whose encoded header is `b`, read in place (no
    /// decode).
    #[inline]
    pub fn payload_len_of(b: &[u8; HEADER_LEN]) -> u32 {
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// A header of `kind` with every other field zero.
    pub const fn new(kind: FrameKind) -> Header {
        Header {
            kind,
            flags: 0,
            channel: 0,
            payload_len: 0,
            seq: 0,
            ack: 0,
            ttl_ms: 0,
            aux: 0,
        }
    }

    /// A DATA header for an unfragmented message on `channel`.
    pub const fn data(channel: u16, payload_len: u32) -> Header {
        Header {
            kind: FrameKind::Data,
            flags: 0,
            channel,
            payload_len,
            seq: 0,
            ack: 0,
            ttl_ms: 0,
            aux: 0,
        }
    }

    /// Whether `flag` is set.
    #[inline]
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Encodes into the 24 wire bytes.
    ///
    /// Each 8-byte word is put together in a register and stored whole: a header is often
    /// read back soon with wide loads (moved, or copied into a shared-memory ring), and a
    /// load that spans several narrow stores cannot be forwarded from them; it waits until
    /// every earlier store has reached the cache.
    #[inline]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let words = [
            u64::from(self.kind as u8) << 56
                | u64::from(self.flags) << 48
                | u64::from(self.channel) << 32
                | u64::from(self.payload_len),
            u64::from(self.seq) << 32 | u64::from(self.ack),
            u64::from(self.ttl_ms) << 32 | u64::from(self.aux),
        ];
        let mut b = [0u8; HEADER_LEN];
        for (dst, w) in b.chunks_exact_mut(8).zip(words) {
            dst.copy_from_slice(&w.to_be_bytes());
        }
        b
    }

    /// Decodes the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Fails with [`WireError::Truncated`] if `buf` is shorter than a header and with
    /// [`WireError::UnknownKind`] for a kind this version does not define. Reserved flag bits
    /// are kept as received (the session ignores them). Length limits are the deframer's job.
    #[inline]
    pub fn decode(buf: &[u8]) -> Result<Header, WireError> {
        let b: &[u8; HEADER_LEN] = match buf.get(..HEADER_LEN) {
            Some(s) => s.try_into().map_err(|_| WireError::Truncated)?,
            None => return Err(WireError::Truncated),
        };
        let kind = FrameKind::from_u8(b[0]).ok_or(WireError::UnknownKind(b[0]))?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Header {
            kind,
            flags: b[1],
            channel: u16::from_be_bytes([b[2], b[3]]),
            payload_len: u32_at(4),
            seq: u32_at(8),
            ack: u32_at(12),
            ttl_ms: u32_at(16),
            aux: u32_at(20),
        })
    }
}

/// The fragment marks of the DATA frame that carries the `len` bytes from `offset` of a
/// `total`-byte message (docs/PROTOCOL.md §6): its flags (`CONTINUATION` on all but the
/// first frame, `MORE_FRAGMENTS` on all but the last) and, on the first of several frames,
/// the message's length for `aux`. A message in one frame has none.
#[inline]
pub fn fragment_marks(offset: usize, len: usize, total: usize) -> (u8, Option<u32>) {
    let mut marks = 0;
    let mut aux = None;
    if offset > 0 {
        marks |= flags::CONTINUATION;
    } else if len < total {
        aux = Some(total as u32);
    }
    if offset + len < total {
        marks |= flags::MORE_FRAGMENTS;
    }
    (marks, aux)
}

/// Writes `v` big-endian at byte `at` (a multiple of 4) of the encoded header `b`, by
/// reading and storing whole the 8-byte word that holds it (see [`Header::encode`]: a wide
/// load of the header soon after is then forwarded from one store).
#[inline(always)]
pub fn put_u32(b: &mut [u8; HEADER_LEN], at: usize, v: u32) {
    debug_assert!(at % 4 == 0 && at < HEADER_LEN);
    let word = &mut b[at & !7..(at & !7) + 8];
    let shift = if at & 4 == 0 { 32 } else { 0 };
    let mut w = [0; 8];
    w.copy_from_slice(word);
    let w = u64::from_be_bytes(w) & !(0xFFFF_FFFF << shift) | u64::from(v) << shift;
    word.copy_from_slice(&w.to_be_bytes());
}

/// Sets `flag` in the flags byte of the encoded header `b`, storing its first 8-byte word
/// whole (see [`put_u32`]).
#[inline(always)]
pub fn set_flag(b: &mut [u8; HEADER_LEN], flag: u8) {
    let mut w = [0; 8];
    w.copy_from_slice(&b[..8]);
    let w = u64::from_be_bytes(w) | u64::from(flag) << 48;
    b[..8].copy_from_slice(&w.to_be_bytes());
}
