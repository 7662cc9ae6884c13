//! Socket reads straight into the spare capacity of a `BytesMut`.
//!
//! Safe Rust can only read into initialised memory, so a receive buffer would have to be
//! zero-filled before every refill: a memset of the whole free space that costs more than the
//! reads themselves on small messages. [`recv_into`] reads into the uninitialised spare
//! capacity instead and extends the buffer by exactly the bytes the kernel wrote.
//!
//! Unix and Windows (Winsock) alike: `rustix::fd::BorrowedFd` is a socket there. What differs
//! is how one call is made non-blocking: `MSG_DONTWAIT` on Unix; on Windows, which has no such
//! flag, the socket's own mode decides.

use std::io;

use bytes::BytesMut;
use rustix::fd::BorrowedFd;
use rustix::net::RecvFlags;

/// Receives once from the socket `fd` into the spare capacity of `buf` (at most
/// `buf.capacity() - buf.len()` bytes) and appends what arrived. Returns the number of bytes
/// received; `Ok(0)` is end of stream (or no spare capacity: reserve first). With
/// `nonblocking`, an empty socket is `ErrorKind::WouldBlock` (`MSG_DONTWAIT`, whatever the
/// socket's own mode). Interrupted calls are retried.
#[cfg(unix)]
pub fn recv_into(fd: BorrowedFd<'_>, buf: &mut BytesMut, nonblocking: bool) -> io::Result<usize> {
    let flags = if nonblocking {
        RecvFlags::DONTWAIT
    } else {
        RecvFlags::empty()
    };
    recv_with(fd, buf, flags)
}

/// Receives once from the socket `socket` into the spare capacity of `buf`, like the Unix
/// `recv_into`, except that the socket's mode decides whether the call blocks (Winsock has no
/// `MSG_DONTWAIT`): on a non-blocking socket, nothing to read is `ErrorKind::WouldBlock`.
#[cfg(windows)]
pub fn recv_into(socket: BorrowedFd<'_>, buf: &mut BytesMut) -> io::Result<usize> {
    recv_with(socket, buf, RecvFlags::empty())
}

fn recv_with(fd: BorrowedFd<'_>, buf: &mut BytesMut, flags: RecvFlags) -> io::Result<usize> {
    loop {
        let spare = buf.spare_capacity_mut();
        if spare.is_empty() {
            return Ok(0);
        }
        match rustix::net::recv(fd, spare, flags) {
            Ok(((init, _), _)) => {
                let n = init.len();
                // SAFETY: `recv` wrote `n` bytes to the start of the spare capacity (rustix
                // hands back exactly that prefix as `init`), so `len + n` bytes from the start
                // of `buf` are initialised, and `n <= spare.len()` keeps it within capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The peer of a connected Unix socket, as the kernel recorded it when the connection was
/// made: its pid (`LOCAL_PEERPID`; `None` if the kernel does not say), effective uid and gid
/// (`getpeereid`). macOS only: Linux has `SO_PEERCRED`, which rustix reads safely.
#[cfg(target_os = "macos")]
pub fn peer_ids(fd: BorrowedFd<'_>) -> io::Result<(Option<u32>, u32, u32)> {
    use std::os::fd::AsRawFd;
    let (mut uid, mut gid): (libc::uid_t, libc::gid_t) = (0, 0);
    // SAFETY: `fd` is an open descriptor for the duration of the borrow; `uid` and `gid` are
    // valid, writable locals of the types the call fills.
    if unsafe { libc::getpeereid(fd.as_raw_fd(), &mut uid, &mut gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid: libc::pid_t = 0;
    let mut len = std::mem::size_of::<libc::pid_t>() as libc::socklen_t;
    // SAFETY: as above; the option value buffer is `pid`, `len` bytes long, and the kernel
    // writes at most `len` bytes to it and the length it wrote to `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_LOCAL,
            libc::LOCAL_PEERPID,
            (&mut pid as *mut libc::pid_t).cast(),
            &mut len,
        )
    };
    let full = len as usize == std::mem::size_of::<libc::pid_t>();
    let pid = if rc == 0 && full {
        u32::try_from(pid).ok().filter(|&p| p != 0)
    } else {
        None
    };
    Ok((pid, uid, gid))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn appends_exactly_what_arrived() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"hello").unwrap();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b">");
        let n = recv_into(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!(n, 5);
        assert_eq!(&buf[..], b">hello");
    }

    #[test]
    fn nonblocking_empty_socket_would_block_and_eof_is_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = BytesMut::with_capacity(16);
        let e = recv_into(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(recv_into(b.as_fd(), &mut buf, false).unwrap(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn no_spare_capacity_reads_nothing() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"x").unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(recv_into(b.as_fd(), &mut buf, true).unwrap(), 0);
    }
}
