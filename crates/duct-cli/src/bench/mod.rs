//! `duct bench`: duct beside a raw-socket baseline, same workload, same process layout,
//! same CPU placement, in alternating rounds of one run (BENCH.md).
//!
//! The pieces, in the order a run goes through them:
//! - [`spec`]: what is measured (systems, transports, patterns, sizes, amounts) and the
//!   [`spec::Job`] handed to the peer;
//! - [`peer`]: the far end — a child process (this executable as `duct bench-peer`) or a
//!   thread — and the watchdog that bounds every run;
//! - [`raw`] and [`duct_conn`]: the two systems behind one trait, and [`workload`]: the
//!   ping-pong and stream loops written once over that trait; [`mixed`]: duct's mixed
//!   pattern (a realtime ping-pong beside a bulk sender on another channel of the pipe);
//!   [`scale`]: duct's scale pattern (many pipes on one listener, beside one pipe);
//!   [`tls`]: the certificates made for a run with tls, and the raw baseline's rustls side;
//!   [`shm`] (Linux): the raw baseline of shm, a ring in a shared segment with futex
//!   wake-ups (or spinning, `--spin`);
//! - [`stats`]: percentiles, medians and round-by-round ratios; [`report`]: the table and
//!   the JSON; [`plot`]: the SVG; [`pin`]: CPU placement.
//!
//! The measuring end listens and drives (ping-pong client, stream sender); the peer dials
//! and serves (echo, stream receiver, which measures the rate and reports it back). Scale
//! turns the stream around: the measuring end, which holds the many pipes and whose threads
//! and memory are counted, receives and measures; the peer dials them all and sends.
//!
//! With `--reliable`, each round of a pingpong or stream case runs duct twice, on a
//! realtime channel (duct's default) and then on a reliable one (configured on both ends),
//! before raw: so reliable ÷ realtime is taken round by round, like duct ÷ raw.
//!
//! `--spin` applies to shm: both ends of both systems spin and never park (duct with
//! `spin(Duration::MAX)`, the raw baseline likewise, see [`shm`]).
//!
//! `--alloc` applies to duct's pingpong and stream: its sending end builds every message
//! with `Pipe::alloc` (see [`duct_conn`]) and reports its copy counters; raw is unchanged.

pub mod duct_conn;
pub mod mixed;
pub mod peer;
pub mod pin;
pub mod plot;
pub mod raw;
pub mod report;
pub mod scale;
#[cfg(unix)]
pub mod scale_raw;
#[cfg(target_os = "linux")]
pub mod shm;
pub mod spec;
pub mod stats;
pub mod tls;
pub mod workload;

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cli::{BackendArg, BenchArgs, PinArg, ScaleReceiveArg};
use crate::error::{bail, CliError, Context, Result};

use self::duct_conn::DuctConn;
use self::mixed::BulkSender;
use self::peer::{Peer, Watchdog};
use self::raw::{RawConn, RawListener};
use self::report::{CaseResult, Host, Loaded, RawScale, Reliable, RunConfig, Scale};
use self::scale::ScaleFigures;
use self::spec::{Amount, Job, Pattern, System, Transport};
use self::stats::RunResult;
use self::tls::{listen_tls, BenchCerts, TlsSetup};
use self::workload::{drive_pingpong, drive_stream, MsgConn, Plan};

/// Measured time per round and system when neither `--messages` nor `--duration` is
/// given: 8 cases (tcp, uds, shm, tls × pingpong, stream) × 3 rounds × 2 systems × 0.5 s
/// keeps the default tour near 25 s (less where shm or duct's TLS is missing).
pub const DEFAULT_DURATION: Duration = Duration::from_millis(500);

/// How long a waiting end of the raw shm baseline spins before it parks on the futex: the
/// same as duct's default `spin` on shm (`DEFAULT_SHM_SPIN`, 20 µs, in
/// crates/duct/src/options.rs), so that both systems wait alike and the ratio measures
/// everything else. Keep the two equal.
pub const SHM_SPIN_BEFORE_PARK: Duration = Duration::from_micros(20);

