//! Micro-benchmarks of the shared-memory ring, to justify changes to how a message crosses
//! it (run with `cargo bench -p duct-sys --bench ring`; compare two versions on one machine,
//! in one sitting). A message is a 64-byte payload and a descriptor, sent either way duct
//! can send it:
//!
//! - `ring`: the payload in the ring's places after its descriptor (`write_inline`,
//!   `take_inline`), as duct sends payloads of up to 256 bytes;
//! - `pool`: the payload in a pool slot (`send_copy`, then `read_and_free` on the other
//!   side), as duct sends larger ones.
//!
//! Two measures of each:
//! - `one_thread`: sent and taken back by one thread: the instructions alone (no cache line
//!   moves between cores);
//! - `round_trip`: a message to a thread that spins on its ring and sends it back on another
//!   (two cores if the machine gives them): what the two sides' cache lines cost, which is
//!   where the two ways differ most (the pool's way also moves the slot's state word and its
//!   payload's lines between the cores, one after the other). Unpinned threads on a shared
//!   machine: compare versions in one sitting.

fn main() {
    // (The shared-memory ring is Unix-only: elsewhere there is nothing to measure.)
    #[cfg(unix)]
    divan::main();
}

#[cfg(unix)]
mod shm {
    use std::sync::Arc;

    use bytes::BytesMut;
    use divan::{black_box, Bencher};
    use duct_sys::shm::pool::{Class, PoolMem, PoolRx, PoolTx};
    use duct_sys::shm::ring::{Consumer, Desc, Producer, RingMem, HEADER_LEN, INLINE};

    const PAYLOAD: [u8; 64] = [7; 64];

    /// A header's first byte that ends [`round_trip`]'s other side.
    const STOP: u8 = 1;

    /// One direction: a ring of 4096 places and a pool of 4096 slots of 256 bytes (duct's
    /// defaults for small payloads).
    struct Way {
        tx: Producer,
        rx: Consumer,
        tx_pool: Arc<PoolTx>,
        rx_pool: Arc<PoolRx>,
    }

    impl Way {
        fn new() -> Way {
            let ring = RingMem::heap(4096);
            let pool = PoolMem::heap(&[Class {
                size: 256,
                count: 4096,
            }]);
            Way {
                tx: ring.producer(),
                rx: ring.consumer(),
                tx_pool: PoolTx::new(pool.clone()),
                rx_pool: PoolRx::new(pool, || {}),
            }
        }
    }

    /// How a message crosses: the benchmarks' `args`.
    #[derive(Clone, Copy, Debug)]
    enum How {
        Ring,
        Pool,
    }

    impl std::fmt::Display for How {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                How::Ring => "ring",
                How::Pool => "pool",
            })
        }
    }

    const WAYS: [How; 2] = [How::Ring, How::Pool];

    /// Sends `payload` (the ring has room: the other side keeps up).
    #[inline]
    fn send(tx: &mut Producer, pool: &PoolTx, how: How, header: &[u8; HEADER_LEN], payload: &[u8]) {
        let pushed = match how {
            How::Ring => tx.write_inline(header, payload).unwrap(),
            How::Pool => {
                let (slot, len) = pool.send_copy(payload).expect("a free slot");
                tx.write(Desc {
                    header: *header,
                    slot,
                    len,
                })
                .unwrap()
            }
        };
        assert!(pushed, "room");
        tx.publish();
    }

    /// Takes the next message into `out` (emptied first), spinning until there is one; returns
    /// its header.
    #[inline]
    fn recv(rx: &mut Consumer, pool: &PoolRx, out: &mut BytesMut) -> [u8; HEADER_LEN] {
        out.clear();
        let d = loop {
            if let Some(d) = rx.take().unwrap() {
                break d;
            }
            std::hint::spin_loop();
        };
        if d.slot == INLINE {
            rx.take_inline(&d, out).unwrap();
        } else {
            pool.read_and_free(d.slot, d.len, |b| out.extend_from_slice(b))
                .unwrap();
        }
        rx.release();
        d.header
    }

    #[divan::bench(args = WAYS)]
    fn one_thread(b: Bencher, how: How) {
        let mut way = Way::new();
        let mut out = BytesMut::with_capacity(256);
        b.bench_local(|| {
            let payload = black_box(&PAYLOAD);
            send(&mut way.tx, &way.tx_pool, how, &[0; HEADER_LEN], payload);
            recv(&mut way.rx, &way.rx_pool, &mut out);
            black_box(out.len())
        });
    }

    #[divan::bench(args = WAYS)]
    fn round_trip(b: Bencher, how: How) {
        let (there, back) = (Way::new(), Way::new());
        let (mut tx, tx_pool) = (there.tx, there.tx_pool);
        let (mut rx, rx_pool) = (back.rx, back.rx_pool);
        // The other side: sends back what it takes, until a header says stop.
        let echo = {
            let (mut rx, rx_pool) = (there.rx, there.rx_pool);
            let (mut tx, tx_pool) = (back.tx, back.tx_pool);
            std::thread::spawn(move || {
                let mut out = BytesMut::with_capacity(256);
                loop {
                    let header = recv(&mut rx, &rx_pool, &mut out);
                    if header[0] == STOP {
                        return;
                    }
                    send(&mut tx, &tx_pool, how, &header, &out);
                }
            })
        };
        let mut out = BytesMut::with_capacity(256);
        b.bench_local(|| {
            send(
                &mut tx,
                &tx_pool,
                how,
                &[0; HEADER_LEN],
                black_box(&PAYLOAD),
            );
            recv(&mut rx, &rx_pool, &mut out);
            black_box(out.len())
        });
        let mut stop = [0; HEADER_LEN];
        stop[0] = STOP;
        send(&mut tx, &tx_pool, how, &stop, &PAYLOAD);
        echo.join().unwrap();
    }
}
