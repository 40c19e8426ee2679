//! Which simulcast layer of each source a receiver gets (DESIGN.md section 6).
//!
//! Two limits decide: what the receiver asked for (the tile a source is shown in: no point
//! sending 720p to a 180p thumbnail) and what its downlink carries (the bandwidth estimate).
//! The allocation follows the idea of Jitsi's BandwidthAllocator: sources in priority order
//! (the bridge puts the stage / dominant speaker first), every source gets its lowest allowed
//! layer before any source gets more, then sources are upgraded in priority order while the
//! estimate lasts. Seeing every participant matters more than seeing one of them sharply.
//!
//! Estimates move all the time; a receiver switched at every wiggle would spend its time
//! waiting for keyframes. So the allocation has hysteresis:
//! - keeping a layer (or going down) only needs the estimate to cover it: going down happens
//!   at once, because an overshooting sender causes loss and queueing for everything else;
//! - going up needs the estimate to cover the higher layer with [`DEFAULT_HEADROOM_PERCENT`]
//!   to spare, and no bandwidth-forced down-switch of that source in the last
//!   [`DEFAULT_UPGRADE_HOLD`], so an estimate hovering at a layer's bitrate does not flap.
//!
//! A layer lost to a *constraint* (the source moved from stage to thumbnail) does not start
//! the hold: moving it back to the stage must bring the high layer back at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Layer, MAX_LAYERS};
use crate::ids::TrackId;

/// Spare bandwidth an upgrade needs, in percent of the new layer's bitrate. 15%: measured
/// layer bitrates swing by about that much between keyframes and deltas, so less would let a
/// keyframe burst push the receiver straight back down.
pub const DEFAULT_HEADROOM_PERCENT: u64 = 15;

/// How long after a bandwidth-forced down-switch a source may not go up again. 2 s: a few
/// bandwidth-estimate update periods, enough for the estimate to settle after the loss or
/// delay that lowered it, short enough that recovery is not noticeably slow.
pub const DEFAULT_UPGRADE_HOLD: Duration = Duration::from_secs(2);

/// Tuning of a [`LayerAllocator`]; `Default` holds the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectorConfig {
    pub headroom_percent: u64,
    pub upgrade_hold: Duration,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            headroom_percent: DEFAULT_HEADROOM_PERCENT,
            upgrade_hold: DEFAULT_UPGRADE_HOLD,
        }
    }
}

/// One layer of a source as the bridge currently sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerStats {
    /// Frame height in pixels.
    pub height: u32,
    /// Measured bitrate, bits per second. Simulcast layers are independent streams, so this is
    /// what forwarding the layer costs by itself.
    pub bitrate_bps: u64,
    /// Whether the publisher is sending it (browsers stop layers when their own uplink or CPU
    /// is short). An inactive layer is never chosen.
    pub active: bool,
}

/// A source to allocate for, in priority order within the slice given to
/// [`LayerAllocator::allocate`].
#[derive(Clone, Copy, Debug)]
pub struct SourceLayers<'a> {
    pub source: TrackId,
    /// The tallest picture the receiver wants of this source (its tile), in pixels; 0 = none.
    pub max_height: u32,
    /// The source's layers, lowest first: index `i` is layer `i`. Entries beyond
    /// [`MAX_LAYERS`] are ignored; a non-simulcast source has one.
    pub layers: &'a [LayerStats],
}

/// The layer chosen for one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub source: TrackId,
    /// What to forward: the target for this receiver's [`super::Rewriter`]; `None` = nothing.
    pub layer: Option<Layer>,
    /// What the constraints allow with unlimited bandwidth; `layer < ideal` means the receiver's
    /// bandwidth is the limit (for stats, and a reason to probe for more).
    pub ideal: Option<Layer>,
}

#[derive(Clone, Copy, Debug)]
struct SourceState {
    layer: Option<Layer>,
    last_forced_down: Option<Instant>,
}

/// Per-source working state of one allocation.
struct Plan {
    /// Bitrate of each layer the constraints allow, `None` for the others.
    allowed: [Option<u64>; MAX_LAYERS],
    previous: Option<Layer>,
    may_raise: bool,
    chosen: Option<Layer>,
}

impl Plan {
    fn cost(&self, layer: Option<Layer>) -> u64 {
        layer
            .and_then(|l| self.allowed.get(l.index()).copied().flatten())
            .unwrap_or(0)
    }

    fn is_allowed(&self, layer: Layer) -> bool {
        self.allowed.get(layer.index()).is_some_and(Option::is_some)
    }

