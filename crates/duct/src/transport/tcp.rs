//! TCP: connect within a deadline across every address a name resolves to, and bind.
//!
//! Socket options beyond `TCP_NODELAY` (keepalive from the heartbeat settings, buffer sizes)
//! are the driver's to set on the returned sockets.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::addr::{resolve, Endpoint};
use crate::error::{Error, ErrorKind, Result};

/// Connects to `host:port` (which `ep` names in messages) within `timeout` (nonzero, at most
/// a year), trying each resolved address with an equal share of the time left.
pub(super) fn connect(
    ep: &Endpoint,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let addrs = resolve(host, port)?;
    let mut last_failure: Option<(SocketAddr, std::io::Error)> = None;
    for (index, addr) in addrs.iter().enumerate() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        // Share what is left among the addresses not tried yet, so that one address that
        // does not answer cannot starve the others (e.g. `localhost` → ::1 and 127.0.0.1).
        let untried = u32::try_from(addrs.len() - index).unwrap_or(u32::MAX);
        let mut budget = remaining / untried;
        if budget.is_zero() {
            budget = remaining;
        }
        match TcpStream::connect_timeout(addr, budget) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|err| {
                    Error::io(
                        err,
                        format!("setting TCP_NODELAY on the connection to {ep} ({addr})"),
                    )
                })?;
                return Ok(stream);
            }
            Err(err) => {
                tracing::debug!(%ep, %addr, %err, "connect attempt failed");
                last_failure = Some((*addr, err));
            }
        }
    }
    match last_failure {
        Some((addr, err)) => {
            let context = if addrs.len() == 1 {
                format!("connecting to {ep}")
            } else {
                format!(
                    "connecting to {ep} ({} addresses tried, the last {addr})",
                    addrs.len()
                )
            };
            let error = Error::io(err, context);
            if error.kind() == ErrorKind::TimedOut {
                // The OS text ("connection timed out") adds nothing; say how long we waited.
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!("connecting to {ep}: no answer within {timeout:?}"),
                ));
            }
            Err(error)
        }
        None => Err(Error::new(
            ErrorKind::TimedOut,
            format!("connecting to {ep}: resolving the name took the whole timeout of {timeout:?}"),
        )),
    }
}

