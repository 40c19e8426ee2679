//! The cascade: this shard's side of the Octo links to the other bridges (proto/octo.md).
//!
//! What each bridge hosts is announced as soft state: every local participant, with its
//! tracks, is announced to every peer once a second and on every change; a peer that stops
//! announcing a participant for [`REMOTE_EXPIRY`] loses it, so a crashed bridge's participants
//! disappear without anyone cleaning up. Media of a local track goes once to each peer that
//! hosts someone in the conference; media that arrived over Octo is only ever forwarded to local
//! legs, which keeps the full mesh loop-free.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kaskade_octo::{
    BridgeId, Control, LinkCounter, LinkSecurity, MediaType, OpenError, Opener, PacketMeta,
    PacketType, Sealer,
};
use kaskade_sfu::{ConferenceId, EndpointId, SeqNo, Ssrc, TrackId, TrackKind};
use prometheus::{Gauge, IntCounter};
use rtc::shared::marshal::{Marshal, Unmarshal};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use kaskade_sfu::simulcast::{Layer, LayerStats};

use super::{DemandFrom, GaugeShares, Origin, Shard, Source, simulcast::LayerIn};

mod egress;
mod ended;
mod ingress;
mod remote;
mod repair;
pub(crate) mod spread;
use crate::config::{OctoConfig, RepairMode};
use crate::messages::{ParticipantInfo, ServerMsg, TrackInfo};
use crate::metrics::Metrics;
use crate::shards::ShardSet;

/// Announcements are refreshed this often.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// A remote participant not announced for this long is gone. With the one-second
/// housekeeping tick, a crashed bridge's participants disappear within 4 s.
pub const REMOTE_EXPIRY: Duration = Duration::from_secs(3);
/// The RTP header extension id of the audio level on Octo (one-byte form).
pub const OCTO_AUDIO_LEVEL_ID: u8 = 1;
/// Authentication failures are logged at most this often.
const AUTH_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Largest chat line relayed.
pub const MAX_CHAT_CHARS: usize = 1000;

/// Octo message payloads (packet type "message"): one UTF-8 JSON object each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OctoMessage {
    /// A participant of the sending bridge (the header's endpoint), with its tracks.
    Participant {
        room: String,
        name: String,
        tracks: Vec<OctoTrack>,
    },
    /// The participant (header endpoint) left.
    Bye,
    /// A chat line from the participant (header endpoint).
    Chat { name: String, text: String },
    /// The layers of simulcast tracks the sender's receivers need, for tracks the receiving
    /// bridge is the origin of (header endpoint 0; proto/octo.md section 8.5).
    LayerDemand {
        tracks: Vec<OctoDemand>,
        /// The sending node's shard whose receivers these are (absent: the node's only one);
        /// the origin serves the highest demand of a node's shards.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shard: Option<u8>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OctoTrack {
    /// The origin's track id (`TR` + 8 hex digits).
    pub id: String,
    pub kind: String,
    /// The SSRC the origin sends this track with on Octo (its lowest layer's, with simulcast).
    pub ssrc: u32,
    /// Simulcast layers, lowest first; absent without simulcast.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<OctoLayer>,
    /// An administrator muted it at its origin (which then sends none of it); absent: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

/// One simulcast layer of an announced track, as its origin measures it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OctoLayer {
    pub rid: String,
    /// The SSRC this layer is sent with on Octo.
    pub ssrc: u32,
    /// Frame height in pixels (0 while unknown).
    pub height: u32,
    /// Bits per second over the last second.
    pub bitrate: u64,
    /// Whether the publisher is sending it.
    pub active: bool,
}

/// One entry of a [`OctoMessage::LayerDemand`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OctoDemand {
    /// The origin's track id.
    pub id: String,
    /// The highest layer needed (0 = lowest); `null` = none.
    pub max_layer: Option<u8>,
}

/// Most entries a demand message carries (more are split over several messages).
const MAX_DEMAND_ENTRIES: usize = 64;

