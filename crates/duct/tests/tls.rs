//! TLS and mutual TLS over tcp (rustls): round trips of large messages with a verified
//! server, refusals (unknown CA, wrong name, missing client certificate) with the right
//! error kinds, TLS under reconnects with reliable channels, and interop with OpenSSL's
//! command-line tools (a TLS stack that is not rustls). Certificates are generated per test
//! run with rcgen, in a temporary directory.
#![cfg(feature = "tls")]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duct::{
    Addr, ChannelOptions, DialOptions, ErrorKind, Heartbeat, ListenOptions, Message, PipeState,
    Reconnect, RecvOptions, TlsOptions,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

mod common;
use common::{assert_payload, error_sink, pattern, state_sink, TempDir, T};

/// Receives one message within `T`.
fn recv_t(pipe: &duct::Pipe) -> duct::Result<Message> {
    pipe.recv_with(&RecvOptions::default().timeout(T))
}

/// Errors reported so far (waits up to `T` for at least `n`).
fn reported(rx: &mpsc::Receiver<duct::Error>, n: usize) -> Vec<duct::Error> {
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => got.push(e),
            Err(_) => break,
        }
    }
    got
}

/// A CA with a server certificate (localhost, 127.0.0.1) and a client certificate, written
/// as PEM files; plus a second CA nobody uses, for "unknown CA" cases.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki::named("duct test CA")
    }

    /// A PKI whose CA has this name (two PKIs with the same CA name look alike to a verifier
    /// until it checks the signature).
    fn named(ca_name: &str) -> Pki {
        let dir = TempDir::new();
        let ca = ca(ca_name);
        let other = ca_only("some other CA");
        let server = leaf(&ca, "duct test server", ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf(&ca, "duct test client", ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.pem());
        write("other-ca.pem", &other);
        write("server.pem", &server.0);
        write("server.key", &server.1);
        write("client.pem", &client.0);
        write("client.key", &client.1);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self) -> TlsOptions {
        TlsOptions::server(self.path("server.pem"), self.path("server.key"))
    }

    fn mtls_server(&self) -> TlsOptions {
        self.server().client_ca(self.path("ca.pem"))
    }

    fn client(&self) -> TlsOptions {
        TlsOptions::client(self.path("ca.pem"))
    }

    fn client_with_identity(&self) -> TlsOptions {
        self.client()
            .identity(self.path("client.pem"), self.path("client.key"))
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    CertifiedIssuer::self_signed(ca_params(name), KeyPair::generate().unwrap()).unwrap()
}

fn ca_only(name: &str) -> String {
    ca(name).pem()
}

/// A certificate for localhost and 127.0.0.1 signed by `ca`: (chain PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_addr(listener: &duct::Listener) -> String {
    let addr = listener.local_addr();
    assert!(
        matches!(addr, Addr::Tls(_)),
        "a TLS listener shows tls://: {addr}"
    );
    addr.to_string()
}

fn quick() -> DialOptions {
    DialOptions::default().timeout(Duration::from_secs(5))
}

#[test]
fn large_messages_round_trip_over_a_verified_server() {
    let pki = Pki::new();
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default().tls(pki.server()),
    )
    .unwrap();
    let addr = tls_addr(&listener);
    let server = thread::spawn(move || {
        let pipe = listener.accept_timeout(T).unwrap();
        assert!(
            matches!(pipe.peer_addr(), Addr::Tls(_)),
            "{}",
            pipe.peer_addr()
        );
        // Echo everything back.
        loop {
            match recv_t(&pipe) {
                Ok(m) => pipe.send(m).unwrap(),
                Err(e) if e.kind() == ErrorKind::Closed => break,
                Err(e) => panic!("server recv: {e}"),
            }
        }
    });
    let pipe = duct::dial(&addr, quick().tls(pki.client())).unwrap();
    assert!(matches!(pipe.peer_addr(), Addr::Tls(_)));
    // Sizes around TLS's 16 KiB record limit, and large ones split into many records.
    let sizes = [
        0,
        1,
        100,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        1 << 20,
        4 << 20,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let want = pattern(len, i as u32);
        pipe.send(Message::new(want.clone())).unwrap();
        let got = recv_t(&pipe).unwrap();
        assert_payload(got.payload(), &want, &format!("message {i} ({len} bytes)"));
    }
    // Many small ones in flight at once.
    let n = 5000u32;
    let sender = {
        let pipe = pipe.clone();
        thread::spawn(move || {
            for i in 0..n {
                pipe.send(Message::new(i.to_be_bytes().to_vec())).unwrap();
            }
        })
    };
    for i in 0..n {
        let m = recv_t(&pipe).unwrap();
        assert_eq!(m.payload(), &i.to_be_bytes()[..], "message {i} in order");
    }
    sender.join().unwrap();
    let stats = pipe.stats();
    assert_eq!(stats.msgs_received, u64::from(n) + sizes.len() as u64);
    pipe.close().unwrap();
    server.join().unwrap();
}

