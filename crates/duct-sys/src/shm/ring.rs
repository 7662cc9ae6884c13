//! A single-producer single-consumer ring of [`Desc`]riptors, laid out so that it can live in
//! memory shared by two processes.
//!
//! The producer owns `head` (the next index to fill), the consumer owns `tail` (the next index
//! to read); both are free-running 64-bit counters (they never wrap in practice) and the slot
//! of index `i` is `i % capacity` (capacity a power of two). Each side keeps a private copy of
//! its own counter and a cached copy of the other's, so the shared cache lines are touched
//! only when the cached view says the ring is full (producer) or empty (consumer).
//!
//! The peer is not trusted: the counters it publishes are checked (a head behind our tail, or
//! more than a ring ahead of it, is [`Corrupt`]), and descriptors are copied out of the ring
//! before anyone looks at them, so a peer rewriting a slot cannot change what was checked.
//! What a descriptor says (payload slot, length) is for the transport to validate.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::sync::{AtomicU32, AtomicU64};
use super::sync::{CachePadded, Ordering, UnsafeCell};

/// Length of a duct frame header, carried whole in a descriptor.
pub const HEADER_LEN: usize = 24;

/// `Desc::slot` of a frame without a payload.
pub const NO_SLOT: u32 = u32::MAX;

/// `Desc::slot` of a frame whose payload (`Desc::len` bytes, 1 to [`INLINE_MAX`]) follows
/// the descriptor in the ring itself: in the next [`inline_places`]`(len)` places, 32 bytes
/// each, published and given back with it. A small payload costs no pool slot: no slot state
/// to claim and free, no slot's cache lines to move between the two sides; the bytes ride on
/// the lines the descriptor moves on anyway.
pub const INLINE: u32 = u32::MAX - 1;

/// The largest payload carried in the ring ([`INLINE`]): eight places after its descriptor.
pub const INLINE_MAX: usize = 256;

/// Places in the ring an inline payload of `len` bytes takes after its descriptor.
#[inline]
pub const fn inline_places(len: usize) -> u64 {
    len.div_ceil(DESC_LEN) as u64
}

/// One frame in a ring: its header, and where its payload is. (Aligned to 8 so that it
/// moves in and out of the ring as four 8-byte words, not byte by byte.)
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// The frame header, exactly as on a stream transport.
    pub header: [u8; HEADER_LEN],
    /// The pool slot holding the payload, or [`NO_SLOT`].
    pub slot: u32,
    /// The payload's length in bytes.
    pub len: u32,
}

/// Bytes per descriptor in the ring.
pub const DESC_LEN: usize = std::mem::size_of::<Desc>();
const _: () = assert!(DESC_LEN == 32);

/// A descriptor as the four words it is copied in and out of the ring as.
type DescWords = [u64; 4];
const _: () = assert!(std::mem::size_of::<DescWords>() == DESC_LEN);
const _: () = assert!(std::mem::align_of::<Desc>() >= std::mem::align_of::<DescWords>());

impl Desc {
    /// The descriptor's bytes as words (in memory order).
    #[inline]
    fn to_words(self) -> DescWords {
        let mut w = [0u64; 4];
        for (i, chunk) in self.header.chunks_exact(8).enumerate() {
            w[i] = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        let mut last = [0u8; 8];
        last[..4].copy_from_slice(&self.slot.to_ne_bytes());
        last[4..].copy_from_slice(&self.len.to_ne_bytes());
        w[3] = u64::from_ne_bytes(last);
        w
    }

    /// The descriptor whose bytes (in memory order) are `w`.
    #[inline]
    fn from_words(w: DescWords) -> Desc {
        let mut header = [0u8; HEADER_LEN];
        for (chunk, word) in header.chunks_exact_mut(8).zip(&w[..3]) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let last = w[3].to_ne_bytes();
        Desc {
            header,
            slot: u32::from_ne_bytes(last[..4].try_into().expect("4 bytes")),
            len: u32::from_ne_bytes(last[4..].try_into().expect("4 bytes")),
        }
    }
}

/// 32 payload bytes as the words they are stored in the ring as (in memory order).
#[inline]
fn words_of(chunk: &[u8]) -> DescWords {
    let mut w = [0u64; 4];
    for (word, bytes) in w.iter_mut().zip(chunk.chunks_exact(8)) {
        *word = u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
    }
    w
}

/// The shared control block of a ring: the two counters and the two sides' wait words, each on
/// its own cache line. All zeroes is the initial state (an empty ring, nobody waiting), so a
/// fresh zero-filled mapping needs no initialisation.
#[repr(C)]
pub struct RingCtl {
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    /// The consumer's wait word (see [`super::wait`]).
    pub(crate) consumer: CachePadded<AtomicU32>,
    /// The producer's wait word, for room in the ring or the pool (see [`super::wait`]).
    pub(crate) producer: CachePadded<AtomicU32>,
}

/// Bytes of a [`RingCtl`].
pub const CTL_LEN: usize = std::mem::size_of::<RingCtl>();
const _: () = assert!(CTL_LEN == 256);

impl RingCtl {
    /// An empty ring's control block (for rings in ordinary memory: tests, loom).
    pub fn new() -> RingCtl {
        RingCtl {
            head: CachePadded(AtomicU64::new(0)),
            tail: CachePadded(AtomicU64::new(0)),
            consumer: CachePadded(AtomicU32::new(0)),
            producer: CachePadded(AtomicU32::new(0)),
        }
    }