/// How long the measuring end waits for the peer to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `duct bench` with `args`: the rounds, then the table on stdout, then the files.
pub fn run(args: BenchArgs) -> Result<()> {
    reject_unimplemented(&args)?;
    choose_backend(args.backend)?;
    let mut transports = Vec::new();
    let mut skipped = Vec::new();
    for &t in &args.transport.transports {
        if t.available() {
            transports.push(t);
        } else {
            skipped.push(t.name());
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "duct bench: {}: not available yet, skipped",
            skipped.join(", ")
        );
    }
    // tls: certificates for this run (removed when `tls` drops), if duct speaks TLS.
    let tls = if transports.contains(&Transport::Tls) {
        let certs = BenchCerts::generate()?;
        if tls::duct_has_tls(&certs)? {
            Some(TlsSetup::new(certs)?)
        } else {
            eprintln!("duct bench: tls: not available in this build of duct, skipped");
            transports.retain(|&t| t != Transport::Tls);
            None
        }
    } else {
        None
    };
    if transports.is_empty() {
        bail!(
            "no transport left to measure (available: tcp, uds, shm on Linux, and tls where \
             duct has TLS)"
        );
    }
    if args.spin && !transports.contains(&Transport::Shm) {
        eprintln!("duct bench: --spin: applies to shm only, which this run leaves out");
    } else if args.spin && args.pin == PinArg::Same {
        eprintln!(
            "duct bench: --spin with --pin same: both ends spin on one CPU, so every wait lasts \
             until the scheduler preempts the spinner"
        );
    }
    let scale_receive = match args.scale_receive {
        ScaleReceiveArg::Async => scale::Receive::Async,
        ScaleReceiveArg::Sweep => scale::Receive::Sweep,
    };
    let amount = match (args.messages, args.duration) {
        (Some(n), _) => Amount::Messages(n),
        (None, Some(d)) => Amount::Duration(d),
        (None, None) => Amount::Duration(DEFAULT_DURATION),
    };
    let batch = args.batch.map(|b| usize::try_from(b).unwrap_or(usize::MAX));
    // Open the output files first: better to fail now than after minutes of measuring.
    let json_file = args.json.as_deref().map(create_output).transpose()?;
    let plot_file = match args.plot.as_deref() {
        Some(path) => {
            if path.extension().and_then(|e| e.to_str()) != Some("svg") {
                bail!("--plot: only SVG output is supported (give a FILE.svg)");
            }
            Some(create_output(path)?)
        }
        None => None,
    };

    let host = Host::detect(); // Before pinning, which narrows what this process sees.
    let (driver_cpu, peer_cpu) = pin::plan(args.pin)?;
    if let Some(cpu) = driver_cpu {
        pin::pin_current_thread(cpu)?;
    }
    if args.pattern.0.contains(&Pattern::Scale) {
        let ends_here = if args.threads { 2 } else { 1 };
        // (With the raw baseline, the pipes of one run are closed before the next opens.)
        scale::ensure_fd_limit(args.pipes, ends_here)?;
    }
    let watchdog = Watchdog::start()?;
    if let Some(tls) = &tls {
        watchdog.remove_on_timeout(tls.certs().dir().to_path_buf());
    }
    let mut peer = if args.threads {
        Peer::threads(peer_cpu)
    } else {
        Peer::spawn_child(peer_cpu)?
    };
    watchdog.set_child(peer.child_handle());
    let config = RunConfig {
        rounds: args.rounds,
        amount,
        warmup: args.warmup,
        pin: match args.pin {
            PinArg::None => "none",
            PinArg::Same => "same",
            PinArg::Split => "split",
        },
        processes: peer.processes(),
        batch,
        bulk_rate: args.bulk_rate,
        spin: args.spin,
        alloc: args.alloc,
    };

    let baseline = !args.no_baseline;
    if args.reliable && args.pattern.0.contains(&Pattern::Mixed) {
        eprintln!("duct bench: --reliable: mixed runs on realtime channels only");
    }
    if args.reliable && args.pattern.0.contains(&Pattern::Scale) {
        eprintln!("duct bench: --reliable: scale runs on realtime channels only");
    }
    if args.alloc
        && args
            .pattern
            .0
            .iter()
            .any(|p| matches!(p, Pattern::Mixed | Pattern::Scale))
    {
        eprintln!(
            "duct bench: --alloc: applies to pingpong and stream; mixed and scale send as before"
        );
    }
    let mut cases = Vec::new();
    for &transport in &transports {
        for &pattern in &args.pattern.0 {
            for &size in &args.size.0 {
                cases.push((transport, pattern, size));
            }
        }
    }
    let total_runs: usize = cases
        .iter()
        .map(|&(transport, pattern, _)| {
            legs(pattern, transport, baseline, args.reliable).len() * args.rounds as usize
        })
        .sum();
    let mut progress = Progress::new(total_runs);
    let started = Instant::now();
    let mut results = Vec::new();
    for &(transport, pattern, size) in &cases {
        let legs = legs(pattern, transport, baseline, args.reliable);
        let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); legs.len()];
        let mut figures: Vec<Vec<ScaleFigures>> = vec![Vec::new(); legs.len()];
        let mut bulk_rates = Vec::new();
        for round in 1..=args.rounds {
            for (i, &leg) in legs.iter().enumerate() {
                let mut job = Job {
                    system: leg.system(),
                    transport,
                    pattern: leg.pattern(pattern),
                    size,
                    warmup: args.warmup,
                    batch: if pattern == Pattern::Scale {
                        scale::send_batch(config.batch_for(size))
                    } else {
                        config.batch_for(size)
                    },
                    amount,
                    reliable: leg == Leg::DuctReliable,
                    spin: args.spin && transport == Transport::Shm,
                    alloc: args.alloc
                        && leg.system() == System::Duct
                        && matches!(pattern, Pattern::PingPong | Pattern::Stream),
                    tls_ca: match (&tls, transport) {
                        (Some(tls), Transport::Tls) => Some(tls.ca_for_job().to_string()),
                        _ => None,
                    },
                    pipes: match (pattern, leg) {
                        (Pattern::Scale, Leg::Duct | Leg::Raw) => args.pipes,
                        _ => 1,
                    },
                    addr: String::new(),
                };
                let label = format!(
                    "{}{} round {round}/{}",
                    job.label(),
                    leg.label_suffix(pattern),
                    args.rounds
                );
                progress.step(&label);
                watchdog.arm(run_timeout(&job, leg == Leg::DuctLoaded), label.clone());
                let outcome = match job.pattern {
                    Pattern::Mixed => {
                        let loaded = leg == Leg::DuctLoaded;
                        run_mixed(&mut peer, &mut job, loaded, args.bulk_rate, tls.as_ref())
                            .map(|(run, bulk_rate)| (run, bulk_rate, None))
                    }
                    Pattern::Scale => run_scale(&mut peer, &mut job, tls.as_ref(), scale_receive)
                        .map(|(run, f)| (run, 0.0, Some(f))),
                    Pattern::PingPong | Pattern::Stream => {
                        run_one(&mut peer, &mut job, tls.as_ref()).map(|run| (run, 0.0, None))
                    }
                };
                watchdog.disarm();
                match outcome {
                    Ok((run, bulk_rate, scale_figures)) => {
                        runs[i].push(run);
                        if leg == Leg::DuctLoaded {
                            bulk_rates.push(bulk_rate);
                        }
                        figures[i].extend(scale_figures);
                    }
                    Err(e) => {
                        progress.clear();
                        return Err(e.context(format!("bench failed in {label}")));
                    }
                }
            }
        }
        let runs_of = |leg: Leg| legs.iter().position(|&l| l == leg).map(|i| &runs[i]);
        let duct_runs = runs_of(Leg::Duct).expect("every case runs duct");
        let raw_runs = runs_of(Leg::Raw);
        let raw = raw_runs.map(|r| stats::summarize(System::Raw, r, size));
        // Mixed: raw ran a plain ping-pong, a reference rather than the same workload.
        let ratios = raw_runs
            .filter(|_| pattern != Pattern::Mixed)
            .map(|r| stats::ratios(pattern, duct_runs, r));
        let figures_of = |leg: Leg| legs.iter().position(|&l| l == leg).map(|i| &figures[i]);
        let combined = |leg: Leg| scale::combine(figures_of(leg).map_or(&[][..], Vec::as_slice));
        let loaded = runs_of(Leg::DuctLoaded).map(|loaded_runs| Loaded {
            duct: stats::summarize(System::Duct, loaded_runs, size),
            bulk_msgs_per_sec: stats::median(&bulk_rates),
            vs_idle: stats::ratios(Pattern::Mixed, loaded_runs, duct_runs),
        });
        let scale = runs_of(Leg::DuctOnePipe).map(|one_runs| Scale {
            pipes: args.pipes,
            batch: scale::send_batch(config.batch_for(size)),
            rx_threads: scale::rx_threads(args.pipes),
            receive: scale_receive,
            many: combined(Leg::Duct),
            one_pipe: stats::summarize(System::Duct, one_runs, size),
            one: combined(Leg::DuctOnePipe),
            vs_one_pipe: stats::ratios(Pattern::Scale, duct_runs, one_runs),
            raw: raw_runs
                .zip(runs_of(Leg::RawOnePipe))
                .map(|(raw_runs, raw_one_runs)| RawScale {
                    many: combined(Leg::Raw),
                    one_pipe: stats::summarize(System::Raw, raw_one_runs, size),
                    one: combined(Leg::RawOnePipe),
                    vs_one_pipe: stats::ratios(Pattern::Scale, raw_runs, raw_one_runs),
                    duct_vs_raw_one_pipe: stats::ratios(Pattern::Scale, one_runs, raw_one_runs),
                }),
        });
        let reliable = runs_of(Leg::DuctReliable).map(|reliable_runs| Reliable {
            duct: stats::summarize(System::Duct, reliable_runs, size),
            vs_realtime: stats::ratios(pattern, reliable_runs, duct_runs),
            vs_raw: raw_runs.map(|r| stats::ratios(pattern, reliable_runs, r)),
        });
        results.push(CaseResult {
            transport,
            pattern,
            size,
            duct: stats::summarize(System::Duct, duct_runs, size),
            raw,
            ratios,
            loaded,
            reliable,
            scale,
        });
    }
    progress.clear();
    peer.finish();
    drop(watchdog);
    eprintln!(
        "duct bench: {} runs in {:.1} s",
        progress.total,
        started.elapsed().as_secs_f64()
    );

    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report::to_table(&config, &results).as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the table")?;
    drop(stdout);
    if let (Some((mut file, path)), Some(p)) = (json_file, args.json.as_deref()) {
        let text = report::to_json(env!("CARGO_PKG_VERSION"), &host, &config, &results);
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("duct bench: results written to {}", p.display());
    }
    if let Some((mut file, path)) = plot_file {
        match plot::to_svg(&results) {
            Some(svg) => {
                file.write_all(svg.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("duct bench: plot written to {}", path.display());
            }
            None => eprintln!("duct bench: --plot: no pingpong case, so nothing to plot"),
        }
    }
    Ok(())
}

