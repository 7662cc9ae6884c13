//! A hostile shm peer: a listener built by hand from the shared-memory primitives (not duct's
//! transport), which completes the handshake properly and then writes garbage into the ring.
//! Whatever it writes, the duct side fails with `Protocol`, never reads outside the segment,
//! never panics, and the next pipe works. Also: a listener that passes a bad segment.
#![cfg(target_os = "linux")]

use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use duct::{DialOptions, ErrorKind, Message, RecvOptions};
use duct_proto::{Config, Role, Session, State};
use duct_sys::shm::pool::{Class, PoolRx, PoolTx};
use duct_sys::shm::ring::{Consumer, Desc, Producer, INLINE, INLINE_MAX, NO_SLOT};
use duct_sys::shm::segment::{Params, Segment};
use proptest::prelude::*;

mod common;
use common::{unique, T};

fn params() -> Params {
    Params {
        ring_slots: 64,
        classes: vec![
            Class {
                size: 256,
                count: 64,
            },
            Class {
                size: 65536,
                count: 4,
            },
        ],
    }
}

/// The listening half of a raw shm peer.
struct RawShmListener {
    listener: UnixListener,
    addr: String,
}

impl RawShmListener {
    fn bind() -> RawShmListener {
        let name = format!("duct-hostile-{}-{}", std::process::id(), unique());
        let sa = SocketAddr::from_abstract_name(format!("duct-shm/{name}").as_bytes()).unwrap();
        RawShmListener {
            listener: UnixListener::bind_addr(&sa).unwrap(),
            addr: format!("shm://{name}"),
        }
    }

    /// Accepts a dialer and passes it a segment with `hello` as the 8 bytes beside the fd.
    fn accept_with(&self, hello: &[u8; 8], segment: Params) -> RawShm {
        let (ctl, _) = self.listener.accept().unwrap();
        let (seg, fd) = Segment::create(segment).unwrap();
        duct_sys::shm::fdpass::send_fd(ctl.as_fd(), fd.as_fd(), hello).unwrap();
        RawShm::new(ctl, seg)
    }

    fn accept(&self) -> RawShm {
        self.accept_with(b"DSHMSEG1", params())
    }
}

/// A raw listener-side shm connection: a protocol session driven by hand over the rings.
struct RawShm {
    ctl: UnixStream,
    _seg: Segment,
    tx: Producer,
    tx_pool: Arc<PoolTx>,
    rx: Consumer,
    rx_pool: Arc<PoolRx>,
    session: Session,
}

impl RawShm {
    fn new(ctl: UnixStream, seg: Segment) -> RawShm {
        let tx = seg.direction(1);
        let rx = seg.direction(0);
        RawShm {
            ctl,
            tx: tx.ring.producer(),
            tx_pool: PoolTx::new(tx.pool),
            rx: rx.ring.consumer(),
            rx_pool: PoolRx::new(rx.pool, || {}),
            _seg: seg,
            session: Session::new(
                Config {
                    session_id: 0xABCD,
                    ..Config::default()
                },
                Role::Listener,
                Instant::now(),
            ),
        }
    }

    /// Rings the dialer (it may wait for a byte on the control socket).
    fn bell(&self) {
        let _ = rustix::net::send(&self.ctl, &[1], rustix::net::SendFlags::DONTWAIT);
    }

