//! Reliable channels on real sockets: every message exactly once and in order per channel,
//! across connection resets through the chaos proxy; zero retransmits on a healthy link; a
//! realtime channel beside them stays in order and never duplicated.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duct::{
    ChannelOptions, DialOptions, Heartbeat, ListenOptions, Message, Pipe, PipeState, Reconnect,
    RecvOptions, SendOptions, StateChange,
};

mod common;
use common::{proxy_in_front, state_sink, T};

fn reliable() -> ChannelOptions {
    ChannelOptions::default().reliable(true)
}

/// A message: channel, index, and some padding so that sizes vary.
fn msg(channel: u16, i: u32) -> Message {
    let pad = (i as usize * 7919) % 200;
    let mut v = Vec::with_capacity(4 + pad);
    v.extend_from_slice(&i.to_be_bytes());
    v.resize(4 + pad, channel as u8);
    Message::new(v).with_channel(channel)
}

fn index(m: &Message) -> u32 {
    u32::from_be_bytes(m.payload()[..4].try_into().unwrap())
}

/// Receives until `want` messages per channel in `counts` arrived (or `limit` passed);
/// returns what arrived per channel, in order.
fn receive(p: &Pipe, want: &BTreeMap<u16, u32>, limit: Duration) -> BTreeMap<u16, Vec<u32>> {
    let deadline = Instant::now() + limit;
    let mut got: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
    let done = |got: &BTreeMap<u16, Vec<u32>>| {
        want.iter()
            .all(|(c, n)| got.get(c).map_or(0, |v| v.len() as u32) >= *n)
    };
    let mut batch = Vec::new();
    while !done(&got) && Instant::now() < deadline {
        batch.clear();
        let opts = RecvOptions::default().timeout(Duration::from_millis(50));
        if p.recv_batch(&mut batch, 256, &opts).is_ok() {
            for m in &batch {
                got.entry(m.channel()).or_default().push(index(m));
            }
        }
    }
    got
}

