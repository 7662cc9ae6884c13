//! Logging and metrics (see `duct::observability`): the events a `tracing` subscriber sees
//! and the series a `metrics` recorder gets, as pipes connect, carry traffic, drop, break,
//! resume and close.
//!
//! A tracing subscriber and a metrics recorder are process-wide, so this file is a test binary
//! of its own: it installs one of each (small ones written here, capturing everything) and
//! its tests tell their pipes apart by pipe id and role.

mod common; // (for thread_cpu)

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use duct::{
    CloseOptions, DialOptions, ErrorKind, ListenOptions, Message, Pipe, Reconnect, RecvOptions,
};

/// The deadline for anything that should happen "at once".
const T: Duration = Duration::from_secs(10);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// A tracing subscriber that keeps every span and event.
// ---------------------------------------------------------------------------------------------

mod capture {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    #[derive(Clone, Debug)]
    pub struct SpanRec {
        pub name: &'static str,
        pub target: &'static str,
        pub fields: BTreeMap<String, String>,
    }

    #[derive(Clone, Debug)]
    pub struct EventRec {
        pub name: &'static str,
        pub target: &'static str,
        pub level: Level,
        /// The explicit parent, if the event named one.
        pub parent: Option<u64>,
        pub fields: BTreeMap<String, String>,
    }

