//! The async API (`send_async`, `recv_async`, `accept_async`, `dial_async` and the `_with`
//! forms) under three executors: tokio's multi-thread runtime (the test body spawned onto
//! its workers), tokio's current-thread runtime, and `futures::executor::block_on`, which has
//! no timers and no I/O driver of its own, so everything there is woken by duct's reactor.
//!
//! - round trips over tcp, uds, shm and tls, with dial and accept async too;
//! - cancel safety: futures dropped while pending (a `select!` whose other branch won, a
//!   poll with a no-op waker and a drop, a timeout) lose no message and reorder none; a
//!   dropped pending send was not sent;
//! - the waker list is bounded: 100 000 pending futures created and dropped leave no slot;
//! - wake-ups with the right error: the peer's close (`Closed`, with its reason), a peer that
//!   vanishes (`Disconnected`), a closed listener; timeouts from `RecvOptions` and
//!   `SendOptions`; `Block` backpressure released when the receiver drains.
//!
//! Every wait is bounded ([`within`], or a duct timeout): a broken wake-up fails a test, it
//! does not hang the suite.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::{Fixture, Kind, RawPeer, T};
use duct::{
    dial, dial_async, listen, CloseOptions, DialOptions, ErrorKind, ListenOptions, Listener,
    Message, Pipe, RecvOptions,
};
#[cfg(unix)]
use duct::{ChannelOptions, SendOptions};

// ---------------------------------------------------------------------------------------------
// Executors and bounded waits
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exec {
    /// tokio, multi-thread: the body is spawned onto the workers.
    TokioMulti,
    /// tokio, current thread.
    TokioCurrent,
    /// `futures::executor::block_on`: no runtime at all.
    BlockOn,
}

const EVERY_EXEC: [Exec; 3] = [Exec::TokioMulti, Exec::TokioCurrent, Exec::BlockOn];

impl Exec {
    fn run<F>(self, body: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Exec::TokioMulti => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(rt.spawn(body)).expect("test body panicked")
            }
            Exec::TokioCurrent => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(body),
            Exec::BlockOn => futures::executor::block_on(body),
        }
    }

    /// Runs `a` and `b` concurrently: as two tasks under tokio, joined in one under
    /// `block_on`.
    async fn both<A, B>(self, a: A, b: B) -> (A::Output, B::Output)
    where
        A: Future + Send + 'static,
        B: Future + Send + 'static,
        A::Output: Send + 'static,
        B::Output: Send + 'static,
    {
        match self {
            Exec::BlockOn => futures::join!(a, b),
            _ => {
                let (ha, hb) = (tokio::spawn(a), tokio::spawn(b));
                (ha.await.expect("task a"), hb.await.expect("task b"))
            }
        }
    }
}

/// A timer that needs no runtime: a thread wakes the task at the deadline (and ends early
/// when the timer is dropped).
struct ThreadSleep {
    until: Instant,
    started: Option<mpsc::Sender<()>>,
}

fn thread_sleep(d: Duration) -> ThreadSleep {
    ThreadSleep {
        until: Instant::now() + d,
        started: None,
    }
}

impl Future for ThreadSleep {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        if self.started.is_none() {
            let (tx, rx) = mpsc::channel::<()>();
            let (until, waker) = (self.until, cx.waker().clone());
            thread::spawn(move || {
                let left = until.saturating_duration_since(Instant::now());
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                    waker.wake();
                }
            });
            self.started = Some(tx);
        }
        Poll::Pending
    }
}

/// `f`, or a panic naming `what` if it takes longer than [`T`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    let f = pin!(f);
    let timer = pin!(thread_sleep(T));
    match futures::future::select(f, timer).await {
        futures::future::Either::Left((out, _)) => out,
        futures::future::Either::Right(_) => panic!("{what}: not done within {T:?}"),
    }
}

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future + ?Sized>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// The transport of the tests where any local one would do: an abstract Unix socket, or tcp
/// loopback where there are no Unix sockets.
const LOCAL: Kind = if cfg!(unix) {
    Kind::UdsAbstract
} else {
    Kind::Tcp4
};

/// A fresh listen address of `kind`'s transport (tcp: port 0).
fn fresh_addr(kind: Kind) -> String {
    Fixture::new(kind).expect("fixture").addr()
}

/// `seq` in the first 4 bytes, then a pattern up to `len` bytes.
fn numbered(seq: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.max(4)).map(|i| (i % 251) as u8).collect();
    v[..4].copy_from_slice(&seq.to_be_bytes());
    v
}

fn seq(m: &Message) -> u32 {
    u32::from_be_bytes(m.payload()[..4].try_into().expect("a numbered message"))
}

/// A listener and a dialed pipe, made with the blocking calls.
fn blocking_pair(addr: &str, lopts: ListenOptions, dopts: DialOptions) -> (Listener, Pipe, Pipe) {
    let listener = listen(addr, lopts).unwrap_or_else(|e| panic!("listen {addr}: {e}"));
    let bound = listener.local_addr().to_string();
    let dialer = dial(&bound, dopts).unwrap_or_else(|e| panic!("dial {bound}: {e}"));
    let accepted = listener.accept_timeout(T).expect("accept");
    (listener, dialer, accepted)
}

