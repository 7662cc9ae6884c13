//! Per-channel quality of service over real sockets (uds and tcp on loopback): the
//! backpressure policies at the send high-water mark, memory staying bounded behind a slow
//! receiver, time to live at either end, strict priority, and rate limits (per channel and
//! per pipe). Every message that does not arrive must be counted: on a link without faults,
//! for each channel, what the receiver got + what the sender dropped + what either end let
//! expire = what the sender accepted.
//!
//! In every test the dialer sends and the accepted end receives. A receiver "that does not
//! read" is made by a small receive high-water mark on the receiving end: its reactor reads
//! ahead until the channel's receive queue is at the mark and then stops, so the socket
//! buffers fill and the sender's queue with them.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{expect_kind, pattern, Pair, T};
use duct::{
    dial, listen, Backpressure, ChannelOptions, ChannelStats, DialOptions, ErrorKind, Heartbeat,
    ListenOptions, Message, Pipe, PipeState, RateLimit, RecvOptions, SendOptions,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// A fresh abstract Unix socket address for the test `name` (nothing on disk to clean up).
fn uds(name: &str) -> String {
    format!("uds://@duct-qos-{name}-{}", std::process::id())
}

/// A tcp listen address on loopback (the port is chosen by the OS).
const TCP: &str = "tcp://127.0.0.1:0";

/// The listen address of the tests where any local transport would do: [`uds`], or [`TCP`]
/// where there are no Unix sockets.
fn local(name: &str) -> String {
    if cfg!(unix) {
        uds(name)
    } else {
        TCP.to_owned()
    }
}

/// Listens on `addr` with `lopts` and dials it with `dopts`: the dialer is the sender, the
/// accepted end the receiver.
fn pair_at(addr: &str, lopts: ListenOptions, dopts: DialOptions) -> Pair {
    let listener = listen(addr, lopts).unwrap_or_else(|e| panic!("listen {addr}: {e}"));
    let bound = listener.local_addr().to_string();
    let (dialed, accepted) = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let dialed = dial(&bound, dopts.timeout(T));
        (dialed, acceptor.join().expect("accept thread"))
    });
    Pair {
        dialer: dialed.unwrap_or_else(|e| panic!("dial {bound}: {e}")),
        accepted: accepted.unwrap_or_else(|e| panic!("accept on {bound}: {e}")),
        listener,
    }
}

/// The tests that move many megabytes, or measure the process's memory, take this lock so
/// that they do not run at the same time (and do not spoil each other's figures).
fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message that says which one it is: `seq` in its first 4 bytes, then `len - 4` bytes of
/// filler.
fn numbered(seq: u32, len: usize) -> Vec<u8> {
    let mut v = vec![0x5A; len.max(4)];
    v[..4].copy_from_slice(&seq.to_be_bytes());
    v
}

/// The number [`numbered`] put in `m`.
fn seq(m: &Message) -> u32 {
    u32::from_be_bytes(m.payload()[..4].try_into().expect("a numbered message"))
}

/// The counters of `channel` on `p` (all zero if it saw no traffic).
fn ch(p: &Pipe, channel: u16) -> ChannelStats {
    p.stats().channel(channel).unwrap_or_default()
}

