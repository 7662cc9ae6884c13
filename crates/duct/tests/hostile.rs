//! Hostile peers against a listener: garbage, headers that claim 4 GiB before and after the
//! handshake, fragmented messages that announce gigabytes, silence, and a flood of
//! handshakes that never finish. Each is dropped (and reported), nothing allocates what a
//! header claims, and ordinary dialers are served all the while.
//!
//! This binary installs the counting allocator so that it can measure what the listener
//! allocated while the hostile clients were handled.

#[global_allocator]
static ALLOC: duct_sys::alloc_count::CountingAlloc = duct_sys::alloc_count::CountingAlloc;

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use duct::{ErrorKind, ListenOptions};
use duct_proto::wire::control::close_code;
use duct_proto::wire::{flags, FrameKind, Header};
use duct_proto::Event;
use duct_sys::alloc_count::snapshot;

const MIB: u64 = 1024 * 1024;

/// What a hostile client did, and what it saw.
#[derive(Debug)]
struct Outcome {
    name: &'static str,
    /// Its address as the listener names it.
    addr: String,
    /// The close code of a CLOSE frame it received, if any.
    close_code: Option<u16>,
    /// How the connection ended: `Ok(reset)` for EOF (false) or a reset (true).
    ended: Result<bool, String>,
}

/// How long a dropped client may wait to see its connection end.
const DROP_WITHIN: Duration = Duration::from_secs(3);

/// 64 KiB of (seeded) random bytes instead of a handshake.
fn random_bytes(addr: &str) -> Outcome {
    let mut raw = RawStream::connect(addr).unwrap();
    let me = raw.local_addr_string();
    let mut garbage = vec![0u8; 64 * 1024];
    fastrand::Rng::with_seed(0xD0C7).fill(&mut garbage);
    // The listener may hang up before it has read everything: a write error is expected.
    let _ = raw.write_all(&garbage);
    let ended = raw.read_until_closed(DROP_WITHIN).map(|(_, reset)| reset);
    Outcome {
        name: "random bytes",
        addr: me,
        close_code: None,
        ended,
    }
}

/// A HELLO header that claims a 4 GiB payload, before any handshake.
fn huge_header_before_handshake(addr: &str) -> Outcome {
    let mut raw = RawStream::connect(addr).unwrap();
    let me = raw.local_addr_string();
    let mut h = Header::new(FrameKind::Hello);
    h.payload_len = u32::MAX;
    raw.write_all(&h.encode()).unwrap();
    let ended = raw.read_until_closed(DROP_WITHIN).map(|(bytes, reset)| {
        assert!(
            bytes.is_empty(),
            "the listener answered a 4 GiB HELLO header with {} bytes",
            bytes.len()
        );
        reset
    });
    Outcome {
        name: "4 GiB header before the handshake",
        addr: me,
        close_code: None,
        ended,
    }
}

/// A real handshake, then whatever `attack` writes; reads until the listener's CLOSE and
/// the end of the connection.
fn after_handshake(addr: &str, name: &'static str, attack: impl FnOnce(&mut RawPeer)) -> Outcome {
    let mut raw = RawPeer::dial(addr);
    let me = raw.stream.local_addr_string();
    raw.handshake();
    attack(&mut raw);
    let close_code = match raw.read_until_event(DROP_WITHIN) {
        Some(Event::PeerClosed(c)) => Some(c.code),
        _ => None,
    };
    let ended = raw
        .stream
        .read_until_closed(DROP_WITHIN)
        .map(|(_, reset)| reset);
    Outcome {
        name,
        addr: me,
        close_code,
        ended,
    }
}

/// After the handshake, a DATA header that claims a 4 GiB payload.
fn huge_data_header(addr: &str) -> Outcome {
    after_handshake(addr, "4 GiB DATA header after the handshake", |raw| {
        let h = Header::data(0, u32::MAX);
        raw.stream.write_all(&h.encode()).unwrap();
    })
}

/// After the handshake, the first fragment of a message that announces 4 GiB in all.
fn huge_fragmented_message(addr: &str) -> Outcome {
    after_handshake(addr, "fragmented message announcing 4 GiB", |raw| {
        let mut h = Header::data(1, 0);
        h.flags = flags::MORE_FRAGMENTS;
        h.aux = u32::MAX;
        raw.stream.write_all(&frame(h, &[7u8; 1024])).unwrap();
    })
}

