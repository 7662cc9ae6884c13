//! Errors of `listen` and `dial`: the kind, whether it is retryable, and that the message
//! names the address. Covers refused and timed-out dials, addresses in use, stale Unix socket
//! files, malformed addresses, options and schemes not implemented yet, and protocol version
//! mismatches in both directions (against a hand-written peer).

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixListener;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use duct::{dial, listen, DialOptions, ErrorKind, ListenOptions, TlsOptions};
use duct_proto::wire::control::{
    reject_code, Hello, Reject, Welcome, VERSION_MAJOR, VERSION_MINOR,
};
use duct_proto::wire::{FrameKind, Header};

/// A short dial timeout for dials that are expected to fail.
fn quick() -> DialOptions {
    DialOptions::default().timeout(Duration::from_secs(2))
}

#[track_caller]
fn assert_names(e: &duct::Error, what: &str) {
    assert!(
        e.to_string().contains(what),
        "the error does not name {what:?}: {e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Refused and timed-out dials
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_tcp_port() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    let e = expect_kind(dial(&addr, quick()), ErrorKind::ConnectionRefused);
    assert!(e.is_retryable());
    assert_names(&e, &addr);
}

#[test]
#[cfg(unix)]
fn refused_uds_path_without_socket() {
    let dir = TempDir::new();
    let addr = format!("uds://{}", dir.fresh("none").display());
    let e = expect_kind(dial(&addr, quick()), ErrorKind::ConnectionRefused);
    assert!(e.is_retryable());
    assert_names(&e, &addr);
}

#[test]
#[cfg(unix)]
fn refused_uds_abstract_name() {
    let addr = format!(
        "uds://@duct-test-nobody-{}-{}",
        std::process::id(),
        unique()
    );
    let e = expect_kind(dial(&addr, quick()), ErrorKind::ConnectionRefused);
    assert!(e.is_retryable());
    assert_names(&e, &addr);
}

/// Accepts one connection within [`T`] and holds it, silent, until `release` fires.
fn silent_server<L: Send + 'static>(
    listener: L,
    accept: impl Fn(&L) -> std::io::Result<Box<dyn Send>> + Send + 'static,
) -> (mpsc::Sender<()>, JoinHandle<bool>) {
    let (release, released) = mpsc::channel();
    let h = thread::spawn(move || {
        let deadline = Instant::now() + T;
        let held = loop {
            match accept(&listener) {
                Ok(s) => break Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        break None;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("silent server accept: {e}"),
            }
        };
        let _ = released.recv_timeout(T);
        held.is_some()
    });
    (release, h)
}

