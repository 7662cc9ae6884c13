//! The shared segment of one shm connection: its layout (documented in docs/PROTOCOL.md, "shm
//! segment"), creation (a sealed memfd on Linux, an unlinked POSIX shm object on macOS: either
//! way nothing can shrink it under us), mapping, and validation of a segment received from a
//! peer.
//!
//! ```text
//! offset 0      header (one page): magic "DUCTSHM1", version, total length, ring slots,
//!               size classes
//! HEADER_LEN    direction 0 (dialer → listener), then direction 1 (listener → dialer),
//!               each DIR_ALIGN-aligned:
//!                 RingCtl (256 bytes: head, tail, consumer and producer wait words)
//!                 ring_slots places of 32 bytes (descriptors; small payloads after theirs)
//!                 one u32 state per pool slot (rounded up to 64 bytes)
//!                 the pool's slots, class by class (64-byte multiples)
//! ```
//! Every number is little-endian (the segment never leaves the host). Both sides compute the
//! layout from the header's parameters; a receiver checks the parameters' bounds and that the
//! computed length equals the header's and the file's before mapping anything beyond the
//! header.

use std::fmt;
#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use super::pool::{Class, PoolMem};
use super::ring::{self, DescSlot, RingCtl, RingMem};
use super::sync::AtomicU32;

/// The first 8 bytes of a segment.
pub const MAGIC: [u8; 8] = *b"DUCTSHM1";
/// The layout version this code writes and reads.
pub const VERSION: u32 = 2;
/// Bytes reserved for the header.
pub const HEADER_LEN: usize = 4096;
/// Alignment of each direction's area.
pub const DIR_ALIGN: usize = 4096;
/// Most size classes.
pub const MAX_CLASSES: usize = 8;
/// Most descriptors in a ring.
pub const MAX_RING_SLOTS: u32 = 1 << 20;
/// Most pool slots in one direction.
pub const MAX_POOL_SLOTS: u32 = 1 << 20;
/// Largest slot.
pub const MAX_SLOT_SIZE: u32 = 1 << 30;
/// Largest segment.
pub const MAX_SEGMENT_LEN: u64 = 1 << 40;

/// The shape of a segment: the same for both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Descriptors per ring: a power of two, 2 ..= [`MAX_RING_SLOTS`].
    pub ring_slots: u32,
    /// Pool size classes (1 ..= [`MAX_CLASSES`]), sizes multiples of 64.
    pub classes: Vec<Class>,
}

/// A segment's parameters are out of bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSegment(pub String);

impl fmt::Display for BadSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared-memory segment: {}", self.0)
    }
}

impl std::error::Error for BadSegment {}

fn bad(what: impl Into<String>) -> BadSegment {
    BadSegment(what.into())
}

/// Offsets within one direction's area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirLayout {
    ring_ctl: usize,
    descs: usize,
    states: usize,
    data: usize,
    len: usize,
}

