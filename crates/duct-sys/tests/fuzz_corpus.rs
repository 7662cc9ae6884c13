//! Replays the `shm_descriptors` fuzz corpus (`fuzz/corpus/shm_descriptors/`) on stable
//! through the same function the cargo-fuzz target calls (`fuzz/fuzz_targets/shm_common.rs`),
//! plus a few seeds written here, so an input that once failed stays fixed.
#![cfg(not(loom))]

#[path = "../../../fuzz/fuzz_targets/shm_common.rs"]
mod shm_common;

use std::path::PathBuf;

#[test]
fn shm_descriptors_corpus_replays_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/shm_descriptors");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        shm_common::shm_descriptors(&data);
        n += 1;
    }
    assert!(n > 0, "the corpus is empty");
}

#[test]
fn hand_written_seeds() {
    let seeds: &[&[u8]] = &[
        // An honest payload, taken.
        &[1, 10, 3],
        // A slot that does not exist, then a length beyond its slot, then taken.
        &[0, 99, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 3],
        // The head thrown far ahead, then a take.
        &[2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 3],
        // Views held, the pool filled, everything dropped.
        &[1, 60, 4, 1, 60, 4, 1, 200, 4, 5, 1, 1, 3],
        // Payloads in the ring: 64 bytes, taken; 200 (the ring's 8 places exactly), taken;
        // 255 (9 places: never fits), nothing to take.
        &[6, 64, 3, 6, 200, 3, 6, 255, 3],
        // A hostile descriptor claiming 64 bytes in the ring that were never published.
        &[0, 0xfe, 0xff, 0xff, 0xff, 64, 0, 0, 0, 3],
        // ... claiming more than the ring carries.
        &[0, 0xfe, 0xff, 0xff, 0xff, 0, 1, 0, 0, 3],
        // A payload in the ring, then the head moved back over it before it is taken.
        &[6, 64, 2, 1, 0, 0, 0, 0, 0, 0, 0, 3],
    ];
    for s in seeds {
        shm_common::shm_descriptors(s);
    }
}
