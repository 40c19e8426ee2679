//! A conference over several shards of one node: the shards that carry it link to each other
//! the way bridges do over Octo, through the in-process queues instead of the Octo socket.
//!
//! Each shard of such a conference is a bridge of it as far as the cascade goes: it announces
//! its own participants to the other shards of the conference, sends its publishers' media once
//! to each of them that hosts someone, answers their NACKs and keyframe requests from its own
//! caches, and forwards what it got from another shard to its own legs only, which keeps the
//! mesh loop-free as Octo's is. A shard is named on these links by a [`sibling_id`], a
//! `BridgeId` no real bridge can have (Octo ids are 1-255), so the cascade's tables (who hosts
//! whom, which track comes from where, who wants which layer) need no second kind of key.
//! Packets cross unsealed: they never leave the process.
//!
//! Other bridges still see one node. The gateway hands their packets of a spread conference to
//! every shard of it (feedback about a track only to the track's own shard, found from its
//! owner's id), and each shard sends its own participants' media and announcements through the
//! gateway as before; layer demand carries the sending shard, so an origin serves the highest
//! demand of a node's shards rather than the last one it heard (proto/octo.md, section 8.5).

use std::collections::HashMap;
use std::time::Instant;

use kaskade_octo::{BridgeId, Header, LinkCounter, MediaType, PacketMeta, PacketType};
use kaskade_sfu::ConferenceId;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::super::rxtime::{Input, Stamp};
use super::super::siblings::Handoff;
use super::OctoMessage;
use crate::demux::ShardIndex;
use crate::shards::ShardSet;

/// The `BridgeId` range of shards: above every Octo id (1-255).
const SIBLING_BASE: u32 = 0x0001_0000;

/// The name of shard `shard` on the links between shards.
pub(crate) fn sibling_id(shard: ShardIndex) -> BridgeId {
    BridgeId(SIBLING_BASE | u32::from(shard.0))
}

/// The shard a `BridgeId` names, if it names one.
pub(crate) fn sibling_of(id: BridgeId) -> Option<ShardIndex> {
    (id.0 & !0xff == SIBLING_BASE).then_some(ShardIndex((id.0 & 0xff) as u8))
}

/// One shard's links to the node's other shards.
pub(crate) struct Spread {
    me: ShardIndex,
    queues: Vec<mpsc::Sender<Handoff>>,
    /// Conferences that span more than this shard, with the shards they span (ours included
    /// when we carry it). A conference absent here lives on its home shard alone.
    span: HashMap<ConferenceId, ShardSet>,
    /// The RTP datagram being forwarded: where it came in and when, so a shard that forwards
    /// it on measures the time from its arrival at the node.
    pub(crate) stamp: Option<(Input, Stamp)>,
    sent: IntCounter,
    handoffs_out: IntCounter,
    full: IntCounter,
}

impl Spread {
    pub(crate) fn new(
        me: ShardIndex,
        queues: Vec<mpsc::Sender<Handoff>>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        Self {
            me,
            queues,
            span: HashMap::new(),
            stamp: None,
            sent: metrics.sibling_packets.clone(),
            handoffs_out: metrics.handoffs_out.clone(),
            full: metrics.octo_dropped.with_label_values(&["handoff_full"]),
        }
    }

    pub(crate) fn me(&self) -> ShardIndex {
        self.me
    }

    pub(crate) fn shards(&self) -> usize {
        self.queues.len()
    }

    /// The shard a conference starts on.
    pub(crate) fn home(&self, conference: ConferenceId) -> ShardIndex {
        super::super::siblings::conference_shard(conference.0, self.queues.len())
    }

    /// The shards that carry `conference` (its home alone unless it spans more).
    pub(crate) fn span(&self, conference: ConferenceId) -> ShardSet {
        self.span
            .get(&conference)
            .copied()
            .unwrap_or_else(|| ShardSet::one(self.home(conference)))
    }