    fn flush(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            let (slot, len) = if t.payload.is_empty() {
                (NO_SLOT, 0)
            } else {
                let mut s = self.tx_pool.alloc(t.payload.len()).expect("a free slot");
                s.fill(&t.payload);
                s.send()
            };
            assert!(self
                .tx
                .push(Desc {
                    header: t.header,
                    slot,
                    len,
                })
                .unwrap());
        }
        self.bell();
    }

    fn pump(&mut self) {
        while let Some(d) = self.rx.take().unwrap() {
            let payload = if d.slot == NO_SLOT {
                Bytes::new()
            } else if d.slot == INLINE {
                let mut b = BytesMut::new();
                self.rx.take_inline(&d, &mut b).unwrap();
                b.freeze()
            } else {
                Bytes::from_owner(self.rx_pool.take(d.slot, d.len).unwrap())
            };
            self.rx.release();
            self.session
                .handle_raw_frame(&d.header, payload, Instant::now())
                .unwrap();
        }
    }

    /// HELLO in, WELCOME out.
    fn handshake(&mut self) {
        let deadline = Instant::now() + T;
        while self.session.pending_hello().is_none() && self.session.state() != State::Established {
            assert!(Instant::now() < deadline, "no HELLO");
            self.pump();
            thread::sleep(Duration::from_millis(1));
        }
        if self.session.pending_hello().is_some() {
            self.session.welcome(false, Instant::now()).unwrap();
        }
        self.flush();
    }

    /// Publishes `desc` as it is (no checks: that is the point).
    fn inject(&mut self, desc: Desc) {
        assert!(self.tx.push(desc).unwrap());
        self.bell();
    }

    /// Publishes `desc` and, in the places after it, `places` (32 bytes a place, the last
    /// one filled up with zeroes), all as they are.
    fn inject_with_places(&mut self, desc: Desc, places: &[u8]) {
        assert!(self.tx.write(desc).unwrap());
        for chunk in places.chunks(32) {
            let mut b = [0u8; 32];
            b[..chunk.len()].copy_from_slice(chunk);
            let place = Desc {
                header: b[..24].try_into().unwrap(),
                slot: u32::from_ne_bytes(b[24..28].try_into().unwrap()),
                len: u32::from_ne_bytes(b[28..].try_into().unwrap()),
            };
            assert!(self.tx.write(place).unwrap());
        }
        self.tx.publish();
        self.bell();
    }

    /// Publishes `header` with `payload` in the ring after it, as it is.
    fn inject_inline(&mut self, header: [u8; 24], payload: &[u8]) {
        assert!(self.tx.write_inline(&header, payload).unwrap());
        self.tx.publish();
        self.bell();
    }
}

/// How far the peak of the address space may grow while a hostile descriptor is refused,
/// in KiB: well below the lengths it claims (the refused ones used to reserve 1.6 to 4 GiB),
/// well above what other tests running meanwhile may map (an allocator's arena of 64 MiB
/// for a new thread, say).
const GROWTH_MAX_KIB: i64 = 1024 * 1024;