/// Sizes that cross the 64 KiB frame limit (fragmented) and stay far below it.
const SIZES: [usize; 8] = [4, 17, 1000, 4096, 65_535, 65_536, 70_000, 300_000];

// ---------------------------------------------------------------------------------------------
// Round trips: dial_async, accept_async, send_async, recv_async
// ---------------------------------------------------------------------------------------------

/// The dialer (dial_async) sends `N` messages of every size on three channels while it
/// receives their echoes; the accepted end (accept_async) echoes each. Everything arrives
/// intact, on its channel, in order per channel.
async fn round_trip(exec: Exec, addr: String, lopts: ListenOptions, dopts: DialOptions) {
    const N: u32 = 120;
    let listener = Arc::new(listen(&addr, lopts).expect("listen"));
    let bound = listener.local_addr().to_string();
    let l = Arc::clone(&listener);
    let server = async move {
        let pipe = within("accept_async", l.accept_async())
            .await
            .expect("accept");
        for _ in 0..N {
            let m = within("server recv", pipe.recv_async())
                .await
                .expect("recv");
            within("server send", pipe.send_async(m))
                .await
                .expect("echo");
        }
        pipe
    };
    let client = async move {
        let pipe = within("dial_async", dial_async(&bound, dopts))
            .await
            .expect("dial");
        let pipe = Arc::new(pipe);
        let tx = Arc::clone(&pipe);
        let send = async move {
            for i in 0..N {
                let len = SIZES[i as usize % SIZES.len()];
                let m = Message::new(numbered(i, len)).with_channel((i % 3) as u16);
                within("client send", tx.send_async(m)).await.expect("send");
            }
        };
        let rx = Arc::clone(&pipe);
        let recv = async move {
            // Order holds per channel (channels are scheduled independently: a small
            // message may overtake a big one of another channel).
            let mut next = [0u32, 1, 2];
            for _ in 0..N {
                let m = within("client recv", rx.recv_async()).await.expect("recv");
                let i = seq(&m);
                let ch = m.channel() as usize;
                assert!(ch < 3, "echo {i} on channel {ch}");
                assert_eq!(i, next[ch], "echo out of order on channel {ch}");
                next[ch] += 3;
                let len = SIZES[i as usize % SIZES.len()];
                assert!(m.payload() == numbered(i, len), "echo {i} corrupted");
            }
            assert_eq!(next, [N, N + 1, N + 2], "every echo");
        };
        exec.both(send, recv).await;
        pipe
    };
    let (accepted, dialer) = exec.both(server, client).await;
    assert_eq!(dialer.stats().msgs_received, u64::from(N));
    assert_eq!(accepted.stats().msgs_received, u64::from(N));
    assert_eq!(
        dialer.async_waiter_slots() + accepted.async_waiter_slots(),
        0,
        "completed futures leave no waker slot"
    );
    assert_eq!(listener.async_waiter_slots(), 0);
}

macro_rules! round_trips {
    ($($name:ident: $kind:expr, $exec:expr;)*) => {
        mod round_trip {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let exec = $exec;
                    let Some(f) = Fixture::new($kind) else {
                        return; // (Fixture::new said why)
                    };
                    let lopts = f.listen_opts(ListenOptions::default());
                    let dopts = f.dial_opts(DialOptions::default());
                    exec.run(round_trip(exec, f.addr(), lopts, dopts));
                }
            )*
        }
    };
}

round_trips! {
    tcp_tokio_multi_thread: Kind::Tcp4, Exec::TokioMulti;
    tcp_tokio_current_thread: Kind::Tcp4, Exec::TokioCurrent;
    tcp_block_on: Kind::Tcp4, Exec::BlockOn;
    uds_tokio_multi_thread: Kind::UdsAbstract, Exec::TokioMulti;
    uds_tokio_current_thread: Kind::UdsAbstract, Exec::TokioCurrent;
    uds_block_on: Kind::UdsAbstract, Exec::BlockOn;
    shm_tokio_multi_thread: Kind::Shm, Exec::TokioMulti;
    shm_tokio_current_thread: Kind::Shm, Exec::TokioCurrent;
    shm_block_on: Kind::Shm, Exec::BlockOn;
    tls_tokio_multi_thread: Kind::Tls, Exec::TokioMulti;
    tls_block_on: Kind::Tls, Exec::BlockOn;
}

