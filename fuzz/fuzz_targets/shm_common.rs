//! The body of the `shm_descriptors` fuzz target, shared with the stable replay in
//! `crates/duct-sys/tests/fuzz_corpus.rs`: a hostile producer drives a shared ring and pool
//! (in heap memory, the same code as in a segment) with arbitrary descriptors, counters and
//! slot states, while the consumer takes what it is given. Oracles: nothing panics; the
//! consumer's checks refuse every descriptor that names no slot or a length beyond its slot;
//! a view never reaches past its slot; a payload in the ring is copied out whole when its
//! length is within the ring's bound and its places were published, refused otherwise, and
//! an honest one arrives as written; a corrupt counter is reported, never followed.
#![allow(dead_code)]

use duct_sys::shm::pool::{Class, PoolMem, PoolRx, PoolTx};
use duct_sys::shm::ring::{inline_places, Desc, RingMem, INLINE, INLINE_MAX, NO_SLOT};

const CLASSES: &[Class] = &[
    Class { size: 64, count: 8 },
    Class {
        size: 256,
        count: 2,
    },
];

fn take<const N: usize>(data: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = data.split_first_chunk::<N>()?;
    *data = rest;
    Some(*head)
}

pub fn shm_descriptors(mut data: &[u8]) {
    let ring = RingMem::heap(8);
    let pool = PoolMem::heap(CLASSES);
    let tx = PoolTx::new(pool.clone());
    let rx = PoolRx::new(pool.clone(), || {});
    let mut producer = ring.producer();
    let mut consumer = ring.consumer();
    let max = pool.max_len();
    let mut held = Vec::new();
    let mut broken = false;
    while let Some([op]) = take::<1>(&mut data) {
        match op % 8 {
            // A hostile descriptor: any slot, any length.
            0 => {
                let Some(raw) = take::<8>(&mut data) else {
                    break;
                };
                let slot = u32::from_le_bytes(raw[..4].try_into().unwrap());
                let len = u32::from_le_bytes(raw[4..].try_into().unwrap());
                let _ = producer.push(Desc {
                    header: [op; 24],
                    slot,
                    len,
                });
            }
            // An honest descriptor with a payload in a real slot.
            1 => {
                let Some([len]) = take::<1>(&mut data) else {
                    break;
                };
                if let Some(mut s) = tx.alloc(usize::from(len)) {
                    s.fill(&vec![len; usize::from(len)]);
                    let (slot, n) = s.send();
                    let _ = producer.push(Desc {
                        header: [0; 24],
                        slot,
                        len: n,
                    });
                }
            }
            // The producer's counter overwritten with anything.
            2 => {
                let Some(raw) = take::<8>(&mut data) else {
                    break;
                };
                ring.ctl().overwrite_head(u64::from_le_bytes(raw));
            }
            // An honest payload in the ring (its header's first byte 0xA1 marks it).
            6 => {
                let Some([len]) = take::<1>(&mut data) else {
                    break;
                };
                let mut header = [0; 24];
                header[0] = 0xA1;
                let _ = producer.write_inline(&header, &vec![len; usize::from(len)]);
                producer.publish();
            }
            // The consumer takes one.
            3 | 4 | 7 => match consumer.take() {
                Ok(Some(d)) if d.slot == NO_SLOT => consumer.release(),
                Ok(Some(d)) if d.slot == INLINE => {
                    // (Read before `take_inline`, which may refresh it.)
                    let after = consumer.available();
                    let mut out = bytes::BytesMut::new();
                    match consumer.take_inline(&d, &mut out) {
                        Ok(()) => {
                            assert!(d.len as usize <= INLINE_MAX);
                            assert_eq!(out.len(), d.len as usize, "copied whole");
                            if d.header[0] == 0xA1 {
                                assert!(out.iter().all(|&b| b == d.len as u8), "as written");
                            }
                        }
                        Err(_) => assert!(
                            d.len as usize > INLINE_MAX
                                || after.is_err()
                                || after.is_ok_and(|n| n < inline_places(d.len as usize)),
                            "a payload in the ring refused though published: {d:?}"
                        ),
                    }
                    consumer.release();
                }
                Ok(Some(d)) => {
                    consumer.release();
                    match rx.take(d.slot, d.len) {
                        Ok(view) => {
                            assert!(view.len() <= max, "a view within its slot");
                            assert_eq!(view.len(), d.len as usize);
                            // Reading every byte must stay inside the pool.
                            let _sum: u32 = view.iter().map(|&b| u32::from(b)).sum();
                            if op % 8 == 4 {
                                held.push(view);
                            }
                        }
                        Err(_) => {
                            assert!(
                                d.slot >= pool.slots() || d.len as usize > max || d.len > 64,
                                "a valid descriptor was refused: {d:?}"
                            );
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            },
            // Views dropped: their slots are free again.
            _ => held.clear(),
        }
    }
    if !broken {
        // Whatever is left is taken or refused, never followed out of bounds.
        for _ in 0..16 {
            match consumer.pop() {
                Ok(Some(d)) if d.slot == INLINE => {
                    let _ = consumer.take_inline(&d, &mut bytes::BytesMut::new());
                    consumer.release();
                }
                Ok(Some(d)) if d.slot != NO_SLOT => {
                    let _ = rx.take(d.slot, d.len);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