/// One system's part of a case, run once per round, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// duct on the case's pattern (mixed: the idle run, bulk sender off), on a realtime
    /// channel.
    Duct,
    /// `--reliable`, pingpong and stream: duct again, its channel reliable on both ends.
    DuctReliable,
    /// Mixed only: duct with the bulk sender on.
    DuctLoaded,
    /// Scale only: duct's reference, the same traffic on one pipe (the `Duct` leg of a
    /// scale case has `--pipes` pipes).
    DuctOnePipe,
    /// The raw baseline (mixed: a plain ping-pong, as the idle reference; scale: on
    /// `--pipes` sockets).
    Raw,
    /// Scale only: the raw baseline's reference, the same traffic on one socket.
    RawOnePipe,
}

impl Leg {
    fn system(self) -> System {
        match self {
            Leg::Duct | Leg::DuctReliable | Leg::DuctLoaded | Leg::DuctOnePipe => System::Duct,
            Leg::Raw | Leg::RawOnePipe => System::Raw,
        }
    }

    /// The pattern the peer is asked to serve: raw sockets have no channels, so their
    /// part of a mixed case is a plain ping-pong.
    fn pattern(self, case: Pattern) -> Pattern {
        match (self, case) {
            (Leg::Raw, Pattern::Mixed) => Pattern::PingPong,
            (_, pattern) => pattern,
        }
    }

