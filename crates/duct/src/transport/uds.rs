//! Unix domain sockets: connect within a deadline, bind on a path (taking over a stale
//! socket file, never touching anything else) or a Linux abstract name, remove our own socket
//! file when the listener goes, and read the peer's credentials.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

#[cfg(target_os = "android")]
use std::os::android::net::SocketAddrExt;
#[cfg(target_os = "linux")]
use std::os::linux::net::SocketAddrExt;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::addr::{Addr, Endpoint};
use crate::error::{Error, ErrorKind, Result};
use crate::options::PeerCredentials;

/// The longest pause between two connect attempts while the listener's queue is full.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The [`Addr`] of a Unix socket address: a path, an abstract name (Linux), or
/// [`Addr::Unknown`] for an unnamed socket.
pub(super) fn unix_addr_to_addr(addr: &UnixSocketAddr) -> Addr {
    if let Some(path) = addr.as_pathname() {
        return Addr::Uds(path.to_path_buf());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = addr.as_abstract_name() {
        return Addr::UdsAbstract(String::from_utf8_lossy(name).into_owned());
    }
    Addr::Unknown
}

/// The peer's credentials of a connected socket, where the platform has them: `SO_PEERCRED`
/// on Linux and Android; `getpeereid` and `LOCAL_PEERPID` on macOS.
pub(super) fn peer_credentials(stream: &UnixStream) -> Option<PeerCredentials> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let cred = rustix::net::sockopt::socket_peercred(stream).ok()?;
        let pid = u32::try_from(cred.pid.as_raw_nonzero().get()).ok();
        Some(PeerCredentials::new(
            pid,
            cred.uid.as_raw(),
            cred.gid.as_raw(),
        ))
    }
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsFd;
        let (pid, uid, gid) = duct_sys::net::peer_ids(stream.as_fd()).ok()?;
        Some(PeerCredentials::new(pid, uid, gid))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
    {
        let _ = stream;
        None
    }
}

/// Connects to the socket file at `path`.
pub(super) fn connect_path(ep: &Endpoint, path: &Path, timeout: Duration) -> Result<UnixStream> {
    let addr = SockAddr::unix(path).map_err(|err| {
        Error::new(ErrorKind::InvalidAddress, format!("cannot connect to {ep}")).with_source(err)
    })?;
    connect_sockaddr(ep, &addr, timeout)
}

/// Connects to the abstract socket `name` (Linux and Android only).
pub(super) fn connect_abstract(ep: &Endpoint, name: &str, timeout: Duration) -> Result<UnixStream> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        // socket2 takes an abstract address as a path whose first byte is NUL.
        let mut raw = Vec::with_capacity(name.len() + 1);
        raw.push(0);
        raw.extend_from_slice(name.as_bytes());
        let addr = SockAddr::unix(Path::new(OsStr::from_bytes(&raw))).map_err(|err| {
            Error::new(ErrorKind::InvalidAddress, format!("cannot connect to {ep}"))
                .with_source(err)
        })?;
        connect_sockaddr(ep, &addr, timeout)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (name, timeout);
        Err(abstract_unsupported(ep))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_unsupported(ep: &Endpoint) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("{ep}: abstract Unix socket names (uds://@name) are only available on Linux"),
    )
}

/// Whether `err` is `EINPROGRESS` (a non-blocking connect that completes later).
fn is_in_progress(err: &io::Error) -> bool {
    rustix::io::Errno::from_io_error(err) == Some(rustix::io::Errno::INPROGRESS)
}

/// Connects a new socket to `addr` before `timeout` runs out. The socket is non-blocking
/// while connecting, so that a listener with a full accept queue (`EAGAIN` on Linux) is
/// retried instead of blocking past the deadline; it is returned in blocking mode.
fn connect_sockaddr(ep: &Endpoint, addr: &SockAddr, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        .map_err(|err| Error::io(err, format!("creating a socket to connect to {ep}")))?;
    let mut pause = Duration::from_millis(1);
    loop {
        match socket.connect(addr) {
            Ok(()) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                // The listener is alive but its accept queue is full: wait for room.
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "connecting to {ep}: the listener's accept queue stayed full for \
                             {timeout:?}"
                        ),
                    ));
                }
                thread::sleep(pause.min(remaining));
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(err) if is_in_progress(&err) => {
                wait_connected(ep, &socket, deadline, timeout)?;
                break;
            }
            Err(err) => return Err(connect_error(ep, err)),
        }
    }
    socket
        .set_nonblocking(false)
        .map_err(|err| Error::io(err, format!("connecting to {ep}")))?;
    Ok(UnixStream::from(OwnedFd::from(socket)))
}

