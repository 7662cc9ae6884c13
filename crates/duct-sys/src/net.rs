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

/// Receives once from the socket `fd` into the spare capacity of `first`'s buffer, at most
/// its limit, and then, in the same call, into the spare capacity of `second`'s, at most its
/// limit (`recvmsg` with two iovecs: a read that fills one buffer up to a
/// boundary and goes on into another). Appends what arrived to each and returns how many
/// bytes each got; `(0, 0)` is end of stream (or no room in either). `nonblocking` as for
/// [`recv_into`]. Interrupted calls are retried.
#[cfg(unix)]
pub fn recv_into_two(
    fd: BorrowedFd<'_>,
    (first, first_max): (&mut BytesMut, usize),
    (second, second_max): (&mut BytesMut, usize),
    nonblocking: bool,
) -> io::Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    let a = first.spare_capacity_mut();
    let a_len = a.len().min(first_max);
    let b = second.spare_capacity_mut();
    let b_len = b.len().min(second_max);
    if a_len + b_len == 0 {
        return Ok((0, 0));
    }
    let mut iov = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a_len,
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b_len,
        },
    ];
    // SAFETY: an all-zero `msghdr` is a valid value (no name, no control data, no iovecs).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    let n = loop {
        // SAFETY: `fd` is an open descriptor for the borrow's duration. `msg` points at `iov`,
        // two live iovecs over the spare capacities of `first` and `second` (`a_len` and
        // `b_len` bytes, within them: `MaybeUninit` memory the kernel may write, which nothing
        // else reads or writes while the exclusive borrows last); no name or control buffer.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let n1 = n.min(a_len);
    let n2 = (n - n1).min(b_len);
    // SAFETY: the kernel wrote `n` bytes through the iovecs in order: the first `n1` (at most
    // `a_len`, within `first`'s spare capacity) to the start of `first`'s spare capacity, the
    // next `n2` (at most `b_len`) to the start of `second`'s; those bytes are initialised, and
    // both lengths stay within capacity.
    unsafe {
        first.set_len(first.len() + n1);
        second.set_len(second.len() + n2);
    }
    Ok((n1, n2))
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
    fn two_buffers_fill_in_order_each_up_to_its_limit() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"0123456789abcdef").unwrap();
        let mut first = BytesMut::with_capacity(64);
        first.extend_from_slice(b"<");
        let mut second = BytesMut::with_capacity(64);
        // The first stops at its limit (not its capacity), the second at its limit: the
        // rest stays in the socket.
        let got = recv_into_two(b.as_fd(), (&mut first, 4), (&mut second, 5), false).unwrap();
        assert_eq!(got, (4, 5));
        assert_eq!((&first[..], &second[..]), (&b"<0123"[..], &b"45678"[..]));
        // Less than the first's room: the second gets nothing.
        let got = recv_into_two(b.as_fd(), (&mut first, 60), (&mut second, 60), false).unwrap();
        assert_eq!(got, (7, 0));
        assert_eq!(&first[..], b"<01239abcdef");
        // Capacity bounds a limit larger than it.
        a.write_all(&[7u8; 200]).unwrap();
        let mut small = BytesMut::with_capacity(8);
        let room = small.capacity();
        let got = recv_into_two(b.as_fd(), (&mut small, 1000), (&mut second, 10), false).unwrap();
        assert_eq!(got, (room, 10));
        assert_eq!(second.len(), 15);
        // Empty and non-blocking: WouldBlock; the peer gone: (0, 0).
        let mut first = BytesMut::with_capacity(300);
        recv_into_two(b.as_fd(), (&mut first, 300), (&mut second, 0), false).unwrap();
        let e = recv_into_two(b.as_fd(), (&mut first, 10), (&mut second, 10), true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        let got = recv_into_two(b.as_fd(), (&mut first, 10), (&mut second, 10), false).unwrap();
        assert_eq!(got, (0, 0));
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
