//! Addresses: [`Addr`], the public, resolved form that a pipe or listener reports, and
//! `Endpoint`, the parsed but unresolved form of the string given to `listen`/`dial`.
//!
//! This module owns the address syntax (`tcp://host:port`, `tls://…`, `uds:///path`,
//! `uds://@name`, `shm://name`, `pipe://name`) and its error messages, and name resolution.
//! Opening sockets is left to the transports.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};

/// The schemes duct knows, as listed in error messages.
const KNOWN_SCHEMES: &str = "tcp://, tls://, uds://, shm://, pipe://";

/// Bytes in `sockaddr_un.sun_path`, the terminating NUL of a path included.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const SUN_PATH_LEN: usize = 108;
/// Bytes in `sockaddr_un.sun_path`, the terminating NUL of a path included (104 on the BSDs
/// and macOS).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const SUN_PATH_LEN: usize = 104;

/// The longest abstract socket name: `sun_path` minus its leading NUL.
pub(crate) const MAX_ABSTRACT_NAME: usize = SUN_PATH_LEN - 1;

/// The longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

/// The address of a pipe's end or a listener, resolved: what `local_addr()` and
/// `peer_addr()` return.
///
/// Its `Display` form is the address syntax that `listen` and `dial` accept, with names
/// resolved and port 0 replaced by the bound port: `tcp://127.0.0.1:41231`,
/// `tcp://[::1]:7000`, `uds:///tmp/game.sock`, `uds://@name`, `shm://name`, `pipe://name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Addr {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A TCP socket address carrying TLS.
    Tls(SocketAddr),
    /// A Unix domain socket bound to a filesystem path.
    Uds(PathBuf),
    /// A Unix domain socket in Linux's abstract namespace (no file; written `uds://@name`).
    UdsAbstract(String),
    /// A shared-memory endpoint, by name.
    Shm(String),
    /// A Windows named pipe, by name.
    Pipe(String),
    /// An address that cannot be named, such as the unbound end of a Unix socket connection
    /// (a dialer's local end, an accepted peer). Displays as `unknown`.
    Unknown,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => write!(f, "tcp://{addr}"),
            Addr::Tls(addr) => write!(f, "tls://{addr}"),
            Addr::Uds(path) => write!(f, "uds://{}", path.display()),
            Addr::UdsAbstract(name) => write!(f, "uds://@{name}"),
            Addr::Shm(name) => write!(f, "shm://{name}"),
            Addr::Pipe(name) => write!(f, "pipe://{name}"),
            Addr::Unknown => f.write_str("unknown"),
        }
    }
}

/// A parsed address string, not resolved yet: what `listen`/`dial` were asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `tcp://host:port`; `host` is a name, an IPv4 literal or an IPv6 literal without its
    /// brackets.
    Tcp { host: String, port: u16 },
    /// `tls://host:port`, the same forms as `Tcp`.
    Tls { host: String, port: u16 },
    /// `uds:///absolute/path`.
    Uds(PathBuf),
    /// `uds://@name`.
    UdsAbstract(String),
    /// `shm://name`.
    Shm(String),
    /// `pipe://name`.
    Pipe(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp://{}", HostPort(host, *port)),
            Endpoint::Tls { host, port } => write!(f, "tls://{}", HostPort(host, *port)),
            Endpoint::Uds(path) => write!(f, "uds://{}", path.display()),
            Endpoint::UdsAbstract(name) => write!(f, "uds://@{name}"),
            Endpoint::Shm(name) => write!(f, "shm://{name}"),
            Endpoint::Pipe(name) => write!(f, "pipe://{name}"),
        }
    }
}

/// `host:port`, bracketing IPv6 literals.
struct HostPort<'a>(&'a str, u16);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]:{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

fn invalid(addr: &str, what: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidAddress,
        format!("invalid address {addr:?}: {what}"),
    )
}