/// Waits for an in-progress connect to finish (platforms where Unix sockets connect
/// asynchronously; Linux does not).
fn wait_connected(
    ep: &Endpoint,
    socket: &Socket,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};

    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!("connecting to {ep}: no answer within {timeout:?}"),
            ));
        }
        // Wait in slices of at most a second: every platform's poll takes that timeout.
        let slice = Timespec::try_from(remaining.min(Duration::from_secs(1))).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(socket, PollFlags::OUT)];
        match poll(&mut fds, Some(&slice)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => {
                return Err(Error::io(
                    io::Error::from(errno),
                    format!("connecting to {ep}"),
                ));
            }
        }
    }
    match socket.take_error() {
        Ok(None) => Ok(()),
        Ok(Some(err)) | Err(err) => Err(connect_error(ep, err)),
    }
}

/// Maps a failed Unix connect. A missing socket file means no listener (yet), like a refused
/// connection: both are [`ErrorKind::ConnectionRefused`], which is retryable.
fn connect_error(ep: &Endpoint, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::NotFound => Error::new(
            ErrorKind::ConnectionRefused,
            format!("connecting to {ep}: no socket file at that path (is the listener running?)"),
        )
        .with_source(err),
        io::ErrorKind::ConnectionRefused => Error::new(
            ErrorKind::ConnectionRefused,
            format!("connecting to {ep}: nobody is listening on that socket"),
        )
        .with_source(err),
        _ => Error::io(err, format!("connecting to {ep}")),
    }
}

/// A listening Unix socket, and the socket file it created (if it is bound to a path).
#[derive(Debug)]
pub(crate) struct UnixSocketListener {
    // Field order matters: the socket closes before its file is removed.
    listener: UnixListener,
    addr: Addr,
    /// Held only for its `Drop`, which removes the file.
    _socket_file: Option<SocketFile>,
}

impl UnixSocketListener {
    /// Accepts one connection, returned in blocking mode. Unix dialers are unnamed, so the
    /// peer address is usually [`Addr::Unknown`].
    pub(super) fn accept(&self) -> io::Result<(UnixStream, Addr)> {
        let (stream, peer) = self.listener.accept()?;
        // Linux does not pass O_NONBLOCK to accepted sockets; some BSDs do.
        stream.set_nonblocking(false)?;
        Ok((stream, unix_addr_to_addr(&peer)))
    }

    /// The path or abstract name this listener is bound to, as given to `bind`.
    pub(super) fn local_addr(&self) -> Addr {
        self.addr.clone()
    }

    pub(super) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.listener.set_nonblocking(nonblocking)
    }
}

impl AsFd for UnixSocketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// A socket file we created, identified by device and inode so that we never remove a file
/// that replaced it (another listener's socket, a user's file).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn identify(path: &Path) -> io::Result<SocketFile> {
        let meta = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    fn is_still_ours(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|meta| {
            meta.file_type().is_socket() && meta.dev() == self.dev && meta.ino() == self.ino
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.is_still_ours() {
            tracing::debug!(path = %self.path.display(), "socket file replaced by another; left in place");
            return;
        }
        if let Err(err) = fs::remove_file(&self.path) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %err, "could not remove our socket file");
            }
        }
    }
}

/// Binds a listener on the socket file `path`, replacing a stale socket file (one nobody
/// listens on any more, left by a process that died).
pub(super) fn bind_path(ep: &Endpoint, path: &Path) -> Result<UnixSocketListener> {
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            remove_stale_socket(ep, path)?;
            UnixListener::bind(path).map_err(|err| bind_error(ep, path, err))?
        }
        Err(err) => return Err(bind_error(ep, path, err)),
    };
    let socket_file = match SocketFile::identify(path) {
        Ok(file) => Some(file),
        Err(err) => {
            tracing::warn!(%ep, %err, "cannot stat the socket file just bound; it will not be removed on close");
            None
        }
    };
    Ok(UnixSocketListener {
        listener,
        addr: Addr::Uds(path.to_path_buf()),
        _socket_file: socket_file,
    })
}

fn bind_error(ep: &Endpoint, path: &Path, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::AddrInUse => Error::new(
            ErrorKind::AddressInUse,
            format!("cannot listen on {ep}: the socket path is in use"),
        )
        .with_source(err),
        io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            Error::io(
                err,
                format!(
                    "cannot listen on {ep}: the directory {} does not exist",
                    dir.display()
                ),
            )
        }
        _ => Error::io(err, format!("cannot listen on {ep}")),
    }
}

