//! The handshake's authentication hook: the dialer's token travels in HELLO, the listener's
//! `authenticate` sees it with the peer's address; a refusal is REJECT with the reason, which
//! the dialer gets as a non-retryable `PermissionDenied`, and a reconnecting dialer that is
//! refused stops instead of storming the listener.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duct::{DialOptions, ErrorKind, ListenOptions, PipeState, Reconnect};

mod common;
use common::{proxy_in_front, recv, state_sink, wait_for_change, T};

#[test]
fn the_hook_sees_the_token_and_the_peer_address() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().authenticate(move |peer| {
            record
                .lock()
                .unwrap()
                .push((peer.token.clone(), peer.addr.to_string()));
            match peer.token.as_deref() {
                Some(b"sesame") => Ok(()),
                _ => Err("unknown token".to_owned()),
            }
        }),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let acceptor = thread::spawn(move || (listener.accept_timeout(T).unwrap(), listener));
    let dialer = duct::dial(&addr, DialOptions::default().token(*b"sesame")).unwrap();
    let (accepted, _listener) = acceptor.join().unwrap();
    dialer.send("in").unwrap();
    assert_eq!(recv(&accepted).payload(), b"in");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.as_deref(), Some(&b"sesame"[..]));
    assert_eq!(
        seen[0].1,
        dialer.local_addr().to_string(),
        "the dialer's address"
    );
}

#[test]
fn a_refusal_is_permission_denied_with_the_reason_and_not_retryable() {
    let (on_error, errors) = common::error_sink();
    let listener = duct::listen(
        if cfg!(unix) {
            "uds://@duct-auth-refuse"
        } else {
            "tcp://127.0.0.1:0"
        },
        ListenOptions::default()
            .authenticate(|peer| match peer.token.as_deref() {
                Some(b"sesame") => Ok(()),
                Some(_) => Err("wrong token for world-3".to_owned()),
                None => Err("a token is required".to_owned()),
            })
            .on_error(on_error),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    for (opts, reason) in [
        (DialOptions::default(), "a token is required"),
        (
            DialOptions::default().token(*b"guess"),
            "wrong token for world-3",
        ),
    ] {
        let e = duct::dial(&addr, opts.timeout(T)).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains(reason), "{e}");
        // The listener says so too.
        let report = errors
            .recv_timeout(T)
            .expect("the listener reports the refusal");
        assert_eq!(report.kind(), ErrorKind::PermissionDenied, "{report}");
        assert!(report.to_string().contains(reason), "{report}");
    }
    // Good clients are still served.
    let acceptor = thread::spawn(move || listener.accept_timeout(T).map(|p| (p, listener)));
    let ok = duct::dial(&addr, DialOptions::default().token(*b"sesame")).unwrap();
    let (accepted, _listener) = acceptor.join().unwrap().unwrap();
    ok.send("x").unwrap();
    assert_eq!(recv(&accepted).payload(), b"x");
}

/// A dialer whose token is revoked while it is away: its reconnect is refused once, and the
/// pipe ends with PermissionDenied instead of trying again and again.
#[test]
fn a_refused_reconnect_ends_the_pipe_without_a_storm() {
    let revoked = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, c) = (Arc::clone(&revoked), Arc::clone(&calls));
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().authenticate(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            if r.load(Ordering::SeqCst) {
                Err("token revoked".to_owned())
            } else {
                Ok(())
            }
        }),
    )
    .unwrap();
    let (proxy, proxied) = proxy_in_front(&listener);
    let (on_change, changes) = state_sink();
    let dialer = duct::dial(
        &proxied,
        DialOptions::default()
            .token(*b"sesame")
            .timeout(Duration::from_secs(1))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(5),
                Duration::from_millis(20),
            ))
            .on_state_change(on_change),
    )
    .unwrap();
    let _accepted = listener.accept_timeout(T).unwrap();
    revoked.store(true, Ordering::SeqCst);
    proxy.reset_all();
    let end = wait_for_change(&changes, "the pipe ends", |c| c.to == PipeState::Closed);
    let cause = end.cause.expect("why it ended");
    assert_eq!(cause.kind(), ErrorKind::PermissionDenied, "{cause}");
    assert!(cause.to_string().contains("token revoked"), "{cause}");
    let e = dialer.send("x").expect_err("ended");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    // No storm: the hook saw the first connect and one refused reconnect, and no more.
    let quiet = Instant::now() + Duration::from_millis(200);
    while Instant::now() < quiet {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(unix)]
fn my_ids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

