//! What a benchmark run is made of: systems, transports, patterns, amounts, and the
//! [`Job`] that the measuring end hands to its peer; plus the parsers for the command
//! line's value syntaxes (comma lists, sizes with binary suffixes, durations).

use std::fmt;
use std::time::Duration;

use crate::error::{bail, CliError, Result};

/// The system under test in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// duct: `duct::listen`/`duct::dial` and a `Pipe`.
    Duct,
    /// The baseline: blocking std sockets with a 4-byte length prefix (for tls, the same
    /// over a rustls session; for shm, a single-producer single-consumer ring per direction
    /// in a shared segment with futex wake-ups, see [`crate::bench::shm`]).
    Raw,
}

impl System {
    /// The name used in the table, the JSON and job lines.
    pub fn name(self) -> &'static str {
        match self {
            System::Duct => "duct",
            System::Raw => "raw",
        }
    }

    fn parse(s: &str) -> Result<System> {
        match s {
            "duct" => Ok(System::Duct),
            "raw" => Ok(System::Raw),
            _ => bail!("unknown system {s:?}"),
        }
    }
}

/// A transport named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP over loopback.
    Tcp,
    /// Unix-domain stream sockets (Linux abstract namespace).
    Uds,
    /// Shared memory (`shm://name`, Linux).
    Shm,
    /// TLS over TCP on loopback (rustls; certificates made for the run).
    Tls,
}

impl Transport {
    /// Every transport, in table order.
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Uds,
        Transport::Shm,
        Transport::Tls,
    ];

    /// The scheme name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Uds => "uds",
            Transport::Shm => "shm",
            Transport::Tls => "tls",
        }
    }

    /// Whether `duct bench` can measure this transport on this platform. tls also needs a
    /// build of duct that speaks TLS, which only a run can tell
    /// ([`crate::bench::tls::duct_has_tls`]). shm is Linux only (memfd, futex, abstract
    /// sockets), in duct and in the raw baseline.
    pub fn available(self) -> bool {
        match self {
            Transport::Tcp | Transport::Tls => true,
            Transport::Uds => cfg!(unix),
            Transport::Shm => cfg!(target_os = "linux"),
        }
    }

    fn parse(s: &str) -> Result<Transport> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "uds" => Ok(Transport::Uds),
            "shm" => Ok(Transport::Shm),
            "tls" => Ok(Transport::Tls),
            _ => bail!("unknown transport {s:?} (expected tcp, uds, shm, tls or all)"),
        }
    }
}

/// The workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// One message out, the same size back, strictly one at a time.
    PingPong,
    /// One side sends as fast as it can, the other receives.
    Stream,
    /// duct only: ping-pong on a high-priority channel, alone and beside a bulk sender on
    /// another channel of the same pipe (see [`crate::bench::mixed`]). Not part of `all`.
    Mixed,
    /// Many pipes on one listener, the peer streaming on all of them, beside the same traffic
    /// on one pipe (see [`crate::bench::scale`]); the raw baseline does the same with plain
    /// sockets on tcp and uds (`crate::bench::scale_raw`). Not part of `all`.
    Scale,
}

impl Pattern {
    /// The name used in the table, the JSON and job lines.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::PingPong => "pingpong",
            Pattern::Stream => "stream",
            Pattern::Mixed => "mixed",
            Pattern::Scale => "scale",
        }
    }

    fn parse(s: &str) -> Result<Pattern> {
        match s {
            "pingpong" | "ping-pong" => Ok(Pattern::PingPong),
            "stream" => Ok(Pattern::Stream),
            "mixed" => Ok(Pattern::Mixed),
            "scale" => Ok(Pattern::Scale),
            _ => bail!("unknown pattern {s:?} (expected pingpong, stream, mixed, scale or all)"),
        }
    }
}

/// How much one run measures, after its warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// This many messages (round trips for ping-pong).
    Messages(u64),
    /// Until this much time has passed (checked by the sending end).
    Duration(Duration),
}

