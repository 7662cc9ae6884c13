//! Test support for duct's own tests and for duct developers; not part of duct's API.
//!
//! [`ChaosProxy`] is a TCP proxy on loopback that sits between a dialer and a listener and
//! breaks the link on command: resets, a blackhole (a half-open link or a frozen host),
//! delay, a bandwidth limit, one direction cut, a refused port. Tests switch faults at any
//! time from the test thread, and they apply to every current and future connection at once.
//!
//! Everything here is plain `std` threads and sockets (no async runtime), sized for tests
//! with a few connections, not for load.
//!
//! ```no_run
//! use std::net::TcpStream;
//! use std::time::Duration;
//! use duct_testkit::ChaosProxy;
//!
//! # fn main() -> std::io::Result<()> {
//! # let server_addr = "127.0.0.1:7000".parse().unwrap();
//! let proxy = ChaosProxy::start(server_addr)?;
//! let client = TcpStream::connect(proxy.addr())?;
//! proxy.delay(Duration::from_millis(50)); // every chunk now arrives 50 ms late
//! proxy.blackhole(); // now nothing arrives at all, and nobody is told
//! proxy.pass(); // healthy again (bytes swallowed meanwhile stay lost)
//! # drop(client);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod proxy;

pub use proxy::{ChaosProxy, Direction};
