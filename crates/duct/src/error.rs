//! The one public error type of duct, [`Error`], and its categories, [`ErrorKind`].
//!
//! This module owns how failures are described to the user: a category to branch on
//! ([`Error::kind`], [`Error::is_retryable`]), a message that names what failed and with which
//! address, channel or size, the underlying cause when there is one, and the close code and
//! reason when a pipe was closed. The layers below (duct-proto, the transports) report their
//! own failures; the driver converts them into an [`Error`] here.

use std::fmt;
use std::io;
use std::sync::Arc;

/// The result type of every fallible duct call.
pub type Result<T> = std::result::Result<T, Error>;

/// The category of an [`Error`]: what kind of thing went wrong, independent of the transport.
///
/// Branch on this to decide what to do (retry, give up, report). The message of the
/// [`Error`] says what failed in detail. New categories may be added in later versions, so a
/// `match` needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A deadline passed: a connect or handshake timeout, a send that waited for queue space
    /// too long, a `recv` with a timeout that saw no message.
    TimedOut,
    /// The call would have had to wait, and it was asked not to (a zero timeout, `try_recv`,
    /// a full queue under [`Backpressure::FailFast`](crate::Backpressure::FailFast)).
    WouldBlock,
    /// The pipe or listener was closed, locally or by the peer. When the peer closed it,
    /// [`Error::close_reason`] gives its code and reason.
    Closed,
    /// The connection to the peer broke without a close (reset, EOF, missed heartbeats).
    Disconnected,
    /// Nobody is listening at the address (or its listen queue is full).
    ConnectionRefused,
    /// The address is malformed, uses an unknown scheme, or its host name does not resolve.
    InvalidAddress,
    /// The address to listen on is taken by another socket or by a file that is not ours.
    AddressInUse,
    /// The peer broke the wire protocol (a malformed frame, an unexpected frame, a limit
    /// exceeded).
    Protocol,
    /// The peer speaks a protocol version or needs a feature this side does not have.
    Incompatible,
    /// A message is larger than the configured maximum message size.
    MessageTooLarge,
    /// A message's time to live ran out before it could be sent or delivered.
    Expired,
    /// The operating system or the peer refused access: file permissions on a socket path,
    /// a rejected handshake (authentication hook, uid filter, client certificate).
    PermissionDenied,
    /// TLS failed: a certificate did not verify, a handshake alert, unreadable key material.
    Tls,
    /// The peer no longer has the session this side tried to resume; reliable messages in
    /// flight may have been lost (this is reported, never silent).
    SessionLost,
    /// Any other operating-system error; the message and [`std::error::Error::source`] say
    /// which.
    Io,
    /// The feature or option is not implemented in this version of duct, or not on this
    /// platform.
    Unsupported,
}

impl ErrorKind {
    /// A short lowercase description, the same words as [`Display`](fmt::Display).
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TimedOut => "timed out",
            ErrorKind::WouldBlock => "would block",
            ErrorKind::Closed => "closed",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::ConnectionRefused => "connection refused",
            ErrorKind::InvalidAddress => "invalid address",
            ErrorKind::AddressInUse => "address in use",
            ErrorKind::Protocol => "protocol violation",
            ErrorKind::Incompatible => "incompatible peer",
            ErrorKind::MessageTooLarge => "message too large",
            ErrorKind::Expired => "expired",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Tls => "tls error",
            ErrorKind::SessionLost => "session lost",
            ErrorKind::Io => "i/o error",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `io::Error` cause by which a transport says which [`ErrorKind`] a failure is (TLS
/// failures are [`ErrorKind::Tls`] or [`ErrorKind::PermissionDenied`], not `Io`).
#[derive(Debug)]
pub(crate) struct Classified {
    kind: ErrorKind,
    text: String,
}

impl Classified {
    #[cfg_attr(not(any(feature = "tls", duct_shm)), allow(dead_code))]
    pub(crate) fn new(kind: ErrorKind, text: String) -> Classified {
        Classified { kind, text }
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Classified {}

/// The underlying cause of an [`Error`], shared so that `Error` can be cloned (a
/// [`StateChange`](crate::StateChange) carries one to every observer).
type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A duct failure: a category ([`kind`](Error::kind)), a message naming what failed and with
/// which address, channel or size, and, where there is one, the underlying cause and the
/// close code and reason.
///
/// `Display` prints the message followed by the underlying cause, for example
/// `connecting to tcp://127.0.0.1:7000: Connection refused (os error 111)`. Because the cause
/// is already part of that text, [`source`](std::error::Error::source) returns the cause's own
/// source (as [`std::io::Error`] does for wrapped errors), so that error reporters walking the
/// chain do not print the same cause twice; [`get_ref`](Error::get_ref) reaches the cause
/// itself, for example to downcast it to a [`std::io::Error`].
///
/// `Error` is `Clone` (the cause is shared, not copied) and `Send + Sync`. It converts into a
/// [`std::io::Error`] with a matching [`std::io::ErrorKind`] for code that speaks `io::Result`.
#[derive(Clone)]
pub struct Error {
    // Behind one pointer so that `Result<T>` stays one pointer wider than `T` on the hot
    // paths; shared, so that an error made once can be returned again without allocating (a
    // pipe's "no message is ready", which a polling receiver may get very often).
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
    close: Option<(u16, String)>,
}

impl Error {
    /// An error of `kind` whose message is `message`: say what failed and with which address,
    /// channel or size, for example `message of 70000000 bytes on channel 3 exceeds
    /// max_message_size (67108864 bytes)`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
                close: None,
            }),
        }
    }

