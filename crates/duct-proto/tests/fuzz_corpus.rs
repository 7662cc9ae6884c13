//! Replays the fuzz corpus on stable: every file under `fuzz/corpus/<target>/`, and the seed
//! inputs, go through the same functions the cargo-fuzz targets call
//! (`fuzz/fuzz_targets/common/mod.rs`, and `common/session.rs` for the `session` target, whose
//! structured inputs decode with the `arbitrary` dev-dependency exactly as under libFuzzer), so
//! an input that once crashed stays fixed.
//!
//! `cargo test -p duct-proto --test fuzz_corpus -- --ignored` rewrites the seed files.

#[path = "../../../fuzz/fuzz_targets/common/mod.rs"]
mod fuzz_common;

use std::fs;
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs every file of `target`'s corpus through `body`; returns how many there were.
fn replay(target: &str, body: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in &entries {
        let data = fs::read(path).unwrap();
        // A panic here names the file through this message.
        eprintln!("replaying {}", path.display());
        body(&data);
    }
    entries.len()
}

#[test]
fn frame_decoder_corpus_replays_cleanly() {
    let n = replay("frame_decoder", fuzz_common::frame_decoder);
    assert!(n > 0, "the frame_decoder corpus is missing");
}

#[test]
fn handshake_corpus_replays_cleanly() {
    let n = replay("handshake", fuzz_common::handshake);
    assert!(n > 0, "the handshake corpus is missing");
}

#[test]
fn session_corpus_replays_cleanly() {
    let n = replay("session", fuzz_common::session::session);
    assert!(n > 0, "the session corpus is missing");
}

#[test]
fn seed_inputs_replay_cleanly() {
    for (target, name, data) in fuzz_common::seeds() {
        eprintln!("seed {target}/{name}");
        match target {
            "frame_decoder" => fuzz_common::frame_decoder(&data),
            "handshake" => fuzz_common::handshake(&data),
            other => panic!("unknown target {other}"),
        }
    }
}

/// Writes the seed inputs into the corpus directories (run by hand after changing them).
#[test]
#[ignore = "writes into fuzz/corpus"]
fn write_seed_corpus() {
    for (target, name, data) in fuzz_common::seeds() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), data).unwrap();
    }
}
