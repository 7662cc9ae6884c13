//! Payloads of the control frames: HELLO, WELCOME, REJECT, CLOSE, PING/PONG and ACK.
//!
//! Every decoder checks lengths before it reads and returns a [`WireError`] on bad input;
//! none of them panics or allocates more than the (already bounded) payload it is given.

use bytes::{BufMut, Bytes, BytesMut};

use super::WireError;

/// The four bytes that open every HELLO, WELCOME and REJECT payload: ASCII `DUCT`.
pub const MAGIC: [u8; 4] = *b"DUCT";
/// Protocol major version spoken by this implementation. Peers with another major cannot talk.
pub const VERSION_MAJOR: u8 = 1;
/// Protocol minor version. A higher minor of the same major is compatible.
pub const VERSION_MINOR: u8 = 3;
/// Fixed part of a HELLO payload, before extensions.
pub const HELLO_FIXED_LEN: usize = 48;
/// Fixed part of a WELCOME payload, before extensions.
pub const WELCOME_FIXED_LEN: usize = 48;
/// Fixed part of a REJECT payload, before the reason text.
pub const REJECT_FIXED_LEN: usize = 8;
/// Longest close or reject reason text, in bytes. Longer texts are cut at a char boundary
/// when sent and refused when received.
pub const MAX_REASON_LEN: usize = 1024;
/// Most extensions a HELLO or WELCOME may carry.
pub const MAX_EXTENSIONS: usize = 16;
/// Most selective-ack ranges an ACK frame may carry.
pub const MAX_SACK_RANGES: usize = 32;

/// Capability bits exchanged in HELLO/WELCOME. Unknown bits are ignored by both sides; the
/// session uses the intersection of what both sides offer.
pub mod caps {
    /// Reliable channels: DATA frames with `RELIABLE` carry a message number in `seq`;
    /// acknowledgements travel in `ack` (`ACK_PRESENT`) and ACK frames (since 1.2).
    pub const RELIABLE: u64 = 1 << 0;
    /// Session resume across reconnects: a reconnecting dialer names the session it had in
    /// HELLO's `resume_session_id`, and the listener re-attaches it to that session's state.
    pub const RESUME: u64 = 1 << 1;
    /// Per-message time to live: DATA frames may carry `TTL_PRESENT` and the remaining
    /// milliseconds in `ttl_ms` (since 1.1).
    pub const TTL: u64 = 1 << 2;
    /// Acks on request: a reliable sender sets `ACK_REQUEST` on the frame that fills half of
    /// its window, and the receiver, which then acks at once, otherwise acks less often
    /// (since 1.3; with RELIABLE).
    pub const ACK_REQUEST: u64 = 1 << 3;
    /// Every capability this implementation can use today.
    pub const SUPPORTED: u64 = RELIABLE | RESUME | TTL | ACK_REQUEST;
}

/// Codes carried by REJECT frames.
pub mod reject_code {
    /// The dialer's major protocol version is not one the listener speaks.
    pub const INCOMPATIBLE_VERSION: u16 = 1;
    /// The HELLO was malformed.
    pub const PROTOCOL_ERROR: u16 = 2;
    /// The listener refused the peer (authentication, credentials).
    pub const PERMISSION_DENIED: u16 = 3;
    /// The listener is shutting down or overloaded; try again later.
    pub const UNAVAILABLE: u16 = 4;
}

/// Codes carried by CLOSE frames. 0–999 belong to the protocol (those not defined here are
/// reserved for later versions); 1000–65535 are free for applications (passed through
/// untouched).
pub mod close_code {
    /// An ordinary close with nothing wrong.
    pub const NORMAL: u16 = 0;
    /// The peer violated the protocol; the reason says how.
    pub const PROTOCOL_ERROR: u16 = 1;
    /// The peer sent a message larger than the negotiated limit.
    pub const MESSAGE_TOO_LARGE: u16 = 2;
    /// The process is going away.
    pub const GOING_AWAY: u16 = 3;
    /// A reassembly or handshake deadline passed.
    pub const TIMEOUT: u16 = 4;
}

/// Optional typed extension carried after the fixed part of HELLO/WELCOME: `type u16`,
/// `len u16`, `len` bytes. Unknown types are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// Extension type.
    pub kind: u16,
    /// Extension value.
    pub value: Bytes,
}

/// Extension type carrying an opaque authentication token (reserved for the security work).
pub const EXT_TOKEN: u16 = 1;