/// The transports selected with `--transport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportSelection {
    /// In the order given, without duplicates.
    pub transports: Vec<Transport>,
    /// `all` was given: the unavailable ones are dropped quietly.
    pub all: bool,
}

/// The patterns selected with `--pattern`, in the order given, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSelection(pub Vec<Pattern>);

fn parse_list<T: PartialEq + Copy>(
    list: &str,
    all: &[T],
    parse: impl Fn(&str) -> Result<T>,
) -> Result<(Vec<T>, bool)> {
    let mut out = Vec::new();
    let mut saw_all = false;
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            bail!("empty item in list {list:?}");
        }
        let items = if item.eq_ignore_ascii_case("all") {
            saw_all = true;
            all.to_vec()
        } else {
            vec![parse(&item.to_ascii_lowercase())?]
        };
        for t in items {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok((out, saw_all))
}

/// Parses `--transport`: `tcp,uds,shm,tls` (any subset, any order) or `all`.
pub fn parse_transports(s: &str) -> Result<TransportSelection, String> {
    let (transports, all) =
        parse_list(s, &Transport::ALL, Transport::parse).map_err(|e| e.to_string())?;
    Ok(TransportSelection { transports, all })
}

/// The patterns that `all` stands for: `mixed` and `scale` run only when named, so that the
/// default tour (and CI's runs) keep their length.
pub const ALL_PATTERNS: [Pattern; 2] = [Pattern::PingPong, Pattern::Stream];

/// Parses `--pattern`: `pingpong,stream,mixed,scale` (any subset, any order) or `all`
/// (= [`ALL_PATTERNS`]; `all,mixed` adds mixed).
pub fn parse_patterns(s: &str) -> Result<PatternSelection, String> {
    let (patterns, _) = parse_list(s, &ALL_PATTERNS, Pattern::parse).map_err(|e| e.to_string())?;
    Ok(PatternSelection(patterns))
}

/// The largest payload `duct bench` accepts (the raw baseline's length prefix is 32 bits,
/// and the receiving buffers are allocated up front).
pub const MAX_SIZE: usize = 1 << 30;

/// Parses one size: a number of bytes with an optional binary suffix (`B`, `K`/`KiB`/`KB`,
/// `M`/`MiB`/`MB`, case-insensitive; all powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected e.g. 64, 1K, 64KiB, 1MiB)"))?;
    let unit: usize = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => {
            return Err(format!(
                "invalid size suffix in {s:?} (expected B, K, KiB, M or MiB)"
            ))
        }
    };
    let size = n.checked_mul(unit).filter(|&v| v <= MAX_SIZE);
    match size {
        Some(0) => Err(
            "size must be at least 1 byte (the first payload byte marks the last message)".into(),
        ),
        Some(v) => Ok(v),
        None => Err(format!(
            "size {s:?} is larger than the maximum, {}",
            format_size(MAX_SIZE)
        )),
    }
}

/// The payload sizes selected with `--size`, in the order given, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(pub Vec<usize>);

