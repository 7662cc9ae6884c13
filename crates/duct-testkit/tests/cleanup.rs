//! Dropping a chaos proxy leaves no thread and no descriptor behind. A file of its own so that
//! the test is alone in its process: the counts in /proc/self are process-wide.

#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{echo_server, read_n};
use duct_testkit::ChaosProxy;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Threads of this process named by a chaos proxy (`chaos<N>-...`).
fn proxy_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("chaos"))
        .count()
}

#[test]
fn drop_joins_threads_and_closes_fds() {
    let target = echo_server();
    let threads_before = count("/proc/self/task");
    let fds_before = count("/proc/self/fd");

    let proxy = ChaosProxy::start(target).unwrap();
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    for c in &mut clients {
        c.write_all(b"hi").unwrap();
        assert_eq!(read_n(c, 2), b"hi");
    }
    proxy.delay(Duration::from_millis(50));
    clients[0].write_all(b"held").unwrap(); // in flight when the proxy goes
    assert_eq!(proxy_threads(), 1 + 2 * clients.len());
    drop(proxy);
    // A joined thread can still be listed for a moment: the kernel wakes the joiner (it
    // clears the thread id) before it removes the finished task from /proc. A thread drop
    // did not join would still be running, and listed for good.
    let joined_by = Instant::now() + Duration::from_secs(1);
    while proxy_threads() > 0 && Instant::now() < joined_by {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        proxy_threads(),
        0,
        "drop returned before joining every thread"
    );
    drop(clients);

    // The proxy joined its threads before drop returned; the echo server's per-connection
    // threads end once they see the proxy's close, and the kernel frees sockets at close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (threads, fds) = (count("/proc/self/task"), count("/proc/self/fd"));
        if threads == threads_before && fds == fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads {threads_before} -> {threads}, fds {fds_before} -> {fds}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