    #[derive(Default)]
    pub struct Store {
        pub spans: Mutex<BTreeMap<u64, SpanRec>>,
        pub events: Mutex<Vec<EventRec>>,
    }

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.0.insert(field.name().to_owned(), value.to_string());
        }
        fn record_bool(&mut self, field: &Field, value: bool) {
            self.0.insert(field.name().to_owned(), value.to_string());
        }
    }

    struct Capture {
        store: &'static Store,
        next: AtomicU64,
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true // TRACE included: the tests check at which level things are logged
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let mut fields = BTreeMap::new();
            span.record(&mut Fields(&mut fields));
            let meta = span.metadata();
            self.store.spans.lock().unwrap().insert(
                id,
                SpanRec {
                    name: meta.name(),
                    target: meta.target(),
                    fields,
                },
            );
            Id::from_u64(id)
        }
        fn record(&self, span: &Id, values: &Record<'_>) {
            if let Some(s) = self.store.spans.lock().unwrap().get_mut(&span.into_u64()) {
                values.record(&mut Fields(&mut s.fields));
            }
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let meta = event.metadata();
            self.store.events.lock().unwrap().push(EventRec {
                name: meta.name(),
                target: meta.target(),
                level: *meta.level(),
                parent: event.parent().map(Id::into_u64),
                fields,
            });
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// The process's subscriber, installed on first use.
    pub fn store() -> &'static Store {
        static STORE: OnceLock<&'static Store> = OnceLock::new();
        STORE.get_or_init(|| {
            let store: &'static Store = Box::leak(Box::default());
            tracing::subscriber::set_global_default(Capture {
                store,
                next: AtomicU64::new(1),
            })
            .expect("no other subscriber in this test binary");
            store
        })
    }

    impl Store {
        /// The id of the `pipe` span of this pipe id and role.
        pub fn pipe_span(&self, pipe_id: u64, role: &str) -> Option<u64> {
            self.spans
                .lock()
                .unwrap()
                .iter()
                .find(|(_, s)| {
                    s.name == "pipe"
                        && s.fields.get("pipe_id") == Some(&pipe_id.to_string())
                        && s.fields.get("role").map(String::as_str) == Some(role)
                })
                .map(|(id, _)| *id)
        }

        pub fn span(&self, id: u64) -> SpanRec {
            self.spans.lock().unwrap()[&id].clone()
        }

        /// The events whose parent is span `id`, in order.
        pub fn children(&self, id: u64) -> Vec<EventRec> {
            self.events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.parent == Some(id))
                .cloned()
                .collect()
        }

        pub fn named(&self, id: u64, name: &str) -> Vec<EventRec> {
            self.children(id)
                .into_iter()
                .filter(|e| e.name == name)
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A metrics recorder that keeps every series.
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "metrics")]
mod recorder {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };

    /// A series: its name and labels (sorted).
    pub type Series = (String, BTreeMap<String, String>);

    #[derive(Default)]
    pub struct CounterCell(AtomicU64);
    impl CounterFn for CounterCell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Ordering::Relaxed);
        }
    }

    #[derive(Default)]
    pub struct GaugeCell(Mutex<f64>);
    impl GaugeFn for GaugeCell {
        fn increment(&self, value: f64) {
            *self.0.lock().unwrap() += value;
        }
        fn decrement(&self, value: f64) {
            *self.0.lock().unwrap() -= value;
        }
        fn set(&self, value: f64) {
            *self.0.lock().unwrap() = value;
        }
    }

    #[derive(Default)]
    pub struct HistogramCell(Mutex<Vec<f64>>);
    impl HistogramFn for HistogramCell {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    #[derive(Default)]
    pub struct Store {
        pub counters: Mutex<HashMap<Series, Arc<CounterCell>>>,
        pub gauges: Mutex<HashMap<Series, Arc<GaugeCell>>>,
        pub histograms: Mutex<HashMap<Series, Arc<HistogramCell>>>,
        /// How often each series was registered.
        pub registrations: Mutex<HashMap<Series, usize>>,
        pub descriptions: Mutex<HashMap<String, (Option<Unit>, String)>>,
    }

    fn series(key: &Key) -> Series {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        (key.name().to_owned(), labels)
    }

    struct Rec(&'static Store);

    impl Rec {
        fn registered(&self, s: &Series) {
            *self
                .0
                .registrations
                .lock()
                .unwrap()
                .entry(s.clone())
                .or_default() += 1;
        }
        fn describe(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.0
                .descriptions
                .lock()
                .unwrap()
                .insert(key.as_str().to_owned(), (unit, text.to_string()));
        }
    }

    impl Recorder for Rec {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.describe(key, unit, text);
        }
        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.describe(key, unit, text);
        }
        fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
            self.describe(key, unit, text);
        }
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let s = series(key);
            self.registered(&s);
            let cell = self
                .0
                .counters
                .lock()
                .unwrap()
                .entry(s)
                .or_default()
                .clone();
            Counter::from_arc(cell)
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let s = series(key);
            self.registered(&s);
            let cell = self.0.gauges.lock().unwrap().entry(s).or_default().clone();
            Gauge::from_arc(cell)
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            let s = series(key);
            self.registered(&s);
            let cell = self
                .0
                .histograms
                .lock()
                .unwrap()
                .entry(s)
                .or_default()
                .clone();
            Histogram::from_arc(cell)
        }
    }

    /// The process's recorder, installed on first use.
    pub fn store() -> &'static Store {
        static STORE: OnceLock<&'static Store> = OnceLock::new();
        STORE.get_or_init(|| {
            let store: &'static Store = Box::leak(Box::default());
            metrics::set_global_recorder(Rec(store))
                .expect("no other recorder in this test binary");
            store
        })
    }

    fn matches(s: &Series, name: &str, labels: &[(&str, &str)]) -> bool {
        s.0 == name
            && labels
                .iter()
                .all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(*v))
    }

    impl Store {
        /// The counter named `name` whose labels include `labels` (exactly one such series).
        pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
            let all = self.counters.lock().unwrap();
            let mut found = all.iter().filter(|(s, _)| matches(s, name, labels));
            let (_, cell) = found.next()?;
            assert!(
                found.next().is_none(),
                "several {name} series match {labels:?}"
            );
            Some(cell.0.load(Ordering::Relaxed))
        }

        pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let all = self.gauges.lock().unwrap();
            let mut found = all.iter().filter(|(s, _)| matches(s, name, labels));
            let (_, cell) = found.next()?;
            assert!(
                found.next().is_none(),
                "several {name} series match {labels:?}"
            );
            let v = *cell.0.lock().unwrap();
            Some(v)
        }

        pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
            let all = self.histograms.lock().unwrap();
            all.iter()
                .filter(|(s, _)| matches(s, name, labels))
                .flat_map(|(_, cell)| cell.0.lock().unwrap().clone())
                .collect()
        }

        /// Every series (of any kind) whose labels include `labels`.
        pub fn series(&self, labels: &[(&str, &str)]) -> Vec<Series> {
            self.registrations
                .lock()
                .unwrap()
                .keys()
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(*v))
                })
                .cloned()
                .collect()
        }
    }
}

/// Installs both, sets a short publication interval, and runs the tests one at a time (one
/// turns publication off for a while; the logs are easier to read).
fn install() -> (&'static capture::Store, MutexGuard<'static, ()>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    #[cfg(feature = "metrics")]
    {
        recorder::store();
        duct::set_metrics_interval(Duration::from_millis(20));
    }
    (capture::store(), serial)
}

