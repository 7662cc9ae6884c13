//! A pipe whose output filled its socket, and then drained, leaves the reactor idle: the
//! watch for room the socket's filling set up ends at the reactor's next event, which finds
//! nothing to write (it is not unmade at every flush that empties the queue, see
//! `Conn::flush_queue`). A file of its own, so that no other test's pipes keep the
//! process's reactor threads busy while it measures them.

#![cfg(target_os = "linux")]

mod common;

use std::thread;
use std::time::Duration;

/// CPU time (user + system) of this process's reactor threads (`duct-reactor-*`), in clock
/// ticks of 10 ms.
fn reactor_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("duct-reactor") {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
            ticks += common::cpu_ticks(&stat);
        }
    }
    ticks
}

fn bursts_then_idle(kind: common::Kind) {
    let Some(f) = common::Fixture::new(kind) else {
        return;
    };
    let p = common::pair(&f);
    let payloads: Vec<Vec<u8>> = (0..512u32).map(|i| common::pattern(1024, i)).collect();
    for burst in 0..5 {
        // About 2 MiB in runs of 64: more than the socket takes while the peer does not
        // read, so the last flush of most calls leaves output and the reactor watches.
        let sender = thread::scope(|s| {
            let sender = s.spawn(|| {
                for _ in 0..4 {
                    for run in payloads.chunks(64) {
                        let sent = p
                            .dialer
                            .send_slices(run.iter().map(Vec::as_slice), &Default::default())
                            .unwrap();
                        assert_eq!(sent, run.len());
                    }
                }
            });
            thread::sleep(Duration::from_millis(50));
            let mut batch = duct::MessageBatch::new();
            let mut got = 0;
            while got < 4 * payloads.len() {
                p.accepted
                    .recv_into(
                        &mut batch,
                        256,
                        &duct::RecvOptions::default().timeout(common::T),
                    )
                    .unwrap();
                for m in &batch {
                    let i = got % payloads.len();
                    common::assert_payload(m.payload(), &payloads[i], &format!("message {got}"));
                    got += 1;
                }
            }
            sender.join()
        });
        sender.unwrap();
        // Everything arrived: nothing is left to write. Let the reactor see its last events,
        // then it must sit idle.
        thread::sleep(Duration::from_millis(50));
        let before = reactor_ticks();
        thread::sleep(Duration::from_millis(400));
        let spent = reactor_ticks() - before;
        assert!(
            spent <= 4,
            "{kind:?}, burst {burst}: the reactor spent {spent}0 ms of CPU in 400 ms with \
             nothing to do"
        );
    }
}

#[test]
fn a_drained_pipe_leaves_the_reactor_idle() {
    bursts_then_idle(common::Kind::Tcp4);
    bursts_then_idle(common::Kind::UdsAbstract);
}
