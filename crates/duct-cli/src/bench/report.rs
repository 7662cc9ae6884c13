//! What `duct bench` hands back: the table on stdout and the JSON of `--json`.
//!
//! The JSON's field names are a contract (BENCH.md): tools outside the repository read
//! `duct_version`, `host.{cpus,kernel}` and, per result, `system`, `transport`, `pattern`,
//! `size`, `reliable`, `spin`, `backend`, `processes`, `messages`, `rtt_ns.{p50,p99,p999,max}`
//! (ping-pong only), `msgs_per_sec`, `bytes_per_sec`, `allocs_per_msg`. Fields added beside
//! them (`rounds`, `pin`, `batch`, `ratio_vs_raw`, the top-level `config`) may be ignored.
//!
//! The mixed pattern (only when asked for) adds rows with `"pattern": "mixed"` and
//! `"load": "idle"` or `"loaded"`, which carry `rtt_ns` (the realtime channel's round
//! trips; `messages`, `msgs_per_sec` and `bytes_per_sec` are those round trips too). duct's
//! rows add `realtime_channel`, `realtime_priority`, `bulk_channel`, `bulk_size`; the
//! loaded row adds `bulk_msgs_per_sec`, `bulk_bytes_per_sec`, `bulk_mib_per_sec` (the bulk
//! channel's receive rate over the measured round trips) and `ratio_vs_idle`
//! (`{p50,p99,p999,max}`, loaded ÷ idle per round, median). The raw row of a mixed case is
//! a plain ping-pong (raw sockets have no channels), marked `"reference": "pingpong"`.
//!
//! With `--reliable`, each pingpong and stream case has a second duct row, measured with the
//! workload's channel reliable on both ends: `"reliable": true` (every other row says
//! `false`), its `ratio_vs_raw` (reliable duct ÷ raw), and `ratio_vs_realtime` (reliable ÷
//! realtime duct per round, median; `{p50,p99,p999,max}` for pingpong,
//! `{msgs_per_sec,bytes_per_sec}` for stream). It comes right after the realtime duct row.
//!
//! Every row says `pipes`: 1, but for the scale pattern (only when asked for), whose case has
//! two duct rows with `"pattern": "scale"`: `--pipes` pipes (`"pipes": N`), then the reference,
//! the same traffic on one pipe (`"pipes": 1`, `"reference": "one_pipe"`). Both carry
//! `msgs_per_sec` and `bytes_per_sec` (the total receive rate, median over rounds), `batch`
//! (messages per `send_slices` call on each pipe), `receive` (`"async"` or `"sweep"`, as
//! `--scale-receive` chose), `rx_threads` (the measuring end's receiving threads), `threads_duct` and `threads_total` (the measuring process's threads of duct's own,
//! named `duct-*`, and all of them), `rss_per_pipe_bytes` and `peer_rss_per_pipe_bytes`
//! (`VmRSS` growth ÷ pipes in the measuring and the sending process) and `peer_threads_duct`;
//! those figures are the largest over rounds, and `null` off Linux. `cpu_ns_per_msg_duct`,
//! `cpu_ns_per_msg_app` and `cpu_ns_per_msg_peer`: nanoseconds on a CPU per message of the
//! measured phase (to the last pipe's last message), of the measuring process's `duct-*`
//! threads, of its other threads, and of the sending process, the mean over rounds (`null`
//! off Linux; the peer's too with `--threads`). The N-pipe row adds
//! `ratio_vs_one_pipe` (`{msgs_per_sec, bytes_per_sec}`, N pipes ÷ one per round, median).
//! On tcp and uds (Unix; unless `--no-baseline`) two raw rows follow, the same traffic on
//! plain sockets ([`crate::bench::scale_raw`]): `--pipes` sockets (with its own
//! `ratio_vs_one_pipe`), then one (`"reference": "one_pipe"`), with the same fields
//! (`threads_duct`, `peer_threads_duct` and `cpu_ns_per_msg_duct` `null`, the measuring
//! process's whole CPU time in `cpu_ns_per_msg_app`, `backend` `"tokio"` or `"nonblocking"` as
//! they received); the duct rows then add `ratio_vs_raw` (duct ÷ raw on as many pipes, per
//! round, median).
//!
//! Every row says `alloc`: true on duct's pingpong and stream rows of a run with `--alloc`
//! (the sending end built every message with `Pipe::alloc`), false elsewhere (raw, mixed,
//! scale, and runs without `--alloc`). The rows with `"alloc": true` add the sending end's
//! copy counters over the measured phase, summed over rounds, from `PipeStats`:
//! `zero_copy_frames`, `copied_frames` (`payload_frames_copied`), `copied_bytes`
//! (`payload_bytes_copied`) and `copied_bytes_per_msg` (÷ messages sent); duct counts them on
//! shm only, so they are `null` on the other transports.
//!
//! `spin` is true on the shm rows of a run with `--spin` (duct with `spin(Duration::MAX)`,
//! the raw baseline spinning likewise). `backend` is duct's reactor backend that ran
//! (`uring` or `epoll`, see `--backend`; `auto` only if no duct reactor ran in this process),
//! `blocking` for the raw socket baselines, and `futex` or `spin` for the raw shm baseline
//! (see [`crate::bench::shm`]).

use std::fmt::Write as _;

use crate::bench::mixed;
use crate::bench::scale::{self, ScaleFigures};
use crate::bench::spec::{format_size, Amount, Pattern, System, Transport};
use crate::bench::stats::{Copies, Ratios, Summary};
use crate::bench::SHM_SPIN_BEFORE_PARK;

/// The results of one case (transport × pattern × size).
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The transport.
    pub transport: Transport,
    /// The pattern.
    pub pattern: Pattern,
    /// Payload bytes per message.
    pub size: usize,
    /// duct's results.
    pub duct: Summary,
    /// The baseline's, unless `--no-baseline`.
    pub raw: Option<Summary>,
    /// duct ÷ raw, unless `--no-baseline` (none for mixed: its raw row is a reference).
    pub ratios: Option<Ratios>,
    /// Mixed only: the runs with the bulk sender on. In a mixed case, `duct` holds the idle
    /// runs and `raw` the plain ping-pong reference.
    pub loaded: Option<Loaded>,
    /// `--reliable` (pingpong and stream): duct with its channel reliable. `duct` then
    /// holds the realtime runs.
    pub reliable: Option<Reliable>,
    /// Scale only: the one-pipe reference and the figures of both. In a scale case, `duct`
    /// holds the runs on `--pipes` pipes.
    pub scale: Option<Scale>,
}

/// The rest of a scale case.
#[derive(Debug, Clone)]
pub struct Scale {
    /// `--pipes`.
    pub pipes: usize,
    /// Messages per `send_slices` call on each pipe.
    pub batch: usize,
    /// Receiving threads of the measuring end on the N pipes (one on the single pipe).
    pub rx_threads: usize,
    /// How the measuring end received (`--scale-receive`).
    pub receive: scale::Receive,
    /// Threads and RSS of the runs on N pipes, the largest over rounds.
    pub many: ScaleFigures,
    /// duct on one pipe, the same traffic.
    pub one_pipe: Summary,
    /// Threads and RSS of the one-pipe runs.
    pub one: ScaleFigures,
    /// N pipes ÷ one pipe, per round, median ([`Ratios::Stream`]).
    pub vs_one_pipe: Ratios,
    /// The raw baseline on N sockets and on one (tcp and uds, unless `--no-baseline`). Its
    /// N-socket runs are the case's `raw`, and duct ÷ raw on N pipes its `ratios`.
    pub raw: Option<RawScale>,
}

/// The raw baseline's part of a scale case ([`crate::bench::scale_raw`]).
#[derive(Debug, Clone)]
pub struct RawScale {
    /// Threads and RSS of the runs on N sockets.
    pub many: ScaleFigures,
    /// Raw on one socket, the same traffic.
    pub one_pipe: Summary,
    /// Threads and RSS of the one-socket runs.
    pub one: ScaleFigures,
    /// N sockets ÷ one, per round, median.
    pub vs_one_pipe: Ratios,
    /// duct on one pipe ÷ raw on one socket, per round, median.
    pub duct_vs_raw_one_pipe: Ratios,
}

/// The reliable half of a pingpong or stream case (`--reliable`).
#[derive(Debug, Clone)]
pub struct Reliable {
    /// duct's results with the workload's channel reliable on both ends.
    pub duct: Summary,
    /// Reliable ÷ realtime duct, per round, median.
    pub vs_realtime: Ratios,
    /// Reliable duct ÷ raw, per round, median; none with `--no-baseline`.
    pub vs_raw: Option<Ratios>,
}

/// The loaded half of a mixed case.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// duct's realtime round trips with the bulk sender on.
    pub duct: Summary,
    /// Bulk messages received per second ([`mixed::BULK_SIZE`] bytes each), median over
    /// rounds.
    pub bulk_msgs_per_sec: f64,
    /// Loaded ÷ idle round-trip ratios, per round, median.
    pub vs_idle: Ratios,
}

/// The machine, for the JSON.
#[derive(Debug, Clone)]
pub struct Host {
    /// CPUs this process may use.
    pub cpus: usize,
    /// Kernel release (`uname -r`), or "unknown".
    pub kernel: String,
}

impl Host {
    /// Reads the machine's description.
    pub fn detect() -> Host {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        Host { cpus, kernel }
    }
}

/// How the bench ran, for the table's heading and the JSON's `config`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Rounds per case.
    pub rounds: u32,
    /// Measured amount per round and system.
    pub amount: Amount,
    /// Warmup messages per round.
    pub warmup: u64,
    /// `none`, `same` or `split`.
    pub pin: &'static str,
    /// 2 (default) or 1 (`--threads`).
    pub processes: u32,
    /// `--batch`, if given (else [`RunConfig::batch_for`] derives it from the size).
    pub batch: Option<usize>,
    /// `--bulk-rate`, in MiB/s (mixed).
    pub bulk_rate: Option<f64>,
    /// `--spin`: both systems spin on shm.
    pub spin: bool,
    /// `--alloc`: duct's pingpong and stream send messages built with `Pipe::alloc`.
    pub alloc: bool,
}