    /// Whether `conference` spans more than one shard.
    pub(crate) fn is_spread(&self, conference: ConferenceId) -> bool {
        self.span.get(&conference).is_some_and(|s| s.len() > 1)
    }

    /// The shards of `conference` other than this one, as cascade peers.
    pub(crate) fn others(&self, conference: ConferenceId) -> impl Iterator<Item = BridgeId> + '_ {
        let me = self.me;
        self.span(conference)
            .iter()
            .filter(move |s| *s != me)
            .map(sibling_id)
    }

    /// Signaling says `conference` spans `shards` now; returns the shards newly added.
    pub(crate) fn set_span(&mut self, conference: ConferenceId, shards: ShardSet) -> ShardSet {
        let was = self.span(conference);
        if shards.is_empty() || shards == ShardSet::one(self.home(conference)) {
            self.span.remove(&conference);
        } else {
            self.span.insert(conference, shards);
        }
        ShardSet(shards.0 & !was.0)
    }

    /// Queues a packet for shard `to`, unsealed.
    pub(crate) fn send(&self, to: ShardIndex, meta: &PacketMeta, payload: &[u8]) {
        let Some(q) = self.queues.get(usize::from(to.0)) else {
            return;
        };
        if to == self.me {
            return;
        }
        let h = Handoff::Sibling {
            from: self.me,
            meta: *meta,
            payload: payload.to_vec(),
            stamp: self.stamp,
        };
        match q.try_send(h) {
            Ok(()) => self.sent.inc(),
            Err(_) => self.full.inc(),
        }
    }

    /// Hands shard `to` an Octo message this shard heard at `at`.
    fn hand_heard(&self, to: ShardIndex, header: Header, payload: Vec<u8>, at: Instant) {
        let Some(q) = self.queues.get(usize::from(to.0)) else {
            return;
        };
        let h = Handoff::Heard {
            header,
            payload,
            at,
        };
        match q.try_send(h) {
            Ok(()) => self.handoffs_out.inc(),
            Err(_) => self.full.inc(),
        }
    }
}

impl crate::shard::Shard {
    /// Signaling's news that `conference` spans `shards` now. A shard new to it hears of our
    /// participants, and of the other bridges' from the lowest shard that carried it, at once
    /// rather than at the next refresh; one that left loses them with their goodbyes (or, at
    /// worst, as soft state).
    pub(crate) fn set_span(&mut self, conference: ConferenceId, shards: ShardSet) {
        let Some(s) = self.octo.as_mut().and_then(|o| o.spread.as_mut()) else {
            return;
        };
        let me = s.me();
        let was = s.span(conference);
        let newcomers = ShardSet(s.set_span(conference, shards).0 & !ShardSet::one(me).0);
        if newcomers.is_empty() {
            return;
        }
        // One shard of those that carried the conference passes on what it heard.
        if was.first() == Some(me) {
            self.relay_remote(conference, newcomers);
        }
        let locals: Vec<kaskade_sfu::EndpointId> = self
            .core
            .get(conference)
            .map(|c| {
                c.participants()
                    .filter(|p| !p.remote)
                    .map(|p| p.id)
                    .collect()
            })
            .unwrap_or_default();
        for ep in locals {
            self.octo_announce(ep);
        }
    }

    /// Hands shards new to `conference` the other bridges' last announcements of it, as
    /// those bridges' own messages. Their next refresh is up to a second away, and until
    /// then the new shards would show their participants nobody from other bridges and drop
    /// that media as `not_announced`.
    fn relay_remote(&self, conference: ConferenceId, to: ShardSet) {
        let Some(octo) = self.octo.as_ref() else {
            return;
        };
        let Some(s) = octo.spread.as_ref() else {
            return;
        };
        let heard = octo
            .remote
            .iter()
            .filter(|(_, r)| r.conference == conference && sibling_of(r.bridge).is_none());
        for (ep, r) in heard {
            let m = OctoMessage::Participant {
                room: r.room.clone(),
                name: r.name.clone(),
                tracks: r.tracks.clone(),
            };
            let Ok(payload) = serde_json::to_vec(&m) else {
                continue;
            };
            let meta = super::octo_meta(PacketType::Message, MediaType::Data, conference, *ep);
            let header = meta.header(r.bridge, LinkCounter(0));
            for shard in to.iter() {
                s.hand_heard(shard, header, payload.clone(), r.last_seen);
            }
        }
    }