/// Parses an address string. Every error is [`ErrorKind::InvalidAddress`], quotes `addr` and
/// says what is wrong with it.
pub(crate) fn parse(addr: &str) -> Result<Endpoint> {
    let Some((scheme, rest)) = addr.split_once("://") else {
        return Err(invalid(
            addr,
            format_args!(
                "missing scheme (write it as scheme://…, e.g. tcp://127.0.0.1:7000; \
                 known schemes: {KNOWN_SCHEMES})"
            ),
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "tcp" => parse_host_port(addr, rest).map(|(host, port)| Endpoint::Tcp { host, port }),
        "tls" => parse_host_port(addr, rest).map(|(host, port)| Endpoint::Tls { host, port }),
        "uds" => parse_uds(addr, rest),
        "shm" => parse_name(addr, rest, "shm").map(Endpoint::Shm),
        "pipe" => parse_name(addr, rest, "pipe").map(Endpoint::Pipe),
        "" => Err(invalid(
            addr,
            format_args!("empty scheme (known schemes: {KNOWN_SCHEMES})"),
        )),
        other => Err(invalid(
            addr,
            format_args!("unknown scheme \"{other}://\" (known schemes: {KNOWN_SCHEMES})"),
        )),
    }
}

/// `host:port` with `host` a name, an IPv4 literal or a bracketed IPv6 literal.
fn parse_host_port(addr: &str, rest: &str) -> Result<(String, u16)> {
    if let Some(bad) = rest.find(['/', '?', '#']) {
        return Err(invalid(
            addr,
            format_args!(
                "unexpected {:?} after the port (a tcp/tls address is host:port only)",
                &rest[bad..]
            ),
        ));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(invalid(
                addr,
                "missing ']' after the IPv6 address (write it as [::1]:7000)",
            ));
        };
        if host.is_empty() {
            return Err(invalid(addr, "empty host between '[' and ']'"));
        }
        if !is_ipv6_literal(host) {
            return Err(invalid(
                addr,
                format_args!("{host:?} inside brackets is not an IPv6 address"),
            ));
        }
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => {
                return Err(invalid(addr, "missing port (e.g. [::1]:7000)"))
            }
            None => {
                return Err(invalid(
                    addr,
                    format_args!("unexpected {after:?} after ']' (expected :port)"),
                ))
            }
        };
        (host, port)
    } else {
        if rest.contains(['[', ']']) {
            return Err(invalid(
                addr,
                "misplaced bracket (an IPv6 address is written [::1]:7000)",
            ));
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(invalid(
                addr,
                "missing port (e.g. tcp://127.0.0.1:7000; port 0 picks a free port)",
            ));
        };
        if host.contains(':') {
            return Err(invalid(
                addr,
                "an IPv6 address needs brackets (e.g. tcp://[::1]:7000)",
            ));
        }
        if host.is_empty() {
            return Err(invalid(
                addr,
                "empty host (use 0.0.0.0 or [::] to listen on every interface)",
            ));
        }
        if host.len() > MAX_HOST_LEN {
            return Err(invalid(
                addr,
                format_args!(
                    "host name is {} bytes; the limit is {MAX_HOST_LEN}",
                    host.len()
                ),
            ));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(invalid(
                addr,
                format_args!("invalid character {c:?} in host"),
            ));
        }
        (host, port)
    };
    Ok((host.to_owned(), parse_port(addr, port)?))
}

/// An IPv6 literal, optionally with a `%zone` suffix (`fe80::1%eth0`).
fn is_ipv6_literal(host: &str) -> bool {
    let (ip, zone) = match host.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (host, None),
    };
    let zone_ok = zone.is_none_or(|zone| {
        !zone.is_empty()
            && zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    });
    zone_ok && ip.parse::<Ipv6Addr>().is_ok()
}

