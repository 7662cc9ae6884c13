//! The payload pool of one direction: fixed-size slots in a few size classes, and one shared
//! state word per slot.
//!
//! The producer (sender) allocates a slot, writes the payload into it and sends the slot's
//! index in a descriptor; the consumer (receiver) reads the payload in place and frees the slot
//! when the last view of it is dropped. A slot's shared state moves `FREE → BUSY` only by the
//! producer and `BUSY → FREE` only by the consumer (with `Release`, so the producer's
//! `Acquire` when it allocates the slot again orders the consumer's reads before the
//! producer's next writes).
//!
//! The peer is not trusted with our memory safety: the producer also keeps a private "held"
//! flag per slot for the [`TxSlot`]s it has handed out and never allocates a held slot, so two
//! mutable views of one slot never exist in this process, whatever the peer writes into the
//! shared states. A consumer checks every descriptor's slot and length against the pool's
//! geometry before it makes a view ([`PoolRx::take`]).

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::ring::Corrupt;
use super::sync::{AtomicU32, Ordering};

const FREE: u32 = 0;
const BUSY: u32 = 1;

/// One size class: `count` slots of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Bytes per slot (a multiple of 64).
    pub size: u32,
    /// Number of slots.
    pub count: u32,
}

/// Where a pool lives: `n` state words, and the classes' slots back to back (class by class,
/// slot by slot), kept alive by `keep`.
#[derive(Clone)]
pub struct PoolMem {
    states: NonNull<AtomicU32>,
    data: NonNull<u8>,
    classes: Arc<[ClassMem]>,
    slots: u32,
    /// The largest slot (`max_len`, asked on every send).
    max_len: usize,
    /// Bytes of the data area: a pointer outside `data..data + data_len` is no slot's.
    data_len: usize,
    _keep: Arc<dyn Send + Sync>,
}

#[derive(Debug, Clone, Copy)]
struct ClassMem {
    size: u32,
    first: u32,
    count: u32,
    /// Offset of the class's first slot from `data`.
    offset: usize,
}

// SAFETY: the pointers refer to memory kept alive by `_keep`; the state words are atomics,
// and slot bytes are reached only through `TxSlot` (one per slot in this process, enforced by
// the held flags) and `RxSlot` (shared reads of slots the peer handed over).
unsafe impl Send for PoolMem {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolMem {}

/// The bytes of the pool's data area for `classes`.
pub fn data_len(classes: &[Class]) -> usize {
    classes
        .iter()
        .map(|c| c.size as usize * c.count as usize)
        .sum()
}

/// The number of slots (and state words) for `classes`.
pub fn slot_count(classes: &[Class]) -> u32 {
    classes.iter().map(|c| c.count).sum()
}

impl PoolMem {
    /// A pool over memory the caller provides.
    ///
    /// # Safety
    /// `states` must point to `slot_count(classes)` `AtomicU32`s and `data` to
    /// `data_len(classes)` bytes, both valid for reads and writes for as long as `keep`
    /// lives, and used only by one [`PoolTx`] and one [`PoolRx`] of this pool (here or in the
    /// peer). Class sizes must be multiples of 64 and `data` 64-byte aligned.
    pub unsafe fn from_raw(
        states: NonNull<AtomicU32>,
        data: NonNull<u8>,
        classes: &[Class],
        keep: Arc<dyn Send + Sync>,
    ) -> PoolMem {
        let mut first = 0;
        let mut offset = 0;
        let classes: Arc<[ClassMem]> = classes
            .iter()
            .map(|c| {
                let m = ClassMem {
                    size: c.size,
                    first,
                    count: c.count,
                    offset,
                };
                first += c.count;
                offset += c.size as usize * c.count as usize;
                m
            })
            .collect();
        let max_len = classes.iter().map(|c| c.size as usize).max().unwrap_or(0);
        PoolMem {
            states,
            data,
            classes,
            slots: first,
            max_len,
            data_len: offset,
            _keep: keep,
        }
    }

