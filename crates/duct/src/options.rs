//! The configuration types of duct ([`DialOptions`], [`ListenOptions`], [`ChannelOptions`],
//! [`SendOptions`], [`RecvOptions`], [`CloseOptions`] and the small types they take) and the
//! value types a pipe reports back ([`PipeState`], [`StateChange`], [`PipeStats`],
//! [`PeerInfo`]).
//!
//! Every builder is `Default + Clone + Debug`, and its methods take and return `self`, so a
//! configuration reads as one chained expression. Each setter's documentation states the
//! default and the unit.
//!
//! This module only stores what the user asked for. The driver reads it (through the
//! `pub(crate)` fields and the `*_settings` getters, which resolve unset values to their
//! defaults) and the protocol core enforces it. Every option is implemented; an option that
//! does not apply where it is used (TLS settings on a Unix socket, say) fails `listen` or
//! `dial` with an error naming it, never silently.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use duct_proto::qos::{self, QosConfig};

use crate::addr::Addr;
use crate::error::Error;
#[cfg(any(doc, test))]
use crate::error::ErrorKind;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Default [`DialOptions::timeout`]: connect plus handshake.
pub(crate) const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `max_message_size`.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * MIB;
/// Default `max_frame_payload`.
pub(crate) const DEFAULT_MAX_FRAME_PAYLOAD: u32 = 64 * 1024;
/// Default `reassembly_limit`: one message of the default maximum size plus one frame.
pub(crate) const DEFAULT_REASSEMBLY_LIMIT: usize = 64 * MIB + 64 * KIB;
/// Default `reassembly_timeout`.
pub(crate) const DEFAULT_REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `send_timeout`.
pub(crate) const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `linger`.
pub(crate) const DEFAULT_LINGER: Duration = Duration::from_secs(1);
/// Default [`DialOptions::spin`] on shm.
#[cfg_attr(not(duct_shm), allow(dead_code))]
pub(crate) const DEFAULT_SHM_SPIN: Duration = Duration::from_micros(20);
/// Default [`ListenOptions::handshake_timeout`].
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ListenOptions::max_pending_handshakes`].
pub(crate) const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 128;
/// Default [`ListenOptions::max_pipes`].
pub(crate) const DEFAULT_MAX_PIPES: usize = 16_384;
/// Default [`ListenOptions::socket_mode`]: the owner only.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default [`ListenOptions::resume_window`].
pub(crate) const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(5);

/// Called on every [`PipeState`] transition.
pub(crate) type StateCallback = Arc<dyn Fn(StateChange) + Send + Sync + 'static>;
/// Called with errors that no call can return.
pub(crate) type ErrorCallback = Arc<dyn Fn(&Error) + Send + Sync + 'static>;
/// Decides whether a peer may connect; `Err` carries the reason sent to the dialer.
pub(crate) type AuthenticateCallback =
    Arc<dyn Fn(&PeerInfo) -> std::result::Result<(), String> + Send + Sync + 'static>;

/// `Debug` stand-in for a stored closure.
struct CallbackMarker;

impl fmt::Debug for CallbackMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<callback>")
    }
}

fn callback_debug<T: ?Sized>(callback: &Option<Arc<T>>) -> Option<CallbackMarker> {
    callback.as_ref().map(|_| CallbackMarker)
}

/// `Debug` stand-in for secret bytes (tokens): shows the length only.
struct RedactedBytes(usize);

impl fmt::Debug for RedactedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Limits shared by dialers and listeners
// ---------------------------------------------------------------------------------------------

/// The resource limits and default timeouts of one pipe; the same set on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest message sent or accepted, in bytes.
    pub(crate) max_message_size: usize,
    /// Largest frame payload this side accepts, in bytes; `None`: the transport's default.
    pub(crate) max_frame_payload: Option<u32>,
    /// Bytes held in partially reassembled messages, per pipe.
    pub(crate) reassembly_limit: usize,
    /// How long a partially reassembled message may wait for its next fragment.
    pub(crate) reassembly_timeout: Duration,
    /// How long `send` waits for queue space when [`SendOptions`] has no timeout.
    pub(crate) send_timeout: Duration,
    /// How long `close` waits to flush queued messages when [`CloseOptions`] has no linger.
    pub(crate) linger: Duration,
    /// shm: how long a blocked receive spins before it sleeps; `None`: [`DEFAULT_SHM_SPIN`].
    pub(crate) spin: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_payload: None,
            reassembly_limit: DEFAULT_REASSEMBLY_LIMIT,
            reassembly_timeout: DEFAULT_REASSEMBLY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            linger: DEFAULT_LINGER,
            spin: None,
        }
    }
}

/// The limit setters, identical on [`DialOptions`] and [`ListenOptions`] (each pipe a listener
/// accepts gets the listener's limits).
macro_rules! limit_setters {
    () => {
        /// The largest message, in bytes, that a pipe sends or accepts. Default: 64 MiB
        /// (67 108 864 bytes).
        ///
        /// A larger `send` fails with [`ErrorKind::MessageTooLarge`] and sends nothing; a
        /// larger incoming message is refused and reported as an error. Messages above
        /// [`max_frame_payload`](Self::max_frame_payload) travel as several frames.
        #[must_use]
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.limits.max_message_size = bytes;
            self
        }

        /// The largest frame payload, in bytes, that this side accepts; the handshake tells
        /// the peer, which then sends no larger frames. Default: 65 536 (64 KiB) on sockets;
        /// on `shm://`, the largest shared-memory slot (1 MiB), which this setting can lower
        /// but not raise.
        ///
        /// Smaller frames let the frames of different channels interleave more finely (a
        /// realtime message waits behind at most one frame of a bulk message); larger frames
        /// cost fewer headers and wakeups, and on `shm://` a message sent from
        /// [`Pipe::alloc`](crate::Pipe::alloc) moves without a copy only if it fits one frame.
        #[must_use]
        pub fn max_frame_payload(mut self, bytes: u32) -> Self {
            self.limits.max_frame_payload = Some(bytes);
            self
        }

        /// The most bytes, per pipe, held in messages whose fragments have not all arrived
        /// yet. Default: 64 MiB + 64 KiB (67 174 400 bytes: one maximum-size message plus
        /// one frame of another channel).
        ///
        /// It bounds the memory a peer can make this side hold by starting messages and not
        /// finishing them; a peer that exceeds it breaks the protocol and is disconnected.
        #[must_use]
        pub fn reassembly_limit(mut self, bytes: usize) -> Self {
            self.limits.reassembly_limit = bytes;
            self
        }

        /// How long a partially received message may wait for its next fragment before it
        /// is discarded and the peer is considered broken. Default: 30 s.
        #[must_use]
        pub fn reassembly_timeout(mut self, timeout: Duration) -> Self {
            self.limits.reassembly_timeout = timeout;
            self
        }

        /// How long a `send` may wait for room in the channel's queue when its
        /// [`SendOptions`] set no timeout. Default: 30 s. On expiry the send fails with
        /// [`ErrorKind::TimedOut`] and the message is not sent.
        #[must_use]
        pub fn send_timeout(mut self, timeout: Duration) -> Self {
            self.limits.send_timeout = timeout;
            self
        }

        /// How long `close` waits for queued messages to reach the peer when its
        /// [`CloseOptions`] set no linger. Default: 1 s. `Duration::ZERO` closes at once and
        /// drops whatever is still queued.
        #[must_use]
        pub fn linger(mut self, linger: Duration) -> Self {
            self.limits.linger = linger;
            self
        }

        /// On `shm://`: how long a receive that finds nothing spins, watching the shared ring,
        /// before it sleeps on a futex (and the sender pays a wake-up syscall). Default:
        /// 20 µs. `Duration::ZERO` sleeps at once (no CPU burnt while idle);
        /// `Duration::MAX` never sleeps: the lowest latency, at the cost of a core per
        /// receiving thread (busy-spin mode). A spinning receiver still notices within about
        /// a millisecond that the peer is gone. Other transports ignore it (their receives
        /// wait in the kernel).
        #[must_use]
        pub fn spin(mut self, spin: Duration) -> Self {
            self.limits.spin = Some(spin);
            self
        }
    };
}

// ---------------------------------------------------------------------------------------------
// DialOptions
// ---------------------------------------------------------------------------------------------

/// How [`dial`](crate::dial) connects, and how the resulting pipe behaves.
///
/// ```
/// use std::time::Duration;
/// use duct::DialOptions;
///
/// let opts = DialOptions::default()
///     .timeout(Duration::from_secs(2))
///     .max_message_size(1 << 20)
///     .on_error(|err| eprintln!("pipe error: {err}"));
/// ```
///
#[derive(Clone, Default)]
pub struct DialOptions {
    /// Connect plus handshake deadline; `None` means [`DEFAULT_DIAL_TIMEOUT`].
    pub(crate) timeout: Option<Duration>,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) channels: BTreeMap<u16, ChannelOptions>,
    pub(crate) pipe_rates: PipeRates,
    /// `None`: the default window.
    pub(crate) inflight: Option<(usize, usize)>,
    pub(crate) on_state_change: Option<StateCallback>,
    pub(crate) on_error: Option<ErrorCallback>,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) token: Option<Vec<u8>>,
    pub(crate) limits: Limits,
}