pub(crate) struct Peer {
    pub(crate) name: String,
    pub(crate) region: String,
    pub(crate) addr: SocketAddr,
    sealer: Sealer,
    packets_in: IntCounter,
    bytes_in: IntCounter,
    packets_out: IntCounter,
    bytes_out: IntCounter,
    rtt: Gauge,
}

impl Peer {
    /// The link's RTT, once a ping was answered (measured by the node's gateway shard; the
    /// gauge is shared by the node's shards).
    pub(crate) fn measured_rtt(&self) -> Option<Duration> {
        let secs = self.rtt.get();
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }
}

/// A participant another bridge hosts, as last announced.
pub(crate) struct RemoteParticipant {
    pub(crate) bridge: BridgeId,
    pub(crate) conference: ConferenceId,
    pub(crate) room: String,
    pub(crate) name: String,
    pub(crate) tracks: Vec<OctoTrack>,
    pub(crate) last_seen: Instant,
}

pub(crate) struct Cascade {
    opener: Opener,
    security: LinkSecurity,
    local: BridgeId,
    /// Ids of `[[octo.peers]]`, which the directory never removes.
    static_peers: Vec<BridgeId>,
    pub(crate) peers: HashMap<BridgeId, Peer>,
    pub(crate) remote: HashMap<EndpointId, RemoteParticipant>,
    /// Peers hosting someone in each conference: where local media goes.
    pub(crate) conference_peers: HashMap<ConferenceId, Vec<BridgeId>>,
    /// (origin bridge, origin SSRC) -> local track and layer.
    pub(crate) by_ssrc: HashMap<(BridgeId, u32), (TrackId, Layer)>,
    pub(crate) out: Vec<(SocketAddr, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    epoch: Instant,
    next_announce: Instant,
    last_auth_warning: Option<Instant>,
    /// `octo.layer_suppression`: simulcast layers go only to peers that need them.
    layer_suppression: bool,
    /// Per (peer, Octo SSRC of a local stream): when each packet was last resent to that
    /// peer. Peers send each NACK twice (a lost NACK would cost a whole retry
    /// interval), so the second copy must find the packet already resent.
    resend_guards: HashMap<(BridgeId, u32), kaskade_sfu::ResendGuard>,
    /// `octo.repair_copy_ms`: how long after a resend its copy goes out (`None`: no copies).
    repair_copy_after: Option<Duration>,
    /// Copies of resends waiting for their time, oldest first.
    repair_copies: std::collections::VecDeque<RepairCopy>,
    /// On a shard other than the node's Octo gateway: where its packets go to be sealed.
    relay: Option<Relay>,
    /// On a node of several shards: the links to the others, for conferences spread over them.
    pub(crate) spread: Option<spread::Spread>,
    /// Tracks that ended a moment ago, to tell their late packets from unknown ones.
    ended: ended::Ended,
}

/// The way to the Octo gateway of a node of several shards.
pub(in crate::shard) struct Relay {
    queue: tokio::sync::mpsc::Sender<super::siblings::Handoff>,
    /// Packets dropped because the gateway's queue was full.
    full: IntCounter,
}

/// A resend to send again (see `octo.repair_copy_ms`): sealed only when due, since each
/// datagram needs its own link counter.
struct RepairCopy {
    due: Instant,
    peer: BridgeId,
    meta: PacketMeta,
    rtp: Vec<u8>,
}

/// A NACK on an Octo link (first or retry) is sent again this much later, in case it was lost:
/// with 5% loss each way, one repair in ten otherwise waits a whole retry interval.
const NACK_COPY_AFTER: Duration = Duration::from_millis(10);

/// A remote video frame left open (no marker yet) this long means its tail was lost: ask
/// for the next packet without waiting for the next frame to show the gap. Above the
/// spacing of a paced frame's packets (1-2 ms in Chrome) plus link jitter; checked every
/// NACK tick, so a probe goes out 10-15 ms after the last packet.
const TAIL_PROBE_AFTER: Duration = Duration::from_millis(10);

fn wallclock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}

