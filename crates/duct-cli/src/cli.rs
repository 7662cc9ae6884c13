//! The command line: subcommands and their arguments (clap derive).
//!
//! Parsing of the bench's value syntaxes (lists, sizes, durations) lives in
//! [`crate::bench::spec`], next to the types it produces; this module only wires them to
//! flags and writes the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::spec::{self, PatternSelection, SizeList, TransportSelection};

/// duct: message-oriented communication between game-server processes.
#[derive(Debug, Parser)]
#[command(name = "duct", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `duct`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure duct beside a raw-socket baseline, in the same run.
    ///
    /// Without arguments: a short tour (tcp, uds, shm on Linux and tls, ping-pong and
    /// stream, 64 B messages, 3 interleaved duct/raw rounds), then a table. Ratios are duct ÷ raw, taken round by
    /// round (duct, raw, duct, raw, ...) and the median reported, so that a noisy machine
    /// hits both systems alike.
    ///
    /// pingpong: one message out, the same size back, one at a time; round-trip time
    /// percentiles from an HDR histogram. stream: one side sends as fast as it can, the
    /// other receives and measures messages/s and payload bytes/s from first to last
    /// message. By default the two ends are two processes (this executable started again
    /// as the peer); --threads puts both in one process.
    ///
    /// The raw baseline is blocking std sockets (TCP_NODELAY for tcp) with a 4-byte
    /// big-endian length prefix per message, a BufReader on the receiving side and a
    /// BufWriter on the sending side, flushed after each message in ping-pong and only when
    /// full (and at the end) in stream: that is its equivalent of duct's --batch.
    ///
    /// tls: both systems use a CA and a server certificate (localhost, 127.0.0.1) made for
    /// the run in a temporary directory, removed after; duct listens on tls://127.0.0.1:0,
    /// and the raw baseline is the tcp one over a rustls session (TLS 1.3, ring). tls is
    /// left out where duct was built without TLS.
    ///
    /// shm (Linux): duct listens on shm://duct-bench-<pid>-<n>. The raw baseline is one
    /// single-producer single-consumer ring per direction in a sealed memfd segment passed
    /// over a Unix socket (duct-sys's ring, pool and futex wait, no duct protocol): payloads
    /// up to 256 bytes copied into and out of the ring after their descriptors (as duct sends
    /// them), larger ones into and out of pool slots, a waiting end spinning 20 µs (duct's
    /// default spin) before it parks on a futex (and, waiting for an answer, fetching the
    /// lines the answer will be in, as duct does), wake-ups after each message in ping-pong
    /// and once per batch in stream. --spin: both systems spin and never park.
    Bench(BenchArgs),

    /// Listen on ADDR and print each message received as a line on stdout.
    ///
    /// Accepts connections one after another, each on a thread of its own. The bound
    /// address (with the port resolved) is printed on stderr as `listening on ADDR`.
    /// Example: duct listen tcp://127.0.0.1:7000 --echo
    Listen(ListenArgs),

    /// Dial ADDR, send each line of stdin as one message, print what comes back.
    ///
    /// Each line becomes one message, without its newline. Messages received are printed
    /// on stdout, one per line. On end of input the pipe is closed gracefully (after
    /// waiting up to --wait for as many messages as were sent to come back) and duct
    /// exits with 0. Example: echo hello | duct dial tcp://127.0.0.1:7000 --wait 1s
    Dial(DialArgs),

    /// List this host's live shm:// endpoints: name, listening process, connections.
    ///
    /// Linux. Reads /proc/net/unix for listening sockets at the abstract address
    /// @duct-shm/NAME (where a duct listener on shm://NAME waits for dialers), and
    /// /proc/*/fd for the processes that hold them (processes this user cannot read are
    /// skipped: PID shows -). CONNECTIONS counts the sockets the kernel shows connected at the
    /// same address: the listener's side of each accepted connection (a dialer's socket has
    /// no address). A dialer that just went away stays counted until the listener closes its
    /// side, which duct does at once. --json adds the connections still in the kernel's
    /// backlog (pending) and the socket's inode.
    Shm(ShmArgs),

    /// The far end of `duct bench` in two-process mode (started by `duct bench` itself).
    #[command(hide = true)]
    BenchPeer(BenchPeerArgs),
}