fn parse_port(addr: &str, port: &str) -> Result<u16> {
    if port.is_empty() {
        return Err(invalid(
            addr,
            "missing port after ':' (0 to 65535; 0 picks a free port)",
        ));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            addr,
            format_args!("invalid port {port:?} (must be a number from 0 to 65535)"),
        ));
    }
    port.parse::<u16>().map_err(|_| {
        invalid(
            addr,
            format_args!("invalid port {port} (must be from 0 to 65535)"),
        )
    })
}

fn parse_uds(addr: &str, rest: &str) -> Result<Endpoint> {
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err(invalid(addr, "empty abstract socket name after '@'"));
        }
        if name.len() > MAX_ABSTRACT_NAME {
            return Err(invalid(
                addr,
                format_args!(
                    "abstract socket name is {} bytes; the limit is {MAX_ABSTRACT_NAME}",
                    name.len()
                ),
            ));
        }
        return Ok(Endpoint::UdsAbstract(name.to_owned()));
    }
    if rest.is_empty() {
        return Err(invalid(
            addr,
            "empty socket path (e.g. uds:///tmp/game.sock, or uds://@name for an abstract socket)",
        ));
    }
    if !rest.starts_with('/') {
        return Err(invalid(
            addr,
            format_args!(
                "relative socket path {rest:?}: the path must be absolute, \
                 with three slashes in all (uds:///{rest})"
            ),
        ));
    }
    if rest.contains('\0') {
        return Err(invalid(addr, "NUL byte in the socket path"));
    }
    if rest.len() >= SUN_PATH_LEN {
        return Err(invalid(
            addr,
            format_args!(
                "socket path is {} bytes; the limit is {} (sun_path holds {SUN_PATH_LEN} bytes \
                 including the terminating NUL)",
                rest.len(),
                SUN_PATH_LEN - 1
            ),
        ));
    }
    Ok(Endpoint::Uds(PathBuf::from(rest)))
}

fn parse_name(addr: &str, rest: &str, scheme: &str) -> Result<String> {
    if rest.is_empty() {
        return Err(invalid(
            addr,
            format_args!("empty {scheme} name (e.g. {scheme}://game-01)"),
        ));
    }
    if rest.contains('/') {
        return Err(invalid(
            addr,
            format_args!("a {scheme} name cannot contain '/'"),
        ));
    }
    if rest.contains('\0') {
        return Err(invalid(addr, format_args!("NUL byte in the {scheme} name")));
    }
    Ok(rest.to_owned())
}