/// The peak of this process's address space (`VmPeak`), in KiB.
fn vm_peak_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmPeak:"))
        .expect("VmPeak in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A valid DATA header for a payload of `len` bytes on channel 0.
fn data_header(len: u32) -> [u8; 24] {
    let mut h = duct_proto::wire::Header::new(duct_proto::wire::FrameKind::Data);
    h.payload_len = len;
    h.encode()
}

/// Dials the raw listener, completes the handshake, and returns both ends.
fn connect(l: &RawShmListener) -> (duct::Pipe, RawShm) {
    let addr = l.addr.clone();
    let dialer = thread::spawn(move || duct::dial(&addr, DialOptions::default()).unwrap());
    let mut raw = l.accept();
    raw.handshake();
    (dialer.join().unwrap(), raw)
}

#[test]
fn garbage_descriptors_end_the_pipe_with_protocol() {
    let l = RawShmListener::bind();
    // A good message first: the raw peer is a working listener.
    let (pipe, mut raw) = connect(&l);
    raw.session
        .send(0, Bytes::from_static(b"hi"), Instant::now())
        .unwrap();
    raw.flush();
    let m = pipe.recv_with(&RecvOptions::default().timeout(T)).unwrap();
    assert_eq!(m.payload(), b"hi");

    let slots = 64 + 4;
    let cases: Vec<(&str, Desc)> = vec![
        (
            "a slot that does not exist",
            Desc {
                header: data_header(10),
                slot: slots,
                len: 10,
            },
        ),
        (
            "a slot far out of range",
            Desc {
                header: data_header(10),
                slot: 0x7fff_ffff,
                len: 10,
            },
        ),
        (
            "a length beyond its slot",
            Desc {
                header: data_header(300),
                slot: 0,
                len: 300,
            },
        ),
        (
            "a payload without a slot",
            Desc {
                header: data_header(5),
                slot: NO_SLOT,
                len: 5,
            },
        ),
        (
            "a length that differs from the header's",
            Desc {
                header: data_header(9),
                slot: 1,
                len: 10,
            },
        ),
        (
            "a header that is not a frame",
            Desc {
                header: [0xee; 24],
                slot: NO_SLOT,
                len: 0,
            },
        ),
        (
            "a payload in the ring longer than the ring carries",
            Desc {
                header: data_header(INLINE_MAX as u32 + 1),
                slot: INLINE,
                len: INLINE_MAX as u32 + 1,
            },
        ),
        (
            // (Published alone: the places after it were never written.)
            "a payload in the ring that was not published",
            Desc {
                header: data_header(64),
                slot: INLINE,
                len: 64,
            },
        ),
        (
            // (Not the ring's own number: a pool slot, and the pool has far fewer.)
            "a slot number just below the ring's own",
            Desc {
                header: data_header(4),
                slot: INLINE - 1,
                len: 4,
            },
        ),
    ];
    drop((pipe, raw));
    for (what, desc) in cases {
        let (pipe, mut raw) = connect(&l);
        raw.inject(desc);
        let e = pipe
            .recv_with(&RecvOptions::default().timeout(T))
            .expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Protocol, "{what}: {e}");
        println!("{what}: {e}");
    }
    // Payloads in the ring whose header disagrees with them.
    for (what, header, payload) in [
        (
            "a ring payload shorter than its header says",
            data_header(65),
            &[7u8; 64][..],
        ),
        (
            "a ring payload longer than its header says",
            data_header(1),
            &[7u8; 2][..],
        ),
    ] {
        let (pipe, mut raw) = connect(&l);
        raw.inject_inline(header, payload);
        let e = pipe
            .recv_with(&RecvOptions::default().timeout(T))
            .expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Protocol, "{what}: {e}");
        println!("{what}: {e}");
    }
    // A ring payload of 4 GiB claimed: refused before anything is reserved for it. (The
    // receiver used to make room for the claimed length first: an allocation of 4 GiB,
    // which a machine that does not overcommit refuses by aborting the process.)
    let (pipe, mut raw) = connect(&l);
    let before = vm_peak_kib();
    raw.inject(Desc {
        header: data_header(u32::MAX),
        slot: INLINE,
        len: u32::MAX,
    });
    let e = pipe
        .recv_with(&RecvOptions::default().timeout(T))
        .expect_err("a huge ring payload");
    assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
    let grew = vm_peak_kib() - before;
    assert!(
        grew < GROWTH_MAX_KIB,
        "the address space grew by {grew} KiB for a payload that was refused"
    );
    // A well-formed one goes through (the raw peer speaks the ring's format).
    let (pipe, mut raw) = connect(&l);
    raw.inject_inline(data_header(5), b"hello");
    let m = pipe.recv_with(&RecvOptions::default().timeout(T)).unwrap();
    assert_eq!(m.payload(), b"hello");
}

/// A slot number a hostile descriptor may carry: the ring's own marks, slots of the pool
/// and just past it, and anything.
fn any_slot() -> impl Strategy<Value = u32> {
    prop_oneof![Just(NO_SLOT), Just(INLINE), 0u32..72, any::<u32>(),]
}