/// Where everything is, computed from [`Params`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    params: Params,
    dir: DirLayout,
    total: usize,
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl Layout {
    /// Checks `params` and computes the layout.
    pub fn new(params: Params) -> Result<Layout, BadSegment> {
        let r = params.ring_slots;
        if !r.is_power_of_two() || !(2..=MAX_RING_SLOTS).contains(&r) {
            return Err(bad(format!(
                "ring slots {r}: not a power of two in 2..={MAX_RING_SLOTS}"
            )));
        }
        let n = params.classes.len();
        if n == 0 || n > MAX_CLASSES {
            return Err(bad(format!("{n} size classes (1..={MAX_CLASSES})")));
        }
        let mut slots: u64 = 0;
        for c in &params.classes {
            if c.size == 0 || c.size % 64 != 0 || c.size > MAX_SLOT_SIZE {
                return Err(bad(format!(
                    "slot size {}: not a nonzero multiple of 64 up to {MAX_SLOT_SIZE}",
                    c.size
                )));
            }
            slots += u64::from(c.count);
        }
        if slots == 0 || slots > u64::from(MAX_POOL_SLOTS) {
            return Err(bad(format!("{slots} pool slots (1..={MAX_POOL_SLOTS})")));
        }
        let data_len: u64 = params
            .classes
            .iter()
            .map(|c| u64::from(c.size) * u64::from(c.count))
            .sum();
        // Bounded before any usize arithmetic: everything below fits comfortably.
        if data_len > MAX_SEGMENT_LEN / 2 {
            return Err(bad(format!("a pool of {data_len} bytes is too large")));
        }
        let ring_ctl = 0;
        let descs = ring::CTL_LEN;
        let states = descs + r as usize * ring::DESC_LEN;
        let data = round_up(states + slots as usize * 4, 64);
        let len = round_up(data + data_len as usize, DIR_ALIGN);
        let total = HEADER_LEN + 2 * len;
        Ok(Layout {
            params,
            dir: DirLayout {
                ring_ctl,
                descs,
                states,
                data,
                len,
            },
            total,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The segment's length in bytes.
    pub fn total_len(&self) -> usize {
        self.total
    }

    /// The header bytes for this layout.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.params.classes.len() as u32).to_le_bytes());
        h[16..24].copy_from_slice(&(self.total as u64).to_le_bytes());
        h[24..28].copy_from_slice(&self.params.ring_slots.to_le_bytes());
        for (i, c) in self.params.classes.iter().enumerate() {
            let at = 32 + i * 8;
            h[at..at + 4].copy_from_slice(&c.size.to_le_bytes());
            h[at + 4..at + 8].copy_from_slice(&c.count.to_le_bytes());
        }
        h
    }

    /// Reads and checks a header (a segment a peer made): the layout it describes.
    pub fn from_header(h: &[u8]) -> Result<Layout, BadSegment> {
        if h.len() < HEADER_LEN {
            return Err(bad(format!("{} bytes: shorter than its header", h.len())));
        }
        if h[0..8] != MAGIC {
            return Err(bad("not a duct segment (bad magic)"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "layout version {version}, this side speaks {VERSION}"
            )));
        }
        let n = u32_at(12) as usize;
        if n == 0 || n > MAX_CLASSES {
            return Err(bad(format!("{n} size classes (1..={MAX_CLASSES})")));
        }
        let total = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        let classes = (0..n)
            .map(|i| Class {
                size: u32_at(32 + i * 8),
                count: u32_at(36 + i * 8),
            })
            .collect();
        let layout = Layout::new(Params {
            ring_slots: u32_at(24),
            classes,
        })?;
        if layout.total as u64 != total {
            return Err(bad(format!(
                "the header says {total} bytes, its parameters make {}",
                layout.total
            )));
        }
        Ok(layout)
    }

    fn dir_offset(&self, dir: usize) -> usize {
        HEADER_LEN + dir * self.dir.len
    }
}

/// A mapped region that lives until every ring and pool over it is dropped.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is an address range; it is shared between threads only through the ring
// and pool types, whose own invariants govern access.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: `ptr..ptr+len` was mapped by `map_fd` and is unmapped exactly once, here,
        // when the last Arc (held by every ring and pool over it) is gone.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len).finish()
    }
}

/// One side's view of a mapped segment.
#[derive(Clone, Debug)]
pub struct Segment {
    map: Arc<Mapping>,
    layout: Layout,
}

/// The rings and pools of one direction.
pub struct Direction {
    /// The descriptor ring.
    pub ring: RingMem,
    /// The payload pool.
    pub pool: PoolMem,
}

impl Segment {
    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The mapped length.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Whether the mapping is empty (never: a segment has at least a header).
    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    /// Whether `ptr` points into this segment (for tests and zero-copy checks).
    pub fn contains(&self, ptr: *const u8) -> bool {
        let start = self.map.ptr.as_ptr() as usize;
        (start..start + self.map.len).contains(&(ptr as usize))
    }

