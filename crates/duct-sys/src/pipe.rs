//! Windows named pipes (`pipe://`): creating server instances and opening client ends, each
//! handed out as a [`mio::windows::NamedPipe`] (overlapped I/O, driven by a `mio::Poll`).
//!
//! What this module owns: the Win32 calls (`CreateNamedPipeW`, `CreateFileW`,
//! `WaitNamedPipeW`, `PeekNamedPipe`) and the one `unsafe` conversion of a fresh handle into
//! mio's type. What it leaves to others: everything about using the pipes (registration,
//! reads, writes, waiting for readiness) is crate duct's transport, through mio's safe API.
//!
//! Every pipe is byte-mode, duplex, overlapped, and refuses remote clients
//! (`PIPE_REJECT_REMOTE_CLIENTS`): `pipe://` is for processes on one host. A client opens
//! its end with `SECURITY_IDENTIFICATION`, so the server can learn who the client is but not
//! act as it.

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, RawHandle};
use std::time::Duration;

use mio::windows::NamedPipe;
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_PIPE_BUSY, ERROR_SEM_TIMEOUT, GENERIC_READ,
    GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, PeekNamedPipe, WaitNamedPipeW, PIPE_READMODE_BYTE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};

/// The size of each direction's buffer in the pipe (the same as mio's `NamedPipe::new`, and
/// the largest read mio keeps in flight).
const BUFFER_SIZE: u32 = 64 * 1024;

/// The longest name Windows accepts after `\\.\pipe\`, in UTF-16 units.
pub const MAX_NAME_LEN: usize = 256;

/// A pipe's full path, `\\.\pipe\NAME`, as the NUL-terminated UTF-16 string the Win32 calls
/// take. Made only by [`PipePath::new`], which checks the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipePath {
    /// Always ends with exactly one NUL, and has no other.
    wide: Vec<u16>,
}

impl PipePath {
    /// The path of the pipe named `name`. `InvalidInput` when the name is empty, holds a
    /// backslash or a NUL (Windows allows neither in a pipe name), or is longer than
    /// [`MAX_NAME_LEN`] UTF-16 units.
    pub fn new(name: &str) -> io::Result<PipePath> {
        let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
        if name.is_empty() {
            return Err(invalid("a pipe name cannot be empty"));
        }
        if name.contains(['\\', '\0']) {
            return Err(invalid("a pipe name cannot contain a backslash or a NUL"));
        }
        let units = name.encode_utf16().count();
        if units > MAX_NAME_LEN {
            return Err(invalid("a pipe name is at most 256 UTF-16 units long"));
        }
        let wide = r"\\.\pipe\"
            .encode_utf16()
            .chain(name.encode_utf16())
            .chain(Some(0))
            .collect();
        Ok(PipePath { wide })
    }

    fn as_ptr(&self) -> *const u16 {
        self.wide.as_ptr()
    }
}

/// Creates a server instance of the pipe at `path`, not yet connected to a client (register
/// it with a `Poll`, then call `NamedPipe::connect`). `first`: this must be the first instance
/// of the name (`FILE_FLAG_FIRST_PIPE_INSTANCE`): if any instance exists already, whoever
/// made it, the call fails and [`is_name_taken`] says so.
pub fn create_instance(path: &PipePath, first: bool) -> io::Result<NamedPipe> {
    let mut open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
    if first {
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    }
    let pipe_mode = PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;
    // SAFETY: `path` is a NUL-terminated UTF-16 string (the invariant of `PipePath`) that
    // lives for the call; a null security-attributes pointer means the default security
    // descriptor and a handle that is not inherited.
    let handle = unsafe {
        CreateNamedPipeW(
            path.as_ptr(),
            open_mode,
            pipe_mode,
            PIPE_UNLIMITED_INSTANCES,
            BUFFER_SIZE,
            BUFFER_SIZE,
            0,
            std::ptr::null(),
        )
    };
    owned_pipe(handle)
}

