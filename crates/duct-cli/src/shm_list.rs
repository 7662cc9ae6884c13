//! `duct shm`: this host's live `shm://` endpoints, read from /proc (Linux), or from the
//! rendezvous directory (macOS: see [`list_dir`]).
//!
//! A duct listener on `shm://NAME` listens on the abstract Unix stream socket
//! `@duct-shm/NAME`, or, with `DUCT_SHM_DIR` set, on the socket file `NAME` in that directory
//! (both are recognised). `/proc/net/unix` lists every Unix socket of this network namespace,
//! whoever owns it, one per line: `Num RefCount Protocol Flags Type St Inode Path`.
//!
//! - **Endpoints**: the stream sockets (`Type` 0001) whose `Flags` say listening
//!   (`__SO_ACCEPTCON`, 0x10000) and whose path is `@duct-shm/NAME`. One row each.
//! - **PID**: the processes that hold the listening socket's inode open, found by reading the
//!   `socket:[INODE]` links of `/proc/<pid>/fd/`; processes whose fds cannot be read (another
//!   user's, without privileges) or that exit meanwhile are skipped, so the pid may be
//!   unknown (`-`, `null`). Usually one; more when a process shared the fd with its children.
//! - **Connections**: the sockets that the kernel shows with the same path and state 03
//!   (`SS_CONNECTED`), not listening. Those are the listener's side of each accepted
//!   connection: the kernel gives an accepted socket its listener's address, while the
//!   dialer's socket has no address (no path: it cannot be attributed by name, so it is not
//!   counted). duct accepts at once and passes the segment on that socket, so this is the
//!   number of shm connections whose listener's side is still open: pipes being served, or
//!   waiting for the application's `accept()`. A dialer that is gone stays counted until the
//!   listener closes its side (duct notices the end of stream on the socket at once, so only
//!   briefly). Connections that outlive their listener (closed, or its process gone with the
//!   fd passed on) are not shown: there is no endpoint left to dial.
//! - **Pending** (JSON only): sockets with the same path in state 02 (`SS_CONNECTING`): dialers
//!   queued in the kernel's backlog, not accepted yet.
//!
//! `/proc/net/unix` covers the current network namespace only, as abstract sockets do: a
//! process in another namespace cannot dial these names either.

#![cfg_attr(not(unix), allow(dead_code))] // /proc/net/unix is read on Linux only

use std::collections::HashMap;
#[cfg(unix)]
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;

use crate::bench::report::json_str;
use crate::cli::ShmArgs;
use crate::error::{bail, Context, Result};

/// The abstract path prefix of shm rendezvous sockets, as /proc/net/unix shows it.
const PREFIX: &str = "@duct-shm/";
/// `__SO_ACCEPTCON`: the socket listens.
const ACCEPTCON: u32 = 1 << 16;
/// `SOCK_STREAM`.
const STREAM: u32 = 1;
/// `SS_CONNECTING`: in a listener's backlog, not accepted yet.
const CONNECTING: u8 = 2;
/// `SS_CONNECTED`.
const CONNECTED: u8 = 3;

/// One line of /proc/net/unix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// `Flags` (hex).
    pub flags: u32,
    /// `Type` (hex): 1 stream, 2 datagram, 5 seqpacket.
    pub kind: u32,
    /// `St` (hex): 1 unconnected, 2 connecting, 3 connected, 4 disconnecting.
    pub state: u8,
    /// `Inode` (0 for a socket not yet accepted).
    pub inode: u64,
    /// `Path`: `@name` for an abstract socket (NULs shown as `@`), a file path, or none.
    pub path: Option<String>,
}

/// One live shm endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// NAME of `shm://NAME`.
    pub name: String,
    /// The listening socket's inode.
    pub inode: u64,
    /// Processes holding the listening socket (sorted; empty when none could be read).
    pub pids: Vec<u32>,
    /// Accepted connections whose listener's side is open (state connected, same path);
    /// `None` where the system does not say (macOS).
    pub connections: Option<usize>,
    /// Connections in the backlog, not accepted yet; `None` where the system does not say.
    pub pending: Option<usize>,
}

/// Splits `n` whitespace-separated words off the front of `line`; returns them and the rest
/// after the single space that follows the last one.
fn split_words(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut words = Vec::with_capacity(n);
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        words.push(&rest[..end]);
        rest = &rest[end..];
    }
    Some((words, rest.strip_prefix(' ').unwrap_or(rest)))
}

