//! Bridge selection: where a joining participant goes. Pure functions of a snapshot of the
//! node registry, the conference's current hosts and `now`.
//!
//! The `region` strategy is Jicofo's region-based order (DESIGN.md section 6). Each rule
//! picks the least stressed bridge among those it admits; the first rule that admits any
//! bridge decides:
//!
//! 1. a bridge of the conference, in the participant's region, not overloaded;
//! 2. a bridge in the participant's region, not overloaded;
//! 3. a bridge of the conference, not overloaded;
//! 4. any bridge not overloaded;
//! 5. a bridge of the conference still under the per-bridge participant cap;
//! 6. the least stressed bridge.
//!
//! Stress is the node's own (seconds old) plus 0.01 for each participant placed on it in the
//! last 20 s ([`Placements`]): without it a burst of joins herds onto the bridge that looked
//! emptiest when it last reported.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use crate::node::{NodeId, NodeRecord};

/// How a conference is spread over bridges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A conference stays on one bridge (seed 000's sharding; HAProxy routes by room).
    Single,
    /// Jicofo's region-based order: each participant near its own region's bridge.
    #[default]
    Region,
    /// Spread a conference over as many bridges as possible (for testing cascades).
    Split,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Single => "single",
            Strategy::Region => "region",
            Strategy::Split => "split",
        }
    }
}

/// The rule that decided a selection; `as_str` is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    ConferenceInRegion,
    InRegion,
    InConference,
    NotOverloaded,
    ConferenceUnderCap,
    LeastLoaded,
    /// `single`: the conference's one bridge.
    SingleHost,
    /// `split`: the bridge with fewest of this conference's participants.
    Spread,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::ConferenceInRegion,
        Rule::InRegion,
        Rule::InConference,
        Rule::NotOverloaded,
        Rule::ConferenceUnderCap,
        Rule::LeastLoaded,
        Rule::SingleHost,
        Rule::Spread,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ConferenceInRegion => "conference_in_region",
            Rule::InRegion => "in_region",
            Rule::InConference => "in_conference",
            Rule::NotOverloaded => "not_overloaded",
            Rule::ConferenceUnderCap => "conference_under_cap",
            Rule::LeastLoaded => "least_loaded",
            Rule::SingleHost => "single_host",
            Rule::Spread => "spread",
        }
    }
}

/// The knobs of selection (config keys under `[cluster]`).
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionParams {
    pub strategy: Strategy,
    /// Stress at or above which a bridge is overloaded.
    pub overload_stress: f64,
    /// Participants of one conference a bridge takes before it counts as overloaded for it.
    pub max_participants_per_bridge: u32,
}

impl Default for SelectionParams {
    fn default() -> Self {
        Self {
            strategy: Strategy::Region,
            overload_stress: 0.8,
            max_participants_per_bridge: 80,
        }
    }
}

/// The outcome: a bridge and the rule that chose it.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub node: NodeId,
    pub rule: Rule,
}

/// Participants placed recently, per bridge and conference: the correction of a directory
/// that is up to a heartbeat old (stress, and who hosts a conference).
#[derive(Debug, Default)]
pub struct Placements {
    /// Per bridge: when, and into which conference (its 32-bit id), oldest first.
    recent: HashMap<NodeId, VecDeque<(u64, u32)>>,
}

impl Placements {
    /// A placement counts this long.
    pub const WINDOW_MS: u64 = 20_000;
    /// Stress added per recent placement.
    pub const STRESS_PER_PLACEMENT: f64 = 0.01;
    /// How long a placement may take to show in the directory's host counts: the join itself
    /// (a redirected client reconnects) and the host's next heartbeat.
    pub const PENDING_MS: u64 = 2 * crate::node::HEARTBEAT_MS;

    pub fn record(&mut self, node: &NodeId, conference: u32, now_ms: u64) {
        self.recent
            .entry(node.clone())
            .or_default()
            .push_back((now_ms, conference));
        self.expire(now_ms);
    }

    /// Recent placements on `node` at `now_ms`.
    pub fn count(&self, node: &NodeId, now_ms: u64) -> usize {
        self.recent.get(node).map_or(0, |q| {
            q.iter()
                .filter(|(t, _)| now_ms.saturating_sub(*t) < Self::WINDOW_MS)
                .count()
        })
    }

    /// Participants of `conference` placed on `node` too recently for the directory to show
    /// them. Once it does they count twice for the rest of [`Self::PENDING_MS`], which errs
    /// towards a bridge looking fuller than it is for a second.
    pub fn pending(&self, node: &NodeId, conference: u32, now_ms: u64) -> u32 {
        self.recent.get(node).map_or(0, |q| {
            q.iter()
                .filter(|(t, c)| *c == conference && now_ms.saturating_sub(*t) < Self::PENDING_MS)
                .count() as u32
        })
    }

