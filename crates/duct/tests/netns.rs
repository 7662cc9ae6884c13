//! Across a real network: a dialer and a listener in two Linux network namespaces joined by a
//! veth pair (iproute2's `ip netns` / `ip link`), with traffic flowing (a numbered message
//! every 10 ms, echoed back), are partitioned by taking one end of the veth pair down. The
//! test proves that:
//!
//! - both ends notice the half-open link by heartbeat (100 ms × 3): the dialer's state change
//!   names the silent peer, the accepted pipe leaves `Connected` (it waits for its dialer in
//!   `Reconnecting`, as the listener's resume window says; a listener without resume would
//!   fail `recv` with `Disconnected`, which the test accepts too), each within 3 s, and not
//!   before the peer could have been silent for `interval × misses`;
//! - the dialer keeps retrying while the partition lasts (each failed attempt reaches its
//!   `on_error`) and never claims to be connected meanwhile;
//! - when the link comes back, the dialer reconnects on its own (`Connected → Reconnecting →
//!   Connected`) and messages flow again both ways, never duplicated, in order.
//!
//! It runs two partitions: first the listener's end goes down (to the dialer, a cable pulled
//! somewhere: its packets vanish and its reconnect attempts time out), then the dialer's end
//! (its own interface is down: attempts fail at once with "network unreachable").
//!
//! Each side runs in a child process: this test binary again, started with
//! `ip netns exec <ns> <this binary> netns_child --exact` and told its role by environment
//! variables; children report what they see as `@@ ...` lines on stdout, which the parent
//! timestamps on arrival. A child exits when its stdin closes (so it never outlives the
//! parent), and the parent kills whatever is left and deletes its two namespaces (which
//! removes the veth pair) on every exit path, panics included.
//!
//! The test needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2. Where the namespaces
//! or the veth pair cannot be created, it prints `SKIPPED: <why>` to the real stderr (not
//! captured by the test harness, so `cargo test` shows it) and returns; with
//! `DUCT_NETNS_REQUIRED=1` in the environment it fails instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duct::{
    DialOptions, ErrorKind, Heartbeat, ListenOptions, Pipe, PipeState, Reconnect, RecvOptions,
    StateChange,
};

const INTERVAL: Duration = Duration::from_millis(100);
const MISSES: u32 = 3;
/// Each reconnect attempt (connect + handshake) is bounded by this.
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
/// Both ends must notice the partition within this (expected: about `INTERVAL × MISSES`;
/// generous for a loaded 2-core machine).
const DETECT_BOUND: Duration = Duration::from_secs(3);
/// How long the partition lasts after both ends noticed it.
const HOLD: Duration = Duration::from_millis(1500);
/// Traffic must flow again within this after the link comes back.
const RESUME_BOUND: Duration = Duration::from_secs(10);
/// Messages that must arrive to call the traffic flowing.
const FLOWING: usize = 20;
/// A child that is still alive after this exits on its own.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

const ROLE_VAR: &str = "DUCT_NETNS_ROLE";
const ADDR_VAR: &str = "DUCT_NETNS_ADDR";
const REQUIRE_VAR: &str = "DUCT_NETNS_REQUIRED";
const CHILD_TEST: &str = "netns_child";
const PORT: u16 = 7411;

fn heartbeat() -> Heartbeat {
    Heartbeat::new(INTERVAL, MISSES)
}

// ---------------------------------------------------------------------------------------------
// The network: two namespaces and a veth pair
// ---------------------------------------------------------------------------------------------