/// Opens the client end of the pipe at `path` for overlapped I/O. Fails with the OS error
/// when no instance is free: [`is_busy`] when every instance is connected (wait with
/// [`wait_available`] and try again), [`is_not_found`] when nobody serves the name.
pub fn open(path: &PipePath) -> io::Result<NamedPipe> {
    // SAFETY: `path` is a NUL-terminated UTF-16 string that lives for the call; null security
    // attributes and template handle are allowed (default security, no template).
    let handle = unsafe {
        CreateFileW(
            path.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            std::ptr::null_mut(),
        )
    };
    owned_pipe(handle)
}

/// Waits up to `timeout` (at least a millisecond, at most `u32::MAX - 1` ms) until an
/// instance of the pipe at `path` is free to connect to. `Ok` does not reserve it: another
/// client may take it first, and [`open`] then says busy again. Fails with the OS error when
/// the time passes (`ERROR_SEM_TIMEOUT`) or nobody serves the name ([`is_not_found`]).
pub fn wait_available(path: &PipePath, timeout: Duration) -> io::Result<()> {
    // (0 would mean the pipe's default time-out, u32::MAX forever.)
    let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX - 1)) as u32;
    // SAFETY: `path` is a NUL-terminated UTF-16 string that lives for the call.
    if unsafe { WaitNamedPipeW(path.as_ptr(), ms) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a pipe of this name exists: an instance is free, or every one is busy. Asks
/// without connecting (`WaitNamedPipeW` for a millisecond), so no server sees a client come
/// and go. Listeners check it before they make the first instance, beside
/// `FILE_FLAG_FIRST_PIPE_INSTANCE` (which Wine does not enforce).
pub fn name_in_use(path: &PipePath) -> bool {
    match wait_available(path, Duration::from_millis(1)) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(ERROR_SEM_TIMEOUT as i32),
    }
}

/// Bytes the pipe holds for this end to read (its buffer, not what mio has read already).
pub fn bytes_available(pipe: &NamedPipe) -> io::Result<usize> {
    let mut avail: u32 = 0;
    // SAFETY: the handle is open while `pipe` is borrowed; no data buffer is passed (null,
    // size 0), and the only out-pointer is `avail`, a valid local `u32`.
    let ok = unsafe {
        PeekNamedPipe(
            pipe.as_raw_handle() as HANDLE,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut avail,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(avail as usize)
}

/// Whether `err` says that every instance of the pipe is connected (`ERROR_PIPE_BUSY`).
pub fn is_busy(err: &io::Error) -> bool {
    err.raw_os_error() == Some(ERROR_PIPE_BUSY as i32)
}

/// Whether `err` says that no pipe of that name exists (`ERROR_FILE_NOT_FOUND`).
pub fn is_not_found(err: &io::Error) -> bool {
    err.raw_os_error() == Some(ERROR_FILE_NOT_FOUND as i32)
}

/// Whether `err`, from [`create_instance`] with `first`, says that the name is served already
/// (Windows answers `ERROR_ACCESS_DENIED`, or `ERROR_PIPE_BUSY` when the existing pipe allows
/// no more instances).
pub fn is_name_taken(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(e) if e == ERROR_ACCESS_DENIED as i32 || e == ERROR_PIPE_BUSY as i32
    )
}

/// Wraps a handle a create call returned, or the call's error.
fn owned_pipe(handle: HANDLE) -> io::Result<NamedPipe> {
    if handle == INVALID_HANDLE_VALUE || handle.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `handle` is a valid pipe handle that was just created for overlapped I/O and
    // that nothing else owns or has associated with a completion port: mio's `NamedPipe`
    // takes it over (and closes it), as `from_raw_handle` requires.
    Ok(unsafe { NamedPipe::from_raw_handle(handle as RawHandle) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        let p = PipePath::new("game-01").unwrap();
        let want: Vec<u16> = r"\\.\pipe\game-01".encode_utf16().chain(Some(0)).collect();
        assert_eq!(p.wide, want);
        for bad in ["", r"a\b", "a\0"] {
            assert_eq!(
                PipePath::new(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        assert!(PipePath::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(PipePath::new(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
