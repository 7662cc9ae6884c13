//! Passing a file descriptor over a Unix socket (`SCM_RIGHTS`), with a few bytes beside it.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// `MSG_NOSIGNAL` where the platform has it; elsewhere (macOS) the socket itself must carry
/// `SO_NOSIGPIPE`, or a write to a closed peer raises `SIGPIPE`.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const NO_SIGNAL: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const NO_SIGNAL: SendFlags = SendFlags::empty();

/// Sends `data` (nonempty) with `fd` attached, in one message. Blocks like a write. On macOS,
/// give the socket `SO_NOSIGPIPE` first.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    assert!(!data.is_empty(), "the fd travels with at least one byte");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the fd in the control buffer"));
    }
    loop {
        match rustix::net::sendmsg(sock, &[IoSlice::new(data)], &mut control, NO_SIGNAL) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const CMSG_CLOEXEC: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const CMSG_CLOEXEC: RecvFlags = RecvFlags::empty();

/// Receives one message into `buf`: the bytes received and the fd that came with them, if any
/// (extra fds a peer attached are closed). `Ok((0, None))` is end of stream. Blocks like a read.
/// The fd is close-on-exec: atomically where the platform has `MSG_CMSG_CLOEXEC`, just after
/// receipt elsewhere (macOS: a `fork` + `exec` in another thread in between could inherit it).
pub fn recv_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut got = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                // Keep the first; the rest close as they drop.
                if got.is_none() {
                    #[cfg(not(any(
                        target_os = "linux",
                        target_os = "android",
                        target_os = "freebsd"
                    )))]
                    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
                    got = Some(fd);
                }
            }
        }
    }
    Ok((msg.bytes, got))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    #[cfg_attr(miri, ignore = "sendmsg is not emulated by Miri")]
    fn an_fd_crosses_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let path = std::env::temp_dir().join(format!("duct-fdpass-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(b"shared").unwrap();
        send_fd(a.as_fd(), file.as_fd(), b"seg").unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_fd(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"seg");
        let mut other = std::fs::File::from(fd.expect("an fd came along"));
        other.rewind().unwrap();
        let mut text = String::new();
        other.read_to_string(&mut text).unwrap();
        assert_eq!(text, "shared");
        drop(a);
        assert_eq!(recv_fd(b.as_fd(), &mut buf).unwrap().0, 0, "EOF");
    }
}