/// A listener on loopback tcp and a pipe dialed to it; returns (listener, dialer, accepted).
fn pair(lopts: ListenOptions, dopts: DialOptions) -> (duct::Listener, Pipe, Pipe) {
    let listener = duct::listen("tcp://127.0.0.1:0", lopts).unwrap();
    let dialer = duct::dial(&listener.local_addr().to_string(), dopts).unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    (listener, dialer, accepted)
}

fn recv(p: &Pipe) -> Message {
    p.recv_with(&RecvOptions::default().timeout(T)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------

/// Connecting and closing are INFO events whose parent is the pipe's span, which carries the
/// pipe id, session id, addresses, transport and role; messages are TRACE only.
#[test]
fn connect_and_close_are_info_events_in_the_pipe_span() {
    let (log, _serial) = install();
    let (_listener, dialer, accepted) = pair(ListenOptions::default(), DialOptions::default());
    const N: usize = 100;
    for i in 0..N {
        dialer
            .send(Message::new(vec![i as u8; 10]).with_channel(4))
            .unwrap();
    }
    for _ in 0..N {
        assert_eq!(recv(&accepted).channel(), 4);
    }
    dialer
        .close_with(CloseOptions::default().reason(7, "bye"))
        .unwrap();
    let end = accepted
        .recv_with(&RecvOptions::default().timeout(T))
        .unwrap_err();
    assert_eq!(end.kind(), ErrorKind::Closed);

    let id = dialer.id();
    let dspan = log.pipe_span(id, "dialer").expect("the dialer's pipe span");
    let lspan = log
        .pipe_span(id, "listener")
        .expect("the listener's pipe span");
    for (span, pipe, role) in [(dspan, &dialer, "dialer"), (lspan, &accepted, "listener")] {
        let s = log.span(span);
        assert_eq!((s.name, s.target), ("pipe", "duct::pipe"));
        let f = |k: &str| s.fields.get(k).cloned().unwrap_or_default();
        assert_eq!(f("session_id"), pipe.session_id().to_string(), "{role}");
        assert_eq!(f("pipe_id"), id.to_string());
        assert_eq!(f("transport"), "tcp");
        assert_eq!(f("role"), role);
        assert_eq!(f("local_addr"), pipe.local_addr().to_string());
        assert_eq!(f("peer_addr"), pipe.peer_addr().to_string());

        let connected = log.named(span, "connected");
        assert_eq!(connected.len(), 1, "{role}: {connected:?}");
        assert_eq!(connected[0].level, tracing::Level::INFO);
        assert_eq!(connected[0].target, "duct::pipe");
        assert_eq!(
            connected[0].fields["session_id"],
            pipe.session_id().to_string()
        );
    }
    // The peer's `recv` returned Closed: the listener's event came first. The dialer's close
    // returned: its event came before.
    let closed = log.named(dspan, "closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].level, tracing::Level::INFO);
    assert_eq!(closed[0].fields["initiator"], "local");
    assert_eq!(closed[0].fields["code"], "7");
    assert_eq!(closed[0].fields["reason"], "bye");
    let closed = log.named(lspan, "closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].fields["initiator"], "peer");
    assert_eq!(closed[0].fields["code"], "7");
    assert_eq!(closed[0].fields["reason"], "bye");

    // One TRACE event per message on each side, with channel and length; nothing per message
    // above TRACE.
    let sent = log.named(dspan, "message_sent");
    let received = log.named(lspan, "message_received");
    assert_eq!((sent.len(), received.len()), (N, N));
    for e in sent.iter().chain(&received) {
        assert_eq!(e.level, tracing::Level::TRACE);
        assert_eq!(e.target, "duct::message");
        assert_eq!(
            (e.fields["channel"].as_str(), e.fields["len"].as_str()),
            ("4", "10")
        );
    }
    for span in [dspan, lspan] {
        let above: Vec<_> = log
            .children(span)
            .into_iter()
            .filter(|e| e.level != tracing::Level::TRACE)
            .map(|e| e.name)
            .collect();
        assert_eq!(above, ["connected", "closed"], "events above TRACE");
    }
}

/// A break and a resume: `disconnected` (with the cause) and `reconnecting` on both ends,
/// then `resumed`; the span's session id follows the new session.
#[test]
fn a_break_logs_disconnected_reconnecting_and_resumed() {
    let (log, _serial) = install();
    let listener = duct::listen("tcp://127.0.0.1:0", ListenOptions::default()).unwrap();
    let target = match listener.local_addr() {
        duct::Addr::Tcp(a) => a,
        other => panic!("tcp expected, not {other}"),
    };
    let proxy = duct_testkit::ChaosProxy::start(target).unwrap();
    let dialer = duct::dial(
        &format!("tcp://{}", proxy.addr()),
        DialOptions::default().reconnect(Reconnect::exponential(
            Duration::from_millis(20),
            Duration::from_millis(200),
        )),
    )
    .unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    let first = dialer.session_id();
    let id = dialer.id();
    let dspan = log.pipe_span(id, "dialer").unwrap();
    let lspan = log.pipe_span(id, "listener").unwrap();

    proxy.reset_all();
    wait_until("both ends resumed", || {
        !log.named(dspan, "resumed").is_empty() && !log.named(lspan, "resumed").is_empty()
    });
    dialer.send("after").unwrap();
    assert_eq!(recv(&accepted).payload(), b"after");
    assert_ne!(dialer.session_id(), first, "a new session");
    for (span, pipe) in [(dspan, &dialer), (lspan, &accepted)] {
        let gone = log.named(span, "disconnected");
        assert!(!gone.is_empty());
        assert_eq!(gone[0].level, tracing::Level::INFO);
        assert_eq!(gone[0].fields["reconnecting"], "true");
        assert!(!gone[0].fields["cause"].is_empty());
        assert!(!log.named(span, "reconnecting").is_empty());
        let back = log.named(span, "resumed");
        assert_eq!(back[0].level, tracing::Level::INFO);
        assert_eq!(back[0].fields["session_id"], pipe.session_id().to_string());
        assert_eq!(
            log.span(span).fields["session_id"],
            pipe.session_id().to_string(),
            "the span follows the session"
        );
        assert!(log.named(span, "session_lost").is_empty());
    }
    let names: Vec<_> = log.children(dspan).into_iter().map(|e| e.name).collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at("connected") < at("disconnected"));
    assert!(at("disconnected") < at("reconnecting"));
    assert!(at("reconnecting") < at("resumed"));
}

/// A failed reconnect attempt is DEBUG; when the listener no longer holds the session (its
/// resume window passed), the reconnect is `reconnected` and `session_lost`, not `resumed`,
/// and the accepted pipe ended `disconnected`.
#[test]
fn a_lost_session_logs_failed_attempts_and_session_lost() {
    let (log, _serial) = install();
    let window = Duration::from_millis(50);
    let listener = duct::listen(
        "tcp://127.0.0.1:0",
        ListenOptions::default().resume_window(window),
    )
    .unwrap();
    let target = match listener.local_addr() {
        duct::Addr::Tcp(a) => a,
        other => panic!("tcp expected, not {other}"),
    };
    let proxy = duct_testkit::ChaosProxy::start(target).unwrap();
    let dialer = duct::dial(
        &format!("tcp://{}", proxy.addr()),
        DialOptions::default()
            .timeout(Duration::from_millis(500))
            .reconnect(Reconnect::exponential(
                Duration::from_millis(10),
                Duration::from_millis(50),
            )),
    )
    .unwrap();
    let accepted = listener.accept_timeout(T).unwrap();
    let dspan = log.pipe_span(dialer.id(), "dialer").unwrap();
    let lspan = log.pipe_span(dialer.id(), "listener").unwrap();
    // Nobody answers for longer than the resume window.
    proxy.refuse(true).unwrap();
    proxy.reset_all();
    wait_until("the resume window to pass", || {
        log.named(lspan, "disconnected")
            .iter()
            .any(|e| e.fields["reconnecting"] == "false")
    });
    assert_eq!(accepted.state(), duct::PipeState::Disconnected);
    wait_until("a failed attempt", || {
        !log.named(dspan, "reconnect_failed").is_empty()
    });
    let failed = &log.named(dspan, "reconnect_failed")[0];
    assert_eq!(failed.level, tracing::Level::DEBUG);
    assert_eq!(failed.fields["attempt"], "1");
    assert!(!failed.fields["error"].is_empty());
    proxy.refuse(false).unwrap();
    let _fresh = listener.accept_timeout(T).unwrap();
    wait_until("reconnected", || {
        !log.named(dspan, "reconnected").is_empty()
    });
    assert!(log.named(dspan, "resumed").is_empty());
    let lost = log.named(dspan, "session_lost");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].level, tracing::Level::INFO);
    assert_eq!(
        log.named(dspan, "reconnected")[0].fields["session_id"],
        dialer.session_id().to_string()
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "metrics")]
mod metrics_published {
    use std::collections::{BTreeMap, HashMap};

    use duct::{Backpressure, ChannelOptions, Heartbeat, RateLimit};

    use super::*;

    /// Counters move as messages flow, per channel, with drops split by reason; the series carry
    /// the pipe, transport, role and channel labels; the RTT histogram gets samples; the pipe's
    /// gauges end at 0 when it closes; every series is registered once.
    #[test]
    fn counters_follow_traffic_per_channel_with_drop_reasons() {
        let _serial = install();
        let m = recorder::store();
        let hb = Heartbeat::new(Duration::from_millis(20), 50);
        let dopts = DialOptions::default()
            .heartbeat(hb)
            // The pipe as a whole sends 1000 messages/s: a quick burst on channel 7 queues, and
            // its tiny DropNew queue drops the excess (queue_full).
            .rate_limit(RateLimit::msgs_per_sec(1000.0).burst(1))
            .channel(
                7,
                ChannelOptions::default()
                    .snd_hwm_msgs(1)
                    .backpressure(Backpressure::DropNew),
            )
            // Channel 8 turns away what exceeds 1 message/s at the door (rate_limit).
            .channel(
                8,
                ChannelOptions::default()
                    .rate_limit(RateLimit::msgs_per_sec(1.0).burst(1))
                    .backpressure(Backpressure::DropNew),
            );
        let (_listener, dialer, accepted) = pair(ListenOptions::default().heartbeat(hb), dopts);
        for _ in 0..20 {
            dialer
                .send(Message::new(vec![1; 100]).with_channel(1))
                .unwrap();
        }
        for _ in 0..50 {
            dialer
                .send(Message::new(vec![7; 10]).with_channel(7))
                .unwrap();
        }
        for _ in 0..5 {
            dialer
                .send(Message::new(vec![8; 3]).with_channel(8))
                .unwrap();
        }
        let tx = dialer.stats();
        let dropped7 = tx.channel(7).unwrap().dropped;
        assert!(dropped7 > 0, "channel 7 dropped nothing: {tx:?}");
        assert_eq!(tx.channel(8).unwrap().rate_limited, 4, "{tx:?}");
        let expected = 20 + (50 - dropped7) + 1;
        let mut per_channel: BTreeMap<u16, u64> = BTreeMap::new();
        for _ in 0..expected {
            *per_channel.entry(recv(&accepted).channel()).or_default() += 1;
        }
        assert_eq!(per_channel[&1], 20);

        let pipe = dialer.id().to_string();
        let d = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
            let mut l = vec![
                ("pipe", pipe.clone()),
                ("role", "dialer".to_owned()),
                ("transport", "tcp".to_owned()),
            ];
            l.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            l
        };
        let l = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
            let mut l = d(extra);
            l[1].1 = "listener".to_owned();
            l
        };
        let counter = |labels: Vec<(&'static str, String)>, name: &str| {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            m.counter(name, &labels)
        };
        wait_until("the dialer's and listener's figures", || {
            counter(d(&[("channel", "7")]), "duct_messages_sent_total") == Some(50)
                && counter(l(&[("channel", "1")]), "duct_messages_received_total") == Some(20)
                && counter(
                    d(&[("channel", "7"), ("reason", "queue_full")]),
                    "duct_messages_dropped_total",
                ) == Some(dropped7)
        });
        // Per channel, and per direction.
        assert_eq!(
            counter(d(&[("channel", "1")]), "duct_messages_sent_total"),
            Some(20)
        );
        assert_eq!(
            counter(d(&[("channel", "1")]), "duct_bytes_sent_total"),
            Some(2000)
        );
        assert_eq!(
            counter(d(&[("channel", "8")]), "duct_messages_sent_total"),
            Some(5)
        );
        assert_eq!(
            counter(l(&[("channel", "1")]), "duct_bytes_received_total"),
            Some(2000)
        );
        assert_eq!(
            counter(l(&[("channel", "7")]), "duct_messages_received_total"),
            Some(50 - dropped7)
        );
        assert_eq!(
            counter(d(&[("channel", "1")]), "duct_messages_received_total"),
            Some(0)
        );
        // Drops by reason.
        let drops = |ch: &'static str, reason: &'static str| {
            counter(
                d(&[("channel", ch), ("reason", reason)]),
                "duct_messages_dropped_total",
            )
        };
        assert_eq!(drops("7", "rate_limit"), Some(0));
        assert_eq!(drops("7", "disconnect"), Some(0));
        assert_eq!(drops("8", "rate_limit"), Some(4));
        assert_eq!(drops("8", "queue_full"), Some(0));
        assert_eq!(drops("1", "queue_full"), Some(0));
        // No series for channels that carried nothing, and every series has the pipe's labels.
        let all = m.series(&[("pipe", pipe.as_str()), ("role", "dialer")]);
        let channels: std::collections::BTreeSet<_> = all
            .iter()
            .filter_map(|s| s.1.get("channel").cloned())
            .collect();
        assert_eq!(
            channels.into_iter().collect::<Vec<_>>(),
            ["1", "7", "8"],
            "channels with series"
        );
        for (name, labels) in &all {
            assert!(name.starts_with("duct_"), "{name}");
            assert_eq!(labels["transport"], "tcp", "{name}");
        }
        let queue = m.gauge(
            "duct_queue_depth_messages",
            &[
                ("pipe", &pipe),
                ("role", "dialer"),
                ("channel", "1"),
                ("direction", "send"),
            ],
        );
        assert!(queue.is_some(), "send queue depth of channel 1");
        assert!(m
            .gauge(
                "duct_queue_depth_bytes",
                &[
                    ("pipe", &pipe),
                    ("role", "listener"),
                    ("channel", "1"),
                    ("direction", "recv")
                ],
            )
            .is_some());
        assert_eq!(
            m.gauge(
                "duct_pipe_connected",
                &[("pipe", &pipe), ("role", "dialer")]
            ),
            Some(1.0)
        );
        // Units and descriptions are given.
        let described = m.descriptions.lock().unwrap().clone();
        assert_eq!(
            described.get("duct_bytes_sent_total").and_then(|d| d.0),
            Some(metrics::Unit::Bytes)
        );
        assert_eq!(
            described.get("duct_rtt_seconds").and_then(|d| d.0),
            Some(metrics::Unit::Seconds)
        );
        // RTT samples from the heartbeats (a side PINGs after 20 ms of silence).
        wait_until("an RTT sample", || {
            !m.samples("duct_rtt_seconds", &[("pipe", &pipe)]).is_empty()
        });
        for s in m.samples("duct_rtt_seconds", &[("pipe", &pipe)]) {
            assert!((0.0..10.0).contains(&s), "rtt sample {s}");
        }

        dialer.close().unwrap();
        wait_until("the final figures", || {
            m.gauge(
                "duct_pipe_connected",
                &[("pipe", &pipe), ("role", "dialer")],
            ) == Some(0.0)
                && m.gauge(
                    "duct_pipe_connected",
                    &[("pipe", &pipe), ("role", "listener")],
                ) == Some(0.0)
        });
        // Each series was registered once (handles are kept), however many publications.
        let registrations = m.registrations.lock().unwrap();
        for ((name, labels), n) in registrations.iter() {
            if labels.get("pipe") == Some(&pipe) {
                assert_eq!(*n, 1, "{name} {labels:?} registered {n} times");
            }
        }
    }

    /// The figures published are those of `Pipe::stats()`.
    #[test]
    fn published_figures_equal_stats() {
        let _serial = install();
        let m = recorder::store();
        let ttl = ChannelOptions::default()
            .ttl(Duration::from_millis(1))
            .rate_limit(RateLimit::msgs_per_sec(5.0).burst(1));
        let (_listener, dialer, accepted) = pair(
            ListenOptions::default(),
            DialOptions::default().channel(2, ttl),
        );
        for i in 0..10u8 {
            dialer
                .send(Message::new(vec![i; 64]).with_channel(2))
                .unwrap();
            dialer
                .send(Message::new(vec![i; 32]).with_channel(3))
                .unwrap();
        }
        // Channel 2 lets one message through at once (the burst; it may arrive, or expire at
        // the receiver); the others wait for tokens and expire at the sender.
        let mut on_3 = 0;
        while on_3 < 10 {
            if recv(&accepted).channel() == 3 {
                on_3 += 1;
            }
        }
        let pipe = dialer.id().to_string();
        let labels = |ch: &str| {
            vec![
                ("pipe", pipe.clone()),
                ("role", "dialer".to_owned()),
                ("channel", ch.to_owned()),
            ]
        };
        let get = |ch: &str, name: &str| {
            let l = labels(ch);
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            m.counter(name, &l)
        };
        wait_until("the expiries published", || {
            let s = dialer.stats().channel(2).unwrap();
            s.expired > 0 && get("2", "duct_messages_expired_total") == Some(s.expired)
        });
        dialer.close().unwrap();
        drop(accepted);
        // After the end the figures stand still: compare them with stats().
        let stats = dialer.stats();
        wait_until("the final publication", || {
            m.gauge(
                "duct_pipe_connected",
                &[("pipe", pipe.as_str()), ("role", "dialer")],
            ) == Some(0.0)
        });
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (c, s) in stats.channels() {
            let c = c.to_string();
            assert_eq!(get(&c, "duct_messages_sent_total"), Some(s.msgs_sent));
            assert_eq!(get(&c, "duct_bytes_sent_total"), Some(s.bytes_sent));
            assert_eq!(get(&c, "duct_messages_expired_total"), Some(s.expired));
            assert_eq!(get(&c, "duct_retransmits_total"), Some(s.retransmits));
            let reasons: u64 = ["queue_full", "rate_limit", "disconnect"]
                .iter()
                .map(|r| {
                    let mut l = labels(&c);
                    l.push(("reason", (*r).to_owned()));
                    let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    m.counter("duct_messages_dropped_total", &l).unwrap()
                })
                .sum();
            assert_eq!(reasons, s.dropped, "channel {c}: drops by reason add up");
            *by_name.entry("sent").or_default() += s.msgs_sent;
        }
        assert_eq!(
            by_name["sent"], stats.msgs_sent,
            "channels add up to the pipe"
        );
        assert_eq!(
            m.counter(
                "duct_reconnects_total",
                &[("pipe", pipe.as_str()), ("role", "dialer")]
            ),
            Some(stats.reconnects)
        );
    }

    /// The per-message path does nothing for metrics: with publication off, a pipe registers no
    /// series at all, and its traffic still counts in `stats()`.
    #[test]
    fn publication_off_registers_nothing() {
        let _serial = install();
        let m = recorder::store();
        duct::set_metrics_interval(Duration::ZERO);
        let pair = pair(ListenOptions::default(), DialOptions::default());
        duct::set_metrics_interval(Duration::from_millis(20));
        let (_listener, dialer, accepted) = pair;
        dialer.send("x").unwrap();
        recv(&accepted);
        std::thread::sleep(Duration::from_millis(100));
        let pipe = dialer.id().to_string();
        assert!(m.series(&[("pipe", pipe.as_str())]).is_empty());
        assert_eq!(dialer.stats().msgs_sent, 1);
    }

    /// A publication runs on the reactor's timer and leaves nothing behind for callers: two
    /// receives blocked on an idle pipe afterwards (one in the transport, one waiting for it)
    /// sleep instead of spinning.
    #[cfg(target_os = "linux")]
    #[test]
    fn blocked_receivers_sleep_between_publications() {
        let _serial = install();
        let m = recorder::store();
        let (_listener, dialer, accepted) = pair(ListenOptions::default(), DialOptions::default());
        let pipe = dialer.id().to_string();
        wait_until("a publication", || {
            m.gauge(
                "duct_pipe_connected",
                &[("pipe", pipe.as_str()), ("role", "listener")],
            )
            .is_some()
        });
        let receivers: Vec<_> = (0..2)
            .map(|_| {
                let p = accepted.clone();
                std::thread::spawn(move || {
                    let before = super::common::thread_cpu();
                    let e = p
                        .recv_with(&RecvOptions::default().timeout(Duration::from_millis(500)))
                        .unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::TimedOut);
                    super::common::thread_cpu() - before
                })
            })
            .collect();
        for r in receivers {
            let used = r.join().unwrap();
            assert!(
                used < Duration::from_millis(150),
                "a blocked recv of 500 ms used {used:?} of CPU"
            );
        }
    }
}
