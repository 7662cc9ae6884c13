//! The scale pattern (duct only): many pipes on one listener, and what they cost.
//!
//! BENCH.md's goal: "1,000 pipes on one process: ≤ 4 threads of duct's own; total msgs/s ≥
//! 0.8 × one pipe's". Each round of a scale case makes two runs, back to back:
//! - `--pipes N` pipes (default [`DEFAULT_PIPES`]): the measuring end listens, the peer dials
//!   N pipes to it, one after another, then streams `--size` messages on all of them as fast
//!   as it can, round-robin, with one blocking `Pipe::send_slices` of up to
//!   [`MAX_SEND_BATCH`] messages (`--batch`, if lower; 1: `Pipe::send_slice`) per pipe in
//!   turn, copied from one buffer (as the stream pattern sends);
//! - the reference: the same traffic, sent the same way, on one pipe.
//!
//! The measuring end receives on all its pipes with [`RX_THREADS`] threads (one for the
//! reference, which has one pipe), in one of two ways ([`Receive`], `--scale-receive`):
//! - `async` (the default), as an event-driven server would: a tokio runtime with that many
//!   worker threads runs one task per pipe, which awaits `Pipe::recv_async` and then takes
//!   what else is ready with `Pipe::recv_into` (views, into a reused `MessageBatch`) and a
//!   zero timeout, up to [`RECV_MAX`] messages per wake-up. A pipe costs nothing while it has nothing: duct's reactor reads
//!   for the waiting task and wakes it.
//! - `sweep`, as a loop that polls: pipe `i` goes to thread `i % RX_THREADS`, and each thread
//!   sweeps its pipes without blocking: `Pipe::try_recv`, and when that brings a message,
//!   `Pipe::recv_into` with a zero timeout, up to [`RECV_MAX`] in all per visit.
//!   (`try_recv` goes first because it reports an empty pipe as `Ok(None)`, while
//!   `recv_into` reports it as a `WouldBlock` error.) A thread whose sweep found nothing yields its CPU once; it never blocks, so
//!   the receivers take whatever CPU the sender leaves (on a 2-CPU machine they compete with
//!   it, and the rate measures that contention as much as duct).
//!
//! The rate is total messages over the time from the first measured message (the first not
//! flagged [`FLAG_WARMUP`], sent after at least [`warmup_messages`] and [`WARMUP_MIN_TIME`],
//! on any pipe) to the last (the last pipe's final message): the
//! sender ends by sending one message flagged last on every pipe, and a receiving thread is
//! done when each of its pipes has brought its own.
//!
//! Beside the rate, the measuring end reports (Linux; `None` elsewhere):
//! - the threads of its process: all of them, and duct's own ([`ThreadCount`]), counted when
//!   the measured phase starts, every pipe open and carrying traffic;
//! - RSS per pipe: `VmRSS` after every pipe connected and the traffic ran (the pipes still
//!   open), minus `VmRSS` before the listener was made, divided by the number of pipes; the
//!   peer reports the same for its process (before it dialed, after it sent).
//!
//! The reference is duct's own single pipe; on tcp and uds the raw baseline runs the same
//! traffic on plain sockets, N and one ([`crate::bench::scale_raw`]), so that duct ÷ raw on as
//! many pipes shows what many pipes cost duct beyond what they cost the kernel.
//!
//! shm: every pipe gets duct's segment, whose sizes no `ListenOptions` or `DialOptions`
//! setting changes ([`SHM_SEGMENT`] says what they are); its pages count in RSS once
//! touched, in both processes (the mapping is shared).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use duct::{
    CloseOptions, DialOptions, ErrorKind, ListenOptions, MessageBatch, Pipe, RecvOptions,
    SendOptions,
};

use crate::bench::duct_conn;
use crate::bench::mixed::FLAG_WARMUP;
use crate::bench::peer::Peer;
use crate::bench::spec::{Amount, Job};
use crate::bench::stats::RunResult;
use crate::bench::tls::{dial_tls, listen_tls, TlsSetup};
use crate::bench::workload::{alloc_count, PeerReport, FLAG_LAST, FLAG_MORE};
use crate::error::{bail, Context, Result};

/// `--pipes` when not given.
pub const DEFAULT_PIPES: usize = 1000;

/// Application threads of the measuring end that receive (fewer if there are fewer pipes).
pub const RX_THREADS: usize = 2;

/// How the measuring end of a scale case receives (`--scale-receive`; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Receive {
    /// One task per pipe on a tokio runtime of [`rx_threads`] workers, awaiting
    /// `Pipe::recv_async`.
    #[default]
    Async,
    /// [`rx_threads`] threads sweeping their pipes with non-blocking receives.
    Sweep,
}

impl Receive {
    /// The name in the table, the JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Receive::Async => "async",
            Receive::Sweep => "sweep",
        }
    }
}

/// Most messages per `send_batch` call on one pipe (`--batch` may lower it).
pub const MAX_SEND_BATCH: usize = 16;

/// Most messages a receiving thread takes from one pipe per visit.
pub const RECV_MAX: usize = 64;

/// What duct's shm segment holds per direction, for the table (duct's `default_params` in
/// crates/duct/src/transport/shm.rs; not settable through `ListenOptions`/`DialOptions`).
pub const SHM_SEGMENT: &str =
    "per direction a ring of 4096 places of 32 B (a descriptor, or part of \
     a payload of up to 256 B after its descriptor) and a pool of \
     4096 × 256 B, 512 × 4 KiB, 128 × 64 KiB and 8 × 1 MiB slots";

/// How long the measuring end waits for the peer's report once it has received everything.
pub(crate) const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages per `send_batch` call for a `--batch` of `batch`.
pub fn send_batch(batch: usize) -> usize {
    batch.clamp(1, MAX_SEND_BATCH)
}