    /// The consumer's wait word.
    pub fn consumer_word(&self) -> &AtomicU32 {
        &self.consumer
    }

    /// The producer's wait word.
    pub fn producer_word(&self) -> &AtomicU32 {
        &self.producer
    }

    /// Whether the producer published a descriptor the consumer has not taken: a hint for a
    /// waiting consumer, read without the consumer's state (so without its lock). A hostile
    /// producer's counter is checked when the consumer pops, not here.
    #[inline]
    pub fn published(&self) -> bool {
        self.head.load(Ordering::Acquire) != self.tail.load(Ordering::Relaxed)
    }

    /// The producer's counter as last published: how many places it has published in all.
    /// For the producer's own use (whether it published since it last looked); a consumer
    /// pops through [`Consumer`], which checks the counter.
    #[inline]
    pub fn published_places(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Overwrites the producer's counter with anything: what a buggy or hostile peer can do
    /// to the shared memory. For tests of the consumer's checks; never part of the protocol.
    #[doc(hidden)]
    pub fn overwrite_head(&self, head: u64) {
        self.head.store(head, Ordering::Release);
    }
}

impl Default for RingCtl {
    fn default() -> Self {
        Self::new()
    }
}

/// One descriptor slot of a ring.
#[repr(transparent)]
pub struct DescSlot(UnsafeCell<Desc>);

impl DescSlot {
    /// An empty slot (for rings in ordinary memory).
    pub fn new() -> DescSlot {
        DescSlot(UnsafeCell::new(Desc::default()))
    }
}

impl Default for DescSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The peer broke the ring's rules (or memory was overwritten): the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared-memory ring corrupt: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

/// Where a ring lives: a control block and `capacity` slots, kept alive by `keep` (the
/// mapping, or heap memory).
#[derive(Clone)]
pub struct RingMem {
    ctl: NonNull<RingCtl>,
    slots: NonNull<DescSlot>,
    capacity: u64,
    _keep: Arc<dyn Send + Sync>,
}

// SAFETY: the pointers refer to memory that `_keep` keeps alive and that is only accessed
// through atomics (the control block) or through the ring protocol (a slot is written by the
// producer only before it publishes it and read by the consumer only after), so sharing the
// handle between threads is sound.
unsafe impl Send for RingMem {}
// SAFETY: as for `Send`: `RingMem` itself only hands out shared references to atomics.
unsafe impl Sync for RingMem {}

impl RingMem {
    /// A ring over memory the caller provides.
    ///
    /// # Safety
    /// `ctl` must point to a `RingCtl` and `slots` to `capacity` consecutive `DescSlot`s,
    /// properly aligned, valid for reads and writes for as long as `keep` lives, and used by
    /// no one but one [`Producer`] and one [`Consumer`] of this ring (in this process or the
    /// peer's). `capacity` must be a power of two, at least 2.
    pub unsafe fn from_raw(
        ctl: NonNull<RingCtl>,
        slots: NonNull<DescSlot>,
        capacity: u64,
        keep: Arc<dyn Send + Sync>,
    ) -> RingMem {
        debug_assert!(capacity.is_power_of_two() && capacity >= 2);
        RingMem {
            ctl,
            slots,
            capacity,
            _keep: keep,
        }
    }

    /// A ring in ordinary heap memory (tests, loom, in-process use), its places aligned to
    /// cache lines as in a segment (so that a record covers the lines it would there).
    pub fn heap(capacity: u64) -> RingMem {
        assert!(capacity.is_power_of_two() && capacity >= 2, "capacity");
        /// Two places: one cache line. (Under loom a place is larger, and lines would have
        /// padding between them: there each line is one place, unaligned.)
        #[cfg(not(loom))]
        #[repr(C, align(64))]
        struct Line([DescSlot; 2]);
        #[cfg(not(loom))]
        const _: () = assert!(std::mem::size_of::<Line>() == 2 * DESC_LEN);
        #[cfg(loom)]
        #[repr(C)]
        struct Line([DescSlot; 1]);
        let per_line = std::mem::size_of::<Line>() / std::mem::size_of::<DescSlot>();
        struct Heap {
            ctl: Box<RingCtl>,
            slots: Box<[Line]>,
        }
        // SAFETY: the slots are only reached through the ring protocol (one producer writes a
        // slot before publishing it, one consumer reads it after), as in a shared mapping.
        unsafe impl Sync for Heap {}
        // SAFETY: as for `Sync`; the heap memory has no thread affinity.
        unsafe impl Send for Heap {}
        let heap = Arc::new(Heap {
            ctl: Box::new(RingCtl::new()),
            slots: (0..capacity / per_line as u64)
                .map(|_| Line(std::array::from_fn(|_| DescSlot::new())))
                .collect(),
        });
        let ctl = NonNull::from(&*heap.ctl);
        // (From the slice's pointer, so that it covers every slot: `Line` is `repr(C)`, its
        // places back to back, and the lines follow one another without padding.)
        let slots = NonNull::new(heap.slots.as_ptr().cast_mut().cast::<DescSlot>())
            .expect("a boxed slice is not null");
        // SAFETY: `heap` owns a control block and `capacity` slots, kept alive by the Arc we
        // hand over; nothing else uses them.
        unsafe { RingMem::from_raw(ctl, slots, capacity, heap) }
    }

    /// The control block.
    #[inline]
    pub fn ctl(&self) -> &RingCtl {
        // SAFETY: `from_raw`'s contract: `ctl` is valid while `_keep` (owned by self) lives.
        unsafe { self.ctl.as_ref() }
    }

