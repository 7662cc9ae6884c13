//! `duct listen` and `duct dial`: lines of text through a pipe, for poking at duct by
//! hand (and for the CLI's own tests).
//!
//! Messages print one per line on stdout, as UTF-8 (invalid bytes replaced) or, with
//! `--hex`, as hex. Notes (the bound address, connections coming and going) go to stderr,
//! so that stdout holds only messages.
//!
//! TLS: `--tls-*` flags build a [`duct::TlsOptions`] ([`listen_tls`], [`dial_tls`]). A
//! `tls://` address needs them (a listener its certificate and key, a dialer its CA); on a
//! `tcp://` address they turn TLS on; other transports have no TLS.

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duct::{Message, Pipe, SendOptions, TlsOptions};

use crate::cli::{DialArgs, ListenArgs};
use crate::error::{bail, Context, Result};

/// The scheme of `addr` in lower case (`tcp`, `tls`, ...), or "" without `://`.
fn scheme(addr: &str) -> String {
    addr.split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Checks that TLS settings (`given`) fit `addr`: a `tls://` address needs them (`needs`
/// names the flags), and only `tls://` and `tcp://` take them.
fn check_tls_fits(addr: &str, given: bool, needs: &str) -> Result<()> {
    match (scheme(addr).as_str(), given) {
        ("tls", false) => bail!("{addr}: a tls:// address needs {needs}"),
        ("tls" | "tcp", _) | (_, false) => Ok(()),
        (_, true) => bail!("{addr}: the --tls-* flags apply to tls:// and tcp:// addresses only"),
    }
}

/// The listener's TLS settings from `--tls-cert`, `--tls-key` and `--tls-client-ca`:
/// `TlsOptions::server(cert, key)`, plus `.client_ca(ca)`; `None` without `--tls-cert`.
/// An error if the address is `tls://` without them, or not tcp/tls with them.
pub fn listen_tls(args: &ListenArgs) -> Result<Option<TlsOptions>> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let server = TlsOptions::server(cert, key);
            Some(match &args.tls_client_ca {
                Some(ca) => server.client_ca(ca),
                None => server,
            })
        }
        (None, None) if args.tls_client_ca.is_some() => {
            bail!("--tls-client-ca needs --tls-cert and --tls-key")
        }
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    check_tls_fits(&args.addr, tls.is_some(), "--tls-cert and --tls-key")?;
    Ok(tls)
}

/// The dialer's TLS settings from `--tls-ca`, `--tls-identity-cert`, `--tls-identity-key` and
/// `--tls-server-name`: `TlsOptions::client(ca)`, plus `.identity(cert, key)` and
/// `.server_name(name)`; `None` without `--tls-ca`. An error if the address is `tls://`
/// without it, or not tcp/tls with it.
pub fn dial_tls(args: &DialArgs) -> Result<Option<TlsOptions>> {
    let Some(ca) = &args.tls_ca else {
        if args.tls_identity_cert.is_some()
            || args.tls_identity_key.is_some()
            || args.tls_server_name.is_some()
        {
            bail!("--tls-identity-cert, --tls-identity-key and --tls-server-name need --tls-ca");
        }
        check_tls_fits(&args.addr, false, "--tls-ca")?;
        return Ok(None);
    };
    let mut tls = TlsOptions::client(ca);
    match (&args.tls_identity_cert, &args.tls_identity_key) {
        (Some(cert), Some(key)) => tls = tls.identity(cert, key),
        (None, None) => {}
        _ => bail!("--tls-identity-cert and --tls-identity-key go together"),
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.server_name(name);
    }
    check_tls_fits(&args.addr, true, "--tls-ca")?;
    Ok(Some(tls))
}

/// Whether an error from `recv` means the connection ended (rather than failed).
fn is_closed(e: &duct::Error) -> bool {
    matches!(
        e.kind(),
        duct::ErrorKind::Closed | duct::ErrorKind::Disconnected
    )
}