    /// A pool in ordinary heap memory (tests, loom).
    pub fn heap(classes: &[Class]) -> PoolMem {
        #[repr(C, align(64))]
        struct Line([u8; 64]);
        struct Heap {
            states: Box<[AtomicU32]>,
            data: Box<[std::cell::UnsafeCell<Line>]>,
        }
        // SAFETY: the data is only reached through `TxSlot` (exclusive per slot) and `RxSlot`
        // (shared reads of handed-over slots), as in a shared mapping.
        unsafe impl Sync for Heap {}
        // SAFETY: as for `Sync`; the heap memory has no thread affinity.
        unsafe impl Send for Heap {}
        let lines = data_len(classes).div_ceil(64).max(1);
        let heap = Arc::new(Heap {
            states: (0..slot_count(classes))
                .map(|_| AtomicU32::new(FREE))
                .collect(),
            data: (0..lines)
                .map(|_| std::cell::UnsafeCell::new(Line([0; 64])))
                .collect(),
        });
        let states = NonNull::new(heap.states.as_ptr().cast_mut()).expect("not null");
        let data = NonNull::new(heap.data.as_ptr().cast_mut().cast::<u8>()).expect("not null");
        // SAFETY: `heap` owns the state words and the (64-aligned, zeroed) data, kept alive by
        // the Arc handed over; the UnsafeCells make writes through shared pointers legal.
        unsafe { PoolMem::from_raw(states, data, classes, heap) }
    }

    #[inline]
    fn state(&self, slot: u32) -> &AtomicU32 {
        debug_assert!(slot < self.slots);
        // SAFETY: `slot < slots`, the number of state words `from_raw` was given.
        unsafe { self.states.add(slot as usize).as_ref() }
    }

    fn class_of(&self, slot: u32) -> Option<&ClassMem> {
        self.classes
            .iter()
            .find(|c| slot >= c.first && slot - c.first < c.count)
    }

    /// The address and size of `slot` (which must be valid).
    fn locate(&self, slot: u32) -> Option<(NonNull<u8>, usize)> {
        let c = self.class_of(slot)?;
        Some((self.slot_ptr(c, slot - c.first), c.size as usize))
    }

    /// The address of slot `i` of class `c` (`i < c.count`).
    #[inline]
    fn slot_ptr(&self, c: &ClassMem, i: u32) -> NonNull<u8> {
        debug_assert!(i < c.count);
        let offset = c.offset + i as usize * c.size as usize;
        // SAFETY: `i < c.count`, so `offset + c.size` is within `data_len(classes)` bytes of
        // `data`, the area `from_raw` was given.
        unsafe { self.data.add(offset) }
    }

    /// The number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The largest payload a slot takes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Slots whose shared state is busy (in flight or held by the consumer).
    pub fn busy(&self) -> u32 {
        (0..self.slots)
            .filter(|&s| self.state(s).load(Ordering::Relaxed) != FREE)
            .count() as u32
    }
}

impl fmt::Debug for PoolMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolMem")
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

/// A slot's loan state (private memory): not lent, lent as the payload of a [`Loan`], or
/// claimed by a send (the peer frees it).
const NOT_LENT: u8 = 0;
const LENT: u8 = 1;
const CLAIMED: u8 = 2;

/// The producer's side of a pool.
pub struct PoolTx {
    mem: PoolMem,
    /// Slots this process holds a [`TxSlot`] for (private memory: the peer cannot touch it).
    held: Box<[AtomicBool]>,
    /// Per slot: whether a [`Loan`] of it exists, and whether a send claimed it.
    loans: Box<[std::sync::atomic::AtomicU8]>,
    /// Per class, where the next search starts.
    cursors: Box<[std::sync::atomic::AtomicU32]>,
    /// Per class, slots out as loans ([`PoolTx::alloc_loan`]).
    lent: Box<[std::sync::atomic::AtomicU32]>,
}

impl PoolTx {
    /// The producer side. There must be only one, here or in the peer.
    pub fn new(mem: PoolMem) -> Arc<PoolTx> {
        Arc::new(PoolTx {
            held: (0..mem.slots).map(|_| AtomicBool::new(false)).collect(),
            loans: (0..mem.slots)
                .map(|_| std::sync::atomic::AtomicU8::new(NOT_LENT))
                .collect(),
            cursors: (0..mem.classes.len())
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            lent: (0..mem.classes.len())
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            mem,
        })
    }

