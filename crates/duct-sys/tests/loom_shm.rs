//! Model checks of the shared-memory ring, pool and wait protocol with loom: every
//! interleaving of a producer and a consumer (within loom's bounds) delivers every
//! descriptor once, in order, with its contents, and never loses a wake-up.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p duct-sys --test loom_shm --release`
//! (a separate target dir keeps the normal build's cache: `CARGO_TARGET_DIR=target/loom`).
#![cfg(loom)]

use duct_sys::shm::pool::{Class, PoolMem, PoolRx, PoolTx};
use duct_sys::shm::ring::{Desc, RingMem, INLINE, NO_SLOT};
use duct_sys::shm::wait;

/// The consumer's side of the wait protocol: announces that it parks, looks at the ring
/// once more (a push between its last look and the announcement must not be slept through),
/// and parks only if the ring is still empty.
fn park_while_empty(c: &mut duct_sys::shm::ring::Consumer, word: &loom::sync::atomic::AtomicU32) {
    wait::prepare(word, wait::PARKED);
    if !c.is_empty().unwrap() {
        wait::cancel(word);
        return;
    }
    wait::park(word, None);
    wait::cancel(word);
}

/// A pool of one 64-byte slot (both ends) and a ring of two descriptors.
fn one_slot() -> (std::sync::Arc<PoolTx>, std::sync::Arc<PoolRx>, RingMem) {
    let classes = [Class { size: 64, count: 1 }];
    let pool = PoolMem::heap(&classes);
    let tx = PoolTx::new(pool.clone());
    let rx = PoolRx::new(pool, || {});
    (tx, rx, RingMem::heap(2))
}

fn desc(i: u32) -> Desc {
    let mut header = [0u8; 24];
    header[0] = i as u8;
    Desc {
        header,
        slot: NO_SLOT,
        len: i,
    }
}