    fn lowest_allowed(&self) -> Option<Layer> {
        Layer::all().find(|l| self.is_allowed(*l))
    }

    fn highest_allowed(&self, at_most: Option<Layer>) -> Option<Layer> {
        Layer::all()
            .rev()
            .filter(|l| Some(*l) <= at_most)
            .find(|l| self.is_allowed(*l))
    }
}

/// The layer allocation of one receiver. Deterministic: the same inputs at the same instants
/// give the same answers.
#[derive(Clone, Debug, Default)]
pub struct LayerAllocator {
    config: SelectorConfig,
    sources: HashMap<TrackId, SourceState>,
}

impl LayerAllocator {
    pub fn new(config: SelectorConfig) -> Self {
        LayerAllocator {
            config,
            sources: HashMap::new(),
        }
    }

    /// The layer last allocated to `source`.
    pub fn layer(&self, source: TrackId) -> Option<Layer> {
        self.sources.get(&source).and_then(|s| s.layer)
    }

    /// Allocates `available_bps` (the receiver's bandwidth estimate; `u64::MAX` when there is
    /// none, which allocates on constraints alone) over `sources`, highest priority first,
    /// each under `max_height` (the receiver-wide limit, e.g. its screen; `None` = no limit).
    ///
    /// Call it whenever an input changes (estimate, constraints, layers, speaker order). The
    /// answer is in the order of `sources`. Sources absent from `sources` are forgotten.
    pub fn allocate(
        &mut self,
        now: Instant,
        available_bps: u64,
        max_height: Option<u32>,
        sources: &[SourceLayers<'_>],
    ) -> Vec<Allocation> {
        let mut plans: Vec<Plan> = sources
            .iter()
            .map(|s| self.plan(now, max_height, s))
            .collect();
        let mut budget = available_bps;

        // Everyone's lowest layer first, in priority order.
        for plan in &mut plans {
            let Some(lowest) = plan.lowest_allowed() else {
                continue;
            };
            if let Some(cost) = self.cost_of_raise(plan, lowest, budget) {
                plan.chosen = Some(lowest);
                budget -= cost;
            }
        }
        // Then upgrades, in priority order, each source as far as the budget goes.
        for plan in &mut plans {
            let Some(base) = plan.chosen else {
                continue;
            };
            for layer in Layer::all().rev().filter(|l| *l > base) {
                if let Some(cost) = self.cost_of_raise(plan, layer, budget) {
                    plan.chosen = Some(layer);
                    budget -= cost;
                    break;
                }
            }
        }

        let mut next = HashMap::with_capacity(plans.len());
        let allocations = sources
            .iter()
            .zip(&plans)
            .map(|(s, plan)| {
                let ideal = plan.highest_allowed(Some(Layer::TOP));
                // Forced down by bandwidth: a layer the source had and the constraints still
                // allow was not affordable.
                let forced_down = plan.chosen < plan.highest_allowed(plan.previous);
                let last_forced_down = if forced_down {
                    Some(now)
                } else {
                    self.sources
                        .get(&s.source)
                        .and_then(|st| st.last_forced_down)
                };
                next.insert(
                    s.source,
                    SourceState {
                        layer: plan.chosen,
                        last_forced_down,
                    },
                );
                Allocation {
                    source: s.source,
                    layer: plan.chosen,
                    ideal,
                }
            })
            .collect();
        self.sources = next;
        allocations
    }

    fn plan(&self, now: Instant, max_height: Option<u32>, s: &SourceLayers<'_>) -> Plan {
        let cap = match max_height {
            Some(m) => s.max_height.min(m),
            None => s.max_height,
        };
        let mut allowed = [None; MAX_LAYERS];
        if cap > 0 {
            for (slot, l) in allowed.iter_mut().zip(s.layers) {
                if l.active && l.height <= cap {
                    *slot = Some(l.bitrate_bps);
                }
            }
            // Nothing small enough: the lowest active layer is still better than no picture
            // (a thumbnail of a publisher that only sends 360p and up).
            if allowed.iter().all(Option::is_none)
                && let Some((slot, l)) = allowed.iter_mut().zip(s.layers).find(|(_, l)| l.active)
            {
                *slot = Some(l.bitrate_bps);
            }
        }
        let state = self.sources.get(&s.source);
        Plan {
            allowed,
            previous: state.and_then(|st| st.layer),
            may_raise: state
                .and_then(|st| st.last_forced_down)
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.upgrade_hold),
            chosen: None,
        }
    }

