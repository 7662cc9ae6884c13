//! Turning runs into results: percentiles of round-trip histograms, per-system summaries
//! over the rounds of a case, and duct ÷ raw ratios taken round by round.
//!
//! Conventions (the table and the JSON say the same):
//! - percentiles come from the histogram of all measured round trips of all rounds;
//! - rates (msgs/s, bytes/s) are the median over rounds;
//! - `allocs_per_msg` is the worst round, each round's figure being the worse of the two
//!   ends;
//! - `--alloc`'s copy counters ([`Copies`]) are summed over the rounds;
//! - a ratio is duct ÷ raw within each round (duct and raw ran back to back), then the
//!   median over rounds, so that a machine that drifts between rounds hits both alike.

use hdrhistogram::Histogram;

use crate::bench::spec::{Pattern, System};

/// Round-trip percentiles, in ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest round trip.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h` (zeros if it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                p50: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One run (one round of one system on one case).
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Ping-pong: the round-trip times.
    pub rtt: Option<Histogram<u64>>,
    /// Messages measured (round trips for ping-pong).
    pub messages: u64,
    /// Messages (round trips) per second.
    pub msgs_per_sec: f64,
    /// Allocations per message, the worse of the two ends.
    pub allocs_per_msg: f64,
    /// `--alloc` (duct's pingpong and stream): what the sending end's pipe counted over the
    /// measured phase; `None` otherwise.
    pub copies: Option<Copies>,
}

/// `--alloc`: the copy counters of duct's sending end (the measuring end: stream sender,
/// pingpong initiator) over the measured phase, from `Pipe::stats()` before and after it.
/// duct counts them on `shm://` only (0 on other transports, where a payload is written
/// into the socket anyway).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copies {
    /// Messages that end sent in the measured phase.
    pub sent: u64,
    /// `PipeStats::zero_copy_frames`: frames whose payload moved without a copy.
    pub zero_copy_frames: u64,
    /// `PipeStats::payload_frames_copied`: message frames copied into the shared pool.
    pub copied_frames: u64,
    /// `PipeStats::payload_bytes_copied`: the bytes of those copies.
    pub copied_bytes: u64,
}

impl Copies {
    /// Copied payload bytes per message sent (0 when nothing was sent).
    pub fn copied_bytes_per_msg(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.copied_bytes as f64 / self.sent as f64
        }
    }

    /// The sum of two runs' counts.
    #[must_use]
    pub fn plus(self, other: Copies) -> Copies {
        Copies {
            sent: self.sent + other.sent,
            zero_copy_frames: self.zero_copy_frames + other.zero_copy_frames,
            copied_frames: self.copied_frames + other.copied_frames,
            copied_bytes: self.copied_bytes + other.copied_bytes,
        }
    }
}

/// One system's results over the rounds of a case.
#[derive(Debug, Clone)]
pub struct Summary {
    /// duct or raw.
    pub system: System,
    /// Rounds summarized.
    pub rounds: usize,
    /// Messages measured over all rounds.
    pub messages: u64,
    /// Ping-pong: all round trips of all rounds.
    pub rtt: Option<Histogram<u64>>,
    /// Ping-pong: percentiles of `rtt`.
    pub percentiles: Option<Percentiles>,
    /// Median over rounds.
    pub msgs_per_sec: f64,
    /// `msgs_per_sec` × payload size.
    pub bytes_per_sec: f64,
    /// Worst round.
    pub allocs_per_msg: f64,
    /// `--alloc`: the sending end's copy counters, summed over the rounds (`None` unless every
    /// round has them).
    pub copies: Option<Copies>,
}

/// duct ÷ raw, median over rounds of the per-round ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ratios {
    /// Round-trip time ratios (lower is better).
    PingPong {
        /// Of the medians.
        p50: f64,
        /// Of the 99th percentiles.
        p99: f64,
        /// Of the 99.9th percentiles.
        p999: f64,
        /// Of the largest round trips.
        max: f64,
    },
    /// Rate ratio (higher is better); bytes/s is the same, sizes being equal.
    Stream {
        /// Of messages per second.
        msgs_per_sec: f64,
    },
}

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
/// NaNs sort last.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `a / b`, NaN when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// Summarizes the runs of one system on one case of `size`-byte messages.
pub fn summarize(system: System, runs: &[RunResult], size: usize) -> Summary {
    let mut rtt: Option<Histogram<u64>> = None;
    for run in runs {
        if let Some(h) = &run.rtt {
            match &mut rtt {
                Some(all) => all.add(h).expect("histograms with the same bounds"),
                None => rtt = Some(h.clone()),
            }
        }
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.msgs_per_sec).collect();
    let msgs_per_sec = median(&rates);
    Summary {
        system,
        rounds: runs.len(),
        messages: runs.iter().map(|r| r.messages).sum(),
        percentiles: rtt.as_ref().map(Percentiles::of),
        rtt,
        msgs_per_sec,
        bytes_per_sec: msgs_per_sec * size as f64,
        allocs_per_msg: runs.iter().map(|r| r.allocs_per_msg).fold(0.0, f64::max),
        copies: runs
            .iter()
            .try_fold(Copies::default(), |sum, r| r.copies.map(|c| sum.plus(c))),
    }
}