impl DialOptions {
    /// How long [`dial`](crate::dial) may take in total: resolving the name, connecting (all
    /// addresses the name resolves to, in turn) and the handshake. Default: 5 s. On expiry,
    /// `dial` fails with [`ErrorKind::TimedOut`]; `Duration::ZERO` fails at once.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Reconnect automatically after the connection breaks (the peer vanished, the transport
    /// failed, heartbeats went unanswered) or the peer closes it (a server restarting), with
    /// this backoff. Only a local `close` stops it. Default: off (a broken connection ends the
    /// pipe with [`ErrorKind::Disconnected`], a peer's close with [`ErrorKind::Closed`]).
    ///
    /// While reconnecting the pipe is [`PipeState::Reconnecting`]: `recv` waits (messages
    /// received before the break are still delivered), `send` queues into the pipe's bounded
    /// send queue (then waits up to its timeout), and each failed attempt goes to `on_error`.
    /// Each attempt is bounded by [`DialOptions::timeout`]. A successful reconnect is a new
    /// session (new [`Pipe::session_id`](crate::Pipe::session_id)); messages that were being
    /// written when the connection broke may be lost, unless the listener resumes the pipe
    /// ([`ListenOptions::resume_window`]: the same session continues, losslessly for reliable
    /// channels). When [`Reconnect::max_attempts`] are used up, the pipe ends with the last
    /// attempt's error. `close` returns promptly, also in the middle of a backoff or an attempt.
    #[must_use]
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = Some(reconnect);
        self
    }

    /// How a silent peer is noticed; see [`Heartbeat`]. Default: [`Heartbeat::default`]
    /// (every 1 s, gone after 5 silent intervals); [`Heartbeat::off`] disables them.
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// Configure channel `channel` (0..=65535): queue bounds, backpressure policy, TTL,
    /// priority, weight and rate limits of what this side sends and receives on it. Channels
    /// not configured behave as `ChannelOptions::default()`. Calling it again for the same
    /// channel replaces the earlier options. Each side configures its own end.
    #[must_use]
    pub fn channel(mut self, channel: u16, options: ChannelOptions) -> Self {
        self.channels.insert(channel, options);
        self
    }

    /// The window of reliable delivery: at most `msgs` reliable messages and `bytes` of their
    /// payload sent and not yet acknowledged by the peer (a single larger message still goes
    /// when nothing else is in flight). Beyond it new reliable messages wait in their
    /// channel's queue, under the channel's backpressure policy. Default: 16384 messages,
    /// 16 MiB. `0` is treated as 1.
    #[must_use]
    pub fn inflight_window(mut self, msgs: usize, bytes: usize) -> Self {
        self.inflight = Some((msgs.max(1), bytes.max(1)));
        self
    }

    /// Limit the whole pipe's sending rate (all channels together): messages wait in their
    /// channel's queue for tokens, and when a queue reaches its high-water mark the channel's
    /// [`Backpressure`] policy applies. A message limit and a byte limit can both be set (call
    /// this twice). Default: no limit. See [`ChannelOptions::rate_limit`] for per-channel
    /// limits.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.pipe_rates.set(limit);
        self
    }

    /// Called on every change of the pipe's [`PipeState`], with the cause when an error
    /// caused it. Default: none.
    ///
    /// It runs on a duct thread (the caller's or the background reactor's): keep it short
    /// and do not call blocking operations of the same pipe from it.
    #[must_use]
    pub fn on_state_change(
        mut self,
        callback: impl Fn(StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.on_state_change = Some(Arc::new(callback));
        self
    }

    /// Called with errors that the pipe meets outside any call, when they happen: found by
    /// the background reactor while it reads, writes or keeps time (heartbeat loss, the peer
    /// gone, a protocol violation), or a goodbye that could not be written on close. An error
    /// met inside a call is returned by that call and not reported here. When the error ends
    /// the pipe, later calls also return it (it is the pipe's state). Default: none (such
    /// errors are logged with `tracing`).
    ///
    /// It runs on a duct thread: keep it short and do not block in it.
    #[must_use]
    pub fn on_error(mut self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(callback));
        self
    }

    /// Use TLS on a `tcp://` address (a `tls://` address requires this and takes its settings
    /// from here); built with [`TlsOptions::client`]. Default: no TLS on `tcp://`.
    ///
    /// The PEM files are read at each `dial` (and each reconnect), so renewed certificates
    /// are picked up. TLS 1.3 and 1.2 (rustls, ring). The TLS handshake runs within the dial
    /// timeout. A server certificate that does not verify fails the dial with
    /// [`ErrorKind::Tls`]; a listener that refuses our certificate (or its absence) with
    /// [`ErrorKind::PermissionDenied`]. Neither is retried by [`Reconnect`].
    ///
    /// ```no_run
    /// # fn main() -> duct::Result<()> {
    /// use duct::{DialOptions, TlsOptions};
    /// let tls = TlsOptions::client("certs/ca.pem")
    ///     .identity("certs/client.pem", "certs/client.key"); // for mTLS
    /// let pipe = duct::dial("tls://game-01.internal:7000", DialOptions::default().tls(tls))?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// An opaque credential presented to the listener in the handshake, for its
    /// [`ListenOptions::authenticate`] hook. Default: none. `Debug` output shows only its
    /// length. It travels in HELLO (extension `TOKEN`), in the clear unless the transport is
    /// encrypted.
    #[must_use]
    pub fn token(mut self, token: impl Into<Vec<u8>>) -> Self {
        self.token = Some(token.into());
        self
    }

    limit_setters!();

    /// The connect-plus-handshake deadline, default applied.
    pub(crate) fn heartbeat_or_default(&self) -> Heartbeat {
        self.heartbeat.unwrap_or_default()
    }

    pub(crate) fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_DIAL_TIMEOUT)
    }

    /// The settings of `channel`, defaults applied.
    #[cfg(test)]
    pub(crate) fn channel_settings(&self, channel: u16) -> ChannelSettings {
        self.channels
            .get(&channel)
            .map(ChannelOptions::settings)
            .unwrap_or_default()
    }

    /// The channel and pipe QoS settings as the protocol core takes them.
    pub(crate) fn qos(&self) -> Arc<QosConfig> {
        qos_config(&self.channels, &self.pipe_rates, self.inflight)
    }
}

impl fmt::Debug for DialOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialOptions")
            .field("timeout", &self.timeout_or_default())
            .field("reconnect", &self.reconnect)
            .field("heartbeat", &self.heartbeat)
            .field("channels", &self.channels)
            .field("on_state_change", &callback_debug(&self.on_state_change))
            .field("on_error", &callback_debug(&self.on_error))
            .field("tls", &self.tls)
            .field(
                "token",
                &self.token.as_ref().map(|t| RedactedBytes(t.len())),
            )
            .field("limits", &self.limits)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// ListenOptions
// ---------------------------------------------------------------------------------------------

/// How [`listen`](crate::listen) accepts peers, and how the pipes it accepts behave.
///
/// ```
/// use std::time::Duration;
/// use duct::ListenOptions;
///
/// let opts = ListenOptions::default()
///     .handshake_timeout(Duration::from_secs(2))
///     .max_pending_handshakes(64)
///     .on_error(|err| eprintln!("rejected a peer: {err}"));
/// ```
///
#[derive(Clone, Default)]
pub struct ListenOptions {
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) channels: BTreeMap<u16, ChannelOptions>,
    pub(crate) pipe_rates: PipeRates,
    /// `None`: the default window.
    pub(crate) inflight: Option<(usize, usize)>,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) authenticate: Option<AuthenticateCallback>,
    pub(crate) allow_uids: Option<Vec<u32>>,
    pub(crate) allow_gids: Option<Vec<u32>>,
    pub(crate) on_error: Option<ErrorCallback>,
    pub(crate) on_state_change: Option<StateCallback>,
    pub(crate) limits: Limits,
    /// `None` means [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub(crate) handshake_timeout: Option<Duration>,
    /// `None` means [`DEFAULT_MAX_PENDING_HANDSHAKES`].
    pub(crate) max_pending_handshakes: Option<usize>,
    /// `None` means [`DEFAULT_RESUME_WINDOW`].
    pub(crate) resume_window: Option<Duration>,
    /// `None` means [`DEFAULT_SOCKET_MODE`].
    pub(crate) socket_mode: Option<u32>,
    /// `None` means [`DEFAULT_MAX_PIPES`].
    pub(crate) max_pipes: Option<usize>,
}

impl ListenOptions {
    /// Configure channel `channel` (0..=65535) on every accepted pipe: queue bounds,
    /// backpressure policy, TTL, priority, weight and rate limits of what the accepted pipes
    /// send and receive on it. Channels not configured behave as `ChannelOptions::default()`.
    /// Calling it again for the same channel replaces the earlier options.
    #[must_use]
    pub fn channel(mut self, channel: u16, options: ChannelOptions) -> Self {
        self.channels.insert(channel, options);
        self
    }

    /// The window of reliable delivery of each accepted pipe; see
    /// [`DialOptions::inflight_window`]. Default: 16384 messages, 16 MiB.
    #[must_use]
    pub fn inflight_window(mut self, msgs: usize, bytes: usize) -> Self {
        self.inflight = Some((msgs.max(1), bytes.max(1)));
        self
    }