/// Parses the text of /proc/net/unix (lines that do not parse are skipped).
pub fn parse_proc_net_unix(text: &str) -> Vec<UnixSocket> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some((w, path)) = split_words(line, 7) else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(flags), Some(kind), Some(state), Ok(inode)) = (
            hex(w[3]),
            hex(w[4]),
            u8::from_str_radix(w[5], 16).ok(),
            w[6].parse::<u64>(),
        ) else {
            continue;
        };
        out.push(UnixSocket {
            flags,
            kind,
            state,
            inode,
            path: (!path.is_empty()).then(|| path.to_string()),
        });
    }
    out
}

/// The shm endpoints among `sockets`, sorted by name, with `owners` giving the processes that
/// hold each inode. Rendezvous sockets are the abstract `@duct-shm/NAME`, or `DIR/NAME` in
/// the rendezvous directory `dir` when one is set (`DUCT_SHM_DIR`).
pub fn endpoints(
    sockets: &[UnixSocket],
    owners: &HashMap<u64, Vec<u32>>,
    dir: Option<&str>,
) -> Vec<Endpoint> {
    let dir_prefix = dir.map(|d| format!("{}/", d.trim_end_matches('/')));
    let name_of = |s: &UnixSocket| {
        let path = s.path.as_deref()?;
        path.strip_prefix(PREFIX)
            .or_else(|| path.strip_prefix(dir_prefix.as_deref()?))
            .filter(|n| !n.is_empty() && !n.contains('/') && s.kind == STREAM)
            .map(str::to_string)
    };
    // Per name: (connected, pending) sockets that are not listening.
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for s in sockets.iter().filter(|s| s.flags & ACCEPTCON == 0) {
        if let Some(name) = name_of(s) {
            let c = counts.entry(name).or_default();
            match s.state {
                CONNECTED => c.0 += 1,
                CONNECTING => c.1 += 1,
                _ => {}
            }
        }
    }
    let mut out: Vec<Endpoint> = sockets
        .iter()
        .filter(|s| s.flags & ACCEPTCON != 0)
        .filter_map(|s| {
            let name = name_of(s)?;
            let (connections, pending) = counts.get(&name).copied().unwrap_or_default();
            let mut pids = owners.get(&s.inode).cloned().unwrap_or_default();
            pids.sort_unstable();
            pids.dedup();
            Some(Endpoint {
                name,
                inode: s.inode,
                pids,
                connections: Some(connections),
                pending: Some(pending),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.inode.cmp(&b.inode)));
    out
}

/// The processes that hold each of `inodes` open (as sockets), from /proc/*/fd; processes
/// that cannot be read are skipped.
#[cfg(unix)]
fn socket_owners(inodes: &HashSet<u64>) -> HashMap<u64, Vec<u32>> {
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue; // Another user's, or gone.
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                owners.entry(inode).or_default().push(pid);
            }
        }
    }
    owners
}

/// This host's live shm endpoints.
#[cfg(not(unix))]
pub fn list() -> Result<Vec<Endpoint>> {
    bail!(
        "duct shm: shm:// is not available on this system ({})",
        std::env::consts::OS
    )
}

/// This host's live shm endpoints.
#[cfg(unix)]
pub fn list() -> Result<Vec<Endpoint>> {
    let dir = duct::shm_rendezvous_dir();
    if !cfg!(target_os = "linux") {
        return match dir {
            Some(dir) => list_dir(&dir),
            None => bail!("duct shm: shm:// is not available on this system"),
        };
    }
    let dir = dir.map(|d| d.to_string_lossy().into_owned());
    let text = std::fs::read_to_string("/proc/net/unix").context("reading /proc/net/unix")?;
    let sockets = parse_proc_net_unix(&text);
    let listening: HashSet<u64> = endpoints(&sockets, &HashMap::new(), dir.as_deref())
        .iter()
        .map(|e| e.inode)
        .collect();
    Ok(endpoints(
        &sockets,
        &socket_owners(&listening),
        dir.as_deref(),
    ))
}

