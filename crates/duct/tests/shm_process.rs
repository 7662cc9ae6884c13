//! shm:// between processes, and what happens when one of them is killed with SIGKILL: the
//! survivor's blocked `recv` or `send` fails with `Disconnected` promptly (the control
//! socket's end, not heartbeats), no segment is left anywhere, this process's fd count comes
//! back to where it was, and the name can be listened on again at once.
//!
//! The children are this test binary run again with `DUCT_SHM_CHILD` set (see
//! [`child_entry`]); a guard kills and reaps them if the test fails.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use duct::{DialOptions, ErrorKind, Heartbeat, ListenOptions, Message, RecvOptions};

mod common;
use common::unique;

/// Rounds per case.
const ROUNDS: usize = 10;
/// How soon the survivor must notice: generous for a shared 2-core machine; the measured
/// figures are printed.
const NOTICE_BOUND: Duration = Duration::from_millis(500);

/// Heartbeats off: only the control socket can tell the survivor.
fn no_heartbeat() -> Heartbeat {
    Heartbeat::off()
}

/// A child process, killed and reaped on drop.
struct Kid(Child);

impl Kid {
    fn spawn(role: &str, name: &str) -> (Kid, BufReader<std::process::ChildStdout>) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env("DUCT_SHM_CHILD", role)
            .env("DUCT_SHM_NAME", name)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let out = BufReader::new(child.stdout.take().unwrap());
        (Kid(child), out)
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the child to print `line`.
fn expect_line(out: &mut BufReader<std::process::ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "the child ended before printing {want:?}");
        if line.trim().ends_with(want) {
            return;
        }
    }
}

/// The cases count this process's mappings and fds: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn shm_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:duct-shm"))
        .count()
}

