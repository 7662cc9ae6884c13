//! [`Pipe`]: one connection to a peer, and [`dial`], which opens one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duct_proto::lifecycle::Policy;
use duct_proto::wire::control::caps;
use duct_proto::{Config, Role, Session};

use crate::addr;
use crate::batch::MessageBatch;
use crate::driver::conn::{Conn, ConnConfig, Meta, Wait};
use crate::driver::handshake::Handshake;
use crate::options::{Heartbeat, Limits};
use crate::transport;
use crate::{
    Addr, CloseOptions, DialOptions, Error, ErrorKind, Message, MessageBuf, PipeState, PipeStats,
    RecvOptions, Result, SendOptions,
};

/// A connection to one peer, carrying messages both ways.
///
/// A `Pipe` is a handle: clones share one connection, and it is `Send + Sync`, so several
/// threads may send and receive on it at once. Messages on one channel arrive in the order
/// they were sent; a message is never duplicated; a message larger than the peer's frame limit
/// is fragmented and reassembled transparently.
///
/// # Threads and blocking
/// The calling thread does the I/O when it is there: `send` writes on the caller's thread (one
/// `sendmsg` for the header and payload, or for many queued frames at once), and `recv` reads
/// on the caller's thread (one read can bring in many messages, which later calls return
/// without a system call). No message is handed between threads when the caller can take it.
/// Behind that, one background reactor thread per process (see [`crate::set_reactor_threads`])
/// serves every pipe while the application is not calling: it reads ahead into the receive
/// queue (up to each channel's receive high-water mark, then it stops and the transport's
/// flow control pushes back on the sender), answers the peer's PINGs, writes output left
/// queued when the socket was full, and releases messages that waited for a rate limit.
///
/// `send` therefore never waits for the socket. `Ok` means the message was **accepted**: it
/// is written, or queued in its channel's bounded send queue to be written as the socket
/// drains, or dropped and counted by the channel's drop policy
/// ([`Backpressure`](crate::Backpressure)). When the queue is full under the default
/// policy, `Block`, `send` waits up to its timeout ([`SendOptions::timeout`], default
/// [`DialOptions::send_timeout`]) for room; `TimedOut` (or `WouldBlock` with a zero timeout)
/// means it was not accepted, and nothing of it is sent. The channels' queues are scheduled
/// by priority and weight ([`ChannelOptions`](crate::ChannelOptions)). A message that was
/// accepted but could not be written before the pipe ended (the peer vanished, or
/// [`CloseOptions::linger`] ran out) is lost, as realtime messages may be; the loss is
/// counted in [`PipeStats::dropped`] and reported to `on_error`, never silent. Messages of
/// reliable channels ([`ChannelOptions::reliable`](crate::ChannelOptions::reliable)) are not
/// lost with a connection: they are acknowledged, and those the peer lacks after a break are
/// sent again once the pipe resumes.
///
/// # Closing
/// [`Pipe::close_with`] sends a CLOSE frame with a code and reason behind every message already
/// accepted, and waits up to the linger time for them to be written; the peer's `recv` returns
/// all of those first, then an [`ErrorKind::Closed`] error whose [`Error::close_reason`] gives
/// the code and reason. Closing wakes every call blocked on the pipe in any thread (they
/// return [`ErrorKind::Closed`]). Dropping the last handle closes the pipe too, with code 0,
/// reason "pipe dropped" and the default linger, without blocking the dropping thread: the
/// background reactor writes what is still queued for up to the linger time.
///
/// # Example
/// ```no_run
/// # fn main() -> duct::Result<()> {
/// let pipe = duct::dial("tcp://127.0.0.1:7000", duct::DialOptions::default())?;
/// pipe.send("hello")?;
/// let reply = pipe.recv()?;
/// println!("{} bytes on channel {}", reply.len(), reply.channel());
/// pipe.close()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Pipe {
    conn: Arc<Conn>,
    /// Shared by every clone: dropped with the last handle, it closes the pipe.
    _last: Arc<LastHandle>,
}