/// The dialer's handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version (major, minor) the dialer speaks.
    pub version: (u8, u8),
    /// Capability bits the dialer offers.
    pub capabilities: u64,
    /// Largest frame payload the dialer accepts.
    pub max_frame_payload: u32,
    /// Heartbeat interval the dialer proposes, in ms (0: none).
    pub heartbeat_ms: u32,
    /// Largest message the dialer accepts (after reassembly).
    pub max_message_size: u32,
    /// Last reliable seq the dialer received (resume; 0 on a fresh session).
    pub last_received_seq: u32,
    /// Identity of the dialing pipe, stable across its reconnects.
    pub instance_id: u64,
    /// The session the dialer wants to resume (0: a fresh session).
    pub resume_session_id: u64,
    /// Typed extensions.
    pub extensions: Vec<Extension>,
}

/// The listener's acceptance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version (major, minor) the listener speaks.
    pub version: (u8, u8),
    /// Capabilities in force for the session (intersection of both sides').
    pub capabilities: u64,
    /// Largest frame payload the listener accepts.
    pub max_frame_payload: u32,
    /// Heartbeat interval chosen for the session, in ms (0: none).
    pub heartbeat_ms: u32,
    /// Largest message the listener accepts (after reassembly).
    pub max_message_size: u32,
    /// Last reliable seq the listener received from this dialer instance.
    pub last_received_seq: u32,
    /// The new session's id (never 0, new on every successful connect).
    pub session_id: u64,
    /// Whether the listener re-attached the dialer to an existing session.
    pub resumed: bool,
    /// Typed extensions.
    pub extensions: Vec<Extension>,
}

/// The listener's refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Protocol version (major, minor) the listener speaks.
    pub version: (u8, u8),
    /// Why (see [`reject_code`]).
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

/// An orderly close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// Close code (see [`close_code`]; 1000 and up belong to applications).
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

/// Reads a big-endian integer at a checked offset.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        s
    }
}

/// Reads magic and version, the part of every handshake payload that never changes between
/// versions. A payload too short for them is truncated; a wrong magic is [`WireError::BadMagic`].
pub fn decode_preamble(payload: &[u8]) -> Result<(u8, u8), WireError> {
    let mut r = Reader::new(payload);
    if r.take(4)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    Ok((r.u8()?, r.u8()?))
}

fn put_preamble(out: &mut BytesMut, version: (u8, u8)) {
    out.put_slice(&MAGIC);
    out.put_u8(version.0);
    out.put_u8(version.1);
}

fn put_extensions(out: &mut BytesMut, exts: &[Extension]) {
    for e in exts.iter().take(MAX_EXTENSIONS) {
        let len = e.value.len().min(u16::MAX as usize);
        out.put_u16(e.kind);
        out.put_u16(len as u16);
        out.put_slice(&e.value[..len]);
    }
}

fn read_extensions(bytes: &[u8]) -> Result<Vec<Extension>, WireError> {
    let mut r = Reader::new(bytes);
    let mut exts = Vec::new();
    while r.pos < bytes.len() {
        if exts.len() == MAX_EXTENSIONS {
            return Err(WireError::Malformed("more than 16 handshake extensions"));
        }
        let kind = r.u16()?;
        let len = r.u16()? as usize;
        let value = Bytes::copy_from_slice(r.take(len)?);
        exts.push(Extension { kind, value });
    }
    Ok(exts)
}

fn read_reason(bytes: &[u8]) -> Result<String, WireError> {
    if bytes.len() > MAX_REASON_LEN {
        return Err(WireError::Malformed("reason text longer than 1024 bytes"));
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Malformed("reason text is not UTF-8"))
}

/// Cuts `s` to at most [`MAX_REASON_LEN`] bytes on a char boundary.
pub fn clamp_reason(s: &str) -> &str {
    if s.len() <= MAX_REASON_LEN {
        return s;
    }
    let mut end = MAX_REASON_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Hello {
    /// Encodes the payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HELLO_FIXED_LEN);
        put_preamble(&mut out, self.version);
        out.put_u16(0);
        out.put_u64(self.capabilities);
        out.put_u32(self.max_frame_payload);
        out.put_u32(self.heartbeat_ms);
        out.put_u32(self.max_message_size);
        out.put_u32(self.last_received_seq);
        out.put_u64(self.instance_id);
        out.put_u64(self.resume_session_id);
        put_extensions(&mut out, &self.extensions);
        out.freeze()
    }

    /// Decodes a payload of this protocol major version. Callers check the version with
    /// [`decode_preamble`] first: the layout after it belongs to the major version.
    pub fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let version = decode_preamble(payload)?;
        let mut r = Reader::new(payload);
        r.take(8)?; // magic, version, reserved
        let hello = Hello {
            version,
            capabilities: r.u64()?,
            max_frame_payload: r.u32()?,
            heartbeat_ms: r.u32()?,
            max_message_size: r.u32()?,
            last_received_seq: r.u32()?,
            instance_id: r.u64()?,
            resume_session_id: r.u64()?,
            extensions: Vec::new(),
        };
        let extensions = read_extensions(r.rest())?;
        Ok(Hello {
            extensions,
            ..hello
        })
    }
}

