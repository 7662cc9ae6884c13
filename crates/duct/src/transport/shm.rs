//! `shm://name`: frames through a shared-memory segment, with a Unix socket beside it.
//!
//! **Rendezvous.** A listener on `shm://name` listens on a Unix socket: on Linux the abstract
//! name `@duct-shm/name` (scoped to the network namespace); on macOS, which has no abstract
//! names, the socket file `name` in `/tmp/duct-shm-<uid>` (created with mode 0700 and refused
//! unless it is the user's own and private). With `DUCT_SHM_DIR` set, on any system, the
//! socket file `name` in that directory (on Linux this lets containers that share a volume
//! but not a network namespace meet). For each dialer it accepts, it creates
//! a segment (Linux: a sealed memfd; macOS: a POSIX shm object unlinked as soon as it is
//! opened; either way nothing stays named in the system, and the memory is gone once both
//! processes have dropped it) and passes the fd over the socket with the 8 bytes `DSHMSEG1`. The dialer checks the seals,
//! the size and the header, and maps it. From then on the socket is the control channel: it
//! carries one-byte wake-ups for a side whose reactor waits (see below), and its end of stream
//! tells each side at once that the other process is gone, however it died.
//!
//! **Frames.** Direction 0 carries the dialer's frames, direction 1 the listener's. A frame
//! is a descriptor in the direction's ring (the 24-byte header, where its payload is, and a
//! length) and its payload: up to 256 bytes in the ring's places right after the descriptor
//! (no pool slot to claim and free; the bytes move on the ring's cache lines), a larger one
//! (or one written in place with `Pipe::alloc`) in a pool slot. The receiver checks every
//! descriptor (slot in range, length within the slot or the ring's 256 bytes, and equal to
//! the header's), copies a payload of up to 512 bytes out (its places or slot go back at
//! once), and hands the session a larger one as a `Bytes` view of the slot (no copy), freed
//! when the application drops the last view. Sending copies the payload into the ring or a
//! slot once.
//!
//! **Wake-ups** (duct_sys::shm::wait). A receiver with nothing to read sets its wait word
//! and, after checking the ring once more, either parks on the futex (a thread blocked in
//! `recv`, in slices so it also notices the control socket's end; `__ulock_wait` on macOS) or returns to the reactor,
//! which watches the control socket (the word says `SOCKET`: the sender writes a byte). A
//! sender that finds the ring or the pool full does the same on its own word, which the
//! receiver signals when it takes descriptors or frees slots. Nobody makes a syscall while
//! the other side is not waiting.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct_proto::wire::{FrameKind, HEADER_LEN};
use duct_proto::Transmit;
use duct_sys::shm::pool::{Class, PoolRx, PoolTx, TxSlot};
use duct_sys::shm::ring::{
    inline_places, Consumer, Desc, Producer, RingMem, DESC_LEN, INLINE, INLINE_MAX, NO_SLOT,
};
use duct_sys::shm::segment::{Params, Segment};
use duct_sys::shm::wait::{self, Wake};

use crate::addr::{Addr, Endpoint};
use crate::driver::io::Chunks;
use crate::driver::{FrameCounts, FramePayload, FrameRead, FrameSide, RawFrame};
use crate::error::{Error, ErrorKind, Result};
use crate::options::PeerCredentials;

/// What the listener sends with the segment's fd.
const SEG_HELLO: &[u8; 8] = b"DSHMSEG1";
/// The environment variable that names the directory of rendezvous sockets.
pub(crate) const DIR_ENV: &str = "DUCT_SHM_DIR";

/// Where rendezvous sockets are files: the directory and whether the user chose it
/// (`DUCT_SHM_DIR`) rather than taking the default. `None`: abstract names (Linux without
/// `DUCT_SHM_DIR`).
fn rendezvous_dir_choice() -> Option<(PathBuf, bool)> {
    let custom = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty());
    match custom {
        Some(dir) => Some((PathBuf::from(dir), true)),
        None if cfg!(target_os = "linux") => None,
        None => {
            let uid = rustix::process::geteuid().as_raw();
            Some((PathBuf::from(format!("/tmp/duct-shm-{uid}")), false))
        }
    }
}

/// Where the rendezvous sockets of `shm://` live when they are files: `$DUCT_SHM_DIR` if set;
/// else on Linux `None` (abstract names `@duct-shm/NAME`), elsewhere `/tmp/duct-shm-<uid>`.
pub(crate) fn rendezvous_dir_path() -> Option<PathBuf> {
    rendezvous_dir_choice().map(|(dir, _)| dir)
}

/// The rendezvous directory `dir`, made ready. The default one is created (mode 0700) and
/// must be a directory (not a link) of user `uid` that nobody else can enter, since whoever
/// can place a socket there can hand our dialers a segment. A directory the user `chose`
/// (`DUCT_SHM_DIR`: to share endpoints between users or containers, say) is only required to
/// be a directory.
fn ready_dir(ep: &Endpoint, dir: &Path, chosen: bool, uid: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !chosen {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::io(
                    e,
                    format_args!("{ep}: creating the rendezvous directory {}", dir.display()),
                ))
            }
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
        Error::io(
            e,
            format_args!("{ep}: the rendezvous directory {}", dir.display()),
        )
    })?;
    if !meta.is_dir() {
        return Err(Error::new(
            ErrorKind::InvalidAddress,
            format!(
                "{ep}: the rendezvous path {} is not a directory",
                dir.display()
            ),
        ));
    }
    if !chosen && (meta.uid() != uid || meta.mode() & 0o077 != 0) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{ep}: the rendezvous directory {} is not private (owner uid {}, mode {:o}; \
                 expected uid {uid}, mode 700): remove it, or set {DIR_ENV}",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The socket file of `shm://name`, when rendezvous sockets are files.
fn rendezvous_file(ep: &Endpoint, name: &str) -> Result<Option<PathBuf>> {
    let Some((dir, chosen)) = rendezvous_dir_choice() else {
        return Ok(None);
    };
    ready_dir(ep, &dir, chosen, rustix::process::geteuid().as_raw())?;
    Ok(Some(dir.join(name)))
}

/// Connects to the rendezvous socket of `shm://name`: the socket file `NAME` in the
/// rendezvous directory ([`rendezvous_dir_path`]), or on Linux by default the abstract name
/// `@duct-shm/NAME`.
pub(crate) fn connect_rendezvous(
    ep: &Endpoint,
    name: &str,
    timeout: Duration,
) -> Result<UnixStream> {
    let ctl = match rendezvous_file(ep, name)? {
        Some(path) => super::uds::connect_path(ep, &path, timeout),
        None => super::uds::connect_abstract(ep, &format!("duct-shm/{name}"), timeout),
    }?;
    super::no_sigpipe(&ctl);
    Ok(ctl)
}