    /// Direction `dir` (0: dialer → listener, 1: listener → dialer).
    pub fn direction(&self, dir: usize) -> Direction {
        assert!(dir < 2, "two directions");
        let base = self.layout.dir_offset(dir);
        let d = self.layout.dir;
        let at = |off: usize| {
            // SAFETY: `base + off` is within the mapping: the layout puts every part of a
            // direction inside `HEADER_LEN + 2 * dir.len == total == map.len`.
            unsafe { self.map.ptr.add(base + off) }
        };
        let keep: Arc<dyn Send + Sync> = self.map.clone();
        // SAFETY: the layout gives the control block and `ring_slots` descriptors at these
        // offsets (64-byte aligned in a page-aligned mapping); the zero-filled memfd is a valid
        // empty ring; the mapping lives as long as `keep`. Each side makes one producer or one
        // consumer per direction (the transport's contract).
        let ring = unsafe {
            RingMem::from_raw(
                at(d.ring_ctl).cast::<RingCtl>(),
                at(d.descs).cast::<DescSlot>(),
                u64::from(self.layout.params.ring_slots),
                Arc::clone(&keep),
            )
        };
        // SAFETY: the layout gives one u32 state per slot at `states` and the classes' slots
        // at `data` (64-byte aligned), within the mapping, alive as long as `keep`.
        let pool = unsafe {
            PoolMem::from_raw(
                at(d.states).cast::<AtomicU32>(),
                at(d.data),
                &self.layout.params.classes,
                keep,
            )
        };
        Direction { ring, pool }
    }
}

/// Errors of creating, passing and mapping segments.
#[derive(Debug)]
pub enum SegmentError {
    /// A system call failed.
    Io(std::io::Error),
    /// The segment (or its parameters) is not acceptable.
    Bad(BadSegment),
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::Io(e) => write!(f, "shared-memory segment: {e}"),
            SegmentError::Bad(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SegmentError {}

impl From<std::io::Error> for SegmentError {
    fn from(e: std::io::Error) -> Self {
        SegmentError::Io(e)
    }
}

impl From<rustix::io::Errno> for SegmentError {
    fn from(e: rustix::io::Errno) -> Self {
        SegmentError::Io(e.into())
    }
}

impl From<BadSegment> for SegmentError {
    fn from(e: BadSegment) -> Self {
        SegmentError::Bad(e)
    }
}

// How a segment's memory is made and vetted: one module per OS, each with
// `new_fd(len)` (an anonymous, or at once unnamed, shared-memory object of `len` bytes that
// nobody can resize) and `check_fd(fd)` (a received object is such an object).
#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod os;
#[cfg(target_os = "macos")]
use posix as os;

#[cfg(unix)]
pub mod posix;

#[cfg(any(target_os = "linux", target_os = "macos"))]
impl Segment {
    /// Creates a segment for `params` and maps it; returns the segment and the fd to pass to
    /// the peer. The memory has no name anywhere once this returns (a sealed memfd on Linux;
    /// a POSIX shm object unlinked right after it was opened on macOS), so it is gone when the
    /// last fd and mapping are, however the processes end.
    pub fn create(params: Params) -> Result<(Segment, OwnedFd), SegmentError> {
        let layout = Layout::new(params)?;
        let fd = os::new_fd(layout.total as u64)?;
        Segment::create_in(fd, layout)
    }

    /// Maps a segment a peer created and passed as `fd`, after checking that nobody can
    /// resize it (seals on Linux), its size and its header.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Segment, SegmentError> {
        os::check_fd(fd)?;
        Segment::open_unchecked(fd)
    }
}

#[cfg(unix)]
impl Segment {
    /// Writes the header into a fresh object `fd` of `layout.total` bytes and maps it.
    pub(crate) fn create_in(
        fd: OwnedFd,
        layout: Layout,
    ) -> Result<(Segment, OwnedFd), SegmentError> {
        let map = map_fd(fd.as_fd(), layout.total)?;
        // SAFETY: the mapping is `total >= HEADER_LEN` bytes, writable, and nobody else has it
        // yet (the fd was not passed on).
        unsafe {
            std::ptr::copy_nonoverlapping(layout.header().as_ptr(), map.ptr.as_ptr(), HEADER_LEN);
        }
        Ok((
            Segment {
                map: Arc::new(map),
                layout,
            },
            fd,
        ))
    }

