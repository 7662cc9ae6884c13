//! duct's platform layer: the only crate of duct that may contain `unsafe`.
//!
//! Everything here exposes a safe interface; each `unsafe` block inside says, in a
//! `// SAFETY:` comment, which invariant makes it sound. The other crates of the workspace
//! `#![forbid(unsafe_code)]` and reach the platform through this one.
//!
//! Modules:
//! - [`alloc_count`]: a counting global allocator, used by `duct bench` to report
//!   allocations per message.
//! - [`net`]: socket reads into the uninitialised spare capacity of a `BytesMut` (Unix and
//!   Windows).
//! - `pipe` (Windows): named pipes for `pipe://`: server instances and client ends as mio
//!   `NamedPipe`s.
//! - [`shm`]: shared-memory rings, payload pools, futex waits and segments for `shm://`.
//! - `uring` (Linux, feature `io-uring`): the io_uring ring behind the reactor's io_uring
//!   backend (multishot polls, a wait with a timeout).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod alloc_count;
#[cfg(any(unix, windows))]
pub mod net;
#[cfg(windows)]
pub mod pipe;
pub mod shm;
#[cfg(all(target_os = "linux", feature = "io-uring"))]
pub mod uring;