    /// Limit each accepted pipe's sending rate (all its channels together); see
    /// [`DialOptions::rate_limit`]. Default: no limit.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.pipe_rates.set(limit);
        self
    }

    /// How a silent peer is noticed on accepted pipes; see [`Heartbeat`]. Default:
    /// [`Heartbeat::default`]; [`Heartbeat::off`] disables them.
    #[must_use]
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// Serve TLS on a `tcp://` address (a `tls://` address requires this and takes its
    /// settings from here); built with [`TlsOptions::server`]. Default: no TLS on `tcp://`.
    ///
    /// The PEM files are read once, by `listen`. The TLS handshake of each connection runs
    /// within [`handshake_timeout`](Self::handshake_timeout) and counts against
    /// [`max_pending_handshakes`](Self::max_pending_handshakes). With
    /// [`TlsOptions::client_ca`], dialers must present a certificate signed by that CA; one
    /// that does not is refused with a TLS alert (it gets
    /// [`ErrorKind::PermissionDenied`]) and reported to [`on_error`](Self::on_error) as
    /// [`ErrorKind::Tls`]. The listener's address reads `tls://…`.
    ///
    /// ```no_run
    /// # fn main() -> duct::Result<()> {
    /// use duct::{ListenOptions, TlsOptions};
    /// let tls = TlsOptions::server("certs/server.pem", "certs/server.key")
    ///     .client_ca("certs/ca.pem"); // require client certificates (mTLS)
    /// let listener = duct::listen("tls://0.0.0.0:7000", ListenOptions::default().tls(tls))?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Decide, per peer, whether its handshake is accepted. The hook sees the peer's address,
    /// its token ([`DialOptions::token`]) and, on uds and shm, its credentials; `Err(reason)`
    /// rejects the peer, whose `dial` fails with [`ErrorKind::PermissionDenied`] and `reason`
    /// in its message. Default: every peer is accepted.
    ///
    /// It runs on a duct thread during the handshake: keep it short. A rejection is also
    /// reported to this listener's `on_error`. A reconnecting dialer that is rejected does not
    /// try again: its pipe ends with the same error.
    ///
    /// ```
    /// use duct::ListenOptions;
    ///
    /// let opts = ListenOptions::default().authenticate(|peer| match peer.token.as_deref() {
    ///     Some(b"world-3 secret") => Ok(()),
    ///     _ => Err(format!("{} presented no valid token", peer.addr)),
    /// });
    /// ```
    #[must_use]
    pub fn authenticate(
        mut self,
        hook: impl Fn(&PeerInfo) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.authenticate = Some(Arc::new(hook));
        self
    }

    /// The permission bits of a `uds:///path` listener's socket file, set right after it is
    /// bound (connecting needs write permission on it). Default: `0o600`, the owning user
    /// only; `0o660` lets the group in too. Abstract names (`uds://@name`) have no file: use
    /// [`allow_uids`](Self::allow_uids) there. Only the permission bits (`0o777`) are used.
    #[must_use]
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = Some(mode & 0o777);
        self
    }

    /// Most pipes this listener keeps at once (accepted, or waiting for `accept`, and not yet
    /// dropped). A dialer beyond it is refused with REJECT `UNAVAILABLE`: its `dial` fails with
    /// [`ErrorKind::ConnectionRefused`] (retryable) saying the listener is full. A dialer
    /// resuming a pipe it has is never refused for this. Default: 16384. `0` is treated as 1.
    #[must_use]
    pub fn max_pipes(mut self, pipes: usize) -> Self {
        self.max_pipes = Some(pipes.max(1));
        self
    }

    pub(crate) fn max_pipes_or_default(&self) -> usize {
        self.max_pipes.unwrap_or(DEFAULT_MAX_PIPES)
    }

    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn socket_mode_or_default(&self) -> u32 {
        self.socket_mode.unwrap_or(DEFAULT_SOCKET_MODE)
    }

    /// Accept only peers whose user id is in this list (uds and shm, where the kernel reports
    /// the peer's credentials). Calling it again adds to the list. When `allow_uids` or
    /// [`allow_gids`](Self::allow_gids) is set, a peer is accepted if its uid or its gid is
    /// listed, and peers without credentials (tcp) are rejected. A rejected peer's `dial`
    /// fails with [`ErrorKind::PermissionDenied`] naming its ids. The filter runs before
    /// [`authenticate`](Self::authenticate), which sees the credentials too. Default: no
    /// filter.
    ///
    /// ```
    /// // Only processes of this user (or of group 1001) may connect.
    /// let me = 1000;
    /// let opts = duct::ListenOptions::default().allow_uids([me]).allow_gids([1001]);
    /// ```
    #[must_use]
    pub fn allow_uids(mut self, uids: impl IntoIterator<Item = u32>) -> Self {
        self.allow_uids.get_or_insert_with(Vec::new).extend(uids);
        self
    }

    /// Accept only peers whose group id is in this list; see
    /// [`allow_uids`](Self::allow_uids), which it combines with. Calling it again adds to the
    /// list. Default: no filter.
    #[must_use]
    pub fn allow_gids(mut self, gids: impl IntoIterator<Item = u32>) -> Self {
        self.allow_gids.get_or_insert_with(Vec::new).extend(gids);
        self
    }

    /// Called with the errors of connections that never became a pipe: a handshake that
    /// timed out, broke the protocol or was rejected, a failed `accept` of the OS. `accept`
    /// does not return these (it waits for the next peer instead). Accepted pipes report here
    /// too, as [`DialOptions::on_error`] describes (errors met outside any call). Default:
    /// none (they are logged with `tracing`).
    ///
    /// It runs on a duct thread: keep it short and do not block in it.
    #[must_use]
    pub fn on_error(mut self, callback: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(callback));
        self
    }

    /// Called on every change of the [`PipeState`] of every accepted pipe (the first is
    /// `Connecting → Connected`, when the handshake completed). [`StateChange::pipe_id`]
    /// (equal to [`Pipe::id`](crate::Pipe::id)) tells the pipes apart. Default: none.
    ///
    /// It runs on a duct thread: keep it short and do not call blocking operations of the
    /// same pipe from it.
    #[must_use]
    pub fn on_state_change(
        mut self,
        callback: impl Fn(StateChange) + Send + Sync + 'static,
    ) -> Self {
        self.on_state_change = Some(Arc::new(callback));
        self
    }

    /// How long a new connection may take to complete its handshake before it is dropped
    /// (and reported to [`on_error`](Self::on_error)). Default: 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// How many connections may be in their handshake at once; connections beyond it wait in
    /// the OS's listen queue. Default: 128. It bounds what a flood of connections that never
    /// finish their handshake can cost. `0` is treated as 1.
    #[must_use]
    pub fn max_pending_handshakes(mut self, count: usize) -> Self {
        self.max_pending_handshakes = Some(count);
        self
    }

    /// How long an accepted pipe whose connection broke (EOF, reset, heartbeat loss: not a
    /// CLOSE) waits for its dialer to reconnect, when that dialer reconnects on its own
    /// ([`DialOptions::reconnect`]). Meanwhile the pipe is [`PipeState::Reconnecting`]:
    /// messages received before the break are still delivered, `recv` waits, and sends are
    /// queued (bounded like the send queue). If the dialer is back in time, the new connection
    /// takes over the same pipe (`accept` does not see it; the pipe gets a new
    /// [`session_id`](crate::Pipe::session_id)); queued messages go out on it. If not, the pipe
    /// ends with [`ErrorKind::Disconnected`], and a later reconnect of that dialer is a new
    /// pipe, which the dialer reports as [`ErrorKind::SessionLost`]. `Duration::ZERO`
    /// disables resume. Default: 5 s.
    ///
    /// Resume continues the pipe; it does not replay messages the broken connection took but
    /// did not deliver (reliable channels do).
    #[must_use]
    pub fn resume_window(mut self, window: Duration) -> Self {
        self.resume_window = Some(window);
        self
    }

    limit_setters!();

    /// The handshake deadline, default applied.
    pub(crate) fn heartbeat_or_default(&self) -> Heartbeat {
        self.heartbeat.unwrap_or_default()
    }

    pub(crate) fn handshake_timeout_or_default(&self) -> Duration {
        self.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// The cap on concurrent handshakes, default applied, at least 1.
    pub(crate) fn max_pending_handshakes_or_default(&self) -> usize {
        self.max_pending_handshakes
            .unwrap_or(DEFAULT_MAX_PENDING_HANDSHAKES)
            .max(1)
    }

    /// The resume window, default applied.
    pub(crate) fn resume_window_or_default(&self) -> Duration {
        self.resume_window.unwrap_or(DEFAULT_RESUME_WINDOW)
    }

    /// The settings of `channel`, defaults applied.
    #[cfg(test)]
    pub(crate) fn channel_settings(&self, channel: u16) -> ChannelSettings {
        self.channels
            .get(&channel)
            .map(ChannelOptions::settings)
            .unwrap_or_default()
    }

    /// The channel and pipe QoS settings as the protocol core takes them.
    pub(crate) fn qos(&self) -> Arc<QosConfig> {
        qos_config(&self.channels, &self.pipe_rates, self.inflight)
    }
}

impl fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenOptions")
            .field("heartbeat", &self.heartbeat)
            .field("channels", &self.channels)
            .field("tls", &self.tls)
            .field("authenticate", &callback_debug(&self.authenticate))
            .field("allow_uids", &self.allow_uids)
            .field("allow_gids", &self.allow_gids)
            .field("on_error", &callback_debug(&self.on_error))
            .field("on_state_change", &callback_debug(&self.on_state_change))
            .field("limits", &self.limits)
            .field("handshake_timeout", &self.handshake_timeout_or_default())
            .field(
                "max_pending_handshakes",
                &self.max_pending_handshakes_or_default(),
            )
            .field("resume_window", &self.resume_window)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Reconnect and Heartbeat
// ---------------------------------------------------------------------------------------------

/// When a dialer tries to connect again after its connection broke: exponential backoff with
/// jitter.
///
/// The first retry waits `initial`, each next one twice as long, capped at `max`; jitter
/// shortens each wait by a random fraction so that many clients cut off at once do not all
/// come back at once.
///
/// ```
/// use std::time::Duration;
/// use duct::Reconnect;
///
/// let policy = Reconnect::exponential(Duration::from_millis(50), Duration::from_secs(2))
///     .jitter(0.3)
///     .max_attempts(Some(20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
    pub(crate) max_attempts: Option<u32>,
}