/// Three descriptors through a ring of two: the producer must wait for room once.
#[test]
fn ring_delivers_in_order_through_wraparound() {
    loom::model(|| {
        let mem = RingMem::heap(2);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let t = loom::thread::spawn(move || {
            let mut i = 0;
            while i < 3 {
                if p.push(desc(i)).unwrap() {
                    i += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < 3 {
            match c.pop().unwrap() {
                Some(d) => {
                    assert_eq!(d, desc(next));
                    next += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        t.join().unwrap();
    });
}

/// The same, with the descriptors written in runs and published once per run, and taken in
/// runs and their places released once per run: a run is seen whole or not at all, and the
/// producer, which publishes before it waits for room, never waits for places the consumer
/// cannot see.
#[test]
fn runs_published_and_released_at_once_deliver_in_order() {
    loom::model(|| {
        let mem = RingMem::heap(2);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let t = loom::thread::spawn(move || {
            let mut i = 0;
            while i < 3 {
                // A run of up to two.
                while i < 3 && p.write(desc(i)).unwrap() {
                    i += 1;
                }
                p.publish();
                if i < 3 {
                    loom::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < 3 {
            let mut took = 0;
            while let Some(d) = c.take().unwrap() {
                assert_eq!(d, desc(next));
                next += 1;
                took += 1;
            }
            c.release();
            if took == 0 {
                loom::thread::yield_now();
            }
        }
        t.join().unwrap();
    });
}

/// Payloads in the ring itself: three records of a descriptor and a 40-byte payload (three
/// places each) through a ring of four places, so each waits for the places of the one
/// before and the second wraps. The payload is seen whole with its descriptor (one
/// publication covers both) and is never overwritten before the consumer copied it (its
/// places go back only then).
#[test]
fn inline_payloads_arrive_whole_through_wraparound() {
    fn payload(i: u8) -> [u8; 40] {
        std::array::from_fn(|k| i.wrapping_mul(17).wrapping_add(k as u8))
    }
    loom::model(|| {
        let mem = RingMem::heap(4);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let t = loom::thread::spawn(move || {
            let mut i = 0u8;
            while i < 3 {
                if p.write_inline(&[i; 24], &payload(i)).unwrap() {
                    p.publish();
                    i += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
        });
        let mut next = 0u8;
        let mut out = bytes::BytesMut::new();
        while next < 3 {
            match c.take().unwrap() {
                Some(d) => {
                    assert_eq!((d.header, d.slot, d.len), ([next; 24], INLINE, 40));
                    out.clear();
                    c.take_inline(&d, &mut out).unwrap();
                    c.release();
                    assert_eq!(&out[..], &payload(next)[..]);
                    next += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        t.join().unwrap();
    });
}

/// The consumer sleeps whenever the ring is empty (prepare, check again, park); the producer
/// notifies after each push. A lost wake-up would leave the consumer parked forever, which
/// loom reports.
#[test]
fn no_lost_wakeups() {
    loom::model(|| {
        let mem = RingMem::heap(2);
        let mut p = mem.producer();
        let mut c = mem.consumer();
        let pm = mem.clone();
        let t = loom::thread::spawn(move || {
            for i in 0..2 {
                while !p.push(desc(i)).unwrap() {
                    loom::thread::yield_now();
                }
                let _ = wait::notify(pm.ctl().consumer_word());
            }
        });
        let word = mem.ctl().consumer_word();
        let mut got = 0;
        while got < 2 {
            if let Some(d) = c.pop().unwrap() {
                assert_eq!(d, desc(got));
                got += 1;
                continue;
            }
            park_while_empty(&mut c, word);
        }
        t.join().unwrap();
    });
}

/// Payloads through a pool of one slot: the producer reuses the slot only after the consumer
/// freed it, and the consumer always reads what was written for its descriptor.
#[test]
fn pool_slot_reuse_is_ordered_by_free() {
    loom::model(|| {
        let (tx, rx, ring) = one_slot();
        let mut p = ring.producer();
        let mut c = ring.consumer();
        let t = loom::thread::spawn(move || {
            for i in 0..2u8 {
                let mut slot = loop {
                    match tx.alloc(1) {
                        Some(s) => break s,
                        None => loom::thread::yield_now(),
                    }
                };
                slot.fill(&[i; 8]);
                let (index, len) = slot.send();
                let d = Desc {
                    header: [i; 24],
                    slot: index,
                    len,
                };
                while !p.push(d).unwrap() {
                    loom::thread::yield_now();
                }
            }
        });
        let mut got = 0u8;
        while got < 2 {
            match c.pop().unwrap() {
                Some(d) => {
                    let payload = rx.take(d.slot, d.len).unwrap();
                    assert_eq!(&*payload, &[got; 8][..]);
                    drop(payload); // frees the slot for the next message
                    got += 1;
                }
                None => loom::thread::yield_now(),
            }
        }
        t.join().unwrap();
    });
}

/// The receive path of the transport: descriptors counted with `available` and popped as a
/// batch, payloads copied out with `read_and_free` (which frees the slot without `on_free`),
/// and one notify after the batch. The producer waits for a free slot on its wait word: a
/// free that its notify does not cover would leave it parked forever, which loom reports.
#[test]
fn batch_copy_out_frees_and_wakes_the_producer() {
    loom::model(|| {
        let (tx, rx, ring) = one_slot();
        let mut p = ring.producer();
        let mut c = ring.consumer();
        let pm = ring.clone();
        let t = loom::thread::spawn(move || {
            let word = pm.ctl().producer_word();
            for i in 0..2u8 {
                let (index, len) = loop {
                    if let Some(s) = tx.send_copy(&[i; 8]) {
                        break s;
                    }
                    wait::prepare(word, wait::PARKED);
                    if let Some(s) = tx.send_copy(&[i; 8]) {
                        wait::cancel(word);
                        break s;
                    }
                    wait::park(word, None);
                    wait::cancel(word);
                };
                let d = Desc {
                    header: [i; 24],
                    slot: index,
                    len,
                };
                while !p.push(d).unwrap() {
                    loom::thread::yield_now();
                }
                let _ = wait::notify(pm.ctl().consumer_word());
            }
        });
        let word = ring.ctl().consumer_word();
        let mut got = 0u8;
        while got < 2 {
            let ready = c.available().unwrap();
            for _ in 0..ready {
                let d = c.pop().unwrap().expect("counted as available");
                assert_eq!(d.header, [got; 24]);
                let bytes = rx.read_and_free(d.slot, d.len, |b| b.to_vec()).unwrap();
                assert_eq!(bytes, [got; 8]);
                got += 1;
            }
            if ready > 0 {
                let _ = wait::notify(ring.ctl().producer_word());
                continue;
            }
            park_while_empty(&mut c, word);
        }
        t.join().unwrap();
    });
}