/// What a probe connect says about an existing socket file.
enum Probe {
    /// A listener answers (or its queue is full): the file is in use.
    Live,
    /// Nobody listens: the file is left from a process that is gone.
    Stale,
    /// The file disappeared meanwhile.
    Gone,
}

/// Removes the socket file at `path` if nobody listens on it; fails with
/// [`ErrorKind::AddressInUse`] if a listener is live there or the file is not a socket
/// (which is never removed).
///
/// A live listener sees the probe as a connection that closes at once.
fn remove_stale_socket(ep: &Endpoint, path: &Path) -> Result<()> {
    let before = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(Error::io(
                err,
                format!("cannot listen on {ep}: checking the file already at that path"),
            ))
        }
    };
    if !before.file_type().is_socket() {
        return Err(Error::new(
            ErrorKind::AddressInUse,
            format!(
                "cannot listen on {ep}: a file that is not a socket is at that path \
                 (duct leaves it alone; remove it or choose another path)"
            ),
        ));
    }
    match probe(ep, path)? {
        Probe::Live => Err(Error::new(
            ErrorKind::AddressInUse,
            format!("cannot listen on {ep}: another listener is live on that socket"),
        )),
        Probe::Gone => Ok(()),
        Probe::Stale => {
            // Remove the file only if it is still the one probed: a listener that took the
            // path over since then keeps its socket (it then makes our bind fail instead).
            let unchanged = fs::symlink_metadata(path)
                .is_ok_and(|now| now.dev() == before.dev() && now.ino() == before.ino());
            if unchanged {
                match fs::remove_file(path) {
                    Ok(()) => {
                        tracing::info!(%ep, "replaced a stale socket file left by a process that is gone");
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(Error::io(
                            err,
                            format!("cannot listen on {ep}: removing the stale socket file"),
                        ))
                    }
                }
            }
            Ok(())
        }
    }
}

/// Connects to the socket file at `path` without blocking, to see whether anyone listens.
fn probe(ep: &Endpoint, path: &Path) -> Result<Probe> {
    let context =
        || format!("cannot listen on {ep}: checking whether the socket at that path is live");
    let addr = SockAddr::unix(path).map_err(|err| Error::io(err, context()))?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        .map_err(|err| Error::io(err, context()))?;
    match socket.connect(&addr) {
        Ok(()) => Ok(Probe::Live),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock || is_in_progress(&err) => {
            Ok(Probe::Live)
        }
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(Probe::Stale),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Probe::Gone),
        Err(err) => Err(Error::io(err, context())),
    }
}

