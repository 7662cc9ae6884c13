//! The platform side of the reactor: what a transport hands the reactor to be watched
//! ([`Readiness`]), and how it is registered with `mio`. One module per OS, same names.
//!
//! - **Unix** (`unix.rs`): a transport's readiness is an fd (the socket, or shm's control
//!   socket), registered with epoll or kqueue through `mio::unix::SourceFd`. Readiness is
//!   edge-triggered: after an event, the reactor hears of the fd again once it was read (or
//!   written) until `WouldBlock` and new readiness came, or once it is registered afresh.
//! - **Windows** (`windows.rs`): mio registers only objects it owns (its `TcpStream`,
//!   `TcpListener`, `NamedPipe`), and its AFD poll reports a readiness once, then stays
//!   disarmed until an I/O call *through that object* returns `WouldBlock`. duct's sockets are
//!   owned by std types and read through rustix, so a transport carries a `SocketWatch`: a
//!   second handle to its socket (`WSADuplicateSocket`), owned by a mio `TcpStream` that is
//!   registered in the socket's place and never read or written. The socket's own I/O calls
//!   re-arm the watch (`reregister`) whenever they return `WouldBlock`, which is exactly what
//!   mio does inside its own types. The result is the Unix contract: an event after each
//!   `WouldBlock` once new readiness comes, and registering afresh reports readiness that is
//!   already there (an AFD poll is a level check when it is submitted).
//!
//!   Why a duplicate handle rather than letting the transport own the mio `TcpStream` and do
//!   its I/O through it: registration needs `&mut` while other threads read and write, so the
//!   mio object would sit behind a lock that every receive and send takes, and a caller
//!   blocked in `WSAPoll` (which needs the socket borrowed) would hold it and stall the
//!   reactor's registrations for every other pipe on that thread. With the duplicate, the
//!   lock is the watch's alone: taken to register, and to re-arm after a `WouldBlock`. The
//!   costs: one more handle per socket, and one `reregister` per `WouldBlock`.
//!
//!   Named pipes (`pipe://`) are mio `NamedPipe`s, whose overlapped I/O works only while
//!   they are registered and which cannot move between polls: each is registered once, under
//!   a token of its own, for its whole life, and passes its events on to the source that
//!   watches it now ([`PipeSource`]: a change of interest only changes where they go, and
//!   reports readiness already there). See `transport/pipe.rs`.
//!
//! - **Linux with io_uring** (`uring.rs`, the reactor's other backend, see
//!   `driver::backend`): the same fd, watched by a multishot `POLL_ADD` on the reactor
//!   thread's ring instead of an epoll registration; the contract is the same.
//!
//! Blocking waits (a caller's `recv` with a deadline) do not involve the reactor on Unix
//! (`poll`) or for Windows sockets (`WSAPoll`; see `driver::io::wait`); a named pipe's wait
//! is on a condition variable that its reactor thread notifies.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(duct_uring)]
pub(crate) mod uring;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;