/// The kernel's queue of connections not accepted yet. std's 128 overflows under a connect
/// flood, and a dropped SYN costs a dialer a second (then three, then seven) before it tries
/// again: take what the kernel allows (Linux caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds and listens on `addr` like `TcpListener::bind` (with `SO_REUSEADDR` on Unix), with a
/// deeper backlog.
fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds a listener on the first of `host`'s addresses that binds.
pub(super) fn bind(ep: &Endpoint, host: &str, port: u16) -> Result<TcpListener> {
    let addrs = resolve(host, port)?;
    let mut last_failure = None;
    for addr in &addrs {
        match bind_one(*addr) {
            Ok(listener) => return Ok(listener),
            Err(err) => {
                tracing::debug!(%ep, %addr, %err, "bind attempt failed");
                last_failure = Some((*addr, err));
            }
        }
    }
    match last_failure {
        Some((addr, err)) => {
            let target = if host.parse::<std::net::IpAddr>().is_ok() {
                ep.to_string()
            } else {
                format!("{ep} ({addr})")
            };
            if err.kind() == std::io::ErrorKind::AddrInUse {
                Err(Error::new(
                    ErrorKind::AddressInUse,
                    format!("cannot listen on {target}: the address is already in use"),
                )
                .with_source(err))
            } else {
                Err(Error::io(err, format!("cannot listen on {target}")))
            }
        }
        // `resolve` never returns an empty list; say something sensible regardless.
        None => Err(Error::new(
            ErrorKind::InvalidAddress,
            format!("cannot listen on {ep}: the host resolved to no addresses"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;

    use crate::addr::{parse, Addr};
    use crate::error::ErrorKind;
    use crate::transport::{connect, RawListener, Stream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Sends a ping one way and a pong the other, then checks EOF after shutdown.
    fn exchange(client: Stream, server: Stream) {
        let (mut client, mut server) = (client, server);
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.read(&mut buf).unwrap(), 0, "EOF after shutdown");
    }

    // (Windows without TLS has one kind of stream.)
    #[cfg_attr(not(any(unix, feature = "tls")), allow(irrefutable_let_patterns))]
    fn round_trip(bind_addr: &str) -> Option<()> {
        let listener = match RawListener::bind(&parse(bind_addr).unwrap()) {
            Ok(listener) => listener,
            Err(err) if bind_addr.contains("[::1]") => {
                println!("note: skipping IPv6 test, no IPv6 loopback here: {err}");
                return None;
            }
            Err(err) => panic!("bind {bind_addr}: {err}"),
        };
        let Addr::Tcp(bound) = listener.local_addr() else {
            panic!("not a tcp address: {}", listener.local_addr());
        };
        assert_ne!(bound.port(), 0, "port 0 must be resolved");
        let shown = listener.local_addr().to_string();
        assert_eq!(shown, format!("tcp://{bound}"));

        let client = connect(&parse(&shown).unwrap(), TIMEOUT).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr());
        assert_eq!(server.peer_addr(), client.local_addr());
        assert_eq!(client.peer_addr(), Addr::Tcp(bound));
        let (Stream::Tcp(c), Stream::Tcp(s)) = (&client, &server) else {
            panic!("tcp streams expected");
        };
        assert!(c.nodelay().unwrap() && s.nodelay().unwrap(), "TCP_NODELAY");
        assert!(client.peer_credentials().is_none());
        exchange(client, server);
        Some(())
    }

    #[test]
    fn round_trip_ipv4() {
        round_trip("tcp://127.0.0.1:0").unwrap();
    }

    #[test]
    fn round_trip_ipv6() {
        let _ = round_trip("tcp://[::1]:0");
    }

    #[test]
    fn localhost_name_resolves_for_bind_and_connect() {
        let listener = RawListener::bind(&parse("tcp://localhost:0").unwrap()).unwrap();
        let Addr::Tcp(bound) = listener.local_addr() else {
            panic!("tcp expected")
        };
        let ep = parse(&format!("tcp://localhost:{}", bound.port())).unwrap();
        let client = connect(&ep, TIMEOUT).unwrap();
        let (server, _) = listener.accept().unwrap();
        exchange(client, server);
    }

    #[test]
    fn port_in_use_is_address_in_use() {
        let first = RawListener::bind(&parse("tcp://127.0.0.1:0").unwrap()).unwrap();
        let taken = first.local_addr().to_string();
        let err = RawListener::bind(&parse(&taken).unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddressInUse, "{err}");
        assert!(err.to_string().contains(&taken), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn nobody_listening_is_connection_refused() {
        let addr = {
            let listener = RawListener::bind(&parse("tcp://127.0.0.1:0").unwrap()).unwrap();
            listener.local_addr().to_string()
        };
        let err = connect(&parse(&addr).unwrap(), TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[test]
    fn unresolvable_host_is_invalid_address() {
        let err = connect(&parse("tcp://no-such-host.invalid:1").unwrap(), TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidAddress, "{err}");
        let err = RawListener::bind(&parse("tcp://no-such-host.invalid:1").unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidAddress, "{err}");
    }

    #[test]
    fn nonblocking_accept_would_block() {
        let listener = RawListener::bind(&parse("tcp://127.0.0.1:0").unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let err = listener.accept().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        let ep = parse(&listener.local_addr().to_string()).unwrap();
        let _client = connect(&ep, TIMEOUT).unwrap();
        // The connection is queued by the kernel; poll briefly for it.
        let deadline = Instant::now() + TIMEOUT;
        let (server, _) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection to accept");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("accept: {err}"),
            }
        };
        // Accepted streams are blocking regardless of the listener (the driver's blocking
        // reads rely on it). (On Windows they are non-blocking: see transport/windows.rs.)
        #[cfg(unix)]
        {
            let flags = rustix::fs::fcntl_getfl(&server).unwrap();
            assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        }
        #[cfg(not(unix))]
        drop(server);
    }
}