#[test]
fn tls_on_a_tcp_address_and_server_name_override() {
    let pki = Pki::new();
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().tls(pki.server()),
    )
    .unwrap();
    let Addr::Tls(sa) = listener.local_addr() else {
        panic!(
            "tcp:// with TLS settings shows tls://: {}",
            listener.local_addr()
        );
    };
    let server = thread::spawn(move || {
        let pipe = listener.accept_timeout(T).unwrap();
        let m = recv_t(&pipe).unwrap();
        pipe.send(m).unwrap();
        let _ = recv_t(&pipe);
    });
    // Dial by IP but verify the name "localhost" (also in the certificate).
    let tls = pki.client().server_name("localhost");
    let pipe = duct::dial(&format!("tcp://{sa}"), quick().tls(tls)).unwrap();
    pipe.send(Message::new(b"hello".to_vec())).unwrap();
    assert_eq!(recv_t(&pipe).unwrap().payload(), b"hello");
    pipe.close().unwrap();
    server.join().unwrap();
}

#[test]
fn unknown_ca_and_wrong_name_are_tls_errors_not_retryable() {
    let pki = Pki::new();
    let (errors, seen) = error_sink();
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default().tls(pki.server()).on_error(errors),
    )
    .unwrap();
    let addr = tls_addr(&listener);

    let started = Instant::now();
    let err = duct::dial(
        &addr,
        quick().tls(TlsOptions::client(pki.path("other-ca.pem"))),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&addr), "names the address: {text}");
    assert!(
        text.contains("UnknownIssuer"),
        "gives rustls's reason: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "fails at once, not by timeout"
    );

    let err = duct::dial(
        &addr,
        quick().tls(pki.client().server_name("game-01.internal")),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");

    // The listener saw our alerts and reported them.
    let reported = reported(&seen, 2);
    assert!(reported.len() >= 2, "{reported:?}");
    for e in &reported {
        assert_eq!(
            e.kind(),
            ErrorKind::PermissionDenied,
            "the client refused us: {e}"
        );
    }
    // A client that reconnects does not retry a TLS refusal: dial fails once, at once.
    let err = duct::dial(
        &addr,
        quick()
            .tls(TlsOptions::client(pki.path("other-ca.pem")))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(10),
                Duration::from_millis(50),
            )),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
}

/// A pipe that reconnects to a server whose new certificate it refuses ends there, with
/// `Tls`, after that one attempt (refusals that retrying cannot fix are not retried).
#[test]
fn a_reconnecting_dialer_stops_at_a_refused_server_certificate() {
    let pki = Pki::new();
    let impostor = Pki::named("another CA");
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default().tls(pki.server()),
    )
    .unwrap();
    let addr = tls_addr(&listener);
    let (errors, seen) = error_sink();
    let pipe = duct::dial(
        &addr,
        quick()
            .tls(pki.client())
            .reconnect(Reconnect::exponential(
                Duration::from_millis(10),
                Duration::from_millis(50),
            ))
            .on_error(errors),
    )
    .unwrap();
    let served = listener.accept().unwrap();
    drop(served);
    drop(listener);
    // The same port, now with a certificate our CA did not sign. (The port may stay bound a
    // moment after the drop: on Windows the reactor's duplicate handle of the socket goes
    // with its registration, which the reactor thread drops. Prompt release of a dropped
    // listener's name is tested on its own in tests/shm.rs; here it is only the setting.)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let _impostor = loop {
        match duct::listen(&addr, ListenOptions::default().tls(impostor.server())) {
            Ok(l) => break l,
            Err(e)
                if e.kind() == ErrorKind::AddressInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("listening again on {addr}: {e}"),
        }
    };
    let err = recv_t(&pipe).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    std::thread::sleep(Duration::from_millis(200)); // time for attempts that should not happen
    let tls_reports = seen
        .try_iter()
        .filter(|e| e.kind() == ErrorKind::Tls)
        .count();
    assert_eq!(tls_reports, 1, "one refused attempt, then no more");
    assert_eq!(pipe.state(), duct::PipeState::Closed);
}