/// Async and blocking calls mix on one pipe: a blocking receiver thread and an async one
/// share the messages (each exactly once), and a blocking sender feeds them.
#[test]
fn async_and_blocking_receivers_share_a_pipe() {
    const N: u32 = 4000;
    let (_l, dialer, accepted) = blocking_pair(
        &fresh_addr(LOCAL),
        ListenOptions::default(),
        DialOptions::default(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let sender = thread::spawn(move || {
        for i in 0..N {
            dialer.send(numbered(i, 64)).expect("send");
        }
        dialer
    });
    let blocking = {
        let (p, done) = (accepted.clone(), Arc::clone(&done));
        thread::spawn(move || {
            let mut got = Vec::new();
            let short = RecvOptions::default().timeout(Duration::from_millis(20));
            while !done.load(Ordering::SeqCst) {
                match p.recv_with(&short) {
                    Ok(m) => got.push(seq(&m)),
                    Err(e) if e.kind() == ErrorKind::TimedOut => {}
                    Err(e) => panic!("blocking recv: {e}"),
                }
            }
            got
        })
    };
    let p = accepted.clone();
    let d = Arc::clone(&done);
    let from_async = Exec::TokioMulti.run(async move {
        let mut got = Vec::new();
        let opts = RecvOptions::default().timeout(Duration::from_millis(300));
        loop {
            match p.recv_with_async(&opts).await {
                Ok(m) => got.push(seq(&m)),
                // Quiet for 300 ms: the sender is done and the rest went to the thread.
                Err(e) if e.kind() == ErrorKind::TimedOut => break,
                Err(e) => panic!("async recv: {e}"),
            }
        }
        d.store(true, Ordering::SeqCst);
        got
    });
    let from_thread = blocking.join().expect("blocking receiver");
    let _dialer = sender.join().expect("sender");
    for got in [&from_async, &from_thread] {
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "each receiver sees order"
        );
    }
    let mut all: Vec<u32> = from_async.iter().chain(&from_thread).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "every message exactly once"
    );
    println!(
        "async receiver got {}, blocking receiver {}",
        from_async.len(),
        from_thread.len()
    );
}

/// Several async receivers (tasks) on clones of one pipe: every message is delivered to
/// exactly one of them, and none of them spins while the others wait.
#[test]
fn several_async_receivers_share_a_pipe() {
    const N: u32 = 3000;
    const TASKS: usize = 4;
    let (_l, dialer, accepted) = blocking_pair(
        &fresh_addr(Kind::Tcp4),
        ListenOptions::default(),
        DialOptions::default(),
    );
    let got = Exec::TokioMulti.run(async move {
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                let p = accepted.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        match within("recv", p.recv_async()).await {
                            Ok(m) if m.payload() == b"end" => return got,
                            Ok(m) => got.push(seq(&m)),
                            Err(e) => panic!("recv: {e}"),
                        }
                    }
                })
            })
            .collect();
        for i in 0..N {
            dialer.send_async(numbered(i, 32)).await.expect("send");
            if i % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for _ in 0..TASKS {
            dialer.send_async("end").await.expect("send end");
        }
        let mut got = Vec::new();
        for h in handles {
            let mine = h.await.expect("receiver task");
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "each task sees order");
            got.extend(mine);
        }
        got
    });
    let mut got = got;
    got.sort_unstable();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every message exactly once"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancel safety
// ---------------------------------------------------------------------------------------------

/// A blocking sender streams numbered messages (in bursts, so that some receives are
/// pending when a burst starts) while the receiver drops most of its `recv_async` futures
/// while they are pending: by a `select!` with a short sleep, by a poll with a no-op waker
/// and a drop, by a short `recv_with_async` timeout. Every message arrives once, in order.
fn dropped_recv_loses_nothing(kind: Kind, exec: Exec) {
    const N: u32 = 3000;
    let Some(f) = Fixture::new(kind) else {
        return; // (it said why)
    };
    let (_l, dialer, accepted) =
        blocking_pair(&f.addr(), ListenOptions::default(), DialOptions::default());
    let sender = thread::spawn(move || {
        for i in 0..N {
            dialer.send(numbered(i, 100)).expect("send");
            if i % 50 == 0 {
                thread::sleep(Duration::from_micros(300));
            }
        }
        dialer
    });
    let (dropped, got) = exec.run(async move {
        let mut got = Vec::with_capacity(N as usize);
        let mut dropped = 0u64;
        let start = Instant::now();
        let mut turn = 0u64;
        while got.len() < N as usize {
            assert!(
                start.elapsed() < T,
                "received {} of {N} within {T:?}",
                got.len()
            );
            turn += 1;
            match turn % 3 {
                0 if exec != Exec::BlockOn => {
                    tokio::select! {
                        r = accepted.recv_async() => got.push(seq(&r.expect("recv"))),
                        _ = tokio::time::sleep(Duration::from_micros(200)) => dropped += 1,
                    }
                }
                0 | 1 => {
                    let mut f = pin!(accepted.recv_async());
                    match poll_once(f.as_mut()) {
                        Poll::Ready(r) => got.push(seq(&r.expect("recv"))),
                        Poll::Pending => dropped += 1, // dropped here, pending
                    }
                }
                _ => {
                    let short = RecvOptions::default().timeout(Duration::from_micros(500));
                    match accepted.recv_with_async(&short).await {
                        Ok(m) => got.push(seq(&m)),
                        Err(e) if e.kind() == ErrorKind::TimedOut => dropped += 1,
                        Err(e) => panic!("recv: {e}"),
                    }
                }
            }
        }
        assert_eq!(
            accepted.async_waiter_slots(),
            0,
            "every dropped future freed its slot"
        );
        (dropped, got)
    });
    let _dialer = sender.join().expect("sender");
    println!("{kind:?}/{exec:?}: {dropped} receives given up while pending");
    assert!(
        dropped > 0,
        "no receive was ever pending: the test proved nothing"
    );
    let want: Vec<u32> = (0..N).collect();
    assert!(got == want, "messages lost, duplicated or reordered");
}