/// `(accepted by the sender, accounted for)` on `channel`: accounted = received by the
/// application + dropped by the sender + expired at either end.
fn balance(tx: &Pipe, rx: &Pipe, channel: u16) -> (u64, u64) {
    let (s, r) = (ch(tx, channel), ch(rx, channel));
    (
        s.msgs_sent,
        r.msgs_received + s.dropped + s.expired + r.expired,
    )
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after [`T`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "no {what} within {T:?}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Receives on `p.accepted` until every message `p.dialer` accepted on `channels` is
/// accounted for (see [`balance`]), and returns what arrived, in order. Panics if more is
/// accounted for than was sent, if anything else arrives, or after [`T`].
fn drain(p: &Pair, channels: &[u16]) -> Vec<Message> {
    let (tx, rx) = (&p.dialer, &p.accepted);
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    let short = RecvOptions::default().timeout(Duration::from_millis(20));
    loop {
        match rx.recv_with(&short) {
            Ok(m) => {
                assert!(
                    channels.contains(&m.channel()),
                    "a message on channel {}",
                    m.channel()
                );
                got.push(m);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(e) => panic!("drain: {e} ({:?})", e.kind()),
        }
        let mut done = true;
        for &c in channels {
            let (sent, accounted) = balance(tx, rx, c);
            assert!(
                accounted <= sent,
                "channel {c}: {accounted} messages accounted for, only {sent} sent \
                 (sender {:?}, receiver {:?})",
                ch(tx, c),
                ch(rx, c)
            );
            done &= accounted == sent;
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain: not everything accounted for within {T:?}: {}",
            channels
                .iter()
                .map(|&c| format!(
                    "channel {c}: sender {:?}, receiver {:?}",
                    ch(tx, c),
                    ch(rx, c)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    // Everything is accounted for: nothing more may come.
    let extra = rx.recv_with(&RecvOptions::default().timeout(Duration::from_millis(50)));
    assert!(
        matches!(&extra, Err(e) if e.kind() == ErrorKind::TimedOut),
        "a message arrived after every message sent was accounted for: {extra:?}"
    );
    for &c in channels {
        let n = got.iter().filter(|m| m.channel() == c).count() as u64;
        assert_eq!(ch(rx, c).msgs_received, n, "channel {c}: msgs_received");
    }
    got
}

/// The numbers of the messages in `got` on `channel`, in arrival order.
fn seqs(got: &[Message], channel: u16) -> Vec<u32> {
    got.iter()
        .filter(|m| m.channel() == channel)
        .map(seq)
        .collect()
}

/// The process's resident set size, in bytes (`VmRSS` in `/proc/self/status`).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected VmRSS line: {line}"));
    kib * KIB
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// Instantiates a test case `fn(&str)` (taking a listen address) once per transport:
/// `uds::case` on an abstract Unix socket (Unix only), `tcp::case` on tcp loopback.
macro_rules! on_uds_and_tcp {
    ($($case:ident),* $(,)?) => {
        #[cfg(unix)]
        mod uds {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::uds(stringify!($case)));
                }
            )*
        }
        mod tcp {
            $(
                #[test]
                fn $case() {
                    super::$case(super::TCP);
                }
            )*
        }
    };
}

on_uds_and_tcp!(
    drop_new_delivers_a_contiguous_prefix,
    drop_old_delivers_the_newest_in_order,
    fail_fast_refuses_with_would_block,
    block_honours_the_send_timeout,
    batches_into_a_stalled_channel,
    priority_lets_realtime_pass_queued_bulk,
);

// ---------------------------------------------------------------------------------------------
// A receiver that does not read
// ---------------------------------------------------------------------------------------------

/// The channel under test in the policy tests: low priority on both ends.
const CH: u16 = 1;
/// A higher-priority Block channel that fills the socket first (see [`stalled`]).
const FILLER: u16 = 9;
const LOW: u8 = 10;
const HIGH: u8 = 200;
/// Filler messages: 64 KiB each, and the filler queue holds 32 of them (2 MiB).
const FILLER_LEN: usize = 64 * KIB;
const FILLER_HWM: usize = 32;

/// A pipe on `addr` whose receiver has stopped reading, with channel [`CH`] configured on the
/// sender as `ch_opts` (at low priority): nothing of `CH` can leave the sender until the
/// receiver reads again. Returns the pair and how many filler messages went before.
///
/// How: the receiver's reactor stops reading once channel [`FILLER`] holds one message for
/// the application; the sender sends 64 KiB filler messages (Block, high priority) until a
/// send times out: then the socket buffers are full and so is the filler's send queue. Should
/// the transport take anything more (the receiver's reactor reading its one chunk late), the
/// queued filler goes first (strict priority): channel `CH` stays where it is. Its messages
/// sent now are only queued, and the policy tests can predict exactly which.
fn stalled(addr: &str, ch_opts: ChannelOptions) -> (Pair, u64) {
    let lopts = ListenOptions::default()
        .channel(
            FILLER,
            ChannelOptions::default()
                .priority(HIGH)
                .rcv_hwm_msgs(1)
                .rcv_hwm_bytes(FILLER_LEN),
        )
        .channel(CH, ChannelOptions::default().priority(LOW));
    let dopts = DialOptions::default()
        .channel(
            FILLER,
            ChannelOptions::default()
                .priority(HIGH)
                .snd_hwm_msgs(FILLER_HWM),
        )
        .channel(CH, ch_opts.priority(LOW));
    let p = pair_at(addr, lopts, dopts);
    let filler = Bytes::from(vec![0xF1; FILLER_LEN]);
    let wait = SendOptions::default().timeout(Duration::from_millis(200));
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let m = Message::new(filler.clone()).with_channel(FILLER);
        match p.dialer.send_with(m, &wait) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == ErrorKind::TimedOut => break,
            Err(e) => panic!("filler send: {e}"),
        }
        assert!(
            start.elapsed() < T,
            "{addr}: the socket did not fill within {T:?} ({n} filler messages sent)"
        );
    }
    (p, n)
}

/// Sends messages `0..n` (100 bytes each) on [`CH`] with `opts`, returning each result.
fn burst(p: &Pair, n: u32, opts: &SendOptions) -> Vec<duct::Result<()>> {
    (0..n)
        .map(|i| {
            p.dialer
                .send_with(Message::new(numbered(i, 100)).with_channel(CH), opts)
        })
        .collect()
}

/// Sends messages `0..n` of `len` bytes on [`CH`] with default options.
#[cfg_attr(not(unix), allow(dead_code))] // (its one user is uds-only)
fn burst_of(p: &Pair, n: u32, len: usize) -> Vec<duct::Result<()>> {
    (0..n)
        .map(|i| {
            p.dialer
                .send(Message::new(numbered(i, len)).with_channel(CH))
        })
        .collect()
}

/// After a policy test: the receiver drains; every filler message arrived; channel `CH`
/// balances. Returns the numbers of the `CH` messages that arrived.
fn drain_stalled(p: &Pair, filler_sent: u64) -> Vec<u32> {
    let got = drain(p, &[FILLER, CH]);
    let filler_got = got.iter().filter(|m| m.channel() == FILLER).count() as u64;
    assert_eq!(filler_got, filler_sent, "filler messages lost");
    seqs(&got, CH)
}

const HWM: usize = 8;
const BURST: u32 = 100;

/// DropNew: with the queue at its mark, every later message is dropped (send says `Ok`): what
/// arrives is exactly the first `HWM` messages, in order, and the rest is counted as dropped.
fn drop_new_delivers_a_contiguous_prefix(addr: &str) {
    let opts = ChannelOptions::default()
        .snd_hwm_msgs(HWM)
        .backpressure(Backpressure::DropNew);
    let (p, filler) = stalled(addr, opts);
    for (i, r) in burst(&p, BURST, &SendOptions::default()).iter().enumerate() {
        assert!(r.is_ok(), "DropNew send {i}: {r:?}");
    }
    let s = ch(&p.dialer, CH);
    assert_eq!(s.msgs_sent, BURST as u64, "every DropNew send is accepted");
    assert_eq!(s.dropped, (BURST as usize - HWM) as u64, "{s:?}");
    let got = drain_stalled(&p, filler);
    println!("{addr}: DropNew: {filler} filler messages, then received {got:?}");
    assert_eq!(got, (0..HWM as u32).collect::<Vec<_>>(), "not the prefix");
    let s = ch(&p.dialer, CH);
    assert_eq!((s.rate_limited, s.expired), (0, 0));
    assert_eq!(got.len() as u64 + s.dropped, s.msgs_sent);
}

/// DropOld: each new message pushes out the oldest queued one: what arrives is the newest
/// `HWM` messages, in order, the very last one last; the rest is counted as dropped.
fn drop_old_delivers_the_newest_in_order(addr: &str) {
    let opts = ChannelOptions::default()
        .snd_hwm_msgs(HWM)
        .backpressure(Backpressure::DropOld);
    let (p, filler) = stalled(addr, opts);
    for (i, r) in burst(&p, BURST, &SendOptions::default()).iter().enumerate() {
        assert!(r.is_ok(), "DropOld send {i}: {r:?}");
    }
    let got = drain_stalled(&p, filler);
    println!("{addr}: DropOld: {filler} filler messages, then received {got:?}");
    assert_eq!(got.last(), Some(&(BURST - 1)), "the newest message is last");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert_eq!(
        got,
        (BURST - HWM as u32..BURST).collect::<Vec<_>>(),
        "not the newest {HWM}"
    );
    let s = ch(&p.dialer, CH);
    assert_eq!(s.msgs_sent, BURST as u64, "every DropOld send is accepted");
    assert_eq!((s.rate_limited, s.expired), (0, 0));
    assert_eq!(got.len() as u64 + s.dropped, s.msgs_sent, "{s:?}");
}

/// FailFast: with the queue at its mark, `send` fails at once with `WouldBlock` (retryable);
/// the refused messages are not counted as sent, and the accepted ones all arrive in order.
fn fail_fast_refuses_with_would_block(addr: &str) {
    let opts = ChannelOptions::default()
        .snd_hwm_msgs(HWM)
        .backpressure(Backpressure::FailFast);
    let (p, filler) = stalled(addr, opts);
    // A long timeout: FailFast does not wait for it.
    let start = Instant::now();
    let results = burst(&p, 20, &SendOptions::default().timeout(T));
    let took = start.elapsed();
    for (i, r) in results.into_iter().enumerate() {
        if i < HWM {
            assert!(r.is_ok(), "FailFast send {i} into a queue with room: {r:?}");
        } else {
            let e = expect_kind(r, ErrorKind::WouldBlock);
            assert!(e.is_retryable(), "{e}");
        }
    }
    assert!(
        took < Duration::from_secs(2),
        "FailFast sends took {took:?}"
    );
    let s = ch(&p.dialer, CH);
    assert_eq!(
        s.msgs_sent, HWM as u64,
        "refused messages are not sent: {s:?}"
    );
    assert_eq!(s.dropped, 0, "refused messages are not dropped: {s:?}");
    let got = drain_stalled(&p, filler);
    println!("{addr}: FailFast: {filler} filler messages, then received {got:?}");
    assert_eq!(got, (0..HWM as u32).collect::<Vec<_>>());
}

/// Batches into a channel that cannot send (`send_slices`, whose messages after the first
/// join the channel's queue by a loop of their own): with a zero timeout a batch is taken
/// exactly up to the channel's mark, in messages and in bytes, and the call says how many;
/// once the queue is full a batch is refused whole (`WouldBlock`). On a DropNew channel with
/// a rate limit every message of a batch meets the limit at the door. What was accepted
/// arrives, in order.
fn batches_into_a_stalled_channel(addr: &str) {
    let zero = SendOptions::default().channel(CH).timeout(Duration::ZERO);
    let payloads: Vec<Vec<u8>> = (0..BURST).map(|i| numbered(i, 100)).collect();
    let slices = |from: usize| payloads[from..].iter().map(Vec::as_slice);
    let other = |suffix: &str| match addr.strip_prefix("uds://") {
        Some(name) => format!("uds://{name}-{suffix}"),
        None => addr.to_owned(),
    };
    // The message mark (8), then the byte mark (1,000 bytes: ten of them).
    for (at, opts, fits) in [
        (
            addr.to_owned(),
            ChannelOptions::default().snd_hwm_msgs(HWM),
            HWM,
        ),
        (
            other("bytes"),
            ChannelOptions::default()
                .snd_hwm_msgs(1000)
                .snd_hwm_bytes(1000),
            10,
        ),
    ] {
        let (p, filler) = stalled(&at, opts);
        let n = p.dialer.send_slices(slices(0), &zero).unwrap();
        assert_eq!(n, fits, "{at}: a batch into an empty queue");
        let e = expect_kind(
            p.dialer.send_slices(slices(n), &zero),
            ErrorKind::WouldBlock,
        );
        assert!(e.is_retryable(), "{e}");
        let s = ch(&p.dialer, CH);
        assert_eq!((s.msgs_sent, s.dropped), (fits as u64, 0), "{s:?}");
        let got = drain_stalled(&p, filler);
        assert_eq!(got, (0..fits as u32).collect::<Vec<_>>(), "{at}");
    }
    // DropNew with a rate limit of 10/s, burst 5, and room for the whole batch.
    let opts = ChannelOptions::default()
        .snd_hwm_msgs(1000)
        .backpressure(Backpressure::DropNew)
        .rate_limit(RateLimit::msgs_per_sec(10.0).burst(5));
    let (p, filler) = stalled(&other("rate"), opts);
    let start = Instant::now();
    let n = p.dialer.send_slices(slices(0), &zero).unwrap();
    let most = 5 + (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert_eq!(
        n, BURST as usize,
        "DropNew accepts every message of a batch"
    );
    let s = ch(&p.dialer, CH);
    let passed = BURST as usize - s.rate_limited as usize;
    assert!(
        (5..=most).contains(&passed),
        "{passed} of a batch passed a limit of burst 5 ({s:?})"
    );
    let got = drain_stalled(&p, filler);
    assert_eq!(got, (0..passed as u32).collect::<Vec<_>>());
}

/// Block: with the queue at its mark, `send` waits for its timeout, then fails with
/// `TimedOut` (not much earlier); a zero timeout fails at once with `WouldBlock`; without
/// `SendOptions::timeout` the pipe's `send_timeout` applies. Refused messages are not sent;
/// the accepted ones arrive, in order.
fn block_honours_the_send_timeout(addr: &str) {
    let (p, filler) = stalled(addr, ChannelOptions::default().snd_hwm_msgs(HWM));
    let timeout = Duration::from_millis(300);
    let opts = SendOptions::default().timeout(timeout);
    let start = Instant::now();
    for (i, r) in burst(&p, HWM as u32, &opts).into_iter().enumerate() {
        assert!(r.is_ok(), "Block send {i} into a queue with room: {r:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "sends into a queue with room waited {:?}",
        start.elapsed()
    );

    let late = |n: u32| Message::new(numbered(n, 100)).with_channel(CH);
    let start = Instant::now();
    let e = expect_kind(p.dialer.send_with(late(1000), &opts), ErrorKind::TimedOut);
    let waited = start.elapsed();
    println!("{addr}: Block: timeout {timeout:?}, TimedOut after {waited:?}");
    assert!(e.is_retryable(), "{e}");
    assert!(
        waited >= timeout,
        "TimedOut after {waited:?}, before the timeout of {timeout:?}"
    );
    assert!(
        waited < timeout + Duration::from_secs(2),
        "TimedOut only after {waited:?} (timeout {timeout:?})"
    );

    let start = Instant::now();
    let zero = SendOptions::default().timeout(Duration::ZERO);
    expect_kind(p.dialer.send_with(late(1001), &zero), ErrorKind::WouldBlock);
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "a zero timeout waited {waited:?}"
    );

    let s = ch(&p.dialer, CH);
    assert_eq!(
        s.msgs_sent, HWM as u64,
        "refused messages are not sent: {s:?}"
    );
    assert_eq!(s.dropped, 0, "{s:?}");
    let got = drain_stalled(&p, filler);
    assert_eq!(got, (0..HWM as u32).collect::<Vec<_>>());
    drop(p);

    // The pipe's send timeout when the send gives none (a second pipe: the receiver stops
    // reading after one message of CH).
    let default_timeout = Duration::from_millis(250);
    let lopts = ListenOptions::default().channel(CH, ChannelOptions::default().rcv_hwm_msgs(1));
    let dopts = DialOptions::default()
        .send_timeout(default_timeout)
        .channel(CH, ChannelOptions::default().snd_hwm_msgs(2));
    let addr = match addr.strip_prefix("uds://") {
        Some(name) => format!("uds://{name}-default-timeout"),
        None => addr.to_owned(),
    };
    let p = pair_at(&addr, lopts, dopts);
    let big = Bytes::from(vec![0xB1; 256 * KIB]);
    let deadline = Instant::now() + T;
    let waited = loop {
        let start = Instant::now();
        match p.dialer.send(Message::new(big.clone()).with_channel(CH)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => break start.elapsed(),
            Err(e) => panic!("send: {e}"),
        }
        assert!(Instant::now() < deadline, "{addr}: the queue never filled");
    };
    println!("{addr}: Block: send_timeout {default_timeout:?}, TimedOut after {waited:?}");
    assert!(waited >= default_timeout, "TimedOut after {waited:?}");
    assert!(
        waited < default_timeout + Duration::from_secs(2),
        "{waited:?}"
    );
    let sent = ch(&p.dialer, CH).msgs_sent;
    let got = drain(&p, &[CH]);
    assert_eq!(got.len() as u64, sent, "Block loses nothing");
    assert!(got.iter().all(|m| m.payload() == &big[..]));
}

// ---------------------------------------------------------------------------------------------
// A slow receiver: memory stays bounded
// ---------------------------------------------------------------------------------------------

/// 200 MiB in 64 KiB messages through 1 MiB send and receive queues (Block) to a receiver
/// that keeps pausing: every send succeeds, every message arrives intact and in order, and
/// the process (both ends live in it) grows by far less than what went through.
#[test]
fn slow_receiver_block_keeps_memory_bounded() {
    let _heavy = heavy();
    const LEN: usize = 64 * KIB;
    const TOTAL: usize = 200 * MIB;
    const N: u32 = (TOTAL / LEN) as u32;
    const BOUND: usize = 64 * MIB;
    let addr = local("slow-receiver");
    let lopts = ListenOptions::default().channel(0, ChannelOptions::default().rcv_hwm_bytes(MIB));
    let dopts = DialOptions::default()
        .send_timeout(T)
        .channel(0, ChannelOptions::default().snd_hwm_bytes(MIB));
    let p = pair_at(&addr, lopts, dopts);
    let template = pattern(LEN, 7);
    let stamp = |v: &mut [u8], i: u32| {
        v[..4].copy_from_slice(&i.to_be_bytes());
        v[LEN - 4..].copy_from_slice(&i.to_be_bytes());
    };

    let baseline = rss();
    let peak = AtomicUsize::new(baseline);
    let received = AtomicU32::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (slept, received_at, ahead) = thread::scope(|s| {
        // Stops the sampler however this closure ends (a failed send panics).
        let _stop = StopOnDrop(&stop);
        let sampler = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
        });
        let receiver = s.spawn(|| {
            let mut expected = template.clone();
            let mut slept = Duration::ZERO;
            for i in 0..N {
                let m = p
                    .accepted
                    .recv_with(&RecvOptions::default().timeout(T))
                    .unwrap_or_else(|e| panic!("recv of message {i}: {e}"));
                stamp(&mut expected, i);
                if m.payload() != &expected[..] {
                    let got = m.payload().get(..4).map(|b| b.to_vec());
                    panic!(
                        "message {i}: {} bytes starting {got:?}: lost, reordered or damaged",
                        m.len()
                    );
                }
                received.store(i + 1, Ordering::Relaxed);
                if i % 8 == 7 {
                    // The slow part: a pause after every 512 KiB.
                    let t = Instant::now();
                    thread::sleep(Duration::from_millis(1));
                    slept += t.elapsed();
                    peak.fetch_max(rss(), Ordering::Relaxed);
                }
            }
            (slept, Instant::now())
        });
        for i in 0..N {
            let mut v = template.clone();
            stamp(&mut v, i);
            p.dialer
                .send(v)
                .unwrap_or_else(|e| panic!("send of message {i}: {e}"));
            if i % 64 == 0 {
                peak.fetch_max(rss(), Ordering::Relaxed);
            }
        }
        // How far ahead of the receiver the sender got: what the queues and socket buffers
        // hold, not the whole transfer.
        let ahead = N - received.load(Ordering::Relaxed);
        let (slept, at) = receiver
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler");
        (slept, at, ahead)
    });
    let took = received_at - start;
    let peak = peak.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(baseline);
    println!(
        "slow receiver: {} MiB in {N} messages in {took:?} ({:.0} MiB/s; the receiver slept \
         {slept:?}); when the last send returned, {ahead} messages ({:.1} MiB) were not yet \
         received; VmRSS baseline {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB (bound {} MiB)",
        TOTAL / MIB,
        mib(TOTAL) / took.as_secs_f64(),
        mib(ahead as usize * LEN),
        mib(baseline),
        mib(peak),
        mib(growth),
        BOUND / MIB
    );
    let (tx, rx) = (ch(&p.dialer, 0), ch(&p.accepted, 0));
    assert_eq!((tx.msgs_sent, rx.msgs_received), (N as u64, N as u64));
    assert_eq!((tx.dropped, tx.expired, rx.expired), (0, 0, 0));
    assert_eq!(rx.bytes_received, TOTAL as u64);
    assert!(
        (ahead as usize) * LEN < 32 * MIB,
        "the sender got {:.1} MiB ahead of the receiver through 1 MiB queues",
        mib(ahead as usize * LEN)
    );
    assert!(
        growth < BOUND,
        "memory grew by {:.1} MiB while 200 MiB went through 1 MiB queues",
        mib(growth)
    );
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Time to live
// ---------------------------------------------------------------------------------------------

/// Messages held back at the sender (the receiver does not read, the socket is full) expire
/// there once their TTL runs out, not before; none is delivered later, and each is counted
/// in the sender's `expired`.
#[test]
fn ttl_expires_at_the_sender_when_held_back() {
    let ttl = Duration::from_millis(100);
    let (p, filler) = stalled(&local("ttl-sender"), ChannelOptions::default().ttl(ttl));
    let sent_at = Instant::now();
    for (i, r) in burst(&p, 20, &SendOptions::default()).iter().enumerate() {
        assert!(r.is_ok(), "send {i}: {r:?}");
    }
    wait_until("expiry of the 20 held-back messages", || {
        ch(&p.dialer, CH).expired == 20
    });
    let after = sent_at.elapsed();
    println!("ttl at the sender: 20 messages with a TTL of {ttl:?} expired after {after:?}");
    assert!(after >= ttl, "expired after {after:?}, TTL {ttl:?}");
    let got = drain_stalled(&p, filler);
    assert!(got.is_empty(), "expired messages were delivered: {got:?}");
    let (tx, rx) = (ch(&p.dialer, CH), ch(&p.accepted, CH));
    assert_eq!((tx.msgs_sent, tx.expired, tx.dropped), (20, 20, 0));
    assert_eq!(rx.expired, 0);
}

/// On a paced channel (1 message per 200 ms) messages wait in the queue for tokens; those
/// whose TTL (50 ms) runs out first expire at the sender, not before. Only the first (the
/// burst, with a long TTL of its own) goes, and everything is counted.
#[test]
fn ttl_expires_at_the_sender_on_a_paced_channel() {
    let ttl = Duration::from_millis(50);
    let opts = ChannelOptions::default()
        .ttl(ttl)
        .rate_limit(RateLimit::msgs_per_sec(5.0).burst(1));
    let p = pair_at(
        &local("ttl-paced"),
        ListenOptions::default(),
        DialOptions::default().channel(CH, opts),
    );
    // The first message takes the one token at once; it lives long enough to be read.
    let first = SendOptions::default().ttl(T);
    p.dialer
        .send_with(Message::new(numbered(0, 100)).with_channel(CH), &first)
        .unwrap();
    let sent_at = Instant::now();
    for i in 1..10 {
        p.dialer
            .send(Message::new(numbered(i, 100)).with_channel(CH))
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
    }
    wait_until("expiry of the 9 paced messages", || {
        ch(&p.dialer, CH).expired == 9
    });
    let after = sent_at.elapsed();
    let got = seqs(&drain(&p, &[CH]), CH);
    let (tx, rx) = (ch(&p.dialer, CH), ch(&p.accepted, CH));
    println!(
        "ttl on a paced channel: 9 expired after {after:?}; received {got:?}; sender {tx:?}; \
         receiver {rx:?}"
    );
    assert!(after >= ttl, "expired after {after:?}, TTL {ttl:?}");
    assert_eq!(got, [0], "only the first message goes");
    assert_eq!((tx.msgs_sent, tx.expired, tx.dropped), (10, 9, 0));
    assert_eq!(rx.expired, 0);
}

/// Messages delivered into the receiver's queue expire there once the TTL (which travels in
/// the frame) runs out while the application is not reading: the application never sees
/// them, and each is counted in the receiver's `expired`.
#[test]
fn ttl_expires_at_the_receiver_when_not_read() {
    let ttl = Duration::from_millis(100);
    let p = pair_at(
        &local("ttl-receiver"),
        ListenOptions::default(),
        DialOptions::default().channel(CH, ChannelOptions::default().ttl(ttl)),
    );
    let sent_at = Instant::now();
    for (i, r) in burst(&p, 20, &SendOptions::default()).iter().enumerate() {
        assert!(r.is_ok(), "send {i}: {r:?}");
    }
    wait_until("expiry of 20 unread messages at the receiver", || {
        ch(&p.accepted, CH).expired == 20
    });
    let after = sent_at.elapsed();
    println!("ttl at the receiver: 20 messages with a TTL of {ttl:?} expired after {after:?}");
    assert!(after >= ttl, "expired after {after:?}, TTL {ttl:?}");
    // The application reads only now, after the TTL: nothing.
    let r = p
        .accepted
        .recv_with(&RecvOptions::default().timeout(Duration::ZERO));
    expect_kind(r, ErrorKind::WouldBlock);
    assert!(drain(&p, &[CH]).is_empty());
    let (tx, rx) = (ch(&p.dialer, CH), ch(&p.accepted, CH));
    assert_eq!((tx.msgs_sent, tx.expired, tx.dropped), (20, 0, 0));
    assert_eq!((rx.msgs_received, rx.expired), (0, 20));
}

/// `SendOptions::ttl` overrides the channel's: a long per-message TTL survives on a channel
/// with a short one, a short per-message TTL expires on a channel with a long one.
#[test]
fn ttl_per_message_overrides_the_channel() {
    const SHORT_CH: u16 = 3;
    const LONG_CH: u16 = 4;
    let short = Duration::from_millis(100);
    let long = Duration::from_secs(60);
    let dopts = DialOptions::default()
        .channel(SHORT_CH, ChannelOptions::default().ttl(short))
        .channel(LONG_CH, ChannelOptions::default().ttl(long));
    let p = pair_at(&local("ttl-override"), ListenOptions::default(), dopts);
    let on = |c: u16| SendOptions::default().channel(c);
    let sent_at = Instant::now();
    p.dialer
        .send_with("short channel, long message", &on(SHORT_CH).ttl(long))
        .unwrap();
    p.dialer
        .send_with("short channel, its own TTL", &on(SHORT_CH))
        .unwrap();
    p.dialer
        .send_with("long channel, short message", &on(LONG_CH).ttl(short))
        .unwrap();
    p.dialer
        .send_with("long channel, its own TTL", &on(LONG_CH))
        .unwrap();
    wait_until("expiry of the two short-lived messages", || {
        p.accepted.stats().expired == 2
    });
    assert!(sent_at.elapsed() >= short, "{:?}", sent_at.elapsed());
    let got: Vec<(u16, String)> = drain(&p, &[SHORT_CH, LONG_CH])
        .iter()
        .map(|m| {
            (
                m.channel(),
                String::from_utf8_lossy(m.payload()).into_owned(),
            )
        })
        .collect();
    println!("ttl override: survived {got:?}");
    assert_eq!(
        got,
        [
            (SHORT_CH, "short channel, long message".to_owned()),
            (LONG_CH, "long channel, its own TTL".to_owned()),
        ]
    );
    for c in [SHORT_CH, LONG_CH] {
        let (tx, rx) = (ch(&p.dialer, c), ch(&p.accepted, c));
        assert_eq!((tx.msgs_sent, tx.expired), (2, 0), "channel {c}");
        assert_eq!((rx.msgs_received, rx.expired), (1, 1), "channel {c}");
    }
}

// ---------------------------------------------------------------------------------------------
// Priority
// ---------------------------------------------------------------------------------------------

/// 64 MiB of bulk (1 MiB messages) queued on a low-priority channel while the receiver does
/// not read, then 10 realtime messages on a high-priority channel (priorities set on both
/// ends): once the receiver reads, all 10 arrive before the first half of the bulk, in
/// order, and every bulk message arrives intact and in order. (The bulk channel's large
/// weight makes sure that it is the priority that does it, not the round robin.)
fn priority_lets_realtime_pass_queued_bulk(addr: &str) {
    let _heavy = heavy();
    const RT: u16 = 1;
    const BULK: u16 = 2;
    const BULK_LEN: usize = MIB;
    const BULK_N: usize = 64;
    const RT_N: u32 = 10;
    let lopts = ListenOptions::default()
        .channel(RT, ChannelOptions::default().priority(HIGH))
        .channel(
            BULK,
            ChannelOptions::default()
                .priority(LOW)
                .rcv_hwm_bytes(256 * KIB),
        );
    let dopts = DialOptions::default()
        .send_timeout(T)
        .channel(RT, ChannelOptions::default().priority(HIGH))
        .channel(
            BULK,
            ChannelOptions::default()
                .priority(LOW)
                // A weight that would let the bulk keep the link for all of its 64 MiB if
                // the realtime channel merely shared it by weight: only priority lets the
                // realtime messages pass.
                .weight(4096)
                .snd_hwm_bytes(128 * MIB),
        );
    let p = pair_at(addr, lopts, dopts);
    // Bulk message i is the window of BULK_LEN bytes from word i of a run of big-endian
    // word numbers: all share one buffer (the test does not hold 64 MiB), and each starts
    // with its own number.
    let words = (BULK_LEN / 4 + BULK_N) as u32;
    let run: Vec<u8> = (0..words).flat_map(u32::to_be_bytes).collect();
    let run = Bytes::from(run);
    let start = Instant::now();
    for i in 0..BULK_N {
        let m = Message::new(run.slice(i * 4..i * 4 + BULK_LEN)).with_channel(BULK);
        p.dialer
            .send(m)
            .unwrap_or_else(|e| panic!("bulk send {i}: {e}"));
    }
    let queued = start.elapsed();
    for j in 0..RT_N {
        p.dialer
            .send(Message::new(numbered(j, 16)).with_channel(RT))
            .unwrap_or_else(|e| panic!("realtime send {j}: {e}"));
    }
    // Now the receiver reads.
    let mut bulk_bytes = 0usize;
    let mut bulk_n = 0u32;
    let mut rt_at = Vec::new();
    while (bulk_n as usize) < BULK_N || (rt_at.len() as u32) < RT_N {
        let m = p
            .accepted
            .recv_with(&RecvOptions::default().timeout(T))
            .unwrap_or_else(|e| {
                panic!("recv after {bulk_n} bulk and {} realtime: {e}", rt_at.len())
            });
        match m.channel() {
            RT => {
                assert_eq!(seq(&m) as usize, rt_at.len(), "realtime out of order");
                rt_at.push(bulk_bytes);
            }
            BULK => {
                assert_eq!(m.len(), BULK_LEN);
                let last = u32::from_be_bytes(m.payload()[BULK_LEN - 4..].try_into().unwrap());
                assert_eq!(
                    (seq(&m), last),
                    (bulk_n, bulk_n + (BULK_LEN / 4) as u32 - 1),
                    "bulk message {bulk_n} lost, reordered or damaged"
                );
                bulk_bytes += m.len();
                bulk_n += 1;
            }
            c => panic!("a message on channel {c}"),
        }
    }
    let took = start.elapsed();
    println!(
        "{addr}: priority: 64 MiB of bulk queued in {queued:?}, all through in {took:?}; the \
         10 realtime messages arrived after {:?} MiB of bulk",
        rt_at.iter().map(|&b| mib(b)).collect::<Vec<_>>()
    );
    let last = *rt_at.last().expect("realtime messages");
    assert!(
        last < BULK_N * BULK_LEN / 2,
        "the last realtime message arrived only after {:.1} MiB of bulk",
        mib(last)
    );
    for c in [RT, BULK] {
        let (tx, rx) = (ch(&p.dialer, c), ch(&p.accepted, c));
        assert_eq!(tx.msgs_sent, rx.msgs_received, "channel {c}");
        assert_eq!(
            (tx.dropped, tx.expired, rx.expired),
            (0, 0, 0),
            "channel {c}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

/// Sends `n` numbered messages, alternating over `channels`, while another thread receives
/// them; returns the time from the first send to the last receive. Checks order per channel.
fn paced_run(p: &Pair, n: u32, channels: &[u16]) -> Duration {
    paced_run_with(p, n, channels, |pipe, m| pipe.send(m))
}

/// [`paced_run`], each message sent by `send`.
fn paced_run_with(
    p: &Pair,
    n: u32,
    channels: &[u16],
    send: impl Fn(&Pipe, Message) -> duct::Result<()>,
) -> Duration {
    thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut next = vec![0u32; channels.len()];
            for _ in 0..n {
                let m = p
                    .accepted
                    .recv_with(&RecvOptions::default().timeout(T))
                    .unwrap_or_else(|e| panic!("recv: {e}"));
                let k = channels.iter().position(|&c| c == m.channel()).unwrap();
                assert_eq!(seq(&m), next[k], "channel {} out of order", m.channel());
                next[k] += 1;
            }
            Instant::now()
        });
        let start = Instant::now();
        let mut seq = vec![0u32; channels.len()];
        for i in 0..n as usize {
            let k = i % channels.len();
            let m = Message::new(numbered(seq[k], 32)).with_channel(channels[k]);
            send(&p.dialer, m).unwrap_or_else(|e| panic!("send {i}: {e}"));
            seq[k] += 1;
        }
        let sent = start.elapsed();
        let last = receiver
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let took = last - start;
        println!("  {n} messages: sends returned after {sent:?}, the last arrived after {took:?}");
        took
    })
}

/// A Block channel limited to 1000 messages/s (burst 50) paces 300 messages over at least
/// 250 ms, and not much longer; nothing is dropped.
#[test]
fn rate_limit_paces_a_block_channel() {
    let opts = ChannelOptions::default().rate_limit(RateLimit::msgs_per_sec(1000.0).burst(50));
    let p = pair_at(
        &local("rate-channel"),
        ListenOptions::default(),
        DialOptions::default().channel(CH, opts),
    );
    println!("channel limit 1000/s, burst 50:");
    let took = paced_run(&p, 300, &[CH]);
    assert!(
        took >= Duration::from_millis(250),
        "300 messages in {took:?}"
    );
    assert!(took < Duration::from_secs(1), "300 messages in {took:?}");
    let (tx, rx) = (ch(&p.dialer, CH), ch(&p.accepted, CH));
    assert_eq!((tx.msgs_sent, rx.msgs_received), (300, 300));
    assert_eq!((tx.dropped, tx.rate_limited), (0, 0));
}

/// A paced Block channel whose queue holds only 4 messages, sent to as fast as `send` and
/// `send_async` go: each send past the fourth finds the queue full while nothing waits to be
/// written (the messages wait for the rate, not for the socket) and waits for room; all 120
/// arrive, in order, paced.
#[test]
fn rate_limit_paces_a_block_channel_through_a_small_queue() {
    let opts = ChannelOptions::default()
        .rate_limit(RateLimit::msgs_per_sec(1000.0).burst(10))
        .snd_hwm_msgs(4);
    for asynchronous in [false, true] {
        let p = pair_at(
            &local(&format!("rate-small-{asynchronous}")),
            ListenOptions::default(),
            DialOptions::default().channel(CH, opts.clone()),
        );
        println!("channel limit 1000/s, burst 10, 4 queued at most, async {asynchronous}:");
        let took = paced_run_with(&p, 120, &[CH], |pipe, m| {
            if asynchronous {
                futures::executor::block_on(pipe.send_async(m))
            } else {
                pipe.send(m)
            }
        });
        assert!(
            took >= Duration::from_millis(100),
            "120 messages in {took:?}"
        );
        let (tx, rx) = (ch(&p.dialer, CH), ch(&p.accepted, CH));
        assert_eq!((tx.msgs_sent, rx.msgs_received), (120, 120));
        assert_eq!((tx.dropped, tx.rate_limited), (0, 0));
    }
}

/// The pipe's own limit (`DialOptions::rate_limit`, 1000 messages/s, burst 50) paces all its
/// channels together: 150 + 150 messages on two channels take at least 250 ms.
#[test]
fn rate_limit_of_the_pipe_paces_its_channels() {
    let dopts = DialOptions::default().rate_limit(RateLimit::msgs_per_sec(1000.0).burst(50));
    let p = pair_at(&local("rate-pipe"), ListenOptions::default(), dopts);
    println!("pipe limit 1000/s, burst 50, two channels:");
    let took = paced_run(&p, 300, &[3, 4]);
    assert!(
        took >= Duration::from_millis(250),
        "300 messages in {took:?}"
    );
    assert!(took < Duration::from_secs(1), "300 messages in {took:?}");
    let (tx, rx) = (p.dialer.stats(), p.accepted.stats());
    assert_eq!((tx.msgs_sent, rx.msgs_received), (300, 300));
    assert_eq!((tx.dropped, tx.rate_limited), (0, 0));
}

/// Over its rate, a DropNew or DropOld channel drops the excess at `send` (which returns
/// `Ok`), counted in `dropped` and `rate_limited`; a FailFast channel refuses it with
/// `WouldBlock`, not counted as sent. What was let through arrives in order, the burst first.
#[test]
fn rate_limit_turns_excess_away_under_drop_and_fail_fast() {
    const N: u32 = 50;
    const BURST: u64 = 5;
    let limit = RateLimit::msgs_per_sec(10.0).burst(BURST);
    let policies = [
        (5u16, Backpressure::DropNew),
        (6, Backpressure::DropOld),
        (7, Backpressure::FailFast),
    ];
    let mut dopts = DialOptions::default();
    for (c, policy) in policies {
        let opts = ChannelOptions::default()
            .backpressure(policy)
            .rate_limit(limit);
        dopts = dopts.channel(c, opts);
    }
    let p = pair_at(&local("rate-drop"), ListenOptions::default(), dopts);
    let start = Instant::now();
    let mut refused = [0u64; 3];
    for i in 0..N {
        for (k, (c, _)) in policies.iter().enumerate() {
            match p
                .dialer
                .send(Message::new(numbered(i, 32)).with_channel(*c))
            {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => refused[k] += 1,
                Err(e) => panic!("send {i} on channel {c}: {e}"),
            }
        }
    }
    let took = start.elapsed();
    // At most the burst plus what refilled meanwhile may pass (and at least the burst).
    let most = BURST + (took.as_secs_f64() * 10.0).ceil() as u64;
    let channels: Vec<u16> = policies.iter().map(|(c, _)| *c).collect();
    let got = drain(&p, &channels);
    println!(
        "rate 10/s, burst {BURST}: {} sends per channel in {took:?}",
        N
    );
    for (k, (c, policy)) in policies.into_iter().enumerate() {
        let delivered = seqs(&got, c);
        let s = ch(&p.dialer, c);
        println!(
            "  {policy:?}: delivered {delivered:?}; refused {}; sender {s:?}",
            refused[k]
        );
        let passed = delivered.len() as u64;
        assert!(
            (BURST..=most).contains(&passed),
            "{policy:?} let {passed} through"
        );
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "{policy:?}: {delivered:?}"
        );
        assert_eq!(
            &delivered[..5],
            &[0, 1, 2, 3, 4],
            "{policy:?}: the burst goes first"
        );
        if policy == Backpressure::FailFast {
            assert_eq!(s.msgs_sent, passed, "refused messages are not sent");
            assert_eq!(refused[k], N as u64 - passed);
            assert_eq!(
                (s.dropped, s.rate_limited),
                (0, 0),
                "refusals are not drops"
            );
        } else {
            assert_eq!(refused[k], 0, "{policy:?} never refuses");
            assert_eq!(s.msgs_sent, N as u64, "every {policy:?} send is accepted");
            assert_eq!(s.rate_limited, N as u64 - passed, "{policy:?}");
            assert_eq!(
                s.dropped, s.rate_limited,
                "{policy:?}: rate-limit drops are drops"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A paused receiver: the connection stays up, and TTL counts the wait in the transport
// ---------------------------------------------------------------------------------------------

/// A receiver that stopped reading at its receive high-water mark keeps the connection up
/// (`ChannelOptions::rcv_hwm_msgs`: "nothing is dropped and the connection stays up"), also
/// for longer than the heartbeat's silence timeout: its peer is not silent, its frames wait
/// in the socket for the receiver to read them. Short heartbeats keep the test short.
#[test]
fn paused_receiver_keeps_the_connection_up() {
    let hb = Heartbeat::new(Duration::from_millis(100), 3); // silent after 300 ms
    paused_receiver_stays_connected(hb, "paused-heartbeat");
}

/// The same with the receiver's own heartbeats off: it still tells the sender it lives (at
/// the sender's interval), though it reads none of the sender's PINGs while paused.
#[test]
fn paused_receiver_without_heartbeats_keeps_the_connection_up() {
    paused_receiver_stays_connected(Heartbeat::off(), "paused-no-heartbeat");
}

fn paused_receiver_stays_connected(receiver_hb: Heartbeat, name: &str) {
    let hb = Heartbeat::new(Duration::from_millis(100), 3); // silent after 300 ms
    let lopts = ListenOptions::default()
        .heartbeat(receiver_hb)
        .channel(CH, ChannelOptions::default().rcv_hwm_msgs(1));
    let dopts = DialOptions::default()
        .heartbeat(hb)
        .channel(CH, ChannelOptions::default().snd_hwm_msgs(16));
    let p = pair_at(&local(name), lopts, dopts);
    let big = Bytes::from(vec![0xC4; 64 * KIB]);
    let wait = SendOptions::default().timeout(Duration::from_millis(200));
    let start = Instant::now();
    loop {
        match p
            .dialer
            .send_with(Message::new(big.clone()).with_channel(CH), &wait)
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => break,
            Err(e) => panic!("send: {e}"),
        }
        assert!(start.elapsed() < T, "the socket never filled");
    }
    // The receiver stays paused for three silence timeouts: both ends stay connected.
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_secs(1) {
        let states = (p.dialer.state(), p.accepted.state());
        assert_eq!(
            states,
            (PipeState::Connected, PipeState::Connected),
            "(dialer, accepted) after {:?} with the receiver paused",
            stalled.elapsed()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let got = drain(&p, &[CH]);
    assert_eq!(
        got.len() as u64,
        ch(&p.dialer, CH).msgs_sent,
        "all delivered"
    );
    assert_eq!(p.accepted.state(), PipeState::Connected);
}

/// A message that reached the socket buffers, but that the receiver has not read (it stopped
/// reading at its receive high-water mark), ages like any other: once it is older than its
/// TTL it is never delivered.
///
/// On a Unix socket, whose bytes wait in one buffer the receiver sees (`FIONREAD`). Over tcp
/// they also wait in the sender's socket buffer, which the receiver cannot count: this test
/// fails there (on Linux too), so it runs on uds only.
#[test]
#[cfg(unix)]
fn ttl_counts_time_spent_in_socket_buffers() {
    let ttl = Duration::from_millis(100);
    let lopts = ListenOptions::default().channel(CH, ChannelOptions::default().rcv_hwm_msgs(1));
    let dopts = DialOptions::default().channel(CH, ChannelOptions::default().ttl(ttl));
    let p = pair_at(&uds("ttl-socket"), lopts, dopts);
    // The receiver reads ahead one chunk (at most 64 KiB) and stops; what follows stays in
    // the socket buffers, and what does not fit there in the send queue.
    let sent_at = Instant::now();
    for (i, r) in burst_of(&p, 100, 4 * KIB).iter().enumerate() {
        assert!(r.is_ok(), "send {i}: {r:?}");
    }
    // Let the TTL run out (the time passing is the condition), with a margin.
    wait_until("the TTL to run out", || sent_at.elapsed() >= ttl * 2);
    let age = sent_at.elapsed();
    let got = drain(&p, &[CH]);
    let (tx, rx) = (ch(&p.dialer, CH), ch(&p.accepted, CH));
    println!(
        "ttl {ttl:?}: {} messages delivered at least {age:?} after they were sent: {:?}; \
         sender {tx:?}; receiver {rx:?}",
        got.len(),
        seqs(&got, CH)
    );
    assert!(
        got.is_empty(),
        "{} messages with a TTL of {ttl:?} were delivered {age:?} or more after they were sent",
        got.len()
    );
}

/// Two senders blocked on a full pipe (Block, the peer not reading) sleep until their
/// timeout: neither wakes the other in a loop (each one's failed flush used to wake the other,
/// which flushed in vain and woke it back).
#[cfg(target_os = "linux")]
#[test]
fn blocked_senders_sleep_instead_of_waking_each_other() {
    let _heavy = heavy();
    let (p, _) = stalled(
        &local("blocked"),
        ChannelOptions::default().snd_hwm_msgs(HWM),
    );
    // Fill CH's queue too, so every further send waits.
    let opts = SendOptions::default().timeout(Duration::from_millis(300));
    for r in burst(&p, HWM as u32, &opts) {
        r.unwrap();
    }
    let senders: Vec<_> = (0..2)
        .map(|k| {
            let d = p.dialer.clone();
            thread::spawn(move || {
                let before = common::thread_cpu();
                let start = Instant::now();
                let wait = SendOptions::default().timeout(Duration::from_millis(600));
                let m = Message::new(numbered(5000 + k, 100)).with_channel(CH);
                let e = d.send_with(m, &wait).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
                (common::thread_cpu() - before, start.elapsed())
            })
        })
        .collect();
    for s in senders {
        let (used, waited) = s.join().unwrap();
        assert!(
            used < Duration::from_millis(200),
            "a send blocked for {waited:?} used {used:?} of CPU"
        );
    }
}

/// A sender blocked on a full queue is let in as soon as messages ahead of it expire (their
/// TTL runs out in the queue), not at its own timeout.
#[test]
fn room_made_by_expiry_wakes_a_blocked_sender() {
    let _heavy = heavy();
    let ttl = Duration::from_millis(100);
    let (p, _) = stalled(
        &local("expiry-wakes"),
        ChannelOptions::default().snd_hwm_msgs(HWM).ttl(ttl),
    );
    let opts = SendOptions::default().timeout(Duration::from_millis(300));
    for r in burst(&p, HWM as u32, &opts) {
        r.unwrap();
    }
    let start = Instant::now();
    let wait = SendOptions::default().timeout(Duration::from_secs(5));
    p.dialer
        .send_with(Message::new(numbered(9000, 100)).with_channel(CH), &wait)
        .unwrap();
    let waited = start.elapsed();
    println!("admitted after {waited:?} (TTL {ttl:?})");
    assert!(
        waited < Duration::from_secs(1),
        "admitted {waited:?} after the queue was full; its messages expired after {ttl:?}"
    );
    assert!(ch(&p.dialer, CH).expired > 0);
}
