//! Reconnect attempts: one background thread per process (`duct-reconnect`, started on first
//! use) runs the blocking connect + handshake of every reconnecting pipe, each bounded by its
//! dial timeout, at the times their backoff schedules. It also ends accepted pipes whose
//! dialer did not come back within the listener's resume window. Attempts run one at a time: a pipe
//! whose peer is slow to answer delays the others by at most one dial timeout.
//!
//! The thread holds pipes weakly: a pipe dropped or closed meanwhile is skipped, and an
//! attempt that completes after its pipe was closed is discarded.

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Instant;

use super::conn::Conn;

struct Queue {
    jobs: Mutex<Vec<(Instant, Weak<Conn>)>>,
    cv: Condvar,
}

fn queue() -> &'static Arc<Queue> {
    static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let q = Arc::new(Queue {
            jobs: Mutex::new(Vec::new()),
            cv: Condvar::new(),
        });
        let worker = Arc::clone(&q);
        // If the thread cannot start, attempts never run; the pipes stay Reconnecting until
        // closed. Spawning a thread failing is a process-wide resource problem, logged here.
        if let Err(e) = std::thread::Builder::new()
            .name("duct-reconnect".into())
            .spawn(move || run(&worker))
        {
            tracing::error!(error = %e, "duct: could not start the reconnect thread");
        }
        q
    })
}

/// Asks for a reconnect attempt of `conn` at `at`.
pub(crate) fn schedule(conn: Weak<Conn>, at: Instant) {
    let q = queue();
    q.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((at, conn));
    q.cv.notify_one();
}

fn run(q: &Queue) {
    let mut jobs = q.jobs.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        // Drop jobs of pipes that are gone, then take the earliest due one.
        jobs.retain(|(_, c)| c.strong_count() > 0);
        let next = jobs
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, _))| *at)
            .map(|(i, (at, _))| (i, *at));
        match next {
            None => jobs = q.cv.wait(jobs).unwrap_or_else(|p| p.into_inner()),
            Some((_, at)) if at > now => {
                jobs =
                    q.cv.wait_timeout(jobs, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
            }
            Some((i, _)) => {
                let (_, conn) = jobs.swap_remove(i);
                drop(jobs);
                if let Some(conn) = conn.upgrade() {
                    conn.on_reconnect_timer();
                }
                jobs = q.jobs.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}