/// CPU placement of the two ends of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PinArg {
    /// Leave placement to the scheduler.
    None,
    /// Both ends on CPU 0.
    Same,
    /// The measuring end on CPU 0, the peer on CPU 1.
    Split,
}

/// How the measuring end of a scale case receives on its pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScaleReceiveArg {
    /// One tokio task per pipe awaiting Pipe::recv_async, then taking what else is ready
    /// (recv_into with a zero timeout), on 2 worker threads: an event-driven server.
    Async,
    /// 2 threads sweeping all pipes with non-blocking receives (try_recv, then recv_into
    /// with a zero timeout), yielding once after a sweep that found nothing: a polling loop.
    Sweep,
}

/// The backend of duct's reactor (`duct::set_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Whatever duct picks by default: io_uring where the kernel allows it, else epoll (the
    /// `DUCT_BACKEND` environment variable, if set, decides).
    Auto,
    /// epoll (through mio).
    Epoll,
    /// io_uring; where it cannot start, duct falls back to epoll with a warning.
    Uring,
}

/// Arguments of `duct bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Transports, comma-separated: tcp, uds, shm, tls, or all (= those available).
    #[arg(long, value_name = "LIST", default_value = "all", value_parser = spec::parse_transports)]
    pub transport: TransportSelection,

    /// Patterns, comma-separated: pingpong, stream, mixed, scale, or all (= pingpong,stream).
    ///
    /// mixed (duct only, run only when named): ping-pong on channel 1 at priority 200,
    /// alone (idle) and while a second thread sends 64 KiB messages on channel 2 of the same
    /// pipe as fast as it can (loaded); reports both latencies, the bulk throughput and
    /// loaded ÷ idle. The raw baseline, which has no channels, runs a plain ping-pong as the
    /// idle reference.
    ///
    /// scale (run only when named): --pipes pipes on one listener of this
    /// process; the peer dials them all and sends --size messages on every one, round-robin,
    /// with Pipe::send_slices of up to 16 messages per pipe (--batch if lower; 1: send_slice);
    /// this process receives with 2 threads, as --scale-receive says (default: a tokio task
    /// per pipe awaiting recv_async). In the same rounds, the same traffic on one pipe
    /// (received with one thread) is the reference: reports total msgs/s for both and N pipes ÷
    /// one per round, duct's own threads (named duct-*) and all threads of this process,
    /// RSS per pipe in both processes (VmRSS growth ÷ pipes; Linux), and CPU time per message
    /// of duct's threads, the other threads of this process and the sending process (Linux).
    /// Then on tcp and uds the
    /// raw baseline, the same traffic on --pipes plain sockets and on one (one write of the
    /// batch's length-prefixed frames per socket in turn; received by a tokio task per socket,
    /// or sweeping, on as many threads): its own N ÷ 1, and duct ÷ raw on as many pipes.
    #[arg(long, value_name = "LIST", default_value = "all", value_parser = spec::parse_patterns)]
    pub pattern: PatternSelection,

    /// Scale: how this process receives on its pipes.
    #[arg(long, value_enum, value_name = "HOW", default_value = "async")]
    pub scale_receive: ScaleReceiveArg,

    /// Scale: the number of pipes the peer opens to this process's listener.
    #[arg(long, value_name = "N", default_value_t = crate::bench::scale::DEFAULT_PIPES, value_parser = parse_pipes)]
    pub pipes: usize,

    /// Payload sizes in bytes, comma-separated; K/KiB and M/MiB suffixes are binary
    /// (64,1K,64KiB,1MiB).
    #[arg(long, value_name = "LIST", default_value = "64", value_parser = spec::parse_sizes)]
    pub size: SizeList,

    /// Measured messages per round and system (round trips for pingpong), after warmup.
    #[arg(long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,

    /// Measured time per round and system instead of a message count (500ms, 2s, 1m)
    /// [default: 500ms].
    #[arg(long, value_name = "TIME", value_parser = spec::parse_duration)]
    pub duration: Option<std::time::Duration>,

    /// Messages (round trips for pingpong) sent before measuring, in every round (scale: at
    /// least one batch per pipe, and for at least 1.5 s, past every pipe's first metrics
    /// publication).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub warmup: u64,

    /// Rounds per case; each round runs duct, then raw (with --reliable: duct realtime,
    /// duct reliable, then raw).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Both ends as threads of one process (default: two processes).
    #[arg(long)]
    pub threads: bool,

    /// CPU placement of the two ends, the same for duct and raw.
    #[arg(long, value_enum, default_value = "none")]
    pub pin: PinArg,

    /// Run duct only, without the raw baseline (no ratios).
    #[arg(long)]
    pub no_baseline: bool,

    /// Write every result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write an SVG plot of ping-pong (and mixed) latency by percentile, per system, to
    /// FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Stream: duct sends with Pipe::send_slices and receives with Pipe::recv_into, N
    /// messages at most per call; 1 = plain send/recv. Default: as many messages as fill
    /// 64 KiB (the raw baseline's BufWriter), from 64 to 1024.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: Option<u64>,

    /// Mixed: pace the bulk channel with a duct rate limit of this many MiB/s (a
    /// `ChannelOptions::rate_limit`), instead of letting it take all the link and, on
    /// loopback, all the CPU. Default: unpaced.
    #[arg(long, value_name = "MIB_PER_SEC")]
    pub bulk_rate: Option<f64>,

    /// Channels per pipe (only 1 for now).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub channels: u32,

    /// Also measure duct on a reliable channel: in every round of a pingpong or stream
    /// case, duct runs twice, on a realtime channel (the default) and on a reliable one
    /// (`ChannelOptions::reliable(true)` on both ends), then raw; the table adds the
    /// `duct reliable` rows and reliable÷realtime ratios per round, median. mixed keeps its
    /// realtime channels.
    #[arg(long)]
    pub reliable: bool,

    /// shm: both ends spin on the ring and never sleep, in duct (DialOptions/ListenOptions
    /// spin(Duration::MAX)) and in the raw baseline. Each spinning end takes a CPU.
    #[arg(long)]
    pub spin: bool,

    /// pingpong and stream: duct's sending end builds every message with Pipe::alloc(size),
    /// writes in place only the byte the workload needs (payload[0], the last-message flag),
    /// then freeze() and sends it (stream: send_batch of such messages; pingpong: the
    /// initiating side allocs, the echo sends back what it received). The payload is
    /// produced in place, the point of the API: on shm the buffer is a slot of the shared
    /// pool and the message moves as a descriptor, with no payload copy (the table and the
    /// JSON show the sending end's PipeStats zero_copy_frames and payload_bytes_copied over
    /// the measured phase); on tcp, uds and tls alloc returns a heap buffer, an allocation per
    /// message. The raw baseline is unchanged. With shm and uds streams, the table adds shm
    /// (alloc) ÷ uds, raw and duct (bytes/s, from the medians).
    #[arg(long)]
    pub alloc: bool,

    /// duct's reactor backend, in both bench processes. The table and the JSON report the
    /// one that ran.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
}