    #[inline]
    fn slot(&self, index: u64) -> &DescSlot {
        let i = (index & (self.capacity - 1)) as usize;
        // SAFETY: `i < capacity`, and `from_raw`'s contract makes `capacity` slots valid while
        // `_keep` lives.
        unsafe { self.slots.add(i).as_ref() }
    }

    /// Whether the producer published a descriptor the consumer has not taken, as
    /// [`RingCtl::published`]; when it has not, asks the CPU to fetch the cache lines the next
    /// descriptor and an inline payload after it will be written into
    /// ([`RingMem::prefetch_from`]). For a consumer that spins on this: it learns of the next
    /// message with the message's own lines already on their way, not fetched after it.
    #[inline]
    pub fn published_or_prefetch(&self) -> bool {
        let ctl = self.ctl();
        if ctl.published() {
            return true;
        }
        // (The consumer's own counter: a line only it writes, in its cache.)
        self.prefetch_from(ctl.tail.load(Ordering::Relaxed));
        false
    }

    /// Asks the CPU to fetch the cache lines of the places at `index` and `index + 2`: the
    /// lines a descriptor at `index` and the start of an inline payload after it are in (a
    /// 64-byte payload whole). A hint for a consumer about to wait for the descriptor at
    /// `index`. A prefetch reads nothing the program sees and is no access in the memory
    /// model, so it may touch places the producer is writing; while the consumer spins, each
    /// prefetch that finds a line the producer took requests it again, so the line comes
    /// back as soon as the producer is done with it, in parallel with the counter's.
    ///
    /// Measured between two threads (a C model of this ring, 96-byte messages): a round trip
    /// 0.83 -> 0.62 us; duct's raw shm baseline between two processes, `--spin`, 64 B:
    /// 1.00 -> 0.85-0.90 us (medians of 4 runs). Fetching all five lines the largest inline
    /// payload takes did as well for 64 B and worse for 256 B (1.70 -> 1.73 us against
    /// 1.65 for two lines): a reader fetching lines the writer is still filling slows the
    /// writer. For the same reason, on lines not yet published it is for a reader that
    /// expects a single answer, not a stream's (a stream's consumer fetches lines already
    /// published, well ahead: [`Consumer::take`]). Nothing on other targets than x86-64,
    /// under loom or under Miri.
    #[inline]
    pub fn prefetch_from(&self, index: u64) {
        for k in [0, 2] {
            prefetch_for_read(self.slot(index.wrapping_add(k)));
        }
    }

    /// The number of slots.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The producer side. There must be only one, here or in the peer.
    pub fn producer(&self) -> Producer {
        let head = self.ctl().head.load(Ordering::Relaxed);
        let tail = self.ctl().tail.load(Ordering::Acquire);
        Producer {
            mem: self.clone(),
            head,
            published: head,
            tail_cache: tail,
            prefetch_write: prefetch_write_works(),
        }
    }