    /// The pool's memory.
    pub fn mem(&self) -> &PoolMem {
        &self.mem
    }

    /// A free slot of the smallest class that fits `len` bytes (or a larger class when that
    /// one is full); `None` when `len` exceeds every class or every fitting slot is busy.
    /// Safe to call from several threads.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Option<TxSlot> {
        self.alloc_from(len, false)
    }

    /// Like [`PoolTx::alloc`], for a payload the application writes in place and lends to a
    /// message ([`TxSlot::into_loan`]). At most three quarters of a class (and never its last
    /// slot) are out as loans at once: the rest stays for payloads that are copied, so that a
    /// message waiting for a slot to be copied into is never stuck behind loans queued after
    /// it on the same connection.
    pub fn alloc_loan(self: &Arc<Self>, len: usize) -> Option<TxSlot> {
        self.alloc_from(len, true)
    }

    /// Most slots of a class of `count` that may be out as loans.
    fn loan_cap(count: u32) -> u32 {
        count - (count / 4).max(1)
    }

    fn alloc_from(self: &Arc<Self>, len: usize, loan: bool) -> Option<TxSlot> {
        use std::sync::atomic::Ordering as O;
        for (ci, c) in self.mem.classes.iter().enumerate() {
            if (c.size as usize) < len || c.count == 0 {
                continue;
            }
            if loan {
                let cap = Self::loan_cap(c.count);
                let lent = &self.lent[ci];
                if lent
                    .fetch_update(O::AcqRel, O::Relaxed, |n| (n < cap).then_some(n + 1))
                    .is_err()
                {
                    continue;
                }
            }
            match self.take_in_class(ci, c) {
                Some((slot, ptr, cap)) => {
                    return Some(TxSlot {
                        pool: Arc::clone(self),
                        slot,
                        ptr,
                        cap,
                        len: 0,
                        lent_class: loan.then_some(ci),
                    })
                }
                None if loan => {
                    self.lent[ci].fetch_sub(1, O::AcqRel);
                }
                None => {}
            }
        }
        None
    }

    /// Copies `bytes` into a free slot of the smallest class that has one and hands the slot
    /// to the peer at once: what [`PoolTx::alloc`], [`TxSlot::fill`] and [`TxSlot::send`] do,
    /// without making a [`TxSlot`] (whose reference to the pool costs two atomic operations
    /// per message). Returns the index and length to put in the descriptor, or `None` when no
    /// slot that fits is free.
    pub fn send_copy(&self, bytes: &[u8]) -> Option<(u32, u32)> {
        let len = bytes.len();
        for (ci, c) in self.mem.classes.iter().enumerate() {
            if (c.size as usize) < len || c.count == 0 {
                continue;
            }
            if let Some((slot, ptr, cap)) = self.take_in_class(ci, c) {
                debug_assert!(len <= cap);
                // SAFETY: `ptr..ptr+cap` is the slot, inside the pool's data area (valid while
                // `self.mem` lives); `take_in_class` gave it to this process exclusively (its
                // held flag is set, and only `release` below clears it), and `len <= c.size ==
                // cap`. The peer does not touch a busy slot before we send it (if a hostile one
                // does, it garbles its own input). `bytes` is ordinary memory: no overlap.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), len) };
                self.release(slot, true, None);
                return Some((slot, len as u32));
            }
        }
        None
    }