impl Reconnect {
    /// Backoff starting at `initial` and doubling up to `max` (a `max` below `initial` is
    /// raised to `initial`). Jitter 0.2, unlimited attempts.
    pub fn exponential(initial: Duration, max: Duration) -> Reconnect {
        Reconnect {
            initial,
            max: max.max(initial),
            jitter: 0.2,
            max_attempts: None,
        }
    }

    /// The random part of each wait, as a fraction: each wait is drawn from
    /// `[delay × (1 − jitter), delay]`. Default 0.2. Clamped to `0.0..=1.0`; NaN means 0.
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// Give up after this many attempts in a row without success (the pipe then ends with
    /// the last error); `None` tries forever. Default: `None`.
    #[must_use]
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The schedule in the protocol core's terms.
    pub(crate) fn backoff(&self) -> duct_proto::lifecycle::Backoff {
        duct_proto::lifecycle::Backoff {
            initial: self.initial,
            max: self.max,
            jitter: self.jitter,
            max_attempts: self.max_attempts,
        }
    }
}

impl Default for Reconnect {
    /// `exponential(100 ms, 5 s)`, jitter 0.2, unlimited attempts.
    fn default() -> Reconnect {
        Reconnect::exponential(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// Liveness checking: a side that has received nothing for `interval` sends a PING (the peer
/// answers with a PONG), and a side that hears nothing from its peer for `misses` intervals
/// declares the connection [`PipeState::Disconnected`]: blocked calls return
/// [`ErrorKind::Disconnected`] (retryable) at once. This catches peers that died without
/// closing their socket and half-open links (a cable pulled, a host frozen), which the
/// transport alone may not report for minutes. The agreed interval is the smaller of the two
/// sides' intervals; each side applies its own `misses`. PONGs also measure the round-trip
/// time ([`PipeStats::rtt`]). On tcp, TCP keepalive is set from the same values as a second
/// line of defence.
///
/// Default: every 1 s, 5 misses (a silent peer is noticed after about 5 s). Heartbeats run in
/// duct's background reactor: they work while the application is not calling duct.
///
/// ```
/// use std::time::Duration;
/// // Notice a dead game server within about 1.5 s.
/// let opts = duct::DialOptions::default()
///     .heartbeat(duct::Heartbeat::new(Duration::from_millis(500), 3));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub(crate) interval: Duration,
    pub(crate) misses: u32,
}

impl Heartbeat {
    /// Heartbeats every `interval`, disconnect after `misses` silent intervals (`0` is
    /// treated as 1).
    pub fn new(interval: Duration, misses: u32) -> Heartbeat {
        Heartbeat { interval, misses }
    }

    /// No heartbeats from this side: a dead peer is noticed only when the transport reports
    /// it. This side still answers the peer's PINGs.
    pub fn off() -> Heartbeat {
        Heartbeat {
            interval: Duration::ZERO,
            misses: 0,
        }
    }

    /// Whether heartbeats are on.
    pub(crate) fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// How long the peer may stay silent before the connection is declared lost.
    pub(crate) fn silence_timeout(&self) -> Duration {
        self.interval.saturating_mul(self.misses.max(1))
    }
}

impl Default for Heartbeat {
    /// Every 1 s, 5 misses.
    fn default() -> Heartbeat {
        Heartbeat::new(Duration::from_secs(1), 5)
    }
}

// ---------------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------------

/// What a sender does when a channel's send queue is at its high-water mark (the protocol
/// core's type, the same one).
pub use duct_proto::qos::Backpressure;

/// Which quantity a [`RateLimit`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RateUnit {
    Messages,
    Bytes,
}

/// A token-bucket rate limit on a channel's sending: a steady rate, in messages or bytes per
/// second, and a burst (the bucket size) that may go out at once after a quiet spell.
///
/// A channel can have one limit of each unit: give [`ChannelOptions::rate_limit`] a
/// message limit and a byte limit, and both apply.
///
/// ```
/// use duct::{ChannelOptions, RateLimit};
///
/// let chat = ChannelOptions::default()
///     .rate_limit(RateLimit::msgs_per_sec(50.0).burst(10))
///     .rate_limit(RateLimit::bytes_per_sec(64_000.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub(crate) unit: RateUnit,
    pub(crate) per_sec: f64,
    pub(crate) burst: Option<u64>,
}

impl RateLimit {
    /// At most `rate` messages per second. A rate that is not a positive finite number
    /// (0, negative, NaN, infinity) means no limit.
    pub fn msgs_per_sec(rate: f64) -> RateLimit {
        RateLimit {
            unit: RateUnit::Messages,
            per_sec: rate,
            burst: None,
        }
    }

    /// At most `rate` payload bytes per second. A rate that is not a positive finite number
    /// (0, negative, NaN, infinity) means no limit.
    pub fn bytes_per_sec(rate: f64) -> RateLimit {
        RateLimit {
            unit: RateUnit::Bytes,
            per_sec: rate,
            burst: None,
        }
    }

    /// The bucket size, in the limit's unit (messages or bytes): how much may go out at once
    /// after a quiet spell. Default: one second's worth (the rate rounded up, at least 1).
    /// `0` is treated as 1.
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The rate per second, or `None` when it means no limit.
    pub(crate) fn rate(&self) -> Option<f64> {
        (self.per_sec.is_finite() && self.per_sec > 0.0).then_some(self.per_sec)
    }

    /// The limit as the protocol core takes it (`None`: no limit).
    pub(crate) fn to_proto(self) -> Option<qos::Rate> {
        qos::Rate::new(self.rate()?, self.burst_or_default())
    }

    /// The bucket size, default applied, at least 1.
    pub(crate) fn burst_or_default(&self) -> u64 {
        match self.burst {
            Some(burst) => burst.max(1),
            // `as` saturates for floats; the rate is finite and positive here or we use 1.
            None => self.rate().map_or(1, |rate| (rate.ceil() as u64).max(1)),
        }
    }
}

/// The behaviour of one channel: delivery guarantee, queue bounds, what happens when a queue
/// is full, time to live, scheduling against other channels, and rate limits.
///
/// Every channel, configured or not, starts from these defaults: realtime (not reliable),
/// a send queue of at most 1024 messages and 4 MiB, a receive queue of at most 1024
/// messages and 64 MiB,
/// [`Backpressure::Block`], no TTL, priority 128, weight 1, no rate limit.
///
/// Channels are independent: a full bulk channel never blocks a realtime one, and the
/// scheduler sends the highest priority first (large messages go out in frames, so a
/// realtime message waits at most one frame of bulk inside duct). Every message a policy
/// drops, a rate limit refuses or a TTL expires is counted in [`PipeStats`] and
/// [`ChannelStats`] (`dropped`, `rate_limited`, `expired`): on a link without faults,
/// messages received by the peer + dropped + expired (both ends) = messages sent.
///
/// ```
/// use std::time::Duration;
/// use duct::{Backpressure, ChannelOptions, DialOptions, RateLimit};
///
/// // Channel 1: positions. Newest wins, stale after 100 ms, ahead of everything else.
/// let positions = ChannelOptions::default()
///     .snd_hwm_msgs(64)
///     .backpressure(Backpressure::DropOld)
///     .ttl(Duration::from_millis(100))
///     .priority(200);
/// // Channel 2: bulk transfers. Blocks the sender when 4 MiB are queued, at most 10 MB/s.
/// let bulk = ChannelOptions::default()
///     .snd_hwm_bytes(4 << 20)
///     .priority(50)
///     .rate_limit(RateLimit::bytes_per_sec(10e6));
/// let opts = DialOptions::default().channel(1, positions).channel(2, bulk);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelOptions {
    pub(crate) reliable: Option<bool>,
    pub(crate) snd_hwm_msgs: Option<usize>,
    pub(crate) snd_hwm_bytes: Option<usize>,
    pub(crate) rcv_hwm_msgs: Option<usize>,
    pub(crate) rcv_hwm_bytes: Option<usize>,
    pub(crate) backpressure: Option<Backpressure>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) priority: Option<u8>,
    pub(crate) weight: Option<u32>,
    pub(crate) msgs_rate: Option<RateLimit>,
    pub(crate) bytes_rate: Option<RateLimit>,
    pub(crate) inflight: Option<(usize, usize)>,
}

impl ChannelOptions {
    /// The channel's own window of reliable delivery: at most `msgs` of its reliable
    /// messages and `bytes` of their payload sent and not yet acknowledged, within the
    /// pipe's window ([`DialOptions::inflight_window`]). Default: the pipe's window only. `0`
    /// is treated as 1.
    #[must_use]
    pub fn inflight_window(mut self, msgs: usize, bytes: usize) -> Self {
        self.inflight = Some((msgs.max(1), bytes.max(1)));
        self
    }

    /// Reliable or realtime delivery. Default: `false` (realtime).
    ///
    /// - **Realtime**: in order, never duplicated; may be dropped by the backpressure policy,
    ///   TTL or a broken connection.
    /// - **Reliable**: at least once, in order per channel, across any number of reconnects
    ///   of a pipe that resumes (a dialer with [`DialOptions::reconnect`], within the
    ///   listener's [`ListenOptions::resume_window`]). Messages are numbered and acknowledged;
    ///   those the peer lacks after a break are sent again, and the peer drops duplicates. A
    ///   reliable message is never dropped by a drop policy or its TTL once it was first sent
    ///   (messages still queued are, and are counted). At most a window of reliable messages
    ///   is unacknowledged (default 16384 messages or 16 MiB: [`DialOptions::inflight_window`]);
    ///   beyond it new ones wait in the queue under the channel's policy.
    ///
    /// Where at least once stops: if a process dies, or the resume window passes, the session
    /// is lost: the pipe reports [`ErrorKind::SessionLost`] with how many messages may be
    /// lost or may arrive twice. Make handlers of reliable messages idempotent.
    ///
    /// Configure it on both ends (the receiving end's setting decides nothing about the
    /// sender's, but a channel is usually used alike both ways).
    #[must_use]
    pub fn reliable(mut self, reliable: bool) -> Self {
        self.reliable = Some(reliable);
        self
    }