/// The shm segments still mapped here once the dropped pipes are gone: a reactor thread may
/// be finishing a callback with the last reference for a moment after the last handle
/// dropped (a timer, a metrics publication), so this waits up to 500 ms for the count to
/// reach 0 and returns it.
fn shm_mappings_after_drop() -> usize {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let n = shm_mappings();
        if n == 0 || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn dev_shm() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn name() -> String {
    format!("duct-proc-{}-{}", std::process::id(), unique())
}

/// The children's side. Runs only when `DUCT_SHM_CHILD` is set.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("DUCT_SHM_CHILD") else {
        return;
    };
    let addr = format!("shm://{}", std::env::var("DUCT_SHM_NAME").unwrap());
    match role.as_str() {
        // Dials and sends as fast as it can until killed.
        "sender" => {
            let pipe = duct::dial(&addr, DialOptions::default().heartbeat(no_heartbeat())).unwrap();
            println!("ready");
            let mut i = 0u64;
            loop {
                pipe.send(Message::new(i.to_le_bytes().to_vec())).unwrap();
                i += 1;
            }
        }
        // Dials and never reads: the parent's sends fill the ring and block.
        "sleeper" => {
            let _pipe =
                duct::dial(&addr, DialOptions::default().heartbeat(no_heartbeat())).unwrap();
            println!("ready");
            loop {
                thread::sleep(Duration::from_secs(1));
            }
        }
        // Dials and receives until killed.
        "receiver" => {
            let pipe = duct::dial(&addr, DialOptions::default().heartbeat(no_heartbeat())).unwrap();
            println!("ready");
            loop {
                let _ = pipe.recv();
            }
        }
        // Listens, accepts one pipe, idles.
        "listener" => {
            let listener =
                duct::listen(&addr, ListenOptions::default().heartbeat(no_heartbeat())).unwrap();
            println!("ready");
            let _pipe = listener.accept().unwrap();
            println!("accepted");
            loop {
                thread::sleep(Duration::from_secs(1));
            }
        }
        // Listens and echoes every pipe it accepts.
        "echo_listener" => {
            let listener = duct::listen(&addr, ListenOptions::default()).unwrap();
            println!("ready");
            loop {
                let pipe = listener.accept().unwrap();
                thread::spawn(move || {
                    while let Ok(m) = pipe.recv() {
                        if pipe.send(m).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

/// Measures how long after the kill `op` returned its error, which must be Disconnected.
fn noticed(kill_at: Instant, r: duct::Result<()>, what: &str) -> Duration {
    let took = kill_at.elapsed();
    let e = r.expect_err("the peer was killed");
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{what}: {e}");
    assert!(took < NOTICE_BOUND, "{what}: noticed after {took:?}");
    took
}

fn report(case: &str, times: &[Duration]) {
    let max = times.iter().max().unwrap();
    let mut sorted = times.to_vec();
    sorted.sort();
    println!(
        "{case}: {} rounds, noticed after median {:?}, max {max:?}",
        times.len(),
        sorted[sorted.len() / 2]
    );
}

/// How the parent takes messages in [`kill_a_sending_dialer`]: the next one, or `None` when
/// a poll found none; an error ends the round.
type Take = fn(&duct::Pipe) -> duct::Result<Option<duct::Message>>;

/// Rounds of: a child dialer sending as fast as it can, the parent taking its messages with
/// `take` (checked in order) for a random moment, then the child killed mid-stream while the
/// parent goes on taking them: the end must be `Disconnected`, soon, and nothing may be left
/// (no segment mapped, `/dev/shm` unchanged, no fd kept, the name free at once).
fn kill_a_sending_dialer(take: Take, case: &str) {
    let _serial = serial();
    let fds = fd_count();
    let shm = dev_shm();
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let n = name();
        let addr = format!("shm://{n}");
        let listener =
            duct::listen(&addr, ListenOptions::default().heartbeat(no_heartbeat())).unwrap();
        let (mut kid, mut out) = Kid::spawn("sender", &n);
        let pipe = listener.accept_timeout(common::T).unwrap();
        expect_line(&mut out, "ready");
        let mut got = 0u64;
        let mut check = |m: duct::Message| {
            assert_eq!(
                m.payload(),
                &got.to_le_bytes()[..],
                "round {round}: in order"
            );
            got += 1;
        };
        // Take messages for a random moment, then kill mid-stream.
        let until = Instant::now() + Duration::from_millis(fastrand::u64(1..40));
        while Instant::now() < until {
            if let Some(m) = take(&pipe).unwrap() {
                check(m);
            }
        }
        let killer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            let at = Instant::now();
            kid.kill();
            at
        });
        // Take what was sent, then go on until the end (a failure here, not a hang).
        let deadline = Instant::now() + 10 * NOTICE_BOUND;
        let r = loop {
            match take(&pipe) {
                Ok(Some(m)) => check(m),
                Ok(None) => thread::yield_now(),
                Err(e) => break Err::<(), _>(e),
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the end never came ({case})"
            );
        };
        let kill_at = killer.join().unwrap();
        times.push(noticed(kill_at, r, case));
        drop(pipe);
        drop(listener);
        // The name is free again at once.
        drop(duct::listen(&addr, ListenOptions::default()).unwrap());
    }
    report(&format!("sending dialer killed, {case}"), &times);
    assert_eq!(shm_mappings_after_drop(), 0, "no segment mapped any more");
    assert_eq!(dev_shm(), shm, "/dev/shm unchanged");
    // (The reactor thread's own fds came with the first pipe and stay.)
    assert!(
        fd_count() <= fds + 4,
        "fds: {} before, {} after",
        fds,
        fd_count()
    );
}

#[test]
fn killing_a_sending_dialer_ends_the_blocked_recv_and_leaves_nothing() {
    kill_a_sending_dialer(|p| p.recv().map(Some), "recv");
}

/// A receiver that polls (`try_recv`, which looks at the ring and asks the sender for no
/// wake-up signal) still hears at once of a sender killed mid-stream: the control socket's
/// end reaches the reactor, and the next poll reads the socket.
#[test]
fn killing_a_sending_dialer_ends_a_poll_and_leaves_nothing() {
    kill_a_sending_dialer(|p| p.try_recv(), "try_recv");
}

/// Rounds of: a child dialer in `role`, a thread here sending `len`-byte messages until send
/// fails, the child killed after `pause` (ms): the failure must be Disconnected, soon.
fn kill_while_sending(role: &str, len: usize, pause: std::ops::Range<u64>, case: &str) {
    let _serial = serial();
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let n = name();
        let addr = format!("shm://{n}");
        let listener =
            duct::listen(&addr, ListenOptions::default().heartbeat(no_heartbeat())).unwrap();
        let (mut kid, mut out) = Kid::spawn(role, &n);
        let pipe = listener.accept_timeout(common::T).unwrap();
        expect_line(&mut out, "ready");
        let sender = {
            let pipe = pipe.clone();
            thread::spawn(move || loop {
                if let Err(e) = pipe.send(Message::new(vec![1u8; len])) {
                    return (Instant::now(), e);
                }
            })
        };
        thread::sleep(Duration::from_millis(fastrand::u64(pause.clone())));
        let kill_at = Instant::now();
        kid.kill();
        let (at, e) = sender.join().unwrap();
        let took = at.saturating_duration_since(kill_at);
        assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
        assert!(took < NOTICE_BOUND, "noticed after {took:?}");
        times.push(took);
    }
    report(case, &times);
    assert_eq!(shm_mappings_after_drop(), 0);
}

/// The child never reads: the ring, the pool and the send queue fill until send blocks.
#[test]
fn killing_a_dialer_that_does_not_read_ends_the_blocked_send() {
    kill_while_sending("sleeper", 1000, 50..100, "non-reading dialer killed, send");
}

#[test]
fn a_receiver_killed_mid_stream_ends_the_sender() {
    kill_while_sending("receiver", 200, 10..50, "receiving dialer killed, send");
}

#[test]
fn killing_an_idle_listener_ends_the_blocked_recv_and_frees_the_name() {
    let _serial = serial();
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let n = name();
        let addr = format!("shm://{n}");
        let (mut kid, mut out) = Kid::spawn("listener", &n);
        expect_line(&mut out, "ready");
        let pipe = duct::dial(&addr, DialOptions::default().heartbeat(no_heartbeat())).unwrap();
        expect_line(&mut out, "accepted");
        let killer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(fastrand::u64(5..30)));
            let at = Instant::now();
            kid.kill();
            at
        });
        let r = pipe
            .recv_with(&RecvOptions::default().timeout(Duration::from_secs(10)))
            .map(|_| ());
        let kill_at = killer.join().unwrap();
        times.push(noticed(kill_at, r, "recv"));
        // The dead listener's name is free at once.
        drop(duct::listen(&addr, ListenOptions::default()).unwrap());
    }
    report("idle listener killed, recv", &times);
    assert_eq!(shm_mappings_after_drop(), 0);
}