    /// Attaches the underlying cause. `Display` appends the cause's text to the message.
    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Arc::make_mut(&mut self.inner).source = Some(Arc::new(source));
        self
    }

    /// A [`ErrorKind::Closed`] error carrying a close code and reason.
    ///
    /// With `by_peer` the text reads `closed by peer: code 4000 "server shutting down"`;
    /// otherwise `pipe closed locally`, followed by the code and reason when either was given
    /// (a nonzero code or a nonempty reason). [`Error::close_reason`] returns them either way.
    pub(crate) fn closed(code: u16, reason: impl Into<String>, by_peer: bool) -> Error {
        let reason = reason.into();
        let message = if by_peer {
            format!("closed by peer: code {code} {reason:?}")
        } else if code == 0 && reason.is_empty() {
            "pipe closed locally".to_owned()
        } else {
            format!("pipe closed locally: code {code} {reason:?}")
        };
        let mut err = Error::new(ErrorKind::Closed, message);
        Arc::make_mut(&mut err.inner).close = Some((code, reason));
        err
    }

    /// Wraps an operating-system error, with `context` saying what was being done and to what
    /// (for example `connecting to tcp://127.0.0.1:7000`).
    ///
    /// The kind follows the [`std::io::ErrorKind`]: `ConnectionRefused` → `ConnectionRefused`;
    /// `AddrInUse` → `AddressInUse`; `TimedOut` and `WouldBlock` → `TimedOut` (a blocking
    /// socket only reports `WouldBlock` when its own timeout ran out); `ConnectionReset`,
    /// `ConnectionAborted`, `BrokenPipe`, `UnexpectedEof`, `NotConnected` → `Disconnected`;
    /// `PermissionDenied` → `PermissionDenied`; everything else, `AddrNotAvailable` and
    /// `InvalidInput` included, → `Io`. Callers that know an error means something more
    /// specific (say, a bad address) build the [`Error`] themselves.
    pub(crate) fn io(err: io::Error, context: impl fmt::Display) -> Error {
        if let Some(c) = err.get_ref().and_then(|e| e.downcast_ref::<Classified>()) {
            // A transport that knows better (TLS) said what the failure means.
            return Error::new(c.kind, format!("{context}: {}", c.text));
        }
        let kind = match err.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
            io::ErrorKind::AddrInUse => ErrorKind::AddressInUse,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected => ErrorKind::Disconnected,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        Error::new(kind, context.to_string()).with_source(err)
    }

    /// An [`ErrorKind::Unsupported`] error for a feature that this version of duct does not
    /// implement: `{what} is not implemented yet in this version of duct`. (Today only
    /// `shm://` where it is not implemented.)
    #[cfg_attr(duct_shm, allow(dead_code))]
    pub(crate) fn unsupported(what: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("{what} is not implemented yet in this version of duct"),
        )
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the same call may succeed if tried again later, unchanged.
    ///
    /// True for [`ErrorKind::TimedOut`], [`ErrorKind::WouldBlock`],
    /// [`ErrorKind::Disconnected`] and [`ErrorKind::ConnectionRefused`]: these describe a
    /// moment (a deadline, a full queue, a broken link, a listener not started yet), not the
    /// request. Everything else is false: a bad address, a rejected handshake
    /// ([`ErrorKind::PermissionDenied`]), an incompatible peer, an oversized message or an
    /// unsupported option fail the same way every time, and a closed pipe stays closed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::TimedOut
                | ErrorKind::WouldBlock
                | ErrorKind::Disconnected
                | ErrorKind::ConnectionRefused
        )
    }

    /// The close code and reason, for an [`ErrorKind::Closed`] error that carries them: the
    /// peer's when the peer closed the pipe, this side's when it was closed locally with
    /// [`CloseOptions::reason`](crate::CloseOptions::reason). `None` for every other error.
    pub fn close_reason(&self) -> Option<(u16, &str)> {
        self.inner
            .close
            .as_ref()
            .map(|(code, reason)| (*code, reason.as_str()))
    }

    /// The underlying cause, if any: the error that `Display` appends to the message. Use it
    /// to downcast, for example to a [`std::io::Error`] to read its OS error code.
    pub fn get_ref(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        if let Some(close) = &self.inner.close {
            d.field("close", close);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The cause's text is already in our Display; hand out the next link of the chain.
        self.inner
            .source
            .as_ref()
            .and_then(|source| source.source())
    }
}

