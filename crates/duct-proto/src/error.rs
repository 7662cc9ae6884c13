//! Errors of the protocol core. The public `duct::Error` is built from these; each variant
//! maps to one category ([`Error::category`]).

use core::fmt;
use std::time::Duration;

use crate::wire::{FrameKind, WireError};

/// Why the session failed or refused an operation. Fatal errors (everything returned from a
/// `handle_*` call) leave the session closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that are not a valid frame or payload.
    Wire(WireError),
    /// A frame kind that is not allowed in the session's current state.
    UnexpectedFrame {
        /// The frame's kind.
        kind: FrameKind,
        /// The state it arrived in.
        state: &'static str,
    },
    /// Fragments that do not form a message (out of order, overlong, interleaved on one channel).
    Fragment {
        /// The channel of the offending fragment.
        channel: u16,
        /// What was wrong.
        what: &'static str,
    },
    /// A message longer than the receiver accepts.
    MessageTooLarge {
        /// The message length in bytes.
        size: u64,
        /// The limit in force.
        max: u64,
    },
    /// Partially reassembled messages would hold more bytes than the configured cap.
    ReassemblyLimit {
        /// Bytes that would be held.
        needed: u64,
        /// The configured cap (`Config::reassembly_limit`).
        limit: u64,
    },
    /// A fragmented message did not complete within `Config::reassembly_timeout`.
    ReassemblyTimeout {
        /// The channel of the stalled message.
        channel: u16,
        /// The timeout that passed.
        after: Duration,
    },
    /// The peer speaks a protocol major version this implementation does not.
    Incompatible {
        /// Our version.
        local: (u8, u8),
        /// The peer's version.
        peer: (u8, u8),
    },
    /// The listener refused the handshake with a REJECT frame.
    Rejected {
        /// The REJECT code (see [`crate::wire::control::reject_code`]).
        code: u16,
        /// The listener's reason.
        reason: String,
    },
    /// The handshake did not complete within `Config::handshake_timeout`.
    HandshakeTimeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// A handshake parameter outside the range the protocol allows.
    BadParameter(&'static str),
    /// The peer sent nothing (not even a PONG) for `misses` heartbeat intervals: it is gone or
    /// the link is half-open.
    PeerSilent {
        /// How long it was silent.
        after: Duration,
    },
    /// The peer broke the rules of reliable delivery (an ack for a message never sent, too
    /// many messages out of order).
    Reliability(&'static str),
    /// Reliable messages went unacknowledged through `retries` retransmission timeouts in a
    /// row, the peer silent all along: the link is gone.
    Unacknowledged {
        /// Messages unacknowledged.
        messages: usize,
        /// Timeouts in a row.
        retries: u32,
    },
    /// What was asked needs a capability the peer did not agree to.
    NotAgreed(&'static str),
    /// `send` before the handshake completed.
    NotConnected,
    /// `send` after the session was closed by either side.
    Closed,
}

/// The broad category of an [`Error`], which the public API maps to its `ErrorKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// The peer broke the protocol.
    Protocol,
    /// Protocol versions do not match.
    Incompatible,
    /// A message was too large.
    MessageTooLarge,
    /// The peer refused us.
    PermissionDenied,
    /// The peer is unavailable (shutting down, overloaded); retrying may help.
    Unavailable,
    /// A deadline passed.
    TimedOut,
    /// The session is closed or not yet open.
    Closed,
    /// The peer or the link is gone; connecting again may help.
    Disconnected,
    /// The peer does not support what was asked.
    Unsupported,
}

impl Error {
    /// The category of this error.
    pub fn category(&self) -> Category {
        use crate::wire::control::reject_code;
        match self {
            Error::Wire(_)
            | Error::UnexpectedFrame { .. }
            | Error::Fragment { .. }
            | Error::ReassemblyLimit { .. }
            | Error::BadParameter(_)
            | Error::Reliability(_) => Category::Protocol,
            Error::Unacknowledged { .. } => Category::Disconnected,
            Error::NotAgreed(_) => Category::Unsupported,
            Error::MessageTooLarge { .. } => Category::MessageTooLarge,
            Error::ReassemblyTimeout { .. } | Error::HandshakeTimeout { .. } => Category::TimedOut,
            Error::Incompatible { .. } => Category::Incompatible,
            Error::Rejected { code, .. } => match *code {
                reject_code::INCOMPATIBLE_VERSION => Category::Incompatible,
                reject_code::PERMISSION_DENIED => Category::PermissionDenied,
                reject_code::UNAVAILABLE => Category::Unavailable,
                _ => Category::Protocol,
            },
            Error::NotConnected | Error::Closed => Category::Closed,
            Error::PeerSilent { .. } => Category::Disconnected,
        }
    }

    /// The CLOSE code that tells the peer about this error.
    pub fn close_code(&self) -> u16 {
        use crate::wire::control::close_code;
        match self.category() {
            Category::MessageTooLarge => close_code::MESSAGE_TOO_LARGE,
            Category::TimedOut | Category::Disconnected => close_code::TIMEOUT,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::Wire(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Wire(e) => write!(f, "malformed input: {e}"),
            Error::UnexpectedFrame { kind, state } => {
                write!(f, "unexpected {kind:?} frame while {state}")
            }
            Error::Fragment { channel, what } => write!(f, "channel {channel}: {what}"),
            Error::MessageTooLarge { size, max } => {
                write!(
                    f,
                    "message of {size} bytes exceeds the limit of {max} bytes"
                )
            }
            Error::ReassemblyLimit { needed, limit } => write!(
                f,
                "reassembly would hold {needed} bytes, over the per-pipe cap of {limit} bytes"
            ),
            Error::ReassemblyTimeout { channel, after } => write!(
                f,
                "channel {channel}: fragmented message incomplete after {after:?}"
            ),
            Error::Incompatible { local, peer } => write!(
                f,
                "incompatible protocol version: peer speaks {}.{}, this side {}.{}",
                peer.0, peer.1, local.0, local.1
            ),
            Error::Rejected { code, reason } => {
                write!(
                    f,
                    "handshake rejected by the listener (code {code}): {reason}"
                )
            }
            Error::HandshakeTimeout { after } => {
                write!(f, "handshake did not complete within {after:?}")
            }
            Error::BadParameter(what) => write!(f, "bad handshake parameter: {what}"),
            Error::PeerSilent { after } => write!(
                f,
                "peer silent for {after:?} (no data, no heartbeat answer): gone or the link is \
                 half-open"
            ),
            Error::Reliability(what) => write!(f, "reliable delivery: {what}"),
            Error::Unacknowledged { messages, retries } => write!(
                f,
                "{messages} reliable messages unacknowledged after {retries} retransmission \
                 timeouts with the peer silent: the link is gone"
            ),
            Error::NotAgreed(what) => write!(f, "the peer does not support {what}"),
            Error::NotConnected => f.write_str("session not established yet"),
            Error::Closed => f.write_str("session closed"),
        }
    }
}

impl std::error::Error for Error {}