/// A length a hostile descriptor may claim: small, around the ring's and the slots' limits,
/// and anything up to 4 GiB.
fn any_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..300,
        (INLINE_MAX as u32 - 2)..(INLINE_MAX as u32 + 3),
        65530u32..65540,
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any descriptor, with a header that agrees with it or not (or is no header at all),
    /// and whatever lies in the places after it: the duct side delivers a message or fails
    /// with `Protocol` (or, for a frame that is no message, keeps waiting), never panics,
    /// and reserves nothing of a claimed length's size.
    #[test]
    fn any_descriptor_is_a_message_or_protocol(
        slot in any_slot(),
        len in any_len(),
        header_len in prop_oneof![Just(None), any_len().prop_map(Some)],
        garbage_header in any::<bool>(),
        after in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let l = RawShmListener::bind();
        let (pipe, mut raw) = connect(&l);
        let header = if garbage_header {
            let mut h = [0u8; 24];
            for (i, b) in h.iter_mut().enumerate() {
                *b = after.get(i).copied().unwrap_or(0xa5);
            }
            h
        } else {
            data_header(header_len.unwrap_or(len))
        };
        let before = vm_peak_kib();
        // The places after the descriptor hold `after`, published with it (as a payload in
        // the ring would be).
        raw.inject_with_places(Desc { header, slot, len }, &after);
        let got = pipe.recv_with(&RecvOptions::default().timeout(Duration::from_millis(300)));
        match &got {
            Ok(_) => {}
            Err(e) => prop_assert!(
                matches!(e.kind(), ErrorKind::Protocol | ErrorKind::TimedOut),
                "{e}"
            ),
        }
        let grew = vm_peak_kib() - before;
        prop_assert!(grew < GROWTH_MAX_KIB, "the address space grew by {} KiB", grew);
    }
}

#[test]
fn a_corrupt_ring_index_ends_the_pipe_with_protocol() {
    let l = RawShmListener::bind();
    for (what, head) in [
        ("more than a ring ahead", 1_000_000u64),
        ("behind what was read", 0),
        ("wrapped around", u64::MAX),
    ] {
        let (pipe, mut raw) = connect(&l);
        // Two frames read first, so that "behind" is behind.
        for _ in 0..2 {
            raw.session
                .send(0, Bytes::from_static(b"x"), Instant::now())
                .unwrap();
        }
        raw.flush();
        for _ in 0..2 {
            pipe.recv_with(&RecvOptions::default().timeout(T)).unwrap();
        }
        // The handshake and the two frames moved the head past 0: now it jumps.
        raw._seg.direction(1).ring.ctl().overwrite_head(head);
        raw.bell();
        let e = pipe
            .recv_with(&RecvOptions::default().timeout(T))
            .expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Protocol, "{what}: {e}");
        println!("{what}: {e}");
    }
}

#[test]
fn a_listener_that_passes_no_duct_segment_is_refused() {
    let l = RawShmListener::bind();
    for hello in [*b"NOTDUCT!", *b"DSHMSEG1"] {
        let addr = l.addr.clone();
        let dialer = thread::spawn(move || {
            duct::dial(
                &addr,
                DialOptions::default().timeout(Duration::from_secs(2)),
            )
        });
        let (ctl, _) = l.listener.accept().unwrap();
        if &hello == b"NOTDUCT!" {
            let (_seg, fd) = Segment::create(params()).unwrap();
            duct_sys::shm::fdpass::send_fd(ctl.as_fd(), fd.as_fd(), &hello).unwrap();
        } else {
            // The right greeting, but an fd that is not a sealed duct segment.
            let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            rustix::fs::ftruncate(&fd, 1 << 20).unwrap();
            duct_sys::shm::fdpass::send_fd(ctl.as_fd(), fd.as_fd(), &hello).unwrap();
        }
        let e = dialer.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        println!("{e}");
        drop(ctl);
    }
    // And a working pipe afterwards, to the same raw listener.
    let (pipe, mut raw) = connect(&l);
    pipe.send(Message::new(b"still fine".to_vec())).unwrap();
    let deadline = Instant::now() + T;
    while raw.session.poll_message().is_none() {
        assert!(Instant::now() < deadline);
        raw.pump();
        thread::sleep(Duration::from_millis(1));
    }
}
