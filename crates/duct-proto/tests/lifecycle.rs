//! The pipe lifecycle state machine: one test per transition (and per refused event), in
//! virtual time. No sleeps: `now` is an `Instant` moved by hand.

use std::time::{Duration, Instant};

use duct_proto::lifecycle::{Backoff, Change, Ignored, Lifecycle, Next, Phase, Policy};

const MS: Duration = Duration::from_millis(1);

fn backoff(max_attempts: Option<u32>) -> Backoff {
    Backoff {
        initial: 100 * MS,
        max: 1000 * MS,
        jitter: 0.5,
        max_attempts,
    }
}

fn dialer(max_attempts: Option<u32>) -> Lifecycle {
    Lifecycle::new(Policy {
        redial: Some(backoff(max_attempts)),
        resume_window: None,
    })
}

fn listener(window: Duration) -> Lifecycle {
    Lifecycle::new(Policy {
        redial: None,
        resume_window: Some(window),
    })
}

fn plain() -> Lifecycle {
    Lifecycle::new(Policy::default())
}

fn change(from: Phase, to: Phase, session_id: u64) -> Change {
    Change {
        from,
        to,
        session_id,
    }
}

fn connected(mut l: Lifecycle, session_id: u64) -> Lifecycle {
    l.connected(session_id).unwrap();
    l
}

#[test]
fn connecting_to_connected() {
    let mut l = plain();
    assert_eq!(l.phase(), Phase::Connecting);
    assert_eq!(l.session_id(), 0);
    assert_eq!(
        l.connected(7),
        Ok(change(Phase::Connecting, Phase::Connected, 7))
    );
    assert_eq!(l.session_id(), 7);
}

#[test]
fn connecting_to_closed() {
    let mut l = plain();
    assert_eq!(l.close(), Ok(change(Phase::Connecting, Phase::Closed, 0)));
}

#[test]
fn connected_to_disconnected_without_redial_or_resume() {
    let now = Instant::now();
    let mut l = connected(plain(), 1);
    assert_eq!(
        l.broke(now, true, 0.0),
        Ok((
            change(Phase::Connected, Phase::Disconnected, 1),
            Next::Nothing
        ))
    );
    // A listener whose session was not resumable ends the same way.
    let mut l = connected(listener(5000 * MS), 2);
    assert_eq!(
        l.broke(now, false, 0.0),
        Ok((
            change(Phase::Connected, Phase::Disconnected, 2),
            Next::Nothing
        ))
    );
}

#[test]
fn connected_to_reconnecting_on_a_break_schedules_the_first_attempt() {
    let now = Instant::now();
    let mut l = connected(dialer(None), 3);
    // random 0: no jitter cut; the first wait is `initial`.
    assert_eq!(
        l.broke(now, false, 0.0),
        Ok((
            change(Phase::Connected, Phase::Reconnecting, 3),
            Next::AttemptAt(now + 100 * MS)
        ))
    );
    assert_eq!(l.attempts(), 0);
}

#[test]
fn connected_to_reconnecting_on_a_break_holds_a_resumable_session() {
    let now = Instant::now();
    let mut l = connected(listener(5000 * MS), 4);
    assert_eq!(
        l.broke(now, true, 0.9),
        Ok((
            change(Phase::Connected, Phase::Reconnecting, 4),
            Next::ExpireAt(now + 5000 * MS)
        ))
    );
    assert_eq!(l.resume_deadline(), Some(now + 5000 * MS));
}

#[test]
fn a_zero_resume_window_keeps_nothing() {
    let now = Instant::now();
    let mut l = connected(listener(Duration::ZERO), 4);
    assert_eq!(l.broke(now, true, 0.0).unwrap().0.to, Phase::Disconnected);
}