impl Cascade {
    pub(crate) fn new(
        config: &OctoConfig,
        metrics: &Metrics,
        now: Instant,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let security = if config.plaintext {
            warn!("Octo links are PLAINTEXT: no encryption, no authentication");
            LinkSecurity::Plaintext
        } else {
            let suite = kaskade_octo::Suite::from_name(&config.suite)
                .context("octo.suite: unknown AEAD suite")?;
            LinkSecurity::encrypted(suite, config.secret.as_bytes())
                .map_err(|e| anyhow::anyhow!("octo.secret: {e}"))?
        };
        let mut c = Self::empty(security, BridgeId(config.bridge_id), now);
        c.static_peers = config.peers.iter().map(|p| BridgeId(p.id)).collect();
        c.layer_suppression = config.layer_suppression;
        c.repair_copy_after =
            (config.repair_copy_ms > 0).then(|| Duration::from_millis(config.repair_copy_ms));
        for p in &config.peers {
            c.add_peer(p, metrics)
                .map_err(|e| anyhow::anyhow!("octo peer {}: {e}", p.name))?;
        }
        Ok(c)
    }

    /// The cascade of a shard of a node without Octo: links to the node's other shards only.
    pub(crate) fn for_shards(now: Instant) -> Self {
        Self::empty(LinkSecurity::Plaintext, BridgeId(0), now)
    }

    /// A cascade with no links yet.
    fn empty(security: LinkSecurity, local: BridgeId, now: Instant) -> Self {
        Self {
            opener: Opener::new(security.clone(), local),
            security,
            local,
            static_peers: Vec::new(),
            peers: HashMap::new(),
            remote: HashMap::new(),
            conference_peers: HashMap::new(),
            by_ssrc: HashMap::new(),
            out: Vec::new(),
            spare: Vec::new(),
            scratch: vec![0u8; kaskade_octo::MAX_DATAGRAM_LEN],
            epoch: now,
            next_announce: now,
            last_auth_warning: None,
            layer_suppression: true,
            resend_guards: HashMap::new(),
            repair_copy_after: None,
            repair_copies: std::collections::VecDeque::new(),
            relay: None,
            spread: None,
            ended: ended::Ended::default(),
        }
    }

    /// The shards of this node an opened Octo packet is for: feedback about a track (RTCP)
    /// to the shard of its owner, found from the owner's id (its lane), the rest to every
    /// shard that carries the conference.
    pub(in crate::shard) fn shards_for(&self, header: &kaskade_octo::Header) -> ShardSet {
        let Some(s) = self.spread.as_ref() else {
            return ShardSet::default();
        };
        let conference = ConferenceId(header.conference.0);
        let owner = header.endpoint.0;
        if header.packet_type == PacketType::Rtcp && owner >> 24 == self.local.0 {
            let lane = (owner & 0x00ff_ffff) as usize % s.shards().max(1);
            return ShardSet::one(crate::demux::ShardIndex(lane as u8));
        }
        s.span(conference)
    }

    /// A track left this bridge's tables: `origin` is the bridge whose RTP carried it on Octo
    /// (`None`: ours), `ssrcs` what that RTP and feedback about it name it by.
    pub(in crate::shard) fn track_ended(
        &mut self,
        now: Instant,
        origin: Option<BridgeId>,
        track: TrackId,
        ssrcs: impl IntoIterator<Item = u32>,
    ) {
        let bridge = origin.unwrap_or(self.local);
        self.ended.note(now, ended::EndedKey::Track(track));
        for ssrc in ssrcs {
            self.ended.note(now, ended::EndedKey::Ssrc(bridge, ssrc));
        }
    }

