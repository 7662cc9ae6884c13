//! A token bucket in virtual time.

use std::time::{Duration, Instant};

use super::Rate;

/// A token bucket: `rate.per_sec()` tokens a second, at most `rate.burst()` held. Starts
/// full.
///
/// A cost larger than the burst (a big message under a byte limit) is allowed once the bucket
/// is full, and leaves it in debt: the long-run rate still holds, and nothing waits forever.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate.burst(),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate.per_sec()).min(self.rate.burst());
            self.last = now;
        }
    }

    /// What must be in the bucket before `cost` may be taken.
    fn need(&self, cost: f64) -> f64 {
        cost.min(self.rate.burst())
    }

    /// Whether `cost` tokens may be taken at `now` (without taking them).
    pub fn ready(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.need(cost)
    }

    /// Takes `cost` tokens if [`TokenBucket::ready`]; returns whether it did.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        if !self.ready(cost, now) {
            return false;
        }
        self.tokens -= cost;
        true
    }

    /// Takes `cost` tokens whatever the level (the caller checked [`TokenBucket::ready`]).
    pub fn take(&mut self, cost: f64, now: Instant) {
        self.refill(now);
        self.tokens -= cost;
    }

    /// The earliest instant at which `cost` tokens may be taken (`now` if they may now).
    pub fn ready_at(&mut self, cost: f64, now: Instant) -> Instant {
        self.refill(now);
        let missing = self.need(cost) - self.tokens;
        if missing <= 0.0 {
            return now;
        }
        // Round up to the next microsecond so that the bucket is surely ready then.
        let secs = missing / self.rate.per_sec();
        let micros = (secs * 1e6).ceil().min(u64::MAX as f64 / 2.0) as u64 + 1;
        now + Duration::from_micros(micros)
    }

    /// Tokens held at `now` (negative while in debt).
    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_full_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(1000.0, 10).unwrap(), t0);
        for _ in 0..10 {
            assert!(b.try_take(1.0, t0));
        }
        assert!(!b.try_take(1.0, t0));
        assert_eq!(b.ready_at(1.0, t0), t0 + Duration::from_micros(1001));
        assert!(!b.try_take(1.0, t0 + Duration::from_micros(999)));
        assert!(b.try_take(1.0, t0 + ms(1)));
        // A long quiet spell refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((b.level(later) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_cost_above_the_burst_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(100.0, 10).unwrap(), t0);
        assert!(b.try_take(50.0, t0));
        assert!((b.level(t0) + 40.0).abs() < 1e-9);
        // Ready again once the debt is paid and the bucket is full: 0.5 s.
        let at = b.ready_at(50.0, t0);
        assert!(at >= t0 + ms(500) && at <= t0 + ms(501), "{:?}", at - t0);
        assert!(!b.ready(50.0, t0 + ms(499)));
        assert!(b.ready(50.0, t0 + ms(501)));
    }

    #[test]
    fn rate_over_time_is_exact_in_virtual_time() {
        // 300 messages at 1000/s with a burst of 50: the last leaves at 250 ms.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(1000.0, 50).unwrap(), t0);
        let mut now = t0;
        for _ in 0..300 {
            now = b.ready_at(1.0, now);
            assert!(b.try_take(1.0, now));
        }
        let took = now - t0;
        assert!(took >= ms(250) && took < ms(251), "{took:?}");
    }

    #[test]
    fn invalid_rates_are_no_limit() {
        assert!(Rate::new(0.0, 1).is_none());
        assert!(Rate::new(-1.0, 1).is_none());
        assert!(Rate::new(f64::NAN, 1).is_none());
        assert!(Rate::new(f64::INFINITY, 1).is_none());
        assert_eq!(Rate::new(5.0, 0).unwrap().burst(), 1.0);
    }
}