#[test]
fn mtls_refuses_a_client_without_a_certificate_and_accepts_one_with() {
    let pki = Pki::new();
    let (errors, seen) = error_sink();
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default()
            .tls(pki.mtls_server())
            .on_error(errors),
    )
    .unwrap();
    let addr = tls_addr(&listener);

    let err = duct::dial(&addr, quick().tls(pki.client())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    let reported = reported(&seen, 1);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].kind(), ErrorKind::Tls, "{}", reported[0]);
    assert!(
        reported[0]
            .to_string()
            .contains("peer sent no certificates"),
        "{}",
        reported[0]
    );

    // A client certificate from another CA is refused too.
    let other = Pki::named("another test CA");
    let err = duct::dial(
        &addr,
        quick().tls(
            pki.client()
                .identity(other.path("client.pem"), other.path("client.key")),
        ),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");

    // With a certificate from the right CA: accepted.
    let pipe = duct::dial(&addr, quick().tls(pki.client_with_identity())).unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    pipe.send(Message::new(b"signed".to_vec())).unwrap();
    assert_eq!(recv_t(&accepted).unwrap().payload(), b"signed");
    assert!(listener.accept_timeout(Duration::from_millis(100)).is_err());
}

#[test]
fn bad_settings_fail_listen_and_dial_at_once() {
    let pki = Pki::new();
    let err = duct::listen("tls://127.0.0.1:0", ListenOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
    let missing = TlsOptions::server(pki.path("nope.pem"), pki.path("server.key"));
    let err = duct::listen("tls://127.0.0.1:0", ListenOptions::default().tls(missing)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
    assert!(err.to_string().contains("nope.pem"), "{err}");
    // A key that does not match the certificate.
    let mismatched = TlsOptions::server(pki.path("server.pem"), pki.path("client.key"));
    let err = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default().tls(mismatched),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    let err = duct::dial("tls://127.0.0.1:9", quick()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls);
    assert!(err.to_string().contains("DialOptions::tls"), "{err}");
    let err = duct::dial("uds://@duct-tls-none", quick().tls(pki.client())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

/// TLS with heartbeats, reconnect and a reliable channel: a proxy between the two resets the
/// connection several times; each reconnect runs a fresh TLS handshake, and every reliable
/// message arrives exactly once, in order.
#[test]
fn reliable_channel_survives_resets_over_tls() {
    let pki = Pki::new();
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default()
            .tls(pki.server())
            .channel(1, ChannelOptions::default().reliable(true))
            .heartbeat(Heartbeat::new(Duration::from_millis(100), 5)),
    )
    .unwrap();
    let Addr::Tls(target) = listener.local_addr() else {
        unreachable!()
    };
    let proxy = duct_testkit::ChaosProxy::start(target).unwrap();
    let (on_change, changes) = state_sink();
    let client = duct::dial(
        &format!("tls://{}", proxy.addr()),
        quick()
            .tls(pki.client())
            .channel(1, ChannelOptions::default().reliable(true))
            .heartbeat(Heartbeat::new(Duration::from_millis(100), 5))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(5),
                Duration::from_millis(50),
            ))
            .on_state_change(on_change),
    )
    .unwrap();
    let server = listener.accept_timeout(T).unwrap();
    const N: u32 = 3000;
    const CUTS: u32 = 5;
    let (done_tx, done_rx) = mpsc::channel();
    let sender = {
        let client = client.clone();
        thread::spawn(move || {
            for i in 0..N {
                let m = Message::new(i.to_be_bytes().to_vec()).with_channel(1);
                client.send(m).unwrap();
                if i % 20 == 0 {
                    // Spread the traffic over the cuts (about half a second).
                    thread::sleep(Duration::from_millis(3));
                }
            }
            done_tx.send(()).unwrap();
        })
    };
    let chaos = thread::spawn(move || {
        let mut cuts = 0;
        while cuts < CUTS {
            thread::sleep(Duration::from_millis(40));
            if client.state() == PipeState::Connected && proxy.connections_open() > 0 {
                proxy.reset_all();
                cuts += 1;
            }
        }
        (client, proxy)
    });
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < N && Instant::now() < deadline {
        if let Ok(m) = server.recv_with(&RecvOptions::default().timeout(Duration::from_millis(50)))
        {
            assert_eq!(m.channel(), 1);
            let i = u32::from_be_bytes(m.payload().try_into().unwrap());
            assert_eq!(i, next, "exactly once, in order");
            next += 1;
        }
    }
    assert_eq!(next, N, "every reliable message arrived");
    sender.join().unwrap();
    done_rx.recv().unwrap();
    let (client, _proxy) = chaos.join().unwrap();
    // Every cut ends in a reconnect (the last may still be under way).
    let deadline = Instant::now() + T;
    while client.stats().reconnects < u64::from(CUTS) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let reconnects = client.stats().reconnects;
    let seen: Vec<_> = changes.try_iter().collect();
    assert!(
        reconnects >= u64::from(CUTS),
        "reconnects {reconnects}: {seen:#?}"
    );
    assert!(
        seen.iter().any(|c| c.to == PipeState::Reconnecting),
        "{seen:?}"
    );
    println!("tls: {N} reliable messages across {CUTS} resets, {reconnects} reconnects");
}

// ---------------------------------------------------------------------------------------------
// Interop with OpenSSL's command-line tools
// ---------------------------------------------------------------------------------------------

/// The openssl binary, or `None` (the test says it skips) when it is not installed.
fn openssl() -> Option<&'static str> {
    let ok = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some("openssl")
    } else {
        println!("SKIPPED: the openssl command-line tool is not installed");
        None
    }
}

