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

    /// The client left its bridge (a `migrate`): what it received there stays counted, but
    /// its tracks are the ones it receives from now on.
    pub(crate) fn retire_streams(&self) {
        let mut r = lock(&self.received);
        let old: Vec<StreamStats> = r.streams.drain().map(|(_, s)| s).collect();
        r.retired.extend(old);
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
    /// The publisher stream (probe SSRC) of the current run: a simulcast layer switch makes
    /// the received stream carry another layer, whose index counts on its own.
    pub source: Option<u32>,
    /// Lowest and highest probe index seen in the current run: the span the publisher sent
    /// meanwhile.
    pub first_index: Option<u64>,
    pub last_index: u64,
    /// Probes of the current run.
    pub run_probes: u64,
    /// What the runs before the current one expected and received.
    pub closed_expected: u64,
    pub closed_probes: u64,
    /// Times the received stream moved to another publisher stream (simulcast layer).
    pub switches: u64,
    /// Wall-clock microseconds of the first and the last packet received.
    pub first_us: Option<u64>,
    pub last_us: u64,
    /// The longest time between two packets of this stream in microseconds: how long this
    /// publisher's media stopped, whatever the other streams did.
    pub max_gap_us: u64,
    /// One-way latency of this stream's probes, in microseconds.
    pub latency_us: Histogram,
    /// Repair delay: the one-way latency (original's send time to arrival) of the probes that
    /// arrived after a later packet of their run, i.e. retransmissions of lost packets. On a
    /// path that does not reorder, that is every repaired packet and nothing else.
    pub repair_us: Histogram,
}

impl StreamStats {
    /// Packets the publisher sent within the seen spans that never arrived (gaps in the probe
    /// index; duplicates could hide a loss, the bridge drops them).
    pub fn lost(&self) -> u64 {
        self.expected()
            .saturating_sub(self.closed_probes + self.run_probes)
    }

    /// Packets the publisher sent within the seen spans.
    pub fn expected(&self) -> u64 {
        self.closed_expected + self.first_index.map_or(0, |f| self.last_index - f + 1)
    }

    /// Counts a probe; returns whether it came late: behind a higher index of the same
    /// publisher stream (a repair, or a reordered packet).
    fn on_probe(&mut self, probe: &Probe) -> bool {
        let late = self.source == Some(probe.publisher_ssrc)
            && self.first_index.is_some()
            && probe.index < self.last_index;
        self.kind = Some(probe.kind);
        self.probes += 1;
        if self.source.is_some_and(|s| s != probe.publisher_ssrc) {
            // Another layer now: close the run (a gap in it is loss, the switch is not).
            self.closed_expected += self.first_index.map_or(0, |f| self.last_index - f + 1);
            self.closed_probes += self.run_probes;
            self.first_index = None;
            self.run_probes = 0;
            self.switches += 1;
        }
        self.source = Some(probe.publisher_ssrc);
        self.run_probes += 1;
        match self.first_index {
            None => {
                self.first_index = Some(probe.index);
                self.last_index = probe.index;
            }
            Some(first) => {
                // Reordering: a late packet can extend the span backwards.
                self.first_index = Some(first.min(probe.index));
                self.last_index = self.last_index.max(probe.index);
            }
        }
        late
    }

    /// Payload bitrate in kbps from the first to the last packet (0 with fewer than two).
    pub fn kbps(&self) -> f64 {
        match self.first_us {
            Some(f) if self.last_us > f => {
                self.count.bytes as f64 * 8.0 / 1000.0 / ((self.last_us - f) as f64 / 1e6)
            }
            _ => 0.0,
        }
    }
}

/// What a subscriber received.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    pub streams: HashMap<u32, StreamStats>,
    /// Streams of a bridge the client migrated away from.
    pub retired: Vec<StreamStats>,
    /// Wall-clock microseconds of the last packet of any stream.
    pub last_us: Option<u64>,
    /// The longest time between two packets (of any streams) in microseconds: how long
    /// media stopped altogether, e.g. while a client moved to another bridge.
    pub max_gap_us: u64,
    /// One-way latency of every probe, in microseconds (send time to the moment the client
    /// read the decrypted packet).
    pub latency_us: Histogram,
}