/// Closes the pipe when the last `Pipe` handle goes (see [`Conn::close_on_drop`]).
struct LastHandle(Option<Arc<Conn>>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.close_on_drop();
        }
    }
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("local_addr", &self.conn.local_addr())
            .field("peer_addr", &self.conn.peer_addr())
            .field("state", &self.conn.state())
            .finish()
    }
}

/// Opens a pipe to the listener at `addr`.
///
/// `addr` is `tcp://host:port` (IPv4, `[IPv6]` or a host name), `uds:///absolute/path`,
/// `uds://@abstract-name` (Linux) or `pipe://name` (Windows; a pipe whose instances are all
/// busy is waited for). [`DialOptions::timeout`] (default 5 s) bounds the connect and the
/// handshake together.
///
/// Errors: [`ErrorKind::InvalidAddress`] for a malformed address (the message quotes it),
/// [`ErrorKind::ConnectionRefused`] when nothing listens there (retryable),
/// [`ErrorKind::TimedOut`] when connect plus handshake take longer than the timeout,
/// [`ErrorKind::Incompatible`] when the listener speaks another protocol version,
/// [`ErrorKind::Unsupported`] for options or transports this version does not implement.
pub fn dial(addr: &str, opts: DialOptions) -> Result<Pipe> {
    let ep = addr::parse(addr)?;
    let instance_id = fastrand::u64(1..);
    let hs = connect_handshake(addr, &ep, &opts, instance_id, 0, None)?;
    let redial = opts.reconnect.map(|reconnect| {
        Arc::new(Redial {
            addr: addr.to_owned(),
            ep,
            opts: opts.clone(),
            instance_id,
            reconnect,
        })
    });
    let mut conn_config = conn_config(
        &opts.limits,
        opts.on_state_change.clone(),
        opts.on_error.clone(),
        redial,
    );
    conn_config.pipe_id = instance_id;
    Ok(Pipe::from_conn(Conn::start(hs, conn_config)?))
}

/// What a dialed pipe needs to connect again (see [`crate::Reconnect`]).
pub(crate) struct Redial {
    pub(crate) addr: String,
    pub(crate) ep: addr::Endpoint,
    pub(crate) opts: DialOptions,
    /// The dialing pipe's identity, the same on every reconnect.
    pub(crate) instance_id: u64,
    pub(crate) reconnect: crate::Reconnect,
}

/// Connects and completes a handshake, bounded by the dial timeout. `resume_session_id`: the
/// session to resume (0: a fresh one).
///
/// A named pipe whose listener closed a moment ago may still take a client (its instance is
/// closed on the listener's reactor thread, just after): a pipe's connection that ends
/// before the handshake completes is tried again, until the dial timeout, and then finds
/// the next listener or nobody (`ConnectionRefused`).
pub(crate) fn connect_handshake(
    addr: &str,
    ep: &addr::Endpoint,
    opts: &DialOptions,
    instance_id: u64,
    resume_session_id: u64,
    recv_state: Option<duct_proto::reliable::RecvState>,
) -> Result<Handshake> {
    let timeout = opts.timeout_or_default();
    let deadline = Instant::now() + timeout;
    loop {
        let result = handshake_until(
            addr,
            ep,
            opts,
            instance_id,
            resume_session_id,
            recv_state.clone(),
            deadline,
        );
        match result {
            Err(e)
                if matches!(ep, addr::Endpoint::Pipe(_))
                    && e.kind() == ErrorKind::Disconnected
                    && Instant::now() + PIPE_RETRY < deadline =>
            {
                tracing::debug!(%addr, error = %e, "the pipe closed during the handshake; again");
                std::thread::sleep(PIPE_RETRY);
            }
            other => return other,
        }
    }
}

