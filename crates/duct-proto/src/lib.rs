//! duct's protocol core, sans-IO.
//!
//! This crate turns bytes into frames and frames into messages and events, and back, without
//! touching a socket, a thread, a clock or a random number generator: the driver in the `duct`
//! crate owns those and passes `now` in. That makes every decision here deterministic, which is
//! what lets two [`Session`]s be tested against each other over a simulated link with virtual
//! time.
//!
//! - [`wire`]: the 24-byte [`wire::Header`], control payloads ([`wire::control`]), and the
//!   [`wire::Deframer`] that cuts a byte stream into frames without copying payloads.
//! - [`Session`]: handshake, fragmentation and bounded reassembly, ping/pong, close.
//! - [`qos`]: per-channel send queues with high-water marks and backpressure policies, time
//!   to live, token-bucket rate limits, and the scheduler (strict priority, then deficit round
//!   robin by weight).
//! - [`lifecycle::Lifecycle`]: a pipe's life across connections: reconnect backoff, resume
//!   window, final states.
//!
//! The wire protocol is specified normatively in `docs/PROTOCOL.md`.
//!
//! ```
//! use std::time::Instant;
//! use bytes::{Bytes, BytesMut};
//! use duct_proto::{Config, Role, Session};
//!
//! let now = Instant::now();
//! let mut dialer = Session::new(Config::default(), Role::Dialer, now);
//! let mut listener = Session::new(Config { session_id: 7, ..Config::default() }, Role::Listener, now);
//!
//! // Move every queued frame from one session to the other, as a transport would.
//! fn pump(from: &mut Session, to: &mut Session, now: Instant) {
//!     let mut wire = BytesMut::new();
//!     while let Some(t) = from.poll_transmit() {
//!         wire.extend_from_slice(&t.header);
//!         wire.extend_from_slice(&t.payload);
//!     }
//!     to.handle_input(&mut wire, now).unwrap();
//! }
//! pump(&mut dialer, &mut listener, now); // HELLO
//! pump(&mut listener, &mut dialer, now); // WELCOME
//! assert_eq!(dialer.session_id(), 7);
//!
//! dialer.send(3, Bytes::from_static(b"hello"), now).unwrap();
//! pump(&mut dialer, &mut listener, now);
//! let m = listener.poll_message().unwrap();
//! assert_eq!((m.channel, &m.payload[..]), (3, &b"hello"[..]));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod lifecycle;
pub mod qos;
pub mod reliable;
pub mod session;
pub mod wire;

pub use error::{Category, Error};
pub use session::{
    Config, Delivered, Direct, DirectRead, DirectRun, Event, Negotiated, Part, Payload,
    ReceiveSink, Received, ReliableRun, Role, Session, State, Transmit, DIRECT_MIN,
};