/// Listens on the rendezvous socket of `shm://name` (see [`connect_rendezvous`]). A live
/// listener on the name is `AddressInUse`; the socket file of one that died is taken over.
pub(crate) fn bind_rendezvous(ep: &Endpoint, name: &str) -> Result<super::uds::UnixSocketListener> {
    match rendezvous_file(ep, name)? {
        Some(path) => super::uds::bind_path(ep, &path),
        None => super::uds::bind_abstract(ep, &format!("duct-shm/{name}")),
    }
}

/// Longest a blocked receiver sleeps on the futex before it looks at the control socket
/// (how soon it notices a dead peer when nothing else wakes it).
const PARK_SLICE: Duration = Duration::from_millis(20);

/// The segment every connection gets, per direction: a ring of 4096 places of 32 bytes (a
/// descriptor each, or part of a payload of up to 256 bytes after its descriptor: 1,365
/// messages of 64 bytes) and a pool of 4096 × 256 B (payloads written in place with
/// `Pipe::alloc`), 512 × 4 KiB, 128 × 64 KiB and 8 × 1 MiB slots (≈ 29 MiB of address space).
/// Pages take memory once touched, and stay with the segment until the connection ends.
/// The largest slot is the largest frame over shm (1 MiB).
pub(crate) fn default_params() -> Params {
    Params {
        ring_slots: 4096,
        classes: vec![
            Class {
                size: 256,
                count: 4096,
            },
            Class {
                size: 4096,
                count: 512,
            },
            Class {
                size: 64 * 1024,
                count: 128,
            },
            Class {
                size: 1024 * 1024,
                count: 8,
            },
        ],
    }
}

/// One shm connection.
///
/// Each direction's private state ([`TxSide`], [`RxSide`]) waits here until the driver's
/// first send (receive) takes it into the queue it writes from (the buffer it reads into):
/// from then on the driver passes it to every call, and only the one writer (reader) the
/// driver lets in at a time holds it, so the rings need no lock of their own.
pub(crate) struct ShmStream {
    ctl: Arc<UnixStream>,
    segment: Segment,
    tx_spare: Mutex<Option<TxSide>>,
    rx_spare: Mutex<Option<RxSide>>,
    /// Tells this connection's sides from any other's.
    id: u64,
    tx_pool: Arc<PoolTx>,
    rx_pool: Arc<PoolRx>,
    /// The ring we receive on (for its wait words).
    rx_ring: RingMem,
    /// The ring we send on.
    tx_ring: RingMem,
    /// Frames whose payload was copied into the pool, and those bytes; frames sent from a
    /// loan without a copy. (Counted in the [`TxSide`], published here after each batch for
    /// the pipe's statistics.)
    copied_frames: AtomicU64,
    copied_bytes: AtomicU64,
    lent_frames: AtomicU64,
    /// Wake-up signals this side wrote to the control socket for the peer (see
    /// `PipeStats::wake_signals`).
    signals: Arc<AtomicU64>,
    /// The control socket ended (the peer is gone) or was shut down here.
    ended: AtomicBool,
    /// Reading was shut down here.
    read_shut: AtomicBool,
    /// How long a blocked receive spins before it parks, in nanoseconds (`u64::MAX`: never
    /// parks).
    spin_ns: AtomicU64,
    /// The send ring's published head when a receive last began to spin: whether this side
    /// sent since (see [`ShmStream::spin_for_input`]).
    spun_after: AtomicU64,
    local: Addr,
    peer: Addr,
}

/// The sending end's private state: one at a time holds it (see [`ShmStream`]).
pub(crate) struct TxSide {
    producer: Producer,
    /// When the last batch with payloads in pool slots went out, the peer had taken every
    /// frame sent before it: the next batch starts the searches for a free slot from the
    /// pool's lowest slots again (see [`ShmStream::rewind`]). Learnt only from batches that
    /// used the pool (see [`ShmStream::published`]): a rewind lasts until a slot is taken.
    caught_up: bool,
    /// A frame sent since the last wake-up has its payload in a pool slot.
    pooled: bool,
    /// What [`ShmStream::copied_frames`] and its siblings publish.
    copied_frames: u64,
    copied_bytes: u64,
    lent_frames: u64,
    /// Frames sent one at a time ([`ShmStream::push_copy`]) since the peer was last woken
    /// (and, but when the ring or the pool was found full, since the ring's head was
    /// published).
    unwoken: usize,
}

/// The receiving end's private state: one at a time holds it (see [`ShmStream`]).
pub(crate) struct RxSide {
    consumer: Consumer,
    /// Small payloads are copied here (their slot freed at once) instead of viewed in place:
    /// a view needs an allocation for its owner, which costs more than copying a few hundred
    /// bytes. The buffer's allocation is reused once the application drops the messages.
    small: BytesMut,
    /// Chunks of `small` for reuse (no allocation in steady state).
    chunks: Chunks,
    /// Descriptors taken from the ring whose payloads are still to be read from the pool,
    /// with the places in the output of the frames waiting for them (see
    /// `ShmStream::pop_some`).
    descs: Box<[(usize, Desc); TAKE_CHUNK]>,
}

/// How long `alloc` waits for a slot it may lend before it settles for a heap buffer.
const LOAN_WAIT: Duration = Duration::from_micros(500);

/// Payloads up to this size are copied out of the pool; larger ones are viewed in place.
const COPY_MAX: u32 = 512;
/// Bytes reserved at a time for copied payloads.
const SMALL_CHUNK: usize = 64 * 1024;
/// Descriptors taken from the receive ring before their places go back to the sender (and
/// before their payloads are read).
const TAKE_CHUNK: usize = 32;

impl std::fmt::Debug for ShmStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("segment_len", &self.segment.len())
            .finish_non_exhaustive()
    }
}

/// The next [`ShmStream::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A direction's private state, as a [`FrameSide`] holds it.
pub(crate) enum SideState {
    Tx(TxSide),
    Rx(RxSide),
}

/// A direction's private state: which [`SideState`] it is.
trait Side: Sized {
    fn wrap(self) -> SideState;
    fn get(state: &mut SideState) -> Option<&mut Self>;
}

impl Side for TxSide {
    fn wrap(self) -> SideState {
        SideState::Tx(self)
    }

    #[inline]
    fn get(state: &mut SideState) -> Option<&mut TxSide> {
        match state {
            SideState::Tx(t) => Some(t),
            SideState::Rx(_) => None,
        }
    }
}

