//! Drivers: what runs a [`duct_proto::Session`] against a transport.
//!
//! This version has one driver, the inline driver ([`conn`]): every byte is read and written
//! on the threads of the application's own calls, with no background thread and no hand-off
//! between threads. What it cannot do without a background thread (answer a peer's PING while
//! the application is not calling, flush output left queued after a send timed out while the
//! application makes no further call) is documented on `Pipe`; the reactor driver takes over
//! those duties in a later version without changing the Session or the public API.
//!
//! The contract a stream transport offers the driver is small (see `transport`): a connected
//! stream with an fd to poll, `recv`/`sendmsg`, and `shutdown`.

pub(crate) mod conn;
pub(crate) mod handshake;
pub(crate) mod io;

use crate::{Addr, Error, ErrorKind};

/// Turns a protocol error into the public error, naming the peer.
pub(crate) fn proto_error(e: duct_proto::Error, peer: &Addr) -> Error {
    use duct_proto::Category;
    let kind = match e.category() {
        Category::Protocol => ErrorKind::Protocol,
        Category::Incompatible => ErrorKind::Incompatible,
        Category::MessageTooLarge => ErrorKind::MessageTooLarge,
        Category::PermissionDenied => ErrorKind::PermissionDenied,
        Category::Unavailable => ErrorKind::ConnectionRefused,
        Category::TimedOut => ErrorKind::TimedOut,
        Category::Closed => ErrorKind::Closed,
    };
    Error::new(kind, format!("{peer}: {e}"))
}