    fn expire(&mut self, now_ms: u64) {
        self.recent.retain(|_, q| {
            while q
                .front()
                .is_some_and(|(t, _)| now_ms.saturating_sub(*t) >= Self::WINDOW_MS)
            {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// The stress selection uses for `node`.
    pub fn corrected_stress(&self, node: &NodeRecord, now_ms: u64) -> f64 {
        node.stress + Self::STRESS_PER_PLACEMENT * self.count(&node.id, now_ms) as f64
    }
}

struct Candidate<'a> {
    node: &'a NodeRecord,
    stress: f64,
    /// This conference's participants on the bridge (0: not a host).
    here: u32,
    hosts: bool,
}

/// Chooses the bridge for a participant of conference `conference` (its 32-bit id) from the
/// participant's region.
///
/// `nodes` is the registry snapshot (unselectable records are skipped here); `hosts` maps
/// each bridge of the conference to its participant count there, as the directory last
/// heard; `placements` adds this bridge's own placements the directory cannot show yet, so
/// a burst of joins sees the ones before it. `None` only when no bridge is selectable at all.
pub fn select(
    nodes: &[NodeRecord],
    hosts: &HashMap<NodeId, u32>,
    conference: u32,
    region: &str,
    params: &SelectionParams,
    placements: &Placements,
    now_ms: u64,
) -> Option<Selection> {
    let candidates: Vec<Candidate<'_>> = nodes
        .iter()
        .filter(|n| n.selectable(now_ms))
        .map(|n| {
            let pending = placements.pending(&n.id, conference, now_ms);
            Candidate {
                node: n,
                stress: placements.corrected_stress(n, now_ms),
                here: hosts.get(&n.id).copied().unwrap_or(0) + pending,
                hosts: hosts.contains_key(&n.id) || pending > 0,
            }
        })
        .collect();
    let overloaded = |c: &Candidate<'_>| {
        c.stress >= params.overload_stress || c.here >= params.max_participants_per_bridge
    };
    let under_cap = |c: &Candidate<'_>| c.here < params.max_participants_per_bridge;
    let pick = |rule: Rule, admit: &dyn Fn(&Candidate<'_>) -> bool| {
        least_stressed(candidates.iter().filter(|c| admit(c))).map(|c| Selection {
            node: c.node.id.clone(),
            rule,
        })
    };
    match params.strategy {
        Strategy::Single => {
            // Where the conference already is, unless that bridge is gone or draining.
            pick(Rule::SingleHost, &|c| c.hosts)
                .or_else(|| pick(Rule::NotOverloaded, &|c| !overloaded(c)))
                .or_else(|| pick(Rule::LeastLoaded, &|_| true))
        }
        Strategy::Split => candidates
            .iter()
            .filter(|c| !overloaded(c))
            .min_by(|a, b| {
                a.here
                    .cmp(&b.here)
                    .then(a.stress.total_cmp(&b.stress))
                    .then_with(|| a.node.id.cmp(&b.node.id))
            })
            .map(|c| Selection {
                node: c.node.id.clone(),
                rule: Rule::Spread,
            })
            .or_else(|| pick(Rule::ConferenceUnderCap, &|c| c.hosts && under_cap(c)))
            .or_else(|| pick(Rule::LeastLoaded, &|_| true)),
        Strategy::Region => {
            let in_region = |c: &Candidate<'_>| c.node.region == region;
            pick(Rule::ConferenceInRegion, &|c| {
                c.hosts && in_region(c) && !overloaded(c)
            })
            .or_else(|| pick(Rule::InRegion, &|c| in_region(c) && !overloaded(c)))
            .or_else(|| pick(Rule::InConference, &|c| c.hosts && !overloaded(c)))
            .or_else(|| pick(Rule::NotOverloaded, &|c| !overloaded(c)))
            .or_else(|| pick(Rule::ConferenceUnderCap, &|c| c.hosts && under_cap(c)))
            .or_else(|| pick(Rule::LeastLoaded, &|_| true))
        }
    }
}

/// Lowest stress; ties go to the lower id, so every node decides alike on the same snapshot.
fn least_stressed<'a, 'b>(it: impl Iterator<Item = &'b Candidate<'a>>) -> Option<&'b Candidate<'a>>
where
    'a: 'b,
{
    it.min_by(|a, b| {
        a.stress
            .total_cmp(&b.stress)
            .then_with(|| a.node.id.cmp(&b.node.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{STALE_AFTER_MS, record};

    const NOW: u64 = 1_000_000;

    fn fleet() -> Vec<NodeRecord> {
        vec![
            record("eu-1", "eu", 0.30, NOW),
            record("eu-2", "eu", 0.10, NOW),
            record("us-1", "us", 0.05, NOW),
            record("ap-1", "ap", 0.20, NOW),
        ]
    }

    fn sel(
        nodes: &[NodeRecord],
        hosts: &[(&str, u32)],
        region: &str,
        params: &SelectionParams,
    ) -> Option<(String, Rule)> {
        let hosts = hosts.iter().map(|(n, c)| (NodeId::from(*n), *c)).collect();
        select(
            nodes,
            &hosts,
            7,
            region,
            params,
            &Placements::default(),
            NOW,
        )
        .map(|s| (s.node.0, s.rule))
    }

    #[test]
    fn region_order_rule_by_rule() {
        let p = SelectionParams::default();
        let mut f = fleet();
        // 1: the conference's bridge in the region, though another there is emptier.
        assert_eq!(
            sel(&f, &[("eu-1", 3), ("us-1", 2)], "eu", &p),
            Some(("eu-1".into(), Rule::ConferenceInRegion))
        );
        // 2: no conference bridge in the region: the least stressed one of the region.
        assert_eq!(
            sel(&f, &[("us-1", 2)], "eu", &p),
            Some(("eu-2".into(), Rule::InRegion))
        );
        // 3: nothing in the region: a conference bridge rather than an emptier stranger.
        assert_eq!(
            sel(&f, &[("ap-1", 2)], "sa", &p),
            Some(("ap-1".into(), Rule::InConference))
        );
        // 4: new conference, unknown region: the least stressed bridge.
        assert_eq!(
            sel(&f, &[], "sa", &p),
            Some(("us-1".into(), Rule::NotOverloaded))
        );
        // The region's bridges overloaded: a conference bridge elsewhere.
        for n in f.iter_mut().filter(|n| n.region == "eu") {
            n.stress = 0.85;
        }
        assert_eq!(
            sel(&f, &[("eu-1", 3), ("ap-1", 1)], "eu", &p),
            Some(("ap-1".into(), Rule::InConference))
        );
        // 5: everything overloaded: a conference bridge still under the cap.
        for n in f.iter_mut() {
            n.stress = 0.9;
        }
        f[0].stress = 0.95;
        assert_eq!(
            sel(&f, &[("eu-1", 3)], "eu", &p),
            Some(("eu-1".into(), Rule::ConferenceUnderCap))
        );
        // 6: and with the conference at its cap there: the least stressed of all.
        assert_eq!(
            sel(&f, &[("eu-1", 80)], "eu", &p).map(|s| s.1),
            Some(Rule::LeastLoaded)
        );
    }

    #[test]
    fn per_bridge_cap_overloads_for_that_conference_only() {
        let p = SelectionParams {
            max_participants_per_bridge: 4,
            ..SelectionParams::default()
        };
        let f = fleet();
        assert_eq!(
            sel(&f, &[("eu-1", 4)], "eu", &p),
            Some(("eu-2".into(), Rule::InRegion))
        );
        assert_eq!(
            sel(&f, &[("eu-1", 3)], "eu", &p),
            Some(("eu-1".into(), Rule::ConferenceInRegion))
        );
    }

    #[test]
    fn stale_and_draining_nodes_are_never_chosen() {
        let p = SelectionParams::default();
        let mut f = fleet();
        f[1].updated_ms = NOW - STALE_AFTER_MS - 1; // eu-2
        f[0].draining = true; // eu-1
        // The region has nobody selectable, and a draining host is no host.
        assert_eq!(
            sel(&f, &[("eu-1", 5)], "eu", &p),
            Some(("us-1".into(), Rule::NotOverloaded))
        );
        for n in f.iter_mut() {
            n.draining = true;
        }
        assert_eq!(sel(&f, &[], "eu", &p), None);
    }

    #[test]
    fn recent_placements_stop_a_herd() {
        let p = SelectionParams::default();
        let f = vec![
            record("a", "eu", 0.10, NOW),
            record("b", "eu", 0.12, NOW),
            record("c", "eu", 0.14, NOW),
        ];
        let mut placements = Placements::default();
        let mut count: HashMap<String, u32> = HashMap::new();
        // 30 joins of 30 different conferences within one second, stress never refreshed.
        for i in 0..30u64 {
            let now = NOW + i * 33;
            let conference = i as u32 + 1;
            let s = select(&f, &HashMap::new(), conference, "eu", &p, &placements, now)
                .unwrap_or_else(|| unreachable!("a selectable node exists"));
            placements.record(&s.node, conference, now);
            *count.entry(s.node.0).or_default() += 1;
        }
        // Without the correction all 30 would land on "a".
        for n in ["a", "b", "c"] {
            let c = count.get(n).copied().unwrap_or(0);
            assert!((8..=12).contains(&c), "{n} got {c} of 30: {count:?}");
        }
        // The correction fades after 20 s.
        assert_eq!(placements.count(&"a".into(), NOW + 40_000), 0);
        let later: Vec<NodeRecord> = f
            .iter()
            .map(|n| NodeRecord {
                updated_ms: NOW + 40_000,
                ..n.clone()
            })
            .collect();
        assert_eq!(
            select(
                &later,
                &HashMap::new(),
                99,
                "eu",
                &p,
                &placements,
                NOW + 40_000
            )
            .map(|s| s.node.0),
            Some("a".into())
        );
    }

    #[test]
    fn single_keeps_a_conference_on_its_bridge() {
        let p = SelectionParams {
            strategy: Strategy::Single,
            ..SelectionParams::default()
        };
        let mut f = fleet();
        assert_eq!(
            sel(&f, &[("ap-1", 10)], "eu", &p),
            Some(("ap-1".into(), Rule::SingleHost))
        );
        // Even when that bridge is loaded: one bridge per conference is the point.
        f[3].stress = 0.95;
        assert_eq!(
            sel(&f, &[("ap-1", 10)], "eu", &p),
            Some(("ap-1".into(), Rule::SingleHost))
        );
        // New conference: the least stressed bridge, whatever the region.
        assert_eq!(
            sel(&f, &[], "eu", &p),
            Some(("us-1".into(), Rule::NotOverloaded))
        );
        // Its bridge gone: the conference restarts elsewhere.
        f[3].draining = true;
        assert_eq!(
            sel(&f, &[("ap-1", 10)], "eu", &p),
            Some(("us-1".into(), Rule::NotOverloaded))
        );
    }

    #[test]
    fn split_spreads_a_conference() {
        let p = SelectionParams {
            strategy: Strategy::Split,
            ..SelectionParams::default()
        };
        let f = fleet();
        let mut hosts: HashMap<NodeId, u32> = HashMap::new();
        for _ in 0..8 {
            let s = select(&f, &hosts, 7, "eu", &p, &Placements::default(), NOW)
                .unwrap_or_else(|| unreachable!());
            assert_eq!(s.rule, Rule::Spread);
            *hosts.entry(s.node).or_default() += 1;
        }
        assert_eq!(hosts.len(), 4, "{hosts:?}");
        assert!(hosts.values().all(|c| *c == 2), "{hosts:?}");
    }

    /// Joins faster than heartbeats: the directory still shows nobody in the room, and stress
    /// says one bridge is idle. What this bridge placed itself counts at once.
    #[test]
    fn a_burst_of_joins_sees_its_own_placements() {
        let f = vec![
            record("a", "eu", 0.02, NOW),
            record("b", "eu", 0.04, NOW),
            record("c", "us", 0.12, NOW),
        ];
        let none = HashMap::new();
        let burst = |p: &SelectionParams, region: &str| {
            let mut placements = Placements::default();
            let mut count: HashMap<String, u32> = HashMap::new();
            for i in 0..6u64 {
                let now = NOW + i * 100;
                let s = select(&f, &none, 7, region, p, &placements, now)
                    .unwrap_or_else(|| unreachable!("a selectable node exists"));
                placements.record(&s.node, 7, now);
                *count.entry(s.node.0).or_default() += 1;
            }
            (count, placements)
        };
        // split: two each, though stress alone would put four of six on "a" and none on "c".
        let split = SelectionParams {
            strategy: Strategy::Split,
            ..SelectionParams::default()
        };
        let (count, placements) = burst(&split, "eu");
        assert!(count.values().all(|c| *c == 2), "{count:?}");
        // region: the room stays together on the region's bridge of its first join, rather
        // than moving to "b" once "a"'s corrected stress passes it.
        let (count, _) = burst(&SelectionParams::default(), "eu");
        assert_eq!(count.get("a"), Some(&6), "{count:?}");
        // Once the directory can show them, placements no longer count as hosts.
        let later = NOW + 500 + Placements::PENDING_MS;
        assert_eq!(placements.pending(&"a".into(), 7, later), 0);
        assert_eq!(
            placements.pending(&"a".into(), 8, NOW + 500),
            0,
            "another room"
        );
    }

    #[test]
    fn rule_labels_are_distinct() {
        let mut labels: Vec<_> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Rule::ALL.len());
    }
}
