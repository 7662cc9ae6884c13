//! `duct listen` and `duct dial`: lines of text through a pipe, for poking at duct by
//! hand (and for the CLI's own tests).
//!
//! Messages print one per line on stdout, as UTF-8 (invalid bytes replaced) or, with
//! `--hex`, as hex. Notes (the bound address, connections coming and going) go to stderr,
//! so that stdout holds only messages.

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duct::{Message, Pipe, SendOptions};

use crate::cli::{DialArgs, ListenArgs};
use crate::error::{Context, Result};

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

/// `duct listen ADDR [--echo] [--hex]`.
pub fn listen(args: ListenArgs) -> Result<()> {
    let listener = duct::listen(&args.addr, duct::ListenOptions::default())
        .with_context(|| format!("listen {}", args.addr))?;
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

/// `duct dial ADDR [--channel N] [--wait TIME] [--hex]`.
pub fn dial(args: DialArgs) -> Result<()> {
    let pipe = duct::dial(&args.addr, duct::DialOptions::default())
        .with_context(|| format!("dial {}", args.addr))?;
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