#[test]
#[cfg(unix)]
fn dropped_recv_loses_nothing_uds_tokio_current_thread() {
    dropped_recv_loses_nothing(Kind::UdsAbstract, Exec::TokioCurrent);
}

#[test]
fn dropped_recv_loses_nothing_tcp_tokio_multi_thread() {
    dropped_recv_loses_nothing(Kind::Tcp4, Exec::TokioMulti);
}

#[test]
fn dropped_recv_loses_nothing_shm_block_on() {
    dropped_recv_loses_nothing(Kind::Shm, Exec::BlockOn);
}

/// A pair whose dialer's channel 0 is stalled: the receiver's reactor stops reading after
/// one message (receive mark 1), so the socket buffers fill, then the dialer's send queue
/// (mark 4). Returns the pair and how many messages were accepted; the next `send_async`
/// is pending (returned, polled once).
///
/// On a Unix socket only: over tcp the stall is not solid. Once the sender's socket stops
/// taking bytes, room still appears now and then for a while, below the level that reports
/// the socket writable (seen on Linux and under Wine: 64 KiB messages accepted until full,
/// then 7 more a second and a half later with nobody reading): the next send that writes
/// for itself finds it, so a queue that looked full is not.
#[cfg(unix)]
fn stalled_sender(addr: &str) -> (Listener, Pipe, Pipe, u32) {
    let lopts = ListenOptions::default().channel(
        0,
        ChannelOptions::default()
            .rcv_hwm_msgs(1)
            .rcv_hwm_bytes(64 * 1024),
    );
    let dopts = DialOptions::default().channel(0, ChannelOptions::default().snd_hwm_msgs(4));
    let (l, dialer, accepted) = blocking_pair(addr, lopts, dopts);
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        let mut f = pin!(dialer.send_async(numbered(n, 64 * 1024)));
        let mut r = poll_once(f.as_mut());
        // Full, unless the receiver's reactor is still reading up to its mark (on a busy
        // machine it may not even have begun): look again until a while passes in which
        // the receiver read nothing. (A pending future dropped now was not sent.)
        let mut full = false;
        while r.is_pending() {
            let reads = accepted.stats().reads;
            thread::sleep(Duration::from_millis(50));
            r = poll_once(f.as_mut());
            if r.is_pending() && accepted.stats().reads == reads {
                full = true;
                break;
            }
            assert!(start.elapsed() < T, "the receiver kept reading");
        }
        if full {
            break;
        }
        if let Poll::Ready(r) = r {
            r.expect("send into a queue with room");
        }
        n += 1;
        assert!(
            start.elapsed() < T,
            "the send queue did not fill ({n} sent)"
        );
    }
    (l, dialer, accepted, n)
}

/// Receives `n` messages and checks they are `want`, in order.
#[cfg(unix)]
fn drain(p: &Pipe, want: impl IntoIterator<Item = u32>) {
    for w in want {
        let m = p
            .recv_with(&RecvOptions::default().timeout(T))
            .unwrap_or_else(|e| panic!("waiting for message {w}: {e}"));
        assert_eq!(seq(&m), w, "message out of order");
    }
}

/// Block backpressure: a `send_async` into a full queue is pending (the thread free) until
/// the receiver drains, then completes; everything arrives in order.
#[cfg(unix)]
fn send_async_waits_for_room(exec: Exec) {
    let (_l, dialer, accepted, n) = stalled_sender(&fresh_addr(Kind::UdsAbstract));
    let drainer = {
        let p = accepted.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            drain(&p, 0..=n);
        })
    };
    let sent_at = exec.run(async move {
        let start = Instant::now();
        within(
            "send_async under Block",
            dialer.send_async(numbered(n, 64 * 1024)),
        )
        .await
        .expect("send_async once the receiver drains");
        (start.elapsed(), dialer)
    });
    drainer.join().expect("drainer");
    println!(
        "{exec:?}: {n} messages accepted, then send_async waited {:?}",
        sent_at.0
    );
    assert!(
        sent_at.0 >= Duration::from_millis(50),
        "send_async completed before the receiver drained"
    );
    assert_eq!(sent_at.1.async_waiter_slots(), 0);
}

#[test]
#[cfg(unix)] // (a stalled sender: see `stalled_sender`)
fn send_async_waits_for_room_tokio_multi_thread() {
    send_async_waits_for_room(Exec::TokioMulti);
}

#[test]
#[cfg(unix)] // (a stalled sender: see `stalled_sender`)
fn send_async_waits_for_room_block_on() {
    send_async_waits_for_room(Exec::BlockOn);
}