impl Side for RxSide {
    fn wrap(self) -> SideState {
        SideState::Rx(self)
    }

    #[inline]
    fn get(state: &mut SideState) -> Option<&mut RxSide> {
        match state {
            SideState::Rx(r) => Some(r),
            SideState::Tx(_) => None,
        }
    }
}

/// The side of connection `id` that `side` holds; on its first use (or if it held another
/// connection's before), the one waiting in `spare`, which is taken.
// (Inlined, with the first use out of line: called for every frame sent and every read.)
#[inline(always)]
fn claim<'a, T: Side>(
    side: &'a mut FrameSide,
    id: u64,
    spare: &Mutex<Option<T>>,
) -> io::Result<&'a mut T> {
    if side.owner != id || side.state.is_none() {
        take_spare(side, id, spare)?;
    }
    side.state
        .as_deref_mut()
        .and_then(T::get)
        .ok_or_else(|| io::Error::other("shared memory: a ring end of the wrong kind"))
}

/// [`claim`]'s first use: moves the side waiting in `spare` into `side`.
#[cold]
#[inline(never)]
fn take_spare<T: Side>(side: &mut FrameSide, id: u64, spare: &Mutex<Option<T>>) -> io::Result<()> {
    let taken = spare.lock().unwrap_or_else(|p| p.into_inner()).take();
    // None: another buffer took it, a bug in the driver (one buffer per direction and
    // connection).
    let taken = taken.ok_or_else(|| {
        io::Error::other("shared memory: a ring end is held by another of the driver's buffers")
    })?;
    side.owner = id;
    side.state = Some(Box::new(taken.wrap()));
    Ok(())
}

/// Room in `small` for a payload of `len` bytes to be copied out (in a chunk of `chunks`
/// when it is short: no allocation in steady state).
#[inline]
fn small_room(small: &mut BytesMut, chunks: &mut Chunks, len: usize) {
    if small.capacity() - small.len() < len {
        chunks.make_room(small, len, SMALL_CHUNK);
    }
}

/// More places than this waiting in the ring: a receive copies payloads into one chunk, as
/// parts of it (see [`ShmStream::pop_some`]). One descriptor and the largest inline payload.
const PARTS_MIN_PLACES: u64 = 1 + inline_places(INLINE_MAX);

/// The payload just copied to the end of `small` (from `start` on): a place in the chunk
/// `small` becomes when `parts` and it is not empty (the parts of a chunk follow one another
/// and the last ends where the chunk does: see `Session::handle_raw_part_untimed_to`), else
/// bytes of its own.
#[inline(always)]
fn in_chunk_or_own(small: &mut BytesMut, start: u32, parts: bool) -> FramePayload {
    // (At most a ring's worth of copies, well under 4 GiB, is in `small`.)
    let len = small.len() as u32 - start;
    if len == 0 {
        FramePayload::Own(Bytes::new())
    } else if parts {
        FramePayload::InChunk { start, len }
    } else {
        // (Without parts each copy is cut off at once: it is all `small` holds. `split`
        // leaves the spare room in `small`, for the next copy.)
        debug_assert_eq!(start, 0, "one copy at a time without parts");
        FramePayload::Own(small.split().freeze())
    }
}

/// The longest a sender that found the ring full spins for room before it queues the frame
/// instead ([`ShmStream::wait_room`]), whatever the pipe's `spin` (a busy-spinning pipe
/// included): a receiver that takes frames makes room well within it, and one that does not
/// is not waited for longer than this per send call.
const ROOM_SPIN_MAX: Duration = Duration::from_micros(50);

/// A spin's budget: `ns` nanoseconds (`u64::MAX`: no limit) and not past `deadline`, its
/// clock read every 64 turns, the first time after 64 (a spin that ends sooner reads none,
/// and one that runs out lasts up to 64 turns longer than asked).
struct Spin {
    ns: u64,
    deadline: Option<Instant>,
    start: Option<Instant>,
    turns: u32,
}

impl Spin {
    fn new(ns: u64, deadline: Option<Instant>) -> Spin {
        Spin {
            ns,
            deadline,
            start: None,
            turns: 0,
        }
    }

    /// One turn of the spin (a `spin_loop` hint): whether its budget is spent.
    #[inline]
    fn turn(&mut self) -> bool {
        self.turns = self.turns.wrapping_add(1);
        if self.turns % 64 == 0 && (self.ns != u64::MAX || self.deadline.is_some()) {
            let now = Instant::now();
            let start = *self.start.get_or_insert(now);
            if self.deadline.is_some_and(|d| now >= d)
                || (self.ns != u64::MAX
                    && now.duration_since(start).as_nanos() >= u128::from(self.ns))
            {
                return true;
            }
        }
        std::hint::spin_loop();
        false
    }

    /// Turns so far (for what a spin does now and then).
    fn turns(&self) -> u32 {
        self.turns
    }
}

/// Writes one wake byte to the control socket without blocking (a full socket already holds
/// wake bytes: nothing is lost).
fn ring_bell(ctl: &UnixStream, signals: &AtomicU64) {
    use rustix::net::SendFlags;
    signals.fetch_add(1, Ordering::Relaxed);
    let _ = rustix::net::send(ctl, &[1], SendFlags::DONTWAIT | super::NO_SIGNAL);
}

fn shm_error(ep: &dyn std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Protocol, format!("{ep}: shared memory: {e}"))
}