/// The pause before a dialer tries a named pipe again (see [`connect_handshake`]).
const PIPE_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// One attempt of [`connect_handshake`], until `deadline`.
fn handshake_until(
    addr: &str,
    ep: &addr::Endpoint,
    opts: &DialOptions,
    instance_id: u64,
    resume_session_id: u64,
    recv_state: Option<duct_proto::reliable::RecvState>,
    deadline: Instant,
) -> Result<Handshake> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(Error::new(
            ErrorKind::TimedOut,
            format!("dial {addr}: the dial timeout passed"),
        ));
    }
    // TLS settings are checked and loaded before connecting: a bad certificate file fails
    // the dial at once, whatever the network does.
    let tls = transport::client_tls(ep, opts.tls.as_ref())?;
    let stream = transport::connect(ep, timeout)?;
    let stream = transport::secure_client(stream, tls.as_ref())?;
    stream.set_spin(opts.limits.spin);
    let heartbeat = opts.heartbeat_or_default();
    if let Err(e) = stream.set_keepalive(&heartbeat) {
        tracing::debug!(%addr, error = %e, "could not set TCP keepalive");
    }
    let peer = stream.peer_addr();
    let now = Instant::now();
    let mut config = session_config(&opts.limits, heartbeat, opts.qos(), &stream);
    config.instance_id = instance_id;
    config.resume_session_id = resume_session_id;
    config.recv_state = recv_state;
    if let Some(token) = &opts.token {
        config
            .hello_extensions
            .push(duct_proto::wire::control::Extension {
                kind: duct_proto::wire::control::EXT_TOKEN,
                value: bytes::Bytes::copy_from_slice(token),
            });
    }
    if opts.reconnect.is_some() {
        // Only a pipe that reconnects has a session to resume: a listener keeps the session
        // of a broken connection only when RESUME was agreed.
        config.capabilities |= caps::RESUME;
    }
    config.handshake_timeout = deadline.saturating_duration_since(now);
    let session = Session::new(config, Role::Dialer, now);
    let mut hs = Handshake::new(stream, session, peer, now);
    hs.run_blocking(deadline).map_err(|e| {
        if e.kind() == ErrorKind::TimedOut {
            Error::new(
                ErrorKind::TimedOut,
                format!(
                    "dial {addr}: no handshake answer within {:?} (connect + handshake)",
                    opts.timeout_or_default()
                ),
            )
        } else {
            e
        }
    })?;
    Ok(hs)
}

/// The connection configuration for a pipe with these limits and callbacks.
pub(crate) fn conn_config(
    limits: &Limits,
    on_state_change: Option<crate::options::StateCallback>,
    on_error: Option<crate::options::ErrorCallback>,
    redial: Option<Arc<Redial>>,
) -> ConnConfig {
    ConnConfig {
        max_message_size: limits.max_message_size,
        send_timeout: limits.send_timeout,
        linger: limits.linger,
        policy: Policy {
            redial: redial.as_ref().map(|r| r.reconnect.backoff()),
            resume_window: None,
        },
        on_state_change,
        on_error,
        redial,
        pipe_id: 0,
        live: None,
    }
}

/// The session configuration for a pipe with these limits, heartbeats and channels.
pub(crate) fn session_config(
    limits: &Limits,
    heartbeat: Heartbeat,
    qos: Arc<duct_proto::qos::QosConfig>,
    stream: &transport::Stream,
) -> Config {
    Config {
        qos,
        heartbeat_interval: heartbeat.enabled().then_some(heartbeat.interval),
        heartbeat_misses: heartbeat.misses.max(1),
        max_frame_payload: stream.frame_limit(limits.max_frame_payload),
        max_message_size: limits.max_message_size.min(u32::MAX as usize) as u32,
        reassembly_limit: limits.reassembly_limit,
        reassembly_timeout: limits.reassembly_timeout,
        ..Config::default()
    }
}

impl Pipe {
    pub(crate) fn from_conn(conn: Arc<Conn>) -> Pipe {
        let last = Arc::new(LastHandle(Some(Arc::clone(&conn))));
        Pipe { conn, _last: last }
    }

    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Sends one message on its channel (see [`Message::with_channel`]; default 0).
    /// Same as [`Pipe::send_with`] with default options.
    pub fn send(&self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        let channel = msg.channel();
        let timeout = self.conn.send_timeout();
        self.conn
            .send(channel, msg.into_bytes(), Meta::default(), None, timeout)
    }

