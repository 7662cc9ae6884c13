//! The far end of a benchmark, and how the measuring end talks to it.
//!
//! The measuring end (ping-pong client, stream sender) always listens; for each run it
//! binds a fresh address, hands the peer a [`Job`], accepts the peer's connection, runs
//! its loop, and then asks for the peer's [`PeerReport`] (for stream, the receive rate is
//! measured there). The peer holds a successful report back until asked, and closes its
//! connection only after handing it over: so nothing the peer does after its own measured
//! phase (formatting the report, closing) can land in the measuring end's allocation
//! count, which matters when both ends are one process. Errors go out at once.
//!
//! - Two processes (the default): the peer is this executable run again as the hidden
//!   `duct bench-peer`, with `job ...` and `report` lines on its stdin and `ready` /
//!   `done ...` / `error ...` lines on its stdout (stderr is shared with the parent). The child is tied to its parent
//!   three ways: the parent's [`ChildGuard`] kills it on any early return or panic; the
//!   child asks the kernel for SIGKILL when its parent dies (Linux); and it exits at EOF on
//!   stdin, which is what it sees when the parent goes away between runs.
//! - `--threads`: the peer is a thread of this process, started per run.
//!
//! A [`Watchdog`] bounds every run: past its deadline it kills the child and exits the
//! process, since a hung run cannot be recovered from inside.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bench::duct_conn::{self, DuctConn};
use crate::bench::mixed;
use crate::bench::pin;
use crate::bench::raw::{self, RawConn, RawStream};
use crate::bench::scale;
use crate::bench::spec::{Job, Pattern, System, Transport};
use crate::bench::tls::{self, dial_tls};
use crate::bench::workload::{serve_echo, serve_stream, MsgConn, PeerReport};
use crate::cli::BenchPeerArgs;
use crate::error::{bail, CliError, Result};

/// How long a new child process may take to say `ready`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

impl PeerReport {
    /// The report as a `done ...` line (no newline); the scale figures only when known.
    pub fn encode(&self) -> String {
        let mut line = format!(
            "done messages={} rate_messages={} elapsed_ns={} allocs={}",
            self.messages, self.rate_messages, self.elapsed_ns, self.allocs
        );
        for (key, value) in [
            ("rss_before", self.rss_before),
            ("rss_after", self.rss_after),
            ("threads_duct", self.threads_duct),
        ] {
            if let Some(v) = value {
                line.push_str(&format!(" {key}={v}"));
            }
        }
        line
    }

    /// Parses a line from [`PeerReport::encode`].
    pub fn decode(line: &str) -> Result<PeerReport> {
        let mut words = line.split_whitespace();
        if words.next() != Some("done") {
            bail!("not a report line: {line:?}");
        }
        let mut report = PeerReport::default();
        let mut seen = 0;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                bail!("malformed word {word:?} in report line");
            };
            let Ok(value) = value.parse::<u64>() else {
                bail!("bad number {value:?} for {key} in report line");
            };
            match key {
                "messages" => report.messages = value,
                "rate_messages" => report.rate_messages = value,
                "elapsed_ns" => report.elapsed_ns = value,
                "allocs" => report.allocs = value,
                "rss_before" => report.rss_before = Some(value),
                "rss_after" => report.rss_after = Some(value),
                "threads_duct" => report.threads_duct = Some(value),
                _ => bail!("unknown key {key:?} in report line"),
            }
            if matches!(key, "messages" | "rate_messages" | "elapsed_ns" | "allocs") {
                seen += 1;
            }
        }
        if seen != 4 {
            bail!("incomplete report line: {line:?}");
        }
        Ok(report)
    }
}

/// Connects the raw baseline's end of `job`: tls with the CA the job names.
fn raw_connect(job: &Job) -> Result<RawStream> {
    match (job.transport, &job.tls_ca) {
        (Transport::Tls, Some(ca)) => {
            let config = tls::raw_client_config(std::path::Path::new(ca))?;
            raw::connect_tls(&job.addr, config)
        }
        (transport, _) => raw::connect(transport, &job.addr),
    }
}