impl ShmStream {
    /// The listener's side: creates the segment, passes it to the dialer on `ctl`.
    pub(crate) fn server(ctl: UnixStream, name: &str) -> Result<ShmStream> {
        let (segment, fd) = Segment::create(default_params()).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("shm://{name}: creating a shared-memory segment: {e}"),
            )
        })?;
        super::no_sigpipe(&ctl);
        // Ready to be rung before the dialer can send anything.
        let stream = Self::new(ctl, segment, 1, name, Addr::Unknown);
        duct_sys::shm::fdpass::send_fd(stream.ctl.as_fd(), fd.as_fd(), SEG_HELLO)
            .map_err(|e| Error::io(e, format_args!("shm://{name}: passing the segment")))?;
        Ok(stream)
    }

    /// The dialer's side: receives the segment on `ctl` before `deadline`, checks it, maps it.
    pub(crate) fn client(
        ctl: UnixStream,
        ep: &Endpoint,
        name: &str,
        deadline: Instant,
    ) -> Result<ShmStream> {
        let ready = crate::driver::io::wait_readable(ctl.as_fd(), Some(deadline))
            .map_err(|e| Error::io(e, format_args!("{ep}: waiting for the segment")))?;
        if !ready {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!("{ep}: the listener did not send its shared-memory segment in time"),
            ));
        }
        let mut buf = [0u8; 16];
        let (n, fd): (usize, Option<OwnedFd>) =
            duct_sys::shm::fdpass::recv_fd(ctl.as_fd(), &mut buf)
                .map_err(|e| Error::io(e, format_args!("{ep}: receiving the segment")))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Disconnected,
                format!("{ep}: the listener closed the connection before sending its segment"),
            ));
        }
        let Some(fd) = fd.filter(|_| &buf[..n] == SEG_HELLO) else {
            return Err(shm_error(ep, "the listener did not send a duct segment"));
        };
        let segment = Segment::open(fd.as_fd()).map_err(|e| shm_error(ep, e))?;
        Ok(Self::new(ctl, segment, 0, name, Addr::Shm(name.to_owned())))
    }

    /// `tx_dir`: the direction this side sends on (dialer 0, listener 1).
    fn new(ctl: UnixStream, segment: Segment, tx_dir: usize, name: &str, peer: Addr) -> ShmStream {
        let ctl = Arc::new(ctl);
        let tx = segment.direction(tx_dir);
        let rx = segment.direction(1 - tx_dir);
        let rx_ring = rx.ring.clone();
        // Freeing a received slot may be what a sender waits for.
        let bell = Arc::clone(&ctl);
        let signals = Arc::new(AtomicU64::new(0));
        let rung = Arc::clone(&signals);
        let wake_ring = rx.ring.clone();
        let rx_pool = PoolRx::new(rx.pool, move || {
            if wait::notify(wake_ring.ctl().producer_word()) == Wake::Socket {
                ring_bell(&bell, &rung);
            }
        });
        let local = if tx_dir == 1 {
            Addr::Shm(name.to_owned())
        } else {
            Addr::Unknown
        };
        // Until someone reads, frames that arrive are for the reactor: ring the socket.
        wait::prepare(rx_ring.ctl().consumer_word(), wait::SOCKET);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        ShmStream {
            tx_spare: Mutex::new(Some(TxSide {
                producer: tx.ring.producer(),
                caught_up: false,
                pooled: false,
                copied_frames: 0,
                copied_bytes: 0,
                lent_frames: 0,
                unwoken: 0,
            })),
            rx_spare: Mutex::new(Some(RxSide {
                consumer: rx.ring.consumer(),
                small: BytesMut::new(),
                chunks: Chunks::default(),
                descs: Box::new([(0, Desc::default()); TAKE_CHUNK]),
            })),
            id,
            tx_pool: PoolTx::new(tx.pool),
            rx_pool,
            rx_ring,
            tx_ring: tx.ring,
            copied_frames: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            lent_frames: AtomicU64::new(0),
            signals,
            ctl,
            segment,
            ended: AtomicBool::new(false),
            read_shut: AtomicBool::new(false),
            spin_ns: AtomicU64::new(0),
            spun_after: AtomicU64::new(0),
            local,
            peer,
        }
    }

    /// The sending side `side` holds, taken from here on its first use.
    #[inline]
    fn tx_side<'a>(&self, side: &'a mut FrameSide) -> io::Result<&'a mut TxSide> {
        claim(side, self.id, &self.tx_spare)
    }

    /// The receiving side `side` holds, taken from here on its first use.
    #[inline]
    fn rx_side<'a>(&self, side: &'a mut FrameSide) -> io::Result<&'a mut RxSide> {
        claim(side, self.id, &self.rx_spare)
    }

    pub(crate) fn ctl(&self) -> &UnixStream {
        &self.ctl
    }

    pub(crate) fn local_addr(&self) -> Addr {
        self.local.clone()
    }

    pub(crate) fn peer_addr(&self) -> Addr {
        self.peer.clone()
    }

    pub(crate) fn peer_credentials(&self) -> Option<PeerCredentials> {
        super::uds::peer_credentials(&self.ctl)
    }

    /// How long a blocked receive spins before it parks (`Duration::MAX`: never parks).
    pub(crate) fn set_spin(&self, spin: Duration) {
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        self.spin_ns.store(ns, Ordering::Relaxed);
    }

    /// Spins until a frame is there, the peer is gone, reading was shut down here, the spin
    /// time passes or `deadline` does. Whether something is there to look at.
    ///
    /// The clock is read every 64 turns, the first time after 64 turns: a frame that comes
    /// sooner (a peer that answers at once) costs no clock read, and the spin lasts up to 64
    /// turns longer than asked.
    ///
    /// A receive that sent something since the last spin here waits for an answer (a
    /// request's reply, the next ping-pong turn): while nothing is there it asks the CPU for
    /// the cache lines the answer will be written into ([`RingMem::published_or_prefetch`]),
    /// so that they come as soon as the peer has written them, not after the counter that
    /// announces them. shm 64 B ping-pong p50 ~1.27 -> ~1.17 us (two processes, `--spin`,
    /// medians of 4 runs). A receive that sent nothing since (a stream's receiver) does not:
    /// there the peer writes many places while this side waits, and fetching them under its
    /// writes cost the stream ~5% (10.8 -> 10.3 M msg/s, medians of 6 runs).
    fn spin_for_input(&self, deadline: Option<Instant>) -> bool {
        let ns = self.spin_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return false;
        }
        // (Races between threads that spin at once only change this hint. A plain load and
        // store, not a swap: no locked instruction on the way to the answer.)
        let sent = self.tx_ring.ctl().published_places();
        let answer = self.spun_after.load(Ordering::Relaxed) != sent;
        if answer {
            self.spun_after.store(sent, Ordering::Relaxed);
        }
        let mut spin = Spin::new(ns, deadline);
        loop {
            let there = if answer {
                self.rx_ring.published_or_prefetch()
            } else {
                self.rx_waiting()
            };
            if there || self.read_shut.load(Ordering::Acquire) {
                return true;
            }
            if spin.turn() {
                return false;
            }
            if spin.turns() % 4096 == 0 {
                // A peer that is gone never publishes again: look at the control socket now
                // and then (well under a millisecond apart).
                self.drain_ctl();
                if self.ended.load(Ordering::Acquire) {
                    return true;
                }
            }
        }
    }

    /// The largest frame payload a slot takes.
    pub(crate) fn max_payload(&self) -> u32 {
        self.tx_pool.mem().max_len().min(u32::MAX as usize) as u32
    }

    /// A slot for a payload of `len` bytes written in place, if one is free (its contents
    /// are whatever the slot held before).
    ///
    /// When every slot that may be lent is out (in flight, or queued here), it waits up to
    /// [`LOAN_WAIT`] for one to come back (the peer frees slots as it reads), then gives up:
    /// the caller falls back to a heap buffer, copied when sent.
    pub(crate) fn alloc(&self, len: usize) -> Option<TxSlot> {
        let pool = &self.tx_pool;
        if len > pool.mem().max_len() {
            return None;
        }
        let start = Instant::now();
        loop {
            if self.ended.load(Ordering::Acquire) {
                return None;
            }
            if let Some(mut slot) = pool.alloc_loan(len) {
                slot.set_len(len);
                return Some(slot);
            }
            if start.elapsed() >= LOAN_WAIT {
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// Frames copied into the pool and their bytes, frames sent from a loan, and wake-up
    /// signals written to the control socket for the peer, so far.
    pub(crate) fn counts(&self) -> FrameCounts {
        FrameCounts {
            copied_frames: self.copied_frames.load(Ordering::Relaxed),
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
            lent_frames: self.lent_frames.load(Ordering::Relaxed),
            signals: self.signals.load(Ordering::Relaxed),
        }
    }

    /// Sends frames from `frames`, in order, until one finds no room: returns how many were
    /// sent, and whether all were. The receiver is woken once, after the last (one fence and
    /// at most one wake-up per batch, not per frame). When the ring or the pool is full, the
    /// receiver rings the control socket once it makes room (the reactor sees it as
    /// readable).
    pub(crate) fn push_many<'t>(
        &self,
        side: &mut FrameSide,
        frames: impl Iterator<Item = &'t Transmit>,
    ) -> io::Result<(usize, bool)> {
        if self.ended.load(Ordering::Acquire) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let tx = self.tx_side(side)?;
        self.rewind(tx);
        let mut sent = 0;
        let mut all = true;
        let mut result = Ok(());
        for t in frames {
            match self.push_one(tx, &t.header, &t.payload, Some(&t.payload)) {
                Ok(true) => sent += 1,
                Ok(false) => {
                    all = false;
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // (Frames `push_copy` sent before these are published with them.)
        let unwoken = sent + std::mem::take(&mut tx.unwoken);
        if unwoken > 0 {
            self.published(tx, unwoken);
        }
        // Frames sent before an error are published; the error ends the connection.
        result.map(|()| (sent, all))
    }

    /// Sends one frame whose payload is copied from `payload`, if the ring and the pool have
    /// room now (`Ok(false)`: they do not). The peer sees it, and is woken if it waits, at
    /// [`ShmStream::publish`] (or the next [`ShmStream::push_many`]), once for a run of them
    /// (or as soon as the ring or the pool is full). For a sender framing copies of
    /// slices itself: no `Bytes` and no write-queue entry per message.
    pub(crate) fn push_copy(
        &self,
        side: &mut FrameSide,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> io::Result<bool> {
        if self.ended.load(Ordering::Acquire) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let tx = self.tx_side(side)?;
        self.rewind(tx);
        let pushed = self.push_one(tx, header, payload, None)?;
        tx.unwoken += usize::from(pushed);
        Ok(pushed)
    }

    /// Before a batch: if the peer had taken everything when the last batch using the pool
    /// went out (and so freed the copied payloads), the searches for a free slot start from
    /// the lowest slots again: the same few slots, warm in the caches, rather than a turn
    /// through the whole pool. (Once: the searches stay there until a slot is taken, and
    /// the next batch that takes one says whether to rewind again.)
    #[inline]
    fn rewind(&self, tx: &mut TxSide) {
        if std::mem::take(&mut tx.caught_up) {
            self.tx_pool.rewind();
        }
    }

    /// After [`ShmStream::push_copy`] found the ring full: wakes the peer for what was sent
    /// (it frees only what it sees) and spins, as a blocked receive does, for the pipe's
    /// `spin` but at most [`ROOM_SPIN_MAX`], until the ring has room for a frame with `len`
    /// payload bytes in it, and not past `deadline`. `Ok(false)`: not within that time (or the
    /// pipe does not spin, or the payload would need a pool slot, or the peer is gone).
    pub(crate) fn wait_room(
        &self,
        side: &mut FrameSide,
        len: usize,
        deadline: Instant,
    ) -> io::Result<bool> {
        let spin = self.spin_ns.load(Ordering::Relaxed);
        if spin == 0 || len == 0 || len > INLINE_MAX {
            return Ok(false);
        }
        let places = 1 + inline_places(len);
        self.publish(side)?;
        let tx = self.tx_side(side)?;
        let word = self.tx_ring.ctl().producer_word();
        let mut turns = Spin::new(spin.min(ROOM_SPIN_MAX.as_nanos() as u64), Some(deadline));
        loop {
            if tx.producer.has_room_for(places).map_err(corrupt)? {
                // (`push_one` announced a wait for room when it found none: the receiver
                // need not ring for it now.)
                wait::cancel(word);
                return Ok(true);
            }
            if turns.turn() || self.ended.load(Ordering::Acquire) {
                return Ok(false);
            }
        }
    }

    /// Wakes the peer, if it waits, for the frames [`ShmStream::push_copy`] sent.
    pub(crate) fn publish(&self, side: &mut FrameSide) -> io::Result<()> {
        let tx = self.tx_side(side)?;
        let sent = std::mem::take(&mut tx.unwoken);
        if sent > 0 {
            self.published(tx, sent);
        }
        Ok(())
    }

    /// `sent` frames were pushed since the last wake-up: counts them, wakes the peer if it
    /// waits, and, if some of them used the pool, notes whether it had taken everything
    /// before them.
    fn published(&self, tx: &mut TxSide, sent: usize) {
        // One store of the ring's head for the run: a receiver that looks all the time
        // (spinning) takes the run at once, and the cache line moves once per run.
        tx.producer.publish();
        self.copied_frames
            .store(tx.copied_frames, Ordering::Relaxed);
        self.copied_bytes.store(tx.copied_bytes, Ordering::Relaxed);
        self.lent_frames.store(tx.lent_frames, Ordering::Relaxed);
        if wait::notify(self.tx_ring.ctl().consumer_word()) == Wake::Socket {
            ring_bell(&self.ctl, &self.signals);
        }
        // Looked at once the batch is out: the peer's counter is on a cache line it
        // writes, and reading it before publishing would hold the publication back
        // until that line arrives. And only when the batch used the pool, the one thing a
        // rewind is for: reading the line takes it from the peer, whose next store to it
        // (as it takes this batch, before it answers) then waits for the line to come back,
        // a cache miss on every small message's round trip. (A corrupt counter fails the
        // next push. The count is of places, and a payload in the ring takes more than one:
        // a batch of those errs towards not rewinding.)
        if std::mem::take(&mut tx.pooled) {
            tx.caught_up = tx.producer.len().is_ok_and(|unread| unread <= sent as u64);
        }
    }

    /// One frame into the ring (no wake-up: [`ShmStream::push_many`] does that once), its
    /// payload moved without a copy when `loan` is a slot of this pool (`Pipe::alloc`), else
    /// copied. `Ok(false)` when the ring or the pool is full.
    fn push_one(
        &self,
        tx: &mut TxSide,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
        loan: Option<&Bytes>,
    ) -> io::Result<bool> {
        let pool = &self.tx_pool;
        let len = payload.len();
        if len > pool.mem().max_len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a frame payload of {len} bytes exceeds the largest shared-memory slot ({} \
                     bytes)",
                    pool.mem().max_len()
                ),
            ));
        }
        let word = self.tx_ring.ctl().producer_word();
        let mut prepared = false;
        // A small payload rides in the ring after its descriptor (no pool slot to claim, fill
        // and free: fewer cache lines between the two sides); one written in place in a pool
        // slot (`Pipe::alloc`) keeps its slot and is not copied.
        let inline = len > 0 && len <= INLINE_MAX && loan.is_none_or(|p| !pool.contains(p));
        // (Message frames count as copied; control frames are always copied.)
        let data = header[0] == FrameKind::Data as u8;
        loop {
            // Sent: whether its payload was copied (not lent, and not empty).
            let sent = if inline {
                tx.producer
                    .write_inline(header, payload)
                    .map_err(corrupt)?
                    .then_some(true)
            } else {
                // Room in the ring (checked first: a slot handed over must get its
                // descriptor), then a slot for the payload.
                let room = tx.producer.has_room().map_err(corrupt)?;
                let slot = if !room {
                    None
                } else if len == 0 {
                    Some((NO_SLOT, 0, false))
                } else if let Some((slot, n)) = loan.and_then(|p| pool.claim_loan(p)) {
                    // A payload written in place (`Pipe::alloc`): only the descriptor moves.
                    tx.lent_frames += 1;
                    Some((slot, n, false))
                } else {
                    pool.send_copy(payload).map(|(slot, n)| (slot, n, true))
                };
                if let Some((slot, n, _)) = slot {
                    tx.pooled |= slot != NO_SLOT;
                    // (Published with the rest of the run: `ShmStream::published`.)
                    let pushed = tx
                        .producer
                        .write(Desc {
                            header: *header,
                            slot,
                            len: n,
                        })
                        .map_err(corrupt)?;
                    debug_assert!(pushed, "room was checked, and only this side pushes");
                }
                slot.map(|(_, _, copied)| copied)
            };
            if let Some(copied) = sent {
                if copied && data {
                    tx.copied_frames += 1;
                    tx.copied_bytes += len as u64;
                }
                if prepared {
                    wait::cancel(word);
                }
                return Ok(true);
            }
            if prepared {
                // Still full after announcing the wait: the receiver rings when it makes room.
                return Ok(false);
            }
            // The receiver makes room only by taking what it sees: what is written goes out
            // now (it is woken with the rest, by whoever publishes next).
            tx.producer.publish();
            wait::prepare(word, wait::SOCKET);
            prepared = true;
        }
    }

    /// Takes up to `max` received frames into `out` (payloads in place, or copied into
    /// `chunk`: see [`ShmStream::pop_some`]). `Ok(0)`: the peer is
    /// gone (or reading was shut down here) and nothing is left. An empty ring is
    /// `WouldBlock` unless `how` is [`FrameRead::Wait`]: then it waits (spinning briefly,
    /// then on the futex) until frames arrive or the peer is gone. With
    /// [`FrameRead::Signal`] the peer rings the control socket when frames arrive (the
    /// reactor hears of them); with [`FrameRead::Look`] it does not: no system call on
    /// either side, for a caller that polls.
    pub(crate) fn recv_frames(
        &self,
        side: &mut FrameSide,
        out: &mut VecDeque<RawFrame>,
        chunk: &mut Bytes,
        max: usize,
        how: FrameRead,
    ) -> io::Result<usize> {
        let rx = self.rx_side(side)?;
        let word = self.rx_ring.ctl().consumer_word();
        loop {
            let n = self.pop_some(rx, out, chunk, max)?;
            if n > 0 {
                return Ok(n);
            }
            if self.read_shut.load(Ordering::Acquire) {
                return Ok(0);
            }
            // A blocking receive spins first: a frame that arrives while it spins costs no
            // syscall. The spin looks at the control socket now and then, and it is read
            // below before parking, so a peer that is gone is still seen at once.
            if how == FrameRead::Wait
                && !self.ended.load(Ordering::Acquire)
                && self.spin_for_input(None)
            {
                continue;
            }
            // (A poll reads the control socket only when asked: see `FrameRead::Look`.)
            if !matches!(how, FrameRead::Look { drain: false }) {
                self.drain_ctl();
            }
            if self.ended.load(Ordering::Acquire) {
                // Whatever the peer published before it went is still delivered.
                return self.pop_some(rx, out, chunk, max);
            }
            match how {
                // Nothing asked of the peer: it writes its next frames without a signal,
                // which the next look finds.
                FrameRead::Look { .. } => return Err(io::ErrorKind::WouldBlock.into()),
                FrameRead::Signal => {
                    wait::prepare(word, wait::SOCKET);
                    if self.rx_waiting() {
                        wait::cancel(word);
                        continue;
                    }
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                FrameRead::Wait => {}
            }
            wait::prepare(word, wait::PARKED);
            if !self.rx_waiting() {
                wait::park(word, Some(PARK_SLICE));
            }
            wait::cancel(word);
        }
    }

    /// Pops up to `max` descriptors (of those published when it looks) and checks them;
    /// wakes a sender waiting for room in the ring or the pool. When more than one message
    /// may be there, the payloads it copies (those in the ring, and those of small pool
    /// slots) go one after the other into one buffer, handed out as `chunk`: the frames'
    /// payloads are places in it ([`FramePayload::InChunk`]), not a handle each (a reference
    /// count up as it is made and down as it is dropped, per message: a sixth of a 64 B
    /// stream's receiver in perf).
    fn pop_some(
        &self,
        rx: &mut RxSide,
        out: &mut VecDeque<RawFrame>,
        chunk: &mut Bytes,
        max: usize,
    ) -> io::Result<usize> {
        debug_assert!(
            rx.small.is_empty(),
            "each call's copies are handed out with it"
        );
        let res = self.pop_frames(rx, out, max);
        // (After a failure too: the frames before it are still handed to the session.)
        if !rx.small.is_empty() {
            *chunk = rx.small.split().freeze();
        }
        res
    }

    /// [`ShmStream::pop_some`]'s work, the copied payloads left in `rx.small`.
    #[inline(always)]
    fn pop_frames(
        &self,
        rx: &mut RxSide,
        out: &mut VecDeque<RawFrame>,
        max: usize,
    ) -> io::Result<usize> {
        let ready = rx.consumer.available().map_err(corrupt)?;
        let want = usize::try_from(ready).map_or(max, |r| r.min(max));
        // Copies go into one chunk, as parts of it, when more than one message may be there
        // (more places than one descriptor and the largest inline payload take). A single
        // one (a ping-pong's) gets a handle of its own, as before: as cheap as the chunk's
        // own, and the session's plain way for it costs ~165 instructions less than the
        // numbering of chunks (callgrind, shm 64 B ping-pong).
        let parts = ready > PARTS_MIN_PLACES;
        let mut n = 0;
        while n < want {
            // Descriptors first, a chunk at a time, and their places in the ring given back
            // with one store (the cache line goes back to the sender while the payloads are
            // read, not after: the wake-up below waits for it).
            // A payload in the ring itself is copied out before its places go back; one in
            // the pool is read after, into the frame left for it.
            let k = (want - n).min(TAKE_CHUNK);
            let mut taken = 0;
            let mut later = 0;
            while taken < k {
                let Some(d) = rx.consumer.take().map_err(corrupt)? else {
                    break;
                };
                let payload = if d.slot == INLINE {
                    let RxSide {
                        consumer,
                        small,
                        chunks,
                        ..
                    } = &mut *rx;
                    // (Making room keeps what is there at the same offsets.)
                    let start = small.len() as u32;
                    // (Room for at most what the ring carries, in whole places as
                    // `take_inline` copies them: the length is the peer's word, checked by
                    // `take_inline`, and room made for a hostile one would be an allocation
                    // of up to 4 GiB.)
                    small_room(
                        small,
                        chunks,
                        (d.len as usize).min(INLINE_MAX).next_multiple_of(DESC_LEN),
                    );
                    if let Err(e) = consumer.take_inline(&d, small) {
                        // (No frame left waiting for its payload: the connection ends.)
                        if later > 0 {
                            out.truncate(rx.descs[0].0);
                        }
                        return Err(corrupt(e));
                    }
                    in_chunk_or_own(small, start, parts)
                } else {
                    rx.descs[later] = (out.len(), d);
                    later += 1;
                    FramePayload::Own(Bytes::new())
                };
                out.push_back(RawFrame {
                    header: d.header,
                    payload,
                });
                taken += 1;
            }
            rx.consumer.release();
            for i in 0..later {
                let (at, d) = rx.descs[i];
                match self.payload_of(rx, &d, parts) {
                    Ok(payload) => out[at].payload = payload,
                    Err(e) => {
                        // (No frame left waiting for its payload: the connection ends.)
                        out.truncate(at);
                        return Err(e);
                    }
                }
            }
            n += taken;
            if taken < k {
                break;
            }
        }
        if n > 0 && wait::notify(self.rx_ring.ctl().producer_word()) == Wake::Socket {
            ring_bell(&self.ctl, &self.signals);
        }
        Ok(n)
    }

    /// The payload of the frame `d` describes, checked: copied out of the pool (after what
    /// `rx.small` holds, as a place in the chunk when `parts`) and its slot freed at once if
    /// small (the sender is woken once for all, by the caller), else a view of the slot that
    /// frees it when dropped.
    #[inline]
    fn payload_of(&self, rx: &mut RxSide, d: &Desc, parts: bool) -> io::Result<FramePayload> {
        if d.slot == NO_SLOT {
            if d.len != 0 {
                return Err(corrupt_text("a frame without a pool slot claims a payload"));
            }
            return Ok(FramePayload::Own(Bytes::new()));
        }
        if d.len > COPY_MAX {
            return Ok(FramePayload::Own(Bytes::from_owner(
                self.rx_pool.take(d.slot, d.len).map_err(corrupt)?,
            )));
        }
        let RxSide { small, chunks, .. } = rx;
        let start = small.len() as u32;
        small_room(small, chunks, d.len as usize);
        self.rx_pool
            .read_and_free(d.slot, d.len, |bytes| small.extend_from_slice(bytes))
            .map_err(corrupt)?;
        Ok(in_chunk_or_own(small, start, parts))
    }

    /// Whether a descriptor waits in the receive ring.
    fn rx_waiting(&self) -> bool {
        // Without the receive side (another caller may hold it: the reactor asks this): the
        // descriptor is checked when it is popped.
        self.rx_ring.ctl().published()
    }

    /// Reads the wake bytes the control socket holds; notes its end (the peer is gone).
    fn drain_ctl(&self) {
        use rustix::net::RecvFlags;
        let mut buf = [0u8; 64];
        loop {
            match rustix::net::recv(&*self.ctl, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.ended.store(true, Ordering::Release);
                    return;
                }
                Ok(_) => continue,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => {
                    self.ended.store(true, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Waits until a frame is there, the peer is gone, or `deadline` passes.
    pub(crate) fn wait_readable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let word = self.rx_ring.ctl().consumer_word();
        loop {
            if self.rx_waiting() || self.read_shut.load(Ordering::Acquire) {
                return Ok(true);
            }
            // Spin first (no syscall while a frame comes soon), then read the control socket
            // before parking: a peer that is gone is seen at once either way.
            if !self.ended.load(Ordering::Acquire) && self.spin_for_input(deadline) {
                continue;
            }
            self.drain_ctl();
            if self.ended.load(Ordering::Acquire) {
                return Ok(true);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(false);
            }
            wait::prepare(word, wait::PARKED);
            if !self.rx_waiting() {
                wait::park(word, Some(left.map_or(PARK_SLICE, |l| l.min(PARK_SLICE))));
            }
            wait::cancel(word);
        }
    }

    /// Whether frames wait in the receive ring (the reactor's fd does not show them).
    pub(crate) fn buffered_input(&self) -> bool {
        self.rx_waiting()
    }

    /// Ends the connection here: the peer sees the control socket end; threads of this process
    /// blocked on the rings wake.
    pub(crate) fn shutdown(&self) {
        self.ended.store(true, Ordering::Release);
        self.read_shut.store(true, Ordering::Release);
        let _ = self.ctl.shutdown(std::net::Shutdown::Both);
        wait::wake_local(self.rx_ring.ctl().consumer_word());
    }

    /// Wakes threads blocked receiving; sending still works.
    pub(crate) fn shutdown_read(&self) {
        self.read_shut.store(true, Ordering::Release);
        wait::wake_local(self.rx_ring.ctl().consumer_word());
    }
}

/// A peer that broke the segment's rules: the connection fails with `Protocol`.
fn corrupt(e: duct_sys::shm::ring::Corrupt) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        crate::error::Classified::new(ErrorKind::Protocol, e.to_string()),
    )
}

fn corrupt_text(text: &'static str) -> io::Error {
    corrupt(duct_sys::shm::ring::Corrupt(text))
}

impl crate::driver::FrameIo for ShmStream {
    fn push_many(
        &self,
        side: &mut FrameSide,
        frames: &mut dyn Iterator<Item = &Transmit>,
    ) -> io::Result<(usize, bool)> {
        ShmStream::push_many(self, side, frames)
    }

    fn push_frame(&self, side: &mut FrameSide, frame: &Transmit) -> io::Result<bool> {
        ShmStream::push_many(self, side, std::iter::once(frame)).map(|(sent, _)| sent == 1)
    }

    fn recv_frames(
        &self,
        side: &mut FrameSide,
        out: &mut VecDeque<RawFrame>,
        chunk: &mut Bytes,
        max: usize,
        how: FrameRead,
    ) -> io::Result<usize> {
        ShmStream::recv_frames(self, side, out, chunk, max, how)
    }

    fn push_copy(
        &self,
        side: &mut FrameSide,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> io::Result<bool> {
        ShmStream::push_copy(self, side, header, payload)
    }

    fn publish(&self, side: &mut FrameSide) -> io::Result<()> {
        ShmStream::publish(self, side)
    }

    fn wait_room(&self, side: &mut FrameSide, len: usize, deadline: Instant) -> io::Result<bool> {
        ShmStream::wait_room(self, side, len, deadline)
    }

    fn alloc(&self, len: usize) -> Option<TxSlot> {
        ShmStream::alloc(self, len)
    }

    fn counts(&self) -> FrameCounts {
        ShmStream::counts(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("duct-shm-dir-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Both ends of one shm connection, made over a socket pair (no rendezvous).
    fn connected(name: &str) -> (ShmStream, ShmStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = ShmStream::server(a, name).unwrap();
        let ep = crate::addr::parse(&format!("shm://{name}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = ShmStream::client(b, &ep, name, deadline).unwrap();
        (server, client)
    }

    /// Sends 64-byte frames with `push_copy` until the ring is full; returns how many went.
    fn fill(s: &ShmStream, side: &mut FrameSide) -> usize {
        let mut n = 0;
        while s.push_copy(side, &[0; HEADER_LEN], &[7; 64]).unwrap() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_sender_that_finds_the_ring_full_waits_a_little_for_room_and_wakes_the_receiver_first() {
        let (receiver, sender) = connected(&format!("wait-room-{}", std::process::id()));
        sender.set_spin(Duration::from_micros(20));
        let (mut tx, mut rx) = (FrameSide::default(), FrameSide::default());
        let far = Instant::now() + Duration::from_secs(60);
        let sent = fill(&sender, &mut tx);
        assert!(sent > 0);
        // The receiver asleep on its word (as a blocked `recv_frames` parks): `push_copy`
        // wakes nobody, and a receiver frees room only for what it is woken to see.
        let word = sender.tx_ring.ctl().consumer_word();
        wait::prepare(word, wait::PARKED);
        // Nobody takes: no room comes, and the wait ends (after ROOM_SPIN_MAX at most)...
        let start = Instant::now();
        assert!(!sender.wait_room(&mut tx, 64, far).unwrap());
        assert!(start.elapsed() < Duration::from_secs(5));
        // ... having woken the receiver first.
        assert_eq!(word.load(Ordering::Relaxed), wait::RUNNING);
        // It takes them all.
        let (mut out, mut chunk) = (VecDeque::new(), Bytes::new());
        let mut got = 0;
        while got < sent {
            match receiver.recv_frames(&mut rx, &mut out, &mut chunk, 64, FrameRead::Signal) {
                Ok(n) => got += n,
                Err(e) => panic!("{got} of {sent} frames seen: {e}"),
            }
            out.clear();
            chunk = Bytes::new();
        }
        assert_eq!(got, sent);
        // Room now: the wait says so at once, and the frame goes.
        assert!(sender.wait_room(&mut tx, 64, far).unwrap());
        assert!(sender
            .push_copy(&mut tx, &[0; HEADER_LEN], &[7; 64])
            .unwrap());
        // Full again: a deadline that passed ends the wait, as a pipe that does not spin, or
        // a payload for a pool slot (the ring's room is not all it needs), never waits.
        fill(&sender, &mut tx);
        assert!(!sender.wait_room(&mut tx, 64, Instant::now()).unwrap());
        assert!(!sender.wait_room(&mut tx, INLINE_MAX + 1, far).unwrap());
        sender.set_spin(Duration::ZERO);
        assert!(!sender.wait_room(&mut tx, 64, far).unwrap());
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The checks macOS runs on its default rendezvous directory, run here on a scratch one.
    #[test]
    fn the_default_rendezvous_directory_must_be_private_and_ours() {
        let ep = crate::addr::parse("shm://game").unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let scratch = Scratch::new("default");
        // Created with mode 0700 when missing, and accepted.
        let dir = scratch.0.join("duct-shm");
        ready_dir(&ep, &dir, false, uid).unwrap();
        assert_eq!(mode(&dir), 0o700);
        ready_dir(&ep, &dir, false, uid).unwrap();
        // Someone else's: refused, naming the directory and the way out.
        let err = ready_dir(&ep, &dir, false, uid + 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        let text = err.to_string();
        assert!(
            text.starts_with("shm://game") && text.contains(&*dir.to_string_lossy()),
            "{text}"
        );
        assert!(text.contains("DUCT_SHM_DIR"), "{text}");
        // Open to others: refused.
        let open = scratch.0.join("open");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&open)
            .unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ready_dir(&ep, &open, false, uid).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("mode 755"), "{err}");
        // A link, even to a good directory: refused.
        let link = scratch.0.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = ready_dir(&ep, &link, false, uid).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidAddress, "{err}");
        // A file: refused.
        let file = scratch.0.join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            ready_dir(&ep, &file, false, uid).unwrap_err().kind(),
            ErrorKind::InvalidAddress
        );
        // A directory the user chose is taken as it is, but must exist.
        ready_dir(&ep, &open, true, uid).unwrap();
        let missing = scratch.0.join("missing");
        let err = ready_dir(&ep, &missing, true, uid).unwrap_err();
        assert!(err.to_string().contains("rendezvous directory"), "{err}");
        assert!(!missing.exists(), "a chosen directory is never created");
    }
}