/// The least time the sender warms up for, whatever `--warmup` says: one-time costs of each
/// pipe fall in it rather than in the measured phase. Each pipe's first metrics publication
/// (one [`duct::set_metrics_interval`] after it was established, 1 s by default) registers
/// its metric handles: dozens of small allocations per pipe, tens of thousands on a
/// reactor thread within a moment for 1,000 pipes; and the first use of shm pool slots
/// faults their pages in.
pub const WARMUP_MIN_TIME: Duration = Duration::from_millis(1500);

/// Messages sent before the measured phase, at least: `--warmup`, but at least one batch per
/// pipe, so that every pipe has carried traffic before anything is measured. The warmup goes
/// on until [`WARMUP_MIN_TIME`] has passed too; its messages are flagged [`FLAG_WARMUP`].
pub fn warmup_messages(job: &Job) -> u64 {
    job.warmup
        .max((job.pipes as u64).saturating_mul(job.batch.max(1) as u64))
}

/// Receiving threads for `pipes` pipes.
pub fn rx_threads(pipes: usize) -> usize {
    RX_THREADS.min(pipes).max(1)
}

/// The threads of a process, as `/proc/<pid>/task/*/comm` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCount {
    /// duct's own: named `duct-*` (its reactor threads and other helpers), the bench's own
    /// `duct-bench-*` threads (watchdog, peer threads, receivers) left out.
    pub duct: u64,
    /// All of them.
    pub total: u64,
}

impl ThreadCount {
    /// This process's threads; `None` off Linux, or if `/proc` cannot be read.
    pub fn of_this_process() -> Option<ThreadCount> {
        let mut count = ThreadCount { duct: 0, total: 0 };
        for_each_thread(std::process::id(), |_, ducts| {
            count.total += 1;
            count.duct += u64::from(ducts);
        })?;
        Some(count)
    }
}

/// Calls `f` with the directory of each thread of process `pid` under `/proc` and whether
/// the thread is one of duct's own ([`is_ducts_own`] by its name; never the main thread,
/// which bears the executable's name, which may well be `duct-...`). A thread that ended
/// since the listing (its files gone) is skipped. `None` off Linux, or if `/proc` cannot be
/// read.
fn for_each_thread(pid: u32, mut f: impl FnMut(&std::path::Path, bool)) -> Option<()> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let main = pid.to_string();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        f(
            &path,
            entry.file_name() != main.as_str() && is_ducts_own(comm.trim_end()),
        );
    }
    Some(())
}

/// Whether a thread named `comm` (at most 15 bytes, as the kernel keeps it) is one of duct's:
/// `duct-*`, but not the bench's own `duct-bench-*`.
pub fn is_ducts_own(comm: &str) -> bool {
    comm.starts_with("duct-") && !comm.starts_with("duct-bench")
}

/// CPU time of a process's threads, from `/proc/<pid>/task/*/schedstat` (nanoseconds spent
/// on a CPU): duct's own threads (`duct-*`, as [`ThreadCount`] tells them) and the others. A
/// thread that ended is no longer listed, so its time is not in a later reading: the bench
/// reads both ends of its measured phase while the threads that do the work are alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTime {
    /// duct's own threads (the main thread never counts as one, whatever the executable's
    /// name).
    pub duct_ns: u64,
    /// The other threads.
    pub other_ns: u64,
}

impl CpuTime {
    /// Process `pid`'s threads; `None` off Linux, or if `/proc` cannot be read.
    pub fn of_process(pid: u32) -> Option<CpuTime> {
        let mut cpu = CpuTime::default();
        for_each_thread(pid, |dir, ducts| {
            // (A thread that ended meanwhile has no schedstat any more: not counted.)
            if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
                .ok()
                .and_then(|s| parse_schedstat(&s))
            {
                cpu.add_thread(ducts, ns);
            }
        })?;
        Some(cpu)
    }

    /// Adds `ns` of a thread, one of duct's own or not.
    fn add_thread(&mut self, ducts: bool, ns: u64) {
        if ducts {
            self.duct_ns += ns;
        } else {
            self.other_ns += ns;
        }
    }
}

/// The time on a CPU a `schedstat` file gives (its first field, in nanoseconds).
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU time per message of a scale run's measured phase, in nanoseconds: the measuring
/// process's threads of duct's own and its other threads (the application's receivers), and
/// the sending peer process (all its threads; `None` when the peer is threads of this
/// process, whose time is then in `app_ns`, or off Linux).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CpuPerMsg {
    /// This process's threads of duct's own (its reactor).
    pub duct_ns: f64,
    /// This process's other threads.
    pub app_ns: f64,
    /// The peer process.
    pub peer_ns: Option<f64>,
}

/// CPU readings of both processes at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct CpuReading {
    this: Option<CpuTime>,
    peer: Option<CpuTime>,
    /// This process's allocations made by taking the reading (reading `/proc` allocates),
    /// left out of the measured phase's count.
    allocs: u64,
}

impl CpuReading {
    fn now(peer: Option<u32>) -> CpuReading {
        let before = alloc_count();
        let this = CpuTime::of_process(std::process::id());
        let peer = peer.and_then(CpuTime::of_process);
        CpuReading {
            this,
            peer,
            allocs: alloc_count().wrapping_sub(before),
        }
    }

