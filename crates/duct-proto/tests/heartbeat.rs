//! Heartbeats in virtual time: PINGs on an idle link, a silent peer declared gone after
//! `misses` intervals, traffic counting as life, the agreed interval, and the RTT estimate.

mod common;

use std::time::{Duration, Instant};

use common::{established, frames, Pair};
use duct_proto::wire::FrameKind;
use duct_proto::{Category, Config, Error, State};

const MS: Duration = Duration::from_millis(1);

fn hb(interval_ms: u64, misses: u32) -> Config {
    Config {
        heartbeat_interval: Some(Duration::from_millis(interval_ms)),
        heartbeat_misses: misses,
        ..Config::default()
    }
}

/// Frame kinds `s` has queued (and drops them: the link is cut).
fn kinds(s: &mut duct_proto::Session) -> Vec<FrameKind> {
    frames(s).into_iter().map(|(h, _)| h.kind).collect()
}

#[test]
fn silent_peer_is_declared_gone_after_misses_intervals() {
    let t0 = Instant::now();
    let (mut d, _l) = established(hb(100, 3), Config::default(), t0);
    kinds(&mut d);
    // The listener never answers: drive the dialer's timers only.
    let mut pings = Vec::new();
    let err = loop {
        let at = d.poll_timeout().expect("heartbeats keep a deadline");
        match d.handle_timeout(at) {
            Ok(()) => {
                for k in kinds(&mut d) {
                    assert_eq!(k, FrameKind::Ping);
                    pings.push(at - t0);
                }
            }
            Err(e) => break (at - t0, e),
        }
    };
    assert_eq!(pings, [100 * MS, 200 * MS], "a PING each silent interval");
    assert_eq!(err.0, 300 * MS, "gone after 3 intervals of silence");
    assert_eq!(err.1, Error::PeerSilent { after: 300 * MS });
    assert_eq!(err.1.category(), Category::Disconnected);
    assert_eq!(d.state(), State::Closed);
    assert_eq!(d.poll_timeout(), None);
}

/// Runs `s`'s timers due before `until` (and drops what they queue); a failure panics,
/// naming `round`.
fn run_timers_until(s: &mut duct_proto::Session, until: Instant, round: u32) {
    while let Some(at) = s.poll_timeout().filter(|&at| at < until) {
        s.handle_timeout(at)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        kinds(s);
    }
}

#[test]
fn traffic_counts_as_life() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(hb(100, 3), Config::default(), t0);
    kinds(&mut d);
    // Every 250 ms the listener sends a message: the dialer never reaches 300 ms of silence,
    // though it pings in between.
    let mut now = t0;
    for round in 1..=20u32 {
        let next_msg = t0 + round * 250 * MS;
        run_timers_until(&mut d, next_msg, round);
        now = next_msg;
        l.send(0, bytes::Bytes::from_static(b"tick"), now).unwrap();
        common::pump_frames(&mut l, &mut d, now).unwrap();
        assert!(d.poll_message().is_some());
    }
    assert_eq!(d.state(), State::Established);
    assert!(d.poll_timeout().unwrap() > now);
}

#[test]
fn idle_link_stays_up_for_minutes_and_measures_rtt() {
    for seed in 0..8 {
        let mut p = Pair::connected(seed, hb(50, 3), hb(80, 3));
        let start = p.now;
        while p.now < start + Duration::from_secs(120) {
            assert!(p.advance(), "seed {seed}: heartbeats keep deadlines");
            p.run();
            p.assert_no_errors();
        }
        assert_eq!(p.dialer.session.state(), State::Established, "seed {seed}");
        assert_eq!(
            p.listener.session.state(),
            State::Established,
            "seed {seed}"
        );
        // PONGs come back at once in this harness: the RTT is measured, and zero.
        assert_eq!(p.dialer.session.rtt(), Some(Duration::ZERO), "seed {seed}");
        assert_eq!(
            p.listener.session.rtt(),
            Some(Duration::ZERO),
            "seed {seed}"
        );
    }
}

#[test]
fn agreed_interval_is_the_smaller_proposal() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(hb(1000, 5), hb(100, 5), t0);
    assert_eq!(d.negotiated().unwrap().heartbeat_interval, Some(100 * MS));
    assert_eq!(l.negotiated().unwrap().heartbeat_interval, Some(100 * MS));
    kinds(&mut d);
    kinds(&mut l);
    assert_eq!(
        d.poll_timeout(),
        Some(t0 + 100 * MS),
        "the dialer pings at the agreed 100 ms"
    );
    assert_eq!(l.poll_timeout(), Some(t0 + 100 * MS));
}

#[test]
fn side_without_heartbeats_answers_but_never_times_out() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(hb(100, 3), Config::default(), t0);
    assert_eq!(
        l.poll_timeout(),
        None,
        "no heartbeats: no deadline, however long the silence"
    );
    kinds(&mut d);
    d.handle_timeout(t0 + 100 * MS).unwrap();
    common::pump_frames(&mut d, &mut l, t0 + 100 * MS).unwrap();
    assert_eq!(kinds(&mut l), [FrameKind::Pong], "but it answers PINGs");
    assert_eq!(l.handle_timeout(t0 + Duration::from_secs(3600)), Ok(()));
    assert_eq!(l.state(), State::Established);
}