    /// Another bridge's announcement that another shard heard at `at`: taken as if from the
    /// gateway, but as old as it is, so a bridge that has gone silent expires here when it
    /// does on the shard that passed it on.
    pub(crate) fn on_heard(&mut self, now: Instant, header: Header, payload: &[u8], at: Instant) {
        let endpoint = kaskade_sfu::EndpointId(header.endpoint.0);
        let seen = |s: &Self| {
            s.octo
                .as_ref()
                .and_then(|o| o.remote.get(&endpoint))
                .filter(|r| r.bridge == header.sender)
                .map(|r| r.last_seen)
        };
        let before = seen(self);
        self.on_octo_packet(now, header, payload);
        if seen(self).is_some()
            && let Some(r) = self.octo.as_mut().and_then(|o| o.remote.get_mut(&endpoint))
        {
            r.last_seen = before.map_or(at, |b| b.max(at));
        }
    }

    /// What this shard holds that another shard counts in the node's gauges: the other
    /// shards' participants and their tracks, and the spread conferences (with their other
    /// bridges' participants) whose first shard is another one (participants, tracks,
    /// conferences).
    pub(crate) fn counted_elsewhere(&self) -> (usize, usize, usize) {
        let Some(octo) = self.octo.as_ref() else {
            return (0, 0, 0);
        };
        let Some(s) = octo.spread.as_ref() else {
            return (0, 0, 0);
        };
        let (mut participants, mut tracks) = (0, 0);
        let not_first = |c: ConferenceId| s.is_spread(c) && s.span(c).first() != Some(s.me());
        for (ep, r) in &octo.remote {
            if (sibling_of(r.bridge).is_some() || not_first(r.conference))
                && let Some(p) = self.core.participant(*ep)
            {
                participants += 1;
                tracks += p.tracks.len();
            }
        }
        let conferences = self.core.iter().filter(|c| not_first(c.id)).count();
        (participants, tracks, conferences)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_never_name_a_bridge() {
        for b in 0..=255u32 {
            assert_eq!(sibling_of(BridgeId(b)), None, "Octo id {b}");
        }
        for s in 0..32u8 {
            let id = sibling_id(ShardIndex(s));
            assert!(id.0 > 255);
            assert_eq!(sibling_of(id), Some(ShardIndex(s)));
        }
        assert_eq!(sibling_of(BridgeId(0x0002_0001)), None);
    }

    #[test]
    fn a_span_that_shrinks_to_its_home_is_forgotten() {
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let queues = (0..3).map(|_| mpsc::channel(4).0).collect();
        let mut s = Spread::new(ShardIndex(1), queues, &metrics);
        let c = ConferenceId(5); // home: 5 % 3 = 2
        assert_eq!(s.span(c), ShardSet::one(ShardIndex(2)));
        assert!(!s.is_spread(c));
        let added = s.set_span(c, ShardSet(0b110));
        assert_eq!(added, ShardSet(0b010), "shard 1 joined");
        assert!(s.is_spread(c));
        assert_eq!(
            s.others(c).collect::<Vec<_>>(),
            vec![sibling_id(ShardIndex(2))]
        );
        s.set_span(c, ShardSet(0b100));
        assert!(!s.is_spread(c));
        assert!(s.span.is_empty());
        // Its home gone too, one other shard left: it is remembered (its home is not it).
        s.set_span(c, ShardSet(0b001));
        assert_eq!(s.span(c), ShardSet(0b001));
    }
}