    /// The send queue's high-water mark, in messages: at this many queued messages the
    /// [`Backpressure`] policy applies. Default: 1024. `0` is treated as 1.
    #[must_use]
    pub fn snd_hwm_msgs(mut self, msgs: usize) -> Self {
        self.snd_hwm_msgs = Some(msgs);
        self
    }

    /// The send queue's high-water mark, in payload bytes. Default: 4 MiB (a queue that
    /// large is already far ahead of the transport; copies queued further ahead are written
    /// from memory the caches no longer hold). An empty queue always takes one message,
    /// however large (up to `max_message_size`). `0` is treated as 1.
    #[must_use]
    pub fn snd_hwm_bytes(mut self, bytes: usize) -> Self {
        self.snd_hwm_bytes = Some(bytes);
        self
    }

    /// The receive queue's high-water mark, in messages: when this many messages of the
    /// channel wait for the application, the pipe stops reading from the transport (nothing
    /// is dropped and the connection stays up: the transport's flow control pushes back on
    /// the sender, whose policy decides). Reading resumes once the application has taken the
    /// queue below half the mark. The queue may exceed the mark by what one read brings in
    /// (at most 64 KiB of frames). Default: 1024. `0` is treated as 1.
    #[must_use]
    pub fn rcv_hwm_msgs(mut self, msgs: usize) -> Self {
        self.rcv_hwm_msgs = Some(msgs);
        self
    }

    /// The receive queue's high-water mark, in payload bytes (see
    /// [`ChannelOptions::rcv_hwm_msgs`]). Default: 64 MiB. `0` is treated as 1.
    #[must_use]
    pub fn rcv_hwm_bytes(mut self, bytes: usize) -> Self {
        self.rcv_hwm_bytes = Some(bytes);
        self
    }

    /// What `send` does when the channel's send queue is at its high-water mark (see
    /// [`Backpressure`]). Default: [`Backpressure::Block`].
    #[must_use]
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = Some(policy);
        self
    }

    /// Time to live of each message on this channel, from `send`: a message not yet sent
    /// when it runs out is dropped by the sender; the time left as it goes out travels in the
    /// frame, and the receiver drops the message if it still waits for the application (or
    /// unread in the transport, while the receiver had stopped reading) when that runs out.
    /// Either way it is counted in [`PipeStats::expired`] of the side that dropped it; a
    /// message older than its TTL is never delivered. Only the time a frame spends between
    /// the two processes while the receiver is reading is not counted (there is no shared
    /// clock; it is short). [`SendOptions::ttl`] overrides it per message. Default: none
    /// (messages never expire).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Scheduling priority: when several channels have frames to send, the higher priority
    /// goes first (strictly: a lower priority channel sends only when no higher one has a
    /// frame ready). Default: 128.
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Share of the link among backlogged channels of equal priority, in bytes (deficit
    /// round robin: per round a channel may send `weight` times the larger of 16 KiB and the
    /// peer's frame size). Default: 1. `0` is treated as 1.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Limit the channel's sending rate (token bucket). A message limit and a byte limit can
    /// both be set (call this twice); a second limit of the same unit replaces the first.
    /// Default: no limit.
    ///
    /// Under [`Backpressure::Block`] the channel is paced: messages wait in its queue for
    /// tokens, and `send` blocks once the queue reaches its high-water mark. Under the other
    /// policies the excess is turned away at `send`: dropped and counted in
    /// [`ChannelStats::rate_limited`] (`DropNew`, `DropOld`), or refused with
    /// [`ErrorKind::WouldBlock`] (`FailFast`).
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        match limit.unit {
            RateUnit::Messages => self.msgs_rate = Some(limit),
            RateUnit::Bytes => self.bytes_rate = Some(limit),
        }
        self
    }

    /// The settings with defaults applied and out-of-range values corrected.
    pub(crate) fn settings(&self) -> ChannelSettings {
        let d = qos::ChannelConfig::default();
        let at_least_1 = |v: Option<usize>, default: usize| v.map_or(default, |v| v.max(1));
        ChannelSettings {
            reliable: self.reliable.unwrap_or(false),
            core: qos::ChannelConfig {
                snd_hwm_msgs: at_least_1(self.snd_hwm_msgs, d.snd_hwm_msgs),
                snd_hwm_bytes: at_least_1(self.snd_hwm_bytes, d.snd_hwm_bytes),
                rcv_hwm_msgs: at_least_1(self.rcv_hwm_msgs, d.rcv_hwm_msgs),
                rcv_hwm_bytes: at_least_1(self.rcv_hwm_bytes, d.rcv_hwm_bytes),
                backpressure: self.backpressure.unwrap_or(d.backpressure),
                ttl: self.ttl,
                priority: self.priority.unwrap_or(d.priority),
                weight: self.weight.map_or(d.weight, |v| v.max(1)),
                msgs_rate: self.msgs_rate.and_then(RateLimit::to_proto),
                bytes_rate: self.bytes_rate.and_then(RateLimit::to_proto),
                reliable: self.reliable.unwrap_or(false),
                inflight_msgs: self.inflight.map_or(d.inflight_msgs, |w| w.0),
                inflight_bytes: self.inflight.map_or(d.inflight_bytes, |w| w.1),
            },
        }
    }
}

/// The resolved settings of one channel: its delivery guarantee, and the rest as the protocol
/// core takes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChannelSettings {
    pub(crate) reliable: bool,
    pub(crate) core: qos::ChannelConfig,
}

/// A pipe's own rate limits (all channels together).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct PipeRates {
    pub(crate) msgs: Option<RateLimit>,
    pub(crate) bytes: Option<RateLimit>,
}

impl PipeRates {
    fn set(&mut self, limit: RateLimit) {
        match limit.unit {
            RateUnit::Messages => self.msgs = Some(limit),
            RateUnit::Bytes => self.bytes = Some(limit),
        }
    }
}

