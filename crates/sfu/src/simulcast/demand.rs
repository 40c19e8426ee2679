//! Which simulcast layers a remote bridge needs (DESIGN.md section 6).
//!
//! Jitsi sends every layer of every source across every Octo link. We send a remote bridge
//! only the layers its receivers currently get: a conference where everybody watches
//! thumbnails then costs the link a sixth of the bytes. The receiving bridge works out, per
//! remote source, the highest layer any of its receivers is allocated ([`DemandAggregator`])
//! and tells the origin "I need layers up to L of source S"; the origin keeps that per peer
//! ([`LayerDemand`]) and forwards a packet of layer `l` to the peers that need `l`.
//!
//! The messages travel over the unreliable Octo link, so the state is soft: the receiving
//! bridge repeats its demand every [`DEFAULT_REFRESH`] and the origin forgets a demand not
//! heard for [`DEFAULT_TIMEOUT`]. A raise takes effect at once (a receiver waits for the
//! layer's keyframe already); a layer nobody needs any more is dropped only after
//! [`DEFAULT_GRACE`], because receivers flap between tiles and every re-raise would cost a
//! keyframe, and because a receiver switching down still shows the higher layer until the
//! lower layer's keyframe arrives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Layer, MAX_LAYERS};
use crate::ids::{EndpointId, TrackId};

/// How long an unneeded layer is still forwarded to a peer. 2 s: longer than a keyframe
/// round trip through a publisher (a receiver switching down needs the higher layer until
/// then), and long enough to absorb a user clicking between tiles.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How often a receiving bridge repeats an unchanged demand.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);

/// How long the origin keeps a demand it does not hear again: three lost refreshes and a bit,
/// so a lossy link does not starve receivers, while a peer that vanished without closing its
/// link stops costing bandwidth within seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(7);

/// Timing of the demand protocol; `Default` holds the constants above. Both sides must agree
/// on `refresh < timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemandConfig {
    pub grace: Duration,
    pub refresh: Duration,
    pub timeout: Duration,
}

