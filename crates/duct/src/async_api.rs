//! The async API: [`Pipe::send_async`], [`Pipe::recv_async`], [`Listener::accept_async`] and
//! [`dial_async`], futures that run under any executor (tokio, `futures::executor`, smol, a
//! hand-written one): no runtime dependency, no feature flag.
//!
//! The futures are driven by duct's own reactor, not by a runtime's: a poll does what the
//! blocking call would do without waiting (take a queued message, read what the transport
//! holds now, offer the message to its send queue), and where the blocking call would wait
//! on a condition variable, the future registers its task's waker beside it (see
//! `driver::wakers`) and returns `Pending`. Whatever would wake the blocking call (a message
//! delivered, room in a send queue, a state change, a close, an error) wakes the task; while
//! an async receive waits, the reactor reads the transport for it. No thread per future, no
//! busy polling. Each future frees its waker slot when it completes or is dropped.
//!
//! Only `dial_async` uses a thread: connect and handshake are blocking today, so it runs
//! them on a short-lived thread (see its documentation for the cost).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::driver::conn::{Meta, Park, Wait};
use crate::{addr, DialOptions, Error, Listener, Message, Pipe, RecvOptions, Result, SendOptions};

impl Pipe {
    /// Sends one message without blocking the thread: the async form of [`Pipe::send`]
    /// (same as [`Pipe::send_with_async`] with default options).
    ///
    /// The future completes when the message is **accepted**, as `send` returns then:
    /// written, queued in its channel's send queue, or dropped and counted by the channel's
    /// drop policy. Under [`Backpressure::Block`](crate::Backpressure::Block) it waits
    /// (`Pending`, the thread free) while the channel's send queue is full, up to the
    /// default send timeout ([`DialOptions::send_timeout`], counted from the first poll),
    /// then fails with [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut). Errors as for
    /// [`Pipe::send_with`].
    ///
    /// # Cancel safety
    /// The message is offered to its send queue only inside a poll, and accepted only in the
    /// poll that completes the future, which returns `Ready(Ok(()))` then. Dropping the
    /// future while it is pending (a `select!` whose other branch won, a timeout around it)
    /// means the message was **not** accepted and nothing of it is sent: it can be sent
    /// again without a duplicate. Once the future returned `Ready(Ok(()))`, the message is
    /// the pipe's, as after `send`. `Ready(Err(_))` means what the same error from `send`
    /// means: not accepted (`TimedOut`, `WouldBlock`, `Closed`, ...), or, when writing it
    /// failed and ended the pipe, lost with the pipe (counted in
    /// [`PipeStats::dropped`](crate::PipeStats::dropped)).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let listener = duct::listen("tcp://127.0.0.1:0", duct::ListenOptions::default())?;
    /// let addr = listener.local_addr().to_string();
    /// let pipe = duct::dial_async(&addr, duct::DialOptions::default()).await?;
    /// let peer = listener.accept_async().await?;
    /// pipe.send_async("hello").await?;
    /// assert_eq!(peer.recv_async().await?.payload(), b"hello");
    /// # Ok::<(), duct::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn send_async(
        &self,
        msg: impl Into<Message>,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let msg = msg.into();
        let channel = msg.channel();
        let timeout = self.conn().send_timeout();
        SendFuture::new(self, channel, msg.into_bytes(), Meta::default(), timeout)
    }

    /// Sends one message with options, without blocking the thread: the async form of
    /// [`Pipe::send_with`], with the same options and errors. [`SendOptions::timeout`] is
    /// honoured (counted from the first poll; a reactor timer wakes the task when it runs
    /// out); `Duration::ZERO` fails at once with
    /// [`ErrorKind::WouldBlock`](crate::ErrorKind::WouldBlock) when the queue is full, as
    /// `send_with` does. A time to live ([`SendOptions::ttl`] or the channel's) counts from
    /// the first poll too. The options are read when this is called (the future does not
    /// borrow them). Cancel safety as for [`Pipe::send_async`]: the message is accepted only
    /// in the poll that returns `Ready(Ok(()))`.
    ///
    /// ```no_run
    /// # async fn run(pipe: &duct::Pipe) -> duct::Result<()> {
    /// use std::time::Duration;
    /// let opts = duct::SendOptions::default()
    ///     .channel(2)
    ///     .timeout(Duration::from_millis(100));
    /// match pipe.send_with_async("state", &opts).await {
    ///     Err(e) if e.kind() == duct::ErrorKind::TimedOut => { /* the peer lags: skip it */ }
    ///     other => other?,
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn send_with_async(
        &self,
        msg: impl Into<Message>,
        opts: &SendOptions,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        let msg = msg.into();
        let channel = opts.channel_for(msg.channel());
        let timeout = opts.timeout_or(self.conn().send_timeout());
        SendFuture::new(self, channel, msg.into_bytes(), opts.meta(), timeout)
    }

    /// Receives the next message without blocking the thread: the async form of
    /// [`Pipe::recv`], with the same errors: [`ErrorKind::Closed`](crate::ErrorKind::Closed)
    /// after a close (the peer's code and reason in [`Error::close_reason`]), once every
    /// message received before it has been returned;
    /// [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected) when the connection broke
    /// without one. It waits with no time limit: bound it with
    /// [`Pipe::recv_with_async`] or with the runtime's timeout (e.g. `tokio::time::timeout`),
    /// which cancel safety makes safe.
    ///
    /// # Cancel safety
    /// A message is taken from the receive queue only in the poll that returns it
    /// (`Ready(Ok(msg))`). Dropping the future while it is pending loses no message: the next
    /// receive (async or blocking) returns it. So `recv_async` may be used in a `select!`
    /// loop, recreated on every turn.
    ///
    /// ```no_run
    /// # async fn run(pipe: duct::Pipe) -> duct::Result<()> {
    /// loop {
    ///     match pipe.recv_async().await {
    ///         Ok(msg) => pipe.send_async(msg).await?, // echo
    ///         Err(e) if e.kind() == duct::ErrorKind::Closed => return Ok(()),
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn recv_async(&self) -> impl Future<Output = Result<Message>> + Send + '_ {
        RecvFuture::new(self, None)
    }

    /// Receives the next message with options, without blocking the thread: the async form
    /// of [`Pipe::recv_with`]. [`RecvOptions::timeout`] is honoured: counted from the first
    /// poll, a reactor timer wakes the task when it runs out, and the future fails with
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut); `Duration::ZERO` does not wait
    /// ([`ErrorKind::WouldBlock`](crate::ErrorKind::WouldBlock) when no message is ready).
    /// Cancel safety as for [`Pipe::recv_async`].
    ///
    /// ```no_run
    /// # async fn run(pipe: &duct::Pipe) -> duct::Result<()> {
    /// use std::time::Duration;
    /// let opts = duct::RecvOptions::default().timeout(Duration::from_secs(1));
    /// match pipe.recv_with_async(&opts).await {
    ///     Ok(msg) => println!("{} bytes", msg.len()),
    ///     Err(e) if e.kind() == duct::ErrorKind::TimedOut => println!("quiet second"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_with_async(
        &self,
        opts: &RecvOptions,
    ) -> impl Future<Output = Result<Message>> + Send + '_ {
        RecvFuture::new(self, opts.timeout)
    }

    /// Waker slots this pipe holds for pending async calls (in use, or free for reuse):
    /// never more than the calls pending at once; 0 when none is. For tests.
    #[doc(hidden)]
    pub fn async_waiter_slots(&self) -> usize {
        self.conn().waiter_slots()
    }
}

