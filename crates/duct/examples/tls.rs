//! Mutual TLS between a listener and a dialer, with certificates generated at run time.
//!
//! What it shows:
//! - a `tls://` listener that presents a server certificate and requires client
//!   certificates signed by the cluster's CA ([`TlsOptions::server`] + [`TlsOptions::client_ca`]);
//! - a dialer that trusts that CA and presents its own certificate
//!   ([`TlsOptions::client`] + [`TlsOptions::identity`]), exchanging a few messages;
//! - a dialer without a client certificate: refused, `ErrorKind::PermissionDenied`, not
//!   retryable; the listener reports the refusal to its `on_error` as `ErrorKind::Tls`;
//! - a dialer that does not trust the server's CA: `ErrorKind::Tls` (it refused the server).
//!
//! The certificates (a CA, a server certificate for `localhost`/`127.0.0.1`, a client
//! certificate) are made with `rcgen` into a temporary directory that is removed at the end.
//! In production they come from your PKI; duct reads PEM files at `listen`/`dial` (and at
//! each reconnect, so renewed certificates are picked up).
//!
//! Run: `cargo run -p duct --example tls` (add `--fast`, or set `DUCT_EXAMPLE_FAST=1`, for
//! fewer messages). Exits non-zero if a check fails.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duct::{CloseOptions, DialOptions, ErrorKind, ListenOptions, Message, RecvOptions, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// `--fast` or `DUCT_EXAMPLE_FAST=1`: the CI setting.
fn fast() -> bool {
    std::env::args().any(|a| a == "--fast")
        || std::env::var("DUCT_EXAMPLE_FAST").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A directory for the PEM files, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("duct-example-tls-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed CA.
fn make_ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A certificate for `localhost` and `127.0.0.1` signed by `ca`, written as `<stem>.pem`
/// (chain) and `<stem>.key` (private key).
fn make_leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    dir: &TempDir,
    stem: &str,
) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, ca)?;
    write(&dir.file(&format!("{stem}.pem")), &cert.pem())?;
    write(&dir.file(&format!("{stem}.key")), &key.serialize_pem())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()).into())
}

/// Fails the example with `what` unless `ok`.
fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// Answers every message in upper case, until the dialer closes the pipe.
fn echo_upper_case(pipe: &duct::Pipe) -> duct::Result<()> {
    loop {
        match pipe.recv() {
            Ok(msg) => {
                let reply = String::from_utf8_lossy(msg.payload()).to_uppercase();
                pipe.send(Message::new(reply).with_channel(msg.channel()))?;
            }
            Err(e) if e.kind() == ErrorKind::Closed => {
                println!("server: the dialer closed the pipe ({e})");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn main() -> Result<()> {
    let messages = if fast() { 3 } else { 10 };
    let started = Instant::now();

    // 1. A PKI: the cluster's CA, a server and a client certificate; and a CA nobody uses.
    let dir = TempDir::new()?;
    let ca = make_ca("duct example cluster CA")?;
    write(&dir.file("ca.pem"), &ca.pem())?;
    make_leaf(
        &ca,
        "world-1",
        ExtendedKeyUsagePurpose::ServerAuth,
        &dir,
        "server",
    )?;
    make_leaf(
        &ca,
        "gateway",
        ExtendedKeyUsagePurpose::ClientAuth,
        &dir,
        "client",
    )?;
    write(&dir.file("other-ca.pem"), &make_ca("some other CA")?.pem())?;
    println!("certificates generated in {}", dir.0.display());

    // 2. The listener: server certificate, client certificates required (mTLS). Refused
    //    handshakes never reach `accept`; they are reported here.
    let (refusals_tx, refusals) = mpsc::channel::<duct::Error>();
    let server_tls = TlsOptions::server(dir.file("server.pem"), dir.file("server.key"))
        .client_ca(dir.file("ca.pem"));
    let listener = duct::listen(
        "tls://127.0.0.1:0",
        ListenOptions::default().tls(server_tls).on_error(move |e| {
            let _ = refusals_tx.send(e.clone());
        }),
    )?;
    let addr = listener.local_addr().to_string();
    println!("listening on {addr} (mTLS: client certificates signed by the cluster CA)");

    // 3. A dialer with a client certificate: accepted.
    let client_tls = TlsOptions::client(dir.file("ca.pem"))
        .identity(dir.file("client.pem"), dir.file("client.key"));
    let opts = DialOptions::default()
        .timeout(Duration::from_secs(5))
        .tls(client_tls);
    let pipe = duct::dial(&addr, opts)?;
    // The handshake ran in duct's background reactor: the pipe waits for `accept`.
    let accepted = listener.accept_timeout(Duration::from_secs(5))?;
    println!("server: accepted {}", accepted.peer_addr());
    let server = thread::spawn(move || echo_upper_case(&accepted));
    println!(
        "dialer with a client certificate: connected to {} (session {:#x})",
        pipe.peer_addr(),
        pipe.session_id()
    );
    let wait = RecvOptions::default().timeout(Duration::from_secs(5));
    for i in 0..messages {
        let text = format!("inventory update {i}: +1 health potion");
        pipe.send(text.clone())?;
        let reply = pipe.recv_with(&wait)?;
        let reply = String::from_utf8_lossy(reply.payload()).into_owned();
        println!("  sent {text:?}, got {reply:?}");
        if reply != text.to_uppercase() {
            return Err(format!("message {i}: unexpected reply {reply:?}").into());
        }
    }
    println!("  ok: {messages} replies, each the upper-cased message");
    let stats = pipe.stats();
    println!(
        "  stats: {} messages / {} bytes sent, {} / {} received",
        stats.msgs_sent, stats.bytes_sent, stats.msgs_received, stats.bytes_received
    );
    pipe.close_with(CloseOptions::default().reason(4000, "done"))?;
    server.join().map_err(|_| "the server thread panicked")??;

    // 4. A dialer without a client certificate: the listener refuses it during the TLS
    //    handshake (a certificate_required alert), which the dialer sees as PermissionDenied.
    println!("dialer without a client certificate:");
    let anonymous = TlsOptions::client(dir.file("ca.pem"));
    match duct::dial(&addr, DialOptions::default().tls(anonymous)) {
        Ok(_) => return Err("a dialer without a client certificate was accepted".into()),
        Err(e) => {
            println!("  refused: {e}");
            check(
                e.kind() == ErrorKind::PermissionDenied,
                "the error kind is PermissionDenied",
            )?;
            check(!e.is_retryable(), "it is not retryable")?;
        }
    }
    match refusals.recv_timeout(Duration::from_secs(5)) {
        Ok(e) => {
            println!("  the listener's on_error saw: {e}");
            check(e.kind() == ErrorKind::Tls, "the listener reports it as Tls")?;
        }
        Err(_) => return Err("the listener did not report the refusal".into()),
    }

    // 5. A dialer that does not trust the server's CA: it refuses the server itself.
    println!("dialer trusting another CA:");
    let wrong_ca = TlsOptions::client(dir.file("other-ca.pem"))
        .identity(dir.file("client.pem"), dir.file("client.key"));
    match duct::dial(&addr, DialOptions::default().tls(wrong_ca)) {
        Ok(_) => return Err("a server certificate from an unknown CA was accepted".into()),
        Err(e) => {
            println!("  failed: {e}");
            check(e.kind() == ErrorKind::Tls, "the error kind is Tls")?;
        }
    }

    println!("tls example OK in {:.2?}", started.elapsed());
    Ok(())
}