    /// The consumer side. There must be only one, here or in the peer.
    pub fn consumer(&self) -> Consumer {
        let tail = self.ctl().tail.load(Ordering::Relaxed);
        Consumer {
            mem: self.clone(),
            tail,
            released: tail,
            head_cache: tail,
        }
    }
}

/// The cache line size the ring's places are laid out for (two places a line).
const LINE: usize = 64;

/// How far ahead of the place it writes the producer asks the CPU for a line it will write
/// ([`prefetch_for_write`]): 8 places, 4 lines (a few messages of a 64 B stream).
///
/// The consumer read a place's line last, a ring ago, so the producer's first store into it
/// must take the line back from the other CPU's cache; in a stream, stores that wait for that
/// back up the store buffer, and the producer stalls on whatever it stores next (perf: 41% of
/// a 64 B shm stream's samples in the sender's `push_one`, most on stack stores and the
/// function's entry). Asked for this far ahead, the line is here when the store comes.
/// Measured (`duct bench --transport shm --pattern stream`, 64 B, `--pin split`, medians of 4
/// alternating runs): duct 14.2 -> 15.7 M msg/s, the raw baseline (this ring too) 16.4 ->
/// 19.1 M; 16 places did no better.
const WRITE_AHEAD: u64 = 8;

/// How far ahead of the descriptor it takes the consumer asks for the lines it will read,
/// when the producer published that far ([`Consumer::take`]): a descriptor and a 64-byte
/// payload take three places, so the two lines from here on cover what the next messages
/// bring whatever the line their descriptor starts in. In a stream whose consumer is behind,
/// each descriptor's and payload's line was a miss (the producer's cache had it), taken one
/// after the other; fetched this far ahead they overlap. Measured as [`WRITE_AHEAD`], on top
/// of it: duct 14.1 -> 17.0 M msg/s with 8 places, ~21 M with 32 (as with 16 or 64, within
/// the noise), raw 17.3 -> 25.7 M with 8. Not for lines the producer may still be writing:
/// a reader that takes them slows the writer ([`RingMem::prefetch_from`]).
const READ_AHEAD: u64 = 32;

/// Whether this CPU has PREFETCHW (CPUID leaf 8000_0001h, ECX bit 8: every x86-64 CPU since
/// Intel Broadwell and AMD K8), looked up once. Never on other targets, under loom or Miri.
fn prefetch_write_works() -> bool {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    {
        use std::sync::atomic::{AtomicU8, Ordering as O};
        /// 0: not looked up yet; 1: no; 2: yes.
        static HAS: AtomicU8 = AtomicU8::new(0);
        match HAS.load(O::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                use std::arch::x86_64::__cpuid;
                // (`__cpuid` is a safe function from Rust 1.87 on; unsafe before.)
                #[allow(unused_unsafe)]
                let has = {
                    // SAFETY: CPUID exists on every x86-64 CPU; leaf 8000_0001h is read only
                    // after leaf 8000_0000h says it is there.
                    unsafe {
                        __cpuid(0x8000_0000).eax >= 0x8000_0001
                            && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
                    }
                };
                HAS.store(if has { 2 } else { 1 }, O::Relaxed);
                has
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    false
}

/// Asks the CPU to fetch the cache line at `place` (PREFETCHT0). Nothing on other targets
/// than x86-64, under loom or under Miri.
#[inline(always)]
fn prefetch_for_read(place: *const DescSlot) {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint: it cannot fault, changes no memory and is no read
        // in the memory model (so no race with the producer's writes); `place` is a place of a
        // ring, in memory the ring keeps mapped. SSE is part of x86-64, so the instruction
        // exists on every CPU this code runs on.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(place.cast()) }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    let _ = place;
}

/// Asks the CPU for the cache line at `place` in a state to write it (PREFETCHW). Only when
/// [`prefetch_write_works`].
#[inline(always)]
fn prefetch_for_write(place: *const DescSlot) {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    // SAFETY: a prefetch is only a hint: it cannot fault, changes no memory and is no access
    // in the memory model (so no race with the consumer, which may be reading the line);
    // `place` is a place of this ring, in memory the ring keeps mapped. The instruction
    // exists: the caller checked `prefetch_write_works`.
    unsafe {
        std::arch::asm!(
            "prefetchw [{}]",
            in(reg) place,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    let _ = place;
}

/// The writing end of a ring.
pub struct Producer {
    mem: RingMem,
    /// Our next index to fill.
    head: u64,
    /// The head as last published (`head` less the descriptors written since).
    published: u64,
    /// The consumer's tail as last read.
    tail_cache: u64,
    /// The CPU takes [`prefetch_for_write`]'s hint ([`prefetch_write_works`]).
    prefetch_write: bool,
}

impl Producer {
    /// Appends `desc` and publishes it (and any written before). `Ok(false)` when the ring is
    /// full.
    #[inline]
    pub fn push(&mut self, desc: Desc) -> Result<bool, Corrupt> {
        let written = self.write(desc)?;
        self.publish();
        Ok(written)
    }

    /// Appends `desc` without publishing it: the consumer sees it, with everything written
    /// before it, at the next [`Producer::publish`] (one store to the shared counter for a
    /// run of descriptors, not one each). `Ok(false)` when the ring is full. A producer that
    /// waits for room publishes first: the consumer makes room only by taking what it sees.
    #[inline]
    pub fn write(&mut self, desc: Desc) -> Result<bool, Corrupt> {
        if !self.has_room()? {
            return Ok(false);
        }
        self.put(desc.to_words());
        Ok(true)
    }

    /// Writes `words` in the place at `head` and moves `head` past it. Only for a place
    /// [`Producer::has_room_for`] counted free.
    #[inline]
    fn put(&mut self, words: DescWords) {
        if self.prefetch_write {
            // The line [`WRITE_AHEAD`] places on, asked for once (at its first place).
            let ahead: *const DescSlot = self.mem.slot(self.head.wrapping_add(WRITE_AHEAD));
            if (ahead as usize) % LINE == 0 {
                prefetch_for_write(ahead);
            }
        }
        self.mem.slot(self.head).0.with_mut(|p| {
            // SAFETY: the place at `head` is ours: room was counted for it, so the consumer
            // has moved past it (tail_cache > head - capacity), and it will not read it until
            // we publish past it. A hostile peer writing it concurrently can only garble its
            // own input (the place is plain data, written volatile so the write is not elided
            // or split by assumptions). A place is as large as `DescWords` and at least as
            // aligned (asserted above).
            unsafe { std::ptr::write_volatile(p.cast::<DescWords>(), words) }
        });
        self.head += 1;
    }

    /// Appends a descriptor with `header` whose payload is `payload` itself, copied into the
    /// places after it ([`INLINE`]), without publishing them (as [`Producer::write`]).
    /// `Ok(false)` when the ring has not that many places free. The caller checks that
    /// `payload` is at most [`INLINE_MAX`] bytes: a longer one is never written (debug
    /// builds assert), and `Ok(false)` would then never turn into `Ok(true)`.
    #[inline]
    pub fn write_inline(
        &mut self,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> Result<bool, Corrupt> {
        let len = payload.len();
        debug_assert!(len <= INLINE_MAX, "an inline payload of {len} bytes");
        if len > INLINE_MAX || !self.has_room_for(1 + inline_places(len))? {
            return Ok(false);
        }
        let desc = Desc {
            header: *header,
            slot: INLINE,
            len: len as u32,
        };
        // (Room was counted for all of them.)
        self.put(desc.to_words());
        let mut chunks = payload.chunks_exact(DESC_LEN);
        for chunk in &mut chunks {
            self.put(words_of(chunk));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; DESC_LEN];
            last[..rest.len()].copy_from_slice(rest);
            self.put(words_of(&last));
        }
        Ok(true)
    }

    /// Publishes the descriptors written since the last publication (a `Release` store of
    /// the head: their contents, and whatever was written before, are visible to a consumer
    /// that sees it). Nothing when there are none.
    #[inline]
    pub fn publish(&mut self) {
        if self.published != self.head {
            self.published = self.head;
            self.mem.ctl().head.store(self.head, Ordering::Release);
        }
    }

    /// Whether one more descriptor fits, reading the consumer's tail if the cached one says
    /// the ring is full.
    #[inline]
    pub fn has_room(&mut self) -> Result<bool, Corrupt> {
        self.has_room_for(1)
    }

    /// Whether `places` more places are free (a descriptor and its inline payload take
    /// `1 + inline_places(len)`), reading the consumer's tail if the cached one says they
    /// are not.
    #[inline]
    pub fn has_room_for(&mut self, places: u64) -> Result<bool, Corrupt> {
        let cap = self.mem.capacity;
        if self.head - self.tail_cache + places <= cap {
            return Ok(true);
        }
        let tail = self.mem.ctl().tail.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > cap {
            return Err(Corrupt("the consumer's index is ahead of the producer's"));
        }
        self.tail_cache = tail;
        Ok(used + places <= cap)
    }

    /// Places published and not yet consumed (descriptors, and the payloads in the ring
    /// after some of them), as far as this side knows now.
    #[inline]
    pub fn len(&self) -> Result<u64, Corrupt> {
        let tail = self.mem.ctl().tail.load(Ordering::Acquire);
        let used = self.published.wrapping_sub(tail);
        if used > self.mem.capacity {
            return Err(Corrupt("the consumer's index is ahead of the producer's"));
        }
        Ok(used)
    }

    /// Whether the consumer has taken everything published.
    pub fn is_empty(&self) -> Result<bool, Corrupt> {
        self.len().map(|n| n == 0)
    }

    /// The ring's memory (for its wait words).
    pub fn mem(&self) -> &RingMem {
        &self.mem
    }
}

/// The reading end of a ring.
pub struct Consumer {
    mem: RingMem,
    /// Our next index to read.
    tail: u64,
    /// The tail as last released to the producer (`tail` less the descriptors taken since).
    released: u64,
    /// The producer's head as last read.
    head_cache: u64,
}

impl Consumer {
    /// Takes the next descriptor, if one was published, and gives its place back to the
    /// producer (with those of any taken before).
    #[inline]
    pub fn pop(&mut self) -> Result<Option<Desc>, Corrupt> {
        let desc = self.take()?;
        self.release();
        Ok(desc)
    }

    /// Takes the next descriptor, if one was published, keeping its place in the ring until
    /// the next [`Consumer::release`] (one store to the shared counter for a run of
    /// descriptors, not one each). The descriptor is copied out: the place may be reused as
    /// soon as it is released.
    #[inline]
    pub fn take(&mut self) -> Result<Option<Desc>, Corrupt> {
        if self.tail == self.head_cache && !self.refresh()? {
            return Ok(None);
        }
        if self.head_cache.wrapping_sub(self.tail) > READ_AHEAD + 2 {
            // Published well ahead (the producer is done with those lines): fetch the two
            // lines READ_AHEAD places on, so that their misses overlap this one's.
            self.mem.prefetch_from(self.tail.wrapping_add(READ_AHEAD));
        }
        let desc = Desc::from_words(self.get(self.tail));
        self.tail += 1;
        Ok(Some(desc))
    }

    /// The words in the place at `index`. Only for a place the producer published and we
    /// have not released (`tail <= index < head_cache`).
    #[inline]
    fn get(&self, index: u64) -> DescWords {
        self.mem.slot(index).0.with(|p| {
            // SAFETY: the producer published the place (head_cache > index) with a Release
            // store we read with Acquire, so its contents are visible, and it will not
            // rewrite it until we release past it. The copy is volatile and by value: nothing
            // reads the place again. A place is as large as `DescWords` and at least as
            // aligned (asserted above), and any bits are valid words.
            unsafe { std::ptr::read_volatile(p.cast::<DescWords>()) }
        })
    }

    /// Copies the payload of `desc`, a descriptor just [`take`](Consumer::take)n whose slot is
    /// [`INLINE`], out of the places after it, to the end of `out`, and takes those places
    /// (given back at the next [`Consumer::release`], with the descriptor's). Call it before
    /// the next `take`, which would otherwise read the payload as descriptors. A length over
    /// [`INLINE_MAX`], or a payload that runs past what the producer published (it publishes
    /// a descriptor and its payload with one store), is [`Corrupt`]: nothing is copied then.
    /// `out` needs room for whole places (`len` rounded up to 32 bytes) not to grow: they are
    /// copied whole, and the excess cut off.
    #[inline]
    pub fn take_inline(&mut self, desc: &Desc, out: &mut bytes::BytesMut) -> Result<(), Corrupt> {
        let len = desc.len as usize;
        if desc.slot != INLINE || len > INLINE_MAX {
            return Err(Corrupt("an inline payload longer than the ring carries"));
        }
        let places = inline_places(len);
        if self.head_cache.wrapping_sub(self.tail) < places {
            self.refresh()?;
            if self.head_cache.wrapping_sub(self.tail) < places {
                return Err(Corrupt(
                    "an inline payload runs past what the producer published",
                ));
            }
        }
        // Whole places are copied (a copy of fixed size, done in registers; one of just the
        // bytes a place holds of the payload was a call to `memcpy`), and what the last adds
        // past the payload is cut off after.
        let end = out.len() + len;
        out.reserve(places as usize * DESC_LEN);
        for k in 0..places {
            // (Published: head_cache covers them, checked above.)
            let words = self.get(self.tail + k);
            let mut bytes = [0u8; DESC_LEN];
            for (b, w) in bytes.chunks_exact_mut(8).zip(words) {
                b.copy_from_slice(&w.to_ne_bytes());
            }
            out.extend_from_slice(&bytes);
        }
        out.truncate(end);
        self.tail += places;
        Ok(())
    }

    /// Gives the places of the descriptors taken since the last release back to the producer
    /// (a `Release` store of the tail, after the descriptors were read). Nothing when there
    /// are none.
    #[inline]
    pub fn release(&mut self) {
        if self.released != self.tail {
            self.released = self.tail;
            self.mem.ctl().tail.store(self.tail, Ordering::Release);
        }
    }

    /// Places published and not yet taken: descriptors, and the inline payloads
    /// ([`INLINE`]) after some of them, so at least one descriptor if not 0, and at most
    /// this many. Reads the producer's head only when the cached one shows none: the
    /// descriptors among them are then taken without reading it again (one look at the
    /// shared counter per batch).
    #[inline]
    pub fn available(&mut self) -> Result<u64, Corrupt> {
        if self.tail == self.head_cache && !self.refresh()? {
            return Ok(0);
        }
        Ok(self.head_cache.wrapping_sub(self.tail))
    }

    /// Reads the producer's head; whether anything is there.
    #[inline]
    fn refresh(&mut self) -> Result<bool, Corrupt> {
        let head = self.mem.ctl().head.load(Ordering::Acquire);
        if head.wrapping_sub(self.tail) > self.mem.capacity {
            return Err(Corrupt(
                "the producer's index is behind the consumer's or more than a ring ahead",
            ));
        }
        self.head_cache = head;
        Ok(head != self.tail)
    }

    /// Whether a descriptor is waiting (reads the producer's head).
    pub fn is_empty(&mut self) -> Result<bool, Corrupt> {
        if self.tail != self.head_cache {
            return Ok(false);
        }
        self.refresh().map(|any| !any)
    }

    /// Asks the CPU to fetch the lines the next descriptor (and an inline payload after it)
    /// will be in: see [`RingMem::prefetch_from`]. For a consumer that waits for one.
    #[inline]
    pub fn prefetch_next(&self) {
        self.mem.prefetch_from(self.tail);
    }

    /// The ring's memory (for its wait words).
    pub fn mem(&self) -> &RingMem {
        &self.mem
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn desc(i: u32) -> Desc {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&i.to_be_bytes());
        Desc {
            header,
            slot: i,
            len: i.wrapping_mul(3),
        }
    }

    #[test]
    fn fills_empties_and_wraps() {
        let mem = RingMem::heap(4);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        assert_eq!(c.pop(), Ok(None));
        assert!(!mem.ctl().published());
        for round in 0..5u32 {
            for i in 0..4 {
                assert_eq!(p.push(desc(round * 4 + i)), Ok(true));
                assert!(mem.ctl().published());
            }
            assert_eq!(p.push(desc(99)), Ok(false), "full at capacity");
            assert_eq!(p.len(), Ok(4));
            for i in 0..4 {
                assert_eq!(c.pop(), Ok(Some(desc(round * 4 + i))));
            }
            assert_eq!(c.pop(), Ok(None));
            assert!(!mem.ctl().published(), "all taken");
            assert_eq!(p.is_empty(), Ok(true));
        }
    }

    #[test]
    fn published_or_prefetch_says_what_published_says() {
        // Through fills, partial takes and wraps (a payload's places across the ring's end),
        // the prefetching look answers as the plain one, and prefetching at any index (the
        // places past the end wrap) is harmless.
        let mem = RingMem::heap(16);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let mut out = bytes::BytesMut::new();
        for round in 0..40u32 {
            assert!(!mem.published_or_prefetch());
            assert_eq!(mem.published_or_prefetch(), mem.ctl().published());
            let payload = vec![round as u8; 1 + (round as usize * 7) % 96];
            assert_eq!(
                p.write_inline(&[round as u8; HEADER_LEN], &payload),
                Ok(true)
            );
            assert!(!mem.published_or_prefetch(), "written, not published");
            p.publish();
            assert!(mem.published_or_prefetch());
            assert_eq!(mem.published_or_prefetch(), mem.ctl().published());
            c.prefetch_next();
            let d = c.take().unwrap().unwrap();
            assert!(mem.published_or_prefetch(), "taken, not released");
            out.clear();
            c.take_inline(&d, &mut out).unwrap();
            assert_eq!(&out[..], &payload[..]);
            c.release();
            c.prefetch_next();
        }
        for index in [0, 7, 15, 16, u64::MAX - 3, u64::MAX] {
            mem.prefetch_from(index);
        }
        assert!(!mem.published_or_prefetch());
    }

    #[test]
    fn written_descriptors_are_seen_only_once_published_and_places_come_back_on_release() {
        let mem = RingMem::heap(4);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        for round in 0..3u32 {
            for i in 0..3 {
                assert_eq!(p.write(desc(round * 4 + i)), Ok(true));
            }
            assert!(!mem.ctl().published(), "written, not published");
            assert_eq!(c.take(), Ok(None));
            assert_eq!(p.len(), Ok(0), "nothing published to be consumed");
            p.publish();
            assert!(mem.ctl().published());
            assert_eq!(p.len(), Ok(3));
            // One more, published with nothing before it.
            assert_eq!(p.push(desc(round * 4 + 3)), Ok(true));
            assert_eq!(p.write(desc(99)), Ok(false), "full: written ones count");
            for i in 0..4 {
                assert_eq!(c.take(), Ok(Some(desc(round * 4 + i))));
            }
            assert_eq!(c.take(), Ok(None));
            // Taken, not released: the producer still sees a full ring.
            assert_eq!(p.len(), Ok(4));
            assert_eq!(p.write(desc(99)), Ok(false));
            c.release();
            assert_eq!(p.len(), Ok(0));
            assert!(!mem.ctl().published(), "all taken");
            // Publishing or releasing again with nothing new changes nothing.
            p.publish();
            c.release();
            assert_eq!(p.is_empty(), Ok(true));
        }
    }

    #[test]
    fn every_byte_of_a_descriptor_goes_through() {
        let mem = RingMem::heap(2);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let mut header = [0u8; HEADER_LEN];
        for (i, b) in header.iter_mut().enumerate() {
            *b = 0xA0 + i as u8;
        }
        let d = Desc {
            header,
            slot: 0x0102_0304,
            len: 0xF0E0_D0C0,
        };
        assert_eq!(p.push(d), Ok(true));
        assert_eq!(c.pop(), Ok(Some(d)));
    }

    #[test]
    fn available_is_what_pops_take_without_another_look() {
        let mem = RingMem::heap(8);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        assert_eq!(c.available(), Ok(0));
        for i in 0..3 {
            p.push(desc(i)).unwrap();
        }
        assert_eq!(c.available(), Ok(3));
        p.push(desc(3)).unwrap();
        assert_eq!(
            c.available(),
            Ok(3),
            "the head as last read, until that is taken"
        );
        for i in 0..3 {
            assert_eq!(c.pop(), Ok(Some(desc(i))));
        }
        assert_eq!(
            c.available(),
            Ok(1),
            "read again once the cached ones are taken"
        );
        assert_eq!(c.pop(), Ok(Some(desc(3))));
        assert_eq!(c.available(), Ok(0));
        // A head more than a ring ahead is refused here too.
        mem.ctl().head.store(100, Ordering::Release);
        assert!(c.available().is_err());
    }

    #[test]
    fn a_corrupt_head_or_tail_is_an_error_not_a_wild_read() {
        let mem = RingMem::heap(8);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        assert_eq!(p.push(desc(1)), Ok(true));
        // The peer (producer) claims more than a ring's worth.
        mem.ctl().head.store(100, Ordering::Release);
        assert!(c.pop().is_err());
        // Or moves its head backwards.
        let mem = RingMem::heap(8);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        for i in 0..3 {
            p.push(desc(i)).unwrap();
        }
        c.pop().unwrap();
        c.pop().unwrap();
        mem.ctl().head.store(1, Ordering::Release);
        c.pop().unwrap(); // the cached head still says 3: one more is ours to read
        assert!(c.pop().is_err());
        // The consumer claims to have read more than was published.
        let mem = RingMem::heap(2);
        let mut p = mem.producer();
        p.push(desc(0)).unwrap();
        p.push(desc(1)).unwrap();
        mem.ctl().tail.store(7, Ordering::Release);
        assert!(p.push(desc(2)).is_err());
        assert!(p.len().is_err());
    }

    #[test]
    fn threads_pass_a_million_descriptors_in_order() {
        let mem = RingMem::heap(64);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        const N: u32 = if cfg!(miri) { 2_000 } else { 1_000_000 };
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                if p.push(desc(i)).unwrap() {
                    i += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0;
        while next < N {
            match c.pop().unwrap() {
                Some(d) => {
                    assert_eq!(d, desc(next));
                    next += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        t.join().unwrap();
    }

    /// Payload `i` of the inline tests: `len` bytes that differ with `i` and position.
    fn payload(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i as usize * 31 + k * 7) as u8).collect()
    }

    fn inline_header(i: u32) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&i.to_le_bytes());
        h[23] = 0xA5;
        h
    }

    /// Takes a descriptor and, if inline, its payload.
    fn take_any(c: &mut Consumer) -> Option<(Desc, Vec<u8>)> {
        let d = c.take().unwrap()?;
        let mut out = bytes::BytesMut::new();
        if d.slot == INLINE {
            c.take_inline(&d, &mut out).unwrap();
        }
        Some((d, out.to_vec()))
    }

    /// `take_inline` adds the payload after what `out` holds, and nothing else: it copies
    /// whole places, and what the last one carries past the payload must not stay.
    #[test]
    fn inline_payloads_are_appended_exactly_after_what_is_there() {
        let mem = RingMem::heap(16);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let mut out = bytes::BytesMut::new();
        let mut want = Vec::new();
        let step = if cfg!(miri) { 17 } else { 1 };
        for len in (1..=INLINE_MAX).step_by(step) {
            let i = len as u32;
            assert_eq!(
                p.write_inline(&inline_header(i), &payload(i, len)),
                Ok(true)
            );
            p.publish();
            let d = c.take().unwrap().expect("published");
            c.take_inline(&d, &mut out).unwrap();
            c.release();
            want.extend_from_slice(&payload(i, len));
            assert_eq!(&out[..], &want[..], "after the payload of {len} bytes");
            if out.len() > 4096 {
                // (Kept short: a prefix of a few hundred bytes is as good as one of many.)
                let keep = out.len() - 300;
                let _ = out.split_to(keep);
                want.drain(..keep);
            }
        }
    }

    #[test]
    fn inline_payloads_of_every_length_go_through_whole_and_wrap() {
        // 16 places: a 256-byte payload and its descriptor take 9, so most records wrap.
        let mem = RingMem::heap(16);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        // (Miri: every 15th length, the last too; it is slow.)
        let step = if cfg!(miri) { 15 } else { 1 };
        for len in (0..=INLINE_MAX).step_by(step).chain([INLINE_MAX]) {
            let i = len as u32;
            let bytes = payload(i, len);
            assert!(p.write_inline(&inline_header(i), &bytes).unwrap());
            // A plain descriptor after it: the payload's places end where they should.
            assert!(p.write(desc(i)).unwrap());
            // Not seen before it is published.
            assert!(c.take().unwrap().is_none());
            p.publish();
            assert_eq!(c.available().unwrap(), 2 + inline_places(len));
            let (d, got) = take_any(&mut c).expect("published");
            assert_eq!(d.header, inline_header(i));
            assert_eq!((d.slot, d.len), (INLINE, len as u32));
            assert_eq!(got, bytes, "payload of {len} bytes");
            assert_eq!(take_any(&mut c).expect("published"), (desc(i), Vec::new()));
            assert!(c.take().unwrap().is_none());
            c.release();
        }
    }

    #[test]
    fn an_inline_record_waits_for_room_for_all_its_places() {
        let mem = RingMem::heap(8);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        // 3 places used: 5 left; 160 bytes need 1 + 5.
        for i in 0..3 {
            assert!(p.push(desc(i)).unwrap());
        }
        assert!(!p.has_room_for(6).unwrap());
        assert!(!p.write_inline(&inline_header(9), &payload(9, 160)).unwrap());
        assert!(p.write_inline(&inline_header(9), &payload(9, 128)).unwrap());
        assert!(!p.has_room().unwrap(), "the ring is full");
        p.publish();
        // Room comes back as places are released.
        assert_eq!(c.pop().unwrap(), Some(desc(0)));
        assert!(!p.write_inline(&inline_header(1), &payload(1, 32)).unwrap());
        assert_eq!(c.pop().unwrap(), Some(desc(1)));
        assert!(p.write_inline(&inline_header(1), &payload(1, 32)).unwrap());
        p.publish();
        assert_eq!(c.pop().unwrap(), Some(desc(2)));
        let (d, got) = take_any(&mut c).unwrap();
        assert_eq!((d.len, got), (128, payload(9, 128)));
        let (d, got) = take_any(&mut c).unwrap();
        assert_eq!((d.len, got), (32, payload(1, 32)));
        c.release();
        assert!(c.take().unwrap().is_none());
    }

    #[test]
    fn a_corrupt_inline_descriptor_is_an_error_not_a_wild_read() {
        let mem = RingMem::heap(16);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        // Longer than the ring carries inline.
        let long = Desc {
            header: [1; HEADER_LEN],
            slot: INLINE,
            len: INLINE_MAX as u32 + 1,
        };
        assert!(p.push(long).unwrap());
        let d = c.take().unwrap().unwrap();
        let mut out = bytes::BytesMut::new();
        assert!(c.take_inline(&d, &mut out).is_err());
        assert!(out.is_empty(), "nothing copied");
        // A payload its producer did not publish (a hostile one published the descriptor
        // without the two places its 64 bytes take).
        let short = Desc {
            header: [2; HEADER_LEN],
            slot: INLINE,
            len: 64,
        };
        assert!(p.push(short).unwrap());
        let d = c.take().unwrap().unwrap();
        let err = c.take_inline(&d, &mut out).unwrap_err();
        assert!(err.0.contains("past what the producer published"), "{err}");
        assert!(out.is_empty(), "nothing copied");
        // Not an inline descriptor.
        assert!(c.take_inline(&desc(3), &mut out).is_err());
    }

    #[test]
    fn threads_pass_inline_payloads_in_order() {
        let mem = RingMem::heap(64);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        const N: u32 = if cfg!(miri) { 100 } else { 20_000 };
        let len_of = |i: u32| (i as usize * 37) % (INLINE_MAX + 1);
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                // Runs published at once, and plain descriptors among them.
                let pushed = if i % 5 == 0 {
                    p.write(desc(i)).unwrap()
                } else {
                    p.write_inline(&inline_header(i), &payload(i, len_of(i)))
                        .unwrap()
                };
                if pushed {
                    i += 1;
                    if i % 3 == 0 {
                        p.publish();
                    }
                } else {
                    p.publish();
                    std::hint::spin_loop();
                }
            }
            p.publish();
        });
        let mut next = 0;
        let mut out = bytes::BytesMut::new();
        while next < N {
            match c.take().unwrap() {
                Some(d) if next % 5 == 0 => {
                    assert_eq!(d, desc(next));
                    next += 1;
                }
                Some(d) => {
                    assert_eq!(d.header, inline_header(next));
                    out.clear();
                    c.take_inline(&d, &mut out).unwrap();
                    assert_eq!(&out[..], &payload(next, len_of(next))[..]);
                    next += 1;
                }
                None => {
                    c.release();
                    std::hint::spin_loop();
                }
            }
            if next % 7 == 0 {
                c.release();
            }
        }
        t.join().unwrap();
    }
}