/// Binds a listener on the abstract socket `name` (Linux and Android only). Abstract
/// sockets have no file: the name is released when the listener closes.
pub(super) fn bind_abstract(ep: &Endpoint, name: &str) -> Result<UnixSocketListener> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let addr = UnixSocketAddr::from_abstract_name(name.as_bytes()).map_err(|err| {
            Error::new(ErrorKind::InvalidAddress, format!("cannot listen on {ep}")).with_source(err)
        })?;
        let listener = UnixListener::bind_addr(&addr).map_err(|err| {
            if err.kind() == io::ErrorKind::AddrInUse {
                Error::new(
                    ErrorKind::AddressInUse,
                    format!("cannot listen on {ep}: another socket has this abstract name"),
                )
                .with_source(err)
            } else {
                Error::io(err, format!("cannot listen on {ep}"))
            }
        })?;
        Ok(UnixSocketListener {
            listener,
            addr: Addr::UdsAbstract(name.to_owned()),
            _socket_file: None,
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = name;
        Err(abstract_unsupported(ep))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::addr::parse;
    use crate::transport::{connect, RawListener, Stream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A fresh directory under the system temp dir, removed with its contents on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("duct-{}-{n}-{tag}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn socket(&self, name: &str) -> (PathBuf, Endpoint) {
            let path = self.0.join(name);
            let ep = parse(&format!("uds://{}", path.display())).unwrap();
            (path, ep)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn unique_abstract_name(tag: &str) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("duct-test-{}-{n}-{tag}", std::process::id())
    }

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

    #[test]
    fn path_round_trip() {
        let dir = TempDir::new("roundtrip");
        let (path, ep) = dir.socket("game.sock");
        let listener = RawListener::bind(&ep).unwrap();
        assert_eq!(listener.local_addr(), Addr::Uds(path.clone()));
        assert_eq!(
            listener.local_addr().to_string(),
            format!("uds://{}", path.display())
        );

        let client = connect(&ep, TIMEOUT).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(peer, Addr::Unknown, "dialers are unnamed");
        assert_eq!(client.peer_addr(), Addr::Uds(path.clone()));
        assert_eq!(server.local_addr(), Addr::Uds(path));
        assert_eq!(client.local_addr(), Addr::Unknown);

        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let creds = server.peer_credentials().expect("SO_PEERCRED");
            assert_eq!(creds.uid, rustix::process::getuid().as_raw());
            assert_eq!(creds.gid, rustix::process::getgid().as_raw());
            assert_eq!(creds.pid, Some(std::process::id()));
        }
        exchange(client, server);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn abstract_round_trip_and_in_use() {
        let name = unique_abstract_name("rt");
        let ep = parse(&format!("uds://@{name}")).unwrap();
        let listener = RawListener::bind(&ep).unwrap();
        assert_eq!(listener.local_addr(), Addr::UdsAbstract(name.clone()));
        assert_eq!(listener.local_addr().to_string(), format!("uds://@{name}"));

        let err = RawListener::bind(&ep).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddressInUse, "{err}");
        assert!(err.to_string().contains(&name), "{err}");

        let client = connect(&ep, TIMEOUT).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(client.peer_addr(), Addr::UdsAbstract(name));
        exchange(client, server);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn abstract_nobody_listening_is_refused() {
        let ep = parse(&format!("uds://@{}", unique_abstract_name("refused"))).unwrap();
        let err = connect(&ep, TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn stale_socket_file_is_taken_over() {
        let dir = TempDir::new("stale");
        let (path, ep) = dir.socket("s.sock");
        // std's listener leaves its socket file behind when dropped, like a crashed process.
        drop(UnixListener::bind(&path).unwrap());
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());

        let err = connect(&ep, TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

        let listener = RawListener::bind(&ep).unwrap();
        let client = connect(&ep, TIMEOUT).unwrap();
        let (server, _) = listener.accept().unwrap();
        exchange(client, server);
    }

    #[test]
    fn live_listener_is_address_in_use() {
        let dir = TempDir::new("live");
        let (path, ep) = dir.socket("s.sock");
        let theirs = UnixListener::bind(&path).unwrap();

        let err = RawListener::bind(&ep).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddressInUse, "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!err.is_retryable());

        // Their socket is untouched and still works (the probe left one connection queued).
        theirs.set_nonblocking(true).unwrap();
        while theirs.accept().is_ok() {}
        let _client = UnixStream::connect(&path).unwrap();
        theirs.set_nonblocking(false).unwrap();
        theirs.accept().unwrap();
    }

    #[test]
    fn non_socket_file_is_address_in_use_and_kept() {
        let dir = TempDir::new("file");
        let (path, ep) = dir.socket("not-a-socket");
        fs::write(&path, b"precious").unwrap();

        let err = RawListener::bind(&ep).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddressInUse, "{err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("not a socket"), "{text}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn drop_unlinks_our_socket_file() {
        let dir = TempDir::new("drop");
        let (path, ep) = dir.socket("s.sock");
        let listener = RawListener::bind(&ep).unwrap();
        assert!(path.exists());
        drop(listener);
        assert!(fs::symlink_metadata(&path).is_err(), "socket file removed");
    }

    #[test]
    fn drop_keeps_a_socket_file_that_replaced_ours() {
        let dir = TempDir::new("replaced");
        let (path, ep) = dir.socket("s.sock");
        let ours = RawListener::bind(&ep).unwrap();
        fs::remove_file(&path).unwrap();
        let theirs = UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let _client = UnixStream::connect(&path).unwrap();
        theirs.accept().unwrap();
    }

    #[test]
    fn drop_keeps_a_regular_file_that_replaced_ours() {
        let dir = TempDir::new("replaced-file");
        let (path, ep) = dir.socket("s.sock");
        let ours = RawListener::bind(&ep).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"keep").unwrap();
        drop(ours);
        assert_eq!(fs::read(&path).unwrap(), b"keep");
    }

    #[test]
    fn missing_socket_file_is_refused() {
        let dir = TempDir::new("missing");
        let (_, ep) = dir.socket("nobody.sock");
        let err = connect(&ep, TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("nobody.sock"), "{err}");
    }

    #[test]
    fn missing_directory_names_it() {
        let dir = TempDir::new("nodir");
        let (_, ep) = dir.socket("no/such/dir/s.sock");
        let err = RawListener::bind(&ep).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn nonblocking_accept_would_block() {
        let dir = TempDir::new("nonblock");
        let (_, ep) = dir.socket("s.sock");
        let listener = RawListener::bind(&ep).unwrap();
        listener.set_nonblocking(true).unwrap();
        let err = listener.accept().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let client = connect(&ep, TIMEOUT).unwrap();
        // Unix connects complete synchronously: the connection is already queued.
        let (server, _) = listener.accept().unwrap();
        exchange(client, server);
    }
}