/// Parses `--size`: a comma-separated list of [`parse_size`] items, duplicates dropped.
pub fn parse_sizes(s: &str) -> Result<SizeList, String> {
    let mut out = Vec::new();
    for item in s.split(',') {
        let v = parse_size(item)?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(SizeList(out))
}

/// Parses a duration: a number (decimals allowed) and a unit `ns`, `us`/`µs`, `ms`, `s`,
/// `m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 500ms, 2s, 1m)"))?;
    let secs_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (expected ns, us, ms, s or m)"
            ))
        }
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A size for people: `64 B`, `1 KiB`, `64 KiB`, `1 MiB`, `1500 B`.
pub fn format_size(size: usize) -> String {
    if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size % (1 << 10) == 0 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// What one run asks of the peer: the measuring end listens, then sends this to the peer,
/// which dials `addr` and serves its half (echo for ping-pong, receive for stream).
///
/// It travels as one line of `key=value` words (see [`Job::encode`]), on the child's stdin
/// in two-process mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// duct or raw.
    pub system: System,
    /// tcp, uds, shm or tls.
    pub transport: Transport,
    /// pingpong, stream, mixed (duct only; the raw reference of a mixed case runs as
    /// pingpong) or scale (raw: tcp and uds only).
    pub pattern: Pattern,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages before the measured phase.
    pub warmup: u64,
    /// Stream: messages per `send_batch`/`recv_batch` call on duct; scale: per `send_batch`
    /// call on each pipe.
    pub batch: usize,
    /// Scale: how many pipes the peer dials (the N pipes of a case, or 1 for its reference
    /// run); 1 for every other pattern. On the job line only for scale jobs.
    pub pipes: usize,
    /// How much is measured (the sending end decides when to stop; the peer learns it from
    /// the flag on the last message).
    pub amount: Amount,
    /// duct only: the channel the workload uses (channel 0; mixed's are its own) is
    /// configured `ChannelOptions::reliable(true)` on both ends (`--reliable`); false for
    /// raw, which has no channels.
    pub reliable: bool,
    /// shm only (`--spin`): both ends spin on the ring and never park on the futex — duct
    /// with `spin(Duration::MAX)` on both ends, the raw baseline likewise.
    pub spin: bool,
    /// duct's pingpong and stream only (`--alloc`): duct's sending end builds every message
    /// with `Pipe::alloc(size)`, writes its flag byte in place, freezes and sends it (see
    /// [`crate::bench::duct_conn`]); false for raw, mixed and scale, which send as before.
    pub alloc: bool,
    /// tls only (and always): the CA certificate (PEM file) that the peer trusts, made for
    /// the run; the server name it verifies is [`crate::bench::tls::SERVER_NAME`]. It
    /// travels percent-escaped (`%20` for a space), as a job line is split on whitespace.
    pub tls_ca: Option<String>,
    /// Where the measuring end listens, as a duct address (`tcp://127.0.0.1:41231`,
    /// `uds://@duct-bench-123-4`, `tls://127.0.0.1:41232`, `shm://duct-bench-123-5`); the
    /// raw baseline reads the same form (its shm rendezvous socket is not duct's, see
    /// [`crate::bench::shm`]).
    pub addr: String,
}

/// Escapes `s` into one word of a job line: `%`, whitespace and control characters become
/// `%XX` (each byte of their UTF-8).
fn escape_word(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Undoes [`escape_word`].
fn unescape_word(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).unwrap_or("");
            let Ok(b) = u8::from_str_radix(hex, 16) else {
                bail!("bad escape in {s:?}");
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| CliError::msg(format!("bad escape in {s:?}")))
}

impl Job {
    /// The job as one line (no newline), words separated by single spaces.
    pub fn encode(&self) -> String {
        let amount = match self.amount {
            Amount::Messages(n) => format!("messages={n}"),
            Amount::Duration(d) => format!("duration_ns={}", d.as_nanos()),
        };
        let tls_ca = match &self.tls_ca {
            Some(ca) => format!(" tls_ca={}", escape_word(ca)),
            None => String::new(),
        };
        let pipes = if self.pattern == Pattern::Scale {
            format!(" pipes={}", self.pipes)
        } else {
            String::new()
        };
        format!(
            "job system={} transport={} pattern={} size={} warmup={} batch={} {} reliable={} \
             spin={} alloc={}{}{} addr={}",
            self.system.name(),
            self.transport.name(),
            self.pattern.name(),
            self.size,
            self.warmup,
            self.batch,
            amount,
            u8::from(self.reliable),
            u8::from(self.spin),
            u8::from(self.alloc),
            tls_ca,
            pipes,
            self.addr
        )
    }