/// After the handshake, first fragments on 1000 channels, each announcing a message of
/// 64 MiB (the limit): 62.5 GiB announced, 1 MiB sent. Then it hangs up.
fn many_announced_messages(addr: &str) -> Outcome {
    let mut raw = RawPeer::dial(addr);
    let me = raw.stream.local_addr_string();
    raw.handshake();
    let mut burst = Vec::new();
    for channel in 0..1000u16 {
        let mut h = Header::data(channel, 0);
        h.flags = flags::MORE_FRAGMENTS;
        h.aux = 64 * 1024 * 1024;
        burst.extend(frame(h, &[channel as u8; 1024]));
    }
    raw.stream.write_all(&burst).unwrap();
    // The listener reads all of it before it sees the end of the stream.
    raw.stream.shutdown(Shutdown::Both).unwrap();
    Outcome {
        name: "1000 announced 64 MiB messages",
        addr: me,
        close_code: None,
        ended: Ok(false),
    }
}

/// Connects and says nothing.
fn silent(addr: &str) -> Outcome {
    let mut raw = RawStream::connect(addr).unwrap();
    let me = raw.local_addr_string();
    let ended = raw.read_until_closed(DROP_WITHIN).map(|(bytes, reset)| {
        assert!(
            bytes.is_empty(),
            "a silent client was sent {} bytes",
            bytes.len()
        );
        reset
    });
    Outcome {
        name: "silent",
        addr: me,
        close_code: None,
        ended,
    }
}

