//! Per-client counters.
//!
//! The client task updates them under a mutex it alone contends for (a load run reads them a
//! few times per run), which costs far less per packet than a channel message would. A
//! measurement window is taken by swapping the counters out: [`ClientStats::take_received`]
//! at the start of the window discards the warm-up, and again at its end returns the window.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::media::{Kind, Probe};

/// What one client saw and sent.
#[derive(Debug, Default)]
pub struct ClientStats {
    received: Mutex<ReceiveStats>,
    sent: Mutex<SendStats>,
}

impl ClientStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the counters so far and starts new ones.
    pub fn take_received(&self) -> ReceiveStats {
        std::mem::take(&mut *lock(&self.received))
    }

    /// A copy of the counters so far.
    pub fn received(&self) -> ReceiveStats {
        lock(&self.received).clone()
    }

    /// Whether at least one packet of `kind` arrived since the counters were last taken;
    /// cheap enough to poll (no copy of the latency samples).
    pub fn receiving(&self, kind: Kind) -> bool {
        lock(&self.received).has(kind)
    }

    pub fn take_sent(&self) -> SendStats {
        std::mem::take(&mut *lock(&self.sent))
    }

    pub fn sent(&self) -> SendStats {
        lock(&self.sent).clone()
    }

    pub(crate) fn on_received(&self, ssrc: u32, payload: &[u8], now_us: u64) {
        lock(&self.received).record(ssrc, payload, now_us);
    }

    pub(crate) fn on_sent(&self, kind: Kind, payload_bytes: usize) {
        lock(&self.sent).record(kind, payload_bytes);
    }
}

/// A panic elsewhere must not hide the counters: they are plain numbers, always consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Packets and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    pub fn merge(&mut self, other: Count) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// What a publisher sent, by kind (RTP payload bytes, before SRTP).
#[derive(Debug, Clone, Default)]
pub struct SendStats {
    pub audio: Count,
    pub video: Count,
}

impl SendStats {
    fn record(&mut self, kind: Kind, bytes: usize) {
        match kind {
            Kind::Audio => self.audio.add(bytes),
            Kind::Video => self.video.add(bytes),
        }
    }

    pub fn total(&self) -> Count {
        let mut c = self.audio;
        c.merge(self.video);
        c
    }
}

/// One received stream, keyed by the SSRC it arrives with.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    pub kind: Option<Kind>,
    pub count: Count,
    /// Packets that carried a probe.
    pub probes: u64,
    /// Lowest and highest probe index seen: the span the publisher sent meanwhile.
    pub first_index: Option<u64>,
    pub last_index: u64,
}

impl StreamStats {
    /// Packets the publisher sent within the seen span that never arrived (gaps in the probe
    /// index; duplicates could hide a loss, the bridge drops them).
    pub fn lost(&self) -> u64 {
        match self.first_index {
            Some(first) => (self.last_index - first + 1).saturating_sub(self.probes),
            None => 0,
        }
    }

    /// Packets the publisher sent within the seen span.
    pub fn expected(&self) -> u64 {
        self.first_index.map_or(0, |f| self.last_index - f + 1)
    }
}

/// What a subscriber received.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    pub streams: HashMap<u32, StreamStats>,
    /// One-way latency of every probe, in microseconds (send time to the moment the client
    /// read the decrypted packet).
    pub latency_us: Vec<u32>,
}

impl ReceiveStats {
    fn record(&mut self, ssrc: u32, payload: &[u8], now_us: u64) {
        let s = self.streams.entry(ssrc).or_default();
        s.count.add(payload.len());
        let Some(probe) = Probe::decode(payload) else {
            return;
        };
        s.kind = Some(probe.kind);
        s.probes += 1;
        match s.first_index {
            None => {
                s.first_index = Some(probe.index);
                s.last_index = probe.index;
            }
            Some(first) => {
                // Reordering: a late packet can extend the span backwards.
                s.first_index = Some(first.min(probe.index));
                s.last_index = s.last_index.max(probe.index);
            }
        }
        let latency = now_us.saturating_sub(probe.sent_us);
        self.latency_us
            .push(u32::try_from(latency).unwrap_or(u32::MAX));
    }

    /// Packets and bytes of one kind (`None`: all, probes or not).
    pub fn count(&self, kind: Option<Kind>) -> Count {
        let mut c = Count::default();
        for s in self.streams.values() {
            if kind.is_none() || s.kind == kind {
                c.merge(s.count);
            }
        }
        c
    }

    pub fn lost(&self) -> u64 {
        self.streams.values().map(StreamStats::lost).sum()
    }

    pub fn expected(&self) -> u64 {
        self.streams.values().map(StreamStats::expected).sum()
    }

    /// Whether at least one packet of `kind` arrived.
    pub fn has(&self, kind: Kind) -> bool {
        self.streams
            .values()
            .any(|s| s.kind == Some(kind) && s.count.packets > 0)
    }
}

/// The `p`-th percentile (0..=100) of `samples`, sorting them; `None` when empty.
pub fn percentile(samples: &mut [u32], p: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (p / 100.0 * (samples.len() - 1) as f64).round() as usize;
    samples.get(rank.min(samples.len() - 1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: Kind, index: u64, sent_us: u64, size: usize) -> Vec<u8> {
        Probe {
            publisher_ssrc: 7,
            kind,
            index,
            sent_us,
        }
        .encode(size)
    }

    #[test]
    fn loss_is_counted_from_index_gaps() {
        let stats = ClientStats::new();
        for i in [10u64, 11, 13, 12, 16] {
            stats.on_received(99, &probe(Kind::Video, i, 1_000, 1100), 1_500);
        }
        let r = stats.take_received();
        let s = &r.streams[&99];
        assert_eq!(s.count.packets, 5);
        assert_eq!(s.count.bytes, 5 * 1100);
        assert_eq!(s.expected(), 7);
        assert_eq!(s.lost(), 2, "14 and 15 are missing");
        assert_eq!(r.latency_us, vec![500; 5]);
        assert!(r.has(Kind::Video) && !r.has(Kind::Audio));
        // Taking resets.
        assert!(stats.received().streams.is_empty());
    }

    #[test]
    fn foreign_payloads_count_without_probe() {
        let stats = ClientStats::new();
        stats.on_received(1, b"hello", 0);
        let r = stats.received();
        assert_eq!(r.count(None).packets, 1);
        assert_eq!(r.lost(), 0);
        assert!(r.latency_us.is_empty());
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 50.0), Some(51));
        assert_eq!(percentile(&mut v, 99.0), Some(99));
        assert_eq!(percentile(&mut v, 100.0), Some(100));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