impl ReceiveStats {
    fn record(&mut self, ssrc: u32, payload: &[u8], now_us: u64) {
        if let Some(last) = self.last_us {
            self.max_gap_us = self.max_gap_us.max(now_us.saturating_sub(last));
        }
        self.last_us = Some(self.last_us.map_or(now_us, |l| l.max(now_us)));
        let s = self.streams.entry(ssrc).or_default();
        if s.first_us.is_some() {
            s.max_gap_us = s.max_gap_us.max(now_us.saturating_sub(s.last_us));
        }
        s.count.add(payload.len());
        s.first_us.get_or_insert(now_us);
        s.last_us = s.last_us.max(now_us);
        let Some(probe) = Probe::find(payload) else {
            return;
        };
        let late = s.on_probe(&probe);
        let latency = u32::try_from(now_us.saturating_sub(probe.sent_us)).unwrap_or(u32::MAX);
        s.latency_us.record(latency);
        if late {
            s.repair_us.record(latency);
        }
        self.latency_us.record(latency);
    }

    /// Streams that carried probes: the tracks this client received media of.
    pub fn tracks(&self) -> usize {
        self.streams.values().filter(|s| s.probes > 0).count()
    }

    /// Simulcast layer switches seen, over all received streams.
    pub fn switches(&self) -> u64 {
        self.all().map(|s| s.switches).sum()
    }

    /// Every stream: the current ones and those of a bridge left behind.
    fn all(&self) -> impl Iterator<Item = &StreamStats> {
        self.streams.values().chain(&self.retired)
    }

    /// Tracks received, by kind.
    pub fn tracks_of(&self, kind: Kind) -> usize {
        self.streams
            .values()
            .filter(|s| s.probes > 0 && s.kind == Some(kind))
            .count()
    }

    /// Payload bitrate in kbps: each stream's over its own span (first to last packet), summed.
    /// A stream that starts late (video waits for a key frame, a publisher joins later) is
    /// not diluted over time it did not exist.
    pub fn kbps(&self) -> f64 {
        // A fold from +0.0: an empty `sum` of floats is -0.0, which prints as "-0".
        self.all().map(StreamStats::kbps).fold(0.0, |a, b| a + b)
    }

    /// Packets and bytes of one kind (`None`: all, probes or not).
    pub fn count(&self, kind: Option<Kind>) -> Count {
        let mut c = Count::default();
        for s in self.all() {
            if kind.is_none() || s.kind == kind {
                c.merge(s.count);
            }
        }
        c
    }

    pub fn lost(&self) -> u64 {
        self.all().map(StreamStats::lost).sum()
    }

    pub fn expected(&self) -> u64 {
        self.all().map(StreamStats::expected).sum()
    }

    /// Whether at least one packet of `kind` arrived.
    pub fn has(&self, kind: Kind) -> bool {
        self.streams
            .values()
            .any(|s| s.kind == Some(kind) && s.count.packets > 0)
    }
}

/// Counters cheap enough to read every second for a progress line: no latency samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: Count,
    pub lost: u64,
    pub expected: u64,
    pub tracks: usize,
}

impl ClientStats {
    /// The receive counters so far, without copying the latency histogram.
    pub fn totals(&self) -> Totals {
        let r = lock(&self.received);
        Totals {
            received: r.count(None),
            lost: r.lost(),
            expected: r.expected(),
            tracks: r.tracks(),
        }
    }
}

/// Sub-buckets per power of two: values are kept to 1/64 (1.6%) of their size.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are exact.
const EXACT: usize = 2 * SUB;
const BUCKETS: usize = EXACT + (32 - SUB_BITS as usize - 1) * SUB;

/// A log-linear histogram of `u32` samples (latencies in microseconds): values below 128 are
/// exact, larger ones are kept to 1.6%, and a client holds 14 KiB however long it runs
/// (a `Vec` of every sample would grow by 1 MiB per client and hour at 300 pps).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Allocated at the first sample.
    buckets: Vec<u64>,
    count: u64,
    min: u32,
    max: u32,
}

