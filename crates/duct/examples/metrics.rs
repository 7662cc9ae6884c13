//! A pipe's figures in Prometheus: duct publishes to the `metrics` facade, and
//! `metrics-exporter-prometheus` renders them as a scrape.
//!
//! What it shows:
//! - installing a recorder (`PrometheusBuilder::install_recorder`, no HTTP server here: the
//!   scrape is rendered with `PrometheusHandle::render` and printed; a real server would
//!   serve it on `/metrics` or use the exporter's own listener) before the first pipe;
//! - `duct::set_metrics_interval`: how often each pipe publishes (1 s by default);
//! - a pipe with three channels under a pipe-wide rate limit: positions (`DropOld`, a
//!   queue of 8: the excess is dropped, reason `queue_full`), chat (reliable), telemetry
//!   (`DropNew` with its own rate limit: the excess is turned away, reason `rate_limit`);
//! - the series: per channel `duct_messages_sent_total`, `duct_messages_dropped_total{reason}`,
//!   queue depths, ...; per pipe `duct_rtt_seconds` (a histogram, with buckets set here),
//!   `duct_pipe_connected`, ...; each with the labels `pipe`, `transport`, `role`.
//!
//! It checks that the scrape agrees with `Pipe::stats()` and exits non-zero if not.
//!
//! Run: `cargo run -p duct --example metrics` (add `--fast`, or set `DUCT_EXAMPLE_FAST=1`,
//! for a shorter run). Needs the cargo feature `metrics` (on by default).

use std::error::Error;
use std::thread;
use std::time::Duration;

use duct::{
    Backpressure, ChannelOptions, DialOptions, ErrorKind, Heartbeat, ListenOptions, Message,
    RateLimit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// `--fast` or `DUCT_EXAMPLE_FAST=1`: the CI setting.
fn fast() -> bool {
    std::env::args().any(|a| a == "--fast")
        || std::env::var("DUCT_EXAMPLE_FAST").is_ok_and(|v| !v.is_empty() && v != "0")
}

const POSITIONS: u16 = 1;
const CHAT: u16 = 2;
const TELEMETRY: u16 = 3;

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn scraped(scrape: &str, name: &str, labels: &[&str]) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() -> Result<()> {
    let fast = fast();
    // The recorder first: pipes register their series with the recorder installed when they
    // publish. Round-trip times are a histogram with these buckets (otherwise a summary).
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("duct_rtt_seconds".to_owned()),
            &[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
            ],
        )?
        .install_recorder()?;
    let interval = if fast {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(500)
    };
    duct::set_metrics_interval(interval);

    // Heartbeats every 50 ms: an idle side PINGs, and each answer is an RTT sample.
    let heartbeat = Heartbeat::new(Duration::from_millis(50), 10);
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .heartbeat(heartbeat)
            .channel(CHAT, ChannelOptions::default().reliable(true)),
    )?;
    let addr = listener.local_addr().to_string();
    let server = thread::spawn(move || -> duct::Result<u64> {
        let pipe = listener.accept()?;
        let mut received = 0;
        loop {
            match pipe.recv() {
                Ok(_) => received += 1,
                Err(e) if e.kind() == ErrorKind::Closed => return Ok(received),
                Err(e) => return Err(e),
            }
        }
    });

    let client = duct::dial(
        &addr,
        DialOptions::default()
            .heartbeat(heartbeat)
            // The link's budget: 20 000 messages/s for the whole pipe.
            .rate_limit(RateLimit::msgs_per_sec(20_000.0).burst(100))
            .channel(
                POSITIONS,
                ChannelOptions::default()
                    .snd_hwm_msgs(8)
                    .backpressure(Backpressure::DropOld)
                    .priority(200),
            )
            .channel(CHAT, ChannelOptions::default().reliable(true))
            .channel(
                TELEMETRY,
                ChannelOptions::default()
                    .rate_limit(RateLimit::msgs_per_sec(100.0).burst(10))
                    .backpressure(Backpressure::DropNew),
            ),
    )?;
    let ticks = if fast { 20 } else { 100 };
    for tick in 0..ticks {
        // A burst of position updates (only the newest matter), a chat line, telemetry.
        for unit in 0..300u32 {
            let update = format!("unit {unit} at {tick},{tick}");
            client.send(Message::new(update).with_channel(POSITIONS))?;
        }
        client.send(Message::new(format!("chat line {tick}")).with_channel(CHAT))?;
        for _ in 0..20 {
            client.send(Message::new(vec![0u8; 64]).with_channel(TELEMETRY))?;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Idle for a few heartbeats (RTT samples) and publications.
    thread::sleep((interval * 2).max(Duration::from_millis(300)));
    let stats = client.stats();
    client.close()?;
    let received = server.join().expect("the server thread")?;
    drop(client); // the last publication of the dialer's figures
    thread::sleep(Duration::from_millis(50));

    let scrape = handle.render();
    println!("{scrape}");

    // The scrape agrees with stats().
    let dialer = r#"role="dialer""#;
    let checks = [
        (
            "sent",
            scraped(&scrape, "duct_messages_sent_total", &[dialer]),
            stats.msgs_sent,
        ),
        (
            "dropped",
            scraped(&scrape, "duct_messages_dropped_total", &[dialer]),
            stats.dropped,
        ),
        (
            "rate limited",
            scraped(
                &scrape,
                "duct_messages_dropped_total",
                &[dialer, r#"reason="rate_limit""#],
            ),
            stats.rate_limited,
        ),
        (
            "received",
            scraped(
                &scrape,
                "duct_messages_received_total",
                &[r#"role="listener""#],
            ),
            received,
        ),
    ];
    let mut ok = true;
    for (what, from_scrape, expected) in checks {
        println!("# check: {what}: scrape {from_scrape}, expected {expected}");
        ok &= from_scrape == expected;
    }
    let queue_full = scraped(
        &scrape,
        "duct_messages_dropped_total",
        &[dialer, r#"reason="queue_full""#],
    );
    println!("# positions dropped at their queue's mark: {queue_full}");
    let rtt = scraped(&scrape, "duct_rtt_seconds_count", &[]);
    println!("# RTT samples: {rtt}");
    if !ok || stats.dropped == 0 || stats.rate_limited == 0 || rtt == 0 {
        return Err("the scrape does not show what the pipe did".into());
    }
    Ok(())
}
