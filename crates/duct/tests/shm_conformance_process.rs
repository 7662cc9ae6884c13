//! shm:// between two processes: what the conformance suite checks between threads
//! (tests/conformance.rs, module `shm`), here with the peer in another process, so that the
//! segment really is shared between address spaces and the wake-ups cross processes.
//!
//! - Echo round trips of 0, 1, 64, 1000, 65 536, 65 537 bytes and 4 MiB on several channels,
//!   one at a time and pipelined, with the child dialing and with the child listening; then a
//!   close with a code and a reason that the child sees.
//! - 100 000 small messages each way, in order; the child's close with a code and a reason.
//! - Reliable channels (`ChannelOptions::reliable(true)` on both ends): 20 000 echoed
//!   messages, more than the in-flight window, so acknowledgements must cross back; every
//!   message exactly once and in order, no retransmits.
//! - TTL: messages with a short TTL (per message and per channel) sent to a child that does
//!   not read for a while are counted as expired and never delivered; one with a long TTL is.
//! - Heartbeats (default, and a fast setting whose silence timeout is a third of the idle
//!   time) keep a pipe alive while neither process calls duct for 3 s; PINGs are answered
//!   (an RTT is measured).
//! - Credentials and addresses: the child's peer credentials are this process's pid (and
//!   ours are the child's), the dialer's peer address is `Addr::Shm(name)`, an accepted
//!   pipe's is `Addr::Unknown`.
//!
//! The child is this test binary run again with `DUCT_SHMC_ROLE` set (see [`child_entry`]);
//! it reports on its stdout (libtest prints `test child_entry ... ` before its first line,
//! so lines are matched by their end) and is told when to go on through its stdin. A guard
//! kills and reaps it if the test fails.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use duct::{
    Addr, ChannelOptions, CloseOptions, DialOptions, ErrorKind, Heartbeat, ListenOptions, Message,
    Pipe, PipeState, RecvOptions, SendOptions,
};

mod common;
use common::{assert_payload, pattern, recv, unique, T};

const MIB: usize = 1024 * 1024;

/// The sizes every echo case sends.
const SIZES: [usize; 7] = [0, 1, 64, 1000, 65_536, 65_537, 4 * MIB];

/// Messages each way in the stream case.
const STREAM_N: u32 = 100_000;

/// Reliable messages in the reliable case: more than the default in-flight window (16384),
/// so the sender needs the child's acknowledgements to finish.
const RELIABLE_N: u32 = 40_000;

/// The short TTL of the TTL case, and how long the child then does not read.
const SHORT_TTL: Duration = Duration::from_millis(300);
const NOT_READING: Duration = Duration::from_millis(1500);

/// How long neither process calls duct in the heartbeat cases.
const IDLE: Duration = Duration::from_secs(3);

fn name() -> String {
    format!("duct-proc-conf-{}-{}", std::process::id(), unique())
}

fn reliable() -> ChannelOptions {
    ChannelOptions::default().reliable(true)
}

// ---------------------------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------------------------

/// The child, killed (if still running) and reaped on drop.
struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
}

impl Kid {
    /// Runs this binary's [`child_entry`] as `role` on shm name `name`, with `env` added.
    fn spawn(role: &str, name: &str, env: &[(&str, String)]) -> Kid {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env("DUCT_SHMC_ROLE", role)
            .env("DUCT_SHMC_NAME", name)
            .env("DUCT_SHMC_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the child");
        let out = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Kid { child, out, stdin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to print a line ending with `want` (other lines are skipped).
    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "the child ended before printing {want:?}");
            if line.trim_end().ends_with(want) {
                return;
            }
        }
    }

    /// Tells the child to go on (a line on its stdin).
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the child's stdin");
        writeln!(stdin, "{line}").expect("write to the child");
        stdin.flush().unwrap();
    }

    /// Waits (at most [`T`]) for the child to exit, and asserts that it succeeded.
    fn finish(mut self) {
        self.stdin = None; // EOF: a child still waiting for a word ends
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the child failed: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit within {T:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL; fails harmlessly if it already exited
        let _ = self.child.wait();
    }
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("child: {key} is not set"))
}

/// The child's side: waits for a line on stdin (EOF or anything but `want` is a failure).
fn wait_word(want: &str) {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), want, "child: the parent's word");
}