/// The QoS configuration of a pipe with these channel options and pipe rate limits.
fn qos_config(
    channels: &BTreeMap<u16, ChannelOptions>,
    rates: &PipeRates,
    inflight: Option<(usize, usize)>,
) -> Arc<QosConfig> {
    let d = QosConfig::default();
    let (inflight_msgs, inflight_bytes) = inflight.unwrap_or((d.inflight_msgs, d.inflight_bytes));
    Arc::new(QosConfig {
        inflight_msgs,
        inflight_bytes,
        default: qos::ChannelConfig::default(),
        channels: channels
            .iter()
            .map(|(c, o)| (*c, o.settings().core))
            .collect(),
        pipe_msgs_rate: rates.msgs.and_then(|r| r.to_proto()),
        pipe_bytes_rate: rates.bytes.and_then(|r| r.to_proto()),
        ..QosConfig::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Per-call options
// ---------------------------------------------------------------------------------------------

/// Options of one `send_with` / `send_batch` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    pub(crate) channel: Option<u16>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) reliable: Option<bool>,
}

impl SendOptions {
    /// Send on this channel instead of the message's own
    /// ([`Message::channel`](crate::Message::channel)). Default: the message's channel.
    #[must_use]
    pub fn channel(mut self, channel: u16) -> Self {
        self.channel = Some(channel);
        self
    }

    /// How long the send may wait for room in the channel's queue (under
    /// [`Backpressure::Block`]); on expiry it fails with [`ErrorKind::TimedOut`] and sends
    /// nothing. `Duration::ZERO` never waits: a full queue fails at once with
    /// [`ErrorKind::WouldBlock`]. Default: the pipe's `send_timeout` (30 s unless
    /// configured).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Time to live of this message, overriding the channel's [`ChannelOptions::ttl`] (see
    /// there for what happens when it runs out). Default: the channel's.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Send this message reliably (or not), overriding the channel's
    /// [`ChannelOptions::reliable`] (see there for what reliable means). Default: the
    /// channel's.
    #[must_use]
    pub fn reliable(mut self, reliable: bool) -> Self {
        self.reliable = Some(reliable);
        self
    }

    /// The per-message overrides.
    pub(crate) fn meta(&self) -> crate::driver::conn::Meta {
        crate::driver::conn::Meta {
            ttl: self.ttl,
            reliable: self.reliable,
        }
    }

    /// The channel to send `message_channel`'s message on.
    pub(crate) fn channel_for(&self, message_channel: u16) -> u16 {
        self.channel.unwrap_or(message_channel)
    }

    /// The queue-space deadline, falling back to the pipe's `send_timeout`.
    pub(crate) fn timeout_or(&self, send_timeout: Duration) -> Duration {
        self.timeout.unwrap_or(send_timeout)
    }
}

/// Options of one `recv_with` / `recv_batch` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvOptions {
    pub(crate) timeout: Option<Duration>,
}

impl RecvOptions {
    /// How long to wait for a message. On expiry the call fails with
    /// [`ErrorKind::TimedOut`]. `Duration::ZERO` does not wait: with no message queued it
    /// fails at once with [`ErrorKind::WouldBlock`]. Default: wait until a message arrives,
    /// the pipe closes or an error occurs.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Options of `close_with`: how long to flush, and what to tell the peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseOptions {
    pub(crate) linger: Option<Duration>,
    pub(crate) reason: Option<(u16, String)>,
}

impl CloseOptions {
    /// How long to wait for queued messages to reach the peer before closing.
    /// `Duration::ZERO` closes at once and drops what is queued. Default: the pipe's `linger`
    /// (1 s unless configured).
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// A close code and a human-readable reason, sent to the peer, whose `recv` then fails
    /// with [`ErrorKind::Closed`] and returns them from
    /// [`Error::close_reason`](crate::Error::close_reason). The meaning of codes is up to the
    /// application. Default: no code or reason.
    #[must_use]
    pub fn reason(mut self, code: u16, reason: impl Into<String>) -> Self {
        self.reason = Some((code, reason.into()));
        self
    }

    /// The linger, falling back to the pipe's default.
    pub(crate) fn linger_or(&self, default: Duration) -> Duration {
        self.linger.unwrap_or(default)
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// Which end of a TLS connection a [`TlsOptions`] configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsRole {
    Server,
    Client,
}

/// TLS settings: where to find certificates and keys (PEM files). The files are read when
/// `listen`/`dial` starts, not here.
///
/// ```
/// use duct::TlsOptions;
///
/// let server = TlsOptions::server("certs/server.pem", "certs/server.key")
///     .client_ca("certs/ca.pem"); // require client certificates (mTLS)
/// let client = TlsOptions::client("certs/ca.pem")
///     .identity("certs/client.pem", "certs/client.key")
///     .server_name("game-01.internal");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub(crate) role: TlsRole,
    /// This side's certificate chain and private key: required for a server, optional for a
    /// client (mTLS).
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    /// The CA that verifies the peer: a client's trust anchor; on a server, client
    /// certificates are required when set.
    pub(crate) ca: Option<PathBuf>,
    /// The name the client verifies the server's certificate against.
    pub(crate) server_name: Option<String>,
}

impl TlsOptions {
    /// A TLS server presenting the certificate chain and private key in these PEM files.
    /// Clients are not asked for certificates unless [`client_ca`](Self::client_ca) is set.
    pub fn server(cert_chain_pem: impl AsRef<Path>, key_pem: impl AsRef<Path>) -> TlsOptions {
        TlsOptions {
            role: TlsRole::Server,
            identity: Some((
                cert_chain_pem.as_ref().to_path_buf(),
                key_pem.as_ref().to_path_buf(),
            )),
            ca: None,
            server_name: None,
        }
    }

    /// Require client certificates signed by the CA in this PEM file (mutual TLS). A client
    /// without one is rejected with [`ErrorKind::PermissionDenied`]. Server side; on a
    /// client it sets the trust anchor, like [`TlsOptions::client`].
    #[must_use]
    pub fn client_ca(mut self, ca_pem: impl AsRef<Path>) -> Self {
        self.ca = Some(ca_pem.as_ref().to_path_buf());
        self
    }

    /// A TLS client that trusts server certificates signed by the CA in this PEM file.
    pub fn client(ca_pem: impl AsRef<Path>) -> TlsOptions {
        TlsOptions {
            role: TlsRole::Client,
            identity: None,
            ca: Some(ca_pem.as_ref().to_path_buf()),
            server_name: None,
        }
    }

    /// Present this certificate chain and private key (PEM files) to the server, for mutual
    /// TLS. On a server it replaces the server's identity.
    #[must_use]
    pub fn identity(mut self, cert_chain_pem: impl AsRef<Path>, key_pem: impl AsRef<Path>) -> Self {
        self.identity = Some((
            cert_chain_pem.as_ref().to_path_buf(),
            key_pem.as_ref().to_path_buf(),
        ));
        self
    }

    /// The name to verify the server's certificate against. Default: the host of the dialed
    /// address. Client side; ignored on a server.
    #[must_use]
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_owned());
        self
    }
}

// ---------------------------------------------------------------------------------------------
// What a pipe reports back
// ---------------------------------------------------------------------------------------------

/// Who is connecting: what a listener's [`authenticate`](ListenOptions::authenticate) hook
/// sees.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's address (`Addr::Unknown` for an unnamed Unix socket).
    pub addr: Addr,
    /// The token the peer presented ([`DialOptions::token`]), if any.
    pub token: Option<Vec<u8>>,
    /// The peer process's credentials, on transports where the kernel reports them (uds,
    /// shm); `None` on tcp.
    pub credentials: Option<PeerCredentials>,
}

impl PeerInfo {
    pub(crate) fn new(
        addr: Addr,
        token: Option<Vec<u8>>,
        credentials: Option<PeerCredentials>,
    ) -> PeerInfo {
        PeerInfo {
            addr,
            token,
            credentials,
        }
    }
}

impl fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerInfo")
            .field("addr", &self.addr)
            .field(
                "token",
                &self.token.as_ref().map(|t| RedactedBytes(t.len())),
            )
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// The credentials of the process at the other end of a local connection, as the kernel
/// reports them when the connection was made (`SO_PEERCRED` on Linux; `getpeereid` and
/// `LOCAL_PEERPID` on macOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PeerCredentials {
    /// The peer's process id, where the platform reports it (Linux and macOS do).
    pub pid: Option<u32>,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

impl PeerCredentials {
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn new(pid: Option<u32>, uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials { pid, uid, gid }
    }
}

/// Where a pipe is in its life.
///
/// A pipe goes `Connecting → Connected`. When the connection breaks (not a CLOSE), a dialed
/// pipe with [`DialOptions::reconnect`] goes `Reconnecting → Connected` again, and so does
/// the accepted pipe of such a dialer while the listener's
/// [`resume_window`](ListenOptions::resume_window) lasts; any other pipe ends
/// `Disconnected`. `close` (either side) or giving up ends in `Closed`. `Disconnected` and
/// `Closed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipeState {
    /// Connecting or in the handshake.
    Connecting,
    /// Connected: messages flow.
    Connected,
    /// The connection broke and the pipe ended with it (final): calls return the cause.
    Disconnected,
    /// Between connections after a break: a dialer trying to connect again, or an accepted
    /// pipe waiting for its dialer to come back.
    Reconnecting,
    /// Closed for good, locally or by the peer.
    Closed,
}

impl fmt::Display for PipeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PipeState::Connecting => "connecting",
            PipeState::Connected => "connected",
            PipeState::Disconnected => "disconnected",
            PipeState::Reconnecting => "reconnecting",
            PipeState::Closed => "closed",
        })
    }
}

/// One change of a pipe's [`PipeState`], as given to
/// [`DialOptions::on_state_change`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StateChange {
    /// The state before.
    pub from: PipeState,
    /// The state after.
    pub to: PipeState,
    /// The session id after the change (new on every successful connect; 0 before the first).
    pub session_id: u64,
    /// The pipe that changed: [`Pipe::id`](crate::Pipe::id), the same on both ends and
    /// across reconnects.
    pub pipe_id: u64,
    /// The error that caused the change, if one did (a lost connection, a failed
    /// reconnect); `None` for changes the user asked for or that went well.
    pub cause: Option<Error>,
}

impl StateChange {
    pub(crate) fn new(
        from: PipeState,
        to: PipeState,
        session_id: u64,
        pipe_id: u64,
        cause: Option<Error>,
    ) -> StateChange {
        StateChange {
            from,
            to,
            session_id,
            pipe_id,
            cause,
        }
    }
}

/// Counters of one channel of a pipe, since the pipe was made. Part of [`PipeStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Messages accepted by `send` (including those a policy, rate limit or TTL dropped
    /// later: see `dropped` and `expired`).
    pub msgs_sent: u64,
    /// Messages delivered to the application.
    pub msgs_received: u64,
    /// Payload bytes of the messages sent.
    pub bytes_sent: u64,
    /// Payload bytes of the messages received.
    pub bytes_received: u64,
    /// Messages this side dropped: by the backpressure policy (`DropNew`, `DropOld`), by a
    /// rate limit (also counted in `rate_limited`), or because they were still queued or
    /// partly written when a connection broke or the pipe ended.
    pub dropped: u64,
    /// Of `dropped`: messages turned away by the channel's rate limit.
    pub rate_limited: u64,
    /// Messages this side dropped because their time to live ran out (before sending, or
    /// while waiting for the application).
    pub expired: u64,
    /// Frames sent again (reliable channels).
    pub retransmits: u64,
}

