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
use std::time::{Duration, Instant};

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

/// One [`RateLimit`] per key (a source IP or address, a leg), in bounded memory: buckets that
/// have filled up again are forgotten when the table is full ([`PerKeyRate::expire`] forgets
/// them at any time), and past `max_keys` busy keys a new key gets what [`WhenFull`] says.
#[derive(Debug)]
pub struct PerKeyRate<K> {
    rate: u32,
    burst: u32,
    max_keys: usize,
    when_full: WhenFull,
    buckets: HashMap<K, RateLimit>,
    /// [`WhenFull::ShareOneBucket`]: the keys that found the table full.
    overflow: Option<RateLimit>,
    /// When a full table was last swept for buckets full again: at most once a second, or a
    /// flood of new keys would make every one of its packets walk the whole table.
    swept: Option<Instant>,
}

/// What a new key gets when `max_keys` busy keys are tracked already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Let through, untracked: the limit is for one noisy key, not a botnet (joins per IP,
    /// which needs a firewall against many).
    LetThrough,
    /// One bucket for all of them: a spoofed-source flood stays limited as a whole (STUN).
    ShareOneBucket,
}

impl<K: Eq + Hash> PerKeyRate<K> {
    pub fn new(rate_per_sec: u32, burst: u32, max_keys: usize) -> Self {
        PerKeyRate {
            rate: rate_per_sec,
            burst,
            max_keys,
            when_full: WhenFull::LetThrough,
            buckets: HashMap::new(),
            overflow: None,
            swept: None,
        }
    }

    pub fn when_full(mut self, w: WhenFull) -> Self {
        self.when_full = w;
        self
    }

    /// Takes one token from `key`'s bucket; false when it is over the limit.
    pub fn allow(&mut self, now: Instant, key: K) -> bool {
        if self.rate == 0 {
            return true;
        }
        let (rate, burst) = (self.rate, self.burst);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            if self
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
            {
                self.swept = Some(now);
                self.buckets.retain(|_, b| !b.is_full(now));
            }
            if self.buckets.len() >= self.max_keys {
                return match self.when_full {
                    WhenFull::LetThrough => true,
                    WhenFull::ShareOneBucket => self
                        .overflow
                        .get_or_insert_with(|| RateLimit::new(now, rate, burst))
                        .allow(now),
                };
            }
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| RateLimit::new(now, rate, burst))
            .allow(now)
    }

    /// Forgets `key`'s bucket (a closed leg whose id may be reused).
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    /// Forgets the buckets that are full again: they would start the same afresh.
    pub fn expire(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
        if self.overflow.as_ref().is_some_and(|b| b.is_full(now)) {
            self.overflow = None;
        }
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
    fn a_full_table_is_swept_at_most_once_a_second() {
        let t0 = Instant::now();
        // 10 a second, a burst of 2: a bucket one token short is full again after 0.1 s.
        let mut r = PerKeyRate::new(10, 2, 2).when_full(WhenFull::ShareOneBucket);
        assert!(r.allow(t0, 1) && r.allow(t0, 2));
        // Full of busy keys (swept now, nothing to forget): new keys share one bucket of 2.
        assert!(r.allow(t0, 3) && r.allow(t0, 4));
        assert!(!r.allow(t0, 5), "the shared bucket is empty");
        // Keys 1 and 2 are full again at 0.5 s, but the table was swept at t0: a new key is
        // not worth a walk of the whole table (a flood of new keys would walk it per packet).
        let t1 = t0 + Duration::from_millis(500);
        assert!(r.allow(t1, 6), "the shared bucket refilled");
        assert_eq!(r.tracked(), 2, "not swept again within the second");
        let t2 = t0 + Duration::from_secs(1);
        assert!(r.allow(t2, 7));
        assert_eq!(
            r.tracked(),
            1,
            "swept: keys 1 and 2 forgotten, key 7 tracked"
        );
        r.expire(t2 + Duration::from_secs(1));
        assert_eq!(r.tracked(), 0);
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
