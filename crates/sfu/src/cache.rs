//! A bounded cache of recently forwarded packets per stream, to answer retransmission
//! requests at this hop instead of asking the hop before (DESIGN.md section 6: 500 packets per
//! SSRC, dropped after 15 s idle).
//!
//! Memory bound: `capacity` entries per stream and, with [`PacketCache::with_max_age`], only
//! what arrived within `max_age`. With 1200-byte video packets and the default capacity of 512
//! that is at most ~620 KB per cached video stream, and with the default age of 1.5 s ~450 KB
//! for a 2.5 Mbps stream but ~110 KB for a 500 kbps one (a count alone keeps 8.5 s of a 60 pps
//! stream, which nobody will ask for). Payloads are reference-counted buffers shared with the
//! forwarding path (caching costs no copy). The slot array (~140 bytes a slot with `rtp`
//! packets) starts at [`INITIAL_SLOTS`] and doubles, up to `capacity`, only when a packet
//! would overwrite one that is still held: a 60 pps stream aged at 1.5 s needs 128 slots
//! (18 KB), not 512 (70 KB).

use std::time::{Duration, Instant};

use crate::ids::SeqNo;

/// Jitsi keeps 500; a power of two keeps slots contiguous across the 16-bit wrap.
pub const DEFAULT_CAPACITY: usize = 512;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15);
/// libwebrtc keeps a sent packet for max(1 s, 3 RTT); 1.5 s covers RTTs up to 500 ms, and a
/// resend later than that misses any playout deadline.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(1500);
/// The shortest age a cache sized by its receivers' RTT keeps ([`age_for_rtt`]):
/// libwebrtc's floor.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(1);

/// The age a cache needs for receivers whose longest RTT is `rtt`: three round trips (a NACK,
/// its retries), at least [`MIN_MAX_AGE`], at most [`DEFAULT_MAX_AGE`]. While an RTT is not
/// measured yet (a new receiver), the floor, as libwebrtc's max(1 s, 3 RTT) does.
pub fn age_for_rtt(rtt: Option<Duration>) -> Duration {
    rtt.map_or(MIN_MAX_AGE, |r| {
        r.saturating_mul(3).clamp(MIN_MAX_AGE, DEFAULT_MAX_AGE)
    })
}
/// Slots a cache starts with (or its capacity, if smaller).
pub const INITIAL_SLOTS: usize = 32;

pub struct PacketCache<T> {
    /// A ring indexed by sequence number modulo its length, a power of two.
    slots: Box<[Option<(SeqNo, Instant, T)>]>,
    /// The most slots the ring grows to (a power of two).
    capacity: usize,
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
            slots: empty_slots(capacity.min(INITIAL_SLOTS)),
            capacity,
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

