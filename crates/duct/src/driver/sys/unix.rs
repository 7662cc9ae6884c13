//! Unix: a transport's readiness is an fd, registered with epoll or kqueue as it is.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// What the reactor watches for a transport: its fd.
pub(crate) type Readiness<'a> = BorrowedFd<'a>;

/// Changes which readiness `registry` watches for `src` under `token`: `from` is what is
/// registered now, `to` what should be (`None`: nothing).
pub(crate) fn set_interest(
    registry: &Registry,
    token: Token,
    src: Readiness<'_>,
    from: Option<Interest>,
    to: Option<Interest>,
) -> io::Result<()> {
    let fd = src.as_raw_fd();
    let mut src = SourceFd(&fd);
    match (from, to) {
        (None, None) => Ok(()),
        (None, Some(i)) => registry.register(&mut src, token, i),
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(_), Some(i)) => registry.reregister(&mut src, token, i),
        (Some(_), None) => registry.deregister(&mut src),
    }
}