/// Runs the peer's half of `job` (dial, then echo or receive; scale: dial every pipe, then
/// send) and hands the outcome to `deliver` *before* closing the connection. `deliver`
/// waits, for a successful outcome, until the measuring end asks for it.
pub fn serve(job: &Job, deliver: impl FnOnce(Result<PeerReport>)) {
    fn run<C: MsgConn>(conn: &mut C, job: &Job) -> Result<PeerReport> {
        match job.pattern {
            // Raw sockets have no channels: their mixed reference is a plain ping-pong (the
            // measuring end sends it as pingpong anyway).
            Pattern::PingPong | Pattern::Mixed => serve_echo(conn, job.warmup),
            Pattern::Stream => serve_stream(conn, job.warmup),
            Pattern::Scale => bail!("scale jobs run through scale::serve"),
        }
    }
    match job.system {
        #[cfg(target_os = "linux")]
        System::Raw if job.transport == Transport::Shm => {
            let run_of = crate::bench::shm::RawShmRun::of(job);
            let outcome = crate::bench::shm::connect(&job.addr, run_of)
                .and_then(|mut conn| run(&mut conn, job));
            deliver(outcome);
        }
        #[cfg(unix)]
        System::Raw if job.pattern == Pattern::Scale => {
            crate::bench::scale_raw::serve(job, deliver)
        }
        System::Raw => {
            let outcome = raw_connect(job)
                .and_then(|stream| RawConn::new(stream, job.size))
                .and_then(|mut conn| run(&mut conn, job));
            deliver(outcome);
        }
        System::Duct if job.pattern == Pattern::Scale => scale::serve(job, deliver),
        System::Duct if job.pattern == Pattern::Mixed => {
            let options = duct_conn::dial_spin(dial_tls(mixed::dial_options(), job), job);
            match duct_conn::dial(&job.addr, options) {
                Ok(pipe) => {
                    let conn = DuctConn::new(pipe, job.size, 1).on_channel(mixed::REALTIME_CHANNEL);
                    let outcome = mixed::serve(&conn);
                    deliver(outcome);
                    conn.close();
                }
                Err(e) => deliver(Err(e)),
            }
        }
        System::Duct => match duct_conn::dial(
            &job.addr,
            duct_conn::dial_spin(dial_tls(duct_conn::dial_options(job.reliable), job), job),
        ) {
            Ok(pipe) => {
                let mut conn = DuctConn::new(pipe, job.size, job.batch).with_alloc(job.alloc);
                let outcome = run(&mut conn, job);
                deliver(outcome);
                conn.close();
            }
            Err(e) => deliver(Err(e)),
        },
    }
}