/// A pending `send_async` that is dropped did not send its message: once the receiver
/// drains, the next message follows the last accepted one directly.
#[test]
#[cfg(unix)] // (a stalled sender: see `stalled_sender`)
fn dropped_send_was_not_sent() {
    let (_l, dialer, accepted, n) = stalled_sender(&fresh_addr(Kind::UdsAbstract));
    {
        let mut f = pin!(dialer.send_async(numbered(n, 64 * 1024)));
        assert!(poll_once(f.as_mut()).is_pending(), "the queue is full");
        assert_eq!(dialer.async_waiter_slots(), 1);
    } // dropped, pending
    assert_eq!(dialer.async_waiter_slots(), 0);
    drain(&accepted, 0..n);
    let next = n + 1;
    Exec::TokioCurrent.run(async move {
        within("send after drain", dialer.send_async(numbered(next, 100)))
            .await
            .expect("send");
        let m = within("recv", accepted.recv_async()).await.expect("recv");
        assert_eq!(seq(&m), next, "the dropped message {n} was sent after all");
    });
}

/// `SendOptions::timeout` is honoured by `send_with_async` (under `block_on`, only duct's
/// reactor can wake it): `TimedOut` after the timeout, the message not sent; a zero timeout
/// is `WouldBlock` at once.
#[test]
#[cfg(unix)] // (a stalled sender: see `stalled_sender`)
fn send_with_async_times_out() {
    let (_l, dialer, accepted, n) = stalled_sender(&fresh_addr(Kind::UdsAbstract));
    let timeout = Duration::from_millis(150);
    let (waited, dialer) = Exec::BlockOn.run(async move {
        let start = Instant::now();
        let opts = SendOptions::default().timeout(timeout);
        let e = within(
            "timed send",
            dialer.send_with_async(numbered(n, 100), &opts),
        )
        .await
        .expect_err("the queue stays full");
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        let waited = start.elapsed();
        let zero = SendOptions::default().timeout(Duration::ZERO);
        let e = dialer
            .send_with_async(numbered(n, 100), &zero)
            .await
            .expect_err("zero timeout");
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
        (waited, dialer)
    });
    println!("send_with_async: TimedOut after {waited:?} (timeout {timeout:?})");
    assert!(
        waited >= timeout,
        "TimedOut after {waited:?}, before {timeout:?}"
    );
    assert!(
        waited < timeout + Duration::from_secs(2),
        "TimedOut after {waited:?}"
    );
    assert_eq!(dialer.async_waiter_slots(), 0);
    drain(&accepted, 0..n);
    dialer.send(numbered(n + 7, 100)).expect("send");
    drain(&accepted, [n + 7]);
}

// ---------------------------------------------------------------------------------------------
// The waker list stays bounded
// ---------------------------------------------------------------------------------------------

/// 100 000 pending `recv_async` futures, each polled (so its waker is registered) and
/// dropped, leave no slot; a thousand pending at once hold a thousand, and none once dropped.
/// The pipe works as before afterwards.
#[test]
fn dropped_recv_futures_leave_no_waker_slots() {
    let (_l, dialer, accepted) = blocking_pair(
        &fresh_addr(LOCAL),
        ListenOptions::default(),
        DialOptions::default(),
    );
    for i in 0..100_000u32 {
        let mut f = pin!(accepted.recv_async());
        assert!(poll_once(f.as_mut()).is_pending(), "nothing was sent");
        if i % 10_000 == 0 {
            assert_eq!(accepted.async_waiter_slots(), 1);
        }
    }
    assert_eq!(accepted.async_waiter_slots(), 0);
    let timed = RecvOptions::default().timeout(Duration::from_secs(3600));
    let mut many: Vec<_> = (0..1000)
        .map(|i| {
            if i % 2 == 0 {
                Box::pin(accepted.recv_async()) as std::pin::Pin<Box<dyn Future<Output = _>>>
            } else {
                Box::pin(accepted.recv_with_async(&timed))
            }
        })
        .collect();
    for f in &mut many {
        assert!(poll_once(f.as_mut()).is_pending());
    }
    assert_eq!(accepted.async_waiter_slots(), 1000);
    drop(many);
    assert_eq!(accepted.async_waiter_slots(), 0);

    dialer.send("still works").expect("send");
    let m = Exec::BlockOn
        .run(async move { within("recv", accepted.recv_async()).await.expect("recv") });
    assert_eq!(m.payload(), b"still works");
}

/// The same for `send_async` (pending on a full queue) and `accept_async`.
#[test]
#[cfg(unix)] // (a stalled sender: see `stalled_sender`)
fn dropped_send_and_accept_futures_leave_no_waker_slots() {
    let (listener, dialer, _accepted, n) = stalled_sender(&fresh_addr(Kind::UdsAbstract));
    let msg = bytes::Bytes::from(numbered(n, 1000));
    for _ in 0..100_000u32 {
        let mut f = pin!(dialer.send_async(msg.clone()));
        assert!(poll_once(f.as_mut()).is_pending(), "the queue is full");
    }
    assert_eq!(dialer.async_waiter_slots(), 0);
    for _ in 0..100_000u32 {
        let mut f = pin!(listener.accept_async());
        assert!(poll_once(f.as_mut()).is_pending(), "nobody dials");
    }
    assert_eq!(listener.async_waiter_slots(), 0);
}

/// A future that counts its polls.
#[cfg(unix)]
struct Counted<F> {
    f: std::pin::Pin<Box<F>>,
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

#[cfg(unix)]
impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.f.as_mut().poll(cx)
    }
}