/// On uds both ends learn the other process's credentials, and the hook sees them; on tcp
/// there are none.
#[test]
#[cfg(unix)]
fn uds_pipes_know_the_peer_process_and_tcp_ones_do_not() {
    let (uid, gid) = my_ids();
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let listener = duct::listen(
        "uds://@duct-auth-creds",
        ListenOptions::default().authenticate(move |peer| {
            *record.lock().unwrap() = peer.credentials;
            Ok(())
        }),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let acceptor = thread::spawn(move || (listener.accept_timeout(T).unwrap(), listener));
    let dialer = duct::dial(&addr, DialOptions::default()).unwrap();
    let (accepted, _listener) = acceptor.join().unwrap();
    for creds in [
        dialer.peer_credentials(),
        accepted.peer_credentials(),
        *seen.lock().unwrap(),
    ] {
        let c = creds.expect("credentials on uds");
        assert_eq!((c.uid, c.gid), (uid, gid));
        assert_eq!(c.pid, Some(std::process::id()));
    }
    let listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let addr = listener.local_addr().to_string();
    let acceptor = thread::spawn(move || (listener.accept_timeout(T).unwrap(), listener));
    let dialer = duct::dial(&addr, DialOptions::default()).unwrap();
    let (accepted, _listener) = acceptor.join().unwrap();
    assert!(dialer.peer_credentials().is_none());
    assert!(accepted.peer_credentials().is_none());
}

/// The uid/gid filter: a listed user gets in; an unlisted one (and any tcp peer, which has no
/// credentials) gets PermissionDenied naming why.
#[test]
#[cfg(unix)]
fn the_uid_filter_admits_listed_users_only() {
    let (uid, gid) = my_ids();
    let open = duct::listen(
        "uds://@duct-auth-uid-ok",
        ListenOptions::default().allow_uids([uid]),
    )
    .unwrap();
    let addr = open.local_addr().to_string();
    let acceptor = thread::spawn(move || open.accept_timeout(T).map(|p| (p, open)));
    let ok = duct::dial(&addr, DialOptions::default()).unwrap();
    let (accepted, _open) = acceptor.join().unwrap().unwrap();
    ok.send("x").unwrap();
    assert_eq!(recv(&accepted).payload(), b"x");

    let others = [uid.wrapping_add(1), uid.wrapping_add(2)];
    let closed = duct::listen(
        "uds://@duct-auth-uid-refused",
        ListenOptions::default()
            .allow_uids(others)
            .allow_gids([gid.wrapping_add(1)]),
    )
    .unwrap();
    let e = duct::dial(
        &closed.local_addr().to_string(),
        DialOptions::default().timeout(T),
    )
    .expect_err("not an allowed user");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains(&format!("uid {uid}")), "{e}");
    assert!(!e.is_retryable());

    let tcp = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().allow_uids([uid]),
    )
    .unwrap();
    let e = duct::dial(
        &tcp.local_addr().to_string(),
        DialOptions::default().timeout(T),
    )
    .expect_err("tcp has no credentials");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
}

/// A path listener's socket file lets only its owner connect, unless told otherwise.
#[test]
#[cfg(unix)]
fn the_socket_file_is_owner_only_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new();
    for (opts, want) in [
        (ListenOptions::default(), 0o600),
        (ListenOptions::default().socket_mode(0o660), 0o660),
    ] {
        let path = dir.fresh("mode");
        let listener = duct::listen(&format!("uds://{}", path.display()), opts).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}", path.display());
        // The owner still connects.
        let addr = listener.local_addr().to_string();
        let acceptor = thread::spawn(move || listener.accept_timeout(T).map(|p| (p, listener)));
        let _dialer = duct::dial(&addr, DialOptions::default()).unwrap();
        acceptor.join().unwrap().unwrap();
    }
}

/// A listener at its limit of pipes refuses new dialers (retryable, saying why) and takes
/// them again once a pipe is gone.
#[test]
fn a_full_listener_refuses_until_a_pipe_goes() {
    let listener = duct::listen(
        if cfg!(unix) {
            "uds://@duct-auth-max-pipes"
        } else {
            "tcp://127.0.0.1:0"
        },
        ListenOptions::default().max_pipes(2),
    )
    .unwrap();
    let addr = listener.local_addr().to_string();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let d = duct::dial(&addr, DialOptions::default()).unwrap();
        kept.push((d, listener.accept_timeout(T).unwrap()));
    }
    let e = duct::dial(&addr, DialOptions::default().timeout(T)).expect_err("full");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("limit of 2 pipes"), "{e}");
    // One pipe goes (both ends dropped): a dialer gets in again.
    drop(kept.pop());
    let deadline = Instant::now() + T;
    let third = loop {
        match duct::dial(&addr, DialOptions::default().timeout(T)) {
            Ok(p) => break p,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let accepted = listener.accept_timeout(T).unwrap();
    third.send("in").unwrap();
    assert_eq!(recv(&accepted).payload(), b"in");
}