    /// Checks the size and the header of `fd` and maps it; the caller has checked that the
    /// object cannot shrink.
    pub(crate) fn open_unchecked(fd: BorrowedFd<'_>) -> Result<Segment, SegmentError> {
        let size = rustix::fs::fstat(fd)?.st_size;
        let size = u64::try_from(size).map_err(|_| bad("negative size"))?;
        if size < HEADER_LEN as u64 || size > MAX_SEGMENT_LEN {
            return Err(bad(format!("a segment of {size} bytes")).into());
        }
        let header = map_fd(fd, HEADER_LEN)?;
        let mut copy = [0u8; HEADER_LEN];
        // SAFETY: the header mapping is HEADER_LEN readable bytes; the copy is taken once and
        // then checked, so a peer changing it meanwhile cannot change what we check.
        unsafe {
            std::ptr::copy_nonoverlapping(header.ptr.as_ptr(), copy.as_mut_ptr(), HEADER_LEN);
        }
        drop(header);
        let layout = Layout::from_header(&copy)?;
        if layout.total as u64 != size {
            return Err(bad(format!(
                "the file has {size} bytes, its header says {}",
                layout.total
            ))
            .into());
        }
        let map = map_fd(fd, layout.total)?;
        Ok(Segment {
            map: Arc::new(map),
            layout,
        })
    }
}

/// Maps `len` bytes of `fd`, shared and read-write.
#[cfg(unix)]
fn map_fd(fd: BorrowedFd<'_>, len: usize) -> Result<Mapping, SegmentError> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh shared mapping of `len` bytes of `fd` at an address the kernel picks: it
    // aliases no Rust object. The file is at least `len` bytes and cannot shrink (checked by
    // the callers), so every page stays backed.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )?
    };
    let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| bad("mmap returned null"))?;
    Ok(Mapping { ptr, len })
}