/// Counters of a pipe since it was made (totals over all channels), and per channel.
///
/// A snapshot: `Pipe::stats()` copies the counters at the time of the call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipeStats {
    /// Messages accepted by `send` (including those a policy, rate limit or TTL dropped
    /// later: see `dropped` and `expired`).
    pub msgs_sent: u64,
    /// Messages delivered to the application.
    pub msgs_received: u64,
    /// Payload bytes of the messages sent.
    pub bytes_sent: u64,
    /// Payload bytes of the messages received.
    pub bytes_received: u64,
    /// Messages this side dropped: by a backpressure policy, a rate limit (also counted in
    /// `rate_limited`), or a broken connection or end of the pipe with the message still
    /// queued. Per channel in [`PipeStats::channel`].
    pub dropped: u64,
    /// Of `dropped`: messages turned away by a channel's rate limit.
    pub rate_limited: u64,
    /// Messages this side dropped because their time to live ran out.
    pub expired: u64,
    /// Frames sent again.
    pub retransmits: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Smoothed round-trip time measured by heartbeat PINGs (`None` until one was answered,
    /// or with heartbeats off). A side only PINGs after hearing nothing for an interval, so
    /// one whose peer PINGs first may measure none and stay `None`.
    pub rtt: Option<Duration>,
    /// `shm://`: message frames whose payload was copied into shared memory on the way out
    /// (every frame of an ordinary message: a payload of up to 256 bytes into the ring after
    /// its descriptor, a larger one into a pool slot; not those sent from
    /// [`Pipe::alloc`](crate::Pipe::alloc)). 0 on other transports.
    pub payload_frames_copied: u64,
    /// `shm://`: the bytes of those copies.
    pub payload_bytes_copied: u64,
    /// `shm://`: frames whose payload moved to the peer without a copy (written in place with
    /// [`Pipe::alloc`](crate::Pipe::alloc)).
    pub zero_copy_frames: u64,
    /// `shm://`: wake-ups this side signalled to the peer through the connection's control
    /// socket, a system call each (and one for the peer to read it): when frames arrived for
    /// a peer whose reactor watches for them (an async receive waits there, or nobody
    /// receives), or room appeared for a peer that waits for it to send. A peer that
    /// receives by spinning, parking on the shared futex (`recv`), or polling (`try_recv`,
    /// a zero timeout) needs none: a sweep of many pipes costs their senders no system call.
    /// 0 on other transports.
    pub wake_signals: u64,
    /// Reads asked of the transport (a system call each on a socket), by the application's
    /// receives and by the reactor. Beside `msgs_received`: how many messages a read brings.
    /// A receive that does not wait, on a pipe found empty before and with nothing reported
    /// since by the reactor (which then watches it), reads nothing and is not counted. On
    /// `shm://` such a receive looks at the ring (counted: a read without a system call).
    pub reads: u64,
    /// Of `reads`: those the reactor made through its io_uring ring, submitted in one system
    /// call with the receives of every other pipe it read in the same pass (Linux, on the
    /// io_uring backend, tcp and uds). There, the reactor also reads for an application that
    /// polls (`try_recv`), which then finds the messages queued.
    pub ring_reads: u64,
    /// Writes the reactor made through its io_uring ring, submitted in one system call with
    /// the other requests of the same pass (Linux, on the io_uring backend, tcp and uds):
    /// output it flushes while nobody sends (after the socket was full, heartbeats, acks).
    pub ring_writes: u64,
    /// Times a send of several messages or slices (`send_batch`, `send_slices`) on a
    /// channel under [`Backpressure::Block`], in a call of at least 64 messages, found
    /// the transport full and waited for it to take more, the pipe's lock let go, rather
    /// than copy the rest into its channel's queue: a socket until it is writable again (at
    /// most 200 µs at a time, again while each wait brings room), a shared-memory ring for
    /// room (at most the pipe's `spin`, and 50 µs). After a wait that brings no room the
    /// rest is queued, and a transport that stays full is not waited for again until it has
    /// taken something (a reader that stopped costs one wait).
    pub room_waits: u64,
    /// tcp, uds and TLS (on Windows, TLS): bytes of large messages' fragments read (TLS:
    /// decrypted) straight into the message's buffer, not copied there out of the read
    /// buffer: all of a message larger than a frame but what the first read of each fragment
    /// brought (see the guide's "Large messages"). 0 on other transports.
    pub bytes_read_in_place: u64,
    channels: BTreeMap<u16, ChannelStats>,
}

impl PipeStats {
    /// The counters of channel `channel`, or `None` if nothing was sent or received on it.
    pub fn channel(&self, channel: u16) -> Option<ChannelStats> {
        self.channels.get(&channel).copied()
    }

