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
//! | `tls://host:port` | TCP with TLS (cargo feature `tls`, on by default) |
//! | `uds:///run/game.sock`, `uds://@name` | Unix domain socket: a path, or a Linux abstract name |
//! | `shm://name` | shared memory between processes of one host (Linux, macOS) |
//! | `pipe://name` | Windows named pipe `\\.\pipe\name` (elsewhere [`ErrorKind::Unsupported`]) |
//!
//! Each channel chooses its delivery with [`ChannelOptions`]: **realtime** (the default:
//! bounded queues, in order, may drop by policy, time to live or a broken connection) or
//! **reliable** (numbered and acknowledged: at least once, in order, across reconnects).
//! Failures are one [`Error`] type whose [`kind`](Error::kind) says what happened and whether
//! a retry can help ([`Error::is_retryable`]).
//!
//! ```
//! use std::time::Duration;
//! use duct::{ChannelOptions, DialOptions, ErrorKind, ListenOptions, Message, RecvOptions};
//!
//! fn main() -> duct::Result<()> {
//!     // Channel 1 is reliable on both ends; every other channel is realtime.
//!     let inventory = ChannelOptions::default().reliable(true);
//!
//!     // Port 0: the system picks a free port, and the listener tells which.
//!     let listener = duct::listen(
//!         "tcp://127.0.0.1:0",
//!         ListenOptions::default().channel(1, inventory.clone()),
//!     )?;
//!     let addr = listener.local_addr().to_string(); // "tcp://127.0.0.1:<port>"
//!
//!     let server = std::thread::spawn(move || -> duct::Result<()> {
//!         let pipe = listener.accept()?;
//!         loop {
//!             match pipe.recv() {
//!                 Ok(msg) => pipe.send(msg)?, // echo, on the channel it came on
//!                 Err(e) if e.kind() == ErrorKind::Closed => return Ok(()), // the dialer left
//!                 Err(e) => return Err(e),
//!             }
//!         }
//!     });
//!
//!     let pipe = duct::dial(
//!         &addr,
//!         DialOptions::default()
//!             .timeout(Duration::from_secs(2))
//!             .channel(1, inventory),
//!     )?;
//!     pipe.send(Message::new("+1 health potion").with_channel(1))?;
//!     pipe.send("position 10,20")?; // channel 0: realtime
//!     let wait = RecvOptions::default().timeout(Duration::from_secs(2));
//!     let mut got = Vec::new();
//!     for _ in 0..2 {
//!         let msg = pipe.recv_with(&wait)?;
//!         got.push((msg.channel(), msg.payload().to_vec()));
//!     }
//!     got.sort(); // in order per channel; across channels, the scheduler decides
//!     assert_eq!(got[0], (0, b"position 10,20".to_vec()));
//!     assert_eq!(got[1], (1, b"+1 health potion".to_vec()));
//!     pipe.close()?; // the server's recv then returns ErrorKind::Closed
//!     server.join().expect("the server thread")
//! }
//! ```
//!
//! The user guide, `docs/GUIDE.md` in the repository, explains the concepts (pipes,
//! channels, realtime and reliable delivery, the pipe's life), every option with its default
//! and its cost, how to choose a transport, security and tuning. The runnable examples in
//! `crates/duct/examples/` show a small game cluster of four processes that survives a
//! killed server (`game_cluster`), zero-copy shared memory (`zero_copy`) and mutual TLS
//! (`tls`): `cargo run -p duct --example game_cluster`.
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
//! On Linux the reactor waits on io_uring where the kernel allows it, else on epoll (other
//! systems: kqueue, IOCP). [`set_backend`] (or the `DUCT_BACKEND` environment variable) chooses,
//! before the first `listen` or `dial`; [`backend`] tells which one runs. Both behave the same,
//! and neither is on the inline path, so the choice changes the reactor's costs, not what a
//! `send` or `recv` costs.
//!
//! ```
//! // Before the first listen or dial; afterwards the call fails with ErrorKind::Unsupported.
//! duct::set_backend(duct::Backend::Epoll)?;
//! let listener = duct::listen("tcp://127.0.0.1:0", duct::ListenOptions::default())?;
//! assert_eq!(duct::backend(), Some(duct::Backend::Epoll));
//! # drop(listener);
//! # Ok::<(), duct::Error>(())
//! ```
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
//! # Observability
//!
//! duct never prints. [`Pipe::stats`] gives a pipe's counters per channel; logging goes
//! through [`tracing`](https://docs.rs/tracing) (a span per pipe, carrying its id, session,
//! addresses, transport and role, and the parent of every event about the pipe: connection
//! life at INFO, a failed reconnect attempt at DEBUG, per-message events at TRACE only); with
//! the cargo feature `metrics` (on by default), every pipe publishes the same figures to the
//! [`metrics`](https://docs.rs/metrics) facade every [`set_metrics_interval`] (1 s), at no
//! cost per message. The span, event and metric names and labels are in [`observability`].
//!
//! # What this version implements
//!
//! Transports: tcp, tls (TLS 1.3/1.2 and mTLS with rustls: [`TlsOptions`]), uds, and shm
//! (Linux: shared memory, zero-copy with [`Pipe::alloc`]), and `pipe://` (Windows named
//! pipes; refused with [`ErrorKind::Unsupported`] elsewhere). Channels with every QoS option above,
//! realtime or reliable (at least once across reconnects: [`ChannelOptions::reliable`]);
//! heartbeats, auto-reconnect and resume; timeouts, limits and close reasons; an
//! authentication hook ([`ListenOptions::authenticate`]) and peer-credential filters on Unix
//! sockets and shm.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
mod async_api;
mod batch;
mod driver;
mod error;
mod listener;
mod message;
pub mod observability;
mod options;
mod pipe;
mod transport;

pub use addr::Addr;
pub use async_api::dial_async;
pub use batch::{Iter as MessageBatchIter, MessageBatch, MessageRef};
pub use driver::backend::{backend, set_backend, Backend};
pub use driver::reactor::set_reactor_threads;
pub use error::{Error, ErrorKind, Result};
pub use listener::{listen, Listener};
pub use message::{Message, MessageBuf};
pub use observability::set_metrics_interval;
pub use options::{
    Backpressure, ChannelOptions, ChannelStats, CloseOptions, DialOptions, Heartbeat,
    ListenOptions, PeerCredentials, PeerInfo, PipeState, PipeStats, RateLimit, Reconnect,
    RecvOptions, SendOptions, StateChange, TlsOptions,
};
pub use pipe::{dial, Pipe};

/// Where the rendezvous sockets of `shm://` listeners live on systems without abstract Unix
/// socket names (macOS): the directory named by the environment variable `DUCT_SHM_DIR`, or
/// `/tmp/duct-shm-<uid>` (created with mode 0700 on first use; a listener or dialer refuses it
/// unless it belongs to this user and nobody else can enter it). `None` on Linux, where the
/// rendezvous socket of `shm://NAME` is the abstract name `@duct-shm/NAME`, and on systems
/// without `shm://`.
pub fn shm_rendezvous_dir() -> Option<std::path::PathBuf> {
    #[cfg(duct_shm)]
    return transport::shm::rendezvous_dir_path();
    #[cfg(not(duct_shm))]
    None
}

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