impl RunConfig {
    /// Whether the rows of `transport` were measured spinning: shm's, with `--spin`.
    pub fn spins(&self, transport: Transport) -> bool {
        self.spin && transport == Transport::Shm
    }

    /// Messages per `send_batch`/`recv_batch` call in stream for `size`-byte messages:
    /// `--batch`, or as many as fill the raw baseline's 64 KiB `BufWriter` (64 to 1024), so
    /// that both systems hand the kernel about as much per call; with `--messages N`, at most
    /// N/8, so that the rate still spans several receives.
    pub fn batch_for(&self, size: usize) -> usize {
        self.batch.unwrap_or_else(|| {
            let most = match self.amount {
                Amount::Messages(n) => usize::try_from(n / 8).unwrap_or(usize::MAX).max(1),
                Amount::Duration(_) => usize::MAX,
            };
            default_batch(size).min(most)
        })
    }

    /// Whether `system`'s row of a `pattern` case sent messages built with `Pipe::alloc`:
    /// duct's pingpong and stream, with `--alloc`.
    pub fn allocs_in_place(&self, system: System, pattern: Pattern) -> bool {
        self.alloc
            && system == System::Duct
            && matches!(pattern, Pattern::PingPong | Pattern::Stream)
    }
}

/// The backend duct's reactor ran on in this process (`auto` before it started).
/// The default stream batch for `size`-byte messages (see [`RunConfig::batch_for`]).
pub fn default_batch(size: usize) -> usize {
    (64 * 1024 / size.max(1)).clamp(64, 1024)
}

fn duct_backend() -> &'static str {
    duct::backend().map_or("auto", |b| b.as_str())
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number that is always a float (`5.0`, not `5`); NaN and infinities, which JSON
/// lacks, become `null`.
fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        "null".to_string()
    }
}

/// `{"p50": .., "p99": .., "p999": .., "max": ..}`: round-trip ratios as a JSON object.
fn rtt_ratios_json(p50: f64, p99: f64, p999: f64, max: f64) -> String {
    format!(
        "{{\"p50\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}",
        json_f64(p50),
        json_f64(p99),
        json_f64(p999),
        json_f64(max)
    )
}

/// `, "key": {...}`: ratios as a JSON member (a stream's bytes/s ratio is its msgs/s one,
/// sizes being equal).
fn ratios_json(key: &str, ratios: &Ratios) -> String {
    match ratios {
        Ratios::PingPong {
            p50,
            p99,
            p999,
            max,
        } => format!(
            ", {}: {}",
            json_str(key),
            rtt_ratios_json(*p50, *p99, *p999, *max)
        ),
        Ratios::Stream { msgs_per_sec } => format!(
            ", {}: {{\"msgs_per_sec\": {}, \"bytes_per_sec\": {}}}",
            json_str(key),
            json_f64(*msgs_per_sec),
            json_f64(*msgs_per_sec)
        ),
    }
}

/// One result object; `reliable` says whether duct's channel was reliable; `pipes` how many
/// pipes carried the traffic; `extra` (`, "key": value, ...`, or empty) goes before its end.
fn summary_json(
    case: &CaseResult,
    s: &Summary,
    config: &RunConfig,
    reliable: bool,
    pipes: usize,
    ratios: Option<&Ratios>,
    extra: &str,
) -> String {
    let spin = config.spins(case.transport);
    let backend = match (s.system, case.transport) {
        (System::Duct, _) => duct_backend(),
        (System::Raw, _) if case.pattern == Pattern::Scale => {
            match case.scale.as_ref().map(|s| s.receive) {
                Some(scale::Receive::Sweep) => "nonblocking",
                _ => "tokio",
            }
        }
        (System::Raw, Transport::Shm) if spin => "spin",
        (System::Raw, Transport::Shm) => "futex",
        (System::Raw, _) => "blocking",
    };
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"system\": {}, \"transport\": {}, \"pattern\": {}, \"size\": {}, \
         \"reliable\": {}, \"spin\": {}, \"alloc\": {}, \"backend\": {}, \"processes\": {}, \
         \"messages\": {}",
        json_str(s.system.name()),
        json_str(case.transport.name()),
        json_str(case.pattern.name()),
        case.size,
        reliable,
        spin,
        config.allocs_in_place(s.system, case.pattern),
        json_str(backend),
        config.processes,
        s.messages,
    );
    if let Some(p) = &s.percentiles {
        let _ = write!(
            o,
            ", \"rtt_ns\": {{\"p50\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}",
            p.p50, p.p99, p.p999, p.max
        );
    }
    let _ = write!(
        o,
        ", \"msgs_per_sec\": {}, \"bytes_per_sec\": {}, \"allocs_per_msg\": {}, \
         \"rounds\": {}, \"pin\": {}, \"pipes\": {}",
        json_f64(s.msgs_per_sec),
        json_f64(s.bytes_per_sec),
        json_f64(s.allocs_per_msg),
        s.rounds,
        json_str(config.pin),
        pipes,
    );
    if case.pattern == Pattern::Stream && s.system == System::Duct {
        let _ = write!(o, ", \"batch\": {}", config.batch_for(case.size));
    }
    if config.allocs_in_place(s.system, case.pattern) {
        o.push_str(&copies_json(case.transport, s.copies));
    }
    if let Some(ratios) = ratios {
        o.push_str(&ratios_json("ratio_vs_raw", ratios));
    }
    o.push_str(extra);
    o.push('}');
    o
}

/// `, "zero_copy_frames": .., "copied_frames": .., "copied_bytes": .., "copied_bytes_per_msg":
/// ..`: an `--alloc` row's copy counters; `null` where duct does not count them (not shm).
fn copies_json(transport: Transport, copies: Option<Copies>) -> String {
    let c = copies.filter(|_| transport == Transport::Shm);
    format!(
        ", \"zero_copy_frames\": {}, \"copied_frames\": {}, \"copied_bytes\": {}, \
         \"copied_bytes_per_msg\": {}",
        json_opt_u64(c.map(|c| c.zero_copy_frames)),
        json_opt_u64(c.map(|c| c.copied_frames)),
        json_opt_u64(c.map(|c| c.copied_bytes)),
        json_opt_f64(c.map(|c| c.copied_bytes_per_msg())),
    )
}

/// The JSON objects of a mixed case: duct idle, duct loaded, then the raw reference.
fn mixed_json(case: &CaseResult, config: &RunConfig, entries: &mut Vec<String>) {
    let channels = format!(
        ", \"realtime_channel\": {}, \"realtime_priority\": {}, \"bulk_channel\": {}, \
         \"bulk_size\": {}",
        mixed::REALTIME_CHANNEL,
        mixed::REALTIME_PRIORITY,
        mixed::BULK_CHANNEL,
        mixed::BULK_SIZE
    );
    let idle = format!(", \"load\": \"idle\"{channels}");
    entries.push(summary_json(
        case, &case.duct, config, false, 1, None, &idle,
    ));
    if let Some(loaded) = &case.loaded {
        let bulk_bytes = loaded.bulk_msgs_per_sec * mixed::BULK_SIZE as f64;
        let mut extra = format!(
            ", \"load\": \"loaded\"{channels}, \"bulk_msgs_per_sec\": {}, \
             \"bulk_bytes_per_sec\": {}, \"bulk_mib_per_sec\": {}",
            json_f64(loaded.bulk_msgs_per_sec),
            json_f64(bulk_bytes),
            json_f64(bulk_bytes / MIB)
        );
        if let Ratios::PingPong {
            p50,
            p99,
            p999,
            max,
        } = loaded.vs_idle
        {
            let _ = write!(
                extra,
                ", \"ratio_vs_idle\": {}",
                rtt_ratios_json(p50, p99, p999, max)
            );
        }
        entries.push(summary_json(
            case,
            &loaded.duct,
            config,
            false,
            1,
            None,
            &extra,
        ));
    }
    if let Some(raw) = &case.raw {
        let extra = ", \"load\": \"idle\", \"reference\": \"pingpong\"";
        entries.push(summary_json(case, raw, config, false, 1, None, extra));
    }
}

