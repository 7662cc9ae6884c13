//! What `duct bench` hands back: the table on stdout and the JSON of `--json`.
//!
//! The JSON's field names are a contract (BENCH.md): tools outside the repository read
//! `duct_version`, `host.{cpus,kernel}` and, per result, `system`, `transport`, `pattern`,
//! `size`, `reliable`, `spin`, `backend`, `processes`, `messages`, `rtt_ns.{p50,p99,p999,max}`
//! (ping-pong only), `msgs_per_sec`, `bytes_per_sec`, `allocs_per_msg`. Fields added beside
//! them (`rounds`, `pin`, `batch`, `ratio_vs_raw`, the top-level `config`) may be ignored.

use std::fmt::Write as _;

use crate::bench::spec::{format_size, Amount, Pattern, Transport};
use crate::bench::stats::{Ratios, Summary};

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
    /// duct ÷ raw, unless `--no-baseline`.
    pub ratios: Option<Ratios>,
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
    /// `--batch`.
    pub batch: usize,
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
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

fn summary_json(
    case: &CaseResult,
    s: &Summary,
    config: &RunConfig,
    ratios: Option<&Ratios>,
) -> String {
    let backend = match s.system {
        crate::bench::spec::System::Duct => "auto",
        crate::bench::spec::System::Raw => "blocking",
    };
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"system\": {}, \"transport\": {}, \"pattern\": {}, \"size\": {}, \
         \"reliable\": false, \"spin\": false, \"backend\": {}, \"processes\": {}, \
         \"messages\": {}",
        json_str(s.system.name()),
        json_str(case.transport.name()),
        json_str(case.pattern.name()),
        case.size,
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
         \"rounds\": {}, \"pin\": {}",
        json_f64(s.msgs_per_sec),
        json_f64(s.bytes_per_sec),
        json_f64(s.allocs_per_msg),
        s.rounds,
        json_str(config.pin),
    );
    if case.pattern == Pattern::Stream && s.system == crate::bench::spec::System::Duct {
        let _ = write!(o, ", \"batch\": {}", config.batch);
    }
    match ratios {
        Some(Ratios::PingPong {
            p50,
            p99,
            p999,
            max,
        }) => {
            let _ = write!(
                o,
                ", \"ratio_vs_raw\": {{\"p50\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}",
                json_f64(*p50),
                json_f64(*p99),
                json_f64(*p999),
                json_f64(*max)
            );
        }
        Some(Ratios::Stream { msgs_per_sec }) => {
            let _ = write!(
                o,
                ", \"ratio_vs_raw\": {{\"msgs_per_sec\": {}, \"bytes_per_sec\": {}}}",
                json_f64(*msgs_per_sec),
                json_f64(*msgs_per_sec)
            );
        }
        None => {}
    }
    o.push('}');
    o
}

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
         \"warmup\": {}, \"pin\": {}, \"processes\": {}, \"batch\": {}}},",
        config.rounds,
        messages,
        duration_ns,
        config.warmup,
        json_str(config.pin),
        config.processes,
        config.batch
    );
    let _ = writeln!(o, "  \"results\": [");
    let mut entries = Vec::new();
    for case in cases {
        entries.push(summary_json(case, &case.duct, config, case.ratios.as_ref()));
        if let Some(raw) = &case.raw {
            entries.push(summary_json(case, raw, config, None));
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

/// Rows of cells, printed with right-aligned columns (the first three left-aligned).
struct Table {
    rows: Vec<Vec<String>>,
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
                if i < 3 {
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
        "duct bench: {layout}, pin {}, {} round{} × {} per system, warmup {} messages",
        config.pin,
        config.rounds,
        if config.rounds == 1 { "" } else { "s" },
        config.amount,
        config.warmup
    );
    let pingpong: Vec<&CaseResult> = cases
        .iter()
        .filter(|c| c.pattern == Pattern::PingPong)
        .collect();
    if !pingpong.is_empty() {
        let _ = writeln!(
            out,
            "\npingpong: round-trip time in µs; ratio duct÷raw per round, median: lower is better"
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
            .to_vec()],
        };
        for case in pingpong {
            for (i, s) in std::iter::once(&case.duct).chain(&case.raw).enumerate() {
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
                    s.system.name().to_string(),
                    us(p.p50),
                    us(p.p99),
                    us(p.p999),
                    us(p.max),
                    per_sec(s.msgs_per_sec),
                    allocs(s.allocs_per_msg),
                ]);
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
            "\nstream: receive rate (duct batch {}, raw BufWriter); ratio duct÷raw per round, median: higher is better",
            config.batch
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
            .to_vec()],
        };
        for case in stream {
            for (i, s) in std::iter::once(&case.duct).chain(&case.raw).enumerate() {
                let (transport, size) = case_label(case, i);
                t.rows.push(vec![
                    transport,
                    size,
                    s.system.name().to_string(),
                    per_sec(s.msgs_per_sec),
                    format!("{:.1}", s.bytes_per_sec / 1e6),
                    allocs(s.allocs_per_msg),
                ]);
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
        }
        t.render(&mut out);
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
            batch: 64,
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
            },
            CaseResult {
                transport: Transport::Uds,
                pattern: Pattern::Stream,
                size: 64,
                duct: st(System::Duct, 2e7),
                raw: Some(st(System::Raw, 5e7)),
                ratios: Some(Ratios::Stream { msgs_per_sec: 0.4 }),
            },
        ]
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
                "backend",
                "processes",
                "messages",
                "msgs_per_sec",
                "bytes_per_sec",
                "allocs_per_msg",
            ] {
                assert!(r.get(key).is_some(), "missing {key} in {r}");
            }
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
        assert_eq!(results[2]["batch"], 64);
        assert_eq!(v["config"]["duration_ns_per_round"], 500_000_000u64);
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
