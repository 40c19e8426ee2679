//! A bounded cache of recently forwarded packets per stream, to answer retransmission
//! requests at this hop instead of asking the hop before (DESIGN.md section 6: 500 packets per
//! SSRC, dropped after 15 s idle).
//!
//! Memory bound: `capacity` entries per stream; with 1200-byte video packets and the default
//! capacity of 512 that is at most ~620 KB per cached video stream, held as reference-counted
//! buffers shared with the forwarding path (caching costs no copy).

use std::time::{Duration, Instant};

use crate::ids::SeqNo;

/// Jitsi keeps 500; a power of two keeps slots contiguous across the 16-bit wrap.
pub const DEFAULT_CAPACITY: usize = 512;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15);

pub struct PacketCache<T> {
    slots: Box<[Option<(SeqNo, T)>]>,
    last_insert: Option<Instant>,
}

impl<T: Clone> PacketCache<T> {
    /// `capacity` is rounded up to a power of two (at most 65536) so that slot = seq mod
    /// capacity stays contiguous when the sequence number wraps.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 1 << 16).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            last_insert: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, seq: SeqNo) -> usize {
        usize::from(seq.0) % self.slots.len()
    }

    /// Stores a packet, evicting whatever was `capacity` sequence numbers before it.
    pub fn insert(&mut self, now: Instant, seq: SeqNo, packet: T) {
        let i = self.slot(seq);
        self.slots[i] = Some((seq, packet));
        self.last_insert = Some(now);
    }

    /// The packet with this sequence number, if still cached.
    pub fn get(&self, seq: SeqNo) -> Option<&T> {
        match &self.slots[self.slot(seq)] {
            Some((s, p)) if *s == seq => Some(p),
            _ => None,
        }
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