#[test]
fn connected_to_reconnecting_when_a_redialing_peer_closes() {
    let now = Instant::now();
    let mut l = connected(dialer(None), 5);
    assert_eq!(
        l.peer_closed(now, 1.0),
        Ok((
            change(Phase::Connected, Phase::Reconnecting, 5),
            // random 1.0 with jitter 0.5: half the wait.
            Next::AttemptAt(now + 50 * MS)
        ))
    );
}

#[test]
fn connected_to_closed_when_the_peer_closes() {
    let now = Instant::now();
    // Also on a listener with a resume window: a CLOSE leaves nothing to resume.
    for mut l in [connected(plain(), 6), connected(listener(5000 * MS), 6)] {
        assert_eq!(
            l.peer_closed(now, 0.0),
            Ok((change(Phase::Connected, Phase::Closed, 6), Next::Nothing))
        );
    }
}

#[test]
fn connected_to_closed_on_close() {
    let mut l = connected(dialer(None), 8);
    assert_eq!(l.close(), Ok(change(Phase::Connected, Phase::Closed, 8)));
}

#[test]
fn reconnecting_to_connected_with_a_new_session() {
    let now = Instant::now();
    let mut l = connected(dialer(None), 9);
    l.broke(now, false, 0.0).unwrap();
    l.attempt_failed(now + 100 * MS, 0.0).unwrap().unwrap();
    assert_eq!(l.attempts(), 1);
    assert_eq!(
        l.connected(10),
        Ok(change(Phase::Reconnecting, Phase::Connected, 10))
    );
    assert_eq!(l.attempts(), 0, "a success resets the count");
}

#[test]
fn reconnecting_to_connected_on_resume() {
    let now = Instant::now();
    let mut l = connected(listener(5000 * MS), 11);
    l.broke(now, true, 0.0).unwrap();
    assert_eq!(
        l.connected(12),
        Ok(change(Phase::Reconnecting, Phase::Connected, 12))
    );
    assert_eq!(l.resume_deadline(), None);
    // The old deadline no longer ends anything.
    assert_eq!(
        l.expired(now + 6000 * MS),
        Err(Ignored {
            phase: Phase::Connected
        })
    );
}

#[test]
fn reconnecting_to_reconnecting_on_a_failed_attempt_with_growing_waits() {
    let mut now = Instant::now();
    let mut l = connected(dialer(None), 13);
    l.broke(now, false, 0.0).unwrap();
    let mut waits = Vec::new();
    for _ in 0..6 {
        let at = l.attempt_failed(now, 0.0).unwrap().unwrap();
        waits.push((at - now).as_millis());
        now = at;
        assert_eq!(l.phase(), Phase::Reconnecting);
    }
    assert_eq!(waits, [200, 400, 800, 1000, 1000, 1000]);
}

#[test]
fn reconnecting_to_closed_when_attempts_are_exhausted() {
    let now = Instant::now();
    let mut l = connected(dialer(Some(3)), 14);
    l.broke(now, false, 0.0).unwrap();
    assert!(l.attempt_failed(now, 0.0).unwrap().is_ok());
    assert!(l.attempt_failed(now, 0.0).unwrap().is_ok());
    assert_eq!(
        l.attempt_failed(now, 0.0),
        Ok(Err(change(Phase::Reconnecting, Phase::Closed, 14)))
    );
    assert_eq!(l.attempts(), 3);
}

#[test]
fn reconnecting_to_disconnected_when_the_resume_window_passes() {
    let now = Instant::now();
    let mut l = connected(listener(2000 * MS), 15);
    l.broke(now, true, 0.0).unwrap();
    assert_eq!(
        l.expired(now + 1999 * MS),
        Err(Ignored {
            phase: Phase::Reconnecting
        }),
        "an early call changes nothing"
    );
    assert_eq!(
        l.expired(now + 2000 * MS),
        Ok(change(Phase::Reconnecting, Phase::Disconnected, 15))
    );
}

