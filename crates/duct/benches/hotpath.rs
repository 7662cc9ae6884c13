//! A ping-pong (or a stream) between two threads over one pipe, for instruction counts under
//! callgrind: `cargo bench -p duct --bench hotpath -- shm 20000 [spin_us] [stream]` runs it;
//! under `valgrind --tool=callgrind --toggle-collect='*hotpath::measure*'` only the measured
//! loop is counted (both threads' work while it runs). Run it with `DUCT_BACKEND=epoll`:
//! under valgrind (3.19 here) a process on the io_uring reactor hangs. Not a timing
//! benchmark (see
//! `duct bench`). `stream`: the dialer sends batches of 64 messages with `send_slices` and
//! the listener takes them with `recv_into`; the count is messages. `HOTPATH_BATCH=N` sets
//! the batch (default 64; `duct bench` uses 1024 for 64 B). `HOTPATH_RELIABLE=1` makes channel 0
//! reliable on both ends. `HOTPATH_SLICE=1` has both ends of the ping-pong send with
//! `send_slice` (a copy of the caller's bytes) instead of `send` (a `Message`);
//! `HOTPATH_ASYNC=1` has both use `send_async` and `recv_async` (each call driven by
//! `futures::executor::block_on`: no runtime). `scale` (`-- uds 400000 0 scale`):
//! `HOTPATH_PIPES` pipes (default 1,000), the dialer sending `n` messages in calls of 16 on
//! each pipe in turn (`measure_scale`), a thread sweeping them with zero-timeout receives
//! (`receive_scale`): with `--cache-sim=yes`, the first-level misses a call costs when the
//! pipe's state is cold, as it is among a thousand.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use duct::{DialOptions, ListenOptions, Message};

/// Messages per `send_batch`/`recv_batch` in `stream` (`HOTPATH_BATCH`).
static BATCH: AtomicUsize = AtomicUsize::new(64);

/// The ping-pong sends with `send_slice` (`HOTPATH_SLICE=1`).
static SLICE: AtomicBool = AtomicBool::new(false);

/// The ping-pong sends and receives with the async calls (`HOTPATH_ASYNC=1`).
static ASYNC: AtomicBool = AtomicBool::new(false);

/// Receives as the ping-pong does.
fn take(p: &duct::Pipe) -> duct::Result<Message> {
    if ASYNC.load(Ordering::Relaxed) {
        futures::executor::block_on(p.recv_async())
    } else {
        p.recv()
    }
}

/// Sends `m` as the ping-pong does: the message, or a copy of its bytes.
fn send_back(p: &duct::Pipe, m: Message) -> duct::Result<()> {
    if ASYNC.load(Ordering::Relaxed) {
        futures::executor::block_on(p.send_async(m))
    } else if SLICE.load(Ordering::Relaxed) {
        p.send_slice(m.payload(), &duct::SendOptions::default())
    } else {
        p.send(m)
    }
}

#[inline(never)]
fn measure(a: &duct::Pipe, n: u64, payload: &Message) {
    for _ in 0..n {
        send_back(a, payload.clone()).unwrap();
        let m = take(a).unwrap();
        std::hint::black_box(m);
    }
}

#[inline(never)]
fn measure_stream(a: &duct::Pipe, n: u64, payload: &Message) {
    let opts = duct::SendOptions::default();
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH.load(Ordering::Relaxed) as u64);
        let sent = a
            .send_slices((0..k).map(|_| payload.payload()), &opts)
            .unwrap();
        left -= sent as u64;
    }
    // The listener acknowledges the whole stream with one message.
    std::hint::black_box(a.recv().unwrap());
}

/// The listener's side of `stream`: `total` messages taken in batches. (Counted alone with
/// `--toggle-collect='*hotpath::receive_stream*'`.)
#[inline(never)]
fn receive_stream(b: &duct::Pipe, total: u64) {
    let batch = BATCH.load(Ordering::Relaxed);
    let mut out = duct::MessageBatch::with_capacity(batch);
    let opts = duct::RecvOptions::default();
    let mut got = 0;
    while got < total {
        got += b.recv_into(&mut out, batch, &opts).unwrap() as u64;
        for m in &out {
            std::hint::black_box(m.payload());
        }
    }
}

