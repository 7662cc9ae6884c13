//! The `duct` binary end to end: a tiny bench with `--json`, `listen --echo` with `dial`,
//! and the error paths. Behaviour only: benchmark figures are never compared with
//! anything but zero.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DUCT: &str = env!("CARGO_BIN_EXE_duct");

/// Kills the child on drop, so that a failing test leaves no process behind.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }

    /// Waits up to `timeout` for the child to exit, collecting its output; kills it and
    /// panics past the timeout.
    fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.0.take().expect("child");
        let stdout = child.stdout.take().map(reader_thread);
        let stderr = child.stderr.take().map(reader_thread);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.map(|t| t.join().unwrap()).unwrap_or_default();
                panic!(
                    "duct did not finish within {timeout:?}; stderr:\n{}",
                    String::from_utf8_lossy(&err)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: stdout.map(|t| t.join().unwrap()).unwrap_or_default(),
            stderr: stderr.map(|t| t.join().unwrap()).unwrap_or_default(),
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn reader_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn spawn(args: &[&str]) -> KillOnDrop {
    spawn_with(args, &[])
}

/// Starts duct with `args`, and `env` added to its environment.
fn spawn_with(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> KillOnDrop {
    let child = Command::new(DUCT)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start duct");
    KillOnDrop(Some(child))
}

/// A fresh empty directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = temp_path(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str], timeout: Duration) -> Output {
    spawn(args).wait(timeout)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("duct-cli-test-{}-{name}", std::process::id()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_results(json: &serde_json::Value, processes: u64) -> usize {
    assert!(json["duct_version"].is_string(), "{json}");
    assert!(json["host"]["cpus"].as_u64().unwrap() >= 1, "{json}");
    assert!(json["host"]["kernel"].is_string(), "{json}");
    let results = json["results"].as_array().expect("results array");
    for r in results {
        for key in ["system", "transport", "pattern", "backend"] {
            assert!(r[key].is_string(), "{key} in {r}");
        }
        assert!(r["reliable"].is_boolean() && r["spin"].is_boolean(), "{r}");
        assert_eq!(r["processes"].as_u64(), Some(processes), "{r}");
        assert!(r["size"].as_u64().unwrap() > 0, "{r}");
        assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
        assert!(r["msgs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["bytes_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["allocs_per_msg"].as_f64().unwrap() >= 0.0, "{r}");
        if r["pattern"] == "pingpong" || r["pattern"] == "mixed" {
            let rtt = &r["rtt_ns"];
            for key in ["p50", "p99", "p999", "max"] {
                assert!(rtt[key].as_u64().unwrap() > 0, "{key} in {r}");
            }
            assert!(rtt["p50"].as_u64() <= rtt["max"].as_u64(), "{r}");
        } else {
            assert!(
                r.get("rtt_ns").is_none(),
                "rtt_ns only for pingpong and mixed: {r}"
            );
        }
    }
    results.len()
}

/// Runs `duct bench` with `args` and `--json` to a temporary file; checks that it succeeds and
/// that the table names each of `needles`; returns the JSON.
fn bench_json(name: &str, args: &[&str], needles: &[&str]) -> serde_json::Value {
    let path = temp_path(name);
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", path.to_str().unwrap()]);
    let out = run(&all, Duration::from_secs(120));
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in needles {
        assert!(
            stdout.contains(needle),
            "{needle} missing from the table:\n{stdout}"
        );
    }
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let _ = std::fs::remove_file(&path);
    json
}

#[test]
fn tiny_bench_writes_json() {
    // tcp and uds named, so that the count below holds with or without duct's TLS
    // (tiny_tls_bench covers tls).
    let json = bench_json(
        "bench.json",
        &[
            "--transport",
            "tcp,uds",
            "--messages",
            "2000",
            "--rounds",
            "1",
        ],
        &["pingpong", "stream", "duct÷raw", "tcp", "uds"],
    );
    // tcp and uds × pingpong and stream × duct and raw.
    assert_eq!(check_results(&json, 2), 8, "{json}");
    let systems: Vec<&str> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["system"].as_str().unwrap())
        .collect();
    assert_eq!(systems.iter().filter(|&&s| s == "duct").count(), 4);
    assert_eq!(systems.iter().filter(|&&s| s == "raw").count(), 4);
}

#[test]
fn tiny_reliable_bench() {
    let started = Instant::now();
    let json = bench_json(
        "reliable.json",
        &[
            "--reliable",
            "--transport",
            "uds",
            "--messages",
            "500",
            "--warmup",
            "100",
            "--rounds",
            "1",
        ],
        &["duct reliable", "reliable÷realtime", "duct÷raw"],
    );
    eprintln!("tiny reliable bench: {:?}", started.elapsed());
    // pingpong and stream × duct realtime, duct reliable, raw.
    assert_eq!(check_results(&json, 2), 6, "{json}");
    let results = json["results"].as_array().unwrap();
    for pattern in ["pingpong", "stream"] {
        let rows: Vec<&serde_json::Value> =
            results.iter().filter(|r| r["pattern"] == pattern).collect();
        let systems: Vec<(&str, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r["system"].as_str().unwrap(),
                    r["reliable"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            systems,
            [("duct", false), ("duct", true), ("raw", false)],
            "{json}"
        );
        let reliable = rows[1];
        let key = if pattern == "pingpong" {
            "p50"
        } else {
            "msgs_per_sec"
        };
        assert!(
            reliable["ratio_vs_realtime"][key].as_f64().unwrap() > 0.0,
            "{reliable}"
        );
        assert!(
            reliable["ratio_vs_raw"][key].as_f64().unwrap() > 0.0,
            "{reliable}"
        );
        assert!(rows[0].get("ratio_vs_realtime").is_none(), "{json}");
    }
}

/// tls beside its rustls baseline, realtime and reliable, with the JSON and the plot; and
/// the certificates made for the run are gone after it.
#[test]
fn tiny_tls_bench() {
    let tmp = TempDir::new("tls-bench-tmp");
    let json_path = temp_path("tls.json");
    let plot_path = temp_path("tls.svg");
    let out = spawn_with(
        &[
            "bench",
            "--transport",
            "tls",
            "--reliable",
            "--messages",
            "500",
            "--warmup",
            "100",
            "--rounds",
            "1",
            "--json",
            json_path.to_str().unwrap(),
            "--plot",
            plot_path.to_str().unwrap(),
        ],
        &[("TMPDIR", tmp.0.as_os_str())],
    )
    .wait(Duration::from_secs(120));
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in ["tls", "duct reliable", "duct÷raw", "reliable÷realtime"] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).expect("valid JSON");
    let svg = std::fs::read_to_string(&plot_path).unwrap();
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_file(&plot_path);
    // pingpong and stream × duct realtime, duct reliable, raw.
    assert_eq!(check_results(&json, 2), 6, "{json}");
    let results = json["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["transport"] == "tls"), "{json}");
    for r in results.iter().filter(|r| r["system"] == "duct") {
        let key = if r["pattern"] == "pingpong" {
            "p50"
        } else {
            "msgs_per_sec"
        };
        assert!(r["ratio_vs_raw"][key].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(svg.contains("tls"), "the plot names the case");
    assert_eq!(
        tmp.entries(),
        Vec::<PathBuf>::new(),
        "certificates left behind"
    );
}

/// Whether duct has TLS or not, `duct bench --transport tls` leaves no certificates behind:
/// it measures tls (and removes them after), or says tls is not available (and removes
/// them at once).
#[test]
fn tls_bench_removes_its_certificates() {
    let tmp = TempDir::new("tls-skip-tmp");
    let out = spawn_with(
        &[
            "bench",
            "--transport",
            "tls",
            "--pattern",
            "pingpong",
            "--messages",
            "200",
            "--warmup",
            "10",
            "--rounds",
            "1",
        ],
        &[("TMPDIR", tmp.0.as_os_str())],
    )
    .wait(Duration::from_secs(120));
    let stderr = text(&out.stderr);
    if out.status.success() {
        assert!(text(&out.stdout).contains("tls"), "{}", text(&out.stdout));
    } else {
        assert!(
            stderr.contains("tls: not available in this build of duct"),
            "{stderr}"
        );
        assert!(stderr.contains("no transport left"), "{stderr}");
    }
    assert_eq!(
        tmp.entries(),
        Vec::<PathBuf>::new(),
        "certificates left behind"
    );
}

/// shm beside its raw ring, in two processes (parking) and in threads (spinning): both
/// systems' rows, and what the JSON says about how they waited.
#[test]
#[cfg(target_os = "linux")]
fn tiny_shm_bench() {
    let json = bench_json(
        "shm.json",
        &[
            "--transport",
            "shm",
            "--messages",
            "2000",
            "--warmup",
            "200",
            "--rounds",
            "1",
        ],
        &["shm", "duct÷raw", "parks on a futex"],
    );
    // pingpong and stream × duct and raw.
    assert_eq!(check_results(&json, 2), 4, "{json}");
    let results = json["results"].as_array().unwrap();
    for r in results {
        assert_eq!(r["transport"], "shm", "{r}");
        assert_eq!(r["spin"], false, "{r}");
        assert_shm_backend(r, "futex");
        if r["system"] == "duct" {
            let key = if r["pattern"] == "pingpong" {
                "p50"
            } else {
                "msgs_per_sec"
            };
            assert!(r["ratio_vs_raw"][key].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    assert_eq!(results.iter().filter(|r| r["system"] == "raw").count(), 2);

    let json = bench_json(
        "shm-spin.json",
        &[
            "--transport",
            "shm",
            "--spin",
            "--threads",
            "--messages",
            "2000",
            "--warmup",
            "200",
            "--rounds",
            "1",
        ],
        &["shm", "duct÷raw", "--spin: both ends of both systems spin"],
    );
    assert_eq!(check_results(&json, 1), 4, "{json}");
    for r in json["results"].as_array().unwrap() {
        assert_eq!(r["spin"], true, "{r}");
        assert_shm_backend(r, "spin");
    }
}

/// `--alloc` on shm and uds streams, in two processes: every row says whether duct built its
/// messages with `Pipe::alloc`; shm's duct row moved every message without a copy (fewer
/// messages than the pool has 64 KiB slots, so no alloc ever waits for one to come back);
/// the table compares shm (alloc) with uds. `--batch 8`: the receivers take at most 8
/// messages per call, so that a rate is measured however few messages there are.
#[test]
#[cfg(target_os = "linux")]
fn tiny_alloc_bench() {
    let json = bench_json(
        "alloc.json",
        &[
            "--alloc",
            "--transport",
            "shm,uds",
            "--pattern",
            "stream",
            "--size",
            "64KiB",
            "--messages",
            "60",
            "--warmup",
            "20",
            "--batch",
            "8",
            "--rounds",
            "1",
        ],
        &[
            "duct alloc",
            "zero-copy",
            "copied/msg",
            "shm (alloc) ÷ uds raw:",
            "shm (alloc) ÷ uds duct:",
            "produced in place",
        ],
    );
    // shm and uds × duct and raw.
    assert_eq!(check_results(&json, 2), 4, "{json}");
    for r in json["results"].as_array().unwrap() {
        let duct = r["system"] == "duct";
        assert_eq!(r["alloc"], duct, "{r}");
        assert_eq!(r["size"], 65536, "{r}");
        if !duct {
            assert!(r.get("zero_copy_frames").is_none(), "{r}");
            continue;
        }
        if r["transport"] == "shm" {
            // Every measured message moved as a descriptor: nothing copied.
            assert_eq!(r["copied_bytes"], 0, "{r}");
            assert_eq!(r["copied_frames"], 0, "{r}");
            assert_eq!(r["copied_bytes_per_msg"], 0.0, "{r}");
            assert_eq!(r["zero_copy_frames"], 60, "{r}");
        } else {
            assert!(r["copied_bytes"].is_null(), "counted on shm only: {r}");
            assert!(r["zero_copy_frames"].is_null(), "{r}");
        }
    }
}

/// The shm endpoints `duct shm --json` lists: (name, pids, connections).
#[cfg(target_os = "linux")]
fn shm_endpoints() -> Vec<(String, Vec<u64>, u64)> {
    let out = run(&["shm", "--json"], Duration::from_secs(30));
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    json["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            let pids = e["pids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap())
                .collect::<Vec<_>>();
            assert_eq!(e["pid"].as_u64(), pids.first().copied(), "{e}");
            (
                e["name"].as_str().unwrap().to_string(),
                pids,
                e["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Polls `duct shm --json` until `name` shows as `want` says (None: not listed), up to 10 s.
#[cfg(target_os = "linux")]
fn wait_for_shm(name: &str, want: Option<(u32, u64)>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = shm_endpoints()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, pids, conns)| (pids, conns));
        let ok = match (&got, want) {
            (None, None) => true,
            (Some((pids, conns)), Some((pid, n))) => pids == &[u64::from(pid)] && *conns == n,
            _ => false,
        };
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: duct shm shows {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `duct shm` finds a `duct listen shm://NAME`, its pid and its connections, as dialers
/// come and go, and forgets it when it exits.
#[test]
#[cfg(target_os = "linux")]
fn shm_lists_a_live_listener_with_its_pid_and_connections() {
    let name = format!("duct-cli-test-{}-list", std::process::id());
    let addr = format!("shm://{name}");
    let mut listener = spawn(&["listen", &addr, "--echo"]);
    let pid = listener.child().id();
    let stderr = listener.child().stderr.take().unwrap();
    let mut first = String::new();
    BufReader::new(stderr).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), format!("listening on {addr}"));
    wait_for_shm(&name, Some((pid, 0)));

    let dial = || {
        KillOnDrop(Some(
            Command::new(DUCT)
                .args(["dial", &addr, "--wait", "10s"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start duct dial"),
        ))
    };
    let mut a = dial();
    let mut b = dial();
    wait_for_shm(&name, Some((pid, 2)));

    // The table says the same.
    let out = run(&["shm"], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{name} missing:\n{table}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [name.as_str(), &pid.to_string(), "2"],
        "{table}"
    );

    // A dialer that finishes is no longer counted; one that is killed neither.
    {
        let mut stdin = a.child().stdin.take().unwrap();
        stdin.write_all(b"over shm\n").unwrap();
    }
    let out = a.wait(Duration::from_secs(30));
    assert!(out.status.success(), "dial failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over shm\n");
    wait_for_shm(&name, Some((pid, 1)));
    let _ = b.child().kill();
    let _ = b.child().wait();
    wait_for_shm(&name, Some((pid, 0)));

    let _ = listener.child().kill();
    let _ = listener.child().wait();
    wait_for_shm(&name, None);
}

#[test]
fn tiny_mixed_bench() {
    let json = bench_json(
        "mixed.json",
        &[
            "--transport",
            "uds",
            "--pattern",
            "mixed",
            "--messages",
            "500",
            "--warmup",
            "50",
            "--rounds",
            "1",
        ],
        &["mixed", "idle", "loaded", "loaded÷idle", "bulk MiB/s"],
    );
    // duct idle, duct loaded, and raw's plain ping-pong as the idle reference.
    assert_eq!(check_results(&json, 2), 3, "{json}");
    let results = json["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["pattern"] == "mixed"), "{json}");
    let (idle, loaded, raw) = (&results[0], &results[1], &results[2]);
    assert_eq!(
        (&idle["system"], &idle["load"]),
        (&"duct".into(), &"idle".into())
    );
    assert_eq!(
        (&loaded["system"], &loaded["load"]),
        (&"duct".into(), &"loaded".into())
    );
    assert!(
        loaded["bulk_mib_per_sec"].as_f64().unwrap() > 0.0,
        "{loaded}"
    );
    assert!(
        loaded["ratio_vs_idle"]["p99"].as_f64().unwrap() > 0.0,
        "{loaded}"
    );
    assert_eq!(idle["realtime_priority"], 200);
    assert_eq!(
        (&raw["system"], &raw["reference"]),
        (&"raw".into(), &"pingpong".into())
    );
}

/// The scale pattern, small: 50 pipes beside one, one short round; both rows, with the
/// figures the goal is about (threads and RSS on Linux).
#[test]
#[cfg(unix)]
fn tiny_scale_bench() {
    let started = Instant::now();
    let json = bench_json(
        "scale.json",
        &[
            "--pattern",
            "scale",
            "--transport",
            "uds",
            "--pipes",
            "50",
            "--duration",
            "100ms",
            "--warmup",
            "100",
            "--rounds",
            "1",
        ],
        &[
            "scale",
            "N÷1",
            "duct threads",
            "RSS/pipe",
            "CPU/msg duct",
            "raw: the same traffic on plain sockets",
            "duct÷raw",
        ],
    );
    eprintln!("tiny scale bench: {:?}", started.elapsed());
    // duct on 50 pipes, then its one-pipe reference; then raw on 50 sockets and on one.
    assert_eq!(check_results(&json, 2), 4, "{json}");
    let results = json["results"].as_array().unwrap();
    let (many, one) = (&results[0], &results[1]);
    for (i, r) in results.iter().enumerate() {
        let system = if i < 2 { "duct" } else { "raw" };
        assert_eq!(
            (&r["system"], &r["pattern"], &r["transport"]),
            (&system.into(), &"scale".into(), &"uds".into()),
            "{r}"
        );
        assert_eq!(r["pipes"], if i % 2 == 0 { 50 } else { 1 }, "{r}");
        assert!(
            (i % 2 == 1) == (r["reference"] == "one_pipe"),
            "the one-pipe rows are the references: {r}"
        );
    }
    assert!(
        many["ratio_vs_one_pipe"]["msgs_per_sec"].as_f64().unwrap() > 0.0,
        "{many}"
    );
    for r in [many, one] {
        assert!(
            r["ratio_vs_raw"]["msgs_per_sec"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    let raw_many = &results[2];
    assert!(
        raw_many["ratio_vs_one_pipe"]["msgs_per_sec"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{raw_many}"
    );
    assert_eq!(raw_many["backend"], "tokio", "{raw_many}");
    for r in &results[2..] {
        assert!(r["threads_duct"].is_null(), "{r}");
        assert!(r["peer_threads_duct"].is_null(), "{r}");
        assert!(r["cpu_ns_per_msg_duct"].is_null(), "{r}");
        if cfg!(target_os = "linux") {
            // The receivers and the sender did the work: time on a CPU for each message.
            assert!(r["cpu_ns_per_msg_app"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["cpu_ns_per_msg_peer"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    for r in &results[..2] {
        assert!(r["msgs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        for key in [
            "threads_duct",
            "threads_total",
            "rss_per_pipe_bytes",
            "peer_rss_per_pipe_bytes",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        if cfg!(target_os = "linux") {
            let duct = r["threads_duct"].as_u64().unwrap();
            let total = r["threads_total"].as_u64().unwrap();
            // duct's reactor at least; the goal is at most 4.
            assert!(duct >= 1 && duct <= total, "{r}");
            assert!(r["rss_per_pipe_bytes"].is_f64(), "{r}");
            assert!(r["peer_threads_duct"].as_u64().unwrap() >= 1, "{r}");
            // Read at both ends of the measured phase, in both processes (the receiving
            // tasks, and the peer's sender, spend CPU on every message; duct's reactor may
            // spend none on one pipe, whose task reads itself).
            assert!(r["cpu_ns_per_msg_duct"].as_f64().unwrap() >= 0.0, "{r}");
            assert!(r["cpu_ns_per_msg_app"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["cpu_ns_per_msg_peer"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

#[test]
fn tiny_bench_in_threads_without_baseline() {
    let path = temp_path("threads.json");
    let out = run(
        &[
            "bench",
            "--threads",
            "--no-baseline",
            "--transport",
            "uds",
            "--size",
            "1K",
            "--batch",
            "1",
            "--messages",
            "2000",
            "--warmup",
            "100",
            "--rounds",
            "1",
            "--json",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let _ = std::fs::remove_file(&path);
    assert_eq!(check_results(&json, 1), 2, "{json}");
    assert!(json["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["system"] == "duct"));
    assert!(json["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["size"] == 1024));
}

/// `--backend epoll` runs duct's reactor on epoll, in both processes, and says so in the table
/// and the JSON.
#[test]
fn bench_backend_is_chosen_and_reported() {
    let json = bench_json(
        "backend.json",
        &[
            "--backend",
            "epoll",
            "--transport",
            "uds",
            "--messages",
            "500",
            "--warmup",
            "50",
            "--rounds",
            "1",
        ],
        &["reactor epoll"],
    );
    let results = json["results"].as_array().unwrap();
    assert!(results
        .iter()
        .filter(|r| r["system"] == "duct")
        .all(|r| r["backend"] == "epoll"));
}

#[test]
fn listen_echo_and_dial_exchange_a_line() {
    let mut listener = spawn(&["listen", "tcp://127.0.0.1:0", "--echo"]);
    let stderr = listener.child().stderr.take().unwrap();
    let mut first = String::new();
    BufReader::new(stderr).read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from listen: {first:?}"))
        .to_string();
    assert!(addr.starts_with("tcp://127.0.0.1:"), "{addr}");

    let mut dial = KillOnDrop(Some(
        Command::new(DUCT)
            .args(["dial", &addr, "--wait", "10s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start duct dial"),
    ));
    {
        let mut stdin = dial.child().stdin.take().unwrap();
        stdin.write_all(b"hello duct\n").unwrap();
    } // EOF: dial waits for the echo, closes, and exits 0.
    let out = dial.wait(Duration::from_secs(30));
    assert!(out.status.success(), "dial failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello duct\n");

    let listener_stdout = listener.child().stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(listener_stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "hello duct\n");
}

#[test]
fn errors_exit_1_with_a_message() {
    let out = run(&["dial", "tcp://127.0.0.1:1"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("duct: "),
        "{}",
        text(&out.stderr)
    );

    if !cfg!(target_os = "linux") {
        let out = run(&["bench", "--transport", "shm"], Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("not available yet"),
            "{}",
            text(&out.stderr)
        );
    }

    let out = run(&["bench", "--channels", "2"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not implemented yet"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tls_addresses_without_tls_flags_are_refused() {
    let out = run(&["listen", "tls://127.0.0.1:0"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("duct: ") && stderr.contains("needs --tls-cert and --tls-key"),
        "{stderr}"
    );
    let out = run(&["dial", "tls://127.0.0.1:1"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("needs --tls-ca"), "{stderr}");
    // Half a pair is a usage error, from clap.
    let out = run(
        &["listen", "tls://127.0.0.1:0", "--tls-cert", "c.pem"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--tls-key"),
        "{}",
        text(&out.stderr)
    );
}

/// PEM files for a mutual-TLS test: a CA, a server certificate for localhost and
/// 127.0.0.1 and a client certificate, both signed by it.
fn write_mtls_files(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, sans, usage) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "client",
            vec!["client.test".to_string()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// `listen` and `dial` over mutual TLS with every --tls-* flag.
#[test]
fn listen_and_dial_over_mutual_tls() {
    let tmp = TempDir::new("mtls");
    write_mtls_files(&tmp.0);
    let path = |name: &str| tmp.0.join(name).to_str().unwrap().to_string();
    let mut listener = spawn(&[
        "listen",
        "tls://127.0.0.1:0",
        "--echo",
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
        "--tls-client-ca",
        &path("ca.pem"),
    ]);
    let stderr = listener.child().stderr.take().unwrap();
    let mut first = String::new();
    BufReader::new(stderr).read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from listen: {first:?}"))
        .to_string();
    assert!(addr.starts_with("tls://127.0.0.1:"), "{addr}");

    let mut dial = KillOnDrop(Some(
        Command::new(DUCT)
            .args([
                "dial",
                &addr,
                "--wait",
                "10s",
                "--tls-ca",
                &path("ca.pem"),
                "--tls-identity-cert",
                &path("client.pem"),
                "--tls-identity-key",
                &path("client.key"),
                "--tls-server-name",
                "localhost",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start duct dial"),
    ));
    {
        let mut stdin = dial.child().stdin.take().unwrap();
        stdin.write_all(b"hello over tls\n").unwrap();
    }
    let out = dial.wait(Duration::from_secs(30));
    assert!(out.status.success(), "dial failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello over tls\n");

    // Without a client certificate, the listener refuses.
    let out = run(
        &["dial", &addr, "--tls-ca", &path("ca.pem")],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn help_and_version() {
    let out = run(&["--help"], Duration::from_secs(30));
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in ["bench", "listen", "dial", "shm"] {
        assert!(help.contains(cmd), "{help}");
    }
    assert!(
        !help.contains("bench-peer"),
        "the peer subcommand is hidden: {help}"
    );
    let out = run(&["bench", "--help"], Duration::from_secs(30));
    let help = text(&out.stdout);
    for needle in ["scale", "--pipes <N>", "[default: 1000]"] {
        assert!(help.contains(needle), "{needle} missing: {help}");
    }
    let out = run(&["--version"], Duration::from_secs(30));
    assert!(
        text(&out.stdout).starts_with("duct "),
        "{}",
        text(&out.stdout)
    );
}

/// A shm row's `backend`: `raw_wait` for the raw ring's way of waiting, the reactor's for
/// duct.
#[cfg(target_os = "linux")]
fn assert_shm_backend(r: &serde_json::Value, raw_wait: &str) {
    if r["system"] == "raw" {
        assert_eq!(r["backend"], raw_wait, "{r}");
    } else {
        assert!(
            ["uring", "epoll"].contains(&r["backend"].as_str().unwrap()),
            "{r}"
        );
    }
}