/// Parses `--pipes`: 1 to 1,000,000.
fn parse_pipes(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=1_000_000) => Ok(n),
        _ => Err(format!(
            "invalid number of pipes {s:?} (expected 1 to 1000000)"
        )),
    }
}

/// Arguments of `duct listen`.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to listen on: tcp://127.0.0.1:7000, tls://127.0.0.1:7443 (with --tls-cert and
    /// --tls-key), uds:///tmp/game.sock, uds://@name, ...
    pub addr: String,
    /// Send each message back to its sender.
    #[arg(long)]
    pub echo: bool,
    /// Print messages as hex instead of text.
    #[arg(long)]
    pub hex: bool,
    /// The certificate chain to present (PEM), with --tls-key. Needed for a tls://
    /// address; on a tcp:// address it turns TLS on.
    #[arg(long, value_name = "PEM", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CA in this PEM file (mutual TLS).
    #[arg(long, value_name = "PEM", requires = "tls_cert", help_heading = "TLS")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Arguments of `duct dial`.
#[derive(Debug, Clone, Args)]
pub struct DialArgs {
    /// Address to dial: tcp://127.0.0.1:7000, tls://127.0.0.1:7443 (with --tls-ca),
    /// uds:///tmp/game.sock, uds://@name, ...
    pub addr: String,
    /// Channel to send on.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub channel: u16,
    /// On end of input, wait up to TIME for replies (as many as messages sent) before
    /// closing (500ms, 2s).
    #[arg(long, value_name = "TIME", value_parser = spec::parse_duration)]
    pub wait: Option<std::time::Duration>,
    /// Print messages as hex instead of text.
    #[arg(long)]
    pub hex: bool,
    /// Trust server certificates signed by the CA in this PEM file. Needed for a tls://
    /// address; on a tcp:// address it turns TLS on.
    #[arg(long, value_name = "PEM", help_heading = "TLS")]
    pub tls_ca: Option<PathBuf>,
    /// Present this certificate chain (PEM) to the server, with --tls-identity-key
    /// (mutual TLS).
    #[arg(
        long,
        value_name = "PEM",
        requires_all = ["tls_identity_key", "tls_ca"],
        help_heading = "TLS"
    )]
    pub tls_identity_cert: Option<PathBuf>,
    /// The private key of --tls-identity-cert (PEM).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_identity_cert",
        help_heading = "TLS"
    )]
    pub tls_identity_key: Option<PathBuf>,
    /// The name to verify the server's certificate against [default: the host of ADDR].
    #[arg(long, value_name = "NAME", requires = "tls_ca", help_heading = "TLS")]
    pub tls_server_name: Option<String>,
}