fn find_ip() -> Option<PathBuf> {
    let fixed = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("ip"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    fixed.chain(on_path).find(|p| p.is_file())
}

/// Runs `ip args...`; `Err` carries the command and what it printed.
fn run_ip(ip: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{} {}`: {e}", ip.display(), args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair; both namespaces (and so the pair) are deleted on drop.
struct Net {
    ip: PathBuf,
    /// Namespaces created so far, deleted on drop.
    created: Vec<String>,
    dialer_ns: String,
    dialer_dev: String,
    listener_ns: String,
    listener_dev: String,
    /// Where the listener listens, inside its namespace.
    addr: String,
}

impl Net {
    /// Builds the network; `Err` says why this machine cannot (the test is then skipped).
    fn setup() -> Result<Net, String> {
        if !cfg!(target_os = "linux") {
            return Err("network namespaces exist only on Linux".to_owned());
        }
        let ip = find_ip().ok_or("iproute2's `ip` was not found")?;
        let pid = std::process::id();
        let subnet = format!("10.213.{}", pid % 256);
        let mut net = Net {
            ip,
            created: Vec::new(),
            dialer_ns: format!("duct-a-{pid}"),
            dialer_dev: format!("dva{}", pid % 100_000),
            listener_ns: format!("duct-b-{pid}"),
            listener_dev: format!("dvb{}", pid % 100_000),
            addr: format!("tcp://{subnet}.1:{PORT}"),
        };
        for ns in [net.dialer_ns.clone(), net.listener_ns.clone()] {
            net.ip(&["netns", "add", &ns])?;
            net.created.push(ns);
        }
        let (a, b) = (net.dialer_ns.clone(), net.listener_ns.clone());
        let (da, db) = (net.dialer_dev.clone(), net.listener_dev.clone());
        net.ip(&[
            "-n", &a, "link", "add", &da, "type", "veth", "peer", "name", &db, "netns", &b,
        ])?;
        net.ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("{subnet}.2/30"),
            "dev",
            &da,
        ])?;
        net.ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{subnet}.1/30"),
            "dev",
            &db,
        ])?;
        for (ns, dev) in [(&a, &da), (&b, &db)] {
            net.ip(&["-n", ns, "link", "set", "lo", "up"])?;
            net.ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(net)
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        run_ip(&self.ip, args)
    }

    /// Takes the veth end in `ns` down or up.
    fn set_link(&self, ns: &str, dev: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip(&["-n", ns, "link", "set", dev, state])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = run_ip(&self.ip, &["netns", "del", ns]) {
                eprintln!("warning: could not delete network namespace {ns}: {e}");
            }
        }
    }
}

fn skip(reason: &str) {
    assert!(
        std::env::var_os(REQUIRE_VAR).is_none(),
        "{REQUIRE_VAR} is set, but this machine cannot run the netns test: {reason}"
    );
    let msg = format!(
        "SKIPPED: netns partition test (needs root and iproute2; set {REQUIRE_VAR}=1 to fail \
         instead): {reason}"
    );
    // The harness captures `eprintln!` of passing tests; a write to the real stderr shows.
    let stderr = std::io::stderr();
    let mut out = stderr.lock();
    let _ = writeln!(out, "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// What a child printed, timestamped on arrival.
struct Event {
    at: Instant,
    who: &'static str,
    line: Option<String>, // None: its stdout closed (it exited)
    stderr: bool,
}

/// A child process; on drop its stdin is closed (it exits), and it is killed if it lingers.
struct Kid {
    who: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Kid {
    fn spawn(net: &Net, ns: &str, who: &'static str, tx: &mpsc::Sender<Event>) -> Kid {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(&net.ip)
            .args(["netns", "exec", ns])
            .arg(exe)
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, who)
            .env(ADDR_VAR, &net.addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the {who} child: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, is_err) in [
            (Box::new(stdout) as Box<dyn Read + Send>, false),
            (Box::new(stderr), true),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let event = Event {
                        at: Instant::now(),
                        who,
                        line: Some(line),
                        stderr: is_err,
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Event {
                    at: Instant::now(),
                    who,
                    line: None,
                    stderr: is_err,
                });
            });
        }
        let stdin = child.stdin.take();
        Kid { who, child, stdin }
    }

    /// Closes its stdin and waits up to `limit` for it to exit; kills it after that.
    fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if self.stop(Duration::from_secs(2)).is_none() {
            eprintln!("the {} child did not exit: killed", self.who);
        }
    }
}

/// Child entry point: does nothing unless the parent test started this process as a dialer
/// or listener child (see the module documentation).
#[test]
fn netns_child() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let addr = std::env::var(ADDR_VAR).expect(ADDR_VAR);
    // Exit when the parent closes our stdin or dies; in any case after a while.
    thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    thread::spawn(|| {
        thread::sleep(CHILD_LIFETIME);
        say("EXPIRED".to_owned());
        std::process::exit(3);
    });
    match role.as_str() {
        "listener" => run_listener(&addr),
        "dialer" => run_dialer(&addr),
        other => panic!("unknown {ROLE_VAR} {other:?}"),
    }
}

/// One report line to the parent.
fn say(line: String) {
    println!("@@ {}", line.replace('\n', " "));
}

fn run_listener(addr: &str) {
    let opts = ListenOptions::default()
        .heartbeat(heartbeat())
        .on_error(|e| say(format!("LERR {:?} {e}", e.kind())));
    let listener = duct::listen(addr, opts).unwrap_or_else(|e| panic!("listen {addr}: {e}"));
    say("READY".to_owned());
    for k in 0u32.. {
        match listener.accept() {
            Ok(pipe) => {
                say(format!("ACCEPT {k} {}", pipe.session_id()));
                thread::spawn(move || serve(k, &pipe));
            }
            Err(e) => {
                say(format!("LACCEPTERR {:?} {e}", e.kind()));
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Echoes what accepted pipe number `k` receives, reporting each message, each failed `recv`
/// and each change of its state, until the pipe ends.
fn serve(k: u32, pipe: &Pipe) {
    let opts = RecvOptions::default().timeout(Duration::from_millis(50));
    let mut state = pipe.state();
    let mut last_error = None;
    loop {
        match pipe.recv_with(&opts) {
            Ok(m) => {
                say(format!("RECV {k} {}", String::from_utf8_lossy(m.payload())));
                let _ = pipe.send(m);
                last_error = None;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(e) => {
                if last_error != Some(e.kind()) {
                    say(format!("LRECVERR {k} {:?} {}", e.kind(), e));
                    last_error = Some(e.kind());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let now = pipe.state();
        if now != state {
            say(format!("LSTATE {k} {state} {now}"));
            state = now;
        }
        if matches!(state, PipeState::Disconnected | PipeState::Closed) {
            return;
        }
    }
}

fn run_dialer(addr: &str) {
    let opts = DialOptions::default()
        .timeout(DIAL_TIMEOUT)
        .heartbeat(heartbeat())
        .reconnect(
            Reconnect::exponential(Duration::from_millis(50), Duration::from_millis(500))
                .jitter(0.2)
                .max_attempts(None),
        )
        .on_state_change(|c: StateChange| {
            let cause = c
                .cause
                .map_or_else(|| "-".to_owned(), |e| format!("{:?} {e}", e.kind()));
            say(format!(
                "DSTATE {} {} {} {cause}",
                c.from, c.to, c.session_id
            ));
        })
        .on_error(|e: &duct::Error| say(format!("DERR {:?} {e}", e.kind())));
    // The veth pair is fresh: give the first dial a few tries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pipe = loop {
        match duct::dial(addr, opts.clone()) {
            Ok(pipe) => break pipe,
            Err(e) if Instant::now() < deadline => {
                say(format!("DIALERR {:?} {e}", e.kind()));
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("dial {addr}: {e}"),
        }
    };
    say(format!("DIALED {}", pipe.session_id()));
    let echoes = pipe.clone();
    thread::spawn(move || {
        let opts = RecvOptions::default().timeout(Duration::from_millis(100));
        let mut last_error = None;
        loop {
            match echoes.recv_with(&opts) {
                Ok(m) => say(format!("ECHO {}", String::from_utf8_lossy(m.payload()))),
                Err(e) if e.kind() == ErrorKind::TimedOut => {}
                Err(e) => {
                    if last_error != Some(e.kind()) {
                        say(format!("DRECVERR {:?} {e}", e.kind()));
                        last_error = Some(e.kind());
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    });
    let mut last_error = None;
    for seq in 0u64.. {
        match pipe.send(seq.to_string()) {
            Ok(()) => last_error = None,
            Err(e) => {
                if last_error != Some(e.kind()) {
                    say(format!("DSENDERR {:?} {e}", e.kind()));
                    last_error = Some(e.kind());
                }
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: what the children reported
// ---------------------------------------------------------------------------------------------

/// A dialer state change.
struct DState {
    at: Instant,
    from: String,
    to: String,
    cause: String,
}

#[derive(Default)]
struct Seen {
    listener_ready: bool,
    /// (arrival, accepted pipe number, sequence number) of every message the listener got.
    recv: Vec<(Instant, u32, u64)>,
    /// (arrival, sequence number) of every echo the dialer got.
    echoes: Vec<(Instant, u64)>,
    dstates: Vec<DState>,
    /// The dialer's `on_error` reports.
    derrors: Vec<(Instant, String)>,
    /// Signs that an accepted pipe lost its peer: a failed `recv` or `on_error` report of
    /// kind `Disconnected`, or its state leaving `Connected`.
    ldetect: Vec<(Instant, String)>,
    /// Error texts the listener side reported (recv errors and `on_error`).
    lerrors: Vec<(Instant, String)>,
    /// Anything that went wrong in a child (panics on stderr, exits, send errors).
    trouble: Vec<String>,
}

struct Watch {
    rx: mpsc::Receiver<Event>,
    start: Instant,
    seen: Seen,
}

impl Watch {
    fn ms(&self, at: Instant) -> u128 {
        at.duration_since(self.start).as_millis()
    }

    fn take(&mut self, ev: Event) {
        let t = self.ms(ev.at);
        let Some(line) = ev.line else {
            if !ev.stderr {
                self.seen
                    .trouble
                    .push(format!("{t} ms: the {} child exited", ev.who));
            }
            return;
        };
        if ev.stderr {
            println!("{t:>6} ms {} stderr: {line}", ev.who);
            self.seen
                .trouble
                .push(format!("{t} ms: {} stderr: {line}", ev.who));
            return;
        }
        // The harness's own output may precede a report on its line ("test netns_child ... ").
        let Some(body) = line.find("@@ ").map(|i| &line[i + 3..]) else {
            return;
        };
        let mut words = body.splitn(2, ' ');
        let tag = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        let fields: Vec<&str> = rest.splitn(4, ' ').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        let number = |s: &str| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("bad number in {line:?}"))
        };
        match tag {
            "RECV" => {
                let k = number(field(0)) as u32;
                self.seen.recv.push((ev.at, k, number(field(1))));
                return; // too many to print
            }
            "ECHO" => {
                self.seen.echoes.push((ev.at, number(field(0))));
                return;
            }
            "READY" => self.seen.listener_ready = true,
            "DSTATE" => self.seen.dstates.push(DState {
                at: ev.at,
                from: field(0).to_owned(),
                to: field(1).to_owned(),
                cause: field(3).to_owned(),
            }),
            "DERR" => self.seen.derrors.push((ev.at, rest.to_owned())),
            "LSTATE" if field(1) == "connected" && field(2) != "connected" => {
                self.seen.ldetect.push((ev.at, body.to_owned()));
            }
            "LRECVERR" | "LERR" => {
                self.seen.lerrors.push((ev.at, body.to_owned()));
                let kind = if tag == "LERR" { field(0) } else { field(1) };
                if kind == "Disconnected" {
                    self.seen.ldetect.push((ev.at, body.to_owned()));
                }
            }
            "DSENDERR" | "DRECVERR" | "LACCEPTERR" | "EXPIRED" => {
                self.seen.trouble.push(format!("{t} ms: {} {body}", ev.who))
            }
            _ => {}
        }
        println!("{t:>6} ms {}: {body}", ev.who);
    }

    /// Takes in what arrives until `deadline`.
    fn pump_until(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(_) if Instant::now() < deadline => panic!("the event channel closed"),
                Err(_) => return,
            }
        }
    }

    /// Waits until `cond` holds, at most until `deadline`; returns what it returned.
    fn wait<T>(&mut self, what: &str, deadline: Instant, cond: impl Fn(&Seen) -> Option<T>) -> T {
        loop {
            if let Some(found) = cond(&self.seen) {
                return found;
            }
            let exited: Vec<&String> = self
                .seen
                .trouble
                .iter()
                .filter(|t| t.ends_with("child exited"))
                .collect();
            assert!(exited.is_empty(), "waiting for {what}: {exited:?}");
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(_) => panic!(
                    "no {what} within the bound ({} ms after the test started); trouble seen: {:?}",
                    self.ms(Instant::now()),
                    self.seen.trouble
                ),
            }
        }
    }
}

/// What one partition showed.
struct Round {
    label: &'static str,
    down: Instant,
    up: Instant,
    dialer_detect: Duration,
    listener_detect: Duration,
    failed_attempts: usize,
    reconnect: Duration,
    resume: Duration,
    lost: u64,
}

/// Traffic is flowing; takes the veth end `dev` in namespace `ns` down, checks that both ends
/// notice and the dialer keeps trying, brings the link back and checks that traffic resumes.
fn partition(watch: &mut Watch, net: &Net, label: &'static str, ns: &str, dev: &str) -> Round {
    let base = watch.seen.recv.len();
    watch.wait(
        "traffic before the partition",
        Instant::now() + Duration::from_secs(10),
        |s| (s.recv.len() >= base + FLOWING).then_some(()),
    );

    println!("{:>6} ms --- {label}: link down", watch.ms(Instant::now()));
    let down = Instant::now();
    net.set_link(ns, dev, false);

    let (dialer_at, cause) = watch.wait("dialer detection", down + DETECT_BOUND, |s| {
        s.dstates
            .iter()
            .find(|c| {
                c.at >= down
                    && c.from == "connected"
                    && (c.to == "reconnecting" || c.to == "disconnected")
            })
            .map(|c| (c.at, c.cause.clone()))
    });
    let (listener_at, how) = watch.wait("listener detection", down + DETECT_BOUND, |s| {
        s.ldetect.iter().find(|d| d.0 >= down).cloned()
    });
    let dialer_detect = dialer_at.duration_since(down);
    let listener_detect = listener_at.duration_since(down);
    let silence = INTERVAL * MISSES;
    assert!(
        cause.contains("silent"),
        "{label}: the dialer's loss should come from its heartbeat: {cause}"
    );
    for (side, took) in [("dialer", dialer_detect), ("listener", listener_detect)] {
        // Not before the peer could have been silent for `misses` intervals (less one: the
        // last message may have arrived a little before the link went down).
        assert!(
            took + INTERVAL >= silence,
            "{label}: the {side} declared the peer gone after only {took:?}"
        );
    }
    // Where the listener side gave a reason, it is the heartbeat too.
    let reasons: Vec<String> = watch
        .seen
        .lerrors
        .iter()
        .filter(|e| e.0 >= down)
        .map(|e| e.1.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("silent"))
            || (reasons.is_empty() && how.contains("LSTATE")),
        "{label}: the listener's loss should come from its heartbeat: {how}; errors: {reasons:?}"
    );

    // Hold the partition: the dialer keeps trying and failing.
    watch.pump_until(dialer_at.max(listener_at) + HOLD);
    let failed_attempts = watch
        .seen
        .derrors
        .iter()
        .filter(|e| e.0 >= down && e.1.contains("reconnect attempt"))
        .count();
    assert!(
        failed_attempts >= 1,
        "{label}: no failed reconnect attempt reached on_error during the partition: {:?}",
        watch.seen.derrors
    );
    let during: Vec<String> = watch
        .seen
        .dstates
        .iter()
        .filter(|c| c.at >= down)
        .map(|c| format!("{} -> {}", c.from, c.to))
        .collect();
    assert!(
        !during.iter().any(|c| c.ends_with("-> connected")),
        "{label}: the dialer connected while the link was down: {during:?}"
    );

    println!("{:>6} ms --- {label}: link up", watch.ms(Instant::now()));
    let up = Instant::now();
    net.set_link(ns, dev, true);

    let reconnected = watch.wait("dialer reconnect", up + RESUME_BOUND, |s| {
        s.dstates
            .iter()
            .find(|c| c.at >= up && c.to == "connected")
            .map(|c| c.at)
    });
    let resumed = watch.wait("traffic after the partition", up + RESUME_BOUND, |s| {
        let after: Vec<_> = s.recv.iter().filter(|r| r.0 >= up).collect();
        (after.len() >= FLOWING).then(|| after[0].0)
    });
    watch.wait("an echo after the partition", up + RESUME_BOUND, |s| {
        s.echoes.iter().any(|e| e.0 >= up).then_some(())
    });
    // The dialer went Connected -> (Reconnecting | Disconnected) -> ... -> Connected.
    let changes: Vec<(String, String)> = watch
        .seen
        .dstates
        .iter()
        .filter(|c| c.at >= down)
        .map(|c| (c.from.clone(), c.to.clone()))
        .collect();
    let first = changes.first().expect("state changes");
    let last = changes.last().expect("state changes");
    assert!(
        first.0 == "connected"
            && (first.1 == "reconnecting" || first.1 == "disconnected")
            && last.1 == "connected",
        "{label}: dialer state changes {changes:?}"
    );
    // Realtime messages in flight when the link died (written into the dead connection) are
    // lost; nothing else should be.
    let last_before = watch
        .seen
        .recv
        .iter()
        .rfind(|r| r.0 < up)
        .map_or(0, |r| r.2);
    let first_after = watch
        .seen
        .recv
        .iter()
        .find(|r| r.0 >= up)
        .map_or(0, |r| r.2);
    Round {
        label,
        down,
        up,
        dialer_detect,
        listener_detect,
        failed_attempts,
        reconnect: reconnected.duration_since(up),
        resume: resumed.duration_since(up),
        lost: first_after.saturating_sub(last_before + 1),
    }
}

#[test]
fn partition_between_namespaces_is_detected_and_heals() {
    if std::env::var_os(ROLE_VAR).is_some() {
        return; // a child process: `netns_child` does the work
    }
    let net = match Net::setup() {
        Ok(net) => net,
        Err(reason) => return skip(&reason),
    };
    let (tx, rx) = mpsc::channel();
    let mut watch = Watch {
        rx,
        start: Instant::now(),
        seen: Seen::default(),
    };
    let mut listener = Kid::spawn(&net, &net.listener_ns, "listener", &tx);
    watch.wait(
        "listener READY",
        Instant::now() + Duration::from_secs(10),
        |s| s.listener_ready.then_some(()),
    );
    let mut dialer = Kid::spawn(&net, &net.dialer_ns, "dialer", &tx);
    drop(tx);

    let rounds = [
        partition(
            &mut watch,
            &net,
            "listener's end down",
            &net.listener_ns,
            &net.listener_dev,
        ),
        partition(
            &mut watch,
            &net,
            "dialer's end down",
            &net.dialer_ns,
            &net.dialer_dev,
        ),
    ];

    println!("netns partition (heartbeat {INTERVAL:?} x {MISSES}, dial timeout {DIAL_TIMEOUT:?}):");
    for r in &rounds {
        println!(
            "  {}: detected by the dialer after {:?}, by the listener after {:?}; \
             {} failed reconnect attempts; reconnected {:?} and traffic resumed {:?} after \
             the link came back; {} messages lost",
            r.label,
            r.dialer_detect,
            r.listener_detect,
            r.failed_attempts,
            r.reconnect,
            r.resume,
            r.lost
        );
    }

    // Everything the listener received: per accepted pipe in order, never twice.
    let mut seqs: Vec<u64> = watch.seen.recv.iter().map(|r| r.2).collect();
    for k in 0..=watch.seen.recv.iter().map(|r| r.1).max().unwrap_or(0) {
        let on_pipe: Vec<u64> = watch
            .seen
            .recv
            .iter()
            .filter(|r| r.1 == k)
            .map(|r| r.2)
            .collect();
        assert!(
            on_pipe.windows(2).all(|w| w[0] < w[1]),
            "accepted pipe {k}: out of order: {on_pipe:?}"
        );
    }
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "a message arrived twice");
    // The dialer's connection dropped once per partition, while it lasted, and never otherwise.
    let drops: Vec<Instant> = watch
        .seen
        .dstates
        .iter()
        .filter(|c| c.from == "connected")
        .map(|c| c.at)
        .collect();
    assert!(
        drops.len() == rounds.len()
            && drops
                .iter()
                .zip(&rounds)
                .all(|(&at, r)| r.down <= at && at <= r.up),
        "the dialer's connection should drop once per partition, while it lasts; it dropped \
         {} times for {} partitions: {:?}",
        drops.len(),
        rounds.len(),
        watch
            .seen
            .dstates
            .iter()
            .map(|c| format!("{} ms: {} -> {}", watch.ms(c.at), c.from, c.to))
            .collect::<Vec<_>>()
    );

    let trouble = std::mem::take(&mut watch.seen.trouble);
    let statuses = [
        ("dialer", dialer.stop(Duration::from_secs(5))),
        ("listener", listener.stop(Duration::from_secs(5))),
    ];
    assert!(trouble.is_empty(), "trouble in the children: {trouble:?}");
    for (who, status) in statuses {
        assert!(
            status.is_some_and(|s| s.success()),
            "the {who} child: {status:?}"
        );
    }
}