impl From<Error> for io::Error {
    /// Converts into an [`std::io::Error`] whose kind matches the duct kind as closely as
    /// `std` allows (for example `Closed` → `BrokenPipe`, `Disconnected` → `ConnectionReset`,
    /// `InvalidAddress` → `InvalidInput`, `Protocol` → `InvalidData`), and whose inner error is
    /// the duct [`Error`] itself (reach it with [`std::io::Error::get_ref`] and downcast).
    /// An [`ErrorKind::Io`] error keeps the kind of the OS error it wraps.
    fn from(err: Error) -> io::Error {
        let kind = match err.kind() {
            ErrorKind::TimedOut | ErrorKind::Expired => io::ErrorKind::TimedOut,
            ErrorKind::WouldBlock => io::ErrorKind::WouldBlock,
            ErrorKind::Closed => io::ErrorKind::BrokenPipe,
            ErrorKind::Disconnected => io::ErrorKind::ConnectionReset,
            ErrorKind::SessionLost => io::ErrorKind::ConnectionAborted,
            ErrorKind::ConnectionRefused => io::ErrorKind::ConnectionRefused,
            ErrorKind::InvalidAddress | ErrorKind::MessageTooLarge => io::ErrorKind::InvalidInput,
            ErrorKind::AddressInUse => io::ErrorKind::AddrInUse,
            ErrorKind::Protocol | ErrorKind::Incompatible | ErrorKind::Tls => {
                io::ErrorKind::InvalidData
            }
            ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::Io => err
                .get_ref()
                .and_then(|source| source.downcast_ref::<io::Error>())
                .map_or(io::ErrorKind::Other, io::Error::kind),
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    const ALL_KINDS: [ErrorKind; 16] = [
        ErrorKind::TimedOut,
        ErrorKind::WouldBlock,
        ErrorKind::Closed,
        ErrorKind::Disconnected,
        ErrorKind::ConnectionRefused,
        ErrorKind::InvalidAddress,
        ErrorKind::AddressInUse,
        ErrorKind::Protocol,
        ErrorKind::Incompatible,
        ErrorKind::MessageTooLarge,
        ErrorKind::Expired,
        ErrorKind::PermissionDenied,
        ErrorKind::Tls,
        ErrorKind::SessionLost,
        ErrorKind::Io,
        ErrorKind::Unsupported,
    ];

    #[test]
    fn retryable_kinds_are_exactly_the_documented_four() {
        for kind in ALL_KINDS {
            let expected = matches!(
                kind,
                ErrorKind::TimedOut
                    | ErrorKind::WouldBlock
                    | ErrorKind::Disconnected
                    | ErrorKind::ConnectionRefused
            );
            assert_eq!(Error::new(kind, "x").is_retryable(), expected, "{kind:?}");
        }
    }

    #[test]
    fn kind_display_is_nonempty_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in ALL_KINDS {
            let text = kind.to_string();
            assert!(!text.is_empty());
            assert!(seen.insert(text), "duplicate text for {kind:?}");
        }
    }

    #[test]
    fn closed_by_peer_display_and_reason() {
        let err = Error::closed(4000, "server shutting down", true);
        assert_eq!(err.kind(), ErrorKind::Closed);
        assert_eq!(
            err.to_string(),
            "closed by peer: code 4000 \"server shutting down\""
        );
        assert_eq!(err.close_reason(), Some((4000, "server shutting down")));
        assert!(!err.is_retryable());
    }

    #[test]
    fn closed_locally_display() {
        assert_eq!(
            Error::closed(0, "", false).to_string(),
            "pipe closed locally"
        );
        let err = Error::closed(1, "bye", false);
        assert_eq!(err.to_string(), "pipe closed locally: code 1 \"bye\"");
        assert_eq!(err.close_reason(), Some((1, "bye")));
    }

    #[test]
    fn close_reason_is_none_for_other_errors() {
        assert_eq!(Error::new(ErrorKind::Closed, "x").close_reason(), None);
        assert_eq!(Error::new(ErrorKind::Io, "x").close_reason(), None);
    }

    #[test]
    fn io_kind_mapping() {
        let cases = [
            (
                io::ErrorKind::ConnectionRefused,
                ErrorKind::ConnectionRefused,
            ),
            (io::ErrorKind::AddrInUse, ErrorKind::AddressInUse),
            (io::ErrorKind::TimedOut, ErrorKind::TimedOut),
            (io::ErrorKind::WouldBlock, ErrorKind::TimedOut),
            (io::ErrorKind::ConnectionReset, ErrorKind::Disconnected),
            (io::ErrorKind::ConnectionAborted, ErrorKind::Disconnected),
            (io::ErrorKind::BrokenPipe, ErrorKind::Disconnected),
            (io::ErrorKind::UnexpectedEof, ErrorKind::Disconnected),
            (io::ErrorKind::NotConnected, ErrorKind::Disconnected),
            (io::ErrorKind::PermissionDenied, ErrorKind::PermissionDenied),
            (io::ErrorKind::AddrNotAvailable, ErrorKind::Io),
            (io::ErrorKind::InvalidInput, ErrorKind::Io),
            (io::ErrorKind::NotFound, ErrorKind::Io),
            (io::ErrorKind::Other, ErrorKind::Io),
        ];
        for (io_kind, expected) in cases {
            let err = Error::io(io::Error::from(io_kind), "doing a thing");
            assert_eq!(err.kind(), expected, "{io_kind:?}");
        }
    }

    #[test]
    fn io_display_has_context_and_cause_once() {
        let err = Error::io(
            io::Error::new(io::ErrorKind::ConnectionRefused, "nobody home"),
            "connecting to tcp://127.0.0.1:1",
        );
        assert_eq!(
            err.to_string(),
            "connecting to tcp://127.0.0.1:1: nobody home"
        );
        // The cause is in Display, so source() must not repeat it...
        assert!(err.source().is_none());
        // ...but it stays reachable for downcasting.
        let io_err = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<io::Error>())
            .expect("io::Error inside");
        assert_eq!(io_err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn source_chain_skips_the_displayed_link() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Error::new(ErrorKind::Protocol, "decoding a frame")
            .with_source(Outer(io::Error::other("inner")));
        assert_eq!(err.to_string(), "decoding a frame: outer");
        assert_eq!(err.source().map(|s| s.to_string()), Some("inner".into()));
    }

    #[test]
    fn unsupported_message() {
        let err = Error::unsupported("shm://");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert_eq!(
            err.to_string(),
            "shm:// is not implemented yet in this version of duct"
        );
    }

    #[test]
    fn clone_keeps_everything() {
        let err = Error::io(io::Error::from(io::ErrorKind::BrokenPipe), "writing");
        let copy = err.clone();
        assert_eq!(copy.kind(), err.kind());
        assert_eq!(copy.to_string(), err.to_string());
        let closed = Error::closed(7, "x", true).clone();
        assert_eq!(closed.close_reason(), Some((7, "x")));
    }

    #[test]
    fn debug_shows_kind_and_message() {
        let text = format!("{:?}", Error::closed(3, "r", true));
        assert!(
            text.contains("Closed") && text.contains("closed by peer"),
            "{text}"
        );
    }

    #[test]
    fn into_io_error_maps_kind_and_keeps_duct_error() {
        let cases = [
            (ErrorKind::TimedOut, io::ErrorKind::TimedOut),
            (ErrorKind::WouldBlock, io::ErrorKind::WouldBlock),
            (ErrorKind::Closed, io::ErrorKind::BrokenPipe),
            (ErrorKind::Disconnected, io::ErrorKind::ConnectionReset),
            (
                ErrorKind::ConnectionRefused,
                io::ErrorKind::ConnectionRefused,
            ),
            (ErrorKind::InvalidAddress, io::ErrorKind::InvalidInput),
            (ErrorKind::AddressInUse, io::ErrorKind::AddrInUse),
            (ErrorKind::Protocol, io::ErrorKind::InvalidData),
            (ErrorKind::PermissionDenied, io::ErrorKind::PermissionDenied),
            (ErrorKind::Unsupported, io::ErrorKind::Unsupported),
            (ErrorKind::Io, io::ErrorKind::Other),
        ];
        for (kind, expected) in cases {
            let io_err: io::Error = Error::new(kind, "m").into();
            assert_eq!(io_err.kind(), expected, "{kind:?}");
            let inner = io_err
                .get_ref()
                .and_then(|e| e.downcast_ref::<Error>())
                .expect("duct Error inside");
            assert_eq!(inner.kind(), kind);
        }
        // An Io error keeps the kind of the OS error it wraps.
        let io_err: io::Error =
            Error::io(io::Error::from(io::ErrorKind::NotFound), "opening").into();
        assert_eq!(io_err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn error_is_send_sync_and_result_is_small() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