    /// Starts the next searches for a free slot at the bottom of each class again. For a
    /// sender that knows the peer holds little (its ring is empty): the same few slots, and
    /// the same pages, are then used over and over (warm in the caches, and the rest of the
    /// pool never touched, so never resident) instead of a turn through the whole pool.
    /// Only where searches start changes: a busy slot is skipped as always.
    #[inline]
    pub fn rewind(&self) {
        for c in self.cursors.iter() {
            c.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A free slot of class `ci`: its index, address and size.
    fn take_in_class(&self, ci: usize, c: &ClassMem) -> Option<(u32, NonNull<u8>, usize)> {
        // (No division: these run on every send.)
        let start = self.cursors[ci].load(std::sync::atomic::Ordering::Relaxed);
        let start = if start < c.count { start } else { 0 };
        for k in 0..c.count {
            let i = start + k;
            let i = if i < c.count { i } else { i - c.count };
            let slot = c.first + i;
            if self.try_take(slot) {
                self.cursors[ci].store(i + 1, std::sync::atomic::Ordering::Relaxed);
                return Some((slot, self.mem.slot_ptr(c, i), c.size as usize));
            }
        }
        None
    }

    /// Whether `payload` lies in this pool's memory (a [`Loan`]'s payload, or a slice of
    /// one): one comparison, for a sender choosing how to send it.
    #[inline]
    pub fn contains(&self, payload: &[u8]) -> bool {
        let ptr = payload.as_ptr() as usize;
        ptr.wrapping_sub(self.mem.data.as_ptr() as usize) < self.mem.data_len
    }

    /// If `payload` is exactly the payload of a [`Loan`] of this pool not claimed before,
    /// claims its slot for sending: returns the slot and length to put in the descriptor, and
    /// the loan, when dropped, leaves the slot to the peer instead of freeing it. `None`: copy
    /// the payload instead.
    ///
    /// Clones of the payload may live on (the application kept one, a reliable channel keeps
    /// one to send again): the slot stays held here until the last of them is dropped, so it
    /// is not reused under them even after the peer freed it.
    pub fn claim_loan(&self, payload: &bytes::Bytes) -> Option<(u32, u32)> {
        let ptr = payload.as_ptr() as usize;
        let base = self.mem.data.as_ptr() as usize;
        if ptr.wrapping_sub(base) >= self.mem.data_len {
            return None; // not in this pool (an ordinary message: the common case)
        }
        let c = self.mem.classes.iter().find(|c| {
            let start = base + c.offset;
            (start..start + c.size as usize * c.count as usize).contains(&ptr)
        })?;
        let off = ptr - (base + c.offset);
        if off % c.size as usize != 0 || payload.len() > c.size as usize {
            return None;
        }
        let slot = c.first + (off / c.size as usize) as u32;
        self.loans[slot as usize]
            .compare_exchange(
                LENT,
                CLAIMED,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Relaxed,
            )
            .ok()?;
        Some((slot, payload.len() as u32))
    }

    fn try_take(&self, slot: u32) -> bool {
        let state = self.mem.state(slot);
        if state.load(Ordering::Relaxed) != FREE {
            // Busy: passed over with one load (no read-modify-write of its held flag), which
            // matters to a search that starts among slots still in flight.
            return false;
        }
        let held = &self.held[slot as usize];
        if held
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::Acquire,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        if state.load(Ordering::Acquire) != FREE {
            held.store(false, std::sync::atomic::Ordering::Release);
            return false;
        }
        state.store(BUSY, Ordering::Relaxed);
        true
    }

    fn release(&self, slot: u32, to_peer: bool, lent_class: Option<usize>) {
        if let Some(ci) = lent_class {
            self.lent[ci].fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        if !to_peer {
            self.mem.state(slot).store(FREE, Ordering::Release);
        }
        self.held[slot as usize].store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A slot the producer holds: write the payload, then [`TxSlot::send`] it (the slot goes to
/// the peer) or drop it (the slot is free again).
pub struct TxSlot {
    pool: Arc<PoolTx>,
    slot: u32,
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    /// Allocated as a loan: the class whose loan count it holds.
    lent_class: Option<usize>,
}

// SAFETY: the slot's memory is exclusively ours (held flag) while the TxSlot lives; moving the
// handle to another thread moves that exclusivity with it.
unsafe impl Send for TxSlot {}
// SAFETY: `&TxSlot` only gives shared reads of the slot.
unsafe impl Sync for TxSlot {}

impl TxSlot {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.slot
    }

    /// The slot's size: the most bytes it takes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes written so far ([`TxSlot::set_len`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets how many bytes of the slot (from its start) are the payload.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "slot of {} bytes, len {len}", self.cap);
        self.len = len;
    }

    /// The whole slot, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+cap` is the slot (inside the pool's data area, valid while `pool`
        // lives); this process holds it exclusively (its held flag is set and only this TxSlot
        // clears it), and `&mut self` makes this the only view. The peer does not touch a
        // busy slot before we send it (if a hostile one does, it garbles its own input).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// The payload written so far.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `as_mut_slice`; `len <= cap`, and `&self` gives a shared view.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Copies `bytes` into the slot as its payload.
    pub fn fill(&mut self, bytes: &[u8]) {
        self.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        self.len = bytes.len();
    }

    /// Hands the slot to the peer (put its index in a descriptor and publish it next): it
    /// stays busy until the consumer frees it. Returns the index and the payload length.
    pub fn send(self) -> (u32, u32) {
        let this = std::mem::ManuallyDrop::new(self);
        this.pool.release(this.slot, true, this.lent_class);
        // SAFETY: `this` is never used or dropped again; its Arc is taken out exactly once.
        let _pool = unsafe { std::ptr::read(&this.pool) };
        (this.slot, this.len as u32)
    }
}

impl Drop for TxSlot {
    fn drop(&mut self) {
        self.pool.release(self.slot, false, self.lent_class);
    }
}

impl TxSlot {
    /// The written payload as a read-only [`Loan`], usable as the owner of a `bytes::Bytes`
    /// (`Bytes::from_owner`). Sending that `Bytes` over this pool's connection moves only the
    /// slot ([`PoolTx::claim_loan`]); otherwise the loan frees the slot when dropped.
    pub fn into_loan(self) -> Loan {
        self.pool.loans[self.slot as usize].store(LENT, std::sync::atomic::Ordering::Release);
        Loan { slot: Some(self) }
    }
}

/// A written payload in a pool slot, lent out as the payload of a message (see
/// [`TxSlot::into_loan`]).
pub struct Loan {
    slot: Option<TxSlot>,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        self.slot.as_ref().map_or(&[], TxSlot::as_slice)
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let state =
            slot.pool.loans[slot.slot as usize].swap(NOT_LENT, std::sync::atomic::Ordering::AcqRel);
        if state == CLAIMED {
            // A send handed the slot to the peer, which frees it when it is done.
            let _ = slot.send();
        }
        // Otherwise `slot` drops here and the slot is free again.
    }
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("slot", &self.slot).finish()
    }
}

impl fmt::Debug for TxSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxSlot")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .finish()
    }
}