impl Listener {
    /// Waits for the next dialer whose handshake completed, without blocking the thread: the
    /// async form of [`Listener::accept`], with the same errors
    /// ([`ErrorKind::Closed`](crate::ErrorKind::Closed) once the listener is closed). It
    /// waits with no time limit; bound it with the runtime's timeout if needed.
    ///
    /// # Cancel safety
    /// A pipe is taken from the listener's queue only in the poll that returns it; dropping
    /// the future while it is pending loses no pipe (the next `accept` returns it).
    ///
    /// ```no_run
    /// # async fn run() -> duct::Result<()> {
    /// let listener = duct::listen("uds://@game-world", duct::ListenOptions::default())?;
    /// loop {
    ///     let pipe = listener.accept_async().await?;
    ///     println!("dialer from {}", pipe.peer_addr());
    /// }
    /// # }
    /// ```
    pub fn accept_async(&self) -> impl Future<Output = Result<Pipe>> + Send + '_ {
        AcceptFuture {
            listener: self,
            key: None,
        }
    }

    /// Waker slots this listener holds for pending `accept_async` calls. For tests.
    #[doc(hidden)]
    pub fn async_waiter_slots(&self) -> usize {
        self.inner().waiter_slots()
    }
}

/// Opens a pipe to the listener at `addr` without blocking the thread: the async form of
/// [`dial`](crate::dial), with the same addresses, options and errors.
///
/// **Cost.** Connect and handshake are blocking operations in this version, so the first
/// poll starts one short-lived OS thread (`duct-dial`) that runs [`dial`](crate::dial) and
/// hands the pipe to the future (waking its task). The thread lives as long as the dial:
/// at most [`DialOptions::timeout`] (default 5 s). Dialing is rare next to sending, so a
/// thread per dial in flight is the price of a simple, correct version; a malformed address
/// fails in the first poll, without a thread.
///
/// # Cancel safety
/// Nothing happens before the first poll. Dropping the future after it does not stop the
/// dial under way: the thread finishes it (within the dial timeout), and the pipe it made,
/// which nobody can receive any more, is closed at once (the listener sees a close with
/// reason "pipe dropped"). No message can be lost: none was sent on it.
///
/// ```no_run
/// # async fn run() -> duct::Result<()> {
/// let pipe = duct::dial_async("tcp://127.0.0.1:7000", duct::DialOptions::default()).await?;
/// pipe.send_async("hello").await?;
/// # Ok(())
/// # }
/// ```
pub fn dial_async(addr: &str, opts: DialOptions) -> impl Future<Output = Result<Pipe>> + Send {
    DialFuture {
        request: Some((addr.to_owned(), opts)),
        slot: None,
    }
}