    /// What the progress line adds to the job's label (which says `reliable` and a scale
    /// job's pipes itself).
    fn label_suffix(self, case: Pattern) -> &'static str {
        match (self, case) {
            (_, Pattern::PingPong | Pattern::Stream | Pattern::Scale) | (Leg::DuctReliable, _) => {
                ""
            }
            (Leg::Duct, Pattern::Mixed) => " idle",
            (Leg::DuctLoaded, Pattern::Mixed) => " loaded",
            (Leg::Raw, Pattern::Mixed) => " (mixed's idle reference)",
            (Leg::DuctOnePipe | Leg::RawOnePipe, Pattern::Mixed) => "",
        }
    }
}

/// The legs of a case: duct, (`--reliable`, pingpong and stream: duct reliable,) (mixed:
/// duct loaded,) then raw unless `--no-baseline`. Scale: duct on `--pipes` pipes, then duct on
/// one pipe, then (unless `--no-baseline`, on tcp and uds: [`scale_raw`]) raw on `--pipes`
/// sockets and on one.
fn legs(pattern: Pattern, transport: Transport, baseline: bool, reliable: bool) -> Vec<Leg> {
    if pattern == Pattern::Scale {
        let mut legs = vec![Leg::Duct, Leg::DuctOnePipe];
        if baseline && raw_scale_runs_on(transport) {
            legs.extend([Leg::Raw, Leg::RawOnePipe]);
        }
        return legs;
    }
    let mut legs = vec![Leg::Duct];
    if pattern == Pattern::Mixed {
        legs.push(Leg::DuctLoaded);
    } else if reliable {
        legs.push(Leg::DuctReliable);
    }
    if baseline {
        legs.push(Leg::Raw);
    }
    legs
}

/// Whether the scale pattern has a raw baseline on `transport` (tcp and uds, on Unix).
fn raw_scale_runs_on(transport: Transport) -> bool {
    #[cfg(unix)]
    return scale_raw::supports(transport);
    #[cfg(not(unix))]
    return {
        let _ = transport;
        false
    };
}

/// One scale run, duct's or the raw baseline's as `job.system` says.
fn run_scale(
    peer: &mut Peer,
    job: &mut Job,
    tls: Option<&TlsSetup>,
    how: scale::Receive,
) -> Result<(RunResult, ScaleFigures)> {
    match job.system {
        System::Duct => scale::run(peer, job, tls, how),
        #[cfg(unix)]
        System::Raw => scale_raw::run(peer, job, how),
        #[cfg(not(unix))]
        System::Raw => bail!("the scale pattern has no raw baseline here"),
    }
}

fn reject_unimplemented(args: &BenchArgs) -> Result<()> {
    if args.channels != 1 {
        bail!(
            "--channels {}: not implemented yet (duct bench measures one channel)",
            args.channels
        );
    }
    Ok(())
}

/// `--backend`: duct's reactor backend here, and in the peer process (this executable
/// started again, which reads `DUCT_BACKEND`). `auto` leaves duct's default (and a
/// `DUCT_BACKEND` the user set) alone.
fn choose_backend(backend: BackendArg) -> Result<()> {
    let chosen = match backend {
        BackendArg::Auto => return Ok(()),
        BackendArg::Epoll => duct::Backend::Epoll,
        BackendArg::Uring => duct::Backend::Uring,
    };
    // Before any thread or pipe of this run exists.
    std::env::set_var("DUCT_BACKEND", chosen.as_str());
    duct::set_backend(chosen).map_err(|e| CliError::msg(format!("--backend: {e}")))
}

fn create_output(path: &Path) -> Result<(File, std::path::PathBuf)> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok((file, path.to_path_buf()))
}

/// Bounds one run for the watchdog: a minute, plus 200 µs and 50 ns per byte for each
/// message counted in advance, plus four times a `--duration` — far above what loopback
/// needs, so that only a hang trips it.
///
/// Mixed: the warmup is bounded by [`mixed::WARMUP_LIMIT`] instead of counted; a `loaded`
/// round trip is allowed half a second, as a ping may wait behind the whole bulk backlog
/// (4 MiB by default) when priority does not act.
fn run_timeout(job: &Job, loaded: bool) -> Duration {
    let mut per_msg_ns = 200_000u64.saturating_add(50u64.saturating_mul(job.size as u64));
    let mut warmup = job.warmup;
    let mut timeout = Duration::from_secs(60);
    if job.pattern == Pattern::Scale {
        // Dialing and accepting each pipe, and at least a batch per pipe of warmup.
        warmup = scale::warmup_messages(job);
        timeout +=
            Duration::from_millis(20).saturating_mul(u32::try_from(job.pipes).unwrap_or(u32::MAX));
    }
    if job.pattern == Pattern::Mixed {
        warmup = 0;
        timeout += mixed::WARMUP_LIMIT;
        if loaded {
            per_msg_ns = 500_000_000;
        }
    }
    let counted = warmup.saturating_add(match job.amount {
        Amount::Messages(n) => n,
        Amount::Duration(_) => 0,
    });
    timeout += Duration::from_nanos(per_msg_ns.saturating_mul(counted));
    if let Amount::Duration(d) = job.amount {
        timeout += d * 4;
    }
    timeout
}