impl Histogram {
    fn index(v: u32) -> usize {
        if (v as usize) < EXACT {
            return v as usize;
        }
        let e = 31 - v.leading_zeros(); // >= SUB_BITS + 1
        let top = (v >> (e - SUB_BITS)) as usize; // SUB..2*SUB
        EXACT + (e - SUB_BITS - 1) as usize * SUB + (top - SUB)
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u32 {
        if i < EXACT {
            return i as u32;
        }
        let e = (i - EXACT) / SUB + SUB_BITS as usize + 1;
        let top = ((i - EXACT) % SUB + SUB) as u64;
        let shift = e - SUB_BITS as usize;
        let low = top << shift;
        (low + (1u64 << shift) / 2).min(u64::from(u32::MAX)) as u32
    }

    pub fn record(&mut self, v: u32) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS];
            self.min = v;
        }
        self.buckets[Self::index(v)] += 1;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn max(&self) -> Option<u32> {
        (self.count > 0).then_some(self.max)
    }

    /// The non-empty buckets as (value, samples), ascending: the whole distribution in a few
    /// hundred pairs, so that histograms of several processes can be merged downstream.
    pub fn buckets(&self) -> Vec<(u32, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| (Self::value(i).clamp(self.min, self.max), n))
            .collect()
    }

    /// The `p`-th percentile (0..=100): the sample of rank `round(p/100 * (n-1))` in sorted
    /// order, to the bucket's precision; `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        let rank = (p.clamp(0.0, 100.0) / 100.0 * (self.count - 1) as f64).round() as u64;
        // The extremes are known exactly.
        if rank == 0 {
            return Some(self.min);
        }
        if rank + 1 >= self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen > rank {
                return Some(Self::value(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
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
        assert_eq!(r.latency_us.count(), 5);
        assert_eq!(r.latency_us.percentile(50.0), Some(500));
        assert_eq!(r.tracks(), 1);
        assert_eq!(r.tracks_of(Kind::Video), 1);
        // 5 packets of 1100 B within 0 s: no rate.
        assert_eq!(r.kbps(), 0.0);
        assert!(r.has(Kind::Video) && !r.has(Kind::Audio));
        // Taking resets.
        assert!(stats.received().streams.is_empty());
    }

    #[test]
    fn a_packet_behind_a_later_one_is_a_repair() {
        let stats = ClientStats::new();
        // Index i is sent at i ms and takes 10 ms; 3 is lost and resent, arriving 85 ms after
        // its original was sent; 6 arrives in order.
        for i in [1u64, 2, 4, 5] {
            stats.on_received(9, &probe(Kind::Video, i, i * 1000, 100), i * 1000 + 10_000);
        }
        stats.on_received(9, &probe(Kind::Video, 3, 3_000, 100), 88_000);
        stats.on_received(9, &probe(Kind::Video, 6, 6_000, 100), 96_000);
        let r = stats.received();
        let s = &r.streams[&9];
        assert_eq!(s.repair_us.count(), 1, "only the resent packet");
        assert_eq!(s.repair_us.max(), Some(85_000));
        assert_eq!(s.latency_us.count(), 6, "the repair counts for latency too");
        assert_eq!(s.lost(), 0, "repaired: no residual loss");
        // The first packet of a run, and the first after a layer switch, are never late.
        let stats = ClientStats::new();
        let layer = |ssrc: u32, index: u64| {
            Probe {
                publisher_ssrc: ssrc,
                kind: Kind::Video,
                index,
                sent_us: 0,
            }
            .encode(100)
        };
        stats.on_received(1, &layer(0x10, 500), 1);
        stats.on_received(1, &layer(0x12, 20), 2);
        stats.on_received(1, &layer(0x12, 21), 3);
        assert_eq!(stats.received().streams[&1].repair_us.count(), 0);
    }

    #[test]
    fn histogram_buckets_hold_the_distribution() {
        let mut h = Histogram::default();
        assert!(h.buckets().is_empty());
        for v in [5u32, 5, 7, 60_000, 60_100] {
            h.record(v);
        }
        let b = h.buckets();
        assert_eq!(b.iter().map(|&(_, n)| n).sum::<u64>(), 5);
        assert_eq!(&b[..2], &[(5, 2), (7, 1)], "small values are exact");
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "ascending: {b:?}");
        for &(v, _) in &b[2..] {
            assert!(
                (59_000..=60_100).contains(&v),
                "{v} within 1.6% of the samples"
            );
        }
    }

    #[test]
    fn a_migration_retires_streams_and_the_gap_is_measured() {
        let stats = ClientStats::new();
        for i in 0..10u64 {
            stats.on_received(5, &probe(Kind::Audio, i, 0, 100), 1_000 + i * 20_000);
        }
        stats.retire_streams();
        // On the new bridge: another SSRC, 400 ms after the last packet on the old one.
        for i in 10..20u64 {
            stats.on_received(6, &probe(Kind::Audio, i, 0, 100), 581_000 + i * 20_000);
        }
        let r = stats.received();
        assert_eq!(
            r.tracks(),
            1,
            "the old bridge's stream is no track any more"
        );
        assert_eq!(r.count(None).packets, 20, "but its packets still count");
        assert_eq!(r.expected(), 20);
        assert_eq!(r.lost(), 0);
        assert_eq!(r.max_gap_us, 581_000 + 200_000 - (1_000 + 180_000));
    }

    #[test]
    fn each_stream_has_its_own_gap() {
        let stats = ClientStats::new();
        // Stream 1 every 20 ms throughout; stream 2 every 20 ms but silent between its packets
        // at 100 ms and 460 ms. Media never stopped altogether, stream 2 did for 360 ms.
        for t in (0..=600_000u64).step_by(20_000) {
            stats.on_received(1, &probe(Kind::Audio, t / 20_000, 0, 100), t + 5_000);
            if !(120_000..=440_000).contains(&t) {
                stats.on_received(2, &probe(Kind::Audio, t / 20_000, 0, 100), t + 7_000);
            }
        }
        // A stream of one packet has no gap.
        stats.on_received(3, &probe(Kind::Audio, 0, 0, 100), 300_000);
        let r = stats.received();
        assert_eq!(r.streams[&1].max_gap_us, 20_000);
        assert_eq!(r.streams[&2].max_gap_us, 360_000);
        assert_eq!(r.streams[&3].max_gap_us, 0);
        assert!(r.max_gap_us <= 20_000, "{}", r.max_gap_us);
    }

    #[test]
    fn a_layer_switch_is_not_loss() {
        let stats = ClientStats::new();
        let layer = |ssrc: u32, index: u64| {
            Probe {
                publisher_ssrc: ssrc,
                kind: Kind::Video,
                index,
                sent_us: 0,
            }
            .encode(100)
        };
        // Layer q indices 100..=109 with 105 lost, then layer f from 5000, then q again.
        for i in (100..110).filter(|i| *i != 105) {
            stats.on_received(1, &layer(0x10, i), 1);
        }
        for i in 5000..5010 {
            stats.on_received(1, &layer(0x12, i), 2);
        }
        for i in 300..305 {
            stats.on_received(1, &layer(0x10, i), 3);
        }
        let s = &stats.received().streams[&1];
        assert_eq!(s.switches, 2);
        assert_eq!(s.expected(), 10 + 10 + 5);
        assert_eq!(s.lost(), 1);
        assert_eq!(s.probes, 24);
    }

    #[test]
    fn bitrate_per_stream_span() {
        let stats = ClientStats::new();
        stats.on_received(5, &probe(Kind::Audio, 0, 0, 100), 1_000_000);
        stats.on_received(5, &probe(Kind::Audio, 1, 0, 100), 1_500_000);
        stats.on_received(6, &probe(Kind::Video, 0, 0, 1000), 1_400_000);
        stats.on_received(6, &probe(Kind::Video, 1, 0, 1000), 1_500_000);
        stats.on_received(7, &probe(Kind::Video, 0, 0, 1000), 1_500_000);
        // Stream 5: 200 B in 0.5 s = 3.2 kbps; stream 6 (starting later): 2000 B in 0.1 s =
        // 160 kbps; stream 7: one packet, no rate.
        assert!((stats.received().kbps() - 163.2).abs() < 1e-9);
    }

    #[test]
    fn foreign_payloads_count_without_probe() {
        let stats = ClientStats::new();
        stats.on_received(1, b"hello", 0);
        let r = stats.received();
        assert_eq!(r.count(None).packets, 1);
        assert_eq!(r.lost(), 0);
        assert!(r.latency_us.is_empty());
        assert_eq!(r.tracks(), 0);
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(50.0), None);
        for v in (1..=100).rev() {
            h.record(v);
        }
        // Exact below 128: the same ranks as sorting the samples.
        assert_eq!(h.percentile(50.0), Some(51));
        assert_eq!(h.percentile(99.0), Some(99));
        assert_eq!(h.percentile(100.0), Some(100));
        assert_eq!(h.percentile(0.0), Some(1));

        // Larger values within 1.6%, clamped to what was seen.
        let mut h = Histogram::default();
        for v in [1_000u32, 5_000, 20_000, 1_000_000, u32::MAX] {
            h.record(v);
        }
        for (p, want) in [
            (0.0, 1_000u32),
            (25.0, 5_000),
            (50.0, 20_000),
            (75.0, 1_000_000),
        ] {
            let got = h.percentile(p).expect("samples");
            assert!(got.abs_diff(want) <= want / 60, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.percentile(100.0), Some(u32::MAX));

        // Every bucket maps back into itself.
        for v in [128u32, 129, 255, 256, 1 << 20, (1 << 20) + 12345, u32::MAX] {
            let i = Histogram::index(v);
            assert!(i < BUCKETS);
            assert_eq!(Histogram::index(Histogram::value(i)), i, "{v}");
        }

        let mut a = Histogram::default();
        a.record(10);
        let mut b = Histogram::default();
        b.record(30);
        b.record(20);
        a.merge(&b);
        a.merge(&Histogram::default());
        assert_eq!(
            (a.count(), a.percentile(50.0), a.max()),
            (3, Some(20), Some(30))
        );
        let mut empty = Histogram::default();
        empty.merge(&a);
        assert_eq!(empty.count(), 3);
    }
}