/// Writes `msg` as one line on stdout.
fn print_message(msg: &Message, hex: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if hex {
        for b in msg.payload() {
            write!(out, "{b:02x}")?;
        }
        writeln!(out)?;
    } else {
        writeln!(out, "{}", String::from_utf8_lossy(msg.payload()))?;
    }
    out.flush()
}

/// `duct listen ADDR [--echo] [--hex] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]`.
pub fn listen(args: ListenArgs) -> Result<()> {
    let mut options = duct::ListenOptions::default();
    if let Some(tls) = listen_tls(&args)? {
        options = options.tls(tls);
    }
    let listener =
        duct::listen(&args.addr, options).with_context(|| format!("listen {}", args.addr))?;
    eprintln!("listening on {}", listener.local_addr());
    loop {
        let pipe = listener.accept().context("accept")?;
        let (echo, hex) = (args.echo, args.hex);
        std::thread::Builder::new()
            .name("duct-listen-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(&pipe, echo, hex) {
                    eprintln!("duct: {e}");
                }
                let _ = pipe.close();
            })?;
    }
}

fn serve_connection(pipe: &Pipe, echo: bool, hex: bool) -> Result<()> {
    loop {
        let msg = match pipe.recv() {
            Ok(msg) => msg,
            Err(e) if is_closed(&e) => return Ok(()),
            Err(e) => return Err(e).context("recv"),
        };
        print_message(&msg, hex)?;
        if echo {
            let options = SendOptions::default().channel(msg.channel());
            pipe.send_with(msg, &options).context("echo")?;
        }
    }
}