/// Without /proc (macOS): the socket files in the rendezvous directory, each probed with a
/// `connect` that is refused when its listener is gone (a file left by a killed process:
/// not listed). The probe is a connection the listener accepts and sees end at once. Pids
/// and connection counts are not known (`-`).
#[cfg(unix)]
fn list_dir(dir: &std::path::Path) -> Result<Vec<Endpoint>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if !meta.file_type().is_socket()
            || std::os::unix::net::UnixStream::connect(entry.path()).is_err()
        {
            continue;
        }
        out.push(Endpoint {
            name,
            inode: meta.ino(),
            pids: Vec::new(),
            connections: None,
            pending: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `n` as text, `-` when unknown.
fn count_text(n: Option<usize>) -> String {
    n.map_or("-".to_string(), |n| n.to_string())
}

/// `n` as JSON, `null` when unknown.
fn count_json(n: Option<usize>) -> String {
    n.map_or("null".to_string(), |n| n.to_string())
}

/// The endpoints as JSON: `{"endpoints": [{"name", "pid", "pids", "connections",
/// "pending", "inode"}, ...]}`; `pid` is the first of `pids`, or `null`.
pub fn to_json(endpoints: &[Endpoint]) -> String {
    let mut o = String::from("{\"endpoints\": [");
    for (i, e) in endpoints.iter().enumerate() {
        let pids: Vec<String> = e.pids.iter().map(u32::to_string).collect();
        let _ = write!(
            o,
            "{}\n  {{\"name\": {}, \"pid\": {}, \"pids\": [{}], \"connections\": {}, \
             \"pending\": {}, \"inode\": {}}}",
            if i == 0 { "" } else { "," },
            json_str(&e.name),
            e.pids.first().map_or("null".to_string(), u32::to_string),
            pids.join(", "),
            count_json(e.connections),
            count_json(e.pending),
            e.inode
        );
    }
    o.push_str(if endpoints.is_empty() {
        "]}\n"
    } else {
        "\n]}\n"
    });
    o
}

/// The endpoints as a table: NAME, PID (comma-separated if several, `-` if unknown),
/// CONNECTIONS.
pub fn to_table(endpoints: &[Endpoint]) -> String {
    let rows: Vec<[String; 3]> = endpoints
        .iter()
        .map(|e| {
            let pid = if e.pids.is_empty() {
                "-".to_string()
            } else {
                e.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            [e.name.clone(), pid, count_text(e.connections)]
        })
        .collect();
    let header = ["NAME", "PID", "CONNECTIONS"].map(String::from);
    let width = |i: usize| {
        std::iter::once(&header)
            .chain(&rows)
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let _ = writeln!(out, "{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
    }
    out
}

/// `duct shm`: prints the table (or the JSON with `--json`) on stdout.
pub fn run(args: ShmArgs) -> Result<()> {
    let endpoints = list()?;
    let text = if args.json {
        to_json(&endpoints)
    } else if endpoints.is_empty() {
        eprintln!("duct shm: no live shm:// endpoints on this host");
        return Ok(());
    } else {
        to_table(&endpoints)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the list")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As a kernel shows a duct listener `game` with two accepted connections, one dialer in
    /// its backlog, the dialers' own (unnamed) sockets, another listener, and look-alikes.
    const SAMPLE: &str = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 2460362 @duct-shm/game
0000000000000000: 00000003 00000000 00000000 0001 03 2460800 @duct-shm/game
0000000000000000: 00000003 00000000 00000000 0001 03 2460377 @duct-shm/game
0000000000000000: 00000003 00000000 00000000 0001 02     0 @duct-shm/game
0000000000000000: 00000003 00000000 00000000 0001 03 2460801
0000000000000000: 00000003 00000000 00000000 0001 03 2460378
0000000000000000: 00000002 00000000 00010000 0001 01 2460390 @duct-shm/lobby 2
0000000000000000: 00000002 00000000 00010000 0001 01 2460391 @duct-shmx/other
0000000000000000: 00000002 00000000 00010000 0001 01 2460392 /tmp/duct-shm/file
0000000000000000: 00000002 00000000 00010000 0002 01 2460393 @duct-shm/dgram
0000000000000000: 00000002 00000000 00010000 0001 01 2460394 @duct-bench-raw-shm/x
0000000000000000: 00000002 00000000 00000000 0001 03 2460395 @duct-shm/orphan
garbage line
";

    #[test]
    fn parses_proc_net_unix() {
        let sockets = parse_proc_net_unix(SAMPLE);
        assert_eq!(sockets.len(), 12);
        assert_eq!(
            sockets[0],
            UnixSocket {
                flags: 0x10000,
                kind: 1,
                state: 1,
                inode: 2460362,
                path: Some("@duct-shm/game".into()),
            }
        );
        assert_eq!(sockets[3].inode, 0, "not accepted yet");
        assert_eq!(sockets[3].state, 2);
        assert_eq!(sockets[4].path, None, "a dialer's socket has no address");
        assert_eq!(
            sockets[6].path.as_deref(),
            Some("@duct-shm/lobby 2"),
            "spaces belong to the path"
        );
    }

    #[test]
    fn a_rendezvous_directory_adds_its_socket_files() {
        let sockets = parse_proc_net_unix(SAMPLE);
        let names = |dir: Option<&str>| -> Vec<String> {
            endpoints(&sockets, &HashMap::new(), dir)
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        assert_eq!(names(None), ["game", "lobby 2"]);
        assert_eq!(names(Some("/tmp/duct-shm")), ["file", "game", "lobby 2"]);
        assert_eq!(names(Some("/tmp/duct-shm/")), ["file", "game", "lobby 2"]);
        assert_eq!(
            names(Some("/tmp")),
            ["game", "lobby 2"],
            "not in a subdirectory"
        );
    }

    /// The listing macOS uses, run here: live socket files only, counts unknown.
    #[test]
    #[cfg(unix)]
    fn a_directory_listing_shows_live_sockets_only() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("duct-cli-list-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let _live = UnixListener::bind(dir.join("live")).unwrap();
        drop(UnixListener::bind(dir.join("stale")).unwrap()); // the file stays, nobody listens
        std::fs::write(dir.join("not-a-socket"), b"x").unwrap();
        let eps = list_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].name, "live");
        assert_eq!((eps[0].connections, eps[0].pending), (None, None));
        let row = to_table(&eps).lines().nth(1).unwrap().to_string();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["live", "-", "-"]
        );
        assert!(to_json(&eps).contains("\"connections\": null"));
        assert!(
            list_dir(&dir).unwrap().is_empty(),
            "a missing directory lists nothing"
        );
    }

    #[test]
    fn counts_accepted_connections_per_listener() {
        let sockets = parse_proc_net_unix(SAMPLE);
        let owners = HashMap::from([(2460362, vec![77, 12])]);
        let eps = endpoints(&sockets, &owners, None);
        assert_eq!(
            eps,
            vec![
                Endpoint {
                    name: "game".into(),
                    inode: 2460362,
                    pids: vec![12, 77],
                    connections: Some(2),
                    pending: Some(1),
                },
                Endpoint {
                    name: "lobby 2".into(),
                    inode: 2460390,
                    pids: vec![],
                    connections: Some(0),
                    pending: Some(0),
                },
            ]
        );
        let table = to_table(&eps);
        assert_eq!(
            table,
            "NAME     PID    CONNECTIONS\ngame     12,77  2\nlobby 2  -      0\n"
        );
        let json = to_json(&eps);
        assert!(
            json.contains(
                "{\"name\": \"game\", \"pid\": 12, \"pids\": [12, 77], \"connections\": 2, \
                 \"pending\": 1, \"inode\": 2460362}"
            ),
            "{json}"
        );
        assert!(json.contains("\"pid\": null, \"pids\": []"), "{json}");
        assert_eq!(to_json(&[]), "{\"endpoints\": []}\n");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_is_found_as_the_owner_of_its_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
        let name = format!("duct-cli-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(format!("duct-shm/{name}")).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let _dialer = UnixStream::connect_addr(&addr).unwrap();
        let found = |eps: Vec<Endpoint>| eps.into_iter().find(|e| e.name == name);
        let e = found(list().unwrap()).expect("listed");
        assert_eq!(e.pids, vec![std::process::id()]);
        assert_eq!(
            (e.connections, e.pending),
            (Some(0), Some(1)),
            "in the backlog"
        );
        let (_accepted, _) = listener.accept().unwrap();
        let e = found(list().unwrap()).expect("listed");
        assert_eq!((e.connections, e.pending), (Some(1), Some(0)), "accepted");
        drop(listener);
        assert!(found(list().unwrap()).is_none(), "no listener, no endpoint");
    }
}