/// `duct bench-peer`: the child's main loop. Says `ready`, then serves one `job` line of
/// stdin after another until EOF. A failed job is answered at once with an `error` line; a
/// successful one with a `done` line once stdin says `report`.
pub fn child_main(args: BenchPeerArgs) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
        set_parent_process_death_signal(Some(Signal::KILL))
            .map_err(|e| CliError::msg(format!("bench-peer: PR_SET_PDEATHSIG: {e}")))?;
        // The parent may have died before the line above; then nobody would signal us.
        if let Some(parent) = args.parent {
            if Pid::as_raw(getppid()) as u32 != parent {
                bail!("bench-peer: the parent process {parent} is gone");
            }
        }
    }
    if let Some(cpu) = args.cpu {
        pin::pin_current_thread(cpu)?;
    }
    let mut out = io::stdout().lock();
    let mut input = io::stdin().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(()); // EOF: the parent is done, or gone.
        }
        let line = line.trim();
        if line.is_empty() || line == "report" {
            continue; // A stray request after a failed job.
        }
        match Job::decode(line) {
            Ok(job) => serve(&job, |outcome| {
                let answer = match outcome {
                    Ok(report) => {
                        let mut request = String::new();
                        if input.read_line(&mut request).unwrap_or(0) == 0 {
                            std::process::exit(0); // The parent is gone.
                        }
                        report.encode()
                    }
                    Err(e) => format!("error {}", one_line(&e.to_string())),
                };
                let _ = writeln!(out, "{answer}").and_then(|()| out.flush());
            }),
            Err(e) => {
                writeln!(out, "error {}", one_line(&e.to_string()))?;
                out.flush()?;
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Asks the child for the report of its current job.
fn request_report(c: &mut ChildPeer) -> Result<()> {
    let Some(stdin) = c.stdin.as_mut() else {
        bail!("the peer process's stdin is closed");
    };
    stdin
        .write_all(b"report\n")
        .and_then(|()| stdin.flush())
        .map_err(|e| CliError::msg(format!("the peer process is gone ({e})")))
}

/// Kills the child on drop, unless [`ChildGuard::finish`] let it exit on its own.
pub struct ChildGuard {
    child: Arc<Mutex<Child>>,
    done: bool,
}

impl ChildGuard {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard {
            child: Arc::new(Mutex::new(child)),
            done: false,
        }
    }

    /// A handle for the [`Watchdog`], which must be able to kill the child too.
    pub fn handle(&self) -> Arc<Mutex<Child>> {
        Arc::clone(&self.child)
    }

    /// Waits up to `grace` for the child to exit (its stdin should be closed by now),
    /// then kills it.
    pub fn finish(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut child = lock(&self.child);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.done = true;
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        drop(child);
        // Drop kills.
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.done {
            let mut child = lock(&self.child);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The peer of a whole `duct bench` invocation.
pub enum Peer {
    /// A child process (`duct bench-peer`).
    Child(ChildPeer),
    /// Threads of this process, one per run.
    Thread(ThreadPeer),
}

/// A `duct bench-peer` child and the lines it sends.
pub struct ChildPeer {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// A line that arrived while the measuring end was only checking.
    early: Option<String>,
}

/// Peer threads, started one per run.
pub struct ThreadPeer {
    cpu: Option<usize>,
    /// The current run's thread and its handoff.
    current: Option<(JoinHandle<()>, Arc<Handoff>)>,
}

/// Where a peer thread leaves its outcome. Nothing here allocates when used (a blocking
/// receive on a std channel allocates on a thread's first wait, which would show up in the
/// other end's allocation count, both ends being one process).
#[derive(Default)]
struct Handoff {
    state: Mutex<HandoffState>,
    changed: Condvar,
}

#[derive(Default)]
struct HandoffState {
    /// The measuring end asked for the report (or gave up on this run).
    go: bool,
    outcome: Option<Result<PeerReport, String>>,
}

impl Handoff {
    /// Peer side: an error goes at once, a report once `go` is set.
    fn deliver(&self, outcome: Result<PeerReport, String>) {
        let mut state = lock(&self.state);
        if outcome.is_ok() {
            while !state.go {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        state.outcome = Some(outcome);
        self.changed.notify_all();
    }

    fn go(&self) {
        lock(&self.state).go = true;
        self.changed.notify_all();
    }

    /// The error the peer left, if any, without taking it.
    fn error(&self) -> Option<String> {
        match &lock(&self.state).outcome {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Waits up to `step` for the outcome.
    fn take(&self, step: Duration) -> Option<Result<PeerReport, String>> {
        let mut state = lock(&self.state);
        if state.outcome.is_none() {
            state = self
                .changed
                .wait_timeout(state, step)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.outcome.take()
    }
}

impl Peer {
    /// Starts `current_exe() bench-peer`, pinned to `cpu`, and waits for it to be ready.
    pub fn spawn_child(cpu: Option<usize>) -> Result<Peer> {
        let exe = std::env::current_exe().map_err(|e| {
            CliError::msg(format!(
                "cannot find this executable to start the peer: {e}"
            ))
        })?;
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-peer")
            .arg("--parent")
            .arg(std::process::id().to_string());
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| CliError::msg(format!("cannot start the peer {}: {e}", exe.display())))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let guard = ChildGuard::new(child);
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("duct-bench-peer-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        match lines.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) if line == "ready" => {}
            Ok(line) => bail!("the peer process said {line:?} instead of ready"),
            Err(RecvTimeoutError::Timeout) => {
                bail!("the peer process was not ready within {STARTUP_TIMEOUT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("the peer process exited at startup (its error, if any, is above)")
            }
        }
        Ok(Peer::Child(ChildPeer {
            guard,
            stdin,
            lines,
            early: None,
        }))
    }

    /// A peer made of threads of this process, each pinned to `cpu`.
    pub fn threads(cpu: Option<usize>) -> Peer {
        Peer::Thread(ThreadPeer { cpu, current: None })
    }

    /// Number of processes in the layout: 2 for a child, 1 for threads.
    pub fn processes(&self) -> u32 {
        match self {
            Peer::Child(_) => 2,
            Peer::Thread(_) => 1,
        }
    }

    /// The child process's id; `None` for threads.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Peer::Child(c) => Some(lock(&c.guard.handle()).id()),
            Peer::Thread(_) => None,
        }
    }

    /// The child process, for the watchdog; `None` for threads.
    pub fn child_handle(&self) -> Option<Arc<Mutex<Child>>> {
        match self {
            Peer::Child(c) => Some(c.guard.handle()),
            Peer::Thread(_) => None,
        }
    }

    /// Hands `job` to the peer, which dials `job.addr` and serves it.
    pub fn start(&mut self, job: &Job) -> Result<()> {
        match self {
            Peer::Child(c) => {
                c.early = None;
                let Some(stdin) = c.stdin.as_mut() else {
                    bail!("the peer process's stdin is closed");
                };
                writeln!(stdin, "{}", job.encode())
                    .and_then(|()| stdin.flush())
                    .map_err(|e| CliError::msg(format!("the peer process is gone ({e})")))?;
                Ok(())
            }
            Peer::Thread(t) => {
                if let Some((previous, handoff)) = t.current.take() {
                    // Release the previous run's thread if it still waits to report, and
                    // let it finish closing, for a while.
                    handoff.go();
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while !previous.is_finished() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                let handoff = Arc::new(Handoff::default());
                let peer_side = Arc::clone(&handoff);
                let cpu = t.cpu;
                let job = job.clone();
                let thread = std::thread::Builder::new()
                    .name("duct-bench-peer".into())
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            if let Err(e) = pin::pin_current_thread(cpu) {
                                peer_side.deliver(Err(e.to_string()));
                                return;
                            }
                        }
                        serve(&job, |outcome| {
                            peer_side.deliver(outcome.map_err(|e| e.to_string()));
                        });
                    })?;
                t.current = Some((thread, handoff));
                Ok(())
            }
        }
    }

    /// Without blocking: an error if the peer has failed or gone away.
    pub fn check(&mut self) -> Result<()> {
        match self {
            Peer::Child(c) => {
                if c.early.is_none() {
                    match c.lines.try_recv() {
                        Ok(line) => c.early = Some(line),
                        Err(TryRecvError::Empty) => return Ok(()),
                        Err(TryRecvError::Disconnected) => bail!("the peer process exited"),
                    }
                }
                match c.early.as_deref() {
                    Some(line) if line.starts_with("error") => {
                        bail!("peer: {}", line.trim_start_matches("error").trim())
                    }
                    _ => Ok(()),
                }
            }
            Peer::Thread(t) => match &t.current {
                Some((thread, handoff)) => {
                    if let Some(e) = handoff.error() {
                        bail!("peer: {e}");
                    }
                    if thread.is_finished() && lock(&handoff.state).outcome.is_none() {
                        bail!("the peer thread died");
                    }
                    Ok(())
                }
                None => Ok(()),
            },
        }
    }

    /// Waits up to `timeout` for the report of the current job.
    pub fn wait(&mut self, timeout: Duration) -> Result<PeerReport> {
        match self {
            Peer::Child(c) => {
                let line = match c.early.take() {
                    Some(line) => line,
                    None => {
                        // If the child is gone, the line it left (or EOF) says more than
                        // the failed write would.
                        let _ = request_report(c);
                        match c.lines.recv_timeout(timeout) {
                            Ok(line) => line,
                            Err(RecvTimeoutError::Timeout) => {
                                bail!("no report from the peer process within {timeout:?}")
                            }
                            Err(RecvTimeoutError::Disconnected) => {
                                bail!("the peer process exited")
                            }
                        }
                    }
                };
                if let Some(e) = line.strip_prefix("error") {
                    bail!("peer: {}", e.trim());
                }
                PeerReport::decode(&line)
            }
            Peer::Thread(t) => {
                let Some((thread, handoff)) = &t.current else {
                    bail!("no job was started");
                };
                handoff.go();
                let deadline = Instant::now() + timeout;
                loop {
                    if let Some(outcome) = handoff.take(Duration::from_millis(100)) {
                        return outcome.map_err(|e| CliError::msg(format!("peer: {e}")));
                    }
                    if thread.is_finished() {
                        // It may have delivered just before finishing.
                        if let Some(outcome) = handoff.take(Duration::ZERO) {
                            return outcome.map_err(|e| CliError::msg(format!("peer: {e}")));
                        }
                        bail!("the peer thread died");
                    }
                    if Instant::now() >= deadline {
                        bail!("no report from the peer thread within {timeout:?}");
                    }
                }
            }
        }
    }

    /// Ends the peer: closes the child's stdin and gives it a moment to exit (then kills
    /// it), or lets the last thread finish.
    pub fn finish(self) {
        match self {
            Peer::Child(mut c) => {
                drop(c.stdin.take());
                c.guard.finish(Duration::from_secs(2));
            }
            Peer::Thread(t) => {
                if let Some((thread, handoff)) = t.current {
                    handoff.go();
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while !thread.is_finished() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
}

/// Bounds each run in time: armed with a deadline before a run and disarmed after it; if a
/// deadline passes, it kills the child process (if any) and exits with an error.
pub struct Watchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<(Instant, String)>,
    child: Option<Arc<Mutex<Child>>>,
    /// Directories to remove before exiting (the run's certificates).
    cleanup: Vec<std::path::PathBuf>,
    stopped: bool,
}

impl Watchdog {
    /// Starts the watchdog thread, disarmed.
    pub fn start() -> Result<Watchdog> {
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let watched = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("duct-bench-watchdog".into())
            .spawn(move || watch(&watched))?;
        Ok(Watchdog { shared })
    }

    /// The child to kill if a deadline passes.
    pub fn set_child(&self, child: Option<Arc<Mutex<Child>>>) {
        lock(&self.shared.0).child = child;
    }

    /// A directory to remove if a deadline passes (the process exits without unwinding, so
    /// its owners' `Drop` would not run).
    pub fn remove_on_timeout(&self, dir: std::path::PathBuf) {
        lock(&self.shared.0).cleanup.push(dir);
    }

    /// Arms: `label` must finish within `timeout`.
    pub fn arm(&self, timeout: Duration, label: String) {
        lock(&self.shared.0).deadline = Some((Instant::now() + timeout, label));
        self.shared.1.notify_all();
    }

    /// Disarms.
    pub fn disarm(&self) {
        lock(&self.shared.0).deadline = None;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.0);
        state.stopped = true;
        state.deadline = None;
        state.child = None;
        self.shared.1.notify_all();
    }
}

fn watch(shared: &(Mutex<WatchState>, Condvar)) {
    let (state, wake) = shared;
    let mut guard = lock(state);
    loop {
        if guard.stopped {
            return;
        }
        let now = Instant::now();
        let wait = match &guard.deadline {
            Some((deadline, label)) if now >= *deadline => {
                eprintln!("\nduct: bench timed out: {label} did not finish in time; stopping");
                if let Some(child) = &guard.child {
                    let mut child = lock(child);
                    let _ = child.kill();
                    let _ = child.wait();
                }
                for dir in &guard.cleanup {
                    let _ = std::fs::remove_dir_all(dir);
                }
                std::process::exit(1);
            }
            Some((deadline, _)) => *deadline - now,
            None => Duration::from_secs(3600),
        };
        guard = wake
            .wait_timeout(guard, wait)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let r = PeerReport {
            messages: 10,
            rate_messages: 9,
            elapsed_ns: 12345,
            allocs: 0,
            ..PeerReport::default()
        };
        assert_eq!(PeerReport::decode(&r.encode()).unwrap(), r);
        assert!(!r.encode().contains("rss"), "{}", r.encode());
        let scale = PeerReport {
            rss_before: Some(10 << 20),
            rss_after: Some(90 << 20),
            threads_duct: Some(1),
            ..r
        };
        assert_eq!(PeerReport::decode(&scale.encode()).unwrap(), scale);
        assert!(
            PeerReport::decode("done rss_before=1 rss_after=2 threads_duct=1 allocs=0").is_err()
        );
        assert!(PeerReport::decode("done messages=1").is_err());
        assert!(PeerReport::decode("error boom").is_err());
    }
}
