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
    ];
    for s in seeds {
        shm_common::shm_descriptors(s);
    }
}