/// A fresh abstract socket name for a uds run: `@duct-bench-<pid>-<n>`.
fn uds_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "@duct-bench-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One run: listen, start the peer on `job`, accept, drive, collect the peer's report.
/// `tls`: the run's certificates, for tls jobs.
fn run_one(peer: &mut Peer, job: &mut Job, tls: Option<&TlsSetup>) -> Result<RunResult> {
    let plan = Plan {
        warmup: job.warmup,
        amount: job.amount,
        batch: job.batch,
    };
    match job.system {
        System::Raw if job.transport == Transport::Shm => run_raw_shm(peer, job, &plan),
        System::Raw => {
            let (listener, addr) = match tls {
                Some(tls) if job.transport == Transport::Tls => {
                    RawListener::bind_tls(tls.raw_server_config())?
                }
                _ => RawListener::bind(job.transport, &uds_name())?,
            };
            job.addr = addr;
            peer.start(job)?;
            let stream = listener.accept(CONNECT_TIMEOUT, || peer.check())?;
            drop(listener);
            let mut conn = RawConn::new(stream, job.size)?;
            drive(&mut conn, job, &plan, peer)
        }
        System::Duct => {
            let addr = duct_conn::listen_addr(job.transport, &uds_name())?;
            let options = listen_tls(duct_conn::listen_options(job.reliable), job, tls);
            let options = duct_conn::listen_spin(options, job);
            let (listener, bound) = duct_conn::listen(&addr, options)?;
            job.addr = bound;
            peer.start(job)?;
            let pipe = duct_conn::accept(&listener, CONNECT_TIMEOUT, || peer.check())?;
            let mut conn = DuctConn::new(pipe, job.size, job.batch).with_alloc(job.alloc);
            let outcome = drive(&mut conn, job, &plan, peer).map(|run| RunResult {
                copies: conn.copies(), // The peer has received everything: all is counted.
                ..run
            });
            conn.close();
            drop(listener);
            outcome
        }
    }
}

/// One run of the raw shm baseline (see [`shm`]): listen on a fresh rendezvous socket,
/// start the peer, accept it and pass it a segment, drive.
#[cfg(target_os = "linux")]
fn run_raw_shm(peer: &mut Peer, job: &mut Job, plan: &Plan) -> Result<RunResult> {
    let (listener, addr) = shm::RawShmListener::bind(uds_name().trim_start_matches('@'))?;
    job.addr = addr;
    peer.start(job)?;
    let mut conn = listener.accept(CONNECT_TIMEOUT, || peer.check(), shm::RawShmRun::of(job))?;
    drop(listener);
    drive(&mut conn, job, plan, peer)
}

#[cfg(not(target_os = "linux"))]
fn run_raw_shm(_peer: &mut Peer, _job: &mut Job, _plan: &Plan) -> Result<RunResult> {
    bail!("the raw shm baseline is Linux only")
}

/// One mixed run of duct (see [`mixed`]): listen with both channels configured, start the
/// peer on `job`, accept; if `loaded`, start the bulk sender on a clone of the pipe; then
/// warm up and drive the realtime ping-pong, stop the bulk sender, and collect the peer's
/// report. Returns the run and the bulk receive rate in messages/s (0 when idle).
fn run_mixed(
    peer: &mut Peer,
    job: &mut Job,
    loaded: bool,
    bulk_rate: Option<f64>,
    tls: Option<&TlsSetup>,
) -> Result<(RunResult, f64)> {
    let addr = duct_conn::listen_addr(job.transport, &uds_name())?;
    let options = listen_tls(mixed::listen_options(bulk_rate), job, tls);
    let options = duct_conn::listen_spin(options, job);
    let (listener, bound) = duct_conn::listen(&addr, options)?;
    job.addr = bound;
    peer.start(job)?;
    let pipe = duct_conn::accept(&listener, CONNECT_TIMEOUT, || peer.check())?;
    let bulk = if loaded {
        Some(BulkSender::start(pipe.clone())?)
    } else {
        None
    };
    let mut conn = DuctConn::new(pipe, job.size, 1).on_channel(mixed::REALTIME_CHANNEL);
    let outcome = drive_mixed(&mut conn, job, bulk, peer);
    // Whatever bulk is still queued is of no interest: close without lingering over it.
    conn.close_now();
    drop(listener);
    outcome
}

fn drive_mixed(
    conn: &mut DuctConn,
    job: &Job,
    bulk: Option<BulkSender>,
    peer: &mut Peer,
) -> Result<(RunResult, f64)> {
    let plan = Plan {
        warmup: 0, // Done by mixed::warm_up, bounded in time.
        amount: job.amount,
        batch: 1,
    };
    let driven =
        mixed::warm_up(conn, job.size, job.warmup).and_then(|_| drive_pingpong(conn, &plan));
    // Stop the bulk sender first: the peer stops reading at the last ping.
    let bulk_sent = bulk.map(BulkSender::stop).transpose();
    let out = driven.map_err(|e| with_peer_error(e, peer))?;
    bulk_sent?;
    let report = peer.wait(Duration::from_secs(30))?;
    if report.elapsed_ns == 0 {
        bail!("too few round trips to measure (use more --messages or a longer --duration)");
    }
    let bulk_msgs = report.rate_messages;
    let bulk_rate = bulk_msgs as f64 * 1e9 / report.elapsed_ns as f64;
    Ok((
        RunResult {
            messages: out.messages,
            msgs_per_sec: out.messages as f64 / out.elapsed.as_secs_f64().max(1e-9),
            // Per message of either channel; this end's count includes the bulk sender's.
            allocs_per_msg: per_msg(out.allocs, out.messages + bulk_msgs)
                .max(per_msg(report.allocs, report.messages + bulk_msgs)),
            rtt: Some(out.rtt),
            copies: None,
        },
        bulk_rate,
    ))
}