/// The consumer's side of a pool. `on_free` runs after a slot is freed (it wakes a producer
/// waiting for room).
pub struct PoolRx {
    mem: PoolMem,
    on_free: Box<dyn Fn() + Send + Sync>,
}

impl PoolRx {
    /// The consumer side. There must be only one, here or in the peer.
    pub fn new(mem: PoolMem, on_free: impl Fn() + Send + Sync + 'static) -> Arc<PoolRx> {
        Arc::new(PoolRx {
            mem,
            on_free: Box::new(on_free),
        })
    }

    /// The pool's memory.
    pub fn mem(&self) -> &PoolMem {
        &self.mem
    }

    /// Takes the payload the peer sent in `slot` (`len` bytes): a view that frees the slot
    /// when dropped. The slot and length are checked against the pool: a bad one is
    /// [`Corrupt`] and no view is made.
    pub fn take(self: &Arc<Self>, slot: u32, len: u32) -> Result<RxSlot, Corrupt> {
        let ptr = self.check(slot, len)?;
        Ok(RxSlot {
            pool: Arc::clone(self),
            slot,
            ptr,
            len: len as usize,
        })
    }

    /// Hands the payload the peer sent in `slot` (`len` bytes) to `read` and frees the slot
    /// as soon as `read` returns, checked as [`PoolRx::take`] checks. Unlike dropping an
    /// [`RxSlot`], this does not run `on_free`: the caller wakes a waiting producer itself,
    /// once for all the slots it frees in a row.
    pub fn read_and_free<R>(
        &self,
        slot: u32,
        len: u32,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Corrupt> {
        let ptr = self.check(slot, len)?;
        // SAFETY: as in `RxSlot::as_ref`: `check` found `len` within the slot, which lies in
        // the pool's data area (valid while `self.mem` lives); the producer handed the slot
        // over and does not write it until it is free again, which is only below, after the
        // last use of the slice.
        let r = read(unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len as usize) });
        self.mem.state(slot).store(FREE, Ordering::Release);
        Ok(r)
    }

    /// The address of `slot`, if `slot` exists and holds `len` bytes.
    #[inline]
    fn check(&self, slot: u32, len: u32) -> Result<NonNull<u8>, Corrupt> {
        if slot >= self.mem.slots {
            return Err(Corrupt(
                "a descriptor names a pool slot that does not exist",
            ));
        }
        let (ptr, cap) = self.mem.locate(slot).ok_or(Corrupt(
            "a descriptor names a pool slot that does not exist",
        ))?;
        if len as usize > cap {
            return Err(Corrupt("a descriptor's length exceeds its pool slot"));
        }
        // The producer's data writes happened before it published the descriptor (Release),
        // which the ring's Acquire made visible; this Acquire is for the state word itself.
        let _ = self.mem.state(slot).load(Ordering::Acquire);
        Ok(ptr)
    }
}