/// Arguments of `duct shm`.
#[derive(Debug, Clone, Args)]
pub struct ShmArgs {
    /// Print JSON instead of a table: {"endpoints": [{"name", "pid", "pids",
    /// "connections", "pending", "inode"}]}.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of the hidden `duct bench-peer`.
#[derive(Debug, Clone, Args)]
pub struct BenchPeerArgs {
    /// CPU to pin the peer to.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Process id of the `duct bench` that started this peer: the peer exits if it goes.
    #[arg(long)]
    pub parent: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::{Pattern, Transport};
    use clap::CommandFactory;
    use std::time::Duration;

    fn bench(args: &[&str]) -> BenchArgs {
        let mut argv = vec!["duct", "bench"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Bench(b) => b,
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_defaults() {
        let b = bench(&[]);
        assert_eq!(
            b.transport.transports,
            vec![
                Transport::Tcp,
                Transport::Uds,
                Transport::Shm,
                Transport::Tls
            ]
        );
        assert!(b.transport.all);
        assert_eq!(b.pattern.0, vec![Pattern::PingPong, Pattern::Stream]);
        assert_eq!(b.size.0, vec![64]);
        assert_eq!(b.messages, None);
        assert_eq!(b.duration, None);
        assert_eq!(b.rounds, 3);
        assert_eq!(b.batch, None);
        assert_eq!(b.pin, PinArg::None);
        assert!(!b.threads && !b.no_baseline && !b.reliable);
        assert!(bench(&["--reliable"]).reliable);
        assert!(!b.alloc);
        assert!(bench(&["--alloc"]).alloc);
    }

    #[test]
    fn bench_options() {
        let b = bench(&[
            "--transport",
            "uds,tcp",
            "--pattern",
            "stream",
            "--size",
            "64,1K,64KiB,1MiB",
            "--messages",
            "1000",
            "--warmup",
            "10",
            "--rounds",
            "5",
            "--threads",
            "--pin",
            "split",
            "--no-baseline",
            "--json",
            "out.json",
            "--batch",
            "1",
        ]);
        assert_eq!(b.transport.transports, vec![Transport::Uds, Transport::Tcp]);
        assert!(!b.transport.all);
        assert_eq!(b.pattern.0, vec![Pattern::Stream]);
        assert_eq!(b.size.0, vec![64, 1024, 65536, 1 << 20]);
        assert_eq!(b.messages, Some(1000));
        assert_eq!(b.warmup, 10);
        assert_eq!(b.rounds, 5);
        assert!(b.threads && b.no_baseline);
        assert_eq!(b.pin, PinArg::Split);
        assert_eq!(b.json.as_deref(), Some(std::path::Path::new("out.json")));
        assert_eq!(b.batch, Some(1));
        assert_eq!(
            bench(&["--duration", "2s"]).duration,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn bench_pattern_mixed() {
        assert_eq!(
            bench(&["--pattern", "mixed"]).pattern.0,
            vec![Pattern::Mixed]
        );
        assert_eq!(
            bench(&["--pattern", "pingpong,mixed", "--size", "64"])
                .pattern
                .0,
            vec![Pattern::PingPong, Pattern::Mixed]
        );
        // `all` (the default) stays pingpong and stream.
        assert!(!bench(&["--pattern", "all"])
            .pattern
            .0
            .contains(&Pattern::Mixed));
        assert!(Cli::try_parse_from(["duct", "bench", "--pattern", "mixed,"]).is_err());
    }

    #[test]
    fn bench_pattern_scale_and_pipes() {
        let b = bench(&["--pattern", "scale", "--transport", "tcp,uds,shm"]);
        assert_eq!(b.pattern.0, vec![Pattern::Scale]);
        assert_eq!(b.pipes, 1000);
        assert_eq!(bench(&["--pattern", "scale", "--pipes", "50"]).pipes, 50);
        assert_eq!(b.scale_receive, ScaleReceiveArg::Async);
        assert_eq!(
            bench(&["--scale-receive", "sweep"]).scale_receive,
            ScaleReceiveArg::Sweep
        );
        assert!(Cli::try_parse_from(["duct", "bench", "--scale-receive", "spin"]).is_err());
        assert!(!bench(&[]).pattern.0.contains(&Pattern::Scale));
        for bad in ["0", "-1", "many", "1000001"] {
            assert!(
                Cli::try_parse_from(["duct", "bench", "--pipes", bad]).is_err(),
                "accepted --pipes {bad}"
            );
        }
    }

    /// The help text states the scale pattern's constants: keep them in step.
    #[test]
    fn scale_help_matches_the_constants() {
        use crate::bench::scale::{MAX_SEND_BATCH, RX_THREADS};
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("bench")
            .unwrap()
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains(&format!("up to {MAX_SEND_BATCH} messages per pipe")),
            "{help}"
        );
        assert!(
            help.contains(&format!("receives with {RX_THREADS} threads")),
            "{help}"
        );
        let warmup = crate::bench::scale::WARMUP_MIN_TIME.as_secs_f64();
        assert!(help.contains(&format!("at least {warmup} s")), "{help}");
    }

    #[test]
    fn bench_rejects_bad_values() {
        for bad in [
            &["--messages", "1", "--duration", "1s"][..],
            &["--messages", "0"],
            &["--transport", "carrier-pigeon"],
            &["--pattern", "burst"],
            &["--size", "0"],
            &["--size", "12Q"],
            &["--duration", "soon"],
            &["--rounds", "0"],
            &["--batch", "0"],
            &["--pin", "everywhere"],
        ] {
            let mut argv = vec!["duct", "bench"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&argv).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn listen_and_dial() {
        let cli = Cli::try_parse_from(["duct", "listen", "tcp://127.0.0.1:0", "--echo"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Listen(ListenArgs { echo: true, .. })
        ));
        let cli = Cli::try_parse_from(["duct", "dial", "uds://@x", "--wait", "250ms"]).unwrap();
        match cli.command {
            Command::Dial(d) => {
                assert_eq!(d.addr, "uds://@x");
                assert_eq!(d.wait, Some(Duration::from_millis(250)));
                assert_eq!(d.channel, 0);
            }
            other => panic!("not dial: {other:?}"),
        }
        assert!(Cli::try_parse_from(["duct", "dial"]).is_err());
    }

    #[test]
    fn shm_and_spin() {
        let cli = Cli::try_parse_from(["duct", "shm"]).unwrap();
        assert!(matches!(cli.command, Command::Shm(ShmArgs { json: false })));
        let cli = Cli::try_parse_from(["duct", "shm", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Shm(ShmArgs { json: true })));
        assert!(Cli::try_parse_from(["duct", "shm", "name"]).is_err());
        let b = bench(&["--transport", "shm", "--spin"]);
        assert_eq!(b.transport.transports, vec![Transport::Shm]);
        assert!(b.spin);
        assert!(!bench(&[]).spin);
    }

    fn parses(args: &[&str]) -> bool {
        Cli::try_parse_from(args).is_ok()
    }

    #[test]
    fn listen_tls_flags() {
        let cli = Cli::try_parse_from([
            "duct",
            "listen",
            "tls://127.0.0.1:7443",
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
        ])
        .unwrap();
        match cli.command {
            Command::Listen(l) => {
                assert_eq!(l.tls_cert.as_deref(), Some("server.pem".as_ref()));
                assert_eq!(l.tls_key.as_deref(), Some("server.key".as_ref()));
                assert_eq!(l.tls_client_ca.as_deref(), Some("ca.pem".as_ref()));
            }
            other => panic!("not listen: {other:?}"),
        }
        let cli = Cli::try_parse_from(["duct", "listen", "tcp://127.0.0.1:0"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Listen(ListenArgs {
                tls_cert: None,
                tls_key: None,
                tls_client_ca: None,
                ..
            })
        ));
        // A certificate goes with its key; a client CA needs both; the dialer's flags are
        // not the listener's.
        let l = ["duct", "listen", "tls://127.0.0.1:0"];
        assert!(!parses(&[&l[..], &["--tls-cert", "c"]].concat()));
        assert!(!parses(&[&l[..], &["--tls-key", "k"]].concat()));
        assert!(!parses(&[&l[..], &["--tls-client-ca", "ca"]].concat()));
        assert!(!parses(&[&l[..], &["--tls-ca", "ca"]].concat()));
        assert!(!parses(&[&l[..], &["--tls-server-name", "x"]].concat()));
    }

    #[test]
    fn dial_tls_flags() {
        let cli = Cli::try_parse_from([
            "duct",
            "dial",
            "tls://127.0.0.1:7443",
            "--tls-ca",
            "ca.pem",
            "--tls-identity-cert",
            "client.pem",
            "--tls-identity-key",
            "client.key",
            "--tls-server-name",
            "game-01.internal",
        ])
        .unwrap();
        match cli.command {
            Command::Dial(d) => {
                assert_eq!(d.tls_ca.as_deref(), Some("ca.pem".as_ref()));
                assert_eq!(d.tls_identity_cert.as_deref(), Some("client.pem".as_ref()));
                assert_eq!(d.tls_identity_key.as_deref(), Some("client.key".as_ref()));
                assert_eq!(d.tls_server_name.as_deref(), Some("game-01.internal"));
            }
            other => panic!("not dial: {other:?}"),
        }
        let d = ["duct", "dial", "tls://127.0.0.1:7443"];
        assert!(parses(&[&d[..], &["--tls-ca", "ca"]].concat()));
        assert!(parses(
            &[&d[..], &["--tls-ca", "ca", "--tls-server-name", "n"]].concat()
        ));
        // An identity is a pair, and like a server name it needs the CA.
        assert!(!parses(
            &[&d[..], &["--tls-ca", "ca", "--tls-identity-cert", "c"]].concat()
        ));
        assert!(!parses(
            &[&d[..], &["--tls-ca", "ca", "--tls-identity-key", "k"]].concat()
        ));
        assert!(!parses(
            &[
                &d[..],
                &["--tls-identity-cert", "c", "--tls-identity-key", "k"]
            ]
            .concat()
        ));
        assert!(!parses(&[&d[..], &["--tls-server-name", "n"]].concat()));
        assert!(!parses(
            &[&d[..], &["--tls-cert", "c", "--tls-key", "k"]].concat()
        ));
    }

    #[test]
    fn bench_transport_tls() {
        assert_eq!(
            bench(&["--transport", "tls"]).transport.transports,
            vec![Transport::Tls]
        );
        let b = bench(&["--transport", "tcp,tls", "--reliable"]);
        assert_eq!(b.transport.transports, vec![Transport::Tcp, Transport::Tls]);
        assert!(!b.transport.all && b.reliable);
        assert!(bench(&["--transport", "all"])
            .transport
            .transports
            .contains(&Transport::Tls));
    }
}