    /// Changes the age bound; a shorter one takes effect as the next packets are inserted.
    pub fn set_max_age(&mut self, max_age: Duration) {
        self.max_age = Some(max_age);
    }

    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// The most packets it holds (by count; the age bound may keep it below).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots allocated now: grows from [`INITIAL_SLOTS`] to [`Self::capacity`] as needed.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, seq: SeqNo) -> usize {
        usize::from(seq.0) % self.slots.len()
    }

    /// Stores a packet, evicting whatever was `capacity` sequence numbers before it and,
    /// with a maximum age, whatever is older than that.
    pub fn insert(&mut self, now: Instant, seq: SeqNo, packet: T) {
        while self.slots.len() < self.capacity && self.would_evict(now, seq) {
            self.grow();
        }
        let i = self.slot(seq);
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some((seq, now, packet));
        }
        self.last_insert = Some(now);
        if let Some(max_age) = self.max_age {
            self.expire(now, seq, max_age);
        }
    }

    /// Whether storing `seq` would overwrite a packet that a ring of full capacity keeps:
    /// another sequence number within `capacity` of it, not yet too old.
    fn would_evict(&self, now: Instant, seq: SeqNo) -> bool {
        match self.slots.get(self.slot(seq)) {
            Some(Some((s, at, _))) => {
                *s != seq
                    && (seq.diff(*s).unsigned_abs() as usize) < self.capacity
                    && self
                        .max_age
                        .is_none_or(|age| now.saturating_duration_since(*at) < age)
            }
            _ => false,
        }
    }

    /// Doubles the ring. Packets in distinct slots stay in distinct slots: a slot `i` of `n`
    /// becomes `i` or `i + n`.
    fn grow(&mut self) {
        let len = (self.slots.len() * 2).min(self.capacity);
        let old = std::mem::replace(&mut self.slots, empty_slots(len));
        for (s, at, p) in old.into_vec().into_iter().flatten() {
            let i = usize::from(s.0) % len;
            if let Some(slot) = self.slots.get_mut(i) {
                *slot = Some((s, at, p));
            }
        }
    }

    fn expire(&mut self, now: Instant, newest: SeqNo, max_age: Duration) {
        // The full capacity, not the slots allocated: across a gap in the sequence a smaller
        // ring can hold a packet further behind the newest than its length.
        let cap = self.capacity as i32;
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

fn empty_slots<T>(n: usize) -> Box<[Option<T>]> {
    (0..n).map(|_| None).collect()
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
    fn the_ring_grows_only_to_what_the_age_bound_keeps() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = PacketCache::new(DEFAULT_CAPACITY).with_max_age(DEFAULT_MAX_AGE);
        assert_eq!(c.slots(), INITIAL_SLOTS);
        // 60 packets per second for 5 s: ~90 held at a time.
        for i in 0..300u64 {
            c.insert(ms(i * 1000 / 60), SeqNo((65_400 + i) as u16), i);
        }
        assert_eq!(c.slots(), 128);
        assert!((89..=91).contains(&c.len()), "{} held", c.len());
        assert_eq!(c.get(SeqNo((65_400 + 299u64) as u16)), Some(&299));
        assert_eq!(c.get(SeqNo((65_400 + 210u64) as u16)), Some(&210));
        // 250 packets per second: 375 held, in a ring of the full capacity.
        for i in 300..1300u64 {
            c.insert(ms(5000 + (i - 300) * 4), SeqNo((65_400 + i) as u16), i);
        }
        assert_eq!(c.slots(), DEFAULT_CAPACITY);
        assert_eq!(c.len(), 375);
        assert_eq!(c.get(SeqNo((65_400 + 1299u64) as u16)), Some(&1299));
        assert_eq!(c.get(SeqNo((65_400 + 925u64) as u16)), Some(&925));
        assert_eq!(c.get(SeqNo((65_400 + 924u64) as u16)), None);
        // 500 per second: the count bound, 512 of the last second.
        for i in 1300..2300u64 {
            c.insert(ms(9000 + (i - 1300) * 2), SeqNo((65_400 + i) as u16), i);
        }
        assert_eq!(c.slots(), DEFAULT_CAPACITY);
        assert_eq!(c.len(), DEFAULT_CAPACITY);
        assert_eq!(c.get(SeqNo((65_400 + 1788u64) as u16)), Some(&1788));
        assert_eq!(c.get(SeqNo((65_400 + 1787u64) as u16)), None);
    }

    #[test]
    fn growing_keeps_every_packet_across_gaps_and_late_arrivals() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(512);
        // Every third sequence number, then the missing ones late: all within 512.
        let seqs: Vec<u16> = (0..150u16)
            .map(|i| 65_300u16.wrapping_add(3 * i))
            .chain((0..150u16).map(|i| 65_301u16.wrapping_add(3 * i)))
            .collect();
        for &s in &seqs {
            c.insert(t0, SeqNo(s), s);
        }
        for &s in &seqs {
            assert_eq!(c.get(SeqNo(s)), Some(&s), "seq {s}");
        }
        assert_eq!(c.len(), 300);
        assert_eq!(c.slots(), 512);
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

    #[test]
    fn the_age_follows_the_rtt_between_the_floor_and_the_default() {
        let ms = Duration::from_millis;
        assert_eq!(
            age_for_rtt(None),
            MIN_MAX_AGE,
            "not measured yet: the floor"
        );
        assert_eq!(age_for_rtt(Some(ms(20))), MIN_MAX_AGE);
        assert_eq!(age_for_rtt(Some(ms(400))), ms(1200));
        assert_eq!(age_for_rtt(Some(ms(900))), DEFAULT_MAX_AGE);
        // A shorter bound drops what is older as packets come in.
        let t0 = Instant::now();
        let mut c = PacketCache::new(512).with_max_age(DEFAULT_MAX_AGE);
        for i in 0..100u16 {
            c.insert(t0 + ms(u64::from(i) * 15), SeqNo(i), i);
        }
        assert_eq!(c.get(SeqNo(0)), Some(&0), "1.485 s old: kept at 1.5 s");
        c.set_max_age(MIN_MAX_AGE);
        c.insert(t0 + ms(1500), SeqNo(100), 100);
        assert_eq!(c.get(SeqNo(0)), None);
        assert_eq!(c.get(SeqNo(33)), None, "1.005 s old");
        assert_eq!(c.get(SeqNo(34)), Some(&34), "0.99 s old");
    }
}