/// `null` or the number.
fn json_opt_u64(x: Option<u64>) -> String {
    x.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// `null` or the number (always a float).
fn json_opt_f64(x: Option<f64>) -> String {
    x.map_or_else(|| "null".to_string(), json_f64)
}

/// The JSON objects of a scale case: duct on N pipes, then duct on one pipe (then raw on N
/// sockets and on one, if it ran).
fn scale_json(case: &CaseResult, scale: &Scale, config: &RunConfig, entries: &mut Vec<String>) {
    // (Raw rows: no duct thread is the baseline's, though one an earlier run left may idle
    // in the process.)
    let figures = |f: &ScaleFigures, rx_threads: usize, system: System| {
        let duct_threads = f.threads.filter(|_| system == System::Duct);
        let cpu = cpu_split(f, system);
        format!(
            ", \"batch\": {}, \"receive\": \"{}\", \"rx_threads\": {}, \"threads_duct\": {}, \
             \"threads_total\": {}, \
             \"rss_per_pipe_bytes\": {}, \"peer_rss_per_pipe_bytes\": {}, \"peer_threads_duct\": {}, \
             \"cpu_ns_per_msg_duct\": {}, \"cpu_ns_per_msg_app\": {}, \"cpu_ns_per_msg_peer\": {}",
            scale.batch,
            scale.receive.name(),
            rx_threads,
            json_opt_u64(duct_threads.map(|t| t.duct)),
            json_opt_u64(f.threads.map(|t| t.total)),
            json_opt_f64(f.rss_per_pipe),
            json_opt_f64(f.peer_rss_per_pipe),
            json_opt_u64(f.peer_threads_duct.filter(|_| system == System::Duct)),
            json_opt_f64(cpu.0),
            json_opt_f64(cpu.1),
            json_opt_f64(cpu.2),
        )
    };
    let many = figures(&scale.many, scale.rx_threads, System::Duct)
        + &ratios_json("ratio_vs_one_pipe", &scale.vs_one_pipe);
    entries.push(summary_json(
        case,
        &case.duct,
        config,
        false,
        scale.pipes,
        case.ratios.as_ref(),
        &many,
    ));
    let one = figures(&scale.one, 1, System::Duct) + ", \"reference\": \"one_pipe\"";
    entries.push(summary_json(
        case,
        &scale.one_pipe,
        config,
        false,
        1,
        scale.raw.as_ref().map(|r| &r.duct_vs_raw_one_pipe),
        &one,
    ));
    let (Some(raw), Some(raw_many)) = (&scale.raw, &case.raw) else {
        return;
    };
    let many = figures(&raw.many, scale.rx_threads, System::Raw)
        + &ratios_json("ratio_vs_one_pipe", &raw.vs_one_pipe);
    entries.push(summary_json(
        case,
        raw_many,
        config,
        false,
        scale.pipes,
        None,
        &many,
    ));
    let one = figures(&raw.one, 1, System::Raw) + ", \"reference\": \"one_pipe\"";
    entries.push(summary_json(
        case,
        &raw.one_pipe,
        config,
        false,
        1,
        None,
        &one,
    ));
}

/// A scale row's CPU time per message, in nanoseconds: duct's own threads, the other threads
/// of the measuring process, the peer process. On a raw row duct's threads are none of the
/// baseline's (an idle reactor an earlier run left): all of the process is the application's.
fn cpu_split(f: &ScaleFigures, system: System) -> (Option<f64>, Option<f64>, Option<f64>) {
    let Some(c) = f.cpu else {
        return (None, None, None);
    };
    match system {
        System::Duct => (Some(c.duct_ns), Some(c.app_ns), c.peer_ns),
        System::Raw => (None, Some(c.duct_ns + c.app_ns), c.peer_ns),
    }
}

/// Nanoseconds, or `n/a`.
fn nanos(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |ns| format!("{ns:.0} ns"))
}