/// No busy polling: pending futures (four receivers on one pipe, a sender on a full queue,
/// an acceptor) are polled again only when something happens (here, at most the heartbeats
/// and their answers), not in a loop, and their threads are free meanwhile.
#[test]
#[cfg(unix)] // (a stalled sender: see `stalled_sender`)
fn pending_futures_are_not_polled_in_a_loop() {
    let (_l1, _dialer, accepted) = blocking_pair(
        &fresh_addr(Kind::Tcp4),
        ListenOptions::default(),
        DialOptions::default(),
    );
    let (listener, stalled, _receiver, n) = stalled_sender(&fresh_addr(Kind::UdsAbstract));
    let counts: Vec<Arc<std::sync::atomic::AtomicUsize>> = (0..6).map(|_| Arc::default()).collect();
    let watched = Duration::from_millis(600);
    Exec::BlockOn.run(async move {
        let c = |i: usize| Arc::clone(&counts[i]);
        let recv = |i: usize| Counted {
            f: Box::pin(async { accepted.recv_async().await.map(drop) }),
            polls: c(i),
        };
        let all = futures::future::join_all([recv(0), recv(1), recv(2), recv(3)]);
        let send = Counted {
            f: Box::pin(stalled.send_async(numbered(n, 100))),
            polls: c(4),
        };
        let accept = Counted {
            f: Box::pin(async { listener.accept_async().await.map(drop) }),
            polls: c(5),
        };
        let pending = futures::future::join3(all, send, accept);
        let timer = thread_sleep(watched);
        match futures::future::select(pin!(pending), pin!(timer)).await {
            futures::future::Either::Left(_) => panic!("nothing should have completed"),
            futures::future::Either::Right(_) => {}
        }
        let polls: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        println!("polls in {watched:?}: {polls:?}");
        for (i, p) in polls.iter().enumerate() {
            assert!(*p <= 20, "future {i} was polled {p} times in {watched:?}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Wake-ups with the right error
// ---------------------------------------------------------------------------------------------

/// `f`, or a panic naming `what` if it is not done within 3 s, even if it would be done when
/// polled then (unlike [`within`]): for a wake-up that must come, and normally comes at once.
async fn woken<F: Future>(what: &str, f: F) -> F::Output {
    const SOON: Duration = Duration::from_secs(3);
    let f = pin!(f);
    let timer = pin!(thread_sleep(SOON));
    match futures::future::select(timer, f).await {
        futures::future::Either::Left(_) => panic!("{what}: not woken within {SOON:?}"),
        futures::future::Either::Right((out, _)) => out,
    }
}

/// Runs of slices wake a `recv_async` that waits on the reactor, round after round: on shm
/// the sender frames a run straight into shared memory and wakes the receiving side once,
/// after the run. Heartbeats are off on both ends, so nothing else wakes it: a run that did
/// not would leave the receive pending.
fn slice_runs_wake_a_waiting_recv_async(kind: Kind) {
    let Some(f) = Fixture::new(kind) else {
        return; // (Fixture::new said why)
    };
    let quiet = duct::Heartbeat::off();
    let (_listener, dialer, accepted) = blocking_pair(
        &f.addr(),
        f.listen_opts(ListenOptions::default().heartbeat(quiet)),
        f.dial_opts(DialOptions::default().heartbeat(quiet)),
    );
    const ROUNDS: u32 = 50;
    const RUN: u32 = 7;
    let (go_tx, go_rx) = mpsc::channel::<u32>();
    let sender = thread::spawn(move || {
        // Each run goes once the receiver is (about to be) waiting for it.
        while let Ok(round) = go_rx.recv() {
            thread::sleep(Duration::from_millis(2));
            let run: Vec<Vec<u8>> = (0..RUN).map(|k| numbered(round * RUN + k, 40)).collect();
            let on = duct::SendOptions::default().timeout(T);
            let sent = dialer
                .send_slices(run.iter().map(Vec::as_slice), &on)
                .unwrap();
            assert_eq!(sent, RUN as usize);
        }
        dialer
    });
    let accepted = Arc::new(accepted);
    let rx = Arc::clone(&accepted);
    Exec::TokioMulti.run(async move {
        let mut next = 0;
        let mut batch = duct::MessageBatch::new();
        let zero = RecvOptions::default().timeout(Duration::ZERO);
        for round in 0..ROUNDS {
            go_tx.send(round).unwrap();
            let m = woken("recv_async of a run", rx.recv_async())
                .await
                .expect("recv");
            assert_eq!(seq(&m), next, "round {round}");
            next += 1;
            // The rest of the run, as it comes.
            while next < (round + 1) * RUN {
                match rx.recv_into(&mut batch, 64, &zero) {
                    Ok(_) => {
                        for m in batch.iter() {
                            let i = u32::from_be_bytes(m.payload()[..4].try_into().unwrap());
                            assert_eq!(i, next, "round {round}");
                            next += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let m = woken("recv_async within a run", rx.recv_async())
                            .await
                            .expect("recv");
                        assert_eq!(seq(&m), next, "round {round}");
                        next += 1;
                    }
                    Err(e) => panic!("recv_into: {e}"),
                }
            }
        }
        drop(go_tx);
    });
    sender.join().expect("sender");
    assert_eq!(accepted.stats().msgs_received, u64::from(ROUNDS * RUN));
}

#[test]
fn slice_runs_wake_a_waiting_recv_async_shm() {
    slice_runs_wake_a_waiting_recv_async(Kind::Shm);
}

#[test]
fn slice_runs_wake_a_waiting_recv_async_local() {
    slice_runs_wake_a_waiting_recv_async(LOCAL);
}

/// A pending `recv_async` wakes with `Closed` (and the peer's code and reason) when the peer
/// closes, after the messages sent before the close.
fn recv_async_wakes_on_peer_close(exec: Exec) {
    let (_l, dialer, accepted) = blocking_pair(
        &fresh_addr(Kind::Tcp4),
        ListenOptions::default(),
        DialOptions::default(),
    );
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        dialer.send("last words").expect("send");
        dialer
            .close_with(CloseOptions::default().reason(42, "shutting down"))
            .expect("close");
    });
    exec.run(async move {
        let m = within("recv", accepted.recv_async()).await.expect("recv");
        assert_eq!(m.payload(), b"last words");
        let e = within("recv after close", accepted.recv_async())
            .await
            .expect_err("closed");
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert_eq!(e.close_reason(), Some((42, "shutting down")));
        // And again at once, without waiting.
        let e = accepted.recv_async().await.expect_err("still closed");
        assert_eq!(e.kind(), ErrorKind::Closed);
    });
    closer.join().expect("closer");
}

#[test]
fn recv_async_wakes_on_peer_close_tokio_multi_thread() {
    recv_async_wakes_on_peer_close(Exec::TokioMulti);
}

#[test]
fn recv_async_wakes_on_peer_close_tokio_current_thread() {
    recv_async_wakes_on_peer_close(Exec::TokioCurrent);
}

#[test]
fn recv_async_wakes_on_peer_close_block_on() {
    recv_async_wakes_on_peer_close(Exec::BlockOn);
}

/// A pending `recv_async` wakes with `Closed` when its own pipe is closed by another thread.
#[test]
fn recv_async_wakes_on_local_close() {
    let (_l, _dialer, accepted) = blocking_pair(
        &fresh_addr(LOCAL),
        ListenOptions::default(),
        DialOptions::default(),
    );
    let p = accepted.clone();
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        p.close().expect("close");
    });
    Exec::BlockOn.run(async move {
        let e = within("recv", accepted.recv_async())
            .await
            .expect_err("closed");
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    });
    closer.join().expect("closer");
}

/// A pending `recv_async` wakes with `Disconnected` when the peer vanishes without a CLOSE
/// (a raw peer that drops its connection), after the message it sent first.
fn recv_async_wakes_on_disconnect(exec: Exec) {
    let f = Fixture::new(Kind::Tcp4).expect("fixture");
    let listener = listen(&f.addr(), ListenOptions::default()).expect("listen");
    let addr = listener.local_addr().to_string();
    let mut raw = f.raw_dial(&addr);
    raw.handshake();
    let accepted = listener.accept_timeout(T).expect("accept");
    let vanisher = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        raw.session
            .send(3, bytes::Bytes::from_static(b"raw hello"), Instant::now())
            .expect("raw send");
        raw.flush().expect("raw flush");
        thread::sleep(Duration::from_millis(50));
        drop::<RawPeer>(raw); // no CLOSE
    });
    exec.run(async move {
        let m = within("recv", accepted.recv_async()).await.expect("recv");
        assert_eq!((m.channel(), m.payload()), (3, &b"raw hello"[..]));
        let e = within("recv", accepted.recv_async())
            .await
            .expect_err("disconnected");
        assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
        assert_eq!(e.close_reason(), None);
    });
    vanisher.join().expect("vanisher");
}