    /// Parses a line from [`Job::encode`].
    pub fn decode(line: &str) -> Result<Job> {
        let mut words = line.split_whitespace();
        if words.next() != Some("job") {
            bail!("not a job line: {line:?}");
        }
        let (mut system, mut transport, mut pattern, mut size) = (None, None, None, None);
        let (mut warmup, mut batch, mut amount, mut addr) = (None, None, None, None);
        let (mut reliable, mut spin, mut tls_ca, mut pipes) = (None, None, None, None);
        let mut alloc = None;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                bail!("malformed word {word:?} in job line");
            };
            let num = |v: &str| -> Result<u64> {
                v.parse::<u64>()
                    .map_err(|_| CliError::msg(format!("bad number {v:?} for {key} in job line")))
            };
            match key {
                "system" => system = Some(System::parse(value)?),
                "transport" => transport = Some(Transport::parse(value)?),
                "pattern" => pattern = Some(Pattern::parse(value)?),
                "size" => size = Some(num(value)? as usize),
                "warmup" => warmup = Some(num(value)?),
                "batch" => batch = Some(num(value)? as usize),
                "messages" => amount = Some(Amount::Messages(num(value)?)),
                "duration_ns" => amount = Some(Amount::Duration(Duration::from_nanos(num(value)?))),
                "reliable" => {
                    reliable = Some(match value {
                        "0" => false,
                        "1" => true,
                        _ => bail!("bad value {value:?} for reliable in job line (0 or 1)"),
                    })
                }
                "spin" => {
                    spin = Some(match value {
                        "0" => false,
                        "1" => true,
                        _ => bail!("bad value {value:?} for spin in job line (0 or 1)"),
                    })
                }
                "alloc" => {
                    alloc = Some(match value {
                        "0" => false,
                        "1" => true,
                        _ => bail!("bad value {value:?} for alloc in job line (0 or 1)"),
                    })
                }
                "tls_ca" => tls_ca = Some(unescape_word(value)?),
                "pipes" => pipes = Some(num(value)? as usize),
                "addr" => addr = Some(value.to_string()),
                _ => bail!("unknown key {key:?} in job line"),
            }
        }
        let missing = |what: &str| CliError::msg(format!("job line lacks {what}: {line:?}"));
        let job = Job {
            system: system.ok_or_else(|| missing("system"))?,
            transport: transport.ok_or_else(|| missing("transport"))?,
            pattern: pattern.ok_or_else(|| missing("pattern"))?,
            size: size.ok_or_else(|| missing("size"))?,
            warmup: warmup.ok_or_else(|| missing("warmup"))?,
            batch: batch.ok_or_else(|| missing("batch"))?,
            amount: amount.ok_or_else(|| missing("messages or duration_ns"))?,
            reliable: reliable.ok_or_else(|| missing("reliable"))?,
            spin: spin.ok_or_else(|| missing("spin"))?,
            alloc: alloc.ok_or_else(|| missing("alloc"))?,
            tls_ca,
            pipes: pipes.unwrap_or(1),
            addr: addr.ok_or_else(|| missing("addr"))?,
        };
        if job.size == 0 || job.size > MAX_SIZE || job.batch == 0 || job.pipes == 0 {
            bail!("job line out of range: {line:?}");
        }
        if (job.transport == Transport::Tls) != job.tls_ca.is_some() {
            bail!("job line: tls_ca is for tls jobs, and every tls job needs it: {line:?}");
        }
        if job.spin && job.transport != Transport::Shm {
            bail!("job line: spin is for shm only: {line:?}");
        }
        if (job.pattern == Pattern::Scale) != pipes.is_some() {
            bail!("job line: pipes is for scale jobs, and every scale job needs it: {line:?}");
        }
        if job.pattern == Pattern::Scale
            && job.system == System::Raw
            && !matches!(job.transport, Transport::Tcp | Transport::Uds)
        {
            bail!("job line: raw scale runs on tcp and uds only: {line:?}");
        }
        if job.alloc
            && (job.system != System::Duct
                || matches!(job.pattern, Pattern::Mixed | Pattern::Scale))
        {
            bail!("job line: alloc is for duct's pingpong and stream only: {line:?}");
        }
        if job.reliable
            && (job.system != System::Duct
                || matches!(job.pattern, Pattern::Mixed | Pattern::Scale))
        {
            bail!(
                "job line asks for a reliable channel where there is none to configure: {line:?}"
            );
        }
        Ok(job)
    }

    /// `duct uds stream 64 B` (`duct reliable uds stream 64 B` on a reliable channel, `raw
    /// spin shm pingpong 64 B` with `--spin`, `duct alloc shm stream 1 MiB` with `--alloc`,
    /// `duct tcp scale 64 B × 1000 pipes`): for progress lines and errors.
    pub fn label(&self) -> String {
        format!(
            "{}{}{}{} {} {} {}{}",
            self.system.name(),
            if self.reliable { " reliable" } else { "" },
            if self.spin { " spin" } else { "" },
            if self.alloc { " alloc" } else { "" },
            self.transport.name(),
            self.pattern.name(),
            format_size(self.size),
            match (self.pattern, self.pipes) {
                (Pattern::Scale, 1) => " × 1 pipe".to_string(),
                (Pattern::Scale, n) => format!(" × {n} pipes"),
                _ => String::new(),
            }
        )
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Messages(n) => write!(f, "{n} messages"),
            Amount::Duration(d) => write!(f, "{:.3} s", d.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("64B"), Ok(64));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1G").is_err());
        assert!(parse_size("2048M").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(
            parse_sizes("64,1024,65536,1048576,64"),
            Ok(SizeList(vec![64, 1024, 65536, 1 << 20]))
        );
        assert_eq!(format_size(64), "64 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1500), "1500 B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("1e9m").is_err());
    }

    #[test]
    fn lists() {
        let t = parse_transports("uds, tcp,uds").unwrap();
        assert_eq!(t.transports, vec![Transport::Uds, Transport::Tcp]);
        assert!(!t.all);
        let t = parse_transports("ALL").unwrap();
        assert_eq!(t.transports, Transport::ALL.to_vec());
        assert!(t.all);
        assert!(parse_transports("tcp,,uds").is_err());
        assert!(parse_transports("quic").is_err());
        assert_eq!(
            parse_patterns("stream,pingpong").unwrap().0,
            vec![Pattern::Stream, Pattern::PingPong]
        );
        assert_eq!(
            parse_patterns("all").unwrap().0,
            vec![Pattern::PingPong, Pattern::Stream]
        );
    }

    #[test]
    fn mixed_runs_only_when_named() {
        assert_eq!(parse_patterns("mixed").unwrap().0, vec![Pattern::Mixed]);
        assert_eq!(
            parse_patterns("pingpong,MIXED").unwrap().0,
            vec![Pattern::PingPong, Pattern::Mixed]
        );
        assert_eq!(
            parse_patterns("all,mixed").unwrap().0,
            vec![Pattern::PingPong, Pattern::Stream, Pattern::Mixed]
        );
        assert!(!parse_patterns("all").unwrap().0.contains(&Pattern::Mixed));
        let err = parse_patterns("mix").unwrap_err();
        assert!(err.contains("mixed"), "{err}");
        assert_eq!(
            Pattern::parse(Pattern::Mixed.name()).unwrap(),
            Pattern::Mixed
        );
    }

    #[test]
    fn scale_runs_only_when_named_and_its_jobs_carry_the_pipes() {
        assert_eq!(parse_patterns("scale").unwrap().0, vec![Pattern::Scale]);
        assert_eq!(
            parse_patterns("all,scale").unwrap().0,
            vec![Pattern::PingPong, Pattern::Stream, Pattern::Scale]
        );
        assert!(!parse_patterns("all").unwrap().0.contains(&Pattern::Scale));
        assert!(parse_patterns("scales").unwrap_err().contains("scale"));
        let job = Job {
            system: System::Duct,
            transport: Transport::Uds,
            pattern: Pattern::Scale,
            size: 64,
            warmup: 2000,
            batch: 16,
            amount: Amount::Duration(Duration::from_millis(500)),
            reliable: false,
            spin: false,
            alloc: false,
            tls_ca: None,
            pipes: 1000,
            addr: "uds://@duct-bench-1-9".into(),
        };
        let line = job.encode();
        assert!(line.contains(" pipes=1000 addr="), "{line}");
        assert_eq!(Job::decode(&line).unwrap(), job);
        assert_eq!(job.label(), "duct uds scale 64 B × 1000 pipes");
        let one = Job {
            pipes: 1,
            ..job.clone()
        };
        assert_eq!(Job::decode(&one.encode()).unwrap(), one);
        assert_eq!(one.label(), "duct uds scale 64 B × 1 pipe");
        // Only scale jobs carry pipes, and every one of them; at least one; raw on tcp and
        // uds only; realtime only.
        assert!(Job::decode(&line.replace(" pipes=1000", "")).is_err());
        assert!(Job::decode(&line.replace("pipes=1000", "pipes=0")).is_err());
        assert!(Job::decode(&line.replace("pattern=scale", "pattern=stream")).is_err());
        let raw = line.replace("system=duct", "system=raw");
        assert_eq!(Job::decode(&raw).unwrap().system, System::Raw);
        for other in ["shm", "tls"] {
            let raw_other = raw.replace("transport=uds", &format!("transport={other}"));
            assert!(Job::decode(&raw_other).is_err(), "{raw_other}");
        }
        assert!(Job::decode(&line.replace("reliable=0", "reliable=1")).is_err());
        let stream = Job {
            pattern: Pattern::Stream,
            pipes: 1,
            ..job
        };
        assert!(!stream.encode().contains("pipes"), "{}", stream.encode());
    }

    #[test]
    fn job_round_trips() {
        let job = Job {
            system: System::Raw,
            transport: Transport::Uds,
            pattern: Pattern::Stream,
            size: 65536,
            warmup: 100,
            batch: 64,
            amount: Amount::Duration(Duration::from_millis(750)),
            reliable: false,
            spin: false,
            alloc: false,
            tls_ca: None,
            pipes: 1,
            addr: "uds://@duct-bench-1-2".into(),
        };
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        let job = Job {
            system: System::Duct,
            transport: Transport::Tcp,
            pattern: Pattern::PingPong,
            amount: Amount::Messages(2000),
            addr: "tcp://127.0.0.1:41231".into(),
            ..job
        };
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        let mixed = Job {
            pattern: Pattern::Mixed,
            ..job.clone()
        };
        assert_eq!(Job::decode(&mixed.encode()).unwrap(), mixed);
        assert!(Job::decode("job system=duct").is_err());
        assert!(Job::decode("hello").is_err());
        assert!(Job::decode(&job.encode().replace("size=65536", "size=0")).is_err());
    }

    #[test]
    fn job_line_says_whether_the_channel_is_reliable() {
        let realtime = Job {
            system: System::Duct,
            transport: Transport::Uds,
            pattern: Pattern::Stream,
            size: 64,
            warmup: 2000,
            batch: 64,
            amount: Amount::Messages(500),
            reliable: false,
            spin: false,
            alloc: false,
            tls_ca: None,
            pipes: 1,
            addr: "uds://@duct-bench-1-3".into(),
        };
        let reliable = Job {
            reliable: true,
            ..realtime.clone()
        };
        assert_eq!(
            reliable.encode(),
            "job system=duct transport=uds pattern=stream size=64 warmup=2000 batch=64 \
             messages=500 reliable=1 spin=0 alloc=0 addr=uds://@duct-bench-1-3"
        );
        assert!(
            realtime.encode().contains(" reliable=0 "),
            "{}",
            realtime.encode()
        );
        assert_eq!(Job::decode(&reliable.encode()).unwrap(), reliable);
        assert_eq!(Job::decode(&realtime.encode()).unwrap(), realtime);
        let pingpong = Job {
            pattern: Pattern::PingPong,
            ..reliable.clone()
        };
        assert_eq!(Job::decode(&pingpong.encode()).unwrap(), pingpong);
        assert_eq!(reliable.label(), "duct reliable uds stream 64 B");
        assert_eq!(realtime.label(), "duct uds stream 64 B");
        // Only 0 or 1, never missing, and only for duct's pingpong and stream.
        let line = reliable.encode();
        assert!(Job::decode(&line.replace("reliable=1", "reliable=yes")).is_err());
        assert!(Job::decode(&line.replace(" reliable=1", "")).is_err());
        assert!(Job::decode(&line.replace("system=duct", "system=raw")).is_err());
        assert!(Job::decode(&line.replace("pattern=stream", "pattern=mixed")).is_err());
        let raw = line
            .replace("system=duct", "system=raw")
            .replace("reliable=1", "reliable=0");
        assert!(!Job::decode(&raw).unwrap().reliable);
    }

    #[test]
    fn tls_jobs_carry_the_ca() {
        let job = Job {
            system: System::Raw,
            transport: Transport::Tls,
            pattern: Pattern::PingPong,
            size: 64,
            warmup: 10,
            batch: 64,
            amount: Amount::Messages(100),
            reliable: false,
            spin: false,
            alloc: false,
            tls_ca: Some("/tmp/my certs/100%/ca.pem".into()),
            pipes: 1,
            addr: "tls://127.0.0.1:41232".into(),
        };
        let line = job.encode();
        assert!(
            line.contains(" tls_ca=/tmp/my%20certs/100%25/ca.pem "),
            "{line}"
        );
        assert_eq!(Job::decode(&line).unwrap(), job);
        let reliable = Job {
            system: System::Duct,
            reliable: true,
            tls_ca: Some("/tmp/ünïcode\tab\t/ca.pem".into()),
            ..job.clone()
        };
        assert_eq!(Job::decode(&reliable.encode()).unwrap(), reliable);
        // Only tls jobs, and all of them.
        assert!(Job::decode(&line.replace("transport=tls", "transport=tcp")).is_err());
        let without = line.replace(" tls_ca=/tmp/my%20certs/100%25/ca.pem", "");
        assert!(Job::decode(&without).is_err(), "{without}");
        assert!(Job::decode(&line.replace("%20", "%2g")).is_err());
        assert!(Job::decode(&line.replace("%20", "%zz")).is_err());
    }

    #[test]
    fn escaping_round_trips() {
        for s in ["plain", "a b\tc\nd", "100%", "%%", "é è", ""] {
            let escaped = escape_word(s);
            assert!(!escaped.contains(char::is_whitespace), "{escaped}");
            assert_eq!(unescape_word(&escaped).unwrap(), s);
        }
        assert_eq!(escape_word("a b"), "a%20b");
        assert!(unescape_word("%").is_err());
        assert!(unescape_word("%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn shm_jobs_say_whether_the_baseline_spins() {
        let job = Job {
            system: System::Raw,
            transport: Transport::Shm,
            pattern: Pattern::PingPong,
            size: 64,
            warmup: 10,
            batch: 64,
            amount: Amount::Messages(100),
            reliable: false,
            spin: true,
            alloc: false,
            tls_ca: None,
            pipes: 1,
            addr: "shm://duct-bench-1-7".into(),
        };
        let line = job.encode();
        assert!(line.contains(" spin=1 "), "{line}");
        assert_eq!(Job::decode(&line).unwrap(), job);
        assert_eq!(job.label(), "raw spin shm pingpong 64 B");
        let parked = Job {
            spin: false,
            ..job.clone()
        };
        assert_eq!(Job::decode(&parked.encode()).unwrap(), parked);
        assert_eq!(parked.label(), "raw shm pingpong 64 B");
        // Only shm spins (duct and raw); never missing; only 0 or 1.
        let duct = Job::decode(&line.replace("system=raw", "system=duct")).unwrap();
        assert!(duct.spin && duct.system == System::Duct);
        assert_eq!(duct.label(), "duct spin shm pingpong 64 B");
        assert!(Job::decode(&line.replace("transport=shm", "transport=uds")).is_err());
        assert!(Job::decode(&line.replace(" spin=1", "")).is_err());
        assert!(Job::decode(&line.replace("spin=1", "spin=yes")).is_err());
        assert_eq!(
            Transport::Shm.available(),
            cfg!(target_os = "linux"),
            "shm is Linux only"
        );
        assert_eq!(Transport::parse("shm").unwrap(), Transport::Shm);
    }

    #[test]
    fn job_line_says_whether_duct_allocs_in_place() {
        let job = Job {
            system: System::Duct,
            transport: Transport::Shm,
            pattern: Pattern::Stream,
            size: 1 << 20,
            warmup: 100,
            batch: 64,
            amount: Amount::Duration(Duration::from_millis(500)),
            reliable: false,
            spin: false,
            alloc: true,
            tls_ca: None,
            pipes: 1,
            addr: "shm://duct-bench-1-8".into(),
        };
        let line = job.encode();
        assert_eq!(
            line,
            "job system=duct transport=shm pattern=stream size=1048576 warmup=100 batch=64 \
             duration_ns=500000000 reliable=0 spin=0 alloc=1 addr=shm://duct-bench-1-8"
        );
        assert_eq!(Job::decode(&line).unwrap(), job);
        assert_eq!(job.label(), "duct alloc shm stream 1 MiB");
        // Every transport, pingpong too, a reliable channel too, spinning too.
        for transport in [Transport::Tcp, Transport::Uds, Transport::Shm] {
            for pattern in [Pattern::PingPong, Pattern::Stream] {
                let other = Job {
                    transport,
                    pattern,
                    reliable: true,
                    spin: transport == Transport::Shm,
                    ..job.clone()
                };
                assert_eq!(Job::decode(&other.encode()).unwrap(), other);
            }
        }
        let tls = Job {
            transport: Transport::Tls,
            tls_ca: Some("/tmp/ca.pem".into()),
            addr: "tls://127.0.0.1:41233".into(),
            ..job.clone()
        };
        assert_eq!(Job::decode(&tls.encode()).unwrap(), tls);
        let plain = Job {
            alloc: false,
            ..job.clone()
        };
        assert!(plain.encode().contains(" alloc=0 "), "{}", plain.encode());
        assert_eq!(Job::decode(&plain.encode()).unwrap(), plain);
        assert_eq!(plain.label(), "duct shm stream 1 MiB");
        // Only 0 or 1, never missing, no look-alike key; duct only; pingpong and
        // stream only (mixed and scale send their own way).
        assert!(Job::decode(&line.replace("alloc=1", "alloc=yes")).is_err());
        assert!(Job::decode(&line.replace("alloc=1", "alloc=2")).is_err());
        assert!(Job::decode(&line.replace("alloc=1", "alloc=")).is_err());
        assert!(Job::decode(&line.replace(" alloc=1", "")).is_err());
        assert!(Job::decode(&line.replace(" alloc=1", " alloc=1 allocs=1")).is_err());
        assert!(Job::decode(&line.replace("system=duct", "system=raw")).is_err());
        assert!(Job::decode(&line.replace("pattern=stream", "pattern=mixed")).is_err());
        let scale = line
            .replace("pattern=stream", "pattern=scale")
            .replace(" addr=", " pipes=10 addr=");
        assert!(Job::decode(&scale).is_err(), "{scale}");
        assert!(Job::decode(&scale.replace("alloc=1", "alloc=0")).is_ok());
        let raw = line
            .replace("system=duct", "system=raw")
            .replace("alloc=1", "alloc=0");
        assert!(!Job::decode(&raw).unwrap().alloc);
    }

    #[test]
    fn tls_is_selectable() {
        let t = parse_transports("tls").unwrap();
        assert_eq!(t.transports, vec![Transport::Tls]);
        assert!(Transport::Tls.available());
        assert_eq!(Transport::parse("tls").unwrap(), Transport::Tls);
        assert!(parse_transports("all")
            .unwrap()
            .transports
            .contains(&Transport::Tls));
        assert_eq!(
            parse_transports("tls,tcp,TLS").unwrap().transports,
            vec![Transport::Tls, Transport::Tcp]
        );
    }
}