fn per_msg(count: u64, messages: u64) -> f64 {
    if messages == 0 {
        0.0
    } else {
        count as f64 / messages as f64
    }
}

/// The measuring end's loop, then the peer's report, combined into a [`RunResult`].
fn drive<C: MsgConn>(conn: &mut C, job: &Job, plan: &Plan, peer: &mut Peer) -> Result<RunResult> {
    let report_timeout = Duration::from_secs(30);
    match job.pattern {
        Pattern::PingPong => {
            let out = drive_pingpong(conn, plan).map_err(|e| with_peer_error(e, peer))?;
            let report = peer.wait(report_timeout)?;
            Ok(RunResult {
                messages: out.messages,
                msgs_per_sec: out.messages as f64 / out.elapsed.as_secs_f64().max(1e-9),
                allocs_per_msg: per_msg(out.allocs, out.messages)
                    .max(per_msg(report.allocs, report.messages)),
                rtt: Some(out.rtt),
                copies: None,
            })
        }
        Pattern::Mixed => bail!("mixed runs through run_mixed"),
        Pattern::Scale => bail!("scale runs through scale::run"),
        Pattern::Stream => {
            let out = drive_stream(conn, plan).map_err(|e| with_peer_error(e, peer))?;
            let report = peer.wait(report_timeout)?;
            if report.rate_messages == 0 || report.elapsed_ns == 0 {
                bail!(
                    "too few messages arrived after the warmup to measure a rate \
                     (use more --messages or a longer --duration)"
                );
            }
            Ok(RunResult {
                rtt: None,
                messages: report.messages,
                msgs_per_sec: report.rate_messages as f64 * 1e9 / report.elapsed_ns as f64,
                allocs_per_msg: per_msg(out.allocs, out.messages)
                    .max(per_msg(report.allocs, report.messages)),
                copies: None,
            })
        }
    }
}