    /// What moving `plan` from its current choice to `layer` takes from `budget`, or `None`
    /// if it may not: keeping a layer at or below the previous one needs its bitrate; going
    /// above it needs the headroom too and no recent forced down-switch.
    fn cost_of_raise(&self, plan: &Plan, layer: Layer, budget: u64) -> Option<u64> {
        let new = plan.allowed.get(layer.index()).copied().flatten()?;
        let current = plan.cost(plan.chosen);
        let cost = new.saturating_sub(current);
        let need = if plan.previous.is_some_and(|p| layer <= p) {
            cost
        } else {
            if !plan.may_raise {
                return None;
            }
            let with_headroom = new.saturating_mul(100 + self.config.headroom_percent) / 100;
            with_headroom.saturating_sub(current)
        };
        (need <= budget).then_some(cost.min(budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: LayerStats = LayerStats {
        height: 180,
        bitrate_bps: 150_000,
        active: true,
    };
    const H: LayerStats = LayerStats {
        height: 360,
        bitrate_bps: 500_000,
        active: true,
    };
    const F: LayerStats = LayerStats {
        height: 720,
        bitrate_bps: 1_500_000,
        active: true,
    };
    const ALL: [LayerStats; 3] = [Q, H, F];

    fn l(i: u8) -> Option<Layer> {
        Layer::new(i)
    }

    fn src(id: u32, max_height: u32, layers: &[LayerStats]) -> SourceLayers<'_> {
        SourceLayers {
            source: TrackId(id),
            max_height,
            layers,
        }
    }

    fn layers(a: &[Allocation]) -> Vec<Option<Layer>> {
        a.iter().map(|x| x.layer).collect()
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn constraints_alone() {
        let t0 = Instant::now();
        let mut a = LayerAllocator::default();
        let stage_only_high = [Q, H, LayerStats { active: false, ..F }];
        let no_low = [LayerStats { active: false, ..Q }, H, F];
        let single = [H];
        let sources = [
            src(1, 720, &ALL),
            src(2, 180, &ALL),
            src(3, 0, &ALL),
            src(4, 720, &stage_only_high),
            src(5, 180, &no_low),
            src(6, 1080, &single),
        ];
        let out = a.allocate(t0, u64::MAX, None, &sources);
        assert_eq!(layers(&out), vec![l(2), l(0), None, l(1), l(1), l(0)]);
        assert_eq!(
            out.iter().map(|x| x.ideal).collect::<Vec<_>>(),
            layers(&out)
        );
        assert_eq!(out[2].source, TrackId(3));
        // A receiver-wide limit caps every source.
        let out = a.allocate(t0, u64::MAX, Some(360), &sources);
        assert_eq!(layers(&out), vec![l(1), l(0), None, l(1), l(1), l(0)]);
        assert_eq!(a.layer(TrackId(1)), l(1));
        let out = a.allocate(t0, u64::MAX, Some(0), &sources);
        assert!(layers(&out).iter().all(Option::is_none));
    }

    #[test]
    fn lowest_layers_first_then_upgrades_by_priority() {
        let t0 = Instant::now();
        let sources = [src(1, 720, &ALL), src(2, 360, &ALL), src(3, 360, &ALL)];
        // Too little for everyone's lowest layer (150 kb/s + 15% each): priority decides.
        let out = LayerAllocator::default().allocate(t0, 400_000, None, &sources);
        assert_eq!(layers(&out), vec![l(0), l(0), None]);
        assert_eq!(out[2].ideal, l(1));
        // Lowest for all (450 k, 1.05 M left), then upgrades in order: the stage's 720p needs
        // 1.725 M - 150 k = 1.575 M, too much, so 360p (425 k with headroom, 350 k spent);
        // source 2's 360p fits the remaining 700 k, source 3's no longer fits the last 350 k.
        let out = LayerAllocator::default().allocate(t0, 1_500_000, None, &sources);
        assert_eq!(layers(&out), vec![l(1), l(1), l(0)]);
        // With 2 M everyone gets 360p (500 k left: still not enough for the stage's 720p).
        let out = LayerAllocator::default().allocate(t0, 2_000_000, None, &sources);
        assert_eq!(layers(&out), vec![l(1), l(1), l(1)]);
        // With 25 k more the stage's 720p fits, and it comes first: the others stay low.
        let out = LayerAllocator::default().allocate(t0, 2_025_000, None, &sources);
        assert_eq!(layers(&out), vec![l(2), l(0), l(0)]);
    }

    #[test]
    fn raising_needs_headroom_keeping_does_not() {
        let t0 = Instant::now();
        let mut a = LayerAllocator::default();
        let sources = [src(1, 720, &ALL)];
        // Exactly the 720p bitrate is not enough to go up to it.
        assert_eq!(
            layers(&a.allocate(t0, 1_500_000, None, &sources)),
            vec![l(1)]
        );
        assert_eq!(
            layers(&a.allocate(t0, 1_724_999, None, &sources)),
            vec![l(1)]
        );
        assert_eq!(
            layers(&a.allocate(t0, 1_725_000, None, &sources)),
            vec![l(2)]
        );
        // But it is enough to stay.
        assert_eq!(
            layers(&a.allocate(t0, 1_500_000, None, &sources)),
            vec![l(2)]
        );
        // One bit less and the layer goes at once.
        assert_eq!(
            layers(&a.allocate(t0, 1_499_999, None, &sources)),
            vec![l(1)]
        );
    }

    #[test]
    fn a_forced_down_switch_holds_upgrades_for_two_seconds() {
        let t0 = Instant::now();
        let mut a = LayerAllocator::default();
        let sources = [src(1, 720, &ALL), src(2, 180, &ALL)];
        assert_eq!(
            layers(&a.allocate(t0, 10_000_000, None, &sources)),
            vec![l(2), l(0)]
        );
        // The estimate collapses: down at once, to what it covers.
        let down = secs(t0, 5.0);
        assert_eq!(
            layers(&a.allocate(down, 700_000, None, &sources)),
            vec![l(1), l(0)]
        );
        // Plenty again, but within the hold the stage stays where it is.
        for s in [5.5, 6.0, 6.999] {
            let out = a.allocate(secs(t0, s), 10_000_000, None, &sources);
            assert_eq!(layers(&out), vec![l(1), l(0)], "at {s} s");
            assert_eq!(out[0].ideal, l(2));
        }
        assert_eq!(
            layers(&a.allocate(secs(t0, 7.0), 10_000_000, None, &sources)),
            vec![l(2), l(0)]
        );
        // A second drop restarts the hold, even to nothing.
        assert_eq!(
            layers(&a.allocate(secs(t0, 8.0), 100_000, None, &sources)),
            vec![None, None]
        );
        assert_eq!(
            layers(&a.allocate(secs(t0, 9.0), 10_000_000, None, &sources)),
            vec![None, None]
        );
        assert_eq!(
            layers(&a.allocate(secs(t0, 10.0), 10_000_000, None, &sources)),
            vec![l(2), l(0)]
        );
    }

    #[test]
    fn a_constraint_change_does_not_hold_upgrades() {
        let t0 = Instant::now();
        let mut a = LayerAllocator::default();
        assert_eq!(
            layers(&a.allocate(t0, u64::MAX, None, &[src(1, 720, &ALL)])),
            vec![l(2)]
        );
        // Moved to a thumbnail, then straight back to the stage.
        assert_eq!(
            layers(&a.allocate(t0, u64::MAX, None, &[src(1, 180, &ALL)])),
            vec![l(0)]
        );
        assert_eq!(
            layers(&a.allocate(t0, u64::MAX, None, &[src(1, 720, &ALL)])),
            vec![l(2)]
        );
        // Same when the publisher stops the layer for a moment.
        let paused = [Q, H, LayerStats { active: false, ..F }];
        assert_eq!(
            layers(&a.allocate(t0, u64::MAX, None, &[src(1, 720, &paused)])),
            vec![l(1)]
        );
        assert_eq!(
            layers(&a.allocate(t0, u64::MAX, None, &[src(1, 720, &ALL)])),
            vec![l(2)]
        );
    }

    #[test]
    fn forgets_absent_sources_and_is_deterministic() {
        let t0 = Instant::now();
        let sources = [src(1, 720, &ALL), src(2, 360, &ALL), src(3, 180, &ALL)];
        let run = || {
            let mut a = LayerAllocator::default();
            let mut outs = Vec::new();
            for (i, bw) in [3_000_000, 900_000, 5_000_000, 2_000_000]
                .iter()
                .enumerate()
            {
                outs.push(a.allocate(secs(t0, i as f64), *bw, None, &sources));
            }
            (a, outs)
        };
        let (mut a, outs) = run();
        assert_eq!(outs, run().1);
        a.allocate(t0, u64::MAX, None, &sources[..1]);
        assert_eq!(a.sources.len(), 1);
        assert_eq!(a.layer(TrackId(2)), None);
    }
}