#[cfg(all(test, not(loom), target_os = "linux"))]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn params() -> Params {
        Params {
            ring_slots: 8,
            classes: vec![
                Class { size: 64, count: 4 },
                Class {
                    size: 4096,
                    count: 2,
                },
            ],
        }
    }

    #[test]
    fn layout_round_trips_through_the_header_and_rejects_bad_ones() {
        let layout = Layout::new(params()).unwrap();
        assert_eq!(Layout::from_header(&layout.header()).unwrap(), layout);
        assert_eq!(layout.total_len() % 4096, 0);
        let mut h = layout.header();
        h[0] = b'X';
        assert!(Layout::from_header(&h).is_err(), "magic");
        for other in [1, VERSION + 1] {
            let mut h = layout.header();
            h[8..12].copy_from_slice(&other.to_le_bytes());
            assert!(Layout::from_header(&h).unwrap_err().0.contains("version"));
        }
        let mut h = layout.header();
        h[16] ^= 1;
        assert!(Layout::from_header(&h).is_err(), "total length");
        let mut h = layout.header();
        h[24..28].copy_from_slice(&3u32.to_le_bytes());
        assert!(
            Layout::from_header(&h).is_err(),
            "ring slots not a power of two"
        );
        let mut h = layout.header();
        h[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert!(Layout::from_header(&h).is_err(), "too many classes");
        let mut h = layout.header();
        h[32..36].copy_from_slice(&100u32.to_le_bytes());
        assert!(
            Layout::from_header(&h).is_err(),
            "slot size not a multiple of 64"
        );
        let mut h = layout.header();
        h[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Layout::from_header(&h).is_err(), "too many slots");
        assert!(Layout::from_header(&h[..100]).is_err(), "short");
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd and mmap are not emulated by Miri")]
    fn both_sides_of_a_memfd_segment_see_one_ring_and_pool() {
        let (a, fd) = Segment::create(params()).unwrap();
        let b = Segment::open(fd.as_fd()).unwrap();
        drop(fd); // the mappings keep the memory
        let (da, db) = (a.direction(0), b.direction(0));
        let tx = super::super::pool::PoolTx::new(da.pool.clone());
        let rx = super::super::pool::PoolRx::new(db.pool.clone(), || {});
        let mut producer = da.ring.producer();
        let mut consumer = db.ring.consumer();
        let mut slot = tx.alloc(100).unwrap();
        slot.fill(&[7u8; 100]);
        let (index, len) = slot.send();
        let mut header = [0u8; ring::HEADER_LEN];
        header[0] = 0xd7;
        producer
            .push(ring::Desc {
                header,
                slot: index,
                len,
            })
            .unwrap();
        let d = consumer.pop().unwrap().unwrap();
        assert_eq!(d.header[0], 0xd7);
        let payload = rx.take(d.slot, d.len).unwrap();
        assert_eq!(&*payload, &[7u8; 100][..]);
        assert!(b.contains(payload.as_ptr()), "read in place");
        assert!(!a.contains(payload.as_ptr()), "two mappings");
        drop(payload);
        assert_eq!(da.pool.busy(), 0);
        // The other direction is separate.
        assert!(b.direction(1).ring.consumer().pop().unwrap().is_none());
    }

    /// `/dev/shm` entries this process made through [`posix`].
    fn our_posix_names() -> Vec<String> {
        let prefix = format!("duct.{:x}.", std::process::id());
        std::fs::read_dir("/dev/shm")
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The macOS way (shm_open, unlinked at once), run here on Linux: nothing stays named,
    /// and both mappings see one ring and one pool.
    #[test]
    #[cfg_attr(miri, ignore = "shm_open and mmap are not emulated by Miri")]
    fn a_posix_segment_has_no_name_and_is_shared() {
        let layout = Layout::new(params()).unwrap();
        let fd = posix::new_fd(layout.total_len() as u64).unwrap();
        assert!(our_posix_names().is_empty(), "{:?}", our_posix_names());
        assert_eq!(
            rustix::fs::fstat(&fd).unwrap().st_size as usize,
            layout.total_len()
        );
        let (a, fd) = Segment::create_in(fd, layout).unwrap();
        let b = Segment::open_unchecked(fd.as_fd()).unwrap();
        drop(fd);
        let mut producer = a.direction(1).ring.producer();
        let mut consumer = b.direction(1).ring.consumer();
        producer
            .push(ring::Desc {
                header: [9u8; ring::HEADER_LEN],
                slot: ring::NO_SLOT,
                len: 0,
            })
            .unwrap();
        assert_eq!(consumer.pop().unwrap().unwrap().header[0], 9);
        // Many at once: all distinct, none left named.
        let fds: Vec<_> = (0..64).map(|_| posix::new_fd(4096).unwrap()).collect();
        assert!(our_posix_names().is_empty());
        drop(fds);
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd and mmap are not emulated by Miri")]
    fn an_unsealed_or_foreign_fd_is_refused() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 65536).unwrap();
        let err = Segment::open(fd.as_fd()).unwrap_err();
        assert!(err.to_string().contains("sealed"), "{err}");
        let fd = rustix::fs::memfd_create(
            "y",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 65536).unwrap();
        rustix::fs::fcntl_add_seals(
            &fd,
            rustix::fs::SealFlags::SHRINK
                | rustix::fs::SealFlags::GROW
                | rustix::fs::SealFlags::SEAL,
        )
        .unwrap();
        let err = Segment::open(fd.as_fd()).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
