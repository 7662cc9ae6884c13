//! Names the platform features the code is written against, so that `#[cfg(duct_shm)]`
//! (and `#[cfg(duct_uring)]`) says what it means instead of repeating the list of systems
//! that have it.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(duct_shm)");
    println!("cargo::rustc-check-cfg=cfg(duct_uring)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // shm:// needs fd passing, a shared mapping nobody can shrink and a cross-process wait on
    // an address: memfd + seals + futex on Linux, shm_open + __ulock on macOS.
    if os == "linux" || os == "macos" {
        println!("cargo::rustc-cfg=duct_shm");
    }
    // The reactor's io_uring backend: Linux, with the `io-uring` feature (default).
    if os == "linux" && std::env::var_os("CARGO_FEATURE_IO_URING").is_some() {
        println!("cargo::rustc-cfg=duct_uring");
    }
}
