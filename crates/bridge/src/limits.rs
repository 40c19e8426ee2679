//! Per-client rate limits at the edge (signaling), and the names every limit is counted under.
//!
//! A token bucket per limited thing: `rate` tokens a second, at most `burst` saved up. A client
//! that goes over is closed with `rate_limited` (proto/signaling.md) and the hit is counted in
//! `kaskade_limit_hits_total{limit}`; nobody else is touched, since every bucket belongs to one
//! session. The node-wide cap on participants is a counted slot that a joined session holds
//! until it ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The `limit` label values of `kaskade_limit_hits_total`.
pub const MESSAGE_RATE: &str = "message_rate";
pub const CHAT_RATE: &str = "chat_rate";
pub const JOIN_RATE: &str = "join_rate";
pub const NODE_PARTICIPANTS: &str = "node_participants";
/// In the shard: STUN per source address and port, per leg (shard/flood.rs), and legs in setup.
pub const STUN_PER_ADDRESS: &str = "stun_per_address";
pub const STUN_PER_LEG: &str = "stun_per_leg";
pub const PENDING_LEGS: &str = "pending_legs";
pub const ALL: [&str; 7] = [
    MESSAGE_RATE,
    CHAT_RATE,
    JOIN_RATE,
    NODE_PARTICIPANTS,
    STUN_PER_ADDRESS,
    STUN_PER_LEG,
    PENDING_LEGS,
];

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

impl RateLimit {
    /// Would a pause until `now` have filled the bucket again? Then it is no different from a
    /// new one and need not be kept.
    fn is_full(&self, now: Instant) -> bool {
        self.rate == 0.0
            || self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
                >= self.burst
    }
}

/// One [`RateLimit`] per key (a source IP), in bounded memory: buckets that have filled up
/// again are forgotten when the table is full, and past `max_keys` busy keys a new key is let
/// through untracked rather than making the table grow (the limit is for one noisy address,
/// not a botnet, which needs a firewall).
#[derive(Debug)]
pub struct PerKeyRate<K> {
    rate: u32,
    burst: u32,
    max_keys: usize,
    buckets: HashMap<K, RateLimit>,
}

impl<K: Eq + Hash> PerKeyRate<K> {
    pub fn new(rate_per_sec: u32, burst: u32, max_keys: usize) -> Self {
        PerKeyRate {
            rate: rate_per_sec,
            burst,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is over the limit.
    pub fn allow(&mut self, now: Instant, key: K) -> bool {
        if self.rate == 0 {
            return true;
        }
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.max_keys {
                return true;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key)
            .or_insert_with(|| RateLimit::new(now, rate, burst))
            .allow(now)
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// A joined session's place among the node's participants (`limits.max_participants_per_node`),
/// given back when it is dropped, however the session ends.
#[derive(Debug)]
pub struct NodeSlot(Arc<AtomicUsize>);

impl NodeSlot {
    /// A slot if fewer than `max` are taken (`max` 0: no cap, the slot is only counted).
    pub fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<NodeSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| NodeSlot(count.clone()))
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

    #[test]
    fn per_key_limits_each_key_alone_in_bounded_memory() {
        let t0 = Instant::now();
        let mut r = PerKeyRate::new(1, 2, 3);
        assert!(r.allow(t0, 1) && r.allow(t0, 1));
        assert!(!r.allow(t0, 1), "key 1 is over its burst");
        assert!(r.allow(t0, 2), "another key is not affected");
        assert!(r.allow(t0, 3));
        // Full table, nothing idle: a fourth key passes untracked.
        assert!(r.allow(t0, 4) && r.allow(t0, 4) && r.allow(t0, 4));
        assert_eq!(r.tracked(), 3);
        // After a pause the refilled buckets are forgotten to make room.
        let t1 = t0 + Duration::from_secs(10);
        assert!(r.allow(t1, 5));
        assert_eq!(r.tracked(), 1);
        assert!(r.allow(t1, 5));
        assert!(!r.allow(t1, 5));
    }

    #[test]
    fn node_slots_cap_and_come_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = NodeSlot::take(&count, 2).expect("first");
        let b = NodeSlot::take(&count, 2).expect("second");
        assert!(NodeSlot::take(&count, 2).is_none(), "over the cap");
        drop(a);
        let c = NodeSlot::take(&count, 2).expect("a slot came back");
        assert_eq!(count.load(Ordering::Acquire), 2);
        drop((b, c));
        assert_eq!(count.load(Ordering::Acquire), 0);
        // 0 is no cap, but still counted.
        let many: Vec<_> = (0..100).filter_map(|_| NodeSlot::take(&count, 0)).collect();
        assert_eq!(many.len(), 100);
        assert_eq!(count.load(Ordering::Acquire), 100);
    }
}