#[test]
fn recv_async_wakes_on_disconnect_tokio_multi_thread() {
    recv_async_wakes_on_disconnect(Exec::TokioMulti);
}

#[test]
fn recv_async_wakes_on_disconnect_block_on() {
    recv_async_wakes_on_disconnect(Exec::BlockOn);
}

/// Across a reconnect: a `recv_async` pending when the connection is cut stays pending
/// (the pipe is Reconnecting, not ended), `send_async` while reconnecting is accepted (queued
/// for the next connection), and once the pipe is back the pending receive gets the echoes.
#[test]
fn recv_async_waits_across_a_reconnect() {
    use duct::{Heartbeat, PipeState, Reconnect};
    let echo = common::tcp_echo_server();
    let target = echo.addr;
    let proxy = duct_testkit::ChaosProxy::start(target).expect("proxy");
    let (on_state, states) = common::state_sink();
    let opts = DialOptions::default()
        .timeout(Duration::from_secs(1))
        .heartbeat(Heartbeat::off())
        .reconnect(Reconnect::exponential(
            Duration::from_millis(20),
            Duration::from_millis(50),
        ))
        .on_state_change(on_state);
    let pipe = dial(&format!("tcp://{}", proxy.addr()), opts).expect("dial");
    let proxy = Arc::new(proxy);
    let p = Arc::clone(&proxy);
    let cutter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100)); // the receive below is pending by now
        p.refuse(true).expect("refuse");
        p.reset_all();
        common::wait_for_change(&states, "Connected -> Reconnecting", |c| {
            c.to == PipeState::Reconnecting
        });
        states
    });
    Exec::TokioMulti.run(async move {
        let pipe = Arc::new(pipe);
        let rx = Arc::clone(&pipe);
        let pending = tokio::spawn(async move {
            let m = within("recv across the cut", rx.recv_async()).await;
            m.expect("recv after the reconnect")
        });
        let states = tokio::task::spawn_blocking(move || cutter.join().expect("cutter"))
            .await
            .expect("join");
        assert_eq!(pipe.state(), PipeState::Reconnecting);
        for i in 0..3 {
            within(
                "send while reconnecting",
                pipe.send_async(format!("queued {i}")),
            )
            .await
            .expect("accepted while reconnecting");
        }
        assert!(
            !pending.is_finished(),
            "the receive waits through the break"
        );
        proxy.refuse(false).expect("accept again");
        let m = pending.await.expect("receiver task");
        assert_eq!(m.payload(), b"queued 0");
        for i in 1..3 {
            let m = within("recv", pipe.recv_async()).await.expect("recv");
            assert_eq!(m.payload(), format!("queued {i}").as_bytes());
        }
        drop(states);
    });
}

