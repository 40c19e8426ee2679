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

use super::{Origin, Shard, Source, simulcast::LayerIn};
use crate::config::{OctoConfig, RepairMode};
use crate::messages::{ParticipantInfo, ServerMsg, TrackInfo};
use crate::metrics::Metrics;

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
    LayerDemand { tracks: Vec<OctoDemand> },
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
        let local = BridgeId(config.bridge_id);
        let opener = Opener::new(security.clone(), local);
        let mut c = Self {
            opener,
            security,
            local,
            peers: HashMap::new(),
            static_peers: config.peers.iter().map(|p| BridgeId(p.id)).collect(),
            remote: HashMap::new(),
            conference_peers: HashMap::new(),
            by_ssrc: HashMap::new(),
            out: Vec::new(),
            spare: Vec::new(),
            scratch: vec![0u8; kaskade_octo::MAX_DATAGRAM_LEN],
            epoch: now,
            next_announce: now,
            last_auth_warning: None,
            layer_suppression: config.layer_suppression,
            resend_guards: HashMap::new(),
            repair_copy_after: (config.repair_copy_ms > 0)
                .then(|| Duration::from_millis(config.repair_copy_ms)),
            repair_copies: std::collections::VecDeque::new(),
        };
        for p in &config.peers {
            c.add_peer(p, metrics)
                .map_err(|e| anyhow::anyhow!("octo peer {}: {e}", p.name))?;
        }
        Ok(c)
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
                    Ok(()) => {
                        info!(peer = %p.name, id = p.id, addr = %p.address, "Octo link from the directory")
                    }
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
            if let Some(p) = self.peers.remove(&id) {
                info!(peer = %p.name, "Octo link closed: the bridge left the directory");
            }
            self.opener.remove_peer(id);
        }
    }

    /// Seals `payload` for `peer` and queues it.
    fn send(&mut self, peer: BridgeId, meta: &PacketMeta, payload: &[u8]) {
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
fn octo_meta(
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
    fn octo_drop(&self, reason: &str) {
        self.metrics.octo_dropped.with_label_values(&[reason]).inc();
    }

    /// One datagram from the Octo socket.
    pub(crate) fn on_octo_datagram(&mut self, now: Instant, from: SocketAddr, data: &mut [u8]) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let (header, range) = match octo.opener.open_in_place(data) {
            Ok(r) => r,
            Err(e) => {
                let label = e.label();
                if e == OpenError::Auth
                    && octo
                        .last_auth_warning
                        .is_none_or(|t| now.saturating_duration_since(t) >= AUTH_WARNING_EVERY)
                {
                    // The usual cause is a cluster secret or suite that differs between
                    // bridges: the cascade silently never forms, so say it (rate-limited).
                    octo.last_auth_warning = Some(now);
                    warn!(%from, "Octo packets fail authentication: do all bridges share octo.secret and octo.suite?");
                } else {
                    debug!(%from, error = %e, "octo packet dropped");
                }
                self.octo_drop(label);
                return;
            }
        };
        let Some(peer) = octo.peers.get(&header.sender) else {
            self.octo_drop("unknown_sender");
            return;
        };
        peer.packets_in.inc();
        peer.bytes_in.inc_by(data.len() as u64);
        let Some(payload) = data.get(range) else {
            return;
        };
        let sender = header.sender;
        let conference = ConferenceId(header.conference.0);
        let endpoint = EndpointId(header.endpoint.0);
        match header.packet_type {
            PacketType::Control => self.on_octo_control(now, sender, payload),
            PacketType::Message => match serde_json::from_slice::<OctoMessage>(payload) {
                Ok(m) => self.on_octo_message(now, sender, conference, endpoint, m),
                Err(e) => {
                    debug!(error = %e, "octo message does not parse");
                    self.octo_drop("bad_message");
                }
            },
            PacketType::Rtp => {
                let mut buf = payload;
                match rtc::rtp::Packet::unmarshal(&mut buf) {
                    Ok(p) => self.on_octo_rtp(now, sender, p),
                    Err(_) => self.octo_drop("bad_rtp"),
                }
            }
            PacketType::Rtcp => {
                let mut buf = payload;
                match rtc::rtcp::packet::unmarshal(&mut buf) {
                    Ok(packets) => {
                        for p in packets {
                            if let Some(nack) = p
                                .as_any()
                                .downcast_ref::<rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
                            {
                                self.on_octo_nack(now, sender, nack);
                                continue;
                            }
                            if let Some(pli) = p
                                .as_any()
                                .downcast_ref::<rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                            {
                                self.on_octo_keyframe_request(now, sender, pli.media_ssrc);
                            }
                        }
                    }
                    Err(_) => self.octo_drop("bad_rtcp"),
                }
            }
        }
    }

    fn on_octo_control(&mut self, now: Instant, sender: BridgeId, payload: &[u8]) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        match Control::decode(payload) {
            Ok(Control::Ping { token }) => {
                let (bytes, len) = Control::Pong {
                    token,
                    hold_micros: 0,
                }
                .to_bytes();
                if let Some(b) = bytes.get(..len) {
                    octo.send(sender, &PacketMeta::control(), b);
                }
            }
            Ok(Control::Pong { token, hold_micros }) => {
                let sent = octo.epoch + Duration::from_micros(token);
                let rtt = now
                    .saturating_duration_since(sent)
                    .saturating_sub(Duration::from_micros(u64::from(hold_micros)));
                if let Some(p) = octo.peers.get(&sender) {
                    p.rtt.set(rtt.as_secs_f64());
                }
            }
            Err(_) => self.octo_drop("bad_control"),
        }
    }

    /// Whether `conference` and `room` pair differently from a conference hosted here or a
    /// remote participant already known.
    fn room_conflict(&self, conference: ConferenceId, room: &str) -> bool {
        let local = self
            .core
            .iter()
            .any(|c| (c.id == conference) != (c.name == room));
        local
            || self.octo.as_ref().is_some_and(|o| {
                o.remote
                    .values()
                    .any(|r| (r.conference == conference) != (r.room == room))
            })
    }

    fn on_octo_message(
        &mut self,
        now: Instant,
        sender: BridgeId,
        conference: ConferenceId,
        endpoint: EndpointId,
        m: OctoMessage,
    ) {
        match m {
            OctoMessage::Participant { room, name, tracks } => {
                // One id, one room: an announcement that pairs them differently from what
                // this bridge hosts or has heard is refused, so two rooms are never mixed
                // (a directory handing out ids twice, or hashed ids colliding).
                if self.room_conflict(conference, &room) {
                    self.octo_drop("conference_mismatch");
                    return;
                }
                if self.core.participant(endpoint).is_some_and(|p| !p.remote) {
                    // Another bridge claims one of our own ids: never let it touch (or, by
                    // expiring, remove) a participant we host.
                    self.octo_drop("endpoint_conflict");
                    return;
                }
                let Some(octo) = self.octo.as_mut() else {
                    return;
                };
                match octo.remote.get_mut(&endpoint) {
                    Some(r) if r.bridge != sender => {
                        self.octo_drop("endpoint_conflict");
                        return;
                    }
                    Some(r) => {
                        r.last_seen = now;
                        r.name = name;
                        r.tracks = tracks;
                    }
                    None => {
                        octo.remote.insert(
                            endpoint,
                            RemoteParticipant {
                                bridge: sender,
                                conference,
                                room,
                                name,
                                tracks,
                                last_seen: now,
                            },
                        );
                        octo.recompute_peers(conference);
                    }
                }
                self.sync_remote(now, endpoint);
            }
            OctoMessage::Bye => {
                if self
                    .octo
                    .as_ref()
                    .and_then(|o| o.remote.get(&endpoint))
                    .is_some_and(|r| r.bridge == sender)
                {
                    self.remove_remote(now, endpoint);
                }
            }
            OctoMessage::LayerDemand { tracks } => {
                for d in tracks.iter().take(MAX_DEMAND_ENTRIES) {
                    let Some(tid) = TrackId::parse(&d.id) else {
                        self.octo_drop("bad_message");
                        continue;
                    };
                    let layer = d.max_layer.and_then(Layer::new);
                    if d.max_layer.is_some() && layer.is_none() {
                        self.octo_drop("bad_message");
                        continue;
                    }
                    // Only for tracks this bridge is the origin of.
                    match self.sources.get_mut(&tid) {
                        Some(src) if matches!(src.origin, Origin::Local { .. }) => {
                            debug!(track = %tid, peer = sender.0, ?layer, "layer demand");
                            src.demand.on_request(now, sender, layer);
                        }
                        _ => self.octo_drop("unknown_track"),
                    }
                }
            }
            OctoMessage::Chat { name, text } => {
                let Some(conf) = self.core.get(conference) else {
                    self.octo_drop("unknown_conference");
                    return;
                };
                let text: String = text.chars().take(MAX_CHAT_CHARS).collect();
                // From the peer bridge itself: the admin API's message to the conference.
                let from = if endpoint.0 == kaskade_octo::EndpointId::BRIDGE.0 {
                    super::admin::SERVER_SENDER.to_owned()
                } else {
                    endpoint.to_string()
                };
                let msg = ServerMsg::Message { from, name, text };
                let locals: Vec<EndpointId> = conf
                    .participants()
                    .filter(|p| !p.remote)
                    .map(|p| p.id)
                    .collect();
                for ep in locals {
                    self.send_to(ep, msg.clone());
                }
            }
        }
    }

    /// Brings the core in line with what `endpoint`'s bridge last announced, if its
    /// conference is here.
    pub(crate) fn sync_remote(&mut self, now: Instant, endpoint: EndpointId) {
        let Some(r) = self.octo.as_ref().and_then(|o| o.remote.get(&endpoint)) else {
            return;
        };
        let (conference, bridge, name) = (r.conference, r.bridge, r.name.clone());
        let announced: Vec<OctoTrack> = r.tracks.clone();
        let Some(conf) = self.core.get(conference) else {
            return;
        };
        let present = match conf.participant(endpoint) {
            Some(p) if !p.remote => {
                // Another bridge claims one of our own ids: never let it touch our participant.
                self.octo_drop("endpoint_conflict");
                return;
            }
            Some(_) => true,
            None => false,
        };
        if !present {
            if !self.core.join_remote(conference, endpoint, &name) {
                return;
            }
            let info = self.participant_info(conference, endpoint);
            info!(endpoint = %endpoint, bridge = bridge.0, "remote participant joined");
            self.broadcast(
                endpoint,
                &ServerMsg::ParticipantJoined { participant: info },
            );
        }
        let have: Vec<TrackId> = self
            .core
            .participant(endpoint)
            .map(|p| p.tracks.clone())
            .unwrap_or_default();
        // Gone from the announcement: unpublish.
        for tid in &have {
            if !announced
                .iter()
                .any(|t| TrackId::parse(&t.id) == Some(*tid))
            {
                self.unpublish(now, *tid);
            }
        }
        for t in announced {
            let (Some(tid), Some(kind)) = (TrackId::parse(&t.id), kind_of(&t.kind)) else {
                self.octo_drop("bad_message");
                continue;
            };
            if have.contains(&tid) {
                // Layer statistics change every announcement.
                let mut mute_changed = false;
                if let Some(src) = self.sources.get_mut(&tid) {
                    for (lin, l) in src.layers.iter_mut().zip(&t.layers) {
                        lin.announced = Some(LayerStats {
                            height: l.height,
                            bitrate_bps: l.bitrate,
                            active: l.active,
                        });
                    }
                    mute_changed = src.muted != t.muted;
                    src.muted = t.muted;
                }
                if mute_changed {
                    // Muted at its origin (admin API there): everyone here hears of it too.
                    self.broadcast(
                        endpoint,
                        &ServerMsg::TrackMuted {
                            participant_id: endpoint.to_string(),
                            track_id: tid.to_string(),
                            muted: t.muted,
                        },
                    );
                }
                continue;
            }
            if t.layers.len() > kaskade_sfu::simulcast::MAX_LAYERS {
                self.octo_drop("bad_message");
                continue;
            }
            let out_ssrc = self.fresh_ssrc();
            if let Err(e) = self
                .core
                .publish_remote(tid, endpoint, kind, Ssrc(out_ssrc))
            {
                debug!(track = %tid, error = %e, "remote track refused");
                continue;
            }
            self.by_out_ssrc.insert(out_ssrc, (tid, Layer::BASE));
            let repair = self.limits.repair;
            let layers: Vec<LayerIn> = if t.layers.is_empty() {
                vec![LayerIn::new(kind, repair, t.ssrc, String::new())]
            } else {
                t.layers
                    .iter()
                    .map(|l| {
                        let mut lin = LayerIn::new(kind, repair, l.ssrc, l.rid.clone());
                        lin.announced = Some(LayerStats {
                            height: l.height,
                            bitrate_bps: l.bitrate,
                            active: l.active,
                        });
                        lin
                    })
                    .collect()
            };
            if let Some(o) = self.octo.as_mut() {
                for (i, l) in layers.iter().enumerate() {
                    if let Some(layer) = Layer::new(i as u8) {
                        o.by_ssrc.insert((bridge, l.ssrc), (tid, layer));
                    }
                }
            }
            let mut source = Source::new(
                kind,
                endpoint,
                conference,
                Origin::Remote { bridge },
                Some(OCTO_AUDIO_LEVEL_ID),
                repair,
                layers,
            );
            source.muted = t.muted;
            self.sources.insert(tid, source);
            self.announce_track(now, endpoint, tid, kind);
        }
    }

    /// Drops a remote participant and its tracks.
    pub(crate) fn remove_remote(&mut self, now: Instant, endpoint: EndpointId) {
        let Some(r) = self.octo.as_mut().and_then(|o| o.remote.remove(&endpoint)) else {
            return;
        };
        if let Some(o) = self.octo.as_mut() {
            o.recompute_peers(r.conference);
        }
        let Some(tracks) = self
            .core
            .participant(endpoint)
            .filter(|p| p.remote)
            .map(|p| p.tracks.clone())
        else {
            return;
        };
        for t in tracks {
            self.unpublish(now, t);
        }
        if self.core.leave(endpoint).is_some() {
            info!(endpoint = %endpoint, bridge = r.bridge.0, "remote participant left");
            if let Some(conf) = self.core.get(r.conference) {
                let locals: Vec<EndpointId> = conf
                    .participants()
                    .filter(|p| !p.remote)
                    .map(|p| p.id)
                    .collect();
                for ep in locals {
                    self.send_to(
                        ep,
                        ServerMsg::ParticipantLeft {
                            participant_id: endpoint.to_string(),
                        },
                    );
                }
            }
        }
    }

    /// RTP from another bridge: forwarded to local legs only.
    fn on_octo_rtp(&mut self, now: Instant, sender: BridgeId, packet: rtc::rtp::Packet) {
        let Some((tid, layer)) = self
            .octo
            .as_ref()
            .and_then(|o| o.by_ssrc.get(&(sender, packet.header.ssrc)).copied())
        else {
            self.octo_drop("unknown_track");
            return;
        };
        self.route(now, tid, layer, packet);
    }

    /// A peer lost packets of a track published here: resend them from the cache, flagged as
    /// retransmissions, to that peer only.
    fn on_octo_nack(
        &mut self,
        now: Instant,
        sender: BridgeId,
        nack: &rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack,
    ) {
        self.metrics.repair_octo.nacks_received.inc();
        let Some(&(tid, layer)) = self.by_out_ssrc.get(&nack.media_ssrc) else {
            self.octo_drop("unknown_track");
            return;
        };
        let Some(src) = self.sources.get(&tid) else {
            return;
        };
        let Some(lin) = src.layers.get(layer.index()) else {
            return;
        };
        let (conference, owner, kind) = (src.conference, src.owner, src.kind);
        let mut resend = Vec::new();
        let mut upstream = Vec::new();
        for pair in &nack.nacks {
            for seq in pair.packet_list() {
                match lin.cache.as_ref().and_then(|c| c.get(SeqNo(seq))) {
                    Some(p) => resend.push(p.clone()),
                    None => {
                        self.metrics.repair_octo.cache_misses.inc();
                        upstream.push(seq);
                    }
                }
            }
        }
        // End to end, what the origin never got is the publisher's to resend.
        if self.limits.repair == RepairMode::EndToEnd
            && !upstream.is_empty()
            && let Origin::Local { leg, receiver } = src.origin
        {
            let ssrc = lin.ssrc;
            self.nack_publisher(now, leg, receiver, ssrc, &upstream);
        }
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        // However short the link, the guard must outlast the NACK copy's delay.
        let rtt = octo
            .peers
            .get(&sender)
            .map(|p| Duration::from_secs_f64(p.rtt.get().max(0.0)))
            .filter(|r| !r.is_zero())
            .unwrap_or(kaskade_sfu::resend::DEFAULT_RTT)
            .max(NACK_COPY_AFTER * 5 / 2);
        let guard = octo
            .resend_guards
            .entry((sender, nack.media_ssrc))
            .or_default();
        let before = resend.len();
        resend.retain(|p| guard.allow(now, SeqNo(p.header.sequence_number), rtt));
        self.metrics
            .retransmissions_suppressed
            .inc_by((before - resend.len()) as u64);
        let meta = octo_meta(PacketType::Rtp, media_of(kind), conference, owner)
            .with_flags(kaskade_octo::Flags::RETRANSMISSION);
        let copy_at = octo
            .repair_copy_after
            .filter(|_| self.limits.repair == RepairMode::PerHop)
            .map(|d| now + d);
        let mut scratch = std::mem::take(&mut octo.scratch);
        for mut p in resend {
            p.header.ssrc = nack.media_ssrc;
            if let Ok(len) = p.marshal_to(&mut scratch)
                && let Some(bytes) = scratch.get(..len)
            {
                octo.send(sender, &meta, bytes);
                self.metrics.repair_octo.retransmissions.inc();
                self.metrics
                    .repair_octo
                    .retransmitted_bytes
                    .inc_by(len as u64);
                if let Some(due) = copy_at {
                    let mut rtp = octo.spare.pop().unwrap_or_default();
                    rtp.clear();
                    rtp.extend_from_slice(bytes);
                    octo.repair_copies.push_back(RepairCopy {
                        due,
                        peer: sender,
                        meta,
                        rtp,
                    });
                }
            }
        }
        octo.scratch = scratch;
        // The copies go out from the NACK tick, which may be idle.
        self.nack_wanted |= !octo.repair_copies.is_empty();
    }

    /// Asks origin bridges for the video packets that did not arrive (every NACK tick, and at
    /// once when a gap shows), probes open frames' tails and sends due resend copies. True
    /// while there is more to do: gaps missing, frames open, copies queued.
    pub(crate) fn octo_nack_tick(&mut self, now: Instant) -> bool {
        let Some(octo) = self.octo.as_mut() else {
            return false;
        };
        let (copies, copy_bytes) = octo.flush_repair_copies(now);
        self.metrics.octo_repair_copies.inc_by(copies);
        self.metrics
            .repair_octo
            .retransmitted_bytes
            .inc_by(copy_bytes);
        let mut busy = !octo.repair_copies.is_empty();
        let rtts: HashMap<BridgeId, Duration> = octo
            .peers
            .iter()
            .map(|(id, p)| (*id, Duration::from_secs_f64(p.rtt.get().max(0.0))))
            .collect();
        let mut requests = Vec::new();
        for src in self.sources.values_mut() {
            let Origin::Remote { bridge } = src.origin else {
                continue;
            };
            let rtt = rtts.get(&bridge).copied().unwrap_or_default();
            for lin in &mut src.layers {
                let Some(n) = lin.nack.as_mut() else {
                    continue;
                };
                let mut seqs = n.poll(now, rtt);
                seqs.extend(n.poll_redundant(now, NACK_COPY_AFTER));
                if let Some(tail) = n.poll_tail(now, TAIL_PROBE_AFTER) {
                    seqs.push(tail);
                    self.metrics.octo_tail_probes.inc();
                }
                busy |= n.pending() > 0 || n.frame_open();
                let outcome = n.take_outcome();
                self.metrics.repair_octo.recovered.inc_by(outcome.recovered);
                self.metrics
                    .repair_octo
                    .lost_unrecovered
                    .inc_by(outcome.lost);
                if !seqs.is_empty() {
                    requests.push((bridge, src.conference, src.owner, lin.ssrc, seqs));
                }
            }
        }
        for (bridge, conference, owner, ssrc, seqs) in requests {
            let raw: Vec<u16> = seqs.iter().map(|s| s.0).collect();
            self.octo_nack(bridge, conference, owner, ssrc, &raw);
        }
        busy
    }

    /// Sends one NACK for a remote track (Octo SSRC `ssrc`) to its origin bridge.
    pub(crate) fn octo_nack(
        &mut self,
        bridge: BridgeId,
        conference: ConferenceId,
        owner: EndpointId,
        ssrc: u32,
        seqs: &[u16],
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let nack = rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: rtc::rtcp::transport_feedbacks::transport_layer_nack::nack_pairs_from_sequence_numbers(seqs),
        };
        octo.send_rtcp(bridge, conference, owner, &nack);
        self.metrics.repair_octo.nacks_sent.inc();
    }

    /// Another bridge's receivers want a keyframe of a track published here.
    fn on_octo_keyframe_request(&mut self, now: Instant, sender: BridgeId, ssrc: u32) {
        let Some(&(tid, layer)) = self.by_out_ssrc.get(&ssrc) else {
            self.octo_drop("unknown_track");
            return;
        };
        // The peer bridge's own throttles have already merged its receivers' requests and its
        // layer switches; here each (peer, layer) counts as one requester under the switch
        // throttle, whose per-layer budget a peer's switches and starts fit in (a receiver's
        // 3 per 10 s would hold a switch up for seconds).
        let requester = EndpointId((sender.0 << 24) | 0x00ff_ff00 | layer.index() as u32);
        let decision = self.switch_keyframes.request(now, requester, tid);
        if self.count_keyframe_decision(decision) {
            self.send_keyframe_request(now, tid, layer);
        }
    }

    /// Sends one RTP packet of a local track's `layer` to every peer in its conference that
    /// needs it (every peer, for a track without simulcast); returns the copies sent.
    pub(crate) fn octo_forward(
        &mut self,
        now: Instant,
        tid: TrackId,
        layer: Layer,
        packet: &rtc::rtp::Packet,
        audio_level: Option<&Bytes>,
    ) -> u64 {
        let Some(octo) = self.octo.as_mut() else {
            return 0;
        };
        let Some(src) = self.sources.get(&tid) else {
            return 0;
        };
        // Peers are few; the copy frees `octo` for sending.
        let Some(peers) = octo.conference_peers.get(&src.conference).cloned() else {
            return 0;
        };
        let Some(out_ssrc) = src.layers.get(layer.index()).map(|l| l.octo_ssrc) else {
            return 0;
        };
        let simulcast = src.is_simulcast();
        let (conference, owner, kind) = (src.conference, src.owner, src.kind);
        let mut p = packet.clone();
        p.header.ssrc = out_ssrc;
        if let Some(level) = audio_level {
            p.header.extension = true;
            p.header.extension_profile = rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE;
            p.header.extensions.push(rtc::rtp::header::Extension {
                id: OCTO_AUDIO_LEVEL_ID,
                payload: level.clone(),
            });
        }
        let mut scratch = std::mem::take(&mut octo.scratch);
        let len = match p.marshal_to(&mut scratch) {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "marshalling RTP for Octo");
                octo.scratch = scratch;
                return 0;
            }
        };
        let meta = octo_meta(PacketType::Rtp, media_of(kind), conference, owner);
        let mut sent = 0;
        let mut saved = 0u64;
        for peer in peers {
            // A simulcast layer goes only to peers whose receivers need it (or did until
            // less than the grace period ago).
            if simulcast && octo.layer_suppression && src.demand.needed_for(peer, now) < Some(layer)
            {
                saved += len as u64;
                continue;
            }
            if let Some(bytes) = scratch.get(..len) {
                octo.send(peer, &meta, bytes);
                sent += 1;
            }
        }
        self.metrics.octo_rtp_out.inc_by(sent);
        self.metrics.octo_bytes_saved.inc_by(saved);
        octo.scratch = scratch;
        sent
    }

    /// Every layer tick: tells origin bridges which layers of their simulcast tracks this
    /// bridge's receivers need (changes at once, unchanged demands every 2 s).
    pub(crate) fn demand_tick(&mut self, now: Instant) {
        if self.octo.is_none() {
            return;
        }
        let mut by_origin: HashMap<(BridgeId, ConferenceId), Vec<OctoDemand>> = HashMap::new();
        for (tid, layer) in self.demand.poll(now) {
            let Some(src) = self.sources.get(&tid) else {
                continue;
            };
            let Origin::Remote { bridge } = src.origin else {
                continue;
            };
            by_origin
                .entry((bridge, src.conference))
                .or_default()
                .push(OctoDemand {
                    id: tid.to_string(),
                    max_layer: layer.map(|l| l.index() as u8),
                });
        }
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        for ((bridge, conference), tracks) in by_origin {
            for chunk in tracks.chunks(MAX_DEMAND_ENTRIES) {
                let m = OctoMessage::LayerDemand {
                    tracks: chunk.to_vec(),
                };
                let Ok(json) = serde_json::to_vec(&m) else {
                    continue;
                };
                let meta = octo_meta(
                    PacketType::Message,
                    MediaType::Data,
                    conference,
                    EndpointId(0),
                );
                debug!(peer = bridge.0, tracks = chunk.len(), "layer demand sent");
                octo.send(bridge, &meta, &json);
            }
        }
    }

    /// Asks a remote track's origin bridge for a keyframe.
    pub(crate) fn octo_keyframe_request(
        &mut self,
        bridge: BridgeId,
        conference: ConferenceId,
        owner: EndpointId,
        ssrc: u32,
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        octo.send_rtcp(bridge, conference, owner, &pli);
    }

    /// Sends a message about `endpoint` (a local participant) to every peer.
    fn octo_message_all(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        m: &OctoMessage,
    ) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        let Ok(json) = serde_json::to_vec(m) else {
            return;
        };
        let meta = octo_meta(PacketType::Message, MediaType::Data, conference, endpoint);
        let peers: Vec<BridgeId> = octo.peers.keys().copied().collect();
        for p in peers {
            octo.send(p, &meta, &json);
        }
    }

    /// Announces one local participant (with its current tracks) to every peer.
    pub(crate) fn octo_announce(&mut self, endpoint: EndpointId) {
        if self.octo.is_none() {
            return;
        }
        let Some(conf) = self.core.conference_of(endpoint) else {
            return;
        };
        let Some(p) = conf.participant(endpoint).filter(|p| !p.remote) else {
            return;
        };
        let now = Instant::now();
        let tracks = p
            .tracks
            .iter()
            .filter_map(|t| conf.tracks().find(|x| x.id == *t))
            .map(|t| OctoTrack {
                id: t.id.to_string(),
                kind: t.kind.as_str().into(),
                ssrc: t.out_ssrc.0,
                muted: self.sources.get(&t.id).is_some_and(|s| s.muted),
                layers: self
                    .sources
                    .get(&t.id)
                    .filter(|s| s.is_simulcast())
                    .map(|s| {
                        s.layers
                            .iter()
                            .zip(s.layer_stats(now))
                            .map(|(l, st)| OctoLayer {
                                rid: l.rid.clone(),
                                ssrc: l.octo_ssrc,
                                height: st.height,
                                bitrate: st.bitrate_bps,
                                active: st.active,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        let m = OctoMessage::Participant {
            room: conf.name.clone(),
            name: p.name.clone(),
            tracks,
        };
        let conference = conf.id;
        self.octo_message_all(conference, endpoint, &m);
    }

    pub(crate) fn octo_bye(&mut self, conference: ConferenceId, endpoint: EndpointId) {
        self.octo_message_all(conference, endpoint, &OctoMessage::Bye);
    }

    pub(crate) fn octo_chat(
        &mut self,
        conference: ConferenceId,
        endpoint: EndpointId,
        name: String,
        text: String,
    ) {
        self.octo_message_all(conference, endpoint, &OctoMessage::Chat { name, text });
    }

    /// Once a second: refresh announcements, expire silent remote participants, ping peers.
    pub(crate) fn octo_housekeeping(&mut self, now: Instant) {
        let Some(octo) = self.octo.as_mut() else {
            return;
        };
        if now < octo.next_announce {
            return;
        }
        octo.next_announce = now + ANNOUNCE_INTERVAL;
        let by_out_ssrc = &self.by_out_ssrc;
        octo.resend_guards.retain(|(peer, ssrc), _| {
            by_out_ssrc.contains_key(ssrc) && octo.peers.contains_key(peer)
        });
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
            let streams: usize = octo
                .conference_peers
                .iter()
                .map(|(c, peers)| {
                    let local_tracks = self.core.get(*c).map_or(0, |conf| {
                        conf.tracks()
                            .filter(|t| conf.participant(t.owner).is_some_and(|p| !p.remote))
                            .count()
                    });
                    local_tracks * peers.len()
                })
                .sum();
            self.metrics.octo_streams_out.set(streams as i64);
            self.metrics
                .octo_conferences
                .set(octo.conference_peers.len() as i64);
            self.metrics
                .octo_remote_participants
                .set(octo.remote.len() as i64);
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

    /// The bridge a participant is on, for signaling.
    pub(crate) fn bridge_of(&self, endpoint: EndpointId) -> String {
        self.octo
            .as_ref()
            .and_then(|o| {
                let r = o.remote.get(&endpoint)?;
                o.peers.get(&r.bridge).map(|p| p.name.clone())
            })
            .unwrap_or_else(|| self.bridge.id.clone())
    }

    pub(crate) fn participant_info(
        &self,
        conference: ConferenceId,
        ep: EndpointId,
    ) -> ParticipantInfo {
        let conf = self.core.get(conference);
        let p = conf.and_then(|c| c.participant(ep));
        ParticipantInfo {
            id: ep.to_string(),
            name: p.map(|p| p.name.clone()).unwrap_or_default(),
            bridge: self.bridge_of(ep),
            tracks: match (conf, p) {
                (Some(c), Some(p)) => p
                    .tracks
                    .iter()
                    .filter_map(|t| c.tracks().find(|x| x.id == *t))
                    .map(|t| TrackInfo {
                        id: t.id.to_string(),
                        kind: t.kind.as_str().into(),
                        muted: self.sources.get(&t.id).is_some_and(|s| s.muted),
                    })
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Brings cached remote participants of `conference` into the core: the conference has
    /// just been created here by a local join.
    pub(crate) fn materialize_remote(&mut self, now: Instant, conference: ConferenceId) {
        let eps: Vec<EndpointId> = match self.octo.as_ref() {
            Some(o) => o
                .remote
                .iter()
                .filter(|(_, r)| r.conference == conference)
                .map(|(e, _)| *e)
                .collect(),
            None => return,
        };
        for ep in eps {
            self.sync_remote(now, ep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_wire_form() {
        let m = OctoMessage::Participant {
            room: "r".into(),
            name: "n".into(),
            tracks: vec![OctoTrack {
                id: "TR01000002".into(),
                kind: "video".into(),
                ssrc: 7,
                layers: Vec::new(),
                muted: false,
            }],
        };
        let s = serde_json::to_string(&m).expect("json");
        assert_eq!(
            s,
            r#"{"type":"participant","room":"r","name":"n","tracks":[{"id":"TR01000002","kind":"video","ssrc":7}]}"#
        );
        assert_eq!(
            serde_json::to_string(&OctoMessage::Bye).expect("json"),
            r#"{"type":"bye"}"#
        );
        assert!(serde_json::from_str::<OctoMessage>(r#"{"type":"nope"}"#).is_err());
    }
}

#[cfg(test)]
pub(super) mod shard_tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use kaskade_octo::{BridgeId, LinkCounter, LinkSecurity, PacketType, Sealer, Suite};
    use tokio::sync::mpsc;

    use super::super::{Command, SessionId, Shard, ShardLimits};
    use super::*;
    use crate::config::{OctoConfig, OctoPeer};
    use crate::leg::{self, LegSettings};
    use crate::messages::BridgeInfo;

    const SECRET: &[u8] = b"a-cluster-secret-for-unit-tests";

    /// A shard with Octo on (bridge 1, peer 2) and a sealer for the peer's side.
    pub(super) fn test_shard() -> (Shard, Sealer) {
        (shard(), sealer(SECRET))
    }

    pub(super) fn join_local(
        s: &mut Shard,
        now: Instant,
        identity: &str,
    ) -> mpsc::UnboundedReceiver<ServerMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = SessionId(s.sessions.len() as u64 + 100);
        s.on_command(
            now,
            Command::Join {
                session,
                conference: crate::directory::conference_id("room"),
                room: "room".into(),
                identity: identity.into(),
                name: identity.into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: now,
            },
        );
        rx
    }

    /// Announces a remote participant `ep` with one audio track sent as `ssrc`.
    pub(super) fn remote_with_audio(s: &mut Shard, sealer: &mut Sealer, ep: u32, ssrc: u32) {
        let room_id = crate::directory::conference_id("room").0;
        let m = OctoMessage::Participant {
            room: "room".into(),
            name: format!("speaker {ep:x}"),
            tracks: vec![OctoTrack {
                id: format!("TR{:08x}", ep + 0x10),
                kind: "audio".into(),
                ssrc,
                layers: Vec::new(),
                muted: false,
            }],
        };
        feed(s, message(sealer, room_id, ep, &m));
    }

    /// An Octo RTP audio packet carrying an RFC 6464 level (-dBov, 127 = silence).
    pub(super) fn audio_rtp(sealer: &mut Sealer, ssrc: u32, seq: u16, level: u8) -> Vec<u8> {
        let room_id = crate::directory::conference_id("room").0;
        let rtp = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp: u32::from(seq) * 960,
                ssrc,
                extension: true,
                extension_profile: rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE,
                extensions: vec![rtc::rtp::header::Extension {
                    id: OCTO_AUDIO_LEVEL_ID,
                    payload: bytes::Bytes::copy_from_slice(&[level]),
                }],
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0u8; 40]),
        };
        seal_rtp(sealer, MediaType::Audio, room_id, 0x0200_0001, &rtp)
    }

    /// An RTP packet as the peer bridge seals it for Octo.
    fn seal_rtp(
        sealer: &mut Sealer,
        media: MediaType,
        room_id: u32,
        ep: u32,
        rtp: &rtc::rtp::Packet,
    ) -> Vec<u8> {
        let bytes = rtp.marshal().expect("rtp");
        let meta = octo_meta(
            PacketType::Rtp,
            media,
            ConferenceId(room_id),
            EndpointId(ep),
        );
        let mut out = Vec::new();
        sealer.seal_to_vec(&meta, &bytes, &mut out).expect("seal");
        out
    }

    fn shard() -> Shard {
        shard_pair_side(1, 2)
    }

    /// Two bridges linked over Octo, as the cascade tests start: alice on bridge 1 publishes a
    /// video track in `layers` layers (Octo SSRC 4242 for the first, 5001.. for the others, as
    /// a publisher leg's OnTrack would set it up), bob is on bridge 2, and each bridge has
    /// heard the other's announcements.
    pub(super) struct VideoPair {
        pub a: Shard,
        pub b: Shard,
        pub t0: Instant,
        pub alice: EndpointId,
        pub bob: EndpointId,
        pub tid: TrackId,
    }

    pub(super) fn video_pair(layers: usize) -> VideoPair {
        use super::super::{Origin, Source};
        let mut a = shard_pair_side(1, 2);
        let mut b = shard_pair_side(2, 1);
        let t0 = Instant::now();
        let _alice = join_local(&mut a, t0, "alice");
        let _bob = join_local(&mut b, t0, "bob");
        let alice = *a.sessions.values().next().expect("alice");
        let bob = *b.sessions.values().next().expect("bob");
        let tid = a
            .core
            .publish(alice, TrackKind::Video, Ssrc(4242))
            .expect("publish");
        let conference = a.core.conference_of(alice).expect("conf").id;
        let layers = Layer::all()
            .take(layers)
            .map(|l| {
                let i = l.index() as u32;
                let (ssrc, rid) = if layers == 1 {
                    (1, String::new())
                } else {
                    (11 + i, i.to_string())
                };
                let mut lin = LayerIn::new(TrackKind::Video, RepairMode::PerHop, ssrc, rid);
                lin.octo_ssrc = if i == 0 { 4242 } else { 5000 + i };
                a.by_out_ssrc.insert(lin.octo_ssrc, (tid, l));
                lin
            })
            .collect();
        a.sources.insert(
            tid,
            Source::new(
                TrackKind::Video,
                alice,
                conference,
                Origin::Local {
                    leg: crate::demux::LegId(99),
                    receiver: Default::default(),
                },
                None,
                RepairMode::PerHop,
                layers,
            ),
        );
        // Announcements both ways: each bridge learns the other hosts the room (a publisher
        // leg's OnTrack announces at once, as here).
        a.octo_announce(alice);
        a.octo_housekeeping(t0);
        b.octo_housekeeping(t0);
        let link = |from: &mut Shard, to: &mut Shard| {
            let out = std::mem::take(&mut from.octo.as_mut().expect("octo").out);
            for (_, mut d) in out {
                to.on_octo_datagram(t0, SocketAddr::from(([127, 0, 0, 1], 4000)), &mut d);
            }
        };
        link(&mut a, &mut b);
        link(&mut b, &mut a);
        VideoPair {
            a,
            b,
            t0,
            alice,
            bob,
            tid,
        }
    }

    /// Bridge `me` with Octo to bridge `peer` (the peer's Octo address is 127.0.0.1:4000+id).
    pub(super) fn shard_pair_side(me: u32, peer: u32) -> Shard {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut s = Shard::new(
            LegSettings {
                advertised: SocketAddr::from(([127, 0, 0, 1], 10000)),
                srtp_profiles: vec![leg::parse_srtp_profile("aead_aes_128_gcm").expect("p")],
                replay_window: 1024,
                certificate: leg::generate_certificate().expect("cert"),
            },
            ShardLimits {
                max_participants: 10,
                max_media_sections: 16,
                leg_timeout: Duration::from_secs(30),
                repair: RepairMode::PerHop,
            },
            BridgeInfo {
                id: format!("b{me}"),
                region: "r".into(),
            },
            metrics,
        );
        let config = OctoConfig {
            bridge_id: me,
            secret: String::from_utf8(SECRET.to_vec()).expect("utf8"),
            peers: vec![OctoPeer {
                id: peer,
                name: format!("b{peer}"),
                region: "r2".into(),
                address: SocketAddr::from(([127, 0, 0, 1], 4000 + peer as u16)),
                url: String::new(),
            }],
            ..OctoConfig::default()
        };
        s.core = kaskade_sfu::Conferences::with_id_prefix(me as u8);
        s.octo = Some(Cascade::new(&config, &s.metrics, Instant::now()).expect("cascade"));
        s
    }

    fn sealer(secret: &[u8]) -> Sealer {
        let sec = LinkSecurity::encrypted(Suite::Aes128Gcm, secret).expect("security");
        Sealer::new(&sec, BridgeId(2), BridgeId(1), LinkCounter(1)).expect("sealer")
    }

    fn message(s: &mut Sealer, conf: u32, ep: u32, m: &OctoMessage) -> Vec<u8> {
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            ConferenceId(conf),
            EndpointId(ep),
        );
        let mut out = Vec::new();
        s.seal_to_vec(&meta, &serde_json::to_vec(m).expect("json"), &mut out)
            .expect("seal");
        out
    }

    fn dropped(s: &Shard, reason: &str) -> u64 {
        s.metrics.octo_dropped.with_label_values(&[reason]).get()
    }

    fn feed(s: &mut Shard, mut d: Vec<u8>) {
        s.on_octo_datagram(
            Instant::now(),
            SocketAddr::from(([127, 0, 0, 1], 4097)),
            &mut d,
        );
    }

    fn announce(room: &str) -> OctoMessage {
        OctoMessage::Participant {
            room: room.into(),
            name: "remote bob".into(),
            tracks: vec![OctoTrack {
                id: "TR02000001".into(),
                kind: "video".into(),
                ssrc: 77,
                layers: Vec::new(),
                muted: false,
            }],
        }
    }

    #[test]
    fn directory_peers_come_and_go_static_ones_stay() {
        use crate::config::OctoPeer;
        let mut s = shard(); // bridge 1, static peer 2
        let peer = |id: u32, name: &str, port: u16| OctoPeer {
            id,
            name: name.into(),
            region: "eu".into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            url: String::new(),
        };
        let metrics = s.metrics.clone();
        let octo = s.octo.as_mut().expect("octo");
        let static_addr = octo.peers.get(&BridgeId(2)).map(|p| p.addr);
        octo.set_directory_peers(
            &[
                peer(3, "b3", 4003),
                peer(2, "elsewhere", 4999),
                peer(1, "me", 4001),
            ],
            &metrics,
        );
        let mut ids: Vec<u32> = octo.peers.keys().map(|b| b.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3], "ourselves never, the new one added");
        assert_eq!(octo.peers.get(&BridgeId(2)).map(|p| p.addr), static_addr);
        assert!(octo.opener.has_peer(BridgeId(3)));
        // Moved: the new address is used.
        octo.set_directory_peers(&[peer(3, "b3", 4013)], &metrics);
        assert_eq!(
            octo.peers.get(&BridgeId(3)).map(|p| p.addr.port()),
            Some(4013)
        );
        // Gone from the directory: the link goes, the static one stays.
        octo.set_directory_peers(&[], &metrics);
        assert!(!octo.peers.contains_key(&BridgeId(3)));
        assert!(!octo.opener.has_peer(BridgeId(3)));
        assert!(octo.peers.contains_key(&BridgeId(2)));
        assert!(octo.opener.has_peer(BridgeId(2)));
    }

    #[test]
    fn every_rejection_is_dropped_and_counted() {
        let mut s = shard();
        let room_id = crate::directory::conference_id("room").0;
        feed(&mut s, vec![1, 2, 3]);
        assert_eq!(dropped(&s, "truncated"), 1);
        feed(&mut s, vec![0u8; 64]);
        assert_eq!(dropped(&s, "bad_version"), 1);
        let forged = message(
            &mut sealer(b"another-secret-of-enough-length"),
            room_id,
            0x0200_0001,
            &announce("room"),
        );
        feed(&mut s, forged);
        assert_eq!(dropped(&s, "auth"), 1);
        let mut good = sealer(SECRET);
        let pkt = message(&mut good, room_id, 0x0200_0001, &announce("room"));
        feed(&mut s, pkt.clone());
        feed(&mut s, pkt);
        assert_eq!(dropped(&s, "replay"), 1);
        let wrong_conf = message(&mut good, room_id ^ 1, 0x0200_0002, &announce("room"));
        feed(&mut s, wrong_conf);
        assert_eq!(dropped(&s, "conference_mismatch"), 1);
        let chat = message(
            &mut good,
            12345,
            0x0200_0001,
            &OctoMessage::Chat {
                name: "x".into(),
                text: "hi".into(),
            },
        );
        feed(&mut s, chat);
        assert_eq!(dropped(&s, "unknown_conference"), 1);
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            ConferenceId(room_id),
            EndpointId(1),
        );
        let mut junk = Vec::new();
        good.seal_to_vec(&meta, b"{not json", &mut junk)
            .expect("seal");
        feed(&mut s, junk);
        assert_eq!(dropped(&s, "bad_message"), 1);
        // RTP for a track nobody announced.
        let rtp = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: 999,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(b"x"),
        };
        feed(
            &mut s,
            seal_rtp(&mut good, MediaType::Video, room_id, 1, &rtp),
        );
        assert_eq!(dropped(&s, "unknown_track"), 1);
        // Nothing of it reached the core.
        assert_eq!(s.core.participant_count(), 0);
    }

    #[test]
    fn announced_participants_appear_to_local_ones_and_expire() {
        let mut s = shard();
        let room_id = crate::directory::conference_id("room").0;
        let mut good = sealer(SECRET);
        // Announced before anyone here joined: cached, then shown at join.
        feed(
            &mut s,
            message(&mut good, room_id, 0x0200_0001, &announce("room")),
        );
        assert_eq!(s.core.participant_count(), 0);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        s.on_command(
            now,
            Command::Join {
                session: SessionId(1),
                conference: crate::directory::conference_id("room"),
                room: "room".into(),
                identity: "alice".into(),
                name: "alice".into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: now,
            },
        );
        match rx.try_recv() {
            Ok(ServerMsg::Joined {
                participants,
                participant,
                ..
            }) => {
                assert_eq!(participant.bridge, "b1");
                assert_eq!(participants.len(), 1);
                assert_eq!(participants[0].id, "EP02000001");
                assert_eq!(participants[0].bridge, "b2");
                assert_eq!(participants[0].tracks.len(), 1);
            }
            other => panic!("expected joined, got {other:?}"),
        }
        // An endpoint id of ours claimed by the peer is refused.
        let mine = s.sessions.get(&SessionId(1)).copied().expect("endpoint");
        feed(
            &mut s,
            message(&mut good, room_id, mine.0, &announce("room")),
        );
        assert_eq!(dropped(&s, "endpoint_conflict"), 1);
        // Silence for longer than the expiry removes the remote participant.
        s.octo_housekeeping(now + REMOTE_EXPIRY + Duration::from_secs(1));
        let mut left = false;
        while let Ok(m) = rx.try_recv() {
            if let ServerMsg::ParticipantLeft { participant_id } = m {
                left = participant_id == "EP02000001";
            }
        }
        assert!(left, "the silent remote participant was removed");
        assert_eq!(s.core.participant_count(), 1);
        assert_eq!(s.core.track_count(), 0);
    }
}

#[cfg(test)]
mod speaker_tests {
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::shard_tests::{audio_rtp, join_local, remote_with_audio, test_shard};
    use super::*;

    /// Two bridges (shards) that receive the same remote audio levels decide the same
    /// dominant speaker at the same decision instants.
    #[test]
    fn bridges_fed_the_same_levels_agree() {
        let t0 = Instant::now();
        let mut bridges: Vec<(
            Shard,
            mpsc::UnboundedReceiver<ServerMsg>,
            kaskade_octo::Sealer,
        )> = (0..2)
            .map(|i| {
                let (mut s, sealer) = test_shard();
                let rx = join_local(&mut s, t0, &format!("listener-{i}"));
                (s, rx, sealer)
            })
            .collect();
        for (s, _, sealer) in bridges.iter_mut() {
            remote_with_audio(s, sealer, 0x0200_0001, 501);
            remote_with_audio(s, sealer, 0x0200_0002, 502);
        }
        // 3 s of 20 ms frames: speaker 1 talks for the first 1.5 s, then speaker 2.
        let mut decisions: Vec<Vec<(u128, Option<String>)>> = vec![Vec::new(), Vec::new()];
        for frame in 0..150u64 {
            let now = t0 + Duration::from_millis(20 * frame);
            // Speech varies; a quiet frame now and then gives the noise floor something to
            // settle on (a constant level is indistinguishable from steady noise).
            const SPEECH: [u8; 10] = [80, 25, 20, 30, 22, 28, 24, 26, 21, 29];
            let talk = SPEECH[(frame % 10) as usize];
            let (a, b) = if frame < 75 {
                (talk, 127u8)
            } else {
                (127, talk)
            };
            for (i, (s, rx, sealer)) in bridges.iter_mut().enumerate() {
                for (ssrc, level) in [(501u32, a), (502u32, b)] {
                    let mut d = audio_rtp(sealer, ssrc, frame as u16, level);
                    s.on_octo_datagram(now, "127.0.0.1:4097".parse().expect("addr"), &mut d);
                }
                s.speakers_tick(now);
                while let Ok(m) = rx.try_recv() {
                    if let ServerMsg::DominantSpeaker { participant_id, .. } = m {
                        decisions[i].push((now.duration_since(t0).as_millis(), participant_id));
                    }
                }
            }
        }
        assert_eq!(decisions[0], decisions[1], "both bridges decide alike");
        let last = decisions[0].last().expect("a decision").1.clone();
        assert_eq!(
            last.as_deref(),
            Some("EP02000002"),
            "the second speaker took over"
        );
        let switch_at = decisions[0]
            .iter()
            .find(|(_, p)| p.as_deref() == Some("EP02000002"))
            .map(|(t, _)| *t)
            .expect("switch");
        assert!(
            (1500..=2700).contains(&switch_at),
            "switched {switch_at} ms in (speech changed at 1500 ms)"
        );
    }
}

#[cfg(test)]
mod timeout_tests {
    use std::time::Instant;

    use super::shard_tests::{join_local, remote_with_audio, test_shard};
    use super::*;

    /// A participant whose legs never hear from the client is closed with `media_timeout`,
    /// and its legs and learned addresses are evicted.
    #[test]
    fn silent_legs_time_out() {
        let t0 = Instant::now();
        let (mut s, mut sealer) = test_shard();
        let mut rx = join_local(&mut s, t0, "ghost");
        // A remote track makes the bridge open a subscriber leg (and offer it).
        remote_with_audio(&mut s, &mut sealer, 0x0200_0001, 9);
        assert_eq!(s.demux.leg_count(), 1, "a subscriber leg was opened");
        let mut offered = false;
        while let Ok(m) = rx.try_recv() {
            offered |= matches!(m, ServerMsg::Offer { .. });
        }
        assert!(offered);
        s.housekeeping(t0 + Duration::from_secs(29));
        // (The silent remote participant has expired by now; the local one is still here.)
        assert_eq!(s.sessions.len(), 1, "not yet");
        s.housekeeping(t0 + Duration::from_secs(31));
        let mut timed_out = false;
        while let Ok(m) = rx.try_recv() {
            if let ServerMsg::Error { code, fatal, .. } = m {
                timed_out = code == "media_timeout" && fatal;
            }
        }
        assert!(timed_out);
        assert!(s.sessions.is_empty());
        assert_eq!(s.demux.leg_count(), 0, "its leg was evicted");
        assert_eq!(s.legs.iter().flatten().count(), 0);
    }
}

#[cfg(test)]
mod repair_tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::shard_tests::{VideoPair, video_pair};
    use super::*;

    /// Moves every queued Octo datagram from `from` to `to`, dropping the RTP ones when
    /// `lose_rtp` (the payload is encrypted; byte 1 of the authenticated header is the packet
    /// type). Returns how many were dropped.
    fn deliver(from: &mut Shard, to: &mut Shard, now: Instant, lose_rtp: bool) -> usize {
        let out = std::mem::take(&mut from.octo.as_mut().expect("octo").out);
        let mut dropped = 0;
        for (_, mut d) in out {
            if lose_rtp && d.get(1) == Some(&0) {
                dropped += 1;
                continue;
            }
            to.on_octo_datagram(now, SocketAddr::from(([127, 0, 0, 1], 4000)), &mut d);
        }
        dropped
    }

    /// A video packet of SSRC 1 (a VP8 descriptor for a payload); `last` ends its frame.
    fn video(seq: u16, last: bool) -> rtc::rtp::Packet {
        let mut p = super::simulcast_tests::packet(1, seq);
        p.header.marker = last;
        p
    }

    /// Loss on an Octo link is repaired from the origin's cache: the receiving bridge NACKs
    /// the gaps, the origin resends them flagged as retransmissions, each arrives once.
    #[test]
    fn octo_link_losses_are_repaired_hop_by_hop() {
        let VideoPair {
            mut a,
            mut b,
            t0,
            tid,
            ..
        } = video_pair(1);
        assert_eq!(b.octo.as_ref().map(|o| o.remote.len()), Some(1));
        // 200 packets, every 10th lost.
        let mut lost = 0;
        for seq in 0..200u16 {
            a.route(t0, tid, Layer::BASE, video(seq, true));
            // Each packet is one RTP datagram on the link.
            lost += deliver(&mut a, &mut b, t0, seq % 10 == 5);
        }
        assert_eq!(lost, 20);
        assert_eq!(b.metrics.rtp_routed_octo.get(), 180);
        // Bridge 2 asks, bridge 1 answers from its cache, the link now loses nothing.
        b.octo_nack_tick(t0);
        assert!(b.metrics.repair_octo.nacks_sent.get() >= 1);
        deliver(&mut b, &mut a, t0, false);
        assert_eq!(a.metrics.repair_octo.retransmissions.get(), 20);
        assert_eq!(a.metrics.repair_octo.cache_misses.get(), 0);
        deliver(&mut a, &mut b, t0, false);
        b.octo_nack_tick(t0 + Duration::from_millis(200));
        assert_eq!(b.metrics.rtp_routed_octo.get(), 200, "every packet once");
        assert_eq!(b.metrics.repair_octo.recovered.get(), 20);
        assert_eq!(b.metrics.repair_octo.lost_unrecovered.get(), 0);

        // A loss whose first NACK is lost too: the copy 10 ms later gets it repaired, long
        // before a retry would; when both copies arrive, the origin resends once.
        for (seq, lose_nack) in [(205u16, true), (215, false)] {
            let resent = a.metrics.repair_octo.retransmissions.get();
            let t = t0 + Duration::from_millis(300 + u64::from(seq));
            for s in seq - 5..=seq + 1 {
                a.route(t, tid, Layer::BASE, video(s, true));
                deliver(&mut a, &mut b, t, s == seq);
            }
            b.octo_nack_tick(t);
            if lose_nack {
                let dropped = std::mem::take(&mut b.octo.as_mut().expect("octo").out);
                assert_eq!(dropped.len(), 1, "one NACK");
            } else {
                deliver(&mut b, &mut a, t, false);
            }
            b.octo_nack_tick(t + Duration::from_millis(10));
            deliver(&mut b, &mut a, t + Duration::from_millis(10), false);
            assert_eq!(
                a.metrics.repair_octo.retransmissions.get(),
                resent + 1,
                "resent once for seq {seq}"
            );
            deliver(&mut a, &mut b, t + Duration::from_millis(10), false);
        }
        assert_eq!(b.metrics.rtp_routed_octo.get(), 214);
        assert_eq!(
            a.metrics.retransmissions_suppressed.get(),
            1,
            "the second copy"
        );

        // A frame's last packet is lost, and so is the first resend. No later packet shows
        // the gap: the silence mid-frame does, and the resend's copy repairs it.
        let t = t0 + Duration::from_secs(1);
        let _ = std::mem::take(&mut a.octo.as_mut().expect("octo").out);
        // Earlier resends' copies, and retries for 207-209 (never sent), are not this case.
        a.octo_nack_tick(t);
        b.octo_nack_tick(t);
        let _ = std::mem::take(&mut a.octo.as_mut().expect("octo").out);
        let _ = std::mem::take(&mut b.octo.as_mut().expect("octo").out);
        for s in 217..=221u16 {
            a.route(t, tid, Layer::BASE, video(s, s == 221));
            deliver(&mut a, &mut b, t, s == 221);
        }
        b.octo_nack_tick(t + Duration::from_millis(5));
        assert!(
            b.octo.as_ref().expect("octo").out.is_empty(),
            "not silent long enough"
        );
        let t = t + Duration::from_millis(10);
        b.octo_nack_tick(t);
        assert_eq!(b.metrics.octo_tail_probes.get(), 1);
        let resent = a.metrics.repair_octo.retransmissions.get();
        let copies = a.metrics.octo_repair_copies.get();
        deliver(&mut b, &mut a, t, false);
        assert!(deliver(&mut a, &mut b, t, true) == 1, "the resend is lost");
        assert_eq!(a.metrics.repair_octo.retransmissions.get(), resent + 1);
        a.octo_nack_tick(t + Duration::from_millis(4));
        assert!(
            a.octo.as_ref().expect("octo").out.is_empty(),
            "the copy waits 5 ms"
        );
        a.octo_nack_tick(t + Duration::from_millis(5));
        assert_eq!(a.metrics.octo_repair_copies.get(), copies + 1);
        deliver(&mut a, &mut b, t + Duration::from_millis(5), false);
        assert_eq!(
            b.metrics.rtp_routed_octo.get(),
            219,
            "the tail arrived, once"
        );
        assert_eq!(b.metrics.repair_octo.lost_unrecovered.get(), 0);
        // The origin's tick has nothing left to do (it may sleep); bridge 2's still asks for
        // 207-209, which bridge 1 never had.
        assert!(!a.octo_nack_tick(t + Duration::from_millis(10)));
        assert!(b.octo_nack_tick(t + Duration::from_millis(10)));
    }
}

#[cfg(test)]
mod simulcast_tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::shard_tests::{VideoPair, join_local, video_pair};
    use super::*;

    fn deliver(from: &mut Shard, to: &mut Shard, now: Instant) {
        let out = std::mem::take(&mut from.octo.as_mut().expect("octo").out);
        for (_, mut d) in out {
            to.on_octo_datagram(now, SocketAddr::from(([127, 0, 0, 1], 4000)), &mut d);
        }
    }

    pub(super) fn packet(ssrc: u32, seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0x10, 0, 0, 0, 0, 0, 0, 0]),
        }
    }

    /// Sends 10 packets of each layer from bridge 1 and returns how many bridge 2 routed.
    fn crossing(a: &mut Shard, b: &mut Shard, tid: TrackId, now: Instant, seq: &mut u16) -> u64 {
        let before = b.metrics.rtp_routed_octo.get();
        for _ in 0..10 {
            for l in Layer::all() {
                a.route(now, tid, l, packet(11 + l.index() as u32, *seq));
            }
            *seq = seq.wrapping_add(1);
        }
        deliver(a, b, now);
        b.metrics.rtp_routed_octo.get() - before
    }

    /// The origin forwards a peer only the layers that peer's receivers need: none before it
    /// asks, the lowest for a thumbnail, all three for the stage, and the top ones stop only
    /// after the grace period.
    #[test]
    fn the_origin_sends_a_peer_only_the_layers_it_asks_for() {
        let VideoPair {
            mut a,
            mut b,
            t0,
            alice,
            bob,
            tid,
        } = video_pair(3);
        assert_eq!(b.sources.get(&tid).map(|s| s.layers.len()), Some(3));

        // Nobody asked yet: nothing crosses, and what was not sent is counted.
        let mut seq = 100;
        assert_eq!(crossing(&mut a, &mut b, tid, t0, &mut seq), 0);
        assert!(a.metrics.octo_bytes_saved.get() > 0);
        // The origin's next announcement says the layers are flowing.
        a.octo_announce(alice);
        deliver(&mut a, &mut b, t0);

        let want = |b: &mut Shard, a: &mut Shard, h: u32, now: Instant| {
            b.set_video_constraints(now, bob, None, HashMap::from([(tid, h)]));
            b.layers_tick(now);
            deliver(b, a, now);
        };
        want(&mut b, &mut a, 180, t0);
        assert_eq!(crossing(&mut a, &mut b, tid, t0, &mut seq), 10, "L0 only");
        want(&mut b, &mut a, 720, t0);
        assert_eq!(crossing(&mut a, &mut b, tid, t0, &mut seq), 30, "all three");
        // Back to a thumbnail: the top layers keep flowing through the grace period...
        let t1 = t0 + Duration::from_millis(100);
        want(&mut b, &mut a, 180, t1);
        assert_eq!(crossing(&mut a, &mut b, tid, t1, &mut seq), 30, "grace");
        // ...and stop after it.
        let t2 = t1 + Duration::from_millis(2100);
        assert_eq!(
            crossing(&mut a, &mut b, tid, t2, &mut seq),
            10,
            "after the grace"
        );
        // No receiver wants it: nothing at all.
        want(&mut b, &mut a, 0, t2);
        let t3 = t2 + Duration::from_millis(2100);
        assert_eq!(crossing(&mut a, &mut b, tid, t3, &mut seq), 0, "nothing");
    }

    /// A demand for a track this bridge is not the origin of, or a layer that does not exist,
    /// changes nothing and is counted.
    #[test]
    fn bad_demands_are_dropped_and_counted() {
        let (mut s, mut sealer) = super::shard_tests::test_shard();
        let now = Instant::now();
        let _a = join_local(&mut s, now, "a");
        let room = crate::directory::conference_id("room").0;
        let m = OctoMessage::LayerDemand {
            tracks: vec![
                OctoDemand {
                    id: "TR01000009".into(),
                    max_layer: Some(0),
                },
                OctoDemand {
                    id: "nonsense".into(),
                    max_layer: Some(1),
                },
                OctoDemand {
                    id: "TR01000009".into(),
                    max_layer: Some(7),
                },
            ],
        };
        let json = serde_json::to_vec(&m).expect("json");
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            ConferenceId(room),
            EndpointId(0),
        );
        let mut d = Vec::new();
        sealer.seal_to_vec(&meta, &json, &mut d).expect("seal");
        s.on_octo_datagram(now, SocketAddr::from(([127, 0, 0, 1], 4002)), &mut d);
        let dropped = |r: &str| s.metrics.octo_dropped.with_label_values(&[r]).get();
        assert_eq!(dropped("unknown_track"), 1);
        assert_eq!(dropped("bad_message"), 2);
    }
}
