//! A bounded cache of recently forwarded packets per stream, to answer retransmission
//! requests at this hop instead of asking the hop before (DESIGN.md section 6: 500 packets per
//! SSRC, dropped after 15 s idle).
//!
//! Memory bound: `capacity` entries per stream and, with [`PacketCache::with_max_age`], only
//! what arrived within `max_age`. With 1200-byte video packets and the default capacity of 512
//! that is at most ~620 KB per cached video stream, and with the default age of 1.5 s ~450 KB
//! for a 2.5 Mbps stream but ~110 KB for a 500 kbps one (a count alone keeps 8.5 s of a 60 pps
//! stream, which nobody will ask for). Payloads are reference-counted buffers shared with the
//! forwarding path (caching costs no copy).

use std::time::{Duration, Instant};

use crate::ids::SeqNo;

/// Jitsi keeps 500; a power of two keeps slots contiguous across the 16-bit wrap.
pub const DEFAULT_CAPACITY: usize = 512;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15);
/// libwebrtc keeps a sent packet for max(1 s, 3 RTT); 1.5 s covers RTTs up to 500 ms, and a
/// resend later than that misses any playout deadline.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(1500);

pub struct PacketCache<T> {
    slots: Box<[Option<(SeqNo, Instant, T)>]>,
    last_insert: Option<Instant>,
    max_age: Option<Duration>,
    /// The oldest sequence number that may still be held, when `max_age` is set: expiry walks
    /// forward from here, so each packet is looked at once.
    tail: Option<SeqNo>,
}

impl<T: Clone> PacketCache<T> {
    /// `capacity` is rounded up to a power of two (at most 65536) so that slot = seq mod
    /// capacity stays contiguous when the sequence number wraps.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 1 << 16).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            last_insert: None,
            max_age: None,
            tail: None,
        }
    }

    /// Also drops packets older than `max_age` (checked as packets are inserted).
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, seq: SeqNo) -> usize {
        usize::from(seq.0) % self.slots.len()
    }

    /// Stores a packet, evicting whatever was `capacity` sequence numbers before it and,
    /// with a maximum age, whatever is older than that.
    pub fn insert(&mut self, now: Instant, seq: SeqNo, packet: T) {
        let i = self.slot(seq);
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some((seq, now, packet));
        }
        self.last_insert = Some(now);
        if let Some(max_age) = self.max_age {
            self.expire(now, seq, max_age);
        }
    }

    fn expire(&mut self, now: Instant, newest: SeqNo, max_age: Duration) {
        let cap = self.slots.len() as i32;
        let mut t = match self.tail {
            // Older than the ring: everything before the newest `cap` is overwritten anyway.
            Some(t) if newest.diff(t) >= 0 && newest.diff(t) < cap => t,
            Some(t) if newest.diff(t) < 0 => return, // a late packet behind the tail
            _ => SeqNo(newest.0.wrapping_sub((cap - 1) as u16)),
        };
        while t != newest {
            let i = self.slot(t);
            if let Some(slot) = self.slots.get_mut(i) {
                match slot {
                    Some((s, at, _)) if *s == t => {
                        if now.saturating_duration_since(*at) < max_age {
                            break;
                        }
                        *slot = None;
                    }
                    _ => {}
                }
            }
            t = SeqNo(t.0.wrapping_add(1));
        }
        self.tail = Some(t);
    }

    /// The packet with this sequence number, if still cached.
    pub fn get(&self, seq: SeqNo) -> Option<&T> {
        match self.slots.get(self.slot(seq)) {
            Some(Some((s, _, p))) if *s == seq => Some(p),
            _ => None,
        }
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing was inserted for `idle`: the stream stopped and the cache can go.
    pub fn is_idle(&self, now: Instant, idle: Duration) -> bool {
        self.last_insert
            .is_none_or(|t| now.saturating_duration_since(t) >= idle)
    }

    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_capacity_packets_across_wrap() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(500);
        assert_eq!(c.capacity(), 512);
        for i in 0..1000u32 {
            c.insert(t0, SeqNo((65000 + i) as u16), i);
        }
        // The last 512 inserted are there, the ones before are gone.
        assert_eq!(c.get(SeqNo((65000 + 999u32) as u16)), Some(&999));
        assert_eq!(c.get(SeqNo((65000 + 488u32) as u16)), Some(&488));
        assert_eq!(c.get(SeqNo((65000 + 487u32) as u16)), None);
        assert_eq!(c.get(SeqNo(65000)), None);
    }

    #[test]
    fn an_age_bound_drops_old_packets_as_new_ones_arrive() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = PacketCache::new(512).with_max_age(Duration::from_millis(1000));
        // 60 packets per second for 3 s, across the 16-bit wrap.
        for i in 0..180u64 {
            c.insert(ms(i * 1000 / 60), SeqNo((65_500 + i) as u16), i);
        }
        // Only the last second is held (60-61 packets), not 180 (the count bound alone).
        assert!((60..=62).contains(&c.len()), "{} held", c.len());
        assert_eq!(c.get(SeqNo((65_500 + 179u64) as u16)), Some(&179));
        assert_eq!(c.get(SeqNo((65_500 + 125u64) as u16)), Some(&125));
        assert_eq!(c.get(SeqNo((65_500 + 100u64) as u16)), None);
        // A late packet (a repair of an old one) is stored and found.
        c.insert(ms(3000), SeqNo((65_500 + 150u64) as u16), 150);
        assert_eq!(c.get(SeqNo((65_500 + 150u64) as u16)), Some(&150));
        // A jump far ahead (a new sequence space) does not walk 65 000 slots.
        c.insert(ms(3010), SeqNo(30_000), 1);
        assert_eq!(c.get(SeqNo(30_000)), Some(&1));
    }

    #[test]
    fn idle_after_15_seconds() {
        let t0 = Instant::now();
        let mut c: PacketCache<u8> = PacketCache::new(DEFAULT_CAPACITY);
        assert!(c.is_idle(t0, DEFAULT_IDLE), "never used");
        c.insert(t0, SeqNo(1), 1);
        assert!(!c.is_idle(t0 + Duration::from_secs(14), DEFAULT_IDLE));
        assert!(c.is_idle(t0 + DEFAULT_IDLE, DEFAULT_IDLE));
        c.clear();
        assert_eq!(c.get(SeqNo(1)), None);
    }
}