/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// The `--json` document.
pub fn to_json(version: &str, host: &Host, config: &RunConfig, cases: &[CaseResult]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{{");
    let _ = writeln!(o, "  \"duct_version\": {},", json_str(version));
    let _ = writeln!(
        o,
        "  \"host\": {{\"cpus\": {}, \"kernel\": {}}},",
        host.cpus,
        json_str(&host.kernel)
    );
    let (messages, duration_ns) = match config.amount {
        Amount::Messages(n) => (n.to_string(), "null".to_string()),
        Amount::Duration(d) => ("null".to_string(), d.as_nanos().to_string()),
    };
    let _ = writeln!(
        o,
        "  \"config\": {{\"rounds\": {}, \"messages_per_round\": {}, \"duration_ns_per_round\": {}, \
         \"warmup\": {}, \"pin\": {}, \"processes\": {}, \"batch\": {}, \"bulk_rate_mib_per_sec\": {}}},",
        config.rounds,
        messages,
        duration_ns,
        config.warmup,
        json_str(config.pin),
        config.processes,
        json_opt_u64(config.batch.map(|b| b as u64)),
        config.bulk_rate.map_or("null".to_owned(), |r| r.to_string())
    );
    let _ = writeln!(o, "  \"results\": [");
    let mut entries = Vec::new();
    for case in cases {
        if case.pattern == Pattern::Mixed {
            mixed_json(case, config, &mut entries);
            continue;
        }
        if let Some(scale) = &case.scale {
            scale_json(case, scale, config, &mut entries);
            continue;
        }
        entries.push(summary_json(
            case,
            &case.duct,
            config,
            false,
            1,
            case.ratios.as_ref(),
            "",
        ));
        if let Some(r) = &case.reliable {
            let extra = ratios_json("ratio_vs_realtime", &r.vs_realtime);
            entries.push(summary_json(
                case,
                &r.duct,
                config,
                true,
                1,
                r.vs_raw.as_ref(),
                &extra,
            ));
        }
        if let Some(raw) = &case.raw {
            entries.push(summary_json(case, raw, config, false, 1, None, ""));
        }
    }
    for (i, e) in entries.iter().enumerate() {
        let comma = if i + 1 < entries.len() { "," } else { "" };
        let _ = writeln!(o, "    {e}{comma}");
    }
    let _ = writeln!(o, "  ]");
    let _ = writeln!(o, "}}");
    o
}

/// ns as µs for the table: two decimals below 100 µs, one above.
fn us(ns: u64) -> String {
    let v = ns as f64 / 1000.0;
    if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// A count per second with a k/M/G suffix.
fn per_sec(x: f64) -> String {
    if !x.is_finite() {
        "-".to_string()
    } else if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Allocations per message: exactly `0` when none, otherwise enough digits to tell a
/// one-off allocation per run (`2.1e-5`) from one per message (`1.00`).
fn allocs(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if x < 0.01 {
        format!("{x:.1e}")
    } else {
        format!("{x:.2}")
    }
}

fn times(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "-".to_string()
    }
}

/// Rows of cells, printed with right-aligned columns (the first `left` left-aligned).
struct Table {
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i < self.left {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// The transport and size columns of a case's `i`-th row: on its first row only.
fn case_label(case: &CaseResult, i: usize) -> (String, String) {
    if i == 0 {
        (case.transport.name().to_string(), format_size(case.size))
    } else {
        (String::new(), String::new())
    }
}

/// A case's rows of results, named as the table's system column shows them: duct (the
/// realtime runs), duct reliable (`--reliable`), raw; `duct alloc` and `duct reliable alloc`
/// when duct's messages were built with `Pipe::alloc` (`--alloc`).
fn system_rows<'a>(
    case: &'a CaseResult,
    config: &RunConfig,
) -> impl Iterator<Item = (&'static str, &'a Summary)> {
    let alloc = config.allocs_in_place(System::Duct, case.pattern);
    let (duct, reliable) = if alloc {
        ("duct alloc", "duct reliable alloc")
    } else {
        (System::Duct.name(), "duct reliable")
    };
    std::iter::once((duct, &case.duct))
        .chain(case.reliable.as_ref().map(move |r| (reliable, &r.duct)))
        .chain(case.raw.as_ref().map(|r| (System::Raw.name(), r)))
}

/// The `zero-copy` and `copied/msg` cells of a row, in a run with `--alloc` (none without):
/// the share of the messages sent that moved without a copy and the payload bytes copied per
/// message, on duct's shm rows; `-` on duct's other rows (duct counts copies on shm only),
/// empty on raw's.
fn copy_cells(config: &RunConfig, case: &CaseResult, s: &Summary) -> Vec<String> {
    if !config.alloc {
        return Vec::new();
    }
    if s.system != System::Duct {
        return vec![String::new(), String::new()];
    }
    match s.copies.filter(|_| case.transport == Transport::Shm) {
        Some(c) if c.sent > 0 => {
            let share = if c.zero_copy_frames == c.sent {
                "100%".to_string()
            } else {
                // Rounded down: a few copies among millions must not show as 100%.
                let hundredths = 10_000.0 * c.zero_copy_frames as f64 / c.sent as f64;
                format!("{:.2}%", hundredths.floor() / 100.0)
            };
            vec![share, bytes(Some(c.copied_bytes_per_msg()))]
        }
        _ => vec!["-".to_string(), "-".to_string()],
    }
}

/// The headings of [`copy_cells`]' columns.
fn copy_headings(config: &RunConfig) -> Vec<String> {
    if config.alloc {
        vec!["zero-copy".to_string(), "copied/msg".to_string()]
    } else {
        Vec::new()
    }
}

/// `--alloc`: under the stream table, shm's duct rate (messages built with `Pipe::alloc`)
/// over uds's, raw and duct, for each size both transports ran: BENCH.md's goal "shm 1 MiB via
/// `Pipe::alloc`, bytes/s ≥ 10 × uds". From the medians over rounds: the two cases run one
/// after the other, so their rounds do not pair.
fn alloc_vs_uds(config: &RunConfig, stream: &[&CaseResult], out: &mut String) {
    if !config.alloc {
        return;
    }
    for shm in stream.iter().filter(|c| c.transport == Transport::Shm) {
        let Some(uds) = stream
            .iter()
            .find(|c| c.transport == Transport::Uds && c.size == shm.size)
        else {
            continue;
        };
        let rate = shm.duct.bytes_per_sec;
        let size = format_size(shm.size);
        if let Some(raw) = &uds.raw {
            let _ = writeln!(
                out,
                "shm (alloc) ÷ uds raw: {} ({size}; bytes/s, ratio of the medians over rounds: \
                 the two cases run one after the other, so their rounds do not pair)",
                times(crate::bench::stats::ratio(rate, raw.bytes_per_sec))
            );
        }
        let _ = writeln!(
            out,
            "shm (alloc) ÷ uds duct: {} ({size}; uds duct with --alloc too: heap buffers)",
            times(crate::bench::stats::ratio(rate, uds.duct.bytes_per_sec))
        );
    }
}

/// What the table says about `--alloc`.
fn alloc_note(cases: &[CaseResult]) -> String {
    let mut note = "--alloc: duct's sending end (stream sender, pingpong initiator) builds every \
        message with Pipe::alloc(size) and writes in place only the byte the workload needs \
        (payload[0], the last-message flag): the payload is produced in place, which is the \
        point of the API; then freeze() and send (stream: send_batch). On shm the buffer is a \
        slot of the shared pool and only a descriptor moves: zero-copy is the share of the \
        messages sent that moved without a copy, copied/msg the payload bytes duct copied per \
        message (PipeStats zero_copy_frames, payload_bytes_copied of the sending end over the \
        measured phase; an alloc that finds no slot free within 500 µs falls back to a heap \
        buffer, copied when sent). On tcp, uds and tls alloc returns a zeroed heap buffer: an \
        allocation per message, and copies are not counted there (-). The raw baseline is \
        unchanged (its prebuilt payload is copied into its buffers every message)."
        .to_string();
    if cases.iter().any(|c| c.pattern == Pattern::PingPong) {
        note.push_str(
            " pingpong: the echo sends back the message it received; on shm that payload lies \
             in the other direction's pool, so duct copies it once on the way back (not in the \
             counts above, which are the initiator's).",
        );
    }
    note
}

/// The heading's account of the ratio rows: duct÷raw, and reliable÷realtime when some case
/// has it.
fn ratio_rows_heading(cases: &[&CaseResult]) -> &'static str {
    if cases.iter().any(|c| c.reliable.is_some()) {
        "ratios duct÷raw and reliable÷realtime per round, median"
    } else {
        "ratio duct÷raw per round, median"
    }
}

/// The table printed at the end of `duct bench`.
pub fn to_table(config: &RunConfig, cases: &[CaseResult]) -> String {
    let mut out = String::new();
    let layout = if config.processes == 2 {
        "two processes"
    } else {
        "one process (threads)"
    };
    let _ = writeln!(
        out,
        "duct bench: {layout}, pin {}, {} round{} × {} per system, warmup {} messages, \
         reactor {}",
        config.pin,
        config.rounds,
        if config.rounds == 1 { "" } else { "s" },
        config.amount,
        config.warmup,
        duct_backend()
    );
    let pingpong: Vec<&CaseResult> = cases
        .iter()
        .filter(|c| c.pattern == Pattern::PingPong)
        .collect();
    if !pingpong.is_empty() {
        let _ = writeln!(
            out,
            "\npingpong: round-trip time in µs; {}: lower is better",
            ratio_rows_heading(&pingpong)
        );
        let mut t = Table {
            rows: vec![[
                "transport",
                "size",
                "system",
                "p50",
                "p99",
                "p99.9",
                "max",
                "round trips/s",
                "allocs/msg",
            ]
            .map(String::from)
            .into_iter()
            .chain(copy_headings(config))
            .collect()],
            left: 3,
        };
        for case in pingpong {
            for (i, (system, s)) in system_rows(case, config).enumerate() {
                let p = s.percentiles.unwrap_or(crate::bench::stats::Percentiles {
                    p50: 0,
                    p99: 0,
                    p999: 0,
                    max: 0,
                });
                let (transport, size) = case_label(case, i);
                t.rows.push(vec![
                    transport,
                    size,
                    system.to_string(),
                    us(p.p50),
                    us(p.p99),
                    us(p.p999),
                    us(p.max),
                    per_sec(s.msgs_per_sec),
                    allocs(s.allocs_per_msg),
                ]);
                t.rows
                    .last_mut()
                    .unwrap()
                    .extend(copy_cells(config, case, s));
            }
            if let Some(Ratios::PingPong {
                p50,
                p99,
                p999,
                max,
            }) = case.ratios
            {
                t.rows.push(vec![
                    String::new(),
                    String::new(),
                    "duct÷raw".to_string(),
                    times(p50),
                    times(p99),
                    times(p999),
                    times(max),
                ]);
            }
            if let Some(Ratios::PingPong {
                p50,
                p99,
                p999,
                max,
            }) = case.reliable.as_ref().map(|r| r.vs_realtime)
            {
                t.rows.push(vec![
                    String::new(),
                    String::new(),
                    "reliable÷realtime".to_string(),
                    times(p50),
                    times(p99),
                    times(p999),
                    times(max),
                ]);
            }
        }
        t.render(&mut out);
    }
    let stream: Vec<&CaseResult> = cases
        .iter()
        .filter(|c| c.pattern == Pattern::Stream)
        .collect();
    if !stream.is_empty() {
        let _ = writeln!(
            out,
            "\nstream: receive rate (duct batch {}, raw BufWriter{}); {}: higher is better",
            match config.batch {
                Some(b) => b.to_string(),
                None => {
                    let mut batches: Vec<usize> =
                        stream.iter().map(|c| config.batch_for(c.size)).collect();
                    batches.dedup();
                    let list: Vec<String> = batches.iter().map(usize::to_string).collect();
                    format!("{}: 64 KiB worth", list.join("/"))
                }
            },
            if stream.iter().any(|c| c.transport == Transport::Shm) {
                ", shm raw: one wake-up per batch"
            } else {
                ""
            },
            ratio_rows_heading(&stream)
        );
        let mut t = Table {
            rows: vec![[
                "transport",
                "size",
                "system",
                "msgs/s",
                "MB/s",
                "allocs/msg",
            ]
            .map(String::from)
            .into_iter()
            .chain(copy_headings(config))
            .collect()],
            left: 3,
        };
        for case in &stream {
            for (i, (system, s)) in system_rows(case, config).enumerate() {
                let (transport, size) = case_label(case, i);
                t.rows.push(vec![
                    transport,
                    size,
                    system.to_string(),
                    per_sec(s.msgs_per_sec),
                    format!("{:.1}", s.bytes_per_sec / 1e6),
                    allocs(s.allocs_per_msg),
                ]);
                t.rows
                    .last_mut()
                    .unwrap()
                    .extend(copy_cells(config, case, s));
            }
            if let Some(Ratios::Stream { msgs_per_sec }) = case.ratios {
                t.rows.push(vec![
                    String::new(),
                    String::new(),
                    "duct÷raw".to_string(),
                    times(msgs_per_sec),
                    times(msgs_per_sec),
                ]);
            }
            if let Some(Ratios::Stream { msgs_per_sec }) =
                case.reliable.as_ref().map(|r| r.vs_realtime)
            {
                t.rows.push(vec![
                    String::new(),
                    String::new(),
                    "reliable÷realtime".to_string(),
                    times(msgs_per_sec),
                    times(msgs_per_sec),
                ]);
            }
        }
        t.render(&mut out);
        alloc_vs_uds(config, &stream, &mut out);
    }
    mixed_table(cases, config, &mut out);
    scale_table(cases, config, &mut out);
    if cases
        .iter()
        .any(|c| c.transport == Transport::Shm && c.pattern != Pattern::Scale)
    {
        let _ = writeln!(out, "\n{}", shm_note(config));
    }
    if config.alloc
        && cases
            .iter()
            .any(|c| matches!(c.pattern, Pattern::PingPong | Pattern::Stream))
    {
        let _ = writeln!(out, "\n{}", alloc_note(cases));
    }
    if cases.iter().any(|c| c.reliable.is_some()) {
        let _ = writeln!(
            out,
            "\nduct reliable: duct again in the same rounds, its channel reliable on both ends \
             (ChannelOptions::reliable); reliable÷realtime is duct reliable ÷ duct."
        );
    }
    let _ = writeln!(
        out,
        "\nallocs/msg: allocations in the measured phase per message, the worse end and round{}.",
        if config.processes == 1 {
            " (one process: each end's count includes the other's)"
        } else {
            ""
        }
    );
    out
}

/// A byte count for the table (`n/a` when unknown): `812 B`, `52.3 KiB`, `1.25 MiB`.
fn bytes(x: Option<f64>) -> String {
    let Some(x) = x.filter(|x| x.is_finite()) else {
        return "n/a".to_string();
    };
    if x.abs() < 1024.0 {
        format!("{x:.0} B")
    } else if x.abs() < MIB {
        format!("{:.1} KiB", x / 1024.0)
    } else {
        format!("{:.2} MiB", x / MIB)
    }
}

fn count(x: Option<u64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |v| v.to_string())
}

/// The scale section of the table, if there is a scale case.
fn scale_table(cases: &[CaseResult], config: &RunConfig, out: &mut String) {
    let scaled: Vec<(&CaseResult, &Scale)> = cases
        .iter()
        .filter_map(|c| c.scale.as_ref().map(|s| (c, s)))
        .collect();
    let Some((_, first)) = scaled.first() else {
        return;
    };
    let _ = writeln!(
        out,
        "\nscale: total receive rate over N pipes on one listener, and over one pipe with the \
         same traffic, in alternating rounds; the peer sends on every pipe in turn ({}), this \
         process receives {} on {} thread{} (one pipe: 1); N÷1 per round, median: higher is \
         better",
        if first.batch == 1 {
            "one send per message".to_string()
        } else {
            format!("send_slices of {} messages", first.batch)
        },
        match first.receive {
            scale::Receive::Async => "with a task per pipe awaiting recv_async",
            scale::Receive::Sweep => "by sweeping its pipes without blocking",
        },
        first.rx_threads,
        if first.rx_threads == 1 { "" } else { "s" }
    );
    let mut t = Table {
        rows: vec![[
            "transport",
            "size",
            "system",
            "pipes",
            "msgs/s",
            "MB/s",
            "duct threads",
            "threads",
            "RSS/pipe",
            "peer RSS/pipe",
            "CPU/msg duct",
            "app",
            "peer",
            "allocs/msg",
        ]
        .map(String::from)
        .to_vec()],
        left: 3,
    };
    for &(case, scale) in &scaled {
        let mut systems = vec![(
            System::Duct,
            [
                (scale.pipes, &case.duct, &scale.many),
                (1, &scale.one_pipe, &scale.one),
            ],
            scale.vs_one_pipe,
        )];
        if let (Some(raw), Some(raw_many)) = (&scale.raw, &case.raw) {
            systems.push((
                System::Raw,
                [
                    (scale.pipes, raw_many, &raw.many),
                    (1, &raw.one_pipe, &raw.one),
                ],
                raw.vs_one_pipe,
            ));
        }
        // (The case's first row names it.)
        let first = t.rows.len();
        let ratio_row = |t: &mut Table, what: &str, pipes: String, ratio: Option<Ratios>| {
            if let Some(Ratios::Stream { msgs_per_sec }) = ratio {
                let (transport, size) = case_label(case, t.rows.len() - first);
                t.rows.push(vec![
                    transport,
                    size,
                    what.to_string(),
                    pipes,
                    times(msgs_per_sec),
                    times(msgs_per_sec),
                ]);
            }
        };
        for (system, rows, vs_one_pipe) in systems {
            for (pipes, s, f) in rows {
                let (transport, size) = case_label(case, t.rows.len() - first);
                let cpu = cpu_split(f, system);
                t.rows.push(vec![
                    transport,
                    size,
                    system.name().to_string(),
                    pipes.to_string(),
                    per_sec(s.msgs_per_sec),
                    format!("{:.1}", s.bytes_per_sec / 1e6),
                    match system {
                        System::Duct => count(f.threads.map(|t| t.duct)),
                        System::Raw => "-".to_string(),
                    },
                    count(f.threads.map(|t| t.total)),
                    bytes(f.rss_per_pipe),
                    bytes(f.peer_rss_per_pipe),
                    match system {
                        System::Duct => nanos(cpu.0),
                        System::Raw => "-".to_string(),
                    },
                    nanos(cpu.1),
                    nanos(cpu.2),
                    allocs(s.allocs_per_msg),
                ]);
            }
            ratio_row(&mut t, system.name(), "N÷1".to_string(), Some(vs_one_pipe));
        }
        if let Some(raw) = &scale.raw {
            ratio_row(&mut t, "duct÷raw", scale.pipes.to_string(), case.ratios);
            ratio_row(
                &mut t,
                "duct÷raw",
                "1".to_string(),
                Some(raw.duct_vs_raw_one_pipe),
            );
        }
    }
    t.render(out);
    let raw_ran = scaled.iter().any(|(_, s)| s.raw.is_some());
    let _ = writeln!(
        out,
        "scale: {}. duct threads: the threads of this (the receiving) process named duct-* (duct's reactor and \
         helpers; the bench's own duct-bench-* left out), counted as the measured phase starts, \
         every pipe open; threads: all of its threads. RSS/pipe: VmRSS after the pipes \
         connected and the traffic ran, minus VmRSS before they were made, ÷ pipes, the \
         largest of the rounds; peer RSS/pipe: the same in the sending process. Memory that \
         earlier runs of a process freed, and its allocator kept, serves later runs unseen: a \
         process's first scale case shows the most (--transport one at a time for each's own). \
         CPU/msg: time on a CPU per message received in the measured phase (from its start to \
         the last pipe's last message), the mean of the rounds: duct: this process's duct-* \
         threads; app: its other threads (on a raw row, all of them); peer: the sending \
         process. Threads, RSS and CPU are read from /proc (Linux; n/a elsewhere){}.",
        if raw_ran {
            "raw: the same traffic on plain sockets, one write of the batch's frames (4-byte \
             length prefixes) per socket in turn, received with a tokio task per socket (or by \
             sweeping them, as duct is), on the same number of threads; duct÷raw per round, \
             median, on as many pipes as sockets; tls and shm have no raw scale baseline"
        } else {
            "duct only, no raw baseline: the reference is duct's own single pipe"
        },
        if config.processes == 1 {
            "; one process (--threads): they include the peer's pipes and threads"
        } else {
            ""
        }
    );
    if scaled.iter().any(|(c, _)| c.transport == Transport::Shm) {
        let _ = writeln!(
            out,
            "scale on shm: every pipe maps duct's own segment ({}; no ListenOptions/DialOptions \
             setting changes it), whose pages count in RSS once touched, in both processes (so \
             RSS/pipe grows with the traffic each pipe has carried); {}.",
            scale::SHM_SEGMENT,
            if config.spin {
                "--spin: both ends spin and never park (spin(Duration::MAX))".to_string()
            } else {
                format!(
                    "a waiting end spins up to {} µs, then parks on a futex",
                    SHM_SPIN_BEFORE_PARK.as_micros()
                )
            }
        );
    }
}

/// What the table says about shm's rows: how both systems wait, and what raw is.
fn shm_note(config: &RunConfig) -> String {
    let wait = if config.spin {
        "--spin: both ends of both systems spin and never park (duct: spin(Duration::MAX))"
            .to_string()
    } else {
        format!(
            "a waiting end spins up to {} µs, then parks on a futex (duct's default spin; the \
             raw baseline the same)",
            SHM_SPIN_BEFORE_PARK.as_micros()
        )
    };
    format!(
        "shm: {wait}. raw: one single-producer single-consumer ring per direction in a shared \
         memfd segment, payloads up to 256 B copied into and out of the ring after their \
         descriptors, larger ones into and out of pool slots, wake-ups batched in stream."
    )
}

/// The mixed section of the table, if there is a mixed case.
fn mixed_table(cases: &[CaseResult], config: &RunConfig, out: &mut String) {
    let mixed: Vec<&CaseResult> = cases
        .iter()
        .filter(|c| c.pattern == Pattern::Mixed)
        .collect();
    if mixed.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nmixed: realtime round-trip time in µs on channel {} (priority {}), alone (idle) and \
         beside a bulk sender of {} messages on channel {} of the same pipe{} (loaded); \
         loaded÷idle per round, median: lower is better",
        mixed::REALTIME_CHANNEL,
        mixed::REALTIME_PRIORITY,
        format_size(mixed::BULK_SIZE),
        mixed::BULK_CHANNEL,
        match config.bulk_rate {
            Some(r) => format!(", paced at {r} MiB/s by a duct rate limit"),
            None => String::new(),
        }
    );
    let mut t = Table {
        rows: vec![[
            "transport",
            "size",
            "system",
            "load",
            "p50",
            "p99",
            "p99.9",
            "max",
            "round trips/s",
            "bulk MiB/s",
            "allocs/msg",
        ]
        .map(String::from)
        .to_vec()],
        left: 4,
    };
    let mut any_raw = false;
    for case in mixed {
        let loaded = case.loaded.as_ref();
        let rows = std::iter::once((&case.duct, "idle", None))
            .chain(loaded.map(|l| (&l.duct, "loaded", Some(l.bulk_msgs_per_sec))))
            .chain(case.raw.as_ref().map(|r| (r, "idle", None)));
        for (i, (s, load, bulk)) in rows.enumerate() {
            let p = s.percentiles.unwrap_or(crate::bench::stats::Percentiles {
                p50: 0,
                p99: 0,
                p999: 0,
                max: 0,
            });
            any_raw |= s.system == System::Raw;
            let (transport, size) = case_label(case, i);
            t.rows.push(vec![
                transport,
                size,
                s.system.name().to_string(),
                load.to_string(),
                us(p.p50),
                us(p.p99),
                us(p.p999),
                us(p.max),
                per_sec(s.msgs_per_sec),
                bulk.map_or("-".to_string(), |m| {
                    format!("{:.1}", m * mixed::BULK_SIZE as f64 / MIB)
                }),
                allocs(s.allocs_per_msg),
            ]);
            if let (Some(l), "loaded") = (loaded, load) {
                if let Ratios::PingPong {
                    p50,
                    p99,
                    p999,
                    max,
                } = l.vs_idle
                {
                    t.rows.push(vec![
                        String::new(),
                        String::new(),
                        "loaded÷idle".to_string(),
                        String::new(),
                        times(p50),
                        times(p99),
                        times(p999),
                        times(max),
                    ]);
                }
            }
        }
    }
    t.render(out);
    if any_raw {
        let _ = writeln!(
            out,
            "raw: a plain ping-pong on the bare socket (shm: the bare ring), as the idle \
             reference (raw sockets have no channels, so no loaded run)."
        );
    }
    let _ = writeln!(
        out,
        "mixed allocs/msg: per message of either channel (the measuring end's count includes \
         the bulk sender's)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::System;
    use crate::bench::stats::{summarize, RunResult};
    use crate::bench::workload::new_rtt_histogram;
    use std::time::Duration;

    fn config() -> RunConfig {
        RunConfig {
            rounds: 3,
            amount: Amount::Duration(Duration::from_millis(500)),
            warmup: 2000,
            pin: "none",
            processes: 2,
            batch: None,
            bulk_rate: None,
            spin: false,
            alloc: false,
        }
    }

    fn cases() -> Vec<CaseResult> {
        let mut h = new_rtt_histogram();
        for v in [9000, 10_000, 11_000, 50_000] {
            h.record(v).unwrap();
        }
        let pp = |system| {
            summarize(
                system,
                &[RunResult {
                    rtt: Some(h.clone()),
                    messages: 4,
                    msgs_per_sec: 90_000.0,
                    allocs_per_msg: 0.0,
                    copies: None,
                }],
                64,
            )
        };
        let st = |system, rate| {
            summarize(
                system,
                &[RunResult {
                    rtt: None,
                    messages: 1_000_000,
                    msgs_per_sec: rate,
                    allocs_per_msg: 0.25,
                    copies: None,
                }],
                64,
            )
        };
        vec![
            CaseResult {
                transport: Transport::Tcp,
                pattern: Pattern::PingPong,
                size: 64,
                duct: pp(System::Duct),
                raw: Some(pp(System::Raw)),
                ratios: Some(Ratios::PingPong {
                    p50: 1.05,
                    p99: 1.2,
                    p999: 1.3,
                    max: f64::NAN,
                }),
                loaded: None,
                reliable: None,
                scale: None,
            },
            CaseResult {
                transport: Transport::Uds,
                pattern: Pattern::Stream,
                size: 64,
                duct: st(System::Duct, 2e7),
                raw: Some(st(System::Raw, 5e7)),
                ratios: Some(Ratios::Stream { msgs_per_sec: 0.4 }),
                loaded: None,
                reliable: None,
                scale: None,
            },
        ]
    }

    /// shm rows say how they waited: `spin` on both systems with `--spin` (only shm's),
    /// `backend` futex or spin for raw; the table explains it under the tables.
    #[test]
    fn shm_rows_say_whether_they_spun() {
        let host = Host {
            cpus: 2,
            kernel: "k".into(),
        };
        let mut shm = cases();
        shm[0].transport = Transport::Shm;
        for spin in [false, true] {
            let config = RunConfig { spin, ..config() };
            let text = to_json("0.1.0", &host, &config, &shm);
            let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            for r in v["results"].as_array().unwrap() {
                let on_shm = r["transport"] == "shm";
                assert_eq!(r["spin"], spin && on_shm, "{r}");
                let backend = match (r["system"].as_str().unwrap(), on_shm, spin) {
                    ("duct", _, _) => "auto",
                    ("raw", true, true) => "spin",
                    ("raw", true, false) => "futex",
                    _ => "blocking",
                };
                assert_eq!(r["backend"], backend, "{r}");
            }
            let table = to_table(&config, &shm);
            let note = if spin {
                "shm: --spin: both ends of both systems spin and never park"
            } else {
                "shm: a waiting end spins up to 20 µs, then parks on a futex"
            };
            assert!(table.contains(note), "{table}");
        }
        assert!(
            !to_table(&config(), &cases()).contains("shm:"),
            "no shm, no note"
        );
    }

    #[test]
    fn json_has_the_contract_fields() {
        let host = Host {
            cpus: 2,
            kernel: "6.18.0 \"test\"".into(),
        };
        let text = to_json("0.1.0", &host, &config(), &cases());
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["duct_version"], "0.1.0");
        assert_eq!(v["host"]["cpus"], 2);
        assert_eq!(v["host"]["kernel"], "6.18.0 \"test\"");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        for r in results {
            for key in [
                "system",
                "transport",
                "pattern",
                "size",
                "reliable",
                "spin",
                "alloc",
                "backend",
                "processes",
                "messages",
                "msgs_per_sec",
                "bytes_per_sec",
                "allocs_per_msg",
            ] {
                assert!(r.get(key).is_some(), "missing {key} in {r}");
            }
            assert_eq!(r["alloc"], false, "{r}");
            assert!(r.get("copied_bytes_per_msg").is_none(), "{r}");
            assert!(r["msgs_per_sec"].is_f64(), "{r}");
            assert!(r["bytes_per_sec"].is_f64(), "{r}");
            assert!(r["allocs_per_msg"].is_f64(), "{r}");
            assert_eq!(r["processes"], 2);
            assert_eq!(r["reliable"], false);
            assert_eq!(r["spin"], false);
            let pingpong = r["pattern"] == "pingpong";
            assert_eq!(
                r.get("rtt_ns").is_some(),
                pingpong,
                "rtt_ns only for pingpong: {r}"
            );
            if pingpong {
                for key in ["p50", "p99", "p999", "max"] {
                    assert!(r["rtt_ns"][key].as_u64().unwrap() > 0, "{r}");
                }
            }
        }
        assert_eq!(results[0]["system"], "duct");
        assert_eq!(results[1]["system"], "raw");
        assert_eq!(results[0]["ratio_vs_raw"]["p50"], 1.05);
        assert!(
            results[0]["ratio_vs_raw"]["max"].is_null(),
            "NaN becomes null"
        );
        assert!(results[1].get("ratio_vs_raw").is_none());
        assert_eq!(results[2]["bytes_per_sec"], 2e7 * 64.0);
        assert_eq!(results[2]["batch"], 1024, "64 KiB worth of 64 B messages");
        assert!(v["config"]["batch"].is_null(), "no --batch given");
        assert_eq!(v["config"]["duration_ns_per_round"], 500_000_000u64);
    }

    #[test]
    fn the_default_stream_batch_is_64_kib_worth() {
        assert_eq!(default_batch(64), 1024);
        assert_eq!(default_batch(100), 655);
        assert_eq!(default_batch(1024), 64);
        assert_eq!(default_batch(65536), 64);
        assert_eq!(default_batch(0), 1024);
        let explicit = RunConfig {
            batch: Some(8),
            ..config()
        };
        assert_eq!(explicit.batch_for(64), 8);
        let short = RunConfig {
            amount: Amount::Messages(500),
            ..config()
        };
        assert_eq!(
            short.batch_for(64),
            62,
            "a short run still spans several batches"
        );
    }

    /// `--alloc`: shm and uds streams of 1 MiB (and a tcp pingpong): duct's rows say alloc and
    /// carry the sending end's copy counters (null off shm), raw's say `"alloc": false`; the
    /// table names the rows, shows the copy columns and shm (alloc) ÷ uds, and explains.
    #[test]
    fn alloc_rows_report_their_copies() {
        let mib = 1 << 20;
        let stream = |system, rate, copies| {
            summarize(
                system,
                &[RunResult {
                    rtt: None,
                    messages: 1000,
                    msgs_per_sec: rate,
                    allocs_per_msg: 1.0,
                    copies,
                }],
                mib,
            )
        };
        let zero_copy = Copies {
            sent: 1000,
            zero_copy_frames: 1000,
            copied_frames: 0,
            copied_bytes: 0,
        };
        let heap = Copies {
            zero_copy_frames: 0,
            ..zero_copy
        };
        let case = |transport, duct, raw, ratio| CaseResult {
            transport,
            pattern: Pattern::Stream,
            size: mib,
            duct,
            raw: Some(raw),
            ratios: Some(Ratios::Stream {
                msgs_per_sec: ratio,
            }),
            loaded: None,
            reliable: None,
            scale: None,
        };
        let mut cases = cases();
        cases.truncate(1); // The tcp pingpong, without copies.
        cases.push(case(
            Transport::Shm,
            stream(System::Duct, 12_000.0, Some(zero_copy)),
            stream(System::Raw, 20_000.0, None),
            0.6,
        ));
        cases.push(case(
            Transport::Uds,
            stream(System::Duct, 1000.0, Some(heap)),
            stream(System::Raw, 1500.0, None),
            0.67,
        ));
        let alloc = RunConfig {
            alloc: true,
            ..config()
        };
        let host = Host {
            cpus: 2,
            kernel: "k".into(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&to_json("0.1.0", &host, &alloc, &cases)).expect("valid JSON");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 6);
        for r in results {
            let duct = r["system"] == "duct";
            assert_eq!(r["alloc"], duct, "{r}");
            assert_eq!(r.get("copied_bytes_per_msg").is_some(), duct, "{r}");
        }
        let shm = &results[2];
        assert_eq!(shm["transport"], "shm");
        assert_eq!(shm["zero_copy_frames"], 1000);
        assert_eq!(shm["copied_frames"], 0);
        assert_eq!(shm["copied_bytes"], 0);
        assert_eq!(shm["copied_bytes_per_msg"], 0.0);
        let uds = &results[4];
        assert_eq!(uds["transport"], "uds");
        for key in [
            "zero_copy_frames",
            "copied_frames",
            "copied_bytes",
            "copied_bytes_per_msg",
        ] {
            assert!(
                uds[key].is_null(),
                "{key}: duct counts copies on shm only: {uds}"
            );
            assert!(results[0][key].is_null(), "tcp pingpong: {}", results[0]);
        }

        let table = to_table(&alloc, &cases);
        for needle in [
            "zero-copy",
            "copied/msg",
            "duct alloc",
            "shm (alloc) ÷ uds raw: 8.00× (1 MiB;",
            "shm (alloc) ÷ uds duct: 12.00× (1 MiB;",
            "--alloc: duct's sending end",
            "produced in place",
            "the echo sends back the message it received",
        ] {
            assert!(table.contains(needle), "{needle} missing:\n{table}");
        }
        let shm_row = table
            .lines()
            .find(|l| l.starts_with("shm"))
            .expect("an shm row");
        assert!(
            shm_row.contains("100%") && shm_row.ends_with("0 B"),
            "{shm_row}"
        );
        // A few copies among many messages (no pool slot came back in time) do not show as
        // 100%.
        let mut some_copied = cases.clone();
        some_copied[1].duct.copies = Some(Copies {
            zero_copy_frames: 99_999,
            copied_frames: 1,
            copied_bytes: mib as u64,
            sent: 100_000,
        });
        let table = to_table(&alloc, &some_copied);
        let shm_row = table.lines().find(|l| l.starts_with("shm")).unwrap();
        assert!(shm_row.contains(" 99.99% "), "{shm_row}");
        assert!(shm_row.ends_with("10 B"), "{shm_row}");
        let uds_row = table.lines().find(|l| l.starts_with("uds")).unwrap();
        let cells: Vec<&str> = uds_row.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["-", "-"], "{uds_row}");
        // Without --alloc: none of it, and every row says false.
        let plain = to_table(&config(), &cases);
        assert!(
            !plain.contains("zero-copy") && !plain.contains("shm (alloc)"),
            "{plain}"
        );
        assert!(!plain.contains("duct alloc"), "{plain}");
        let v: serde_json::Value =
            serde_json::from_str(&to_json("0.1.0", &host, &config(), &cases)).unwrap();
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["alloc"], false, "{r}");
            assert!(r.get("zero_copy_frames").is_none(), "{r}");
        }
        // No uds case, no comparison.
        let alone = to_table(&alloc, &cases[..2]);
        assert!(!alone.contains("shm (alloc) ÷"), "{alone}");
    }

    fn mixed_case() -> CaseResult {
        let rtt = |values: &[u64]| {
            let mut h = new_rtt_histogram();
            for &v in values {
                h.record(v).unwrap();
            }
            RunResult {
                messages: h.len(),
                rtt: Some(h),
                msgs_per_sec: 20_000.0,
                allocs_per_msg: 0.0,
                copies: None,
            }
        };
        let idle = [rtt(&[40_000, 50_000, 60_000])];
        let loaded = [rtt(&[80_000, 100_000, 600_000])];
        CaseResult {
            transport: Transport::Uds,
            pattern: Pattern::Mixed,
            size: 64,
            duct: summarize(System::Duct, &idle, 64),
            raw: Some(summarize(System::Raw, &idle, 64)),
            ratios: None,
            loaded: Some(Loaded {
                duct: summarize(System::Duct, &loaded, 64),
                bulk_msgs_per_sec: 16_384.0, // 1024 MiB/s of 64 KiB messages.
                vs_idle: crate::bench::stats::ratios(Pattern::Mixed, &loaded, &idle),
            }),
            reliable: None,
            scale: None,
        }
    }

    #[test]
    fn mixed_json_rows() {
        let host = Host {
            cpus: 2,
            kernel: "k".into(),
        };
        let text = to_json("0.1.0", &host, &config(), &[mixed_case()]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 3, "{text}");
        let (idle, loaded, raw) = (&results[0], &results[1], &results[2]);
        for r in results {
            assert_eq!(r["pattern"], "mixed");
            assert!(r["rtt_ns"]["p99"].as_u64().unwrap() > 0, "{r}");
        }
        assert_eq!(idle["system"], "duct");
        assert_eq!(idle["load"], "idle");
        assert_eq!(idle["realtime_channel"], 1);
        assert_eq!(idle["realtime_priority"], 200);
        assert_eq!(idle["bulk_channel"], 2);
        assert_eq!(idle["bulk_size"], 65536);
        assert!(idle.get("bulk_mib_per_sec").is_none());
        assert_eq!(loaded["load"], "loaded");
        assert_eq!(loaded["bulk_mib_per_sec"], 1024.0);
        assert_eq!(loaded["bulk_bytes_per_sec"], 1024.0 * 1048576.0);
        assert_eq!(loaded["bulk_msgs_per_sec"], 16_384.0);
        let p99 = loaded["ratio_vs_idle"]["p99"].as_f64().unwrap();
        assert!((p99 - 10.0).abs() < 0.05, "600 µs ÷ 60 µs: {p99}");
        assert_eq!(raw["system"], "raw");
        assert_eq!(raw["load"], "idle");
        assert_eq!(raw["reference"], "pingpong");
        assert!(raw.get("ratio_vs_raw").is_none() && raw.get("ratio_vs_idle").is_none());
    }

    #[test]
    fn mixed_table_rows() {
        let text = to_table(&config(), &[mixed_case()]);
        assert!(text.contains("\nmixed: realtime round-trip"), "{text}");
        assert!(text.contains("priority 200"), "{text}");
        assert!(text.contains("loaded÷idle"), "{text}");
        assert!(text.contains("1024.0"), "bulk MiB/s: {text}");
        assert!(text.contains("10.00×"), "p99 ratio: {text}");
        assert!(text.contains("raw: a plain ping-pong"), "{text}");
        assert!(!text.contains("\npingpong:"), "no pingpong section: {text}");
        let loaded = text.lines().find(|l| l.contains("loaded ")).unwrap();
        assert!(loaded.trim_start().starts_with("duct"), "{loaded}");
    }

    /// [`cases`] measured with `--reliable`: pingpong reliable at 12 µs p50 beside 10 µs
    /// realtime, stream reliable at 1.6e7 msgs/s beside 2e7.
    fn reliable_cases() -> Vec<CaseResult> {
        let mut cases = cases();
        let mut h = new_rtt_histogram();
        for v in [11_000, 12_000, 13_000, 60_000] {
            h.record(v).unwrap();
        }
        cases[0].reliable = Some(Reliable {
            duct: summarize(
                System::Duct,
                &[RunResult {
                    rtt: Some(h),
                    messages: 4,
                    msgs_per_sec: 80_000.0,
                    allocs_per_msg: 0.0,
                    copies: None,
                }],
                64,
            ),
            vs_realtime: Ratios::PingPong {
                p50: 1.2,
                p99: 1.25,
                p999: 1.5,
                max: 1.75,
            },
            vs_raw: Some(Ratios::PingPong {
                p50: 1.26,
                p99: 1.5,
                p999: 1.95,
                max: f64::NAN,
            }),
        });
        cases[1].reliable = Some(Reliable {
            duct: summarize(
                System::Duct,
                &[RunResult {
                    rtt: None,
                    messages: 1_000_000,
                    msgs_per_sec: 1.6e7,
                    allocs_per_msg: 0.5,
                    copies: None,
                }],
                64,
            ),
            vs_realtime: Ratios::Stream { msgs_per_sec: 0.8 },
            vs_raw: None,
        });
        cases
    }

    #[test]
    fn reliable_json_rows() {
        let host = Host {
            cpus: 2,
            kernel: "k".into(),
        };
        let text = to_json("0.1.0", &host, &config(), &reliable_cases());
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 6, "{text}");
        let rows: Vec<(&str, &str, bool)> = results
            .iter()
            .map(|r| {
                (
                    r["pattern"].as_str().unwrap(),
                    r["system"].as_str().unwrap(),
                    r["reliable"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("pingpong", "duct", false),
                ("pingpong", "duct", true),
                ("pingpong", "raw", false),
                ("stream", "duct", false),
                ("stream", "duct", true),
                ("stream", "raw", false),
            ]
        );
        let (pp, st) = (&results[1], &results[4]);
        assert_eq!(pp["ratio_vs_realtime"]["p50"], 1.2);
        assert_eq!(pp["ratio_vs_realtime"]["max"], 1.75);
        assert_eq!(pp["ratio_vs_raw"]["p50"], 1.26);
        assert!(pp["ratio_vs_raw"]["max"].is_null(), "NaN becomes null");
        assert_eq!(pp["rtt_ns"]["p50"].as_u64().unwrap() / 1000, 12, "{pp}");
        assert_eq!(st["ratio_vs_realtime"]["msgs_per_sec"], 0.8);
        assert_eq!(st["ratio_vs_realtime"]["bytes_per_sec"], 0.8);
        assert!(st.get("ratio_vs_raw").is_none(), "none given: {st}");
        assert_eq!(st["msgs_per_sec"], 1.6e7);
        assert_eq!(st["batch"], 1024);
        // The realtime rows are as without --reliable.
        for r in [&results[0], &results[3]] {
            assert!(r.get("ratio_vs_realtime").is_none(), "{r}");
            assert!(r.get("ratio_vs_raw").is_some(), "{r}");
        }
        let plain = to_json("0.1.0", &host, &config(), &cases());
        for line in plain.lines() {
            assert!(text.contains(line.trim_end_matches(',')), "{line}");
        }
    }

    #[test]
    fn reliable_table_rows() {
        let text = to_table(&config(), &reliable_cases());
        assert!(
            text.contains("ratios duct÷raw and reliable÷realtime"),
            "{text}"
        );
        let rows_of = |system: &str| -> Vec<&str> {
            text.lines()
                .filter(|l| l.split("  ").any(|cell| cell.trim() == system))
                .collect()
        };
        let reliable = rows_of("duct reliable");
        assert_eq!(reliable.len(), 2, "{text}");
        assert!(reliable[0].contains("12.0"), "p50: {}", reliable[0]);
        assert!(reliable[1].contains("16.00 M"), "msgs/s: {}", reliable[1]);
        let ratios = rows_of("reliable÷realtime");
        assert_eq!(ratios.len(), 2, "{text}");
        assert!(
            ratios[0].contains("1.20×") && ratios[0].contains("1.75×"),
            "{}",
            ratios[0]
        );
        assert!(ratios[1].contains("0.80×"), "{}", ratios[1]);
        // Order within a case: duct, duct reliable, raw, duct÷raw, reliable÷realtime.
        let systems: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("transport"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l[17..].split("  ").next().unwrap())
            .collect();
        assert_eq!(
            systems,
            [
                "duct",
                "duct reliable",
                "raw",
                "duct÷raw",
                "reliable÷realtime"
            ],
            "{text}"
        );
        assert!(text.contains("\nduct reliable: duct again"), "{text}");
        // Without --reliable, none of it.
        let plain = to_table(&config(), &cases());
        assert!(!plain.contains("reliable"), "{plain}");
        assert!(
            plain.contains("; ratio duct÷raw per round, median: lower"),
            "{plain}"
        );
    }

    /// A scale case on `transport`: 1000 pipes at 1.6 M msgs/s beside one pipe at 2 M; on tcp
    /// and uds also raw on 1000 sockets at 3.2 M and on one at 2.5 M.
    fn scale_case(transport: Transport, figures: bool) -> CaseResult {
        use crate::bench::scale::ThreadCount;
        let run = |rate| RunResult {
            rtt: None,
            messages: 1_000_000,
            msgs_per_sec: rate,
            allocs_per_msg: 0.0,
            copies: None,
        };
        let (many, one) = ([run(1.6e6)], [run(2e6)]);
        let (raw_many, raw_one) = ([run(3.2e6)], [run(2.5e6)]);
        let with_raw = matches!(transport, Transport::Tcp | Transport::Uds);
        let figures_of = |pipes, rss: f64| ScaleFigures {
            pipes,
            threads: figures.then_some(ThreadCount { duct: 1, total: 6 }),
            rss_per_pipe: figures.then_some(rss),
            peer_rss_per_pipe: figures.then_some(rss / 2.0),
            peer_threads_duct: figures.then_some(1),
            cpu: figures.then_some(crate::bench::scale::CpuPerMsg {
                duct_ns: 169.4,
                app_ns: 70.6,
                peer_ns: Some(171.0),
            }),
        };
        CaseResult {
            transport,
            pattern: Pattern::Scale,
            size: 64,
            duct: summarize(System::Duct, &many, 64),
            raw: with_raw.then(|| summarize(System::Raw, &raw_many, 64)),
            ratios: with_raw.then(|| crate::bench::stats::ratios(Pattern::Scale, &many, &raw_many)),
            loaded: None,
            reliable: None,
            scale: Some(Scale {
                pipes: 1000,
                batch: 16,
                rx_threads: 2,
                receive: scale::Receive::Async,
                many: figures_of(1000, 53_555.2),
                one_pipe: summarize(System::Duct, &one, 64),
                one: figures_of(1, 1_300_000.0),
                vs_one_pipe: crate::bench::stats::ratios(Pattern::Scale, &many, &one),
                raw: with_raw.then(|| RawScale {
                    many: figures_of(1000, 4096.0),
                    one_pipe: summarize(System::Raw, &raw_one, 64),
                    one: figures_of(1, 0.0),
                    vs_one_pipe: crate::bench::stats::ratios(Pattern::Scale, &raw_many, &raw_one),
                    duct_vs_raw_one_pipe: crate::bench::stats::ratios(
                        Pattern::Scale,
                        &one,
                        &raw_one,
                    ),
                }),
            }),
        }
    }

    #[test]
    fn scale_json_rows() {
        let host = Host {
            cpus: 2,
            kernel: "k".into(),
        };
        let mut all = cases();
        all.push(scale_case(Transport::Uds, true));
        all.push(scale_case(Transport::Shm, false));
        let text = to_json("0.1.0", &host, &config(), &all);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 10, "{text}");
        // Every row says how many pipes it used; every field name of the others stays.
        for r in &results[..4] {
            assert_eq!(r["pipes"], 1, "{r}");
            assert!(r.get("threads_duct").is_none(), "{r}");
        }
        let (many, one) = (&results[4], &results[5]);
        for (i, r) in results[4..].iter().enumerate() {
            assert_eq!(r["pattern"], "scale", "{r}");
            let raw = (2..4).contains(&i);
            assert_eq!(r["system"], if raw { "raw" } else { "duct" }, "{r}");
            assert_eq!(r["batch"], 16, "{r}");
            for key in [
                "msgs_per_sec",
                "bytes_per_sec",
                "allocs_per_msg",
                "messages",
            ] {
                assert!(r.get(key).is_some(), "missing {key} in {r}");
            }
            assert!(r.get("rtt_ns").is_none(), "{r}");
        }
        assert_eq!(many["pipes"], 1000);
        assert_eq!(many["msgs_per_sec"], 1.6e6);
        assert_eq!(many["bytes_per_sec"], 1.6e6 * 64.0);
        assert_eq!(many["rx_threads"], 2);
        assert_eq!(many["receive"], "async");
        assert_eq!(many["threads_duct"], 1);
        assert_eq!(many["threads_total"], 6);
        assert_eq!(many["rss_per_pipe_bytes"], 53_555.2);
        assert_eq!(many["peer_rss_per_pipe_bytes"], 53_555.2 / 2.0);
        assert_eq!(many["peer_threads_duct"], 1);
        assert_eq!(many["cpu_ns_per_msg_duct"], 169.4);
        assert_eq!(many["cpu_ns_per_msg_app"], 70.6);
        assert_eq!(many["cpu_ns_per_msg_peer"], 171.0);
        assert_eq!(many["ratio_vs_one_pipe"]["msgs_per_sec"], 0.8);
        assert_eq!(many["ratio_vs_one_pipe"]["bytes_per_sec"], 0.8);
        assert!(many.get("reference").is_none());
        assert_eq!(one["pipes"], 1);
        assert_eq!(one["rx_threads"], 1);
        assert_eq!(one["reference"], "one_pipe");
        assert_eq!(one["msgs_per_sec"], 2e6);
        assert!(one.get("ratio_vs_one_pipe").is_none());
        // duct ÷ raw on as many pipes as sockets.
        assert_eq!(many["ratio_vs_raw"]["msgs_per_sec"], 0.5);
        assert_eq!(one["ratio_vs_raw"]["msgs_per_sec"], 0.8);
        let (raw_many, raw_one) = (&results[6], &results[7]);
        assert_eq!(raw_many["pipes"], 1000);
        assert_eq!(raw_many["msgs_per_sec"], 3.2e6);
        assert_eq!(raw_many["backend"], "tokio");
        assert_eq!(raw_many["rx_threads"], 2);
        assert_eq!(raw_many["ratio_vs_one_pipe"]["msgs_per_sec"], 1.28);
        assert_eq!(raw_one["pipes"], 1);
        assert_eq!(raw_one["reference"], "one_pipe");
        for raw in [raw_many, raw_one] {
            // No duct thread is the baseline's; every other figure is there.
            assert!(raw["threads_duct"].is_null(), "{raw}");
            assert!(raw["peer_threads_duct"].is_null(), "{raw}");
            assert_eq!(raw["threads_total"], 6, "{raw}");
            assert!(raw.get("ratio_vs_raw").is_none(), "{raw}");
            // The whole measuring process's CPU is the baseline's.
            assert!(raw["cpu_ns_per_msg_duct"].is_null(), "{raw}");
            assert_eq!(raw["cpu_ns_per_msg_app"], 240.0, "{raw}");
            assert_eq!(raw["cpu_ns_per_msg_peer"], 171.0, "{raw}");
        }
        // Unknown figures (off Linux) are null; shm has no raw rows.
        let shm = &results[8];
        assert_eq!(shm["transport"], "shm");
        for key in [
            "threads_duct",
            "threads_total",
            "rss_per_pipe_bytes",
            "peer_threads_duct",
            "cpu_ns_per_msg_duct",
            "cpu_ns_per_msg_app",
            "cpu_ns_per_msg_peer",
        ] {
            assert!(shm[key].is_null(), "{key} in {shm}");
        }
    }

    #[test]
    fn scale_table_rows() {
        let text = to_table(
            &config(),
            &[
                scale_case(Transport::Uds, true),
                scale_case(Transport::Shm, false),
            ],
        );
        assert!(
            text.contains("\nscale: total receive rate over N pipes"),
            "{text}"
        );
        assert!(text.contains("send_slices of 16 messages"), "{text}");
        assert!(text.contains("on 2 threads"), "{text}");
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("transport"))
            .skip(1)
            .take_while(|l| !l.starts_with("scale:"))
            .collect();
        // uds: duct 1000, 1, N÷1, raw 1000, 1, N÷1, duct÷raw 1000, 1; shm: duct's three.
        assert_eq!(rows.len(), 11, "{text}");
        assert!(rows[0].starts_with("uds"), "{}", rows[0]);
        assert!(
            rows[0].contains("duct") && rows[0].contains(" 1000 ") && rows[0].contains("1.60 M"),
            "{}",
            rows[0]
        );
        assert!(rows[0].contains("52.3 KiB"), "RSS/pipe: {}", rows[0]);
        assert!(
            rows[1].contains("2.00 M") && rows[1].contains("1.24 MiB"),
            "{}",
            rows[1]
        );
        assert!(
            rows[2].contains("N÷1") && rows[2].contains("0.80×"),
            "{}",
            rows[2]
        );
        let raw_rows = [
            ("raw", "1000", "3.20"),
            ("raw", "1", "2.50"),
            ("raw", "N÷1", "1.28×"),
            ("duct÷raw", "1000", "0.50×"),
            ("duct÷raw", "1", "0.80×"),
        ];
        for (row, (system, pipes, figure)) in rows[3..8].iter().zip(raw_rows) {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(&cells[..3], [system, pipes, figure], "{row}");
        }
        // (Then "M", MB/s.) The baseline has no duct thread.
        assert_eq!(rows[3].split_whitespace().nth(5), Some("-"), "{}", rows[3]);
        // CPU per message: duct's threads, the application's, the peer's; on a raw row, all
        // of the measuring process is the application's.
        assert!(
            rows[0].contains("169 ns") && rows[0].contains(" 71 ns") && rows[0].contains("171 ns"),
            "{}",
            rows[0]
        );
        assert!(
            rows[3].contains("240 ns") && rows[3].contains("171 ns") && !rows[3].contains("169 ns"),
            "{}",
            rows[3]
        );
        assert!(
            text.contains("CPU/msg: time on a CPU per message"),
            "{text}"
        );
        assert!(
            rows[8].starts_with("shm") && rows[8].contains("n/a"),
            "{}",
            rows[8]
        );
        assert!(rows[10].contains("N÷1"), "{}", rows[10]);
        assert!(
            text.contains("raw: the same traffic on plain sockets"),
            "{text}"
        );
        // Without raw rows, the reference is said to be duct's own.
        let shm_only = to_table(&config(), &[scale_case(Transport::Shm, false)]);
        assert!(shm_only.contains("no raw baseline: the reference is duct's own single pipe"));
        assert!(
            text.contains("scale on shm: every pipe maps duct's own segment"),
            "{text}"
        );
        assert!(text.contains("4096 × 256 B"), "{text}");
        // Scale's shm rows have no raw ring to explain.
        assert!(!text.contains("raw: one single-producer"), "{text}");
        // Without a scale case, no scale section.
        assert!(!to_table(&config(), &cases()).contains("scale"));
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(None), "n/a");
        assert_eq!(bytes(Some(812.0)), "812 B");
        assert_eq!(bytes(Some(-2048.0)), "-2.0 KiB");
        assert_eq!(bytes(Some(53_555.2)), "52.3 KiB");
        assert_eq!(bytes(Some(1.25 * MIB)), "1.25 MiB");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(json_f64(5.0), "5.0");
        assert_eq!(json_f64(f64::INFINITY), "null");
    }

    #[test]
    fn table_shows_both_systems_and_the_ratio() {
        let text = to_table(&config(), &cases());
        assert!(text.contains("lower is better"), "{text}");
        assert!(text.contains("higher is better"), "{text}");
        assert!(text.contains("duct÷raw"), "{text}");
        assert!(text.contains("1.05×"), "{text}");
        assert!(text.contains("0.40×"), "{text}");
        assert!(text.contains("20.00 M"), "{text}");
        assert!(text.contains("10.0"), "p50 of 10 µs: {text}");
    }

    #[test]
    fn number_formats() {
        assert_eq!(us(7_250), "7.25");
        assert_eq!(us(123_456), "123.5");
        assert_eq!(per_sec(85_300_000.0), "85.30 M");
        assert_eq!(per_sec(92_345.0), "92.3 k");
        assert_eq!(allocs(0.0), "0");
        assert_eq!(allocs(0.0005), "5.0e-4");
        assert_eq!(allocs(0.000_021), "2.1e-5");
        assert_eq!(allocs(2.0), "2.00");
        assert_eq!(times(f64::NAN), "-");
    }
}