/// The child's side: echoes every message back on its channel until the peer closes, then
/// prints `closed <code> <reason>`.
fn echo_until_closed(pipe: &Pipe) {
    loop {
        match pipe.recv() {
            Ok(m) => pipe
                .send(m)
                .unwrap_or_else(|e| panic!("child: echo send: {e}")),
            Err(e) if e.kind() == ErrorKind::Closed => {
                print_close(&e);
                return;
            }
            Err(e) => panic!("child: echo recv: {e}"),
        }
    }
}

/// The child's side: waits for the peer's close, failing on any message.
fn wait_closed(pipe: &Pipe) {
    match pipe.recv_with(&RecvOptions::default().timeout(T)) {
        Ok(m) => panic!("child: unexpected message of {} bytes", m.len()),
        Err(e) if e.kind() == ErrorKind::Closed => print_close(&e),
        Err(e) => panic!("child: waiting for the close: {e}"),
    }
}

fn print_close(e: &duct::Error) {
    let (code, reason) = e
        .close_reason()
        .unwrap_or_else(|| panic!("child: a close without a reason: {e}"));
    println!("closed {code} {reason}");
}

fn child_dial(addr: &str, opts: DialOptions) -> Pipe {
    duct::dial(addr, opts.timeout(T)).unwrap_or_else(|e| panic!("child: dial {addr}: {e}"))
}

/// A small message of the stream case: the index, then `i % 32` bytes of `i as u8`.
fn small(i: u32, channel: u16) -> Message {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(4 + (i % 32) as usize, i as u8);
    Message::new(p).with_channel(channel)
}

/// Checks a message made by [`small`] and returns its index.
#[track_caller]
fn check_small(m: &Message, channel: u16) -> u32 {
    let p = m.payload();
    assert_eq!(m.channel(), channel);
    let i = u32::from_le_bytes(p[..4].try_into().unwrap());
    assert_eq!(p.len(), 4 + (i % 32) as usize, "message {i}: length");
    assert!(p[4..].iter().all(|&b| b == i as u8), "message {i}: content");
    i
}

/// The heartbeat setting of the heartbeat cases: `DUCT_SHMC_HB_MS` = 0 is the default.
fn heartbeat_from(ms: u64) -> Heartbeat {
    if ms == 0 {
        Heartbeat::default()
    } else {
        Heartbeat::new(Duration::from_millis(ms), 5)
    }
}