/// `deadline` for `timeout` from now; `None` for no timeout (or one too large to represent).
fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

struct SendFuture<'a> {
    pipe: &'a Pipe,
    channel: u16,
    /// The message, until it is accepted (or the call failed).
    payload: Option<Bytes>,
    meta: Meta,
    timeout: Duration,
    /// When the first poll began: the send's start for its timeout and TTL.
    started: Option<Instant>,
    /// The waker slot, from the first `Pending` on.
    key: Option<usize>,
}

impl<'a> SendFuture<'a> {
    fn new(pipe: &'a Pipe, channel: u16, payload: Bytes, meta: Meta, timeout: Duration) -> Self {
        SendFuture {
            pipe,
            channel,
            payload: Some(payload),
            meta,
            timeout,
            started: None,
            key: None,
        }
    }
}

impl Future for SendFuture<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        assert!(
            this.payload.is_some(),
            "duct: a send_async future was polled after it completed"
        );
        let now = *this.started.get_or_insert_with(Instant::now);
        // A timeout too large to add to `now` waits as long as one can.
        let timeout = match now.checked_add(this.timeout) {
            Some(_) => this.timeout,
            None => Duration::from_secs(86_400 * 365),
        };
        let park = Park {
            waker: cx.waker(),
            key: &mut this.key,
            deadline: None, // (the send queue's wait registers its own)
        };
        let conn = this.pipe.conn();
        let result = conn.poll_send(
            this.channel,
            &mut this.payload,
            this.meta,
            now,
            timeout,
            park,
        );
        match result {
            Ok(false) => Poll::Pending,
            Ok(true) => {
                this.release();
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                this.payload = None;
                this.release();
                Poll::Ready(Err(e))
            }
        }
    }
}

impl SendFuture<'_> {
    fn release(&mut self) {
        if let Some(key) = self.key.take() {
            self.pipe.conn().forget_waiter(key);
        }
    }
}

impl Drop for SendFuture<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

struct RecvFuture<'a> {
    pipe: &'a Pipe,
    timeout: Option<Duration>,
    /// Set by the first poll.
    deadline: Option<Instant>,
    polled: bool,
    /// The waker slot, from the first `Pending` on.
    key: Option<usize>,
}