    /// Sends one message with options: [`SendOptions::channel`] (overrides the message's own
    /// channel), [`SendOptions::timeout`] (how long to wait for room in the channel's send
    /// queue), [`SendOptions::ttl`] (overrides the channel's time to live).
    ///
    /// `Ok` means the message was accepted (queued, written, or dropped and counted by the
    /// channel's drop policy). Errors: [`ErrorKind::TimedOut`] when the channel's queue stayed
    /// full until the timeout (`Block`); [`ErrorKind::WouldBlock`] with a zero timeout, or
    /// under `FailFast` when the queue is full or the channel's rate limit is spent; in each
    /// case nothing of the message is sent. [`ErrorKind::MessageTooLarge`] above the size
    /// limit of either side.
    ///
    /// ```no_run
    /// # fn main() -> duct::Result<()> {
    /// use std::time::Duration;
    /// let pipe = duct::dial("uds://@world", duct::DialOptions::default())?;
    /// // A position update that is worthless after 50 ms, on channel 1.
    /// let opts = duct::SendOptions::default().channel(1).ttl(Duration::from_millis(50));
    /// pipe.send_with(&b"pos 10 20"[..], &opts)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_with(&self, msg: impl Into<Message>, opts: &SendOptions) -> Result<()> {
        let msg = msg.into();
        let channel = opts.channel_for(msg.channel());
        let timeout = opts.timeout_or(self.conn.send_timeout());
        self.conn
            .send(channel, msg.into_bytes(), opts.meta(), None, timeout)
    }

    /// Receives the next message, blocking until one arrives or the pipe ends.
    ///
    /// Errors: [`ErrorKind::Closed`] after the peer closed (with [`Error::close_reason`]) or we
    /// did, once every message received before the close has been returned;
    /// [`ErrorKind::Disconnected`] when the connection broke without a close.
    pub fn recv(&self) -> Result<Message> {
        self.recv_with(&RecvOptions::default())
    }

    /// Receives the next message, waiting at most [`RecvOptions::timeout`]
    /// (`Duration::ZERO`: do not wait; then an empty pipe is [`ErrorKind::WouldBlock`]).
    /// Expiry is [`ErrorKind::TimedOut`].
    pub fn recv_with(&self, opts: &RecvOptions) -> Result<Message> {
        let wait = wait_for(opts.timeout);
        match self.conn.recv(wait)? {
            Some(d) => Ok(Message::new(d.payload).with_channel(d.channel)),
            None => Err(self.would_block()),
        }
    }

    pub(crate) fn would_block(&self) -> Error {
        self.conn.would_block()
    }

    /// Returns a message if one is ready, without blocking (it may read what the socket
    /// already holds). `Ok(None)` when there is none.
    pub fn try_recv(&self) -> Result<Option<Message>> {
        Ok(self
            .conn
            .recv(Wait::No)?
            .map(|d| Message::new(d.payload).with_channel(d.channel)))
    }

    /// Sends several messages, writing their frames together (as few system calls as the
    /// socket allows). Each message goes on [`SendOptions::channel`] if set, else its own.
    /// Returns how many were accepted, in order; fails only if none was.
    ///
    /// It stops at the first message that is not accepted (its queue stayed full past the
    /// timeout, a `FailFast` refusal, a message too large, the pipe ended): that message and
    /// the ones after it are not sent. The iterator is consumed up to and including that
    /// message, so to send the rest again keep them: pass `msgs.iter().cloned()` (cloning a
    /// [`Message`] does not copy its payload) and resend from index `n` after `Ok(n)`. A
    /// message dropped by its channel's policy (`DropNew`, `DropOld`) counts as accepted.
    ///
    /// On a channel under [`Backpressure::Block`](crate::Backpressure::Block), a call of
    /// at least 64 messages that finds the transport full (frames wait for a
    /// socket its last write found full, or a shared-memory ring has no room) first waits a
    /// little for it to take more, as a blocking writer would, before it queues the rest as
    /// copies: a socket up to 200 µs at a time while each wait brings room, a ring up to the
    /// pipe's `spin` (never past the timeout;
    /// [`PipeStats::room_waits`](crate::PipeStats::room_waits) counts them). A reader that
    /// stopped costs one such wait, not one a call. Smaller calls queue at once.
    pub fn send_batch(
        &self,
        msgs: impl IntoIterator<Item = Message>,
        opts: &SendOptions,
    ) -> Result<usize> {
        let timeout = opts.timeout_or(self.conn.send_timeout());
        let mut it = msgs
            .into_iter()
            .map(|m| (opts.channel_for(m.channel()), m.into_bytes()));
        self.conn.send_batch(&mut it, opts.meta(), timeout)
    }

    /// Sends a copy of `payload` on [`SendOptions::channel`] (channel 0 if unset), as
    /// [`Pipe::send_with`] would send it as a [`Message`]. The caller keeps its buffer (a
    /// scratch buffer it serializes into, say): duct copies the bytes into its write buffer
    /// as it frames them, so a small message costs no allocation and no reference count. A
    /// large one (over 512 bytes, one frame) that brings the write buffer to about one
    /// `sendmsg`'s worth (64 KiB) is written at once with what is buffered, straight from
    /// `payload` (as a `BufWriter` writes a large buffer), and copied only if the socket did
    /// not take all of it. One larger than a frame, on a channel that is not reliable, goes
    /// the same way fragment by fragment while the socket takes them whole and nothing else
    /// waits to go out; at the first it does not (or once another message waits), the
    /// message is copied and the rest goes out as the pipe's own fragments do (between other
    /// channels' frames, as their priorities say). A message that has to wait
    /// in its channel's queue (the socket is
    /// full, others are queued before it, the channel is reliable, has a time to live or a
    /// rate limit) is copied into bytes of its own; small ones share a reused buffer.
    ///
    /// ```no_run
    /// # fn main() -> duct::Result<()> {
    /// use duct::SendOptions;
    ///
    /// let pipe = duct::dial("uds://@world-1", duct::DialOptions::default())?;
    /// let positions = SendOptions::default().channel(1);
    /// let mut scratch = Vec::with_capacity(64);
    /// for (player, x, y) in [(7u32, 10i32, 20i32), (8, -4, 3)] {
    ///     scratch.clear();
    ///     scratch.extend_from_slice(&player.to_le_bytes());
    ///     scratch.extend_from_slice(&x.to_le_bytes());
    ///     scratch.extend_from_slice(&y.to_le_bytes());
    ///     pipe.send_slice(&scratch, &positions)?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_slice(&self, payload: &[u8], opts: &SendOptions) -> Result<()> {
        self.send_slices(std::iter::once(payload), opts).map(|_| ())
    }

    /// Sends a copy of each payload, in order, on [`SendOptions::channel`] (channel 0 if
    /// unset): [`Pipe::send_batch`] for slices, copied as [`Pipe::send_slice`] copies them.
    /// Returns how many were accepted, in order; fails only if none was.
    pub fn send_slices<'a>(
        &self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
        opts: &SendOptions,
    ) -> Result<usize> {
        let timeout = opts.timeout_or(self.conn.send_timeout());
        let channel = opts.channel_for(0);
        let mut it = payloads.into_iter().map(|p| (channel, p));
        self.conn.send_batch(&mut it, opts.meta(), timeout)
    }

    /// Receives up to `max` messages into `out`: waits for the first as [`Pipe::recv_with`]
    /// does, then takes only those already available (one lock, at most one read). Returns
    /// how many were appended; `max == 0` returns 0 at once.
    pub fn recv_batch(
        &self,
        out: &mut Vec<Message>,
        max: usize,
        opts: &RecvOptions,
    ) -> Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let wait = wait_for(opts.timeout);
        let n = self.conn.recv_into(wait, max, out)?;
        if n == 0 {
            return Err(self.would_block());
        }
        Ok(n)
    }

    /// Receives up to `max` messages into `batch`, which it empties first: waits for the
    /// first as [`Pipe::recv_with`] does, then takes only those already available, as
    /// [`Pipe::recv_batch`] does. Returns how many `batch` holds; `max == 0` returns 0 at once.
    ///
    /// The messages are views of the bytes they arrived in (see [`MessageBatch`]): the
    /// messages of one read share one handle, so a stream of small messages is taken without
    /// a reference count or an allocation per message. Keep `batch` for the next call.
    pub fn recv_into(
        &self,
        batch: &mut MessageBatch,
        max: usize,
        opts: &RecvOptions,
    ) -> Result<usize> {
        batch.clear();
        if max == 0 {
            return Ok(0);
        }
        let wait = wait_for(opts.timeout);
        let n = self.conn.recv_into(wait, max, batch)?;
        if n == 0 {
            return Err(self.would_block());
        }
        Ok(n)
    }

    /// A buffer of `len` bytes to fill and [`MessageBuf::freeze`] into a message.
    ///
    /// On `shm://` it is a slot of the connection's shared pool, so sending the frozen
    /// message on this pipe moves only a descriptor (zero copies) when it fits one frame
    /// (up to 1 MiB by default). Slots come free as the peer drops the payloads it received;
    /// when none of that size is free within 500 µs, or on any other transport, the buffer is
    /// a zeroed heap buffer instead, and sending it copies it once into the pool:
    /// [`MessageBuf::is_shared`] tells which you got, and `PipeStats::zero_copy_frames` /
    /// `payload_frames_copied` count what happened. Fails with [`ErrorKind::MessageTooLarge`] above
    /// [`DialOptions::max_message_size`](crate::DialOptions::max_message_size).
    ///
    /// ```no_run
    /// # fn main() -> duct::Result<()> {
    /// let pipe = duct::dial("shm://world-1", duct::DialOptions::default())?;
    /// let mut buf = pipe.alloc(1 << 20)?;
    /// buf.fill(7); // write the payload in place
    /// pipe.send(buf.freeze())?;
    /// assert_eq!(pipe.stats().payload_bytes_copied, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn alloc(&self, len: usize) -> Result<MessageBuf> {
        let max = self.conn.max_message_size();
        if len > max {
            return Err(Error::new(
                ErrorKind::MessageTooLarge,
                format!("alloc of {len} bytes exceeds max_message_size ({max} bytes)"),
            ));
        }
        Ok(self
            .conn
            .alloc(len)
            .unwrap_or_else(|| MessageBuf::heap(len)))
    }

    /// Closes the pipe with the default linger ([`DialOptions::linger`], 1 s), code 0 and no
    /// reason. Same as [`Pipe::close_with`] with default options.
    pub fn close(&self) -> Result<()> {
        self.close_with(CloseOptions::default())
    }

    /// Closes the pipe: a CLOSE frame with [`CloseOptions::reason`] follows every message
    /// already sent, flushed for up to [`CloseOptions::linger`]; then the connection is shut
    /// down and every call blocked on the pipe returns [`ErrorKind::Closed`]. Closing a closed
    /// pipe does nothing. Errors while flushing go to `on_error`, not to the caller.
    pub fn close_with(&self, opts: CloseOptions) -> Result<()> {
        let linger = opts.linger_or(self.conn.linger());
        let (code, reason) = match &opts.reason {
            Some((c, r)) => (*c, r.as_str()),
            None => (duct_proto::wire::control::close_code::NORMAL, ""),
        };
        self.conn.close(code, reason, linger)
    }

    /// The pipe's state.
    pub fn state(&self) -> PipeState {
        self.conn.state()
    }

    /// The session id the listener gave this connection (new on every connect).
    pub fn session_id(&self) -> u64 {
        self.conn.session_id()
    }

    /// The pipe's identity: the same on both ends (the dialer's instance id, sent in the
    /// handshake) and for the pipe's whole life, across reconnects and resumes. Useful to
    /// match the two ends in logs, and in [`StateChange::pipe_id`](crate::StateChange::pipe_id) to tell pipes apart in a
    /// callback shared by many.
    pub fn id(&self) -> u64 {
        self.conn.pipe_id()
    }

    /// A snapshot of the pipe's counters.
    pub fn stats(&self) -> PipeStats {
        self.conn.stats()
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.conn.local_addr()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Addr {
        self.conn.peer_addr()
    }

    /// The peer process's credentials (pid, uid, gid), as the kernel reported them when the
    /// connection was made (SO_PEERCRED): on `uds://` (and `shm://`); `None` on tcp. After a
    /// reconnect, those of the current connection.
    pub fn peer_credentials(&self) -> Option<crate::PeerCredentials> {
        self.conn.peer_credentials()
    }
}

fn wait_for(timeout: Option<Duration>) -> Wait {
    match timeout {
        None => Wait::Forever,
        Some(t) if t.is_zero() => Wait::No,
        Some(t) => Wait::Until(Instant::now() + t),
    }
}
