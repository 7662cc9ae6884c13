//! A ping-pong between two threads over one pipe, for instruction counts under callgrind:
//! `cargo bench -p duct --bench hotpath -- shm 20000 [spin_us]` runs it; under
//! `valgrind --tool=callgrind --toggle-collect='*hotpath::measure*'` only the measured loop
//! is counted. Not a timing benchmark (see `duct bench`).

use std::time::Duration;

use duct::{DialOptions, ListenOptions, Message};

#[inline(never)]
fn measure(a: &duct::Pipe, n: u64, payload: &Message) {
    for _ in 0..n {
        a.send(payload.clone()).unwrap();
        let m = a.recv().unwrap();
        std::hint::black_box(m);
    }
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
    let addr = match transport.as_str() {
        "shm" => format!("shm://hotpath-{}", std::process::id()),
        "uds" => format!("uds://@hotpath-{}", std::process::id()),
        _ => "tcp://127.0.0.1:0".to_owned(),
    };
    let listener = duct::listen(&addr, ListenOptions::default().spin(spin)).unwrap();
    let addr = listener.local_addr().to_string();
    let echo = std::thread::spawn(move || {
        let b = listener.accept().unwrap();
        while let Ok(m) = b.recv() {
            if b.send(m).is_err() {
                break;
            }
        }
    });
    let a = duct::dial(&addr, DialOptions::default().spin(spin)).unwrap();
    let payload = Message::new(vec![7u8; 64]);
    measure(&a, 1000, &payload); // warm-up (counted too under a loose toggle; keep n large)
    let start = std::time::Instant::now();
    measure(&a, n, &payload);
    let el = start.elapsed();
    println!(
        "{transport}: {n} round trips, {:.2} us each",
        el.as_secs_f64() * 1e6 / n as f64
    );
    a.close().unwrap();
    echo.join().unwrap();
}