impl Default for DemandConfig {
    fn default() -> Self {
        DemandConfig {
            grace: DEFAULT_GRACE,
            refresh: DEFAULT_REFRESH,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct PeerDemand {
    requested: Option<Layer>,
    /// When each layer stopped being requested, while it is in its grace period.
    released_at: [Option<Instant>; MAX_LAYERS],
    heard: Instant,
}

impl PeerDemand {
    fn timed_out(&self, now: Instant, config: &DemandConfig) -> bool {
        now.saturating_duration_since(self.heard) >= config.timeout
    }

    fn needed(&self, now: Instant, config: &DemandConfig) -> Option<Layer> {
        if self.timed_out(now, config) {
            return None;
        }
        Layer::all().rev().find(|l| {
            self.requested >= Some(*l)
                || self
                    .released_at
                    .get(l.index())
                    .copied()
                    .flatten()
                    .is_some_and(|t| now.saturating_duration_since(t) < config.grace)
        })
    }
}

/// The origin side, for one local source: which layers each peer bridge needs.
///
/// `P` identifies a peer bridge (the Octo `BridgeId`). Peers are few, so they are kept in a
/// vector: lookups on the forwarding path are a short scan, and iteration is in arrival order.
#[derive(Clone, Debug)]
pub struct LayerDemand<P> {
    config: DemandConfig,
    peers: Vec<(P, PeerDemand)>,
}

impl<P: Copy + Eq> Default for LayerDemand<P> {
    fn default() -> Self {
        Self::new(DemandConfig::default())
    }
}

impl<P: Copy + Eq> LayerDemand<P> {
    pub fn new(config: DemandConfig) -> Self {
        LayerDemand {
            config,
            peers: Vec::new(),
        }
    }

    /// `peer` says it needs layers up to `max_layer` of this source (`None`: none of them).
    /// A refresh of the same value only keeps the demand alive.
    pub fn on_request(&mut self, now: Instant, peer: P, max_layer: Option<Layer>) {
        let config = self.config;
        let i = match self.peers.iter().position(|(p, _)| *p == peer) {
            Some(i) => i,
            None => {
                self.peers.push((peer, fresh(now)));
                self.peers.len() - 1
            }
        };
        let Some((_, d)) = self.peers.get_mut(i) else {
            return;
        };
        if d.timed_out(now, &config) {
            // What it said before timing out no longer counts, grace timers included.
            *d = fresh(now);
        }
        for l in Layer::all() {
            let was = d.requested >= Some(l);
            let is = max_layer >= Some(l);
            if let Some(slot) = d.released_at.get_mut(l.index()) {
                if is {
                    *slot = None;
                } else if was {
                    *slot = Some(now);
                }
            }
        }
        d.requested = max_layer;
        d.heard = now;
    }

    /// The highest layer `peer` needs now, if any: forward it a packet of layer `l` iff
    /// `needed_for(peer, now) >= Some(l)`.
    pub fn needed_for(&self, peer: P, now: Instant) -> Option<Layer> {
        self.peers
            .iter()
            .find(|(p, _)| *p == peer)
            .and_then(|(_, d)| d.needed(now, &self.config))
    }

    /// The highest layer any of the peers `which` selects needs now (a node that sends one
    /// demand per shard is served the highest of them).
    pub fn needed_by(&self, now: Instant, which: impl Fn(&P) -> bool) -> Option<Layer> {
        self.peers
            .iter()
            .filter(|(p, _)| which(p))
            .filter_map(|(_, d)| d.needed(now, &self.config))
            .max()
    }

    /// The peers that need a packet of `layer` now.
    pub fn peers_needing(&self, layer: Layer, now: Instant) -> impl Iterator<Item = P> + '_ {
        self.peers
            .iter()
            .filter(move |(_, d)| d.needed(now, &self.config) >= Some(layer))
            .map(|(p, _)| *p)
    }

    /// The highest layer any peer needs now.
    pub fn needed_by_any(&self, now: Instant) -> Option<Layer> {
        self.peers
            .iter()
            .filter_map(|(_, d)| d.needed(now, &self.config))
            .max()
    }

    /// Drops the state of peers that need nothing any more (timed out, or asked for nothing
    /// and past the grace period), so the table does not grow with every peer ever seen.
    pub fn expire(&mut self, now: Instant) {
        let config = self.config;
        self.peers.retain(|(_, d)| d.needed(now, &config).is_some());
    }

    /// Forgets a peer at once (its link closed).
    pub fn forget_peer(&mut self, peer: P) {
        self.peers.retain(|(p, _)| *p != peer);
    }

    /// Whether no peer state is held.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

fn fresh(now: Instant) -> PeerDemand {
    PeerDemand {
        requested: None,
        released_at: [None; MAX_LAYERS],
        heard: now,
    }
}

#[derive(Clone, Debug, Default)]
struct SourceNeeds {
    receivers: Vec<(EndpointId, Layer)>,
    /// The last value told to the origin and when.
    reported: Option<(Option<Layer>, Instant)>,
}

impl SourceNeeds {
    fn max(&self) -> Option<Layer> {
        self.receivers.iter().map(|(_, l)| *l).max()
    }
}

/// The receiving side: per remote source, the highest layer any local receiver is allocated,
/// to tell the source's origin bridge.
#[derive(Clone, Debug, Default)]
pub struct DemandAggregator {
    config: DemandConfig,
    // Ordered, so that `poll` reports in a deterministic order.
    sources: BTreeMap<TrackId, SourceNeeds>,
}

impl DemandAggregator {
    pub fn new(config: DemandConfig) -> Self {
        DemandAggregator {
            config,
            sources: BTreeMap::new(),
        }
    }

    /// Records the layer `receiver` is allocated of the remote `source` (the
    /// [`super::Allocation::layer`] of its allocator; `None` = nothing).
    pub fn set(&mut self, source: TrackId, receiver: EndpointId, layer: Option<Layer>) {
        let needs = self.sources.entry(source).or_default();
        needs.receivers.retain(|(r, _)| *r != receiver);
        if let Some(layer) = layer {
            needs.receivers.push((receiver, layer));
        }
    }

    /// A receiver left: it needs nothing of any source.
    pub fn remove_receiver(&mut self, receiver: EndpointId) {
        for needs in self.sources.values_mut() {
            needs.receivers.retain(|(r, _)| *r != receiver);
        }
    }

    /// A remote source was unpublished: nothing to tell its origin any more.
    pub fn remove_source(&mut self, source: TrackId) {
        self.sources.remove(&source);
    }

    /// The highest layer of `source` a local receiver needs now.
    pub fn needed(&self, source: TrackId) -> Option<Layer> {
        self.sources.get(&source).and_then(SourceNeeds::max)
    }

    /// What to tell origins now, as (source, max layer needed): a change at once, and an
    /// unchanged demand for some layer again every `refresh` to keep the origin's soft state
    /// alive. "Nothing" is sent once and not repeated: the origin's timeout ends a demand that
    /// message was lost for. The bridge groups the entries by each source's origin.
    pub fn poll(&mut self, now: Instant) -> Vec<(TrackId, Option<Layer>)> {
        let refresh = self.config.refresh;
        let mut out = Vec::new();
        for (source, needs) in &mut self.sources {
            let max = needs.max();
            let due = match needs.reported {
                None => max.is_some(),
                Some((told, at)) => {
                    told != max || (max.is_some() && now.saturating_duration_since(at) >= refresh)
                }
            };
            if due {
                needs.reported = Some((max, now));
                out.push((*source, max));
            }
        }
        // A source nobody needs and whose origin knows it holds nothing worth keeping.
        self.sources
            .retain(|_, n| !n.receivers.is_empty() || n.reported.is_some_and(|(l, _)| l.is_some()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(i: u8) -> Option<Layer> {
        Layer::new(i)
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    const A: u32 = 1;
    const B: u32 = 2;

    #[test]
    fn raise_is_immediate_drop_waits_for_the_grace_period() {
        let t0 = Instant::now();
        let mut d = LayerDemand::default();
        assert_eq!(d.needed_for(A, t0), None);
        d.on_request(t0, A, l(0));
        assert_eq!(d.needed_for(A, t0), l(0));
        d.on_request(ms(t0, 10), A, l(2));
        assert_eq!(d.needed_for(A, ms(t0, 10)), l(2));
        d.on_request(ms(t0, 1000), A, l(0));
        assert_eq!(d.needed_for(A, ms(t0, 2999)), l(2));
        assert_eq!(d.needed_for(A, ms(t0, 3000)), l(0));
        // Nothing at all, after the grace period too.
        d.on_request(ms(t0, 4000), A, None);
        assert_eq!(d.needed_for(A, ms(t0, 5999)), l(0));
        assert_eq!(d.needed_for(A, ms(t0, 6000)), None);
    }

    #[test]
    fn each_layer_has_its_own_grace_period() {
        let t0 = Instant::now();
        let mut d = LayerDemand::default();
        d.on_request(t0, A, l(2));
        d.on_request(t0, A, l(1)); // layer 2 unneeded from 0 ms
        d.on_request(ms(t0, 1500), A, l(0)); // layer 1 unneeded from 1500 ms
        assert_eq!(d.needed_for(A, ms(t0, 1999)), l(2));
        assert_eq!(d.needed_for(A, ms(t0, 2000)), l(1));
        assert_eq!(d.needed_for(A, ms(t0, 3499)), l(1));
        assert_eq!(d.needed_for(A, ms(t0, 3500)), l(0));
    }

    #[test]
    fn flapping_between_tiles_keeps_the_layer() {
        let t0 = Instant::now();
        let mut d = LayerDemand::default();
        for i in 0..20 {
            let layer = if i % 2 == 0 { l(2) } else { l(0) };
            d.on_request(ms(t0, 500 * i), A, layer);
            for probe in [0, 250, 499] {
                assert_eq!(d.needed_for(A, ms(t0, 500 * i + probe)), l(2), "step {i}");
            }
        }
        // Settled low: the layer goes one grace period after the last release.
        assert_eq!(d.needed_for(A, ms(t0, 9500 + 1999)), l(2));
        assert_eq!(d.needed_for(A, ms(t0, 9500 + 2000)), l(0));
    }

    #[test]
    fn peers_are_independent() {
        let t0 = Instant::now();
        let mut d = LayerDemand::default();
        d.on_request(t0, A, l(0));
        d.on_request(t0, B, l(2));
        assert_eq!(d.needed_by_any(t0), l(2));
        assert_eq!(
            d.peers_needing(Layer::BASE, t0).collect::<Vec<_>>(),
            vec![A, B]
        );
        assert_eq!(d.peers_needing(Layer::TOP, t0).collect::<Vec<_>>(), vec![B]);
        d.forget_peer(B);
        assert_eq!(d.needed_by_any(t0), l(0));
        assert_eq!(d.peers_needing(Layer::TOP, t0).count(), 0);
    }

    #[test]
    fn soft_state_times_out_without_refresh() {
        let t0 = Instant::now();
        let mut d = LayerDemand::default();
        d.on_request(t0, A, l(2));
        // Refreshed: alive well past one timeout.
        for s in 1..=5 {
            d.on_request(ms(t0, 2000 * s), A, l(2));
        }
        assert_eq!(d.needed_for(A, ms(t0, 10_000 + 6999)), l(2));
        // Not refreshed: gone at the timeout, no grace on top.
        assert_eq!(d.needed_for(A, ms(t0, 17_000)), None);
        d.expire(ms(t0, 17_000));
        assert!(d.is_empty());
        // A peer that asked for layer 2, was released, then timed out and comes back with 0
        // does not inherit the old grace timers.
        d.on_request(t0, B, l(2));
        d.on_request(ms(t0, 6000), B, l(1));
        d.on_request(ms(t0, 14_000), B, l(0));
        assert_eq!(d.needed_for(B, ms(t0, 14_000)), l(0));
        // Asked for nothing and past the grace: expired too.
        d.on_request(ms(t0, 15_000), B, None);
        d.expire(ms(t0, 16_999));
        assert!(!d.is_empty());
        d.expire(ms(t0, 17_000));
        assert!(d.is_empty());
    }

    #[test]
    fn aggregator_reports_changes_and_refreshes() {
        let t0 = Instant::now();
        let mut g = DemandAggregator::default();
        let (s, r1, r2) = (TrackId(9), EndpointId(1), EndpointId(2));
        assert!(g.poll(t0).is_empty());
        g.set(s, r1, l(0));
        g.set(s, r2, l(2));
        assert_eq!(g.needed(s), l(2));
        assert_eq!(g.poll(t0), vec![(s, l(2))]);
        assert!(g.poll(ms(t0, 100)).is_empty(), "unchanged");
        g.set(s, r2, l(1));
        assert_eq!(g.poll(ms(t0, 200)), vec![(s, l(1))]);
        // A change that leaves the maximum alone is no news.
        g.set(s, r1, l(1));
        assert!(g.poll(ms(t0, 300)).is_empty());
        // Soft state: the same value again after the refresh interval.
        assert!(g.poll(ms(t0, 2199)).is_empty());
        assert_eq!(g.poll(ms(t0, 2200)), vec![(s, l(1))]);
        g.remove_receiver(r2);
        g.set(s, r1, l(0));
        assert_eq!(g.poll(ms(t0, 2300)), vec![(s, l(0))]);
        // The last receiver goes: "nothing" is said once, then the source is forgotten.
        g.set(s, r1, None);
        assert_eq!(g.poll(ms(t0, 2400)), vec![(s, None)]);
        assert!(g.poll(ms(t0, 9000)).is_empty());
        assert!(g.sources.is_empty());
    }

    #[test]
    fn aggregator_orders_sources_and_forgets_unpublished_ones() {
        let t0 = Instant::now();
        let mut g = DemandAggregator::default();
        g.set(TrackId(5), EndpointId(1), l(1));
        g.set(TrackId(3), EndpointId(1), l(0));
        assert_eq!(g.poll(t0), vec![(TrackId(3), l(0)), (TrackId(5), l(1))]);
        g.remove_source(TrackId(5));
        assert_eq!(g.needed(TrackId(5)), None);
        assert_eq!(g.poll(ms(t0, 2000)), vec![(TrackId(3), l(0))]);
    }
}
