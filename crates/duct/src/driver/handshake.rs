//! A connection whose handshake is under way: a transport stream, a fresh `Session`, and the
//! buffers between them. Used blocking by `dial` and non-blocking by the listener's accept
//! loop; once the session is established it becomes a [`super::conn::Conn`].

use std::io;
use std::time::Instant;

use duct_proto::{Event, Session, State};

use super::io::{ReadBuf, WriteQueue};
use super::{proto_error, FrameRead, StreamTransport};
use crate::transport::Stream;
use crate::{Addr, Error, ErrorKind};

/// Where a handshake stands after some input.
pub(crate) enum Progress {
    /// Input was handled; the handshake is not complete yet (more may be readable).
    Pending,
    /// The transport has nothing more to read now.
    Drained,
    /// The session is established.
    Done,
    /// A listener's session holds a valid HELLO and awaits the decision (`welcome`).
    Hello,
}

pub(crate) struct Handshake {
    pub(crate) stream: Stream,
    pub(crate) session: Session,
    pub(crate) rbuf: ReadBuf,
    pub(crate) wq: WriteQueue,
    pub(crate) peer: Addr,
    pub(crate) started: Instant,
}

impl Handshake {
    pub(crate) fn new(stream: Stream, session: Session, peer: Addr, now: Instant) -> Self {
        Handshake {
            stream,
            session,
            rbuf: ReadBuf::new(),
            wq: WriteQueue::new(),
            peer,
            started: now,
        }
    }

    /// Moves queued frames into the write queue and writes what the socket takes now.
    /// `Ok(true)`: everything written.
    pub(crate) fn flush_nonblocking(&mut self) -> Result<bool, Error> {
        while let Some(t) = self.session.poll_transmit() {
            self.wq.push(t);
        }
        self.wq
            .write_nonblocking(&self.stream)
            .map_err(|e| Error::io(e, format_args!("handshake with {}", self.peer)))
    }

    /// Reads what is available without blocking and advances the handshake.
    pub(crate) fn on_readable(&mut self) -> Result<Progress, Error> {
        let needed = self.session.input_needed(&self.rbuf.data);
        match self.rbuf.recv(&self.stream, needed, FrameRead::Signal) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::Disconnected,
                    format!("{} closed the connection during the handshake", self.peer),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Drained),
            Err(e) => return Err(Error::io(e, format_args!("handshake with {}", self.peer))),
        }
        let now = Instant::now();
        if let Err(e) = self.rbuf.feed(&mut self.session, now) {
            // A REJECT or CLOSE saying why may be queued: tell the peer, best effort.
            let _ = self.flush_nonblocking();
            return Err(proto_error(e, &self.peer));
        }
        Ok(self.progress())
    }

    /// Checks the session's handshake deadline.
    pub(crate) fn check_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.session
            .handle_timeout(now)
            .map_err(|e| proto_error(e, &self.peer))
    }

    fn progress(&mut self) -> Progress {
        if self.session.state() == State::Established {
            // The Connected event stays queued for the pipe; peek by state instead.
            Progress::Done
        } else if self.session.pending_hello().is_some() {
            Progress::Hello
        } else {
            Progress::Pending
        }
    }

    /// Drives a dialer's handshake to completion, blocking until `deadline`.
    pub(crate) fn run_blocking(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            let flushed = self.flush_nonblocking()?;
            if let Progress::Done = self.progress() {
                if flushed {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "handshake with {} did not complete within {:?}",
                        self.peer,
                        deadline.saturating_duration_since(self.started)
                    ),
                ));
            }
            // The transport's own wait when only input is awaited (it knows about input it
            // holds itself, such as decrypted TLS records or frames in a shared ring, which do
            // not make the fd readable); otherwise either direction.
            let ready = if flushed || self.stream.frame_io().is_some() {
                self.stream.wait_readable(Some(deadline))
            } else {
                self.stream.wait_io(Some(deadline))
            }
            .map_err(|e| Error::io(e, format_args!("handshake with {}", self.peer)))?;
            if ready {
                self.on_readable()?;
            }
            self.check_timeout(Instant::now())?;
        }
    }

    /// Drops the Connected event (the pipe reports the state itself).
    pub(crate) fn take_connected(&mut self) -> u64 {
        while let Some(ev) = self.session.poll_event() {
            if let Event::Connected { session_id } = ev {
                return session_id;
            }
        }
        self.session.session_id()
    }
}