/// `RecvOptions::timeout` is honoured by `recv_with_async`, under every executor (under
/// `block_on` only duct's reactor timer can wake it); a zero timeout is `WouldBlock` at
/// once; a message that arrives in time is returned.
#[test]
fn recv_with_async_times_out() {
    for exec in EVERY_EXEC {
        let (_l, dialer, accepted) = blocking_pair(
            &fresh_addr(LOCAL),
            ListenOptions::default(),
            DialOptions::default(),
        );
        let timeout = Duration::from_millis(120);
        let waited = exec.run(async move {
            let opts = RecvOptions::default().timeout(timeout);
            let start = Instant::now();
            let e = within("timed recv", accepted.recv_with_async(&opts))
                .await
                .expect_err("nothing sent");
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
            let waited = start.elapsed();
            let zero = RecvOptions::default().timeout(Duration::ZERO);
            let e = accepted.recv_with_async(&zero).await.expect_err("empty");
            assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
            dialer.send("in time").expect("send");
            let long = RecvOptions::default().timeout(T);
            let m = accepted.recv_with_async(&long).await.expect("recv");
            assert_eq!(m.payload(), b"in time");
            assert_eq!(accepted.async_waiter_slots(), 0);
            waited
        });
        println!("{exec:?}: TimedOut after {waited:?} (timeout {timeout:?})");
        assert!(waited >= timeout, "{exec:?}: TimedOut after {waited:?}");
        assert!(
            waited < timeout + Duration::from_secs(2),
            "{exec:?}: {waited:?}"
        );
    }
}

/// A pending `accept_async` wakes with `Closed` when the listener is closed by another
/// thread; one that is pending when a dialer arrives returns its pipe.
#[test]
fn accept_async_wakes_on_dial_and_on_close() {
    for exec in EVERY_EXEC {
        let listener = Arc::new(listen(&fresh_addr(Kind::Tcp4), ListenOptions::default()).unwrap());
        let addr = listener.local_addr().to_string();
        let l = Arc::clone(&listener);
        let dialer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let p = dial(&addr, DialOptions::default()).expect("dial");
            p.send("hi").expect("send");
            thread::sleep(Duration::from_millis(100));
            l.close();
            p
        });
        let l = Arc::clone(&listener);
        exec.run(async move {
            let p = within("accept", l.accept_async()).await.expect("accept");
            let m = within("recv", p.recv_async()).await.expect("recv");
            assert_eq!(m.payload(), b"hi");
            let e = within("accept", l.accept_async())
                .await
                .expect_err("closed");
            assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        });
        let _p = dialer.join().expect("dialer");
        assert_eq!(listener.async_waiter_slots(), 0);
    }
}

/// `dial_async` fails as `dial` does: a malformed address is `InvalidAddress` (at once), and
/// an address nobody listens on is `ConnectionRefused`.
#[test]
fn dial_async_errors() {
    for exec in EVERY_EXEC {
        exec.run(async {
            let e = dial_async("bogus://nowhere", DialOptions::default())
                .await
                .expect_err("malformed");
            assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{e}");
            // A port that was free a moment ago (nothing listens there now).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = format!("tcp://127.0.0.1:{port}");
            let e = within("dial", dial_async(&addr, DialOptions::default()))
                .await
                .expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        });
    }
}

/// A `dial_async` dropped while the dial is under way: the dial finishes on its thread and
/// the pipe it made is closed, which the listener's side sees.
#[test]
fn dropped_dial_async_closes_its_pipe() {
    let listener = listen(&fresh_addr(LOCAL), ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();
    {
        let mut f = pin!(dial_async(&addr, DialOptions::default()));
        // The first poll starts the dial (it may even finish at once: dropped then too).
        let _ = poll_once(f.as_mut());
    }
    let accepted = listener.accept_timeout(T).expect("the dial went through");
    let e = accepted
        .recv_with(&RecvOptions::default().timeout(T))
        .expect_err("closed by the dropped future");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
}