    /// What was spent from `start` to this reading, per message of `messages`.
    fn per_msg_since(&self, start: &CpuReading, messages: u64) -> Option<CpuPerMsg> {
        let n = messages.max(1) as f64;
        let (end, start_this) = (self.this?, start.this?);
        let peer = match (self.peer, start.peer) {
            (Some(e), Some(s)) => {
                Some((e.duct_ns + e.other_ns).saturating_sub(s.duct_ns + s.other_ns) as f64 / n)
            }
            _ => None,
        };
        Some(CpuPerMsg {
            duct_ns: end.duct_ns.saturating_sub(start_this.duct_ns) as f64 / n,
            app_ns: end.other_ns.saturating_sub(start_this.other_ns) as f64 / n,
            peer_ns: peer,
        })
    }
}

/// This process's resident set (`VmRSS`), in bytes; `None` off Linux.
pub fn rss_bytes() -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// `(after − before) ÷ pipes`, in bytes (negative if the process shrank).
pub(crate) fn per_pipe(before: Option<u64>, after: Option<u64>, pipes: usize) -> Option<f64> {
    Some((after? as f64 - before? as f64) / pipes.max(1) as f64)
}

/// What a scale run measured beside its [`RunResult`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ScaleFigures {
    /// Pipes of the run.
    pub pipes: usize,
    /// The measuring process's threads during the measured phase.
    pub threads: Option<ThreadCount>,
    /// The measuring process's RSS growth per pipe, in bytes.
    pub rss_per_pipe: Option<f64>,
    /// The peer process's RSS growth per pipe, in bytes.
    pub peer_rss_per_pipe: Option<f64>,
    /// The peer process's threads of duct's own, after its traffic.
    pub peer_threads_duct: Option<u64>,
    /// CPU time per message in the measured phase, of both processes.
    pub cpu: Option<CpuPerMsg>,
}

/// A case's figures over its rounds: the most threads, and the largest RSS growth per pipe,
/// of any round (memory that an earlier run freed may serve a later one, which then grows
/// less: the largest is the closest to what a first run costs); the mean CPU per message.
pub fn combine(rounds: &[ScaleFigures]) -> ScaleFigures {
    fn max_f64(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
    let mut out = ScaleFigures::default();
    for r in rounds {
        out.pipes = out.pipes.max(r.pipes);
        out.threads = match (out.threads, r.threads) {
            (Some(a), Some(b)) => Some(ThreadCount {
                duct: a.duct.max(b.duct),
                total: a.total.max(b.total),
            }),
            (a, b) => a.or(b),
        };
        out.rss_per_pipe = max_f64(out.rss_per_pipe, r.rss_per_pipe);
        out.peer_rss_per_pipe = max_f64(out.peer_rss_per_pipe, r.peer_rss_per_pipe);
        out.peer_threads_duct = out.peer_threads_duct.max(r.peer_threads_duct);
    }
    out.cpu = mean_cpu(rounds.iter().filter_map(|r| r.cpu));
    out
}

/// The mean of rounds' CPU figures (`None` if there are none; the peer's only if every
/// round has it).
fn mean_cpu(rounds: impl Iterator<Item = CpuPerMsg>) -> Option<CpuPerMsg> {
    let mut sum = CpuPerMsg {
        peer_ns: Some(0.0),
        ..CpuPerMsg::default()
    };
    let mut n = 0;
    for r in rounds {
        sum.duct_ns += r.duct_ns;
        sum.app_ns += r.app_ns;
        sum.peer_ns = sum.peer_ns.zip(r.peer_ns).map(|(a, b)| a + b);
        n += 1;
    }
    (n > 0).then(|| {
        let n = f64::from(n);
        CpuPerMsg {
            duct_ns: sum.duct_ns / n,
            app_ns: sum.app_ns / n,
            peer_ns: sum.peer_ns.map(|p| p / n),
        }
    })
}

/// The measuring end's listen options: duct's defaults, and room for `pipes` pipes.
fn listen_options(pipes: usize) -> ListenOptions {
    ListenOptions::default().max_pipes(pipes.max(16_384))
}

/// Closes every pipe at once: by now nothing is left to send on them.
fn close_all(pipes: Vec<Pipe>) {
    let now = CloseOptions::default().linger(Duration::ZERO);
    for pipe in pipes {
        let _ = pipe.close_with(now.clone());
    }
}

/// One scale run on the measuring end: listen, start the peer on `job` (which dials
/// `job.pipes` pipes and sends), accept every pipe, receive until each has brought its last
/// message, then collect the peer's report and close everything.
pub fn run(
    peer: &mut Peer,
    job: &mut Job,
    tls: Option<&TlsSetup>,
    how: Receive,
) -> Result<(RunResult, ScaleFigures)> {
    let rss_before = rss_bytes();
    let addr = duct_conn::listen_addr(job.transport, &super::uds_name())?;
    let options = listen_tls(listen_options(job.pipes), job, tls);
    let options = duct_conn::listen_spin(options, job);
    let (listener, bound) = duct_conn::listen(&addr, options)?;
    job.addr = bound;
    peer.start(job)?;
    let mut pipes = Vec::with_capacity(job.pipes);
    while pipes.len() < job.pipes {
        let pipe = duct_conn::accept(&listener, super::CONNECT_TIMEOUT, || peer.check())
            .with_context(|| format!("after {} of {} pipes", pipes.len(), job.pipes))?;
        pipes.push(pipe);
    }
    let received =
        receive(&pipes, job, how, peer.pid()).map_err(|e| super::with_peer_error(e, peer));
    let rss_after = rss_bytes();
    let outcome = received.and_then(|rx| Ok((rx, peer.wait(REPORT_TIMEOUT)?)));
    close_all(pipes);
    drop(listener);
    let (rx, report) = outcome?;
    Ok(results(&rx, &report, job.pipes, (rss_before, rss_after)))
}

/// A scale run's results, from what its receivers measured, the peer's report, its number
/// of pipes and this process's RSS before and after.
pub(crate) fn results(
    rx: &Received,
    report: &PeerReport,
    pipes: usize,
    (rss_before, rss_after): (Option<u64>, Option<u64>),
) -> (RunResult, ScaleFigures) {
    let run = RunResult {
        rtt: None,
        messages: rx.messages,
        msgs_per_sec: rx.rate_messages as f64 / rx.elapsed.as_secs_f64().max(1e-9),
        allocs_per_msg: super::per_msg(rx.allocs, rx.rate_messages)
            .max(super::per_msg(report.allocs, report.messages)),
        copies: None,
    };
    let figures = ScaleFigures {
        pipes,
        threads: rx.threads,
        rss_per_pipe: per_pipe(rss_before, rss_after, pipes),
        peer_rss_per_pipe: per_pipe(report.rss_before, report.rss_after, pipes),
        peer_threads_duct: report.threads_duct,
        cpu: rx.cpu,
    };
    (run, figures)
}

/// What the receiving threads measured together.
pub(crate) struct Received {
    /// Messages after the warmup (not flagged [`FLAG_WARMUP`]).
    pub(crate) messages: u64,
    /// Messages received after the reference instant.
    pub(crate) rate_messages: u64,
    /// From the reference instant to the receipt of the last message.
    pub(crate) elapsed: Duration,
    /// Allocations of this process over the same window.
    pub(crate) allocs: u64,
    /// This process's threads at the reference instant.
    pub(crate) threads: Option<ThreadCount>,
    /// CPU time per message of `rate_messages`, from the reference instant to the receipt of
    /// the last pipe's last message.
    pub(crate) cpu: Option<CpuPerMsg>,
}

/// The count shared by the receiving threads.
pub(crate) struct Tally {
    /// Messages received after the warmup.
    total: AtomicU64,
    reference: OnceLock<Reference>,
    /// Pipes that have not brought their last message yet.
    pipes_left: AtomicUsize,
    /// The peer process, whose CPU time is read with this one's.
    peer: Option<u32>,
    /// CPU readings when the last pipe brought its last message (the receivers are all
    /// still there; every message is counted by then).
    end: OnceLock<CpuReading>,
}

/// The instant the measured phase starts: the receipt of the call that brings the first
/// message after the warmup, the first not flagged [`FLAG_WARMUP`] (as in the stream
/// pattern, the messages of that call do not count towards the rate).
struct Reference {
    at: Instant,
    count: u64,
    allocs: u64,
    threads: Option<ThreadCount>,
    cpu: CpuReading,
}

impl Tally {
    /// Nothing counted yet, `pipes` pipes to hear the last message of; `peer`: the sending
    /// process, if it is one.
    pub(crate) fn new(pipes: usize, peer: Option<u32>) -> Tally {
        Tally {
            total: AtomicU64::new(0),
            reference: OnceLock::new(),
            pipes_left: AtomicUsize::new(pipes),
            peer,
            end: OnceLock::new(),
        }
    }

    /// Counts what one visit to a pipe brought (see [`Tally::add`]). When it brought the
    /// pipe's last message, returns the instant it was received (taken first: after the last
    /// pipe's, the CPU time of both processes is read, which is no part of the traffic).
    pub(crate) fn took(&self, got: &Got) -> Option<Instant> {
        self.add(got.measured);
        if !got.last {
            return None;
        }
        let at = Instant::now();
        if self.pipes_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.end.get_or_init(|| CpuReading::now(self.peer));
        }
        Some(at)
    }

    /// Counts `n` messages received after the warmup (none: nothing to count).
    fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if self.reference.get().is_none() {
            self.reference.get_or_init(|| {
                // Counted first: reading /proc allocates.
                let threads = ThreadCount::of_this_process();
                let cpu = CpuReading::now(self.peer);
                Reference {
                    at: Instant::now(),
                    count: total,
                    allocs: alloc_count(),
                    threads,
                    cpu,
                }
            });
        }
    }
}