#[test]
fn reconnecting_to_closed_on_close() {
    let now = Instant::now();
    let mut l = connected(dialer(None), 16);
    l.broke(now, false, 0.0).unwrap();
    assert_eq!(
        l.close(),
        Ok(change(Phase::Reconnecting, Phase::Closed, 16))
    );
    let mut l = connected(listener(1000 * MS), 17);
    l.broke(now, true, 0.0).unwrap();
    assert_eq!(
        l.close(),
        Ok(change(Phase::Reconnecting, Phase::Closed, 17))
    );
    assert_eq!(l.resume_deadline(), None);
}

#[test]
fn final_phases_accept_nothing() {
    let now = Instant::now();
    let mut disconnected = connected(plain(), 18);
    disconnected.broke(now, false, 0.0).unwrap();
    let mut closed = connected(dialer(None), 19);
    closed.close().unwrap();
    for mut l in [disconnected, closed] {
        let phase = l.phase();
        assert!(phase.is_final());
        let ignored = Ignored { phase };
        assert_eq!(l.connected(99), Err(ignored));
        assert_eq!(l.broke(now, true, 0.0), Err(ignored));
        assert_eq!(l.peer_closed(now, 0.0), Err(ignored));
        assert_eq!(l.attempt_failed(now, 0.0), Err(ignored));
        assert_eq!(l.expired(now + Duration::from_secs(99)), Err(ignored));
        assert_eq!(l.close(), Err(ignored));
        assert_eq!(l.phase(), phase);
    }
}

#[test]
fn events_out_of_place_are_ignored() {
    let now = Instant::now();
    // Connecting: no break, close by peer, attempt or window before the first connection.
    let mut l = dialer(None);
    let ignored = Ignored {
        phase: Phase::Connecting,
    };
    assert_eq!(l.broke(now, false, 0.0), Err(ignored));
    assert_eq!(l.peer_closed(now, 0.0), Err(ignored));
    assert_eq!(l.attempt_failed(now, 0.0), Err(ignored));
    assert_eq!(l.expired(now), Err(ignored));
    // Connected: connected twice, attempts.
    let mut l = connected(dialer(None), 1);
    let ignored = Ignored {
        phase: Phase::Connected,
    };
    assert_eq!(l.connected(2), Err(ignored));
    assert_eq!(l.attempt_failed(now, 0.0), Err(ignored));
    // Reconnecting: a second break, a peer close (no connection to close).
    l.broke(now, false, 0.0).unwrap();
    let ignored = Ignored {
        phase: Phase::Reconnecting,
    };
    assert_eq!(l.broke(now, false, 0.0), Err(ignored));
    assert_eq!(l.peer_closed(now, 0.0), Err(ignored));
    // A listener holding a session makes no attempts itself.
    let mut l = connected(listener(1000 * MS), 3);
    l.broke(now, true, 0.0).unwrap();
    assert_eq!(
        l.attempt_failed(now, 0.0),
        Err(Ignored {
            phase: Phase::Reconnecting
        })
    );
}

#[test]
fn backoff_jitter_stays_within_its_band_and_never_panics() {
    let b = Backoff {
        initial: 100 * MS,
        max: 10_000 * MS,
        jitter: 0.3,
        max_attempts: None,
    };
    for attempt in [0u32, 1, 5, 31, 32, u32::MAX] {
        let full = b.delay(attempt, 0.0);
        for r in [0.0, 0.25, 0.5, 0.999, 1.0, f64::NAN, -3.0, 7.0] {
            let d = b.delay(attempt, r);
            assert!(d <= full, "{attempt} {r}: {d:?} > {full:?}");
            assert!(
                d.as_secs_f64() >= full.as_secs_f64() * 0.7 - 1e-9,
                "{attempt} {r}"
            );
        }
    }
    assert_eq!(b.delay(u32::MAX, 0.0), 10_000 * MS);
    let huge = Backoff {
        initial: Duration::MAX,
        max: Duration::MAX,
        jitter: f64::NAN,
        max_attempts: None,
    };
    assert_eq!(huge.delay(3, 0.5), Duration::MAX);
}
