//! `duct`: the command-line tool of duct.
//!
//! - `duct bench` measures duct beside a raw-socket baseline in the same run (see
//!   `shared/BENCH.md`): ping-pong latency and stream throughput, allocations per message,
//!   a table on stdout, JSON with `--json`, an SVG latency plot with `--plot`.
//! - `duct listen ADDR` and `duct dial ADDR` move lines of text through a pipe, for
//!   poking at a duct endpoint by hand.
//! - `duct shm` lists this host's live `shm://` endpoints (Linux): name, listening
//!   process, connections.
//!
//! The binary counts allocations (for `duct bench`) through a counting global allocator
//! from `duct-sys`; every other command pays one relaxed atomic increment per allocation.

#![forbid(unsafe_code)]

mod bench;
mod cli;
mod error;
mod listen_dial;
mod shm_list;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Counts every allocation of the process, so that `duct bench` can report
/// `allocs_per_msg`.
#[global_allocator]
static ALLOC: duct_sys::alloc_count::CountingAlloc = duct_sys::alloc_count::CountingAlloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::BenchPeer(args) => bench::peer::child_main(args),
        Command::Listen(args) => listen_dial::listen(args),
        Command::Dial(args) => listen_dial::dial(args),
        Command::Shm(args) => shm_list::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duct: {e}");
            ExitCode::FAILURE
        }
    }
}
