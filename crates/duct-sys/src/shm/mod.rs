//! Shared memory for the `shm://` transport: the pieces that touch memory shared with another
//! process, each with a safe interface.
//!
//! - [`ring`]: a single-producer single-consumer ring of frame descriptors.
//! - [`pool`]: a payload pool with size classes; [`pool::TxSlot`] to write a payload in
//!   place, [`pool::RxSlot`] to read one in place (an owner for `bytes::Bytes`).
//! - [`wait`]: sleeping until the other side publishes, with a futex in the segment (or a
//!   byte on the control socket for a reactor), and no syscall when nobody sleeps.
//! - [`segment`]: the segment's layout, created in a sealed memfd and mapped by both sides.
//! - [`fdpass`]: passing the segment's fd over the rendezvous socket.
//!
//! The ring, the pool and the wait protocol are written against plain memory regions, so the
//! same code runs in a mapping, in the heap for unit tests and Miri, and under loom
//! (`RUSTFLAGS="--cfg loom"`), which swaps in loom's atomics (see `sync`).
//!
//! The peer is untrusted: indices and lengths it writes are checked before use, and nothing it
//! writes can make this process read or write outside the segment, alias a slot it holds, or
//! loop. It can garble its own traffic, which the protocol layer above reports.

pub mod pool;
pub mod ring;
pub(crate) mod sync;
pub mod wait;

#[cfg(all(unix, not(loom)))]
pub mod fdpass;
#[cfg(all(unix, not(loom)))]
pub mod segment;