#[test]
fn dial_timeout_tcp_server_never_answers() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = format!("tcp://{}", l.local_addr().unwrap());
    let (release, server) =
        silent_server(l, |l| l.accept().map(|(s, _)| Box::new(s) as Box<dyn Send>));
    let start = Instant::now();
    let r = dial(
        &addr,
        DialOptions::default().timeout(Duration::from_millis(300)),
    );
    let took = start.elapsed();
    release.send(()).unwrap();
    assert!(server.join().unwrap(), "the dialer never connected");
    let e = expect_kind(r, ErrorKind::TimedOut);
    assert!(e.is_retryable());
    assert_names(&e, &addr);
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
#[cfg(unix)]
fn dial_timeout_uds_server_never_answers() {
    let dir = TempDir::new();
    let path = dir.fresh("silent");
    let l = UnixListener::bind(&path).unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = format!("uds://{}", path.display());
    let (release, server) =
        silent_server(l, |l| l.accept().map(|(s, _)| Box::new(s) as Box<dyn Send>));
    let start = Instant::now();
    let r = dial(
        &addr,
        DialOptions::default().timeout(Duration::from_millis(300)),
    );
    let took = start.elapsed();
    release.send(()).unwrap();
    assert!(server.join().unwrap(), "the dialer never connected");
    let e = expect_kind(r, ErrorKind::TimedOut);
    assert!(e.is_retryable());
    assert_names(&e, &addr);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Addresses in use, socket files
// ---------------------------------------------------------------------------------------------

/// Checks that `listener` still accepts and serves a dialer.
fn assert_serves(listener: &duct::Listener) {
    let addr = listener.local_addr().to_string();
    let (d, a) = thread::scope(|s| {
        let acceptor = s.spawn(|| listener.accept_timeout(T));
        let d = dial(&addr, quick()).unwrap_or_else(|e| panic!("dial {addr}: {e}"));
        (d, acceptor.join().unwrap().unwrap())
    });
    d.send("still serving").unwrap();
    assert_eq!(recv(&a).payload(), b"still serving");
}

#[test]
fn address_in_use_tcp() {
    let first = listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let addr = first.local_addr().to_string();
    let e = expect_kind(
        listen(&addr, ListenOptions::default()),
        ErrorKind::AddressInUse,
    );
    assert!(!e.is_retryable());
    assert_names(&e, &addr);
    assert_serves(&first);
}

#[test]
#[cfg(unix)]
fn address_in_use_uds_path() {
    let dir = TempDir::new();
    let addr = format!("uds://{}", dir.fresh("busy").display());
    let first = listen(&addr, ListenOptions::default()).unwrap();
    let e = expect_kind(
        listen(&addr, ListenOptions::default()),
        ErrorKind::AddressInUse,
    );
    assert!(!e.is_retryable());
    assert_names(&e, &addr);
    // The failed attempt left the live listener's socket file alone.
    assert_serves(&first);
}

#[test]
#[cfg(unix)]
fn address_in_use_uds_abstract() {
    let addr = format!("uds://@duct-test-busy-{}-{}", std::process::id(), unique());
    let first = listen(&addr, ListenOptions::default()).unwrap();
    let e = expect_kind(
        listen(&addr, ListenOptions::default()),
        ErrorKind::AddressInUse,
    );
    assert!(!e.is_retryable());
    assert_names(&e, &addr);
    assert_serves(&first);
}

#[test]
#[cfg(unix)]
fn uds_path_taken_by_a_regular_file_is_left_alone() {
    let dir = TempDir::new();
    let path = dir.fresh("file");
    std::fs::write(&path, b"not a socket").unwrap();
    let addr = format!("uds://{}", path.display());
    let e = expect_kind(
        listen(&addr, ListenOptions::default()),
        ErrorKind::AddressInUse,
    );
    assert_names(&e, &addr);
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[test]
#[cfg(unix)]
fn stale_uds_socket_file_is_taken_over() {
    let dir = TempDir::new();
    let path = dir.fresh("stale");
    drop(UnixListener::bind(&path).unwrap()); // std leaves the file behind
    assert!(path.exists(), "the stale socket file is there");
    let addr = format!("uds://{}", path.display());
    let listener = listen(&addr, ListenOptions::default()).unwrap();
    assert_eq!(listener.local_addr().to_string(), addr);
    assert_serves(&listener);
}

#[test]
#[cfg(unix)]
fn uds_socket_file_is_removed_with_its_listener() {
    let dir = TempDir::new();
    let path = dir.fresh("gone");
    let listener = listen(
        &format!("uds://{}", path.display()),
        ListenOptions::default(),
    )
    .unwrap();
    assert!(path.exists());
    drop(listener);
    assert!(!path.exists(), "the socket file outlived its listener");
}

// ---------------------------------------------------------------------------------------------
// Malformed addresses, unsupported schemes and options
// ---------------------------------------------------------------------------------------------

const INVALID: &[&str] = &[
    "",
    "127.0.0.1:7000",       // no scheme
    "://127.0.0.1:7000",    // empty scheme
    "udp://127.0.0.1:7000", // unknown scheme
    "http://localhost:80",
    "tcp://127.0.0.1",       // no port
    "tcp://127.0.0.1:",      // empty port
    "tcp://127.0.0.1:70000", // port out of range
    "tcp://127.0.0.1:http",  // port not a number
    "tcp://:7000",           // empty host
    "tcp://::1:7000",        // IPv6 without brackets
    "tcp://[::1:7000",       // unclosed bracket
    "tcp://127.0.0.1:7000/path",
    "uds://tmp/game.sock", // relative path
    "uds://",              // empty path
    "uds://@",             // empty abstract name
];

#[test]
fn invalid_addresses_are_invalid_address() {
    for &addr in INVALID {
        for (what, r) in [
            ("listen", listen(addr, ListenOptions::default()).map(|_| ())),
            ("dial", dial(addr, quick()).map(|_| ())),
        ] {
            let e = r.expect_err(&format!("{what} {addr:?} succeeded"));
            assert_eq!(e.kind(), ErrorKind::InvalidAddress, "{what} {addr:?}: {e}");
            assert!(!e.is_retryable(), "{what} {addr:?}");
            assert!(
                e.to_string().contains(&format!("{addr:?}")),
                "{what} {addr:?}: the message does not quote the address: {e}"
            );
        }
    }
}

#[cfg(target_os = "linux")]
const UNSUPPORTED: &[&str] = &["pipe://x"];
#[cfg(all(unix, not(target_os = "linux")))]
const UNSUPPORTED: &[&str] = &["pipe://x", "shm://game"];
// (Windows has named pipes, and no shm:// or uds://.)
#[cfg(not(unix))]
const UNSUPPORTED: &[&str] = &["shm://game", "uds:///tmp/game.sock", "uds://@game"];

#[test]
fn unimplemented_schemes_are_unsupported() {
    for &addr in UNSUPPORTED {
        for (what, r) in [
            ("listen", listen(addr, ListenOptions::default()).map(|_| ())),
            ("dial", dial(addr, quick()).map(|_| ())),
        ] {
            let e = r.expect_err(&format!("{what} {addr:?} succeeded"));
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{what} {addr:?}: {e}");
            assert!(!e.is_retryable());
        }
    }
}

/// DESIGN.md: "Every error says what happened and to what (address, channel, sizes)"; the
/// brief for this suite: the address is quoted in the message.
#[test]
fn unimplemented_scheme_errors_name_the_address() {
    let mut missing = Vec::new();
    for &addr in UNSUPPORTED {
        for (what, r) in [
            ("listen", listen(addr, ListenOptions::default()).map(|_| ())),
            ("dial", dial(addr, quick()).map(|_| ())),
        ] {
            let e = r.expect_err(addr);
            if !e.to_string().contains(addr) {
                missing.push(format!("{what} {addr}: {e}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "errors that do not name the address:\n{}",
        missing.join("\n")
    );
}

#[test]
fn bad_tls_settings_fail_dial_before_connecting() {
    let listener = listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();
    let cases: Vec<(&str, DialOptions, ErrorKind)> = vec![
        (
            "/nonexistent/ca.pem",
            DialOptions::default().tls(TlsOptions::client("/nonexistent/ca.pem")),
            ErrorKind::Tls,
        ),
        (
            "TlsOptions::client",
            DialOptions::default().tls(TlsOptions::server("/x/c.pem", "/x/k.pem")),
            ErrorKind::Tls,
        ),
    ];
    for (named, opts, kind) in cases {
        let e = expect_kind(dial(&addr, opts), kind);
        assert!(!e.is_retryable());
        assert_names(&e, named);
        assert_names(&e, &addr);
    }
    // None of them connected.
    expect_kind(
        listener.accept_timeout(Duration::from_millis(100)),
        ErrorKind::TimedOut,
    );
}

#[test]
#[cfg(unix)]
fn tls_settings_where_tls_cannot_run_bind_nothing() {
    let dir = TempDir::new();
    let path = dir.fresh("opts");
    let addr = format!("uds://{}", path.display());
    let cases: Vec<(&str, ListenOptions, ErrorKind)> = vec![(
        "TLS runs over tcp only",
        ListenOptions::default().tls(TlsOptions::server(
            "/nonexistent/c.pem",
            "/nonexistent/k.pem",
        )),
        ErrorKind::Unsupported,
    )];
    for (named, opts, kind) in cases {
        let e = expect_kind(listen(&addr, opts), kind);
        assert!(!e.is_retryable());
        assert_names(&e, named);
        assert!(
            !path.exists(),
            "{named}: a refused listen created the socket file"
        );
    }
    // The address is free.
    let listener = listen(&addr, ListenOptions::default()).unwrap();
    assert_serves(&listener);
    // A tls:// listener with unreadable files binds nothing either.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let tls = format!("tls://127.0.0.1:{port}");
    let e = expect_kind(
        listen(
            &tls,
            ListenOptions::default().tls(TlsOptions::server("/nonexistent/c.pem", "/x/k.pem")),
        ),
        ErrorKind::Tls,
    );
    assert_names(&e, "/nonexistent/c.pem");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port was not bound");
}

// ---------------------------------------------------------------------------------------------
// Protocol versions
// ---------------------------------------------------------------------------------------------

fn hello(version: (u8, u8)) -> Vec<u8> {
    let hello = Hello {
        version,
        capabilities: 0,
        max_frame_payload: 64 * 1024,
        heartbeat_ms: 0,
        max_message_size: 1 << 20,
        last_received_seq: 0,
        instance_id: 1,
        resume_session_id: 0,
        extensions: Vec::new(),
    };
    frame(Header::new(FrameKind::Hello), &hello.encode())
}

/// A dialer speaking major version 99 gets a REJECT with INCOMPATIBLE_VERSION and is hung
/// up on; the listener reports it to `on_error` as `Incompatible` and keeps accepting.
#[test]
fn listener_rejects_incompatible_dialer() {
    let (on_error, errors) = error_sink();
    let listener = Arc::new(
        listen(
            "tcp://127.0.0.1:0",
            ListenOptions::default().on_error(on_error),
        )
        .unwrap(),
    );
    let addr = listener.local_addr().to_string();
    let acceptor = {
        let l = listener.clone();
        thread::spawn(move || l.accept_timeout(T))
    };

    let mut raw = RawStream::connect(&addr).unwrap();
    let raw_addr = raw.local_addr_string();
    raw.write_all(&hello((99, 0))).unwrap();
    let (h, payload) = raw.read_frame().expect("an answer to the HELLO");
    assert_eq!(h.kind, FrameKind::Reject);
    let reject = Reject::decode(&payload).unwrap();
    assert_eq!(reject.code, reject_code::INCOMPATIBLE_VERSION, "{reject:?}");
    assert_eq!(reject.version, (VERSION_MAJOR, VERSION_MINOR));
    assert!(reject.reason.contains("99"), "{reject:?}");
    let (rest, _) = raw
        .read_until_closed(T)
        .expect("the listener hangs up after the REJECT");
    assert!(rest.is_empty(), "{} bytes after the REJECT", rest.len());

    let e = errors
        .recv_timeout(T)
        .expect("on_error saw the rejected dialer");
    assert_eq!(e.kind(), ErrorKind::Incompatible, "{e}");
    assert!(!e.is_retryable());
    assert_names(&e, &raw_addr);

    // accept is still running, and serves the next, compatible dialer.
    let d = dial(&addr, quick()).unwrap();
    let a = acceptor
        .join()
        .unwrap()
        .expect("accept after a rejected dialer");
    assert_eq!(a.session_id(), d.session_id());
    assert!(errors.try_recv().is_err(), "no other error reported");
}

/// Runs a hand-written listener that reads the dialer's HELLO and answers with `answer`;
/// returns the dial's result.
fn dial_against(answer: Vec<u8>) -> duct::Result<duct::Pipe> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", l.local_addr().unwrap());
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut raw = RawStream::Tcp(s);
        let (h, payload) = raw.read_frame().expect("the dialer's HELLO");
        assert_eq!(h.kind, FrameKind::Hello);
        let hello = Hello::decode(&payload).unwrap();
        assert_eq!(hello.version, (VERSION_MAJOR, VERSION_MINOR));
        raw.write_all(&answer).unwrap();
        // Hold the connection until the dialer hangs up.
        let _ = raw.read_until_closed(T);
    });
    let r = dial(&addr, quick());
    close_if_ok(&r);
    server.join().unwrap();
    r
}

/// Should a dial that was expected to fail succeed, close its pipe, so that the server
/// thread (waiting for the dialer to hang up) ends.
fn close_if_ok(r: &duct::Result<duct::Pipe>) {
    if let Ok(p) = r {
        let _ = p.close_with(duct::CloseOptions::default().linger(Duration::ZERO));
    }
}

#[test]
fn dial_rejected_for_incompatible_version() {
    let reject = Reject {
        version: (99, 0),
        code: reject_code::INCOMPATIBLE_VERSION,
        reason: "this listener speaks 99.0".into(),
    };
    let e = expect_kind(
        dial_against(frame(Header::new(FrameKind::Reject), &reject.encode())),
        ErrorKind::Incompatible,
    );
    assert!(!e.is_retryable());
    assert_names(&e, "99");
}

#[test]
fn dial_welcomed_by_incompatible_version() {
    let welcome = Welcome {
        version: (99, 0),
        capabilities: 0,
        max_frame_payload: 64 * 1024,
        heartbeat_ms: 0,
        max_message_size: 1 << 20,
        last_received_seq: 0,
        session_id: 7,
        resumed: false,
        extensions: Vec::new(),
    };
    let e = expect_kind(
        dial_against(frame(Header::new(FrameKind::Welcome), &welcome.encode())),
        ErrorKind::Incompatible,
    );
    assert!(!e.is_retryable());
    assert_names(&e, "99");
}

/// API.md: a rejected handshake is `PermissionDenied` on the dialer, with the listener's
/// reason in the message, and is not retryable.
#[test]
fn dial_rejected_with_permission_denied_names_the_reason() {
    let reject = Reject {
        version: (VERSION_MAJOR, VERSION_MINOR),
        code: reject_code::PERMISSION_DENIED,
        reason: "not on the guest list".into(),
    };
    let e = expect_kind(
        dial_against(frame(Header::new(FrameKind::Reject), &reject.encode())),
        ErrorKind::PermissionDenied,
    );
    assert!(!e.is_retryable());
    assert_names(&e, "not on the guest list");
}

/// A listener that is shutting down or overloaded: retrying later may work.
#[test]
fn dial_rejected_as_unavailable_is_retryable() {
    let reject = Reject {
        version: (VERSION_MAJOR, VERSION_MINOR),
        code: reject_code::UNAVAILABLE,
        reason: "draining".into(),
    };
    let e = dial_against(frame(Header::new(FrameKind::Reject), &reject.encode())).unwrap_err();
    assert!(e.is_retryable(), "{e} ({:?})", e.kind());
    assert_names(&e, "draining");
}

#[test]
fn dial_to_a_server_that_hangs_up_during_the_handshake() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", l.local_addr().unwrap());
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut raw = RawStream::Tcp(s);
        raw.read_frame().expect("the dialer's HELLO");
        // Hang up without answering.
    });
    let r = dial(&addr, quick());
    server.join().unwrap();
    let e = expect_kind(r, ErrorKind::Disconnected);
    assert!(e.is_retryable());
    assert_names(&e, &addr);
}

#[test]
fn dial_to_a_server_speaking_another_protocol() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", l.local_addr().unwrap());
    let server = thread::spawn(move || {
        let (mut s, _): (TcpStream, _) = l.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let _ = RawStream::Tcp(s).read_until_closed(T);
    });
    let r = dial(&addr, quick());
    close_if_ok(&r);
    server.join().unwrap();
    let e = expect_kind(r, ErrorKind::Protocol);
    assert!(!e.is_retryable());
    assert_names(&e, &addr);
}