impl<'a> RecvFuture<'a> {
    fn new(pipe: &'a Pipe, timeout: Option<Duration>) -> Self {
        RecvFuture {
            pipe,
            timeout,
            deadline: None,
            polled: false,
            key: None,
        }
    }

    fn release(&mut self) {
        if let Some(key) = self.key.take() {
            self.pipe.conn().forget_waiter(key);
        }
    }
}

impl Future for RecvFuture<'_> {
    type Output = Result<Message>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Message>> {
        let this = &mut *self;
        if !this.polled {
            this.polled = true;
            this.deadline = deadline_after(this.timeout);
        }
        let conn = this.pipe.conn();
        let result = if this.timeout == Some(Duration::ZERO) {
            // Do not wait: one look, as `recv_with` with a zero timeout.
            conn.recv(Wait::No)
                .and_then(|d| d.ok_or_else(|| this.pipe.would_block()))
                .map(Some)
        } else {
            conn.poll_recv(Park {
                waker: cx.waker(),
                key: &mut this.key,
                deadline: this.deadline,
            })
        };
        let out = match result {
            Ok(None) => return Poll::Pending,
            Ok(Some(d)) => Ok(Message::new(d.payload).with_channel(d.channel)),
            Err(e) => Err(e),
        };
        this.release();
        Poll::Ready(out)
    }
}

impl Drop for RecvFuture<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

struct AcceptFuture<'a> {
    listener: &'a Listener,
    key: Option<usize>,
}

impl Future for AcceptFuture<'_> {
    type Output = Result<Pipe>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Pipe>> {
        let this = &mut *self;
        match this.listener.inner().poll_accept(cx.waker(), &mut this.key) {
            None => Poll::Pending,
            Some(result) => {
                this.release();
                Poll::Ready(result)
            }
        }
    }
}

impl AcceptFuture<'_> {
    fn release(&mut self) {
        if let Some(key) = self.key.take() {
            self.listener.inner().forget_waiter(key);
        }
    }
}

impl Drop for AcceptFuture<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Where the dial thread leaves its result for the future, and the task to wake then.
#[derive(Default)]
struct DialSlot {
    state: Mutex<DialState>,
}

#[derive(Default)]
struct DialState {
    result: Option<Result<Pipe>>,
    waker: Option<Waker>,
}

impl DialSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, DialState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct DialFuture {
    /// The address and options, until the first poll starts the dial.
    request: Option<(String, DialOptions)>,
    /// Shared with the dial thread, from the first poll until the result is taken.
    slot: Option<Arc<DialSlot>>,
}

impl Future for DialFuture {
    type Output = Result<Pipe>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Pipe>> {
        let this = &mut *self;
        if let Some((addr, opts)) = this.request.take() {
            // A malformed address needs no thread to be refused.
            if let Err(e) = addr::parse(&addr) {
                return Poll::Ready(Err(e));
            }
            let slot = Arc::new(DialSlot::default());
            slot.lock().waker = Some(cx.waker().clone());
            let theirs = Arc::clone(&slot);
            let spawned = std::thread::Builder::new()
                .name("duct-dial".into())
                .spawn(move || {
                    let result = crate::dial(&addr, opts);
                    let waker = {
                        let mut st = theirs.lock();
                        st.result = Some(result);
                        st.waker.take()
                    };
                    if let Some(w) = waker {
                        w.wake();
                    }
                    // A future dropped meanwhile left the pipe here: it closes as `theirs`
                    // goes.
                });
            if let Err(e) = spawned {
                return Poll::Ready(Err(Error::io(e, "dial_async: starting the dial thread")));
            }
            this.slot = Some(slot);
            return Poll::Pending;
        }
        let slot = this
            .slot
            .as_ref()
            .expect("duct: a dial_async future was polled after it completed");
        let mut st = slot.lock();
        if let Some(result) = st.result.take() {
            drop(st);
            this.slot = None;
            return Poll::Ready(result);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for DialFuture {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.lock().waker = None;
        }
    }
}