/// `duct dial ADDR [--channel N] [--wait TIME] [--hex] [--tls-ca PEM ...]`.
pub fn dial(args: DialArgs) -> Result<()> {
    let mut options = duct::DialOptions::default();
    if let Some(tls) = dial_tls(&args)? {
        options = options.tls(tls);
    }
    let pipe = duct::dial(&args.addr, options).with_context(|| format!("dial {}", args.addr))?;
    let received = Arc::new(AtomicU64::new(0));
    let closing = Arc::new(AtomicBool::new(false));
    {
        let (pipe, received, closing, hex) = (
            pipe.clone(),
            Arc::clone(&received),
            Arc::clone(&closing),
            args.hex,
        );
        std::thread::Builder::new()
            .name("duct-dial-recv".into())
            .spawn(move || loop {
                match pipe.recv() {
                    Ok(msg) => {
                        if print_message(&msg, hex).is_err() {
                            std::process::exit(1);
                        }
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) if closing.load(Ordering::SeqCst) => return,
                    Err(e) if is_closed(&e) => {
                        eprintln!("duct: the peer closed the connection");
                        std::process::exit(0);
                    }
                    Err(e) => {
                        eprintln!("duct: recv: {e}");
                        std::process::exit(1);
                    }
                }
            })?;
    }
    let options = SendOptions::default().channel(args.channel);
    let mut sent = 0u64;
    for line in io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        let line = line.strip_suffix('\r').map(str::to_string).unwrap_or(line);
        pipe.send_with(Message::new(line.into_bytes()), &options)
            .context("send")?;
        sent += 1;
    }
    if let Some(wait) = args.wait {
        let deadline = Instant::now() + wait;
        while received.load(Ordering::SeqCst) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    closing.store(true, Ordering::SeqCst);
    pipe.close().context("close")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn listen_args(args: &[&str]) -> ListenArgs {
        let mut argv = vec!["duct", "listen"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Listen(l) => l,
            other => panic!("not listen: {other:?}"),
        }
    }

    fn dial_args(args: &[&str]) -> DialArgs {
        let mut argv = vec!["duct", "dial"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Dial(d) => d,
            other => panic!("not dial: {other:?}"),
        }
    }

    #[test]
    fn listen_tls_options_from_flags() {
        let args = listen_args(&[
            "tls://127.0.0.1:0",
            "--tls-cert",
            "s.pem",
            "--tls-key",
            "s.key",
        ]);
        assert_eq!(
            listen_tls(&args).unwrap(),
            Some(TlsOptions::server("s.pem", "s.key"))
        );
        let args = listen_args(&[
            "tls://127.0.0.1:0",
            "--tls-cert",
            "s.pem",
            "--tls-key",
            "s.key",
            "--tls-client-ca",
            "ca.pem",
        ]);
        assert_eq!(
            listen_tls(&args).unwrap(),
            Some(TlsOptions::server("s.pem", "s.key").client_ca("ca.pem"))
        );
        // TLS on tcp:// when asked; nothing asked, nothing set.
        let args = listen_args(&["tcp://127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k"]);
        assert!(listen_tls(&args).unwrap().is_some());
        assert_eq!(
            listen_tls(&listen_args(&["tcp://127.0.0.1:0"])).unwrap(),
            None
        );
        assert_eq!(listen_tls(&listen_args(&["uds://@x"])).unwrap(), None);
    }

    #[test]
    fn dial_tls_options_from_flags() {
        let args = dial_args(&["tls://127.0.0.1:7443", "--tls-ca", "ca.pem"]);
        assert_eq!(dial_tls(&args).unwrap(), Some(TlsOptions::client("ca.pem")));
        let args = dial_args(&[
            "TLS://127.0.0.1:7443",
            "--tls-ca",
            "ca.pem",
            "--tls-identity-cert",
            "c.pem",
            "--tls-identity-key",
            "c.key",
            "--tls-server-name",
            "localhost",
        ]);
        assert_eq!(
            dial_tls(&args).unwrap(),
            Some(
                TlsOptions::client("ca.pem")
                    .identity("c.pem", "c.key")
                    .server_name("localhost")
            )
        );
        assert_eq!(dial_tls(&dial_args(&["tcp://127.0.0.1:1"])).unwrap(), None);
    }

    #[test]
    fn tls_addresses_need_the_flags() {
        let err = listen_tls(&listen_args(&["tls://127.0.0.1:0"])).unwrap_err();
        assert!(
            err.to_string().contains("--tls-cert and --tls-key"),
            "{err}"
        );
        let err = dial_tls(&dial_args(&["tls://127.0.0.1:7443"])).unwrap_err();
        assert!(err.to_string().contains("needs --tls-ca"), "{err}");
        // And other transports have no TLS.
        let err = dial_tls(&dial_args(&["uds://@x", "--tls-ca", "ca.pem"])).unwrap_err();
        assert!(err.to_string().contains("tls:// and tcp://"), "{err}");
        let args = listen_args(&["uds://@x", "--tls-cert", "c", "--tls-key", "k"]);
        assert!(listen_tls(&args).is_err());
    }

    /// The fields are public, so the builders also check what clap would have refused.
    #[test]
    fn half_given_pairs_are_refused_without_clap() {
        let mut args = listen_args(&["tls://127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k"]);
        args.tls_key = None;
        assert!(listen_tls(&args).is_err());
        let mut args = dial_args(&["tls://h:1", "--tls-ca", "ca"]);
        args.tls_identity_key = Some("k".into());
        assert!(dial_tls(&args).is_err());
        args.tls_ca = None;
        assert!(dial_tls(&args).is_err());
    }

    #[test]
    fn tls_listen_and_dial_are_unsupported_or_fail_on_missing_files() {
        // The files do not exist: once duct has TLS this fails reading them; before, with
        // Unsupported. Either way an error naming the address, never a panic or a hang.
        let args = listen_args(&[
            "tls://127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/duct-cli-test.pem",
            "--tls-key",
            "/nonexistent/duct-cli-test.key",
        ]);
        let err = listen(args).unwrap_err();
        assert!(err.to_string().contains("tls://127.0.0.1:0"), "{err}");
    }
}
