//! Tiny std servers for the proxy's tests to put the proxy in front of.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

/// An echo server: every connection gets back what it sends, until it closes. Its accept
/// thread lives for the test process; each connection's thread ends with the connection.
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A server that hands each accepted connection to the test, which then plays the target's
/// side by hand. Its accept thread lives for the test process.
pub fn handoff_server() -> (SocketAddr, Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Takes the target side of the next proxied connection.
pub fn next_conn(rx: &Receiver<TcpStream>) -> TcpStream {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the proxy did not dial the target")
}

/// Reads exactly `n` bytes (with a generous timeout against hangs).
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Asserts that nothing arrives on `s` within `wait`, and that the connection is still open
/// (a read that times out, rather than EOF or an error).
pub fn assert_silent(s: &mut TcpStream, wait: Duration) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence on an open connection, got {other:?}"),
    }
}
