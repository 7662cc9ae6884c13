//! Message-oriented communication between the server processes of a game backend.
//!
//! duct connects two processes with a **pipe** that carries whole **messages** (byte payloads
//! whose boundaries are kept) on numbered **channels**. One process **listens** on an address,
//! the other **dials** it; from then on both ends are the same: either side sends, receives
//! and closes. One API serves every transport, chosen by the address:
//!
//! | address | transport |
//! | --- | --- |
//! | `tcp://127.0.0.1:7000`, `tcp://[::1]:7000`, `tcp://localhost:0` | TCP (port 0 picks a free port) |
//! | `tls://host:port` | TCP with TLS |
//! | `uds:///run/game.sock`, `uds://@name` | Unix domain socket: a path, or a Linux abstract name |
//! | `shm://name` | shared memory on one host |
//! | `pipe://name` | Windows named pipe |
//!
//! Each channel chooses its delivery with [`ChannelOptions`]: realtime (bounded queues,
//! newest wins, may drop) or reliable (at-least-once, in order). Failures are one
//! [`Error`] type whose [`kind`](Error::kind) says what happened and whether a retry can help
//! ([`Error::is_retryable`]).
//!
//! ```no_run
//! use duct::{DialOptions, ListenOptions};
//!
//! fn main() -> duct::Result<()> {
//!     let listener = duct::listen("tcp://127.0.0.1:7000", ListenOptions::default())?;
//!     let server = std::thread::spawn(move || -> duct::Result<()> {
//!         let pipe = listener.accept()?;
//!         let msg = pipe.recv()?;
//!         pipe.send(msg) // echo it back
//!     });
//!
//!     let pipe = duct::dial("tcp://127.0.0.1:7000", DialOptions::default())?;
//!     pipe.send("hello")?;
//!     assert_eq!(pipe.recv()?.payload(), b"hello");
//!     server.join().expect("server thread")?;
//!     Ok(())
//! }
//! ```
//!
//! # Threads
//!
//! `send` and `recv` do their I/O on the calling thread when they can (no hand-off between
//! threads per message). One background reactor thread per process (configurable with
//! [`set_reactor_threads`]) serves every pipe and listener while the application is not
//! calling: it completes handshakes, reads ahead into receive queues up to their bound, answers
//! the peer's PINGs, and writes output left queued when a socket was full. It starts with the
//! first `listen` or `dial`, lives for the process, and never keeps the process from exiting.
//!
//! # Async
//!
//! Every blocking call has an async form that runs under any executor (tokio,
//! `futures::executor`, smol, ...), with no runtime dependency and no feature flag:
//! [`Pipe::send_async`], [`Pipe::send_with_async`], [`Pipe::recv_async`],
//! [`Pipe::recv_with_async`], [`Listener::accept_async`] and [`dial_async`]. duct's reactor
//! drives them: a pending future costs a waker slot, not a thread, and nothing polls in a
//! loop. They are cancel-safe: dropping a pending `recv_async` or `accept_async` loses no
//! message or pipe, and a dropped `send_async` either completed (the message accepted) or
//! did not accept the message at all. Timeouts in [`SendOptions`] and [`RecvOptions`] are
//! honoured (a reactor timer wakes the task); a runtime's own timeout around any of these
//! futures works too. `dial_async` runs the (blocking) connect and handshake on a
//! short-lived thread.
//!
//! ```
//! # futures::executor::block_on(async {
//! let listener = duct::listen("tcp://127.0.0.1:0", duct::ListenOptions::default())?;
//! let addr = listener.local_addr().to_string();
//! let (dialed, accepted) = futures::join!(
//!     duct::dial_async(&addr, duct::DialOptions::default()),
//!     listener.accept_async(),
//! );
//! let (client, server) = (dialed?, accepted?);
//! client.send_async("ping").await?;
//! let msg = server.recv_async().await?;
//! server.send_async(msg).await?; // echo
//! assert_eq!(client.recv_async().await?.payload(), b"ping");
//! # Ok::<(), duct::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Channels and QoS
//!
//! Every message travels on a channel (a `u16`, default 0). Per channel, each side chooses
//! with [`ChannelOptions`] how its queues behave: high-water marks for the send and receive
//! queues, what a send does at the send mark ([`Backpressure`]: block, drop the new message,
//! drop the oldest, or fail at once), a time to live (also per message with
//! [`SendOptions::ttl`]), a priority and weight for the scheduler, and rate limits
//! ([`RateLimit`]; [`DialOptions::rate_limit`] limits a whole pipe). Channels are
//! independent: a full bulk channel never blocks a realtime one, and a high-priority message
//! overtakes queued bulk in the sender's queue and in the receiver's. Every message dropped
//! by a policy, a rate limit or its TTL is counted in [`Pipe::stats`].
//!
//! # What this version implements
//!
//! Transports: tcp, tls (TLS 1.3/1.2 and mTLS with rustls: [`TlsOptions`]), uds, and shm
//! (Linux: shared memory, zero-copy with [`Pipe::alloc`]); `pipe://` (Windows named pipes)
//! is refused with [`ErrorKind::Unsupported`]. Channels with every QoS option above,
//! realtime or reliable (at least once across reconnects: [`ChannelOptions::reliable`]);
//! heartbeats, auto-reconnect and resume; timeouts, limits and close reasons; an
//! authentication hook ([`ListenOptions::authenticate`]) and peer-credential filters on Unix
//! sockets and shm.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
mod async_api;
mod driver;
mod error;
mod listener;
mod message;
mod options;
mod pipe;
mod transport;

pub use addr::Addr;
pub use async_api::dial_async;
pub use driver::reactor::set_reactor_threads;
pub use error::{Error, ErrorKind, Result};
pub use listener::{listen, Listener};
pub use message::{Message, MessageBuf};
pub use options::{
    Backpressure, ChannelOptions, ChannelStats, CloseOptions, DialOptions, Heartbeat,
    ListenOptions, PeerCredentials, PeerInfo, PipeState, PipeStats, RateLimit, Reconnect,
    RecvOptions, SendOptions, StateChange, TlsOptions,
};
pub use pipe::{dial, Pipe};

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