impl Welcome {
    /// Encodes the payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(WELCOME_FIXED_LEN);
        put_preamble(&mut out, self.version);
        out.put_u16(0);
        out.put_u64(self.capabilities);
        out.put_u32(self.max_frame_payload);
        out.put_u32(self.heartbeat_ms);
        out.put_u32(self.max_message_size);
        out.put_u32(self.last_received_seq);
        out.put_u64(self.session_id);
        out.put_u8(self.resumed as u8);
        out.put_slice(&[0u8; 7]);
        put_extensions(&mut out, &self.extensions);
        out.freeze()
    }

    /// Decodes a payload of this protocol major version (check the preamble first).
    pub fn decode(payload: &[u8]) -> Result<Welcome, WireError> {
        let version = decode_preamble(payload)?;
        let mut r = Reader::new(payload);
        r.take(8)?;
        let capabilities = r.u64()?;
        let max_frame_payload = r.u32()?;
        let heartbeat_ms = r.u32()?;
        let max_message_size = r.u32()?;
        let last_received_seq = r.u32()?;
        let session_id = r.u64()?;
        let resumed = match r.u8()? {
            0 => false,
            1 => true,
            _ => {
                return Err(WireError::Malformed(
                    "WELCOME resumed flag is neither 0 nor 1",
                ))
            }
        };
        r.take(7)?;
        let extensions = read_extensions(r.rest())?;
        Ok(Welcome {
            version,
            capabilities,
            max_frame_payload,
            heartbeat_ms,
            max_message_size,
            last_received_seq,
            session_id,
            resumed,
            extensions,
        })
    }
}

impl Reject {
    /// Encodes the payload (the reason is cut to [`MAX_REASON_LEN`]).
    pub fn encode(&self) -> Bytes {
        let reason = clamp_reason(&self.reason);
        let mut out = BytesMut::with_capacity(REJECT_FIXED_LEN + reason.len());
        put_preamble(&mut out, self.version);
        out.put_u16(self.code);
        out.put_slice(reason.as_bytes());
        out.freeze()
    }

    /// Decodes a payload. The REJECT layout is the same in every version, so that a dialer
    /// can read why it was refused whatever version the listener speaks.
    pub fn decode(payload: &[u8]) -> Result<Reject, WireError> {
        let version = decode_preamble(payload)?;
        let mut r = Reader::new(payload);
        r.take(6)?;
        let code = r.u16()?;
        let reason = read_reason(r.rest())?;
        Ok(Reject {
            version,
            code,
            reason,
        })
    }
}

impl Close {
    /// Encodes the payload (the reason is cut to [`MAX_REASON_LEN`]).
    pub fn encode(&self) -> Bytes {
        let reason = clamp_reason(&self.reason);
        let mut out = BytesMut::with_capacity(2 + reason.len());
        out.put_u16(self.code);
        out.put_slice(reason.as_bytes());
        out.freeze()
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Close, WireError> {
        let mut r = Reader::new(payload);
        let code = r.u16()?;
        let reason = read_reason(r.rest())?;
        Ok(Close { code, reason })
    }
}

/// Encodes the 8-byte opaque token of a PING or PONG.
pub fn encode_ping(token: u64) -> Bytes {
    Bytes::copy_from_slice(&token.to_be_bytes())
}

/// Encodes selective-ack ranges as an ACK payload (at most [`MAX_SACK_RANGES`] are kept).
pub fn encode_sack(ranges: &[(u32, u32)]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 * ranges.len().min(MAX_SACK_RANGES));
    for &(a, b) in ranges.iter().take(MAX_SACK_RANGES) {
        out.put_u32(a);
        out.put_u32(b);
    }
    out.freeze()
}

/// Decodes the 8-byte token of a PING or PONG.
pub fn decode_ping(payload: &[u8]) -> Result<u64, WireError> {
    if payload.len() != 8 {
        return Err(WireError::Malformed("PING/PONG payload is not 8 bytes"));
    }
    Reader::new(payload).u64()
}

/// Decodes the selective-ack ranges of an ACK payload: pairs of (first, last) seq, inclusive.
pub fn decode_sack(payload: &[u8]) -> Result<Vec<(u32, u32)>, WireError> {
    if payload.len() % 8 != 0 || payload.len() / 8 > MAX_SACK_RANGES {
        return Err(WireError::Malformed(
            "ACK payload is not a list of at most 32 ranges",
        ));
    }
    let mut r = Reader::new(payload);
    let mut out = Vec::with_capacity(payload.len() / 8);
    while r.pos < payload.len() {
        out.push((r.u32()?, r.u32()?));
    }
    Ok(out)
}