    /// The drop reason for a packet from `sender` naming `ssrc` (`sender` `None`: one of
    /// ours), which no track here has.
    pub(in crate::shard) fn no_track(
        &self,
        now: Instant,
        sender: Option<BridgeId>,
        ssrc: u32,
    ) -> &'static str {
        let bridge = sender.unwrap_or(self.local);
        self.ended.reason(now, ended::EndedKey::Ssrc(bridge, ssrc))
    }

    /// The drop reason for layer demand about `track`, which is not ours.
    pub(in crate::shard) fn no_demanded_track(&self, now: Instant, track: TrackId) -> &'static str {
        self.ended.reason(now, ended::EndedKey::Track(track))
    }

    /// Whether `conference` spans several shards of this node.
    pub(in crate::shard) fn is_spread(&self, conference: ConferenceId) -> bool {
        self.spread
            .as_ref()
            .is_some_and(|s| s.is_spread(conference))
    }

    /// Where a message about a participant of `conference` goes: every peer bridge, and with
    /// `shards_too` the other shards that carry the conference.
    fn message_targets(&self, conference: ConferenceId, shards_too: bool) -> Vec<BridgeId> {
        let mut v: Vec<BridgeId> = self.peers.keys().copied().collect();
        if let Some(s) = self.spread.as_ref().filter(|_| shards_too) {
            v.extend(s.others(conference));
        }
        v
    }

    /// Makes this cascade send through the node's Octo gateway (it has no socket of its own).
    pub(in crate::shard) fn relay_through(
        &mut self,
        queue: tokio::sync::mpsc::Sender<super::siblings::Handoff>,
        metrics: &Metrics,
    ) {
        self.relay = Some(Relay {
            queue,
            full: metrics.octo_dropped.with_label_values(&["handoff_full"]),
        });
    }

    /// Whether the links (pings, counters) are this cascade's own: false behind a gateway.
    pub(in crate::shard) fn owns_links(&self) -> bool {
        self.relay.is_none()
    }

    fn add_peer(
        &mut self,
        p: &crate::config::OctoPeer,
        metrics: &Metrics,
    ) -> Result<(), kaskade_octo::ConfigError> {
        let id = BridgeId(p.id);
        // Seeding the counter from the wall clock keeps nonces unique across restarts without
        // saved state (proto/octo.md, "Counter").
        let sealer = Sealer::new(
            &self.security,
            self.local,
            id,
            LinkCounter(wallclock_micros()),
        )?;
        self.opener.add_peer(id)?;
        let l = [p.name.as_str()];
        self.peers.insert(
            id,
            Peer {
                name: p.name.clone(),
                region: p.region.clone(),
                addr: p.address,
                sealer,
                packets_in: metrics.octo_packets_in.with_label_values(&l),
                bytes_in: metrics.octo_bytes_in.with_label_values(&l),
                packets_out: metrics.octo_packets_out.with_label_values(&l),
                bytes_out: metrics.octo_bytes_out.with_label_values(&l),
                rtt: metrics.octo_rtt_seconds.with_label_values(&l),
            },
        );
        Ok(())
    }

    /// The peers the cluster directory lists now: new ones get a link, moved ones their new
    /// address, and directory peers no longer listed lose theirs (their participants then
    /// expire as soft state). Static peers (`[[octo.peers]]`) are never touched.
    pub(crate) fn set_directory_peers(
        &mut self,
        listed: &[crate::config::OctoPeer],
        metrics: &Metrics,
    ) {
        for p in listed {
            let id = BridgeId(p.id);
            if id == self.local || self.static_peers.contains(&id) {
                continue;
            }
            match self.peers.get_mut(&id) {
                Some(peer) if peer.name == p.name => {
                    peer.addr = p.address;
                    peer.region.clone_from(&p.region);
                }
                Some(_) => {
                    // Another node took this Octo id: keep the first, say so.
                    debug!(id = p.id, name = %p.name, "octo id already used by another bridge");
                    metrics
                        .octo_dropped
                        .with_label_values(&["endpoint_conflict"])
                        .inc();
                }
                None => match self.add_peer(p, metrics) {
                    // Said once per node, by the shard that carries the links.
                    Ok(()) if self.owns_links() => {
                        info!(peer = %p.name, id = p.id, addr = %p.address, "Octo link from the directory")
                    }
                    Ok(()) => {}
                    Err(e) => {
                        warn!(peer = %p.name, error = %e, "Octo peer from the directory refused")
                    }
                },
            }
        }
        let gone: Vec<BridgeId> = self
            .peers
            .keys()
            .filter(|id| {
                !self.static_peers.contains(id) && !listed.iter().any(|p| BridgeId(p.id) == **id)
            })
            .copied()
            .collect();
        for id in gone {
            if let Some(p) = self.peers.remove(&id)
                && self.relay.is_none()
            {
                info!(peer = %p.name, "Octo link closed: the bridge left the directory");
            }
            self.opener.remove_peer(id);
        }
    }

    /// Seals `payload` for `peer` and queues it; on a shard other than the gateway, hands it
    /// to the gateway to seal (one sealer, so one counter, per link key).
    fn send(&mut self, peer: BridgeId, meta: &PacketMeta, payload: &[u8]) {
        if let Some(shard) = spread::sibling_of(peer) {
            if let Some(s) = self.spread.as_ref() {
                s.send(shard, meta, payload);
            }
            return;
        }
        if let Some(relay) = self.relay.as_ref() {
            if !self.peers.contains_key(&peer) {
                return;
            }
            let h = super::siblings::Handoff::OctoOut {
                peer,
                meta: *meta,
                payload: payload.to_vec(),
            };
            if relay.queue.try_send(h).is_err() {
                relay.full.inc();
            }
            return;
        }
        self.seal(peer, meta, payload);
    }

    /// Seals `payload` for `peer` and queues it for the Octo socket.
    pub(in crate::shard) fn seal(&mut self, peer: BridgeId, meta: &PacketMeta, payload: &[u8]) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut buf = self.spare.pop().unwrap_or_default();
        match p.sealer.seal_to_vec(meta, payload, &mut buf) {
            Ok(_) => {
                p.packets_out.inc();
                p.bytes_out.inc_by(buf.len() as u64);
                self.out.push((p.addr, buf));
            }
            Err(e) => {
                debug!(peer = %p.name, error = %e, "octo seal failed");
                self.spare.push(buf);
            }
        }
    }

    /// Sends video feedback (PLI, NACK) about `owner`'s track to its origin bridge.
    fn send_rtcp(
        &mut self,
        bridge: BridgeId,
        conference: ConferenceId,
        owner: EndpointId,
        packet: &impl Marshal,
    ) {
        if let Ok(bytes) = packet.marshal() {
            let meta = octo_meta(PacketType::Rtcp, MediaType::Video, conference, owner);
            self.send(bridge, &meta, &bytes);
        }
    }

    /// Sends the resend copies that are due.
    pub(crate) fn flush_repair_copies(&mut self, now: Instant) -> (u64, u64) {
        let (mut packets, mut bytes) = (0, 0);
        while self.repair_copies.front().is_some_and(|c| c.due <= now) {
            let Some(c) = self.repair_copies.pop_front() else {
                break;
            };
            self.send(c.peer, &c.meta, &c.rtp);
            packets += 1;
            bytes += c.rtp.len() as u64;
            self.recycle(c.rtp);
        }
        (packets, bytes)
    }

    /// Returns a sent buffer for reuse.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 256 {
            self.spare.push(buf);
        }
    }

    fn recompute_peers(&mut self, conference: ConferenceId) {
        let mut v: Vec<BridgeId> = self
            .remote
            .values()
            .filter(|r| r.conference == conference)
            .map(|r| r.bridge)
            .collect();
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            self.conference_peers.remove(&conference);
        } else {
            self.conference_peers.insert(conference, v);
        }
    }
}

