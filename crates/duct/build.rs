//! Names the platform features the code is written against, so that `#[cfg(duct_shm)]`
//! says what it means instead of repeating the list of systems that have it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(duct_shm)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // shm:// needs fd passing, a shared mapping nobody can shrink and a cross-process wait on
    // an address: memfd + seals + futex on Linux, shm_open + __ulock on macOS.
    if os == "linux" || os == "macos" {
        println!("cargo::rustc-cfg=duct_shm");
    }
}