/// Resolves `host` to socket addresses with `port`, in the order the resolver returns them.
/// IP literals (IPv6 without brackets) are used as they are, without asking the resolver.
///
/// Failure is [`ErrorKind::InvalidAddress`] naming the host. The lookup blocks the calling
/// thread.
pub(crate) fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| {
            Error::new(
                ErrorKind::InvalidAddress,
                format!("cannot resolve host {host:?}"),
            )
            .with_source(err)
        })?
        .collect();
    if resolved.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidAddress,
            format!("host {host:?} resolved to no addresses"),
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    /// Asserts that `addr` fails with InvalidAddress, quoting it and containing `needle`.
    fn assert_invalid(addr: &str, needle: &str) {
        let err = parse(addr).expect_err(addr);
        assert_eq!(err.kind(), ErrorKind::InvalidAddress, "{addr}: {err}");
        let text = err.to_string();
        assert!(text.contains(&format!("{addr:?}")), "{addr}: {text}");
        assert!(
            text.contains(needle),
            "{addr}: expected {needle:?} in {text:?}"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn display_forms() {
        assert_eq!(
            Addr::Tcp("127.0.0.1:41231".parse().unwrap()).to_string(),
            "tcp://127.0.0.1:41231"
        );
        assert_eq!(
            Addr::Tcp("[::1]:7000".parse().unwrap()).to_string(),
            "tcp://[::1]:7000"
        );
        assert_eq!(
            Addr::Tls("10.0.0.1:443".parse().unwrap()).to_string(),
            "tls://10.0.0.1:443"
        );
        assert_eq!(
            Addr::Uds(PathBuf::from("/tmp/x.sock")).to_string(),
            "uds:///tmp/x.sock"
        );
        assert_eq!(Addr::UdsAbstract("name".into()).to_string(), "uds://@name");
        assert_eq!(Addr::Shm("name".into()).to_string(), "shm://name");
        assert_eq!(Addr::Pipe("name".into()).to_string(), "pipe://name");
        assert_eq!(Addr::Unknown.to_string(), "unknown");
    }

    #[test]
    fn parse_tcp_forms() {
        assert_eq!(
            parse("tcp://127.0.0.1:7000").unwrap(),
            tcp("127.0.0.1", 7000)
        );
        assert_eq!(parse("tcp://[::1]:7000").unwrap(), tcp("::1", 7000));
        assert_eq!(parse("tcp://localhost:0").unwrap(), tcp("localhost", 0));
        assert_eq!(parse("tcp://0.0.0.0:65535").unwrap(), tcp("0.0.0.0", 65535));
        assert_eq!(parse("tcp://[::]:1").unwrap(), tcp("::", 1));
        assert_eq!(
            parse("tcp://[fe80::1%eth0]:9").unwrap(),
            tcp("fe80::1%eth0", 9)
        );
        assert_eq!(
            parse("tcp://game-01.internal_x:80").unwrap(),
            tcp("game-01.internal_x", 80)
        );
        assert_eq!(parse("TCP://h:1").unwrap(), tcp("h", 1));
        assert_eq!(
            parse("tls://example.com:443").unwrap(),
            Endpoint::Tls {
                host: "example.com".into(),
                port: 443
            }
        );
    }

    #[test]
    fn endpoint_display_round_trips() {
        for addr in [
            "tcp://127.0.0.1:7000",
            "tcp://[::1]:7000",
            "tls://localhost:0",
            "uds:///tmp/game.sock",
            "uds://@name",
            "shm://game",
            "pipe://game",
        ] {
            assert_eq!(parse(addr).unwrap().to_string(), addr);
        }
    }

    #[test]
    fn missing_and_unknown_scheme() {
        assert_invalid("127.0.0.1:7000", "missing scheme");
        assert_invalid("127.0.0.1:7000", "tcp://, tls://, uds://, shm://, pipe://");
        assert_invalid("", "missing scheme");
        assert_invalid("http://127.0.0.1:80", "unknown scheme \"http://\"");
        assert_invalid(
            "http://127.0.0.1:80",
            "tcp://, tls://, uds://, shm://, pipe://",
        );
        assert_invalid("://x", "empty scheme");
    }

    #[test]
    fn bad_ports() {
        assert_invalid("tcp://127.0.0.1", "missing port");
        assert_invalid("tcp://127.0.0.1:", "missing port");
        assert_invalid("tcp://127.0.0.1:70000", "invalid port 70000");
        assert_invalid("tcp://127.0.0.1:65536", "0 to 65535");
        assert_invalid("tcp://127.0.0.1:http", "invalid port \"http\"");
        assert_invalid("tcp://127.0.0.1:+80", "invalid port");
        assert_invalid("tcp://127.0.0.1:-1", "invalid port");
        assert_invalid("tcp://127.0.0.1:99999999999999999999999", "invalid port");
        assert_invalid("tcp://[::1]", "missing port");
        assert_invalid("tcp://[::1]:", "missing port");
        assert_invalid("tcp://[::1]:x", "invalid port");
    }

    #[test]
    fn bad_ipv6_brackets() {
        assert_invalid("tcp://[::1:7000", "missing ']'");
        assert_invalid("tcp://::1]:7000", "bracket");
        assert_invalid("tcp://::1:7000", "needs brackets");
        assert_invalid("tcp://[]:7000", "empty host");
        assert_invalid("tcp://[localhost]:7000", "not an IPv6 address");
        assert_invalid("tcp://[127.0.0.1]:7000", "not an IPv6 address");
        assert_invalid("tcp://[::1]7000", "expected :port");
        assert_invalid("tcp://[fe80::1%]:7000", "not an IPv6 address");
        assert_invalid("tcp://a[b]:1", "bracket");
    }

    #[test]
    fn bad_hosts() {
        assert_invalid("tcp://:7000", "empty host");
        assert_invalid("tcp://ho st:7000", "invalid character ' '");
        assert_invalid("tcp://user@host:7000", "invalid character '@'");
        assert_invalid("tcp://host:7000/path", "after the port");
        assert_invalid("tcp://host:7000?x=1", "after the port");
        let long = format!("tcp://{}:1", "a".repeat(254));
        assert_invalid(&long, "the limit is 253");
    }

    #[test]
    fn parse_uds_forms() {
        assert_eq!(
            parse("uds:///tmp/game.sock").unwrap(),
            Endpoint::Uds(PathBuf::from("/tmp/game.sock"))
        );
        assert_eq!(
            parse("uds://@game").unwrap(),
            Endpoint::UdsAbstract("game".into())
        );
        let longest = format!("uds:///{}", "a".repeat(SUN_PATH_LEN - 2));
        assert!(parse(&longest).is_ok());
        let name = "n".repeat(MAX_ABSTRACT_NAME);
        assert_eq!(
            parse(&format!("uds://@{name}")).unwrap(),
            Endpoint::UdsAbstract(name)
        );
    }

    #[test]
    fn bad_uds() {
        assert_invalid("uds://tmp/game.sock", "relative socket path");
        assert_invalid("uds://tmp/game.sock", "uds:///tmp/game.sock");
        assert_invalid("uds://", "empty socket path");
        assert_invalid("uds://@", "empty abstract socket name");
        let too_long_name = format!("uds://@{}", "n".repeat(MAX_ABSTRACT_NAME + 1));
        assert_invalid(&too_long_name, "the limit is");
        let too_long_path = format!("uds:///{}", "a".repeat(SUN_PATH_LEN - 1));
        assert_invalid(&too_long_path, "sun_path holds");
        assert_invalid("uds:///tmp/a\0b", "NUL");
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            parse("shm://game-01").unwrap(),
            Endpoint::Shm("game-01".into())
        );
        assert_eq!(parse("pipe://game").unwrap(), Endpoint::Pipe("game".into()));
        assert_invalid("shm://", "empty shm name");
        assert_invalid("pipe://", "empty pipe name");
        assert_invalid("shm://a/b", "cannot contain '/'");
        assert_invalid("pipe:///x", "cannot contain '/'");
        assert_invalid("shm://a\0", "NUL");
    }

    #[test]
    fn no_panic_on_odd_input() {
        for addr in [
            "tcp://",
            "tcp://[",
            "tcp://]",
            "tcp://[:",
            "tcp://:",
            "tcp://::::",
            "tcp://[::1]:7000:1",
            "uds://@\u{1F600}",
            "tcp://\u{1F600}:1",
            "\u{1F600}://x",
            ":://",
            "://",
            "tcp://[\u{1F600}]:1",
            "tcp://h:\u{1F600}",
        ] {
            let _ = parse(addr);
        }
    }

    #[test]
    fn resolve_literals_without_a_resolver() {
        assert_eq!(
            resolve("127.0.0.1", 7).unwrap(),
            vec!["127.0.0.1:7".parse().unwrap()]
        );
        assert_eq!(resolve("::1", 7).unwrap(), vec!["[::1]:7".parse().unwrap()]);
    }

    #[test]
    fn resolve_localhost() {
        let addrs = resolve("localhost", 9).unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
    }

    #[test]
    fn resolve_failure_names_the_host() {
        // `.invalid` is reserved (RFC 6761) and never resolves.
        let err = resolve("no-such-host.invalid", 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidAddress);
        assert!(
            err.to_string().contains("\"no-such-host.invalid\""),
            "{err}"
        );
    }
}