/// Receives on `pipes` with [`rx_threads`] threads, `how`, until every pipe has brought its
/// last message.
fn receive(pipes: &[Pipe], job: &Job, how: Receive, peer: Option<u32>) -> Result<Received> {
    let tally = Tally::new(pipes.len(), peer);
    let ends = match how {
        Receive::Async => receive_async(pipes, job.size, tally)?,
        Receive::Sweep => sweep(pipes, job.size, tally)?,
    };
    received(ends)
}

/// `Receive::Async`: one task per pipe on a runtime of [`rx_threads`] workers. Returns the
/// tally and the instant each pipe brought its last message.
fn receive_async(pipes: &[Pipe], size: usize, tally: Tally) -> Result<(Tally, Vec<Instant>)> {
    // (No I/O driver: duct's reactor reads and wakes the tasks.)
    on_runtime(pipes.len(), false, tally, |tasks, tally| {
        for pipe in pipes {
            let (pipe, tally) = (pipe.clone(), Arc::clone(tally));
            tasks.spawn(async move { receive_task(&pipe, size, &tally).await });
        }
        Ok(())
    })
}

/// Runs the tasks `spawn_all` spawns (in the runtime's context) on a tokio runtime of
/// [`rx_threads`]`(count)` workers (`io`: with tokio's I/O driver), until all have ended or
/// one failed. Returns the tally and the instant each task ended.
pub(crate) fn on_runtime(
    count: usize,
    io: bool,
    tally: Tally,
    spawn_all: impl FnOnce(&mut tokio::task::JoinSet<Result<Instant>>, &Arc<Tally>) -> Result<()>,
) -> Result<(Tally, Vec<Instant>)> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(rx_threads(count))
        .thread_name("duct-bench-rx");
    if io {
        builder.enable_io();
    }
    let rt = builder.build().context("starting the receiving runtime")?;
    let tally = Arc::new(tally);
    let ends = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        spawn_all(&mut tasks, &tally)?;
        let mut ends = Vec::with_capacity(tasks.len());
        while let Some(done) = tasks.join_next().await {
            // The first failure ends the run (the other tasks are dropped with the set).
            match done {
                Ok(end) => ends.push(end?),
                Err(e) => bail!("a receiving task failed: {e}"),
            }
        }
        Ok(ends)
    })?;
    drop(rt);
    let tally = Arc::into_inner(tally).expect("every task has ended");
    Ok((tally, ends))
}