/// A received payload, in place in the pool. Frees its slot when dropped. Usable as the owner
/// of a `bytes::Bytes` (`Bytes::from_owner`).
pub struct RxSlot {
    pool: Arc<PoolRx>,
    slot: u32,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an RxSlot only reads its slot, which the producer does not write until the slot is
// freed (by this RxSlot's drop); the handle can move between threads.
unsafe impl Send for RxSlot {}
// SAFETY: as for `Send`: shared reads only.
unsafe impl Sync for RxSlot {}

impl RxSlot {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.slot
    }
}

impl AsRef<[u8]> for RxSlot {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `take` checked `len <= ` the slot's size, and the slot lies in the pool's data
        // area, valid while `pool` (held here) lives. The producer handed the slot over and
        // does not write it until we free it; a hostile producer that does anyway only
        // changes the bytes we see, never where we read.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::Deref for RxSlot {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl Drop for RxSlot {
    fn drop(&mut self) {
        self.pool
            .mem
            .state(self.slot)
            .store(FREE, Ordering::Release);
        (self.pool.on_free)();
    }
}

impl fmt::Debug for RxSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxSlot")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use bytes::Bytes;

    const CLASSES: &[Class] = &[
        Class { size: 64, count: 2 },
        Class {
            size: 256,
            count: 1,
        },
    ];

    #[test]
    fn alloc_fill_send_take_free() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let rx = PoolRx::new(mem.clone(), || {});
        let mut a = tx.alloc(10).unwrap();
        a.fill(b"hello pool");
        assert_eq!(a.capacity(), 64);
        let (slot, len) = a.send();
        assert_eq!(mem.busy(), 1, "in flight");
        let got = rx.take(slot, len).unwrap();
        assert_eq!(&*got, b"hello pool");
        drop(got);
        assert_eq!(mem.busy(), 0, "freed by the consumer");
    }

    #[test]
    fn send_copy_is_alloc_fill_send() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let rx = PoolRx::new(mem.clone(), || {});
        let (a, la) = tx.send_copy(b"first").unwrap();
        let (b, lb) = tx.send_copy(&[7u8; 64]).unwrap();
        let (c, lc) = tx.send_copy(&[9u8; 65]).unwrap();
        assert_eq!(mem.busy(), 3, "all three in flight");
        assert!(tx.send_copy(b"x").is_none(), "every slot is busy");
        assert!(tx.send_copy(&[0u8; 257]).is_none(), "larger than any class");
        assert_eq!(&*rx.take(a, la).unwrap(), b"first");
        assert_eq!(&*rx.take(b, lb).unwrap(), &[7u8; 64][..]);
        let big = rx.take(c, lc).unwrap();
        assert_eq!((big.len(), big[64]), (65, 9), "the 256-byte class");
        drop(big);
        assert_eq!(mem.busy(), 0, "freed by the consumer");
        let (d, ld) = tx.send_copy(b"").unwrap();
        assert_eq!(ld, 0);
        assert!(rx.take(d, ld).unwrap().is_empty());
    }

    #[test]
    fn rewind_reuses_the_lowest_free_slots() {
        let mem = PoolMem::heap(&[Class { size: 64, count: 4 }]);
        let tx = PoolTx::new(mem.clone());
        let rx = PoolRx::new(mem.clone(), || {});
        let (a, la) = tx.send_copy(b"a").unwrap();
        let (b, lb) = tx.send_copy(b"b").unwrap();
        assert_eq!((a, b), (0, 1));
        drop(rx.take(a, la).unwrap());
        // Without a rewind the search goes on upwards.
        let (c, lc) = tx.send_copy(b"c").unwrap();
        assert_eq!(c, 2);
        drop(rx.take(c, lc).unwrap());
        tx.rewind();
        // From the bottom: slot 0 is free again, slot 1 still busy (skipped).
        assert_eq!(tx.send_copy(b"d").unwrap().0, 0);
        assert_eq!(tx.send_copy(b"e").unwrap().0, 2);
        drop(rx.take(b, lb).unwrap());
    }

    #[test]
    fn classes_fill_up_and_spill_to_larger_ones() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let a = tx.alloc(1).unwrap();
        let b = tx.alloc(64).unwrap();
        let c = tx.alloc(1).unwrap();
        assert_eq!(c.capacity(), 256, "small class full: the larger one");
        assert!(tx.alloc(1).is_none(), "all busy");
        assert!(tx.alloc(257).is_none(), "larger than any class");
        drop(b);
        let d = tx.alloc(1).unwrap();
        assert_eq!(d.capacity(), 64, "a dropped slot is free again");
        drop((a, c, d));
        assert_eq!(mem.busy(), 0);
    }

    #[test]
    fn a_hostile_peer_cannot_make_us_alias_a_held_slot() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let mut held = tx.alloc(1).unwrap();
        held.fill(b"mine");
        // The peer marks every slot free, including the one we hold.
        for s in 0..mem.slots() {
            mem.state(s).store(FREE, Ordering::Release);
        }
        let others: Vec<_> = (0..2).filter_map(|_| tx.alloc(1)).collect();
        assert!(others.iter().all(|o| o.index() != held.index()));
        assert_eq!(held.as_slice(), b"mine");
    }

    #[test]
    fn a_unique_loan_is_claimed_once_and_left_to_the_peer() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let rx = PoolRx::new(mem.clone(), || {});
        let mut slot = tx.alloc(100).unwrap();
        slot.fill(&[5u8; 100]);
        let index = slot.index();
        let bytes = bytes::Bytes::from_owner(slot.into_loan());
        let clone = bytes.clone();
        assert_eq!(
            tx.claim_loan(&bytes.slice(1..)),
            None,
            "not the whole payload"
        );
        assert_eq!(tx.claim_loan(&bytes), Some((index, 100)));
        assert_eq!(tx.claim_loan(&bytes), None, "claimed once");
        drop(bytes);
        assert_eq!(mem.busy(), 1, "the peer holds it now");
        let view = rx.take(index, 100).unwrap();
        assert_eq!(&*view, &[5u8; 100][..]);
        drop(view);
        assert_eq!(mem.busy(), 0, "freed by the peer");
        // A clone still reads the slot: it is not handed out again until the clone is gone.
        let others: Vec<_> = (0..3).filter_map(|_| tx.alloc(1)).collect();
        assert!(others.iter().all(|o| o.index() != index));
        assert_eq!(&clone[..], &[5u8; 100][..]);
        drop(others);
        drop(clone);
        let again: Vec<_> = (0..3).filter_map(|_| tx.alloc(1)).collect();
        assert!(
            again.iter().any(|o| o.index() == index),
            "free once the clone is gone"
        );
        drop(again);
        // A loan never sent frees its slot.
        let mut slot = tx.alloc(1).unwrap();
        slot.fill(b"x");
        drop(bytes::Bytes::from_owner(slot.into_loan()));
        assert_eq!(mem.busy(), 0);
        // Foreign memory is not a loan.
        assert_eq!(tx.claim_loan(&bytes::Bytes::from(vec![1u8; 10])), None);
    }

    #[test]
    fn loans_leave_a_quarter_of_each_class_for_copies() {
        let classes = [Class { size: 64, count: 8 }];
        let mem = PoolMem::heap(&classes);
        let tx = PoolTx::new(mem.clone());
        let loans: Vec<_> = (0..8).filter_map(|_| tx.alloc_loan(1)).collect();
        assert_eq!(loans.len(), 6, "three quarters");
        let copies: Vec<_> = (0..8).filter_map(|_| tx.alloc(1)).collect();
        assert_eq!(copies.len(), 2, "the rest is there for copies");
        drop(copies);
        let one = Bytes::from_owner(loans.into_iter().next().unwrap().into_loan());
        drop(one);
        assert!(
            tx.alloc_loan(1).is_some(),
            "a dropped loan gives its place back"
        );
        // A class of one slot never lends it.
        let mem = PoolMem::heap(&[Class { size: 64, count: 1 }]);
        assert!(PoolTx::new(mem).alloc_loan(1).is_none());
    }

    #[test]
    fn bad_descriptors_are_refused() {
        let mem = PoolMem::heap(CLASSES);
        let rx = PoolRx::new(mem, || {});
        assert!(rx.take(3, 0).is_err(), "no such slot");
        assert!(rx.take(u32::MAX, 0).is_err());
        assert!(rx.take(0, 65).is_err(), "longer than the slot");
        assert!(rx.take(2, 256).is_ok());
        let never = |_: &[u8]| panic!("a bad descriptor is not read");
        assert!(rx.read_and_free(3, 0, never).is_err());
        assert!(rx.read_and_free(u32::MAX, 0, never).is_err());
        assert!(rx.read_and_free(0, 65, never).is_err());
    }

    #[test]
    fn read_and_free_reads_then_frees_without_the_callback() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let freed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let f = Arc::clone(&freed);
        let rx = PoolRx::new(mem.clone(), move || {
            f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let (slot, len) = tx.send_copy(b"copy me").unwrap();
        assert_eq!(mem.busy(), 1);
        let got = rx.read_and_free(slot, len, |b| b.to_vec()).unwrap();
        assert_eq!(got, b"copy me");
        assert_eq!(mem.busy(), 0, "free once read");
        assert_eq!(freed.load(std::sync::atomic::Ordering::Relaxed), 0);
        tx.rewind();
        assert_eq!(tx.send_copy(b"again").unwrap().0, slot, "and taken again");
    }

    #[test]
    fn freeing_calls_back() {
        let mem = PoolMem::heap(CLASSES);
        let tx = PoolTx::new(mem.clone());
        let freed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let f = Arc::clone(&freed);
        let rx = PoolRx::new(mem, move || {
            f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let (slot, len) = tx.alloc(3).unwrap().send();
        let view = bytes::Bytes::from_owner(rx.take(slot, len).unwrap());
        let clone = view.clone();
        drop(view);
        assert_eq!(freed.load(std::sync::atomic::Ordering::Relaxed), 0);
        drop(clone);
        assert_eq!(freed.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
