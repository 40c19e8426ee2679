//! Per-client rate limits at the edge (signaling), and the names they are counted under.
//!
//! A token bucket per limited thing: `rate` tokens a second, at most `burst` saved up. A client
//! that goes over is closed with `rate_limited` (proto/signaling.md) and the hit is counted in
//! `kaskade_limit_hits_total{limit}`; nobody else is touched, since every bucket belongs to one
//! session.

use std::time::Instant;

/// The `limit` label values of `kaskade_limit_hits_total`.
pub const MESSAGE_RATE: &str = "message_rate";
pub const CHAT_RATE: &str = "chat_rate";
pub const ALL: [&str; 2] = [MESSAGE_RATE, CHAT_RATE];

/// A token bucket. `rate` 0 turns the limit off.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// Starts full: a client may send `burst` at once (a browser's first ICE candidates arrive
    /// together).
    pub fn new(now: Instant, rate_per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimit {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token; false when there is none (the event is over the limit).
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0, 10, 20);
        assert_eq!((0..25).filter(|_| r.allow(t0)).count(), 20);
        // 10 a second refill: 0.5 s later five more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| r.allow(t1)).count(), 5);
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| r.allow(t2)).count(), 20);
    }

    #[test]
    fn steady_traffic_under_the_rate_passes() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0, 10, 1);
        for i in 0..1000u64 {
            assert!(r.allow(t0 + Duration::from_millis(100 * i)), "message {i}");
        }
    }

    #[test]
    fn rate_zero_is_off() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0, 0, 1);
        assert!((0..10_000).all(|_| r.allow(t0)));
    }
}