/// One pipe's task: receives until the pipe brings its last message; returns when it did.
async fn receive_task(pipe: &Pipe, size: usize, tally: &Tally) -> Result<Instant> {
    let rest = RecvOptions::default().timeout(Duration::ZERO);
    let mut batch = MessageBatch::with_capacity(RECV_MAX);
    loop {
        let first = pipe.recv_async().await.context("duct: recv_async")?;
        let mut got = Got::default();
        got.check(first.channel(), first.payload(), size)?;
        if !got.last && RECV_MAX > 1 {
            take_ready(pipe, &mut batch, &rest, size, &mut got)?;
        }
        if let Some(at) = tally.took(&got) {
            return Ok(at);
        }
    }
}

/// What one visit to a pipe brought.
#[derive(Default)]
pub(crate) struct Got {
    /// Messages after the warmup.
    pub(crate) measured: u64,
    /// The pipe's last message was among them.
    pub(crate) last: bool,
}

impl Got {
    /// Checks a received message (channel 0, `size` bytes) and counts it.
    fn check(&mut self, channel: u16, payload: &[u8], size: usize) -> Result<()> {
        if channel != duct_conn::CHANNEL {
            bail!(
                "duct: protocol error: message on channel {channel}, expected {}",
                duct_conn::CHANNEL
            );
        }
        if payload.len() != size {
            bail!(
                "duct: protocol error: message of {} bytes, expected {size}",
                payload.len()
            );
        }
        self.count(payload);
        Ok(())
    }

    /// Counts a message of the right size by its flag byte (the first).
    pub(crate) fn count(&mut self, payload: &[u8]) {
        match payload.first() {
            Some(&FLAG_WARMUP) => {}
            Some(&FLAG_LAST) => {
                self.measured += 1;
                self.last = true;
            }
            _ => self.measured += 1,
        }
    }
}

/// Takes up to [`RECV_MAX`] - 1 more messages that are ready on `pipe` (none is not an
/// error), checks and counts them into `got`.
fn take_ready(
    pipe: &Pipe,
    batch: &mut MessageBatch,
    rest: &RecvOptions,
    size: usize,
    got: &mut Got,
) -> Result<()> {
    match pipe.recv_into(batch, RECV_MAX - 1, rest) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e).context("duct: recv_into"),
    }
    for msg in batch.iter() {
        got.check(msg.channel(), msg.payload(), size)?;
    }
    Ok(())
}

/// `Receive::Sweep`: [`rx_threads`] threads, each sweeping its share of `pipes`. Returns the
/// tally and the instant each thread received the last of its pipes' last messages.
fn sweep(pipes: &[Pipe], size: usize, tally: Tally) -> Result<(Tally, Vec<Instant>)> {
    let threads = rx_threads(pipes.len());
    let mut groups: Vec<Vec<&Pipe>> = vec![Vec::new(); threads];
    for (i, pipe) in pipes.iter().enumerate() {
        groups[i % threads].push(pipe);
    }
    let ends = on_threads(groups, &tally, |group| receive_on(group, size, &tally))?;
    Ok((tally, ends))
}

/// Runs `receive` on each of `groups` in a thread of its own (`duct-bench-rx-N`), and
/// returns what each returned (the instant it was done), or the first failure.
///
/// A thread whose group is done first waits (asleep) until `tally`'s closing CPU reading is
/// taken, or every thread is done: an ended thread's time is in no later reading, and the
/// measured phase's start reading had it (the sweepers' CPU used to come out as 0).
pub(crate) fn on_threads<G: Send>(
    groups: Vec<G>,
    tally: &Tally,
    receive: impl Fn(G) -> Result<Instant> + Sync,
) -> Result<Vec<Instant>> {
    let running = AtomicUsize::new(groups.len());
    std::thread::scope(|s| -> Result<Vec<Instant>> {
        let mut handles = Vec::with_capacity(groups.len());
        for (i, group) in groups.into_iter().enumerate() {
            let (receive, running) = (&receive, &running);
            let handle = std::thread::Builder::new()
                .name(format!("duct-bench-rx-{i}"))
                .spawn_scoped(s, move || {
                    let r = receive(group);
                    running.fetch_sub(1, Ordering::AcqRel);
                    while tally.end.get().is_none() && running.load(Ordering::Acquire) > 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    r
                })?;
            handles.push(handle);
        }
        let mut ends = Vec::with_capacity(handles.len());
        let mut first_error = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(end)) => ends.push(end),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error
                        .get_or_insert(crate::error::CliError::msg("a receiving thread panicked"));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(ends),
        }
    })
}

/// The figures of a receive, from its tally and the instants its receivers ended.
pub(crate) fn received((tally, ends): (Tally, Vec<Instant>)) -> Result<Received> {
    let allocs_after = alloc_count();
    let total = tally.total.load(Ordering::Relaxed);
    let Some(reference) = tally.reference.into_inner() else {
        bail!(
            "too few messages arrived after the warmup to measure a rate (use more --messages \
             or a longer --duration)"
        );
    };
    let end = ends.into_iter().max().unwrap_or(reference.at);
    let elapsed = end.saturating_duration_since(reference.at);
    let rate_messages = total - reference.count;
    let end_reading = tally.end.into_inner();
    // (The CPU readings' own allocations are not the traffic's.)
    let reading_allocs = end_reading.as_ref().map_or(0, |r| r.allocs);
    let cpu = end_reading.and_then(|end| end.per_msg_since(&reference.cpu, rate_messages));
    if rate_messages == 0 || elapsed.is_zero() {
        bail!(
            "too few messages arrived after the warmup to measure a rate (use more --messages \
             or a longer --duration)"
        );
    }
    Ok(Received {
        messages: total,
        rate_messages,
        elapsed,
        allocs: allocs_after
            .wrapping_sub(reference.allocs)
            .saturating_sub(reading_allocs),
        threads: reference.threads,
        cpu,
    })
}