fn kind_of(s: &str) -> Option<TrackKind> {
    match s {
        "audio" => Some(TrackKind::Audio),
        "video" => Some(TrackKind::Video),
        _ => None,
    }
}

/// The Octo header of a packet about `endpoint` in `conference`.
pub(in crate::shard) fn octo_meta(
    packet_type: PacketType,
    media: MediaType,
    conference: ConferenceId,
    endpoint: EndpointId,
) -> PacketMeta {
    PacketMeta::new(
        packet_type,
        media,
        kaskade_octo::ConferenceId(conference.0),
        kaskade_octo::EndpointId(endpoint.0),
    )
}

fn media_of(kind: TrackKind) -> MediaType {
    match kind {
        TrackKind::Audio => MediaType::Audio,
        TrackKind::Video => MediaType::Video,
    }
}

impl Shard {
    /// Once a second: refresh announcements, expire silent remote participants, ping peers.
    pub(crate) fn octo_housekeeping(&mut self, now: Instant) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        if now < octo.next_announce {
            return;
        }
        octo.next_announce = now + ANNOUNCE_INTERVAL;
        octo.ended.prune(now);
        let by_out_ssrc = &self.by_out_ssrc;
        octo.resend_guards.retain(|(peer, ssrc), _| {
            by_out_ssrc.contains_key(ssrc) && octo.peers.contains_key(peer)
        });
        if octo.owns_links() {
            let floor = LinkCounter(wallclock_micros());
            let token = now.saturating_duration_since(octo.epoch).as_micros() as u64;
            let (ping, len) = Control::Ping { token }.to_bytes();
            let peers: Vec<BridgeId> = octo.peers.keys().copied().collect();
            for p in &peers {
                if let Some(peer) = octo.peers.get_mut(p) {
                    peer.sealer.advance_to(floor);
                }
                if let Some(b) = ping.get(..len) {
                    octo.send(*p, &PacketMeta::control(), b);
                }
            }
        }
        let stale: Vec<EndpointId> = octo
            .remote
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_seen) > REMOTE_EXPIRY)
            .map(|(e, _)| *e)
            .collect();
        for ep in stale {
            self.remove_remote(now, ep);
        }
        let locals: Vec<EndpointId> = self
            .core
            .iter()
            .flat_map(|c| c.participants().filter(|p| !p.remote).map(|p| p.id))
            .collect();
        for ep in locals {
            self.octo_announce(ep);
        }
        if let Some(octo) = self.octo.as_ref() {
            // The node's own shards are not Octo peers: they count nowhere here.
            let bridges = |peers: &[BridgeId]| {
                peers
                    .iter()
                    .filter(|p| spread::sibling_of(**p).is_none())
                    .count()
            };
            let streams: usize = octo
                .conference_peers
                .iter()
                .map(|(c, peers)| {
                    let local_tracks = self.core.get(*c).map_or(0, |conf| {
                        conf.tracks()
                            .filter(|t| conf.participant(t.owner).is_some_and(|p| !p.remote))
                            .count()
                    });
                    local_tracks * bridges(peers)
                })
                .sum();
            let (g, m) = (&mut self.gauges, &self.metrics);
            GaugeShares::report(&mut g.octo_streams_out, &m.octo_streams_out, streams as i64);
            let conferences = octo
                .conference_peers
                .values()
                .filter(|p| bridges(p) > 0)
                .count() as i64;
            GaugeShares::report(&mut g.octo_conferences, &m.octo_conferences, conferences);
            let remote = octo
                .remote
                .values()
                .filter(|r| spread::sibling_of(r.bridge).is_none())
                .count() as i64;
            GaugeShares::report(&mut g.octo_remote, &m.octo_remote_participants, remote);
        }
    }

    /// The configured peers, for the admin API.
    pub(crate) fn peer_list(&self) -> Vec<serde_json::Value> {
        let Some(octo) = self.octo.as_ref() else {
            return Vec::new();
        };
        let mut v: Vec<_> = octo
            .peers
            .iter()
            .map(|(id, p)| {
                serde_json::json!({
                    "id": id.0,
                    "name": p.name,
                    "region": p.region,
                    "address": p.addr.to_string(),
                    "rtt_seconds": p.rtt.get(),
                    "remote_participants": octo.remote.values().filter(|r| r.bridge == *id).count(),
                })
            })
            .collect();
        v.sort_by_key(|p| p["id"].as_u64());
        v
    }
}

#[cfg(test)]
mod tests;