#[test]
fn a_reconnecting_dialer_comes_back_to_a_restarted_listener() {
    let _serial = serial();
    let n = name();
    let addr = format!("shm://{n}");
    let (mut kid, mut out) = Kid::spawn("echo_listener", &n);
    expect_line(&mut out, "ready");
    let pipe = duct::dial(
        &addr,
        DialOptions::default().reconnect(duct::Reconnect::exponential(
            Duration::from_millis(5),
            Duration::from_millis(50),
        )),
    )
    .unwrap();
    let echo = |i: u32| {
        pipe.send(Message::new(i.to_le_bytes().to_vec())).unwrap();
        let m = pipe
            .recv_with(&RecvOptions::default().timeout(common::T))
            .unwrap();
        assert_eq!(m.payload(), &i.to_le_bytes()[..]);
    };
    for i in 0..100 {
        echo(i);
    }
    // The transport's own counters (copies into the ring, wake-up signals) stay in the
    // pipe's totals when its connection is replaced: they never go back.
    let counters = || {
        let s = pipe.stats();
        (s.payload_frames_copied, s.wake_signals)
    };
    let mut last = counters();
    assert!(
        last.0 >= 100,
        "{last:?}: the 100 echoes' frames were copied"
    );
    for round in 0..3u32 {
        kid.kill();
        let (k, mut o) = Kid::spawn("echo_listener", &n);
        kid = k;
        expect_line(&mut o, "ready");
        // The dialer reconnects by itself (a new session: realtime messages sent while it was
        // away may be lost, so wait for the connection before the next echo).
        let deadline = Instant::now() + common::T;
        while pipe.stats().reconnects <= u64::from(round) {
            assert!(
                Instant::now() < deadline,
                "no reconnect after restart {round}"
            );
            thread::sleep(Duration::from_millis(5));
        }
        while pipe.state() != duct::PipeState::Connected {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
        for i in 0..100 {
            echo(1000 * (round + 1) + i);
        }
        let now = counters();
        assert!(
            now.0 >= last.0 + 100 && now.1 >= last.1,
            "round {round}: {last:?} -> {now:?}"
        );
        last = now;
    }
    println!("reconnects: {}", pipe.stats().reconnects);
}