/// One receiving thread: sweeps `pipes` without blocking until each has brought its last
/// message; returns when it received the last of them.
fn receive_on(pipes: Vec<&Pipe>, size: usize, tally: &Tally) -> Result<Instant> {
    let rest = RecvOptions::default().timeout(Duration::ZERO);
    let mut batch = MessageBatch::with_capacity(RECV_MAX);
    sweep_until_last(pipes, tally, |pipe| {
        let Some(first) = pipe.try_recv().context("duct: try_recv")? else {
            return Ok(None);
        };
        let mut got = Got::default();
        got.check(first.channel(), first.payload(), size)?;
        if !got.last && RECV_MAX > 1 {
            take_ready(pipe, &mut batch, &rest, size, &mut got)?;
        }
        Ok(Some(got))
    })
}

/// A sweeping thread's loop: `visit`s each of `items` in turn (`None`: it had nothing),
/// counting what they bring into `tally`, until each has brought its last message, and
/// yields its CPU once after a sweep that found nothing. Returns the instant the last of them
/// brought its last message.
pub(crate) fn sweep_until_last<T>(
    mut items: Vec<T>,
    tally: &Tally,
    mut visit: impl FnMut(&mut T) -> Result<Option<Got>>,
) -> Result<Instant> {
    // (When the last of its pipes brought its last message.)
    let mut end = Instant::now();
    while !items.is_empty() {
        let mut found = false;
        let mut i = 0;
        while i < items.len() {
            let Some(got) = visit(&mut items[i])? else {
                i += 1;
                continue;
            };
            found = true;
            if let Some(at) = tally.took(&got) {
                end = at;
                items.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if !found {
            std::thread::yield_now();
        }
    }
    Ok(end)
}

/// The peer's half of a scale job: dial `job.pipes` pipes, send on all of them, hand the
/// report to `deliver`, then close every pipe.
pub fn serve(job: &Job, deliver: impl FnOnce(Result<PeerReport>)) {
    let rss_before = rss_bytes();
    let options = duct_conn::dial_spin(dial_tls(DialOptions::default(), job), job);
    let mut pipes = Vec::with_capacity(job.pipes);
    while pipes.len() < job.pipes {
        match duct_conn::dial(&job.addr, options.clone()) {
            Ok(pipe) => pipes.push(pipe),
            Err(e) => {
                let n = pipes.len();
                close_all(pipes);
                deliver(Err(e.context(format!("after {n} of {} pipes", job.pipes))));
                return;
            }
        }
    }
    let outcome = send_all(&pipes, job).map(|report| PeerReport {
        rss_before,
        rss_after: rss_bytes(),
        threads_duct: ThreadCount::of_this_process().map(|t| t.duct),
        ..report
    });
    deliver(outcome);
    close_all(pipes);
}

/// The sender: round-robin over `pipes`, one blocking `send_batch` of `job.batch` messages
/// per pipe in turn: the warmup, then the measured phase, then one message flagged last on
/// every pipe.
fn send_all(pipes: &[Pipe], job: &Job) -> Result<PeerReport> {
    let mut payload = vec![0xA5u8; job.size];
    payload[0] = FLAG_MORE;
    let mut last_payload = payload.clone();
    last_payload[0] = FLAG_LAST;
    let mut warmup_payload = payload.clone();
    warmup_payload[0] = FLAG_WARMUP;
    let batch = job.batch.max(1);
    let options = SendOptions::default();
    let send = |pipe: &Pipe, payload: &[u8]| -> Result<u64> {
        if batch == 1 {
            pipe.send_slice(payload, &options)?;
            return Ok(1);
        }
        let mut left = batch;
        while left > 0 {
            let sent = pipe.send_slices(std::iter::repeat_n(payload, left), &options)?;
            if sent == 0 {
                bail!("duct: send_slices accepted none of {left} messages");
            }
            left -= sent.min(left);
        }
        Ok(batch as u64)
    };
    send_rounds(
        pipes,
        job,
        |pipe, warmup| send(pipe, if warmup { &warmup_payload } else { &payload }),
        |pipe| Ok(pipe.send_slice(&last_payload, &options)?),
    )
}

/// A scale sender's loop over `ends` (pipes or sockets), round-robin, one `batch` call (which
/// returns the messages it sent, flagged [`FLAG_WARMUP`] if asked) per end in turn: the
/// warmup (at least [`warmup_messages`], and for [`WARMUP_MIN_TIME`]), then the measured
/// phase (`job.amount`), then one message flagged last on every end (`last`).
pub(crate) fn send_rounds<E>(
    ends: &[E],
    job: &Job,
    mut batch: impl FnMut(&E, bool) -> Result<u64>,
    mut last: impl FnMut(&E) -> Result<()>,
) -> Result<PeerReport> {
    let mut next = 0;
    let mut turn = |warmup: bool| {
        let end = &ends[next];
        next = if next + 1 == ends.len() { 0 } else { next + 1 };
        batch(end, warmup)
    };
    let warmup = warmup_messages(job);
    let warmup_start = Instant::now();
    let mut sent = 0u64;
    while sent < warmup || warmup_start.elapsed() < WARMUP_MIN_TIME {
        sent += turn(true)?;
    }
    let allocs_before = alloc_count();
    let start = Instant::now();
    let mut messages = 0u64;
    let finals = ends.len() as u64;
    loop {
        let done = match job.amount {
            Amount::Messages(total) => messages + finals >= total,
            Amount::Duration(d) => start.elapsed() >= d,
        };
        if done {
            break;
        }
        messages += turn(false)?;
    }
    for end in ends {
        last(end)?;
        messages += 1;
    }
    Ok(PeerReport {
        messages,
        allocs: alloc_count().wrapping_sub(allocs_before),
        ..PeerReport::default()
    })
}

/// Makes sure this process may open the descriptors `pipes` pipes need (two per pipe and
/// end at most, shm's control socket and segment; both ends in this process with
/// `--threads`): raises the soft limit up to the hard one if needed, before the peer process
/// starts (it inherits the limit).
#[cfg(unix)]
pub fn ensure_fd_limit(pipes: usize, ends_here: usize) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let needed = (pipes as u64).saturating_mul(2 * ends_here as u64) + 256;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return Ok(());
    }
    let maximum = limit.maximum.unwrap_or(u64::MAX);
    let raised = rustix::process::Rlimit {
        current: Some(needed.min(maximum)),
        maximum: limit.maximum,
    };
    if needed > maximum || setrlimit(Resource::Nofile, raised).is_err() {
        bail!(
            "--pipes {pipes}: needs about {needed} file descriptors, and this process may open \
             {current} (hard limit {maximum}); raise `ulimit -n` or use fewer --pipes"
        );
    }
    Ok(())
}