/// The children's side. Runs only when `DUCT_SHMC_ROLE` is set.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("DUCT_SHMC_ROLE") else {
        return;
    };
    let name = env("DUCT_SHMC_NAME");
    let addr = format!("shm://{name}");
    let parent: u32 = env("DUCT_SHMC_PARENT_PID").parse().unwrap();
    match role.as_str() {
        // Dials and echoes until the parent closes.
        "echo-dialer" => {
            let pipe = child_dial(&addr, DialOptions::default());
            println!("ready");
            echo_until_closed(&pipe);
        }
        // Listens, accepts one pipe and echoes until the parent closes.
        "echo-listener" => {
            let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
            assert_eq!(listener.local_addr(), Addr::Shm(name.clone()));
            println!("listening");
            let pipe = listener.accept_timeout(T).unwrap();
            assert_eq!(pipe.local_addr(), Addr::Shm(name.clone()));
            assert_eq!(pipe.peer_addr(), Addr::Unknown);
            assert_eq!(
                pipe.peer_credentials().and_then(|c| c.pid),
                Some(parent),
                "child: the accepted pipe's peer is the parent"
            );
            println!("ready");
            echo_until_closed(&pipe);
        }
        // Dials with reliable channels 2 and 3 (3 with a window of 8 messages) and echoes.
        "echo-reliable" => {
            let opts = DialOptions::default()
                .channel(2, reliable())
                .channel(3, reliable().inflight_window(8, 64 * 1024));
            let pipe = child_dial(&addr, opts);
            println!("ready");
            echo_until_closed(&pipe);
            let s = pipe.stats();
            println!(
                "child stats retransmits={} dropped={}",
                s.retransmits, s.dropped
            );
        }
        // Receives STREAM_N small messages in order, says so, sends STREAM_N, closes.
        "stream" => {
            let pipe = child_dial(&addr, DialOptions::default());
            println!("ready");
            for want in 0..STREAM_N {
                let m = pipe
                    .recv_with(&RecvOptions::default().timeout(T))
                    .unwrap_or_else(|e| panic!("child: recv message {want}: {e}"));
                assert_eq!(check_small(&m, 3), want, "child: in order");
            }
            pipe.send(Message::from(format!("got {STREAM_N}"))).unwrap();
            for i in 0..STREAM_N {
                pipe.send(small(i, 4)).unwrap();
            }
            pipe.close_with(
                CloseOptions::default()
                    .reason(4100, "stream done")
                    .linger(T),
            )
            .unwrap();
            println!("child done");
        }
        // Dials, does not read until told, then waits NOT_READING more, then reads what
        // is left and reports its stats.
        "ttl" => {
            let pipe = child_dial(&addr, DialOptions::default());
            println!("ready");
            wait_word("sent");
            thread::sleep(NOT_READING);
            let mut got = BTreeMap::new();
            let deadline = Instant::now() + T;
            while got.len() < 2 {
                assert!(Instant::now() < deadline, "child: got only {got:?}");
                let m = pipe
                    .recv_with(&RecvOptions::default().timeout(T))
                    .unwrap_or_else(|e| panic!("child: recv: {e}"));
                let text = String::from_utf8(m.payload().to_vec()).unwrap();
                assert!(
                    matches!((m.channel(), text.as_str()), (5, "long") | (6, "marker")),
                    "child: an expired message was delivered: channel {} {text:?}",
                    m.channel()
                );
                assert!(got.insert(m.channel(), text).is_none(), "child: twice");
            }
            // And nothing else: the expired ones are gone.
            let r = pipe.recv_with(&RecvOptions::default().timeout(Duration::from_millis(500)));
            match r {
                Err(e) if e.kind() == ErrorKind::TimedOut => {}
                Ok(m) => panic!(
                    "child: an expired message was delivered: channel {} {:?}",
                    m.channel(),
                    String::from_utf8_lossy(m.payload())
                ),
                Err(e) => panic!("child: {e}"),
            }
            let s = pipe.stats();
            let ch = |c: u16| s.channel(c).map_or(0, |c| c.expired);
            let report = format!(
                "expired={} ch5={} ch7={} received={}",
                s.expired,
                ch(5),
                ch(7),
                s.msgs_received
            );
            println!("child stats {report}");
            pipe.send(Message::from(report)).unwrap();
            wait_closed(&pipe);
        }
        // Dials with the heartbeat DUCT_SHMC_HB_MS, then calls nothing until told; then
        // checks the pipe, answers, waits for the close.
        "idle" => {
            let hb = heartbeat_from(env("DUCT_SHMC_HB_MS").parse().unwrap());
            let pipe = child_dial(&addr, DialOptions::default().heartbeat(hb));
            println!("ready");
            wait_word("go");
            assert_eq!(pipe.state(), PipeState::Connected, "child: after idling");
            // A side PINGs only when it has received nothing for an interval: the peer's
            // PINGs may keep this side from ever PINGing (and measuring an RTT).
            let rtt = pipe.stats().rtt;
            let m = pipe
                .recv_with(&RecvOptions::default().timeout(T))
                .unwrap_or_else(|e| panic!("child: recv after idling: {e}"));
            assert_eq!(m.payload(), b"still there?");
            pipe.send(format!("yes rtt={}", rtt.is_some())).unwrap();
            println!("child rtt {rtt:?}");
            wait_closed(&pipe);
        }
        // Dials and checks the credentials and addresses of its pipe.
        "creds" => {
            let pipe = child_dial(&addr, DialOptions::default());
            let creds = pipe
                .peer_credentials()
                .expect("child: an shm pipe has peer credentials");
            assert_eq!(creds.pid, Some(parent), "child: the peer is the parent");
            assert_eq!(creds.uid, rustix::process::getuid().as_raw());
            assert_eq!(creds.gid, rustix::process::getgid().as_raw());
            assert_eq!(pipe.peer_addr(), Addr::Shm(name.clone()));
            assert_eq!(pipe.peer_addr().to_string(), addr);
            assert_eq!(pipe.local_addr(), Addr::Unknown);
            println!("creds ok pid={}", creds.pid.unwrap());
            wait_closed(&pipe);
        }
        other => panic!("unknown child role {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The parent's side
// ---------------------------------------------------------------------------------------------

/// A listener on a fresh name with `opts`, a child of `role` dialing it (with `env`), and
/// the accepted pipe once the child is ready.
fn child_dials(role: &str, opts: ListenOptions, env: &[(&str, String)]) -> (Pipe, Kid) {
    let n = name();
    let addr = format!("shm://{n}");
    let listener = duct::listen(&addr, opts).unwrap();
    let mut kid = Kid::spawn(role, &n, env);
    let pipe = listener
        .accept_timeout(T)
        .unwrap_or_else(|e| panic!("accept the child's pipe: {e}"));
    kid.expect_line("ready");
    (pipe, kid)
}

/// Echo round trips of every size on several channels, one at a time and then pipelined;
/// then a close with a code and a reason that the child sees.
fn echo_all_sizes(pipe: &Pipe, kid: &mut Kid) {
    // One at a time.
    let mut seed = 0u32;
    for channel in [0u16, 1, 77, u16::MAX] {
        for &size in &SIZES {
            seed += 1;
            let want = pattern(size, seed);
            pipe.send(Message::new(want.clone()).with_channel(channel))
                .unwrap();
            let m = recv(pipe);
            assert_eq!(m.channel(), channel, "size {size}");
            assert_payload(
                m.payload(),
                &want,
                &format!("echo of {size} bytes on channel {channel}"),
            );
        }
    }
    // Pipelined: every size on three channels before reading any echo.
    let channels = [3u16, 4, 5];
    let seed_of = |c: u16, i: usize| 1000 * u32::from(c) + i as u32;
    for (i, &size) in SIZES.iter().enumerate() {
        for &c in &channels {
            pipe.send(Message::new(pattern(size, seed_of(c, i))).with_channel(c))
                .unwrap();
        }
    }
    let mut next: BTreeMap<u16, usize> = channels.iter().map(|&c| (c, 0)).collect();
    for _ in 0..SIZES.len() * channels.len() {
        let m = recv(pipe);
        let i = next
            .get_mut(&m.channel())
            .unwrap_or_else(|| panic!("an echo on channel {}", m.channel()));
        assert_payload(
            m.payload(),
            &pattern(SIZES[*i], seed_of(m.channel(), *i)),
            &format!("pipelined echo {} on channel {}", *i, m.channel()),
        );
        *i += 1;
    }
    assert!(next.values().all(|&i| i == SIZES.len()), "{next:?}");
    let s = pipe.stats();
    let n = (4 + channels.len()) as u64 * SIZES.len() as u64;
    assert_eq!((s.msgs_sent, s.msgs_received), (n, n), "{s:?}");
    assert_eq!((s.dropped, s.expired), (0, 0), "{s:?}");
    pipe.close_with(
        CloseOptions::default()
            .reason(4321, "parent done")
            .linger(T),
    )
    .unwrap();
    kid.expect_line("closed 4321 parent done");
}

#[test]
fn echo_all_sizes_with_the_child_dialing() {
    let (pipe, mut kid) = child_dials("echo-dialer", ListenOptions::default(), &[]);
    echo_all_sizes(&pipe, &mut kid);
    kid.finish();
}

#[test]
fn echo_all_sizes_with_the_child_listening() {
    let n = name();
    let addr = format!("shm://{n}");
    let mut kid = Kid::spawn("echo-listener", &n, &[]);
    kid.expect_line("listening");
    let pipe = duct::dial(&addr, DialOptions::default().timeout(T)).unwrap();
    assert_eq!(pipe.peer_addr(), Addr::Shm(n.clone()));
    assert_eq!(
        pipe.peer_credentials().and_then(|c| c.pid),
        Some(kid.pid()),
        "the listener is the child"
    );
    kid.expect_line("ready");
    echo_all_sizes(&pipe, &mut kid);
    kid.finish();
}

/// 100 000 small messages to the child, in order; 100 000 back, in order; then the child's
/// close with its code and reason.
#[test]
fn a_hundred_thousand_small_messages_each_way_in_order() {
    let (pipe, mut kid) = child_dials("stream", ListenOptions::default(), &[]);
    let started = Instant::now();
    for i in 0..STREAM_N {
        pipe.send(small(i, 3)).unwrap();
    }
    let m = recv(&pipe);
    assert_eq!(m.payload(), format!("got {STREAM_N}").as_bytes());
    let there = started.elapsed();
    for want in 0..STREAM_N {
        let m = pipe
            .recv_with(&RecvOptions::default().timeout(T))
            .unwrap_or_else(|e| panic!("recv message {want}: {e}"));
        assert_eq!(check_small(&m, 4), want, "in order");
    }
    let back = started.elapsed() - there;
    let e = pipe
        .recv_with(&RecvOptions::default().timeout(T))
        .expect_err("the child closes after its messages");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert_eq!(e.close_reason(), Some((4100, "stream done")), "{e}");
    kid.expect_line("child done");
    let s = pipe.stats();
    assert_eq!(
        (s.msgs_sent, s.msgs_received),
        (u64::from(STREAM_N), u64::from(STREAM_N) + 1),
        "{s:?}"
    );
    println!("{STREAM_N} small messages: to the child in {there:?}, back in {back:?}");
    kid.finish();
}

/// Reliable channels across processes: 20 000 messages on channel 2 (more than the
/// in-flight window) and 500 on channel 3 (a window of 8), echoed; each arrives exactly
/// once, in order, and nothing is sent twice.
#[test]
fn reliable_channels_echo_exactly_once_in_order() {
    let opts = ListenOptions::default()
        .channel(2, reliable())
        .channel(3, reliable().inflight_window(8, 64 * 1024));
    let (pipe, mut kid) = child_dials("echo-reliable", opts, &[]);
    let counts: BTreeMap<u16, u32> = BTreeMap::from([(2, RELIABLE_N), (3, 500)]);
    let got = thread::scope(|s| {
        for (&c, &n) in &counts {
            let p = pipe.clone();
            s.spawn(move || {
                let opts = SendOptions::default().timeout(Duration::from_secs(60));
                for i in 0..n {
                    p.send_with(small(i, c), &opts)
                        .unwrap_or_else(|e| panic!("send {i} on reliable channel {c}: {e}"));
                }
            });
        }
        let total: u32 = counts.values().sum();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for k in 0..total {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = pipe
                .recv_with(&RecvOptions::default().timeout(left.min(T)))
                .unwrap_or_else(|e| panic!("echo {k} of {total}: {e}"));
            let c = m.channel();
            let i = check_small(&m, c);
            got.entry(c).or_default().push(i);
        }
        got
    });
    for (c, n) in &counts {
        assert!(
            got.get(c).map(Vec::as_slice) == Some(&(0..*n).collect::<Vec<_>>()[..]),
            "reliable channel {c}: not every message exactly once in order ({} received)",
            got.get(c).map_or(0, Vec::len)
        );
    }
    // Nothing more came (no duplicate was delivered).
    match pipe.recv_with(&RecvOptions::default().timeout(Duration::from_millis(200))) {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => panic!("after every echo: {other:?}"),
    }
    let s = pipe.stats();
    assert_eq!(
        s.retransmits, 0,
        "a healthy link retransmits nothing: {s:?}"
    );
    assert_eq!(s.dropped, 0, "{s:?}");
    pipe.close_with(
        CloseOptions::default()
            .reason(4200, "reliable done")
            .linger(T),
    )
    .unwrap();
    kid.expect_line("closed 4200 reliable done");
    kid.expect_line("child stats retransmits=0 dropped=0");
    kid.finish();
}

/// Messages whose TTL (per message, or the channel's) runs out while the child does not
/// read are counted as expired and never delivered; one with a long TTL and one without
/// are.
#[test]
fn ttl_expires_messages_the_child_does_not_read_in_time() {
    let opts = ListenOptions::default().channel(7, ChannelOptions::default().ttl(SHORT_TTL));
    let (pipe, mut kid) = child_dials("ttl", opts, &[]);
    let short = SendOptions::default().channel(5).ttl(SHORT_TTL);
    let long = SendOptions::default()
        .channel(5)
        .ttl(Duration::from_secs(60));
    pipe.send_with("short", &short).unwrap();
    pipe.send_with("long", &long).unwrap();
    pipe.send(Message::from("channel ttl").with_channel(7))
        .unwrap();
    pipe.send(Message::from("marker").with_channel(6)).unwrap();
    kid.say("sent");
    let report = recv(&pipe);
    let report = String::from_utf8(report.payload().to_vec()).unwrap();
    let field = |key: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} in the child's report {report:?}"))
            .parse()
            .unwrap()
    };
    let ours = pipe.stats();
    let our_ch = |c: u16| ours.channel(c).map_or(0, |c| c.expired);
    println!(
        "expired: by the child {} (channel 5: {}, 7: {}), by this side {} (5: {}, 7: {})",
        field("expired"),
        field("ch5"),
        field("ch7"),
        ours.expired,
        our_ch(5),
        our_ch(7)
    );
    // Counted once, by whichever side dropped it (the receiver, unless this side had not
    // written it yet when it ran out).
    assert_eq!(
        field("expired") + ours.expired,
        2,
        "{report}; ours {ours:?}"
    );
    assert_eq!(field("ch5") + our_ch(5), 1, "{report}; ours {ours:?}");
    assert_eq!(field("ch7") + our_ch(7), 1, "{report}; ours {ours:?}");
    assert_eq!(field("received"), 2, "{report}");
    assert_eq!(ours.msgs_sent, 4, "{ours:?}");
    pipe.close_with(CloseOptions::default().reason(4300, "ttl done"))
        .unwrap();
    kid.expect_line("closed 4300 ttl done");
    kid.finish();
}