#[test]
fn healthy_link_delivers_everything_once_with_zero_retransmits() {
    let listener = duct::listen(
        // (tcp where there are no Unix sockets)
        if cfg!(unix) {
            "uds://@duct-reliable-healthy"
        } else {
            "tcp://127.0.0.1:0"
        },
        ListenOptions::default().channel(1, reliable()),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let acceptor = thread::spawn(move || listener.accept_timeout(T).unwrap());
    let dialer = duct::dial(&addr, DialOptions::default().channel(1, reliable())).unwrap();
    let accepted = acceptor.join().unwrap();
    const N: u32 = 20_000;
    let sender = {
        let d = dialer.clone();
        thread::spawn(move || {
            for i in 0..N {
                d.send(msg(1, i)).unwrap();
            }
        })
    };
    let got = receive(&accepted, &BTreeMap::from([(1, N)]), T);
    sender.join().unwrap();
    assert_eq!(got[&1], (0..N).collect::<Vec<_>>());
    // Acks flow back: nothing stays unacknowledged, nothing was sent twice.
    let deadline = Instant::now() + T;
    while dialer.stats().retransmits == 0 && Instant::now() < deadline {
        let s = dialer.stats();
        if s.msgs_sent == u64::from(N) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dialer.stats().retransmits, 0);
    assert_eq!(accepted.stats().msgs_received, u64::from(N));
}

/// The test: 100,000 reliable messages on two channels (one sent a message per
/// call, one in runs of slices; and a realtime channel beside them) through the chaos proxy
/// while it resets the connection 50 times: every
/// reliable message arrives exactly once, in order per channel; the realtime channel stays
/// in order and never duplicated; reconnects at least as many as the cuts.
#[test]
fn reliable_messages_survive_fifty_resets_exactly_once_in_order() {
    const PER_CHANNEL: u32 = 50_000;
    const CUTS: u32 = 50;
    let hb = Heartbeat::new(Duration::from_millis(100), 5);
    let channels = |o: ListenOptions| o.channel(1, reliable()).channel(2, reliable());
    let (on_server_change, server_changes) = state_sink();
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        channels(ListenOptions::default())
            .heartbeat(hb)
            .resume_window(Duration::from_secs(30))
            .on_state_change(on_server_change),
    )
    .unwrap();
    let (proxy, proxied) = proxy_in_front(&listener);
    let (on_client_change, client_changes) = state_sink();
    let client = duct::dial(
        &proxied,
        DialOptions::default()
            .channel(1, reliable())
            .channel(2, reliable())
            .heartbeat(hb)
            .timeout(Duration::from_secs(1))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(5),
                Duration::from_millis(50),
            ))
            .on_state_change(on_client_change),
    )
    .unwrap();
    let server = listener.accept_timeout(T).unwrap();
    let started = Instant::now();

    // Two senders of reliable traffic, one of realtime traffic. Channel 2 sends runs of
    // slices (`send_slices`: a reliable message that fits the windows is numbered and framed
    // by the batch itself), the others one message per call.
    let senders: Vec<_> = [1u16, 2, 3]
        .into_iter()
        .map(|c| {
            let p = client.clone();
            thread::spawn(move || {
                let opts = SendOptions::default().timeout(Duration::from_secs(60));
                if c == 2 {
                    let opts = opts.channel(c);
                    for start in (0..PER_CHANNEL).step_by(32) {
                        let run: Vec<Message> = (start..(start + 32).min(PER_CHANNEL))
                            .map(|i| msg(c, i))
                            .collect();
                        let mut left = &run[..];
                        while !left.is_empty() {
                            let n = p
                                .send_slices(left.iter().map(Message::payload), &opts)
                                .unwrap();
                            left = &left[n..];
                        }
                        thread::sleep(Duration::from_millis(1));
                    }
                    return;
                }
                for i in 0..PER_CHANNEL {
                    p.send_with(msg(c, i), &opts).unwrap();
                    if i % 32 == 31 {
                        // Spread the traffic over the resets (about 1.5 s in all).
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    // The chaos: a reset every so often while traffic flows.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let chaos = {
        let client = client.clone();
        thread::spawn(move || {
            let mut cuts = 0;
            while cuts < CUTS {
                if stop_rx.recv_timeout(Duration::from_millis(15)).is_ok() {
                    break;
                }
                // Each cut breaks an established connection (not one still reconnecting).
                if client.state() != PipeState::Connected || proxy.connections_open() == 0 {
                    continue;
                }
                proxy.reset_all();
                cuts += 1;
            }
            (cuts, proxy)
        })
    };
    let want = BTreeMap::from([(1, PER_CHANNEL), (2, PER_CHANNEL)]);
    let got = receive(&server, &want, Duration::from_secs(60));
    let _ = stop_tx.send(());
    let (cuts, _proxy) = chaos.join().unwrap();
    for s in senders.into_iter().take(2) {
        s.join().unwrap();
    }
    let took = started.elapsed();
    if server.state() != PipeState::Connected {
        println!("server ended: {:?}", server.try_recv());
    }
    println!(
        "client {:?} {:?}\nserver {:?} {:?}",
        client.state(),
        client.stats(),
        server.state(),
        server.stats()
    );
    for c in [1u16, 2] {
        let v = &got[&c];
        assert_eq!(
            v.len() as u32,
            PER_CHANNEL,
            "channel {c}: {} of {PER_CHANNEL} arrived",
            v.len()
        );
        assert!(
            v.iter().copied().eq(0..PER_CHANNEL),
            "channel {c}: not every message exactly once in order (first difference at {:?})",
            v.iter()
                .zip(0..)
                .find(|(a, b)| **a != *b)
                .map(|(a, b)| (b, *a))
        );
    }
    // Realtime: in order, never duplicated (losses allowed).
    if let Some(rt) = got.get(&3) {
        assert!(
            rt.windows(2).all(|w| w[0] < w[1]),
            "realtime out of order or duplicated"
        );
    }
    let reconnects = client.stats().reconnects;
    let retransmits = client.stats().retransmits;
    let changes: Vec<StateChange> = client_changes.try_iter().collect();
    drop(server_changes);
    println!(
        "{} reliable messages on 2 channels through {cuts} resets in {took:?}: all exactly once \
         in order; {reconnects} reconnects, {retransmits} retransmits, {} state changes",
        2 * PER_CHANNEL,
        changes.len()
    );
    assert!(
        reconnects >= u64::from(cuts),
        "{reconnects} reconnects for {cuts} cuts"
    );
    assert!(client.state() == PipeState::Connected || client.state() == PipeState::Reconnecting);
}

/// Blackhole for a while (bytes vanish in flight both ways), then a cut: both directions
/// complete, every reliable message exactly once and in order. Three times over.
#[test]
fn blackhole_then_cut_loses_nothing_in_either_direction() {
    const N: u32 = 20_000;
    let hb = Heartbeat::new(Duration::from_millis(100), 5);
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .channel(1, reliable())
            .heartbeat(hb)
            .resume_window(Duration::from_secs(30)),
    )
    .unwrap();
    let (proxy, proxied) = proxy_in_front(&listener);
    let client = duct::dial(
        &proxied,
        DialOptions::default()
            .channel(1, reliable())
            .heartbeat(hb)
            .timeout(Duration::from_secs(1))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(5),
                Duration::from_millis(50),
            )),
    )
    .unwrap();
    let server = listener.accept_timeout(T).unwrap();
    let started = Instant::now();
    let send_all = |p: &Pipe| {
        let p = p.clone();
        thread::spawn(move || {
            let opts = SendOptions::default().timeout(Duration::from_secs(60));
            for i in 0..N {
                p.send_with(msg(1, i), &opts).unwrap();
                if i % 64 == 63 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let (to_server, to_client) = (send_all(&client), send_all(&server));
    let receivers: Vec<_> = [client.clone(), server.clone()]
        .into_iter()
        .map(|p| {
            thread::spawn(move || receive(&p, &BTreeMap::from([(1, N)]), Duration::from_secs(60)))
        })
        .collect();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(60));
        proxy.blackhole();
        thread::sleep(Duration::from_millis(200));
        // Cut while the link is still black, then let new connections through. (Passing
        // first would forward the rest of the same connections with a hole in them: bytes
        // acknowledged and thrown away in the middle of a TCP stream, which TCP itself never
        // delivers. duct relies on a transport delivering a prefix of what was sent; TLS
        // would detect such a hole.)
        proxy.reset_all();
        proxy.pass();
    }
    to_server.join().unwrap();
    to_client.join().unwrap();
    for (who, r) in ["client", "server"].iter().zip(receivers) {
        let got = r.join().unwrap();
        let v = got.get(&1).cloned().unwrap_or_default();
        assert!(
            v.iter().copied().eq(0..N),
            "{who}: {} of {N} arrived, first difference at {:?}",
            v.len(),
            v.iter()
                .zip(0..)
                .find(|(a, b)| **a != *b)
                .map(|(a, b)| (b, *a))
        );
    }
    println!(
        "both directions, {N} reliable messages each, 3 blackholes then cuts: all exactly once in \
         order in {:?}; client {} reconnects, {} retransmits; server {} retransmits",
        started.elapsed(),
        client.stats().reconnects,
        client.stats().retransmits,
        server.stats().retransmits
    );
}

/// A listener that keeps no sessions (resume window zero): after a break the dialer's
/// reconnect is a fresh pipe, and the reliable messages it had not had acknowledged are sent
/// on it again, reported as SessionLost with their number (never silent).
#[test]
fn a_fresh_session_after_a_break_sends_the_unacknowledged_again_and_says_so() {
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .channel(1, reliable())
            .resume_window(Duration::ZERO),
    )
    .unwrap();
    let (proxy, proxied) = proxy_in_front(&listener);
    let (on_change, changes) = state_sink();
    let (on_error, errors) = common::error_sink();
    let client = duct::dial(
        &proxied,
        DialOptions::default()
            .channel(1, reliable())
            .timeout(Duration::from_secs(1))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(5),
                Duration::from_millis(50),
            ))
            .on_state_change(on_change)
            .on_error(on_error),
    )
    .unwrap();
    let first = listener.accept_timeout(T).unwrap();
    client.send(msg(1, 0)).unwrap();
    assert_eq!(index(&common::recv(&first)), 0);
    // Its ack goes back within the ack delay (5 ms); give it time to arrive.
    thread::sleep(Duration::from_millis(100));
    // Acks stop coming back: what is sent now stays unacknowledged.
    proxy.blackhole();
    for i in 1..=10 {
        client.send(msg(1, i)).unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    // Cut while black, then pass (see blackhole_then_cut_loses_nothing_in_either_direction).
    proxy.reset_all();
    proxy.pass();
    let fresh = listener.accept_timeout(T).unwrap();
    let got = receive(&fresh, &BTreeMap::from([(1, 10)]), T);
    assert_eq!(
        got[&1],
        (1..=10).collect::<Vec<_>>(),
        "sent again on the fresh pipe"
    );
    let back = common::wait_for_change(&changes, "reconnected", |c| {
        c.to == PipeState::Connected && c.from == PipeState::Reconnecting
    });
    let cause = back.cause.expect("a lost session is never silent");
    assert_eq!(cause.kind(), duct::ErrorKind::SessionLost, "{cause}");
    assert!(
        cause.to_string().contains("10 reliable messages"),
        "{cause}"
    );
    let deadline = Instant::now() + T;
    let reported = std::iter::from_fn(|| {
        errors
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    })
    .any(|e| e.kind() == duct::ErrorKind::SessionLost);
    assert!(reported, "SessionLost reported to on_error");
}