/// A child process killed and reaped on drop (also when the test fails).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `openssl s_client` against `port` with `extra` arguments; returns what it printed
/// (stdout and stderr together) once it exits or after `T`.
fn s_client(port: u16, pki: &Pki, extra: &[&str]) -> String {
    let ca = pki.path("ca.pem");
    let mut args = vec![
        "s_client".to_owned(),
        "-connect".to_owned(),
        format!("127.0.0.1:{port}"),
        "-CAfile".to_owned(),
        ca.display().to_string(),
        "-verify_return_error".to_owned(),
        "-verify_hostname".to_owned(),
        "localhost".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = Reaped(
        Command::new("openssl")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client"),
    );
    // Keep stdin open for a moment (the server's answer or alert arrives), then close it:
    // s_client exits at EOF on stdin.
    let stdin = child.0.stdin.take();
    thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let mut out = String::new();
    let mut err = String::new();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.0.kill();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    format!("{out}\n{err}")
}

#[test]
fn openssl_s_client_verifies_a_duct_listener_and_mtls_needs_its_certificate() {
    if openssl().is_none() {
        return;
    }
    let pki = Pki::new();
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default()
            .tls(pki.server())
            .handshake_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let Addr::Tls(sa) = listener.local_addr() else {
        unreachable!()
    };
    let out = s_client(sa.port(), &pki, &[]);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    // TLS 1.2 works too.
    let out = s_client(sa.port(), &pki, &["-tls1_2"]);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("TLSv1.2"), "{out}");

    let mtls = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default()
            .tls(pki.mtls_server())
            .handshake_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let Addr::Tls(sa) = mtls.local_addr() else {
        unreachable!()
    };
    // Without a client certificate: the server's alert 116 (certificate required).
    let out = s_client(sa.port(), &pki, &[]);
    assert!(
        out.contains("alert number 116") || out.contains("certificate required"),
        "{out}"
    );
    // With one: verified both ways, and no alert.
    let cert = pki.path("client.pem").display().to_string();
    let key = pki.path("client.key").display().to_string();
    let out = s_client(sa.port(), &pki, &["-cert", &cert, "-key", &key]);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!out.contains("alert"), "{out}");
}

#[test]
fn duct_dial_completes_tls_with_openssl_s_server_then_fails_cleanly() {
    if openssl().is_none() {
        return;
    }
    let pki = Pki::new();
    // A free port for s_server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Reaped(
        Command::new("openssl")
            .args(["s_server", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(pki.path("server.pem"))
            .arg("-key")
            .arg(pki.path("server.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server"),
    );
    let _stdin = server.0.stdin.take().unwrap(); // s_server exits at EOF on stdin
    let stdout = server.0.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |what: &str| -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + T;
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let hit = line.contains(what);
            seen.push(line);
            if hit {
                return seen;
            }
        }
        panic!("s_server never printed {what:?}: {seen:?}");
    };
    wait_for("ACCEPT");
    let err = duct::dial(
        &format!("tls://127.0.0.1:{port}"),
        DialOptions::default()
            .timeout(Duration::from_secs(2))
            .tls(pki.client()),
    )
    .unwrap_err();
    // TLS succeeded; the duct handshake did not (s_server is not duct).
    assert!(
        matches!(
            err.kind(),
            ErrorKind::TimedOut | ErrorKind::Disconnected | ErrorKind::Protocol
        ),
        "fails at the duct handshake, not at TLS: {err}"
    );
    // s_server completed the TLS handshake (it prints the cipher then).
    wait_for("CIPHER is");
    println!("duct dial vs openssl s_server: {err}");
}