/// Off Unix, descriptors are not counted this way.
#[cfg(not(unix))]
pub fn ensure_fd_limit(_pipes: usize, _ends_here: usize) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::{Pattern, System, Transport};

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tduct\nVmPeak:\t  20000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("VmRSS: 12 MB\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().unwrap() > 0);
        } else {
            assert_eq!(rss_bytes(), None);
        }
        assert_eq!(per_pipe(Some(1000), Some(3000), 4), Some(500.0));
        assert_eq!(per_pipe(Some(3000), Some(1000), 1), Some(-2000.0));
        assert_eq!(per_pipe(None, Some(1000), 1), None);
    }

    #[test]
    fn threads_of_duct_and_of_the_bench_are_told_apart() {
        assert!(is_ducts_own("duct-reactor-0"));
        assert!(is_ducts_own("duct-reconnect"));
        assert!(!is_ducts_own("duct-bench-rx-0"));
        assert!(!is_ducts_own("duct-bench-watc"));
        assert!(!is_ducts_own("main"));
        if cfg!(target_os = "linux") {
            let count = ThreadCount::of_this_process().unwrap();
            assert!(count.total >= 1 && count.duct <= count.total, "{count:?}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_receiving_thread_done_first_waits_for_the_closing_cpu_reading() {
        // Threads of this process named `name`, as /proc lists them.
        fn named(name: &str) -> usize {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .filter(|c| c.trim_end() == name)
                .count()
        }
        let tally = Tally::new(2, None);
        let ends = on_threads(vec![0u8, 1], &tally, |group| {
            if group == 1 {
                // Group 0 is long done: its thread is still there for the reading.
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(named("duct-bench-rx-0"), 1, "the thread done first went");
                tally.end.get_or_init(CpuReading::default);
            }
            Ok(Instant::now())
        })
        .unwrap();
        assert_eq!(ends.len(), 2);
        // A failure elsewhere (no closing reading ever) does not keep the others waiting.
        let tally = Tally::new(2, None);
        let r = on_threads(vec![0u8, 1], &tally, |group| {
            if group == 1 {
                std::thread::sleep(Duration::from_millis(20));
                return Err(crate::error::CliError::msg("failed"));
            }
            Ok(Instant::now())
        });
        assert!(r.is_err());
    }

    #[test]
    fn schedstat_is_read_and_split_by_thread_name() {
        assert_eq!(parse_schedstat("123456789 2345 67\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
        let mut cpu = CpuTime::default();
        cpu.add_thread(true, 100);
        cpu.add_thread(false, 20);
        cpu.add_thread(false, 3);
        cpu.add_thread(false, 4000);
        assert_eq!(
            cpu,
            CpuTime {
                duct_ns: 100,
                other_ns: 4023
            }
        );
        if cfg!(target_os = "linux") {
            // Spend some CPU on a thread named as duct names its own, and some on this one.
            let busy = |until: Duration| {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < until {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            };
            let me = std::process::id();
            let before = CpuTime::of_process(me).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::Builder::new()
                .name("duct-cputest".into())
                .spawn(move || {
                    busy(Duration::from_millis(60));
                    tx.send(()).unwrap();
                    // (Alive while the reading is taken: a thread that ended is not listed.)
                    let _ = done_rx.recv();
                })
                .unwrap();
            rx.recv().unwrap();
            busy(Duration::from_millis(30));
            let after = CpuTime::of_process(me).unwrap();
            done_tx.send(()).unwrap();
            t.join().unwrap();
            let duct = after.duct_ns - before.duct_ns;
            // At least half of the 60 ms the duct-* thread spun (the CPU may have been
            // shared), and of this thread's 30 ms in the others. (Tests running beside this
            // one add their threads' time: only lower bounds hold.)
            assert!(duct >= 30_000_000, "{before:?} -> {after:?}");
            assert!(
                after.other_ns - before.other_ns >= 15_000_000,
                "{before:?} -> {after:?}"
            );
            // A process that is not there has no reading.
            assert_eq!(CpuTime::of_process(u32::MAX), None);
        }
    }

    #[test]
    fn cpu_readings_give_the_time_per_message() {
        let at = |duct, other, peer: Option<u64>| CpuReading {
            this: Some(CpuTime {
                duct_ns: duct,
                other_ns: other,
            }),
            peer: peer.map(|p| CpuTime {
                duct_ns: p,
                other_ns: 1000,
            }),
            allocs: 0,
        };
        let start = at(1_000, 2_000, Some(500));
        let end = at(11_000, 7_000, Some(20_500));
        let cpu = end.per_msg_since(&start, 100).unwrap();
        assert_eq!(
            cpu,
            CpuPerMsg {
                duct_ns: 100.0,
                app_ns: 50.0,
                peer_ns: Some(200.0)
            }
        );
        // No peer process (threads of this one): no peer figure; no reading: nothing.
        let cpu = at(11_000, 7_000, None).per_msg_since(&start, 100).unwrap();
        assert_eq!(cpu.peer_ns, None);
        let none = CpuReading::default();
        assert_eq!(none.per_msg_since(&start, 100), None);
        // A thread that ended between the readings takes its time with it: never negative.
        let cpu = at(10, 10, Some(10)).per_msg_since(&start, 100).unwrap();
        assert_eq!(
            (cpu.duct_ns, cpu.app_ns, cpu.peer_ns),
            (0.0, 0.0, Some(0.0))
        );
    }

    #[test]
    fn rounds_combine_to_their_worst() {
        let round = |duct, total, rss: f64| ScaleFigures {
            pipes: 1000,
            threads: Some(ThreadCount { duct, total }),
            rss_per_pipe: Some(rss),
            peer_rss_per_pipe: None,
            peer_threads_duct: Some(duct),
            cpu: Some(CpuPerMsg {
                duct_ns: 100.0 * duct as f64,
                app_ns: 10.0 * total as f64,
                peer_ns: Some(rss / 1000.0),
            }),
        };
        let all = combine(&[
            round(1, 7, 50_000.0),
            round(2, 6, -10.0),
            round(1, 6, 60_000.0),
        ]);
        // CPU: the mean of the rounds (not their worst: a per-message cost, not a peak).
        let cpu = all.cpu.unwrap();
        assert!((cpu.duct_ns - 400.0 / 3.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.app_ns - 190.0 / 3.0).abs() < 1e-9, "{cpu:?}");
        assert!(
            (cpu.peer_ns.unwrap() - 109.99 / 3.0).abs() < 1e-9,
            "{cpu:?}"
        );
        // A round without the peer's figure leaves the mean without it.
        let mut partial = round(1, 6, 1000.0);
        partial.cpu.as_mut().unwrap().peer_ns = None;
        let mixed = combine(&[round(1, 6, 1000.0), partial]).cpu.unwrap();
        assert_eq!(mixed.peer_ns, None);
        assert_eq!(mixed.duct_ns, 100.0);
        assert_eq!(all.pipes, 1000);
        assert_eq!(all.threads, Some(ThreadCount { duct: 2, total: 7 }));
        assert_eq!(all.rss_per_pipe, Some(60_000.0));
        assert_eq!(all.peer_rss_per_pipe, None);
        assert_eq!(all.peer_threads_duct, Some(2));
        assert_eq!(combine(&[]), ScaleFigures::default());
    }

    #[test]
    fn warmup_covers_every_pipe() {
        let job = Job {
            system: System::Duct,
            transport: Transport::Uds,
            pattern: Pattern::Scale,
            size: 64,
            warmup: 2000,
            batch: send_batch(64),
            amount: Amount::Messages(10),
            reliable: false,
            spin: false,
            alloc: false,
            tls_ca: None,
            pipes: 1000,
            addr: String::new(),
        };
        assert_eq!(job.batch, MAX_SEND_BATCH);
        assert_eq!(warmup_messages(&job), 1000 * MAX_SEND_BATCH as u64);
        assert_eq!(warmup_messages(&Job { pipes: 1, ..job }), 2000);
        assert_eq!(send_batch(4), 4);
        assert_eq!(rx_threads(1), 1);
        assert_eq!(rx_threads(1000), RX_THREADS);
    }

    /// A scale run and its reference through the bench's own path (job line, peer thread),
    /// briefly, both ways of receiving: every message counted, the figures filled in on
    /// Linux.
    #[test]
    fn scale_runs_through_a_thread_peer() {
        let mut peer = Peer::threads(None);
        for (pipes, how) in [
            (20, Receive::Async),
            (1, Receive::Async),
            (20, Receive::Sweep),
            (1, Receive::Sweep),
        ] {
            let mut job = Job {
                system: System::Duct,
                transport: Transport::Uds,
                pattern: Pattern::Scale,
                size: 64,
                warmup: 100,
                batch: send_batch(64),
                amount: Amount::Messages(5000),
                reliable: false,
                spin: false,
                alloc: false,
                tls_ca: None,
                pipes,
                addr: String::new(),
            };
            let (run, figures) = run(&mut peer, &mut job, None, how).unwrap();
            assert!(job.addr.starts_with("uds://@duct-bench-"), "{}", job.addr);
            assert!(run.msgs_per_sec > 0.0, "{run:?}");
            assert!(run.messages >= 5000 - MAX_SEND_BATCH as u64, "{run:?}");
            assert_eq!(figures.pipes, pipes);
            if cfg!(target_os = "linux") {
                let threads = figures.threads.unwrap();
                assert!(threads.duct >= 1, "{figures:?}");
                assert!(figures.rss_per_pipe.is_some() && figures.peer_rss_per_pipe.is_some());
                assert!(figures.peer_threads_duct.unwrap() >= 1, "{figures:?}");
            }
        }
        peer.finish();
    }
}