/// duct ÷ raw for `pattern`, round by round, then the median. Rounds pair up by index.
/// Mixed compares round trips, as ping-pong does (the mixed case uses it for loaded ÷
/// idle); scale compares rates, as stream does (the scale case uses it for N pipes ÷ one).
pub fn ratios(pattern: Pattern, duct: &[RunResult], raw: &[RunResult]) -> Ratios {
    let pairs = duct.iter().zip(raw);
    match pattern {
        Pattern::PingPong | Pattern::Mixed => {
            let (mut p50, mut p99, mut p999, mut max) = (vec![], vec![], vec![], vec![]);
            for (d, r) in pairs {
                let (Some(dh), Some(rh)) = (&d.rtt, &r.rtt) else {
                    continue;
                };
                let (d, r) = (Percentiles::of(dh), Percentiles::of(rh));
                p50.push(ratio(d.p50 as f64, r.p50 as f64));
                p99.push(ratio(d.p99 as f64, r.p99 as f64));
                p999.push(ratio(d.p999 as f64, r.p999 as f64));
                max.push(ratio(d.max as f64, r.max as f64));
            }
            Ratios::PingPong {
                p50: median(&p50),
                p99: median(&p99),
                p999: median(&p999),
                max: median(&max),
            }
        }
        Pattern::Stream | Pattern::Scale => {
            let per_round: Vec<f64> = pairs
                .map(|(d, r)| ratio(d.msgs_per_sec, r.msgs_per_sec))
                .collect();
            Ratios::Stream {
                msgs_per_sec: median(&per_round),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::new_rtt_histogram;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = new_rtt_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn run(rtt: Option<Histogram<u64>>, msgs_per_sec: f64, allocs: f64) -> RunResult {
        RunResult {
            messages: rtt.as_ref().map_or(1000, |h| h.len()),
            rtt,
            msgs_per_sec,
            allocs_per_msg: allocs,
            copies: None,
        }
    }

    /// Within the histogram's precision (3 significant figures).
    fn close(a: u64, b: u64) -> bool {
        (a as f64 - b as f64).abs() <= b as f64 * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let p = Percentiles::of(&hist(1..=100_000));
        assert!(close(p.p50, 50_000), "{p:?}");
        assert!(close(p.p99, 99_000), "{p:?}");
        assert!(close(p.p999, 99_900), "{p:?}");
        assert!(close(p.max, 100_000), "{p:?}");
        assert_eq!(Percentiles::of(&new_rtt_histogram()).max, 0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio(3.0, 2.0), 1.5);
        assert!(ratio(1.0, 0.0).is_nan());
    }

    #[test]
    fn summary_merges_histograms_and_takes_medians() {
        let runs = [
            run(Some(hist([1000; 10])), 100.0, 0.0),
            run(Some(hist([3000; 10])), 300.0, 0.5),
            run(Some(hist([2000; 10])), 200.0, 0.25),
        ];
        let s = summarize(System::Duct, &runs, 64);
        assert_eq!(s.rounds, 3);
        assert_eq!(s.messages, 30);
        assert_eq!(s.msgs_per_sec, 200.0);
        assert_eq!(s.bytes_per_sec, 200.0 * 64.0);
        assert_eq!(s.allocs_per_msg, 0.5);
        let p = s.percentiles.unwrap();
        assert!(close(p.p50, 2000));
        assert!(close(p.max, 3000));
        assert_eq!(s.rtt.unwrap().len(), 30);
        assert_eq!(s.copies, None);
    }

    #[test]
    fn copies_add_up_over_rounds() {
        let with = |sent, zero_copy_frames, copied_frames, copied_bytes| RunResult {
            copies: Some(Copies {
                sent,
                zero_copy_frames,
                copied_frames,
                copied_bytes,
            }),
            ..run(None, 100.0, 0.0)
        };
        let s = summarize(
            System::Duct,
            &[with(10, 10, 0, 0), with(30, 28, 2, 128)],
            64,
        );
        let c = s.copies.unwrap();
        assert_eq!((c.sent, c.zero_copy_frames, c.copied_frames), (40, 38, 2));
        assert_eq!(c.copied_bytes_per_msg(), 3.2);
        assert_eq!(Copies::default().copied_bytes_per_msg(), 0.0);
        // A round without counts (not --alloc) leaves the summary without.
        assert_eq!(
            summarize(System::Duct, &[with(1, 1, 0, 0), run(None, 1.0, 0.0)], 64).copies,
            None
        );
    }

    #[test]
    fn ratios_are_taken_per_round_then_the_median() {
        // Round 2 is slow for both systems (a noisy machine): per-round ratios are 1.1,
        // 1.2, 1.5, whose median is 1.2; a ratio of medians would be 1.2 too here, but a
        // ratio of means would not.
        let duct = [
            run(Some(hist([1100; 5])), 0.0, 0.0),
            run(Some(hist([12_000; 5])), 0.0, 0.0),
            run(Some(hist([1500; 5])), 0.0, 0.0),
        ];
        let raw = [
            run(Some(hist([1000; 5])), 0.0, 0.0),
            run(Some(hist([10_000; 5])), 0.0, 0.0),
            run(Some(hist([1000; 5])), 0.0, 0.0),
        ];
        match ratios(Pattern::PingPong, &duct, &raw) {
            Ratios::PingPong { p50, max, .. } => {
                assert!((p50 - 1.2).abs() < 0.01, "{p50}");
                assert!((max - 1.2).abs() < 0.01, "{max}");
            }
            other => panic!("{other:?}"),
        }
        let duct = [
            run(None, 50.0, 0.0),
            run(None, 10.0, 0.0),
            run(None, 80.0, 0.0),
        ];
        let raw = [
            run(None, 100.0, 0.0),
            run(None, 40.0, 0.0),
            run(None, 100.0, 0.0),
        ];
        assert_eq!(
            ratios(Pattern::Stream, &duct, &raw),
            Ratios::Stream { msgs_per_sec: 0.5 }
        );
    }
}
