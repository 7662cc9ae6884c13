//! When io_uring cannot start, the reactor falls back to epoll and says why: with the test
//! hook `DUCT_BACKEND_FORCE_URING_FAILURE=1` (the ring's setup fails as if the kernel refused
//! it with `EPERM`), asking for `uring` gives an epoll reactor, one warning that names the
//! cause, and pipes that work.
//!
//! The backend is chosen once per process and the tracing subscriber is process-wide, so this
//! file is a test binary with a single test.

use std::fmt;
use std::sync::Mutex;

use duct::{Backend, DialOptions, ListenOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

mod common;
use common::{recv, T};

/// Every event's level and fields, as text.
static EVENTS: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

struct Capture;

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = String::new();
        event.record(&mut Text(&mut text));
        EVENTS
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn a_forced_io_uring_failure_falls_back_to_epoll_and_says_why() {
    // Before anything of duct runs: the hook is read when the reactor starts.
    std::env::set_var("DUCT_BACKEND_FORCE_URING_FAILURE", "1");
    tracing::subscriber::set_global_default(Capture).expect("the only subscriber");
    duct::set_backend(Backend::Uring).unwrap();
    assert_eq!(duct::backend(), None, "nothing runs before the first pipe");

    let name = format!("uds://@duct-backend-fallback-{}", std::process::id());
    let addr = if cfg!(target_os = "linux") {
        name
    } else {
        "tcp://127.0.0.1:0".to_owned()
    };
    let listener = duct::listen(&addr, ListenOptions::default()).expect("listen on epoll");
    assert_eq!(duct::backend(), Some(Backend::Epoll));

    if cfg!(all(target_os = "linux", feature = "io-uring")) {
        let events = EVENTS.lock().unwrap().clone();
        let why: Vec<_> = events
            .iter()
            .filter(|(_, text)| text.contains("io_uring cannot start"))
            .collect();
        assert_eq!(why.len(), 1, "one line about the fallback: {events:#?}");
        let (level, text) = why[0];
        assert_eq!(*level, Level::WARN, "asked for by name: a warning");
        assert!(
            text.contains("DUCT_BACKEND_FORCE_URING_FAILURE") && text.contains("EPERM"),
            "the line names the cause: {text}"
        );
        assert!(
            text.contains("using epoll"),
            "and what runs instead: {text}"
        );
    }

    // A pipe works, both ways.
    let local = listener.local_addr().to_string();
    let acceptor = std::thread::spawn(move || listener.accept_timeout(T).unwrap());
    let dialer = duct::dial(&local, DialOptions::default().timeout(T)).unwrap();
    let accepted = acceptor.join().unwrap();
    for i in 0..100 {
        dialer.send(format!("ping {i}")).unwrap();
        let m = recv(&accepted);
        accepted.send(m).unwrap();
        assert_eq!(recv(&dialer).payload(), format!("ping {i}").as_bytes());
    }
    dialer.close().unwrap();
    assert_eq!(
        common::recv_t(&accepted).unwrap_err().kind(),
        duct::ErrorKind::Closed
    );
}
