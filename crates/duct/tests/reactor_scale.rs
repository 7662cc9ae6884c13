//! 1,000 pipes on one listener in one process exchange messages concurrently; every message
//! arrives, and duct's own thread count stays a small constant whatever the number of pipes.
//!
//! This file holds a single test so that no other test's threads share the process while
//! threads are counted. Linux only: threads are counted in /proc/self/task.
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use duct::{DialOptions, ListenOptions, Message, Pipe, RecvOptions};

const PIPES: usize = 1000;
const SERVERS: usize = 2;
const CLIENTS: usize = 4;
const ROUNDS: u64 = 5;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

#[test]
fn thousand_pipes_few_threads() {
    let before = threads();
    let listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();

    // Dial from one thread while another accepts: 1,000 connections.
    let acceptor = thread::spawn(move || {
        let pipes: Vec<Pipe> = (0..PIPES).map(|_| listener.accept().unwrap()).collect();
        (pipes, listener)
    });
    let dialed: Vec<Pipe> = (0..PIPES)
        .map(|_| duct::dial(&addr, DialOptions::default()).unwrap())
        .collect();
    let (accepted, _listener) = acceptor.join().unwrap();
    let after_connect = threads();

    // Two echo threads serve 500 accepted pipes each, polling with try_recv (the reactor
    // reads ahead for the pipes they are not looking at).
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for chunk in accepted.chunks(PIPES / SERVERS) {
        let (chunk, stop) = (chunk.to_vec(), Arc::clone(&stop));
        servers.push(thread::spawn(move || {
            let mut echoed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for p in &chunk {
                    while let Some(m) = p.try_recv().unwrap() {
                        p.send(m).unwrap();
                        echoed += 1;
                        idle = false;
                    }
                }
                if idle {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            echoed
        }));
    }

    // Four client threads, 250 pipes each: every round sends one numbered message on every
    // pipe, then collects every echo.
    let mut clients = Vec::new();
    for (c, chunk) in dialed.chunks(PIPES / CLIENTS).enumerate() {
        let chunk = chunk.to_vec();
        clients.push(thread::spawn(move || {
            let mut max_threads = 0;
            for round in 0..ROUNDS {
                for (i, p) in chunk.iter().enumerate() {
                    let id = ((c * 1_000_000 + i) as u64) << 8 | round;
                    p.send(Message::new(id.to_be_bytes().to_vec()).with_channel(round as u16))
                        .unwrap();
                }
                max_threads = max_threads.max(threads());
                for (i, p) in chunk.iter().enumerate() {
                    let m = p
                        .recv_with(&RecvOptions::default().timeout(Duration::from_secs(20)))
                        .unwrap_or_else(|e| panic!("client {c} pipe {i} round {round}: {e}"));
                    let id = ((c * 1_000_000 + i) as u64) << 8 | round;
                    assert_eq!(
                        m.payload(),
                        id.to_be_bytes(),
                        "pipe {i} got another's message"
                    );
                    assert_eq!(m.channel(), round as u16);
                }
            }
            max_threads
        }));
    }
    let started = Instant::now();
    let peak = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .max()
        .unwrap();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let echoed: u64 = servers.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(
        echoed,
        PIPES as u64 * ROUNDS,
        "every message was echoed once"
    );

    let mut seen = HashSet::new();
    for p in &dialed {
        let st = p.stats();
        assert_eq!((st.msgs_sent, st.msgs_received), (ROUNDS, ROUNDS));
        assert!(seen.insert(p.local_addr().to_string()), "distinct pipes");
    }

    // The test's own threads: main plus the acceptor (gone), 2 servers and 4 clients. duct's
    // own threads: the reactor (one by default), whatever the number of pipes.
    let duct_threads = thread_names()
        .iter()
        .filter(|n| n.starts_with("duct-"))
        .count();
    println!(
        "threads: before {before}, after 1000 connects {after_connect}, peak during exchange \
         {peak}, duct's own {duct_threads}; {} messages echoed in {elapsed:?}",
        PIPES as u64 * ROUNDS
    );
    assert_eq!(
        duct_threads,
        1,
        "duct runs one reactor thread: {:?}",
        thread_names()
    );
    assert!(
        after_connect <= before + 2,
        "connecting 1,000 pipes started threads: {before} -> {after_connect}"
    );
    assert!(
        peak <= before + 1 + SERVERS + CLIENTS,
        "peak {peak} threads (before {before})"
    );
    drop(dialed);
    drop(accepted);
}
