//! Windows: a socket's readiness through a [`SocketWatch`], a named pipe's through its own
//! registration ([`PipeSource`]); see the parent module for why.

use std::io;
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, Weak};

use mio::{Interest, Registry, Token};
use rustix::fd::BorrowedFd;

use crate::driver::reactor::Reactive;

/// What the reactor watches for a transport.
#[derive(Clone, Copy)]
pub(crate) enum Readiness<'a> {
    /// A socket, and the watch that registers it.
    Socket {
        socket: BorrowedFd<'a>,
        watch: &'a SocketWatch,
    },
    /// A named pipe, or a pipe listener's waiting instance: registered with the reactor for
    /// its whole life, it passes its readiness on to whichever source watches it now.
    Pipe(&'a dyn PipeSource),
}

/// A named pipe as the reactor sees it (see the parent module).
///
/// mio's `NamedPipe` does its I/O only while it is registered with a `Poll`, cannot move to
/// another one, and reports each completed read or write once. So a pipe transport registers
/// its pipe once, under a token of its own, for as long as it lives; its events go to the
/// source (a handshake, then a pipe's connection; or a listener) that asked for them here,
/// and a change of interest that adds readiness the pipe already has reports it again (the
/// level check a fresh registration makes for a socket).
pub(crate) trait PipeSource: Sync {
    /// From now on, readiness in `interest` goes to `owner`'s `on_ready` (`None`: to nobody).
    /// Readiness the pipe has already, newly in `interest`, is reported soon after (from the
    /// pipe's reactor thread, never from this call, which may run under the owner's locks).
    fn set_owner(&self, owner: &Weak<dyn Reactive>, interest: Option<Interest>);
}

/// Changes which readiness `registry` watches for `src` under `token`: `from` is what is
/// registered now, `to` what should be (`None`: nothing). `owner` is the source the token
/// stands for: a named pipe sends its readiness there.
pub(crate) fn set_interest(
    registry: &Registry,
    token: Token,
    owner: &Weak<dyn Reactive>,
    src: Readiness<'_>,
    from: Option<Interest>,
    to: Option<Interest>,
) -> io::Result<()> {
    if from == to {
        return Ok(());
    }
    match src {
        Readiness::Socket { socket, watch } => {
            watch.set_interest(socket, registry, token, from.is_some(), to)
        }
        Readiness::Pipe(pipe) => {
            pipe.set_owner(owner, to);
            Ok(())
        }
    }
}

/// The registration of one socket with the reactor's poller.
///
/// mio on Windows registers only sockets it owns, and needs `&mut` to do it; the transport's
/// socket belongs to a std type and is read and written by several threads at once. So the
/// watch registers a duplicate handle of the socket (the same socket to the AFD driver, which
/// is what mio polls), owned by a `mio::net::TcpStream` behind a mutex. Nothing is ever read
/// or written through the duplicate: whatever the wrapper type, it works for a listening
/// socket too (mio polls both kinds alike).
///
/// After an event, mio leaves the reported readiness disarmed until it is asked again. The
/// socket's I/O calls do that with [`SocketWatch::rearm`] whenever they return `WouldBlock`
/// (as mio's own `do_io` does for its types), so the reactor sees the next readiness, as on
/// Unix with edge-triggered epoll.
///
/// The duplicate handle is made on the first registration and lives as long as the watch
/// (its owner, the transport): the connection closes when both handles are closed.
#[derive(Default)]
pub(crate) struct SocketWatch {
    inner: Mutex<Option<Watched>>,
}

struct Watched {
    /// The duplicate handle, registered in the socket's place.
    source: mio::net::TcpStream,
    /// Where and for what it is registered now.
    registered: Option<(Registry, Token, Interest)>,
}

impl std::fmt::Debug for SocketWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registered = self
            .lock()
            .as_ref()
            .and_then(|w| w.registered.as_ref().map(|r| r.2));
        f.debug_struct("SocketWatch")
            .field("registered", &registered)
            .finish()
    }
}

impl SocketWatch {
    fn lock(&self) -> MutexGuard<'_, Option<Watched>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the socket for `to` with `registry` under `token`, or deregisters it
    /// (`None`). `change`: the caller registered it before, with the same registry and token,
    /// and changes the interest; otherwise a registration left by an earlier owner (a
    /// handshake's, served by another reactor thread) is dropped first. Registering (again)
    /// reports readiness that is already there.
    fn set_interest(
        &self,
        socket: BorrowedFd<'_>,
        registry: &Registry,
        token: Token,
        change: bool,
        to: Option<Interest>,
    ) -> io::Result<()> {
        let mut guard = self.lock();
        let Some(interest) = to else {
            if let Some(w) = guard.as_mut() {
                if let Some((registry, _, _)) = w.registered.take() {
                    registry.deregister(&mut w.source)?;
                }
            }
            return Ok(());
        };
        let w = match guard.as_mut() {
            Some(w) => w,
            None => {
                let duplicate = TcpStream::from(socket.try_clone_to_owned()?);
                guard.insert(Watched {
                    source: mio::net::TcpStream::from_std(duplicate),
                    registered: None,
                })
            }
        };
        match &mut w.registered {
            Some((same, t, i)) if change => {
                same.reregister(&mut w.source, token, interest)?;
                (*t, *i) = (token, interest);
            }
            registered => {
                if let Some((old, _, _)) = registered.take() {
                    old.deregister(&mut w.source)?;
                }
                registry.register(&mut w.source, token, interest)?;
                w.registered = Some((registry.try_clone()?, token, interest));
            }
        }
        Ok(())
    }

    /// Asks the poller again for everything registered, after an I/O call on the socket
    /// returned `WouldBlock`. Does nothing when the socket is not registered.
    pub(crate) fn rearm(&self) {
        let mut guard = self.lock();
        let Some(w) = guard.as_mut() else { return };
        let Some((registry, token, interest)) = &w.registered else {
            return;
        };
        if let Err(err) = registry.reregister(&mut w.source, *token, *interest) {
            // The socket is being closed; its next call reports what matters.
            tracing::debug!(%err, "re-arming a socket's readiness failed");
        }
    }
}
