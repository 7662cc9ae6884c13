//! The reactor's I/O ring allocates nothing per request: everything a request needs is
//! allocated when the ring is made, for as many requests as it has slots, so that a reactor
//! whose passes bunch up more reads and writes than ever before does not allocate for them
//! (an idle process's heartbeats once did, whenever a pass set a new record).
//!
//! Its own test binary: the allocator installed here counts per thread.
#![cfg(all(target_os = "linux", feature = "io-uring"))]

use std::io::{IoSlice, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use duct_sys::alloc_count::{measure_thread, ThreadCountingAlloc};
use duct_sys::uring::{Done, IoRing, SendBufs};

#[global_allocator]
static ALLOC: ThreadCountingAlloc = ThreadCountingAlloc;

struct Frame([u8; 64]);

impl SendBufs for Frame {
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        out[0] = IoSlice::new(&self.0);
        1
    }
}

#[test]
fn a_ring_full_of_sends_and_receives_allocates_nothing_and_refuses_one_more() {
    const SLOTS: usize = 64;
    let mut ring = match IoRing::<Frame>::new(SLOTS as u32) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIPPED: no io_uring here ({e})");
            return;
        }
    };
    let pairs: Vec<_> = (0..SLOTS / 2)
        .map(|_| UnixStream::pair().unwrap())
        .collect();
    let mut done = Vec::with_capacity(SLOTS);
    for round in 0..3u8 {
        // The requests' own memory is the caller's, made before counting.
        let mut frames: Vec<_> = (0..SLOTS / 2)
            .map(|_| Box::new(Frame([round; 64])))
            .collect();
        let mut bufs: Vec<_> = (0..SLOTS / 2)
            .map(|_| bytes::BytesMut::with_capacity(128))
            .collect();
        let extra = Box::new(Frame([0; 64]));
        let (refused, usage) = measure_thread(|| {
            for (frame, (a, _)) in frames.drain(..).zip(&pairs) {
                assert!(ring.push_send(a.as_fd(), frame).is_ok());
            }
            // Receives on the other ends (in the same batch: each finds its socket empty or
            // the frame just sent, whichever the kernel runs first).
            for (buf, (_, b)) in bufs.drain(..).zip(&pairs) {
                assert!(ring.push_recv(b.as_fd(), buf).is_ok());
            }
            let refused = ring.push_send(pairs[0].0.as_fd(), extra).is_err();
            ring.complete_all(|tag, d| done.push((tag, d))).unwrap();
            refused
        });
        assert!(
            refused,
            "round {round}: a request beyond the ring's slots was taken"
        );
        assert_eq!(
            usage.largest, 0,
            "round {round}: the ring allocated while {SLOTS} requests went through it ({usage:?})"
        );
        assert_eq!(done.len(), SLOTS);
        let mut received = 0;
        for (_, d) in done.drain(..) {
            match d {
                Done::Send(_, res) => assert_eq!(res.unwrap(), 64),
                Done::Recv(buf, Ok(n)) => {
                    assert_eq!(&buf[..], &[round; 64][..n]);
                    received += n;
                }
                Done::Recv(_, Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
            }
        }
        // What the receives did not take is still there: every frame arrived whole.
        for (_, b) in &pairs {
            b.set_nonblocking(true).unwrap();
            let mut rest = [0u8; 128];
            match (&*b).read(&mut rest) {
                Ok(n) => {
                    assert!(rest[..n].iter().all(|&x| x == round));
                    received += n;
                }
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(received, SLOTS / 2 * 64);
    }
}