/// Neither process calls duct for [`IDLE`]; heartbeats (`hb_ms`, 0 for the default) keep the
/// pipe alive, PINGs are answered across the processes (an RTT is measured), and the pipe
/// works afterwards.
fn idle_pipe_stays_alive(hb_ms: u64) {
    let hb = heartbeat_from(hb_ms);
    let (pipe, mut kid) = child_dials(
        "idle",
        ListenOptions::default().heartbeat(hb),
        &[("DUCT_SHMC_HB_MS", hb_ms.to_string())],
    );
    thread::sleep(IDLE);
    assert_eq!(pipe.state(), PipeState::Connected, "after {IDLE:?} idle");
    let rtt = pipe.stats().rtt;
    pipe.send("still there?").unwrap();
    kid.say("go");
    let answer = recv(&pipe);
    let child_rtt = match answer.payload() {
        b"yes rtt=true" => true,
        b"yes rtt=false" => false,
        other => panic!("the child answered {:?}", String::from_utf8_lossy(other)),
    };
    // PINGs crossed: at least one side measured an RTT (a side PINGs only when it has
    // received nothing for an interval, so the peer's PINGs may keep it from PINGing).
    assert!(
        rtt.is_some() || child_rtt,
        "neither side measured an RTT in {IDLE:?} of heartbeats"
    );
    println!(
        "heartbeat {hb:?}: after {IDLE:?} idle, rtt here {rtt:?}, measured by the child: \
         {child_rtt}"
    );
    pipe.close_with(CloseOptions::default().reason(4400, "idle done"))
        .unwrap();
    kid.expect_line("closed 4400 idle done");
    kid.finish();
}