    /// The channels that saw traffic, in ascending order, with their counters.
    pub fn channels(&self) -> impl Iterator<Item = (u16, ChannelStats)> + '_ {
        self.channels.iter().map(|(&id, &stats)| (id, stats))
    }

    /// Replaces the per-channel counters (the driver keeps them apart and fills them in
    /// when it takes a snapshot).
    pub(crate) fn set_channels(&mut self, channels: impl IntoIterator<Item = (u16, ChannelStats)>) {
        self.channels = channels.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn defaults() {
        let dial = DialOptions::default();
        assert_eq!(dial.timeout_or_default(), Duration::from_secs(5));
        assert_eq!(dial.limits.max_message_size, 64 * 1024 * 1024);
        assert_eq!(dial.limits.max_frame_payload, None);
        assert_eq!(dial.limits.reassembly_limit, 64 * 1024 * 1024 + 64 * 1024);
        assert_eq!(dial.limits.reassembly_timeout, Duration::from_secs(30));
        assert_eq!(dial.limits.send_timeout, Duration::from_secs(30));
        assert_eq!(dial.limits.linger, Duration::from_secs(1));
        let listen = ListenOptions::default();
        assert_eq!(listen.limits, dial.limits);
        assert_eq!(
            listen.handshake_timeout_or_default(),
            Duration::from_secs(5)
        );
        assert_eq!(listen.max_pending_handshakes_or_default(), 128);
        assert_eq!(listen.resume_window_or_default(), Duration::from_secs(5));
        assert_eq!(
            Heartbeat::default(),
            Heartbeat::new(Duration::from_secs(1), 5)
        );
        assert_eq!(Backpressure::default(), Backpressure::Block);
        assert_eq!(
            ChannelOptions::default().settings(),
            ChannelSettings::default()
        );
        assert_eq!(dial.channel_settings(9), ChannelSettings::default());
    }

    #[test]
    fn options_reach_the_settings() {
        let dial = DialOptions::default()
            .timeout(Duration::from_millis(10))
            .on_state_change(|_| {})
            .on_error(|_| {})
            .max_message_size(1)
            .max_frame_payload(1024)
            .reassembly_limit(10)
            .reassembly_timeout(Duration::from_secs(1))
            .send_timeout(Duration::ZERO)
            .linger(Duration::ZERO)
            .channel(3, ChannelOptions::default());
        assert_eq!(dial.timeout_or_default(), Duration::from_millis(10));
        assert_eq!(dial.limits.max_message_size, 1);
        assert_eq!(dial.limits.max_frame_payload, Some(1024));
        assert_eq!(dial.limits.reassembly_limit, 10);
        assert_eq!(dial.limits.send_timeout, Duration::ZERO);
        assert_eq!(dial.limits.linger, Duration::ZERO);

        let listen = ListenOptions::default()
            .handshake_timeout(Duration::from_secs(1))
            .max_pending_handshakes(0)
            .on_error(|_| {})
            .max_message_size(5)
            .channel(0, ChannelOptions::default());
        assert_eq!(listen.max_pending_handshakes_or_default(), 1);
        assert_eq!(
            listen.handshake_timeout_or_default(),
            Duration::from_secs(1)
        );
        assert_eq!(listen.limits.max_message_size, 5);
        assert_eq!(listen.channel_settings(0), ChannelSettings::default());
        assert_eq!(listen.channel_settings(1), ChannelSettings::default());
    }

    #[test]
    fn channel_options_equal_to_defaults_are_supported() {
        let explicit_defaults = ChannelOptions::default()
            .reliable(false)
            .snd_hwm_msgs(1024)
            .snd_hwm_bytes(4 * 1024 * 1024)
            .rcv_hwm_msgs(1024)
            .rcv_hwm_bytes(64 * 1024 * 1024)
            .backpressure(Backpressure::Block)
            .priority(128)
            .weight(0) // treated as 1
            .rate_limit(RateLimit::msgs_per_sec(0.0)); // means no limit
        let dial = DialOptions::default().channel(1, explicit_defaults);
        assert_eq!(dial.channel_settings(1), ChannelSettings::default());
    }

    #[test]
    fn qos_channel_options_are_supported_and_reach_the_core() {
        let options = ChannelOptions::default()
            .snd_hwm_msgs(3)
            .snd_hwm_bytes(0)
            .rcv_hwm_msgs(5)
            .rcv_hwm_bytes(6)
            .backpressure(Backpressure::DropOld)
            .ttl(Duration::from_millis(7))
            .priority(9)
            .weight(0)
            .rate_limit(RateLimit::msgs_per_sec(100.0).burst(4))
            .rate_limit(RateLimit::bytes_per_sec(-1.0));
        let dial = DialOptions::default()
            .channel(5, options)
            .rate_limit(RateLimit::bytes_per_sec(1e6).burst(10));
        let qos = dial.qos();
        let c = qos.channel(5);
        assert_eq!((c.snd_hwm_msgs, c.snd_hwm_bytes), (3, 1));
        assert_eq!((c.rcv_hwm_msgs, c.rcv_hwm_bytes), (5, 6));
        assert_eq!(c.backpressure, qos::Backpressure::DropOld);
        assert_eq!(c.ttl, Some(Duration::from_millis(7)));
        assert_eq!((c.priority, c.weight), (9, 1));
        let r = c.msgs_rate.expect("a message limit");
        assert_eq!((r.per_sec(), r.burst()), (100.0, 4.0));
        assert_eq!(c.bytes_rate, None, "a negative rate is no limit");
        assert_eq!(qos.channel(6), &qos::ChannelConfig::default());
        assert_eq!(qos.pipe_msgs_rate, None);
        let r = qos.pipe_bytes_rate.expect("a pipe byte limit");
        assert_eq!((r.per_sec(), r.burst()), (1e6, 10.0));
        assert!(!c.reliable);
        let dial = DialOptions::default().channel(5, ChannelOptions::default().reliable(true));
        assert!(dial.qos().channel(5).reliable);
        let meta = SendOptions::default().reliable(true).meta();
        assert_eq!(meta.reliable, Some(true));
    }

    #[test]
    fn send_options_fallbacks() {
        let opts = SendOptions::default();
        assert_eq!(opts.channel_for(9), 9);
        assert_eq!(
            opts.timeout_or(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        let opts = opts.channel(2).timeout(Duration::ZERO);
        assert_eq!(opts.channel_for(9), 2);
        assert_eq!(opts.timeout_or(Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn recv_and_close_options() {
        assert_eq!(RecvOptions::default().timeout, None);
        assert_eq!(
            RecvOptions::default().timeout(Duration::ZERO).timeout,
            Some(Duration::ZERO)
        );
        let close = CloseOptions::default();
        assert_eq!(
            close.linger_or(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(close.reason, None);
        let close = close.linger(Duration::ZERO).reason(4000, "bye");
        assert_eq!(close.linger_or(Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(close.reason, Some((4000, "bye".to_owned())));
    }

    #[test]
    fn channel_settings_correct_out_of_range_values() {
        let settings = ChannelOptions::default()
            .snd_hwm_msgs(0)
            .snd_hwm_bytes(0)
            .rcv_hwm_msgs(0)
            .rcv_hwm_bytes(0)
            .weight(0)
            .settings();
        let c = settings.core;
        assert_eq!(c.snd_hwm_msgs, 1);
        assert_eq!(c.snd_hwm_bytes, 1);
        assert_eq!(c.rcv_hwm_msgs, 1);
        assert_eq!(c.rcv_hwm_bytes, 1);
        assert_eq!(c.weight, 1);
    }

    #[test]
    fn channel_replaced_on_second_call() {
        let opts = DialOptions::default()
            .channel(1, ChannelOptions::default().priority(1))
            .channel(1, ChannelOptions::default());
        assert_eq!(opts.channels.len(), 1);
    }

    #[test]
    fn rate_limits() {
        let options = ChannelOptions::default()
            .rate_limit(RateLimit::msgs_per_sec(10.5))
            .rate_limit(RateLimit::bytes_per_sec(1000.0).burst(0))
            .rate_limit(RateLimit::msgs_per_sec(20.0).burst(5));
        let settings = options.settings().core;
        let msgs = settings.msgs_rate.expect("message limit");
        assert_eq!((msgs.per_sec(), msgs.burst()), (20.0, 5.0));
        let bytes = settings.bytes_rate.expect("byte limit");
        assert_eq!((bytes.per_sec(), bytes.burst()), (1000.0, 1.0));
        assert_eq!(RateLimit::msgs_per_sec(10.5).burst_or_default(), 11);
        assert_eq!(RateLimit::msgs_per_sec(0.001).burst_or_default(), 1);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let limit = RateLimit::bytes_per_sec(bad);
            assert_eq!(limit.rate(), None);
            assert_eq!(limit.burst_or_default(), 1);
        }
        assert_eq!(RateLimit::msgs_per_sec(1e300).burst_or_default(), u64::MAX);
    }

    #[test]
    fn reconnect_backoff() {
        let policy =
            Reconnect::exponential(Duration::from_millis(100), Duration::from_secs(1)).jitter(0.0);
        assert_eq!(policy.backoff().delay(0, 0.5), Duration::from_millis(100));
        assert_eq!(policy.backoff().delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(policy.backoff().delay(3, 0.5), Duration::from_millis(800));
        assert_eq!(policy.backoff().delay(4, 0.5), Duration::from_secs(1));
        assert_eq!(
            policy.backoff().delay(u32::MAX, 0.5),
            Duration::from_secs(1)
        );

        let jittered = policy.jitter(0.5);
        assert_eq!(jittered.backoff().delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(jittered.backoff().delay(0, 1.0), Duration::from_millis(50));
        assert_eq!(
            jittered.backoff().delay(0, f64::NAN),
            Duration::from_millis(100)
        );

        assert_eq!(policy.jitter(f64::NAN).jitter, 0.0);
        assert_eq!(policy.jitter(7.0).jitter, 1.0);
        assert_eq!(policy.jitter(-1.0).jitter, 0.0);

        let inverted = Reconnect::exponential(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(inverted.max, Duration::from_secs(2));
        assert_eq!(inverted.max_attempts(Some(3)).max_attempts, Some(3));

        let huge = Reconnect::exponential(Duration::MAX, Duration::MAX);
        assert_eq!(huge.backoff().delay(10, 0.0), Duration::MAX);
        assert!(huge.jitter(1.0).backoff().delay(10, 0.5) <= Duration::MAX);
    }

    #[test]
    fn heartbeat_silence_timeout() {
        assert_eq!(
            Heartbeat::default().silence_timeout(),
            Duration::from_secs(5)
        );
        assert_eq!(
            Heartbeat::new(Duration::from_secs(2), 0).silence_timeout(),
            Duration::from_secs(2)
        );
        assert_eq!(
            Heartbeat::new(Duration::MAX, 9).silence_timeout(),
            Duration::MAX
        );
    }

    #[test]
    fn tls_options_store_paths() {
        let server = TlsOptions::server("s.pem", "s.key").client_ca("ca.pem");
        assert_eq!(server.role, TlsRole::Server);
        assert_eq!(
            server.identity,
            Some((PathBuf::from("s.pem"), PathBuf::from("s.key")))
        );
        assert_eq!(server.ca, Some(PathBuf::from("ca.pem")));
        let client = TlsOptions::client("ca.pem")
            .identity("c.pem", "c.key")
            .server_name("game-01");
        assert_eq!(client.role, TlsRole::Client);
        assert_eq!(client.server_name.as_deref(), Some("game-01"));
        assert_eq!(
            client.identity,
            Some((PathBuf::from("c.pem"), PathBuf::from("c.key")))
        );
    }

    #[test]
    fn callbacks_are_stored_and_callable() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let dial = DialOptions::default()
            .on_error(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .on_state_change(|change| assert_eq!(change.to, PipeState::Connected));
        let cloned = dial.clone();
        (cloned.on_error.as_ref().unwrap())(&Error::new(ErrorKind::Io, "x"));
        (dial.on_error.as_ref().unwrap())(&Error::new(ErrorKind::Io, "x"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        (dial.on_state_change.as_ref().unwrap())(StateChange::new(
            PipeState::Connecting,
            PipeState::Connected,
            1,
            9,
            None,
        ));

        let listen = ListenOptions::default().authenticate(|peer| match &peer.token {
            Some(token) if token == b"ok" => Ok(()),
            _ => Err("bad token".to_owned()),
        });
        let hook = listen.authenticate.as_ref().unwrap();
        let addr = Addr::Tcp("127.0.0.1:1".parse().unwrap());
        assert_eq!(
            hook(&PeerInfo::new(addr.clone(), Some(b"ok".to_vec()), None)),
            Ok(())
        );
        assert_eq!(
            hook(&PeerInfo::new(addr, None, None)),
            Err("bad token".to_owned())
        );
    }

    #[test]
    fn debug_hides_callbacks_and_tokens() {
        let dial = DialOptions::default()
            .on_error(|_| {})
            .token(b"hunter2".to_vec());
        let text = format!("{dial:?}");
        assert!(text.contains("<callback>"), "{text}");
        assert!(text.contains("<7 bytes>"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let listen = format!(
            "{:?}",
            ListenOptions::default()
                .authenticate(|_| Ok(()))
                .on_error(|_| {})
        );
        assert!(listen.contains("<callback>"), "{listen}");
        let peer = PeerInfo::new(Addr::Unknown, Some(b"hunter2".to_vec()), None);
        assert!(!format!("{peer:?}").contains("hunter2"));
    }

    #[test]
    fn allow_lists_accumulate() {
        let opts = ListenOptions::default()
            .allow_uids([1, 2])
            .allow_uids(vec![3])
            .allow_gids(Some(7));
        assert_eq!(opts.allow_uids, Some(vec![1, 2, 3]));
        assert_eq!(opts.allow_gids, Some(vec![7]));
    }

    #[test]
    fn pipe_stats_per_channel() {
        let mut stats = PipeStats::default();
        assert_eq!(stats.channel(3), None);
        let ch = |msgs_sent, bytes_received| ChannelStats {
            msgs_sent,
            bytes_received,
            ..ChannelStats::default()
        };
        stats.set_channels([(3, ch(3, 0)), (1, ch(0, 10))]);
        assert_eq!(stats.channel(3).map(|c| c.msgs_sent), Some(3));
        let ids: Vec<u16> = stats.channels().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3]);
        let snapshot = stats.clone();
        assert_eq!(snapshot, stats);
    }

    #[test]
    fn state_change_carries_a_cloneable_cause() {
        let change = StateChange::new(
            PipeState::Connected,
            PipeState::Disconnected,
            42,
            9,
            Some(Error::io(
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                "reading",
            )),
        );
        let copy = change.clone();
        assert_eq!(copy.session_id, 42);
        assert_eq!(copy.cause.map(|e| e.kind()), Some(ErrorKind::Disconnected));
        assert_eq!(PipeState::Reconnecting.to_string(), "reconnecting");
    }

    #[test]
    fn builders_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone + fmt::Debug + 'static>() {}
        assert_send_sync::<DialOptions>();
        assert_send_sync::<ListenOptions>();
        assert_send_sync::<ChannelOptions>();
        assert_send_sync::<SendOptions>();
        assert_send_sync::<RecvOptions>();
        assert_send_sync::<CloseOptions>();
        assert_send_sync::<TlsOptions>();
        assert_send_sync::<Reconnect>();
        assert_send_sync::<Heartbeat>();
        assert_send_sync::<RateLimit>();
        assert_send_sync::<StateChange>();
        assert_send_sync::<PipeStats>();
        assert_send_sync::<PeerInfo>();
    }
}