#[test]
fn hostile_clients_are_dropped_while_others_are_served() {
    let (on_error, errors) = error_sink();
    let server = EchoServer::start(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .on_error(on_error)
            .handshake_timeout(Duration::from_millis(200)),
    );
    let addr = server.addr.as_str();
    server.check_echo(3);

    let before = snapshot();
    let (outcomes, served) = thread::scope(|s| {
        let hostile: [fn(&str) -> Outcome; 6] = [
            random_bytes,
            huge_header_before_handshake,
            huge_data_header,
            huge_fragmented_message,
            many_announced_messages,
            silent,
        ];
        let handles: Vec<_> = hostile
            .into_iter()
            .map(|h| s.spawn(move || h(addr)))
            .collect();
        // Ordinary clients, interleaved with the hostile ones while they run (a bounded
        // number, so that what they allocate stays small next to the bound checked below).
        let mut served = 0;
        while served < 5 || (served < 40 && handles.iter().any(|h| !h.is_finished())) {
            check_echo(addr, 3);
            served += 1;
        }
        let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (outcomes, served)
    });
    let during = snapshot().since(&before);
    eprintln!("{served} ordinary clients served; allocated meanwhile: {during:?}");

    for o in &outcomes {
        match &o.ended {
            Ok(_) => {}
            Err(e) => panic!("{}: not dropped: {e}", o.name),
        }
    }
    let code = |name: &str| outcomes.iter().find(|o| o.name == name).unwrap().close_code;
    assert_eq!(
        code("4 GiB DATA header after the handshake"),
        Some(close_code::PROTOCOL_ERROR),
        "the listener says why it drops a 4 GiB frame"
    );
    assert_eq!(
        code("fragmented message announcing 4 GiB"),
        Some(close_code::MESSAGE_TOO_LARGE)
    );

    // Clients that never completed a handshake are reported to on_error, each once, naming
    // the client; clients that did became pipes, whose recv reported the failure.
    let before_handshake = [
        ("random bytes", ErrorKind::Protocol),
        ("4 GiB header before the handshake", ErrorKind::Protocol),
        ("silent", ErrorKind::TimedOut),
    ];
    let reported: Vec<duct::Error> = errors.try_iter().collect();
    for (name, kind) in before_handshake {
        let who = &outcomes.iter().find(|o| o.name == name).unwrap().addr;
        let mine: Vec<_> = reported.iter().filter(|e| names(e, who)).collect();
        assert_eq!(
            mine.len(),
            1,
            "{name} ({who}): on_error saw {mine:?}; all: {reported:?}"
        );
        assert_eq!(mine[0].kind(), kind, "{name}: {}", mine[0]);
    }
    let after_handshake = [
        ("4 GiB DATA header after the handshake", ErrorKind::Protocol),
        (
            "fragmented message announcing 4 GiB",
            ErrorKind::MessageTooLarge,
        ),
        ("1000 announced 64 MiB messages", ErrorKind::Disconnected),
    ];
    // Pipes whose failure the reactor found while nobody was calling report it too (each at
    // most once); nothing else is reported, and never an ordinary client.
    let attackers: Vec<&str> = outcomes
        .iter()
        .filter(|o| {
            before_handshake.iter().any(|(n, _)| *n == o.name)
                || after_handshake.iter().any(|(n, _)| *n == o.name)
        })
        .map(|o| o.addr.as_str())
        .collect();
    for e in &reported {
        let whose: Vec<_> = attackers.iter().filter(|a| names(e, a)).collect();
        assert_eq!(
            whose.len(),
            1,
            "a report that names no single attacker: {e}"
        );
    }
    for (name, _) in after_handshake {
        let who = &outcomes.iter().find(|o| o.name == name).unwrap().addr;
        let n = reported.iter().filter(|e| names(e, who)).count();
        assert!(n <= 1, "{name} reported {n} times: {reported:?}");
    }
    let mut ended = Vec::new();
    let deadline = Instant::now() + T;
    for (name, kind) in after_handshake {
        let who = outcomes
            .iter()
            .find(|o| o.name == name)
            .unwrap()
            .addr
            .clone();
        let e = loop {
            if let Some(i) = ended
                .iter()
                .position(|(peer, _): &(String, duct::Error)| *peer == who)
            {
                break ended.swap_remove(i).1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match server.ended.recv_timeout(left) {
                Ok(x) => ended.push(x),
                Err(_) => panic!("{name}: the pipe's recv never failed"),
            }
        };
        assert_eq!(e.kind(), kind, "{name}: {e}");
    }

    assert!(
        during.bytes < 256 * MIB,
        "{} MiB allocated while hostile clients claimed gigabytes",
        during.bytes / MIB
    );
    // And the listener still serves.
    server.check_echo(3);
}

/// Whether `e`'s message names the client `who` (as `tcp://127.0.0.1:PORT`, followed by
/// something that is not a digit).
fn names(e: &duct::Error, who: &str) -> bool {
    let text = e.to_string();
    text.match_indices(who)
        .any(|(i, m)| !text[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// More connections in their handshake than `max_pending_handshakes`: the oldest are
/// dropped (and reported), and a real dialer still gets through.
#[test]
fn handshake_flood_is_bounded() {
    const MAX: usize = 4;
    const FLOOD: usize = 12;
    let (on_error, errors) = error_sink();
    let server = EchoServer::start(
        "tcp://127.0.0.1:0",
        ListenOptions::default()
            .on_error(on_error)
            .max_pending_handshakes(MAX)
            .handshake_timeout(Duration::from_secs(20)),
    );
    let mut flood: Vec<RawStream> = (0..FLOOD)
        .map(|_| RawStream::connect(&server.addr).unwrap())
        .collect();
    // Each connection past MAX pushes out the oldest: the first FLOOD - MAX are dropped.
    for (i, raw) in flood.iter_mut().take(FLOOD - MAX).enumerate() {
        raw.read_until_closed(DROP_WITHIN)
            .unwrap_or_else(|e| panic!("flood connection {i} was not dropped: {e}"));
    }
    // A real dialer pushes out one more and is served.
    server.check_echo(3);
    flood[FLOOD - MAX]
        .read_until_closed(DROP_WITHIN)
        .expect("the oldest pending handshake makes room for the real dialer");
    let reported: Vec<duct::Error> = errors.try_iter().collect();
    assert_eq!(reported.len(), FLOOD - MAX + 1, "{reported:?}");
    for e in &reported {
        assert!(e.to_string().contains("handshakes pending"), "{e}");
    }
    // The newest ones are still pending (they would time out after 20 s).
    for raw in &mut flood[FLOOD - MAX + 1..] {
        raw.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut b = [0u8; 1];
        let r = std::io::Read::read(raw, &mut b);
        assert!(
            matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "a pending handshake was dropped early: {r:?}"
        );
    }
}

/// Messages that came in the same read as bad input, before it, reach the application: a
/// caller waiting in `recv_into` (whose read hands whole messages straight into its batch)
/// gets them, and the error at its next call.
#[test]
fn messages_read_before_bad_input_are_received_before_the_error() {
    let listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();
    let mut raw = RawPeer::dial(&addr);
    raw.handshake();
    let pipe = listener.accept().unwrap();
    let receiver = thread::spawn(move || {
        let mut batch = duct::MessageBatch::new();
        let opts = duct::RecvOptions::default().timeout(Duration::from_secs(10));
        let first = pipe.recv_into(&mut batch, 100, &opts);
        let got: Vec<Vec<u8>> = batch.iter().map(|m| m.payload().to_vec()).collect();
        let next = pipe.recv_into(&mut batch, 100, &opts);
        (
            first.map_err(|e| e.to_string()),
            got,
            next.map_err(|e| e.kind()),
        )
    });
    // The receiver is waiting (and reading) when the bytes come, all in one write.
    thread::sleep(Duration::from_millis(200));
    let mut bytes = Vec::new();
    for i in 0..3u8 {
        let mut h = Header::data(0, 4);
        h.payload_len = 4;
        bytes.extend_from_slice(&h.encode());
        bytes.extend_from_slice(&[i; 4]);
    }
    bytes.extend_from_slice(&[0xFF; 24]); // no such frame kind
    raw.stream.write_all(&bytes).unwrap();
    let (first, got, next) = receiver.join().unwrap();
    assert_eq!(first, Ok(3));
    assert_eq!(got, [vec![0u8; 4], vec![1; 4], vec![2; 4]]);
    assert_eq!(next.map(|_| ()), Err(ErrorKind::Protocol));
}