#[test]
fn default_heartbeats_keep_an_idle_pipe_alive() {
    idle_pipe_stays_alive(0);
}

/// Every 200 ms, 5 misses: the silence timeout (1 s) is a third of the idle time, so the
/// pipe lives only if PINGs and PONGs cross between the processes.
#[test]
fn fast_heartbeats_keep_an_idle_pipe_alive() {
    idle_pipe_stays_alive(200);
}

/// The child's peer credentials are this process's pid (and ours are the child's); the
/// addresses are `Addr::Shm(name)` towards the listener and `Addr::Unknown` towards the
/// dialer.
#[test]
fn peer_credentials_and_addresses_across_processes() {
    let n = name();
    let addr = format!("shm://{n}");
    let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
    assert_eq!(listener.local_addr(), Addr::Shm(n.clone()));
    let mut kid = Kid::spawn("creds", &n, &[]);
    let pipe = listener.accept_timeout(T).unwrap();
    kid.expect_line(&format!("creds ok pid={}", std::process::id()));
    let creds = pipe
        .peer_credentials()
        .expect("an accepted shm pipe has peer credentials");
    assert_eq!(creds.pid, Some(kid.pid()), "the dialer is the child");
    assert_eq!(creds.uid, rustix::process::getuid().as_raw());
    assert_eq!(creds.gid, rustix::process::getgid().as_raw());
    assert_eq!(pipe.local_addr(), Addr::Shm(n.clone()));
    assert_eq!(pipe.peer_addr(), Addr::Unknown);
    pipe.close_with(CloseOptions::default().reason(4500, "creds done"))
        .unwrap();
    kid.expect_line("closed 4500 creds done");
    kid.finish();
}