#[test]
fn rtt_is_measured_from_our_pings_only() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(hb(100, 5), Config::default(), t0);
    kinds(&mut d);
    // A PING of the application's own (token 77) does not feed the estimate.
    d.ping(77).unwrap();
    common::pump_frames(&mut d, &mut l, t0 + 5 * MS).unwrap();
    common::pump_frames(&mut l, &mut d, t0 + 30 * MS).unwrap();
    assert_eq!(d.rtt(), None);
    assert_eq!(d.take_rtt_sample(), None);
    // Ours: queued at 130 ms (100 ms after the last input), answered 10 ms later.
    let at = d.poll_timeout().unwrap();
    assert_eq!(at, t0 + 130 * MS);
    d.handle_timeout(at).unwrap();
    common::pump_frames(&mut d, &mut l, at + 4 * MS).unwrap();
    common::pump_frames(&mut l, &mut d, at + 10 * MS).unwrap();
    assert_eq!(d.rtt(), Some(10 * MS));
    assert_eq!(d.take_rtt_sample(), Some(10 * MS));
    assert_eq!(d.take_rtt_sample(), None, "each sample is taken once");
    // Smoothed: a second sample of 18 ms moves it by an eighth of the difference.
    let at = d.poll_timeout().unwrap();
    d.handle_timeout(at).unwrap();
    common::pump_frames(&mut d, &mut l, at).unwrap();
    common::pump_frames(&mut l, &mut d, at + 18 * MS).unwrap();
    assert_eq!(d.rtt(), Some(11 * MS));
    assert_eq!(
        d.take_rtt_sample(),
        Some(18 * MS),
        "the sample itself, unsmoothed"
    );
}

/// The frames `from` has queued, handed to `to` as a frame transport would, each without a
/// time where it allows (`Session::handle_raw_frame_untimed`), else at `now`. Returns how
/// many went without one.
fn pass_untimed(
    from: &mut duct_proto::Session,
    to: &mut duct_proto::Session,
    now: Instant,
) -> usize {
    let mut untimed = 0;
    while let Some(t) = from.poll_transmit() {
        if to.frame_is_timeless(&t.header) {
            untimed += 1;
            to.handle_raw_frame_untimed(&t.header, t.payload).unwrap();
        } else {
            to.handle_raw_frame(&t.header, t.payload, now).unwrap();
        }
    }
    untimed
}

/// Frames handled without a time still count as life, at the next new time a call brings,
/// even when one silent interval is all it takes (`misses` = 1): a peer that keeps sending
/// is never declared gone. Once it stops, its silence is noticed at most one interval late.
#[test]
fn frames_handled_without_a_time_count_as_life() {
    let t0 = Instant::now();
    let (mut d, mut l) = established(hb(100, 1), Config::default(), t0);
    kinds(&mut d);
    // The listener sends every 30 ms for 2 s; the dialer's timers run in between.
    let mut now = t0;
    let mut untimed = 0;
    for round in 1..=66u32 {
        let next_msg = t0 + round * 30 * MS;
        run_timers_until(&mut d, next_msg, round);
        now = next_msg;
        l.send(0, bytes::Bytes::from_static(b"tick"), now).unwrap();
        untimed += pass_untimed(&mut l, &mut d, now);
        assert!(d.poll_message().is_some());
        kinds(&mut l);
    }
    assert_eq!(untimed, 66, "every message went without a time");
    assert_eq!(d.state(), State::Established);
    // The listener falls silent: gone after one interval, give or take one.
    let err = loop {
        let at = d.poll_timeout().expect("heartbeats keep a deadline");
        match d.handle_timeout(at) {
            Ok(()) => {
                kinds(&mut d);
            }
            Err(e) => break (at, e),
        }
    };
    assert!(matches!(err.1, Error::PeerSilent { .. }), "{:?}", err.1);
    let late = err.0 - now;
    assert!(
        late >= 100 * MS && late <= 200 * MS,
        "noticed {late:?} after the last message"
    );
}

/// Only a plain DATA frame of an established session goes without a time: a frame with a
/// time to live, reliability, an ack or fragments, and every control frame, need one.
#[test]
fn only_plain_data_frames_are_timeless() {
    use duct_proto::wire::flags;
    let t0 = Instant::now();
    let (d, _l) = established(Config::default(), Config::default(), t0);
    let header = |h: duct_proto::wire::Header| h.encode();
    assert!(d.frame_is_timeless(&header(common::data_header(3, 0, 0))));
    for f in [
        flags::TTL_PRESENT,
        flags::RELIABLE,
        flags::ACK_PRESENT,
        flags::MORE_FRAGMENTS,
        flags::CONTINUATION,
    ] {
        assert!(
            !d.frame_is_timeless(&header(common::data_header(3, f, 0))),
            "flag {f:#x}"
        );
    }
    let mut ping = common::data_header(0, 0, 0);
    ping.kind = FrameKind::Ping;
    assert!(!d.frame_is_timeless(&header(ping)));
    // Not yet established: a handshake frame needs its time.
    let s = duct_proto::Session::new(Config::default(), duct_proto::Role::Dialer, t0);
    assert!(!s.frame_is_timeless(&header(common::data_header(3, 0, 0))));
}