/// When the measuring end fails, the peer has usually failed too, and says why.
fn with_peer_error(e: CliError, peer: &mut Peer) -> CliError {
    match peer.wait(Duration::from_secs(2)) {
        Err(peer_error) => CliError::msg(format!("{e} ({peer_error})")),
        Ok(_) => e,
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line per run
/// otherwise.
struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn step(&mut self, what: &str) {
        self.done += 1;
        let line = format!("[{}/{}] {what} ...", self.done, self.total);
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::Transport;

    /// A job of `system` over `transport` with `pattern`: 64 B, no warmup, batch 64, one
    /// message, realtime, no spin, no TLS, no address yet. Tests change what they test.
    fn job(system: System, transport: Transport, pattern: Pattern) -> Job {
        Job {
            system,
            transport,
            pattern,
            size: 64,
            warmup: 0,
            batch: 64,
            amount: Amount::Messages(1),
            reliable: false,
            spin: false,
            alloc: false,
            tls_ca: None,
            pipes: 1,
            addr: String::new(),
        }
    }

    #[test]
    fn timeouts_grow_with_the_work() {
        let job = Job {
            amount: Amount::Messages(1000),
            ..job(System::Duct, Transport::Tcp, Pattern::PingPong)
        };
        let small = run_timeout(&job, false);
        assert!(small >= Duration::from_secs(60));
        let big = run_timeout(
            &Job {
                amount: Amount::Messages(10_000_000),
                ..job.clone()
            },
            false,
        );
        assert!(big > small);
        let timed = run_timeout(
            &Job {
                amount: Amount::Duration(Duration::from_secs(10)),
                ..job.clone()
            },
            false,
        );
        assert!(timed >= Duration::from_secs(100));
        // Mixed: a huge --warmup does not count (it is bounded in time), and a loaded
        // round trip gets far more room than an idle one.
        let mixed = Job {
            pattern: Pattern::Mixed,
            warmup: 1_000_000_000,
            ..job
        };
        let idle = run_timeout(&mixed, false);
        assert!(idle < Duration::from_secs(70), "{idle:?}");
        assert!(run_timeout(&mixed, true) >= Duration::from_secs(500));
    }

    #[test]
    fn mixed_cases_run_idle_loaded_and_the_raw_reference() {
        assert_eq!(
            legs(Pattern::PingPong, Transport::Tcp, true, false),
            vec![Leg::Duct, Leg::Raw]
        );
        assert_eq!(
            legs(Pattern::Stream, Transport::Tcp, false, false),
            vec![Leg::Duct]
        );
        assert_eq!(
            legs(Pattern::Mixed, Transport::Tcp, true, false),
            vec![Leg::Duct, Leg::DuctLoaded, Leg::Raw]
        );
        assert_eq!(
            legs(Pattern::Mixed, Transport::Tcp, false, false),
            vec![Leg::Duct, Leg::DuctLoaded]
        );
        assert_eq!(Leg::Raw.pattern(Pattern::Mixed), Pattern::PingPong);
        assert_eq!(Leg::DuctLoaded.pattern(Pattern::Mixed), Pattern::Mixed);
        assert_eq!(Leg::Raw.pattern(Pattern::Stream), Pattern::Stream);
        assert_eq!(Leg::DuctLoaded.system(), System::Duct);
    }

    #[test]
    fn scale_cases_run_n_pipes_then_one_pipe_then_raw_where_it_runs() {
        let raw_too = vec![Leg::Duct, Leg::DuctOnePipe, Leg::Raw, Leg::RawOnePipe];
        let duct_only = vec![Leg::Duct, Leg::DuctOnePipe];
        for transport in [Transport::Tcp, Transport::Uds] {
            let expected = if cfg!(unix) { &raw_too } else { &duct_only };
            assert_eq!(&legs(Pattern::Scale, transport, true, false), expected);
            assert_eq!(&legs(Pattern::Scale, transport, true, true), expected);
            assert_eq!(legs(Pattern::Scale, transport, false, false), duct_only);
        }
        for transport in [Transport::Tls, Transport::Shm] {
            assert_eq!(legs(Pattern::Scale, transport, true, false), duct_only);
        }
        assert_eq!(Leg::RawOnePipe.system(), System::Raw);
        assert_eq!(Leg::RawOnePipe.label_suffix(Pattern::Scale), "");
        assert_eq!(Leg::DuctOnePipe.system(), System::Duct);
        assert_eq!(Leg::DuctOnePipe.pattern(Pattern::Scale), Pattern::Scale);
        assert_eq!(Leg::DuctOnePipe.label_suffix(Pattern::Scale), "");
        // Dialing a thousand pipes and a batch of warmup on each get room.
        let one = Job {
            batch: scale::send_batch(64),
            amount: Amount::Duration(Duration::from_millis(500)),
            ..job(System::Duct, Transport::Tcp, Pattern::Scale)
        };
        let many = Job {
            pipes: 1000,
            ..one.clone()
        };
        assert!(run_timeout(&many, false) >= run_timeout(&one, false) + Duration::from_secs(20));
    }

    #[test]
    fn reliable_cases_run_duct_realtime_then_reliable_then_raw() {
        for pattern in [Pattern::PingPong, Pattern::Stream] {
            assert_eq!(
                legs(pattern, Transport::Tcp, true, true),
                vec![Leg::Duct, Leg::DuctReliable, Leg::Raw]
            );
            assert_eq!(
                legs(pattern, Transport::Tcp, false, true),
                vec![Leg::Duct, Leg::DuctReliable]
            );
        }
        // Mixed keeps its realtime channels.
        assert_eq!(
            legs(Pattern::Mixed, Transport::Tcp, true, true),
            legs(Pattern::Mixed, Transport::Tcp, true, false)
        );
        assert_eq!(Leg::DuctReliable.system(), System::Duct);
        assert_eq!(Leg::DuctReliable.pattern(Pattern::Stream), Pattern::Stream);
        assert_eq!(Leg::DuctReliable.label_suffix(Pattern::PingPong), "");
    }

    /// The raw tls baseline through the bench's own path (job line, peer thread, the CA
    /// handed over in the job), briefly: pingpong and stream move what they should.
    #[test]
    fn raw_tls_runs_through_a_thread_peer() {
        let tls = TlsSetup::new(BenchCerts::generate().unwrap()).unwrap();
        let mut peer = Peer::threads(None);
        for (pattern, messages) in [(Pattern::PingPong, 300), (Pattern::Stream, 5000)] {
            let mut job = Job {
                warmup: 50,
                amount: Amount::Messages(messages),
                tls_ca: Some(tls.ca_for_job().to_string()),
                ..job(System::Raw, Transport::Tls, pattern)
            };
            let run = run_one(&mut peer, &mut job, Some(&tls)).unwrap();
            assert!(job.addr.starts_with("tls://127.0.0.1:"), "{}", job.addr);
            assert_eq!(run.messages, messages, "{pattern:?}");
            assert!(run.msgs_per_sec > 0.0, "{pattern:?}");
            assert_eq!(run.rtt.is_some(), pattern == Pattern::PingPong);
            if let Some(rtt) = &run.rtt {
                assert_eq!(rtt.len(), messages);
            }
        }
        peer.finish();
    }

    /// duct over TLS through the same path; needs a duct that speaks TLS.
    #[test]
    fn duct_tls_runs_through_a_thread_peer() {
        let tls = TlsSetup::new(BenchCerts::generate().unwrap()).unwrap();
        assert!(tls::duct_has_tls(tls.certs()).unwrap(), "duct has no TLS");
        let mut peer = Peer::threads(None);
        for reliable in [false, true] {
            for (pattern, messages) in [(Pattern::PingPong, 300), (Pattern::Stream, 5000)] {
                let mut job = Job {
                    warmup: 50,
                    amount: Amount::Messages(messages),
                    reliable,
                    tls_ca: Some(tls.ca_for_job().to_string()),
                    ..job(System::Duct, Transport::Tls, pattern)
                };
                let run = run_one(&mut peer, &mut job, Some(&tls)).unwrap();
                assert!(job.addr.starts_with("tls://127.0.0.1:"), "{}", job.addr);
                assert_eq!(run.messages, messages, "{pattern:?} reliable={reliable}");
            }
        }
        peer.finish();
    }

    /// shm through the bench's own path (job line, peer thread): duct and the raw ring,
    /// parking and spinning; pingpong and stream move what they should.
    #[test]
    #[cfg(target_os = "linux")]
    fn shm_runs_through_a_thread_peer() {
        let mut peer = Peer::threads(None);
        for system in [System::Duct, System::Raw] {
            for spin in [false, true] {
                for (pattern, messages) in [(Pattern::PingPong, 300), (Pattern::Stream, 5000)] {
                    let mut job = Job {
                        warmup: 50,
                        amount: Amount::Messages(messages),
                        spin,
                        ..job(system, Transport::Shm, pattern)
                    };
                    let run = run_one(&mut peer, &mut job, None).unwrap();
                    assert!(job.addr.starts_with("shm://duct-bench-"), "{}", job.addr);
                    assert_eq!(run.messages, messages, "{}", job.label());
                    assert!(run.msgs_per_sec > 0.0, "{}", job.label());
                    assert_eq!(run.rtt.is_some(), pattern == Pattern::PingPong);
                }
            }
        }
        peer.finish();
    }

    /// `--alloc` through the bench's own path (job line, peer thread): on shm every message
    /// the measuring end sends moves without a copy (pingpong and stream, parked and
    /// spinning); on tcp the copy counters stay 0 (duct counts them on shm only) and the
    /// heap buffers show as allocations; without `--alloc` there are no counts.
    #[test]
    fn alloc_runs_through_a_thread_peer() {
        let mut peer = Peer::threads(None);
        let mut cases = vec![(Transport::Tcp, false)];
        if cfg!(target_os = "linux") {
            cases.extend([(Transport::Shm, false), (Transport::Shm, true)]);
        }
        for (transport, spin) in cases {
            // Stream: fewer messages than the pool has 64 KiB slots (128), so that every alloc
            // finds one at once however slowly the receiving thread runs.
            for (pattern, messages) in [(Pattern::PingPong, 300), (Pattern::Stream, 100)] {
                let mut job = Job {
                    size: 64 * 1024,
                    warmup: 20,
                    amount: Amount::Messages(messages),
                    spin,
                    alloc: true,
                    ..job(System::Duct, transport, pattern)
                };
                let run = run_one(&mut peer, &mut job, None).unwrap();
                let label = job.label();
                assert!(label.contains(" alloc "), "{label}");
                assert_eq!(run.messages, messages, "{label}");
                let copies = run.copies.expect("--alloc runs count copies");
                assert_eq!(copies.sent, messages, "{label}");
                assert_eq!(copies.copied_bytes, 0, "{label}");
                assert_eq!(copies.copied_frames, 0, "{label}");
                if transport == Transport::Shm {
                    assert_eq!(copies.zero_copy_frames, messages, "{label}");
                } else {
                    assert_eq!(copies.zero_copy_frames, 0, "{label}");
                    assert!(run.allocs_per_msg >= 1.0, "{label}: {}", run.allocs_per_msg);
                }
            }
        }
        let mut plain = Job {
            amount: Amount::Messages(100),
            ..job(System::Duct, Transport::Tcp, Pattern::Stream)
        };
        assert_eq!(run_one(&mut peer, &mut plain, None).unwrap().copies, None);
        peer.finish();
    }

    #[test]
    fn spin_goes_to_duct_only_on_spinning_jobs() {
        use duct::{DialOptions, ListenOptions};
        let mut job = job(System::Duct, Transport::Shm, Pattern::PingPong);
        let debug = |job: &Job| {
            format!(
                "{:?} {:?}",
                duct_conn::listen_spin(ListenOptions::default(), job),
                duct_conn::dial_spin(DialOptions::default(), job)
            )
        };
        let parked = debug(&job);
        assert!(!parked.contains("spin: Some"), "{parked}");
        job.spin = true;
        let spinning = debug(&job);
        assert_eq!(spinning.matches("spin: Some").count(), 2, "{spinning}");
    }

    #[test]
    fn tls_options_go_only_to_tls_jobs() {
        use duct::{DialOptions, ListenOptions};
        use tls::dial_tls;

        let tls = TlsSetup::new(BenchCerts::generate().unwrap()).unwrap();
        let mut job = job(System::Duct, Transport::Tcp, Pattern::PingPong);
        let plain = format!(
            "{:?}",
            listen_tls(ListenOptions::default(), &job, Some(&tls))
        );
        assert!(plain.contains("tls: None"), "{plain}");
        assert!(format!("{:?}", dial_tls(DialOptions::default(), &job)).contains("tls: None"));
        job.transport = Transport::Tls;
        job.tls_ca = Some(tls.ca_for_job().to_string());
        let server = format!(
            "{:?}",
            listen_tls(ListenOptions::default(), &job, Some(&tls))
        );
        assert!(server.contains("tls: Some"), "{server}");
        assert!(server.contains("server.pem"), "{server}");
        let client = format!("{:?}", dial_tls(DialOptions::default(), &job));
        assert!(client.contains("tls: Some"), "{client}");
        assert!(client.contains("localhost"), "{client}");
    }

    #[test]
    fn uds_names_are_fresh() {
        assert_ne!(uds_name(), uds_name());
        assert!(uds_name().starts_with("@duct-bench-"));
    }
}