/// `scale`: the dialer's side, `n` messages in calls of 16 on each pipe in turn.
#[inline(never)]
fn measure_scale(pipes: &[duct::Pipe], n: u64, payload: &Message) {
    let opts = duct::SendOptions::default();
    let mut left = n;
    while left > 0 {
        for p in pipes {
            let k = left.min(16);
            if k == 0 {
                break;
            }
            left -= p
                .send_slices((0..k).map(|_| payload.payload()), &opts)
                .unwrap() as u64;
        }
    }
}

/// `scale`: the listener's side, sweeping every pipe until `total` messages came.
#[inline(never)]
fn receive_scale(pipes: &[duct::Pipe], total: u64) {
    let mut out = duct::MessageBatch::with_capacity(64);
    let opts = duct::RecvOptions::default().timeout(std::time::Duration::ZERO);
    let mut got = 0;
    while got < total {
        let mut any = false;
        for p in pipes {
            if let Ok(k) = p.recv_into(&mut out, 64, &opts) {
                got += k as u64;
                any |= k > 0;
            }
        }
        if !any {
            std::thread::yield_now();
        }
    }
}

fn scale_main(transport: &str, addr: &str, n: u64) {
    let pipes_n: usize = std::env::var("HOTPATH_PIPES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let listener = duct::listen(addr, ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();
    let warm = 32 * pipes_n as u64;
    let rx = std::thread::spawn(move || {
        let pipes: Vec<_> = (0..pipes_n).map(|_| listener.accept().unwrap()).collect();
        receive_scale(&pipes, warm + n);
        pipes
    });
    let pipes: Vec<_> = (0..pipes_n)
        .map(|_| duct::dial(&addr, DialOptions::default()).unwrap())
        .collect();
    let payload = Message::new(vec![7u8; 64]);
    measure_scale(&pipes, warm, &payload);
    let start = std::time::Instant::now();
    measure_scale(&pipes, n, &payload);
    let el = start.elapsed();
    let rx_pipes = rx.join().unwrap();
    println!(
        "{transport}: {pipes_n} pipes, {n} messages, {:.3} us each",
        el.as_secs_f64() * 1e6 / n as f64
    );
    drop(rx_pipes);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let transport = args.first().map_or("shm", String::as_str).to_owned();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let spin_us: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let spin = Duration::from_micros(spin_us);
    let stream = args.get(3).is_some_and(|s| s == "stream");
    if let Some(b) = std::env::var("HOTPATH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        BATCH.store(b, Ordering::Relaxed);
    }
    SLICE.store(
        std::env::var("HOTPATH_SLICE").is_ok_and(|v| v == "1"),
        Ordering::Relaxed,
    );
    ASYNC.store(
        std::env::var("HOTPATH_ASYNC").is_ok_and(|v| v == "1"),
        Ordering::Relaxed,
    );
    let addr = match transport.as_str() {
        "shm" => format!("shm://hotpath-{}", std::process::id()),
        "uds" => format!("uds://@hotpath-{}", std::process::id()),
        _ => "tcp://127.0.0.1:0".to_owned(),
    };
    if args.get(3).is_some_and(|s| s == "scale") {
        scale_main(&transport, &addr, n);
        return;
    }
    // `HOTPATH_RELIABLE=1`: channel 0 reliable on both ends.
    let reliable = std::env::var("HOTPATH_RELIABLE").is_ok_and(|v| v == "1");
    let channel = duct::ChannelOptions::default().reliable(reliable);
    let listener = duct::listen(
        &addr,
        ListenOptions::default()
            .spin(spin)
            .channel(0, channel.clone()),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let echo = std::thread::spawn(move || {
        let b = listener.accept().unwrap();
        if stream {
            for total in [1000, n] {
                receive_stream(&b, total);
                b.send("done").unwrap();
            }
            let _ = b.recv();
            return;
        }
        while let Ok(m) = take(&b) {
            if send_back(&b, m).is_err() {
                break;
            }
        }
    });
    let a = duct::dial(&addr, DialOptions::default().spin(spin).channel(0, channel)).unwrap();
    let payload = Message::new(vec![7u8; 64]);
    let run = if stream { measure_stream } else { measure };
    run(&a, 1000, &payload); // warm-up (counted too: keep n large)
    let start = std::time::Instant::now();
    run(&a, n, &payload);
    let el = start.elapsed();
    println!(
        "{transport}: {n} {}, {:.3} us each",
        if stream { "messages" } else { "round trips" },
        el.as_secs_f64() * 1e6 / n as f64
    );
    a.close().unwrap();
    echo.join().unwrap();
}
