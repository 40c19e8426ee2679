//! A media shard: one thread that owns the media UDP socket, every WebRTC leg on it and the
//! conferences placed on it.
//!
//! Packets never cross a thread or a task: a datagram is read, attributed by the demux, fed to
//! its leg, and whatever that produces (forwarded copies into other legs, their encrypted
//! output) is handed to the kernel before the next datagram is forwarded. Signaling talks to the
//! shard through a command channel and hears back through each session's event channel.
//!
//! The state lives here; each concern has its module, along the data flow:
//! - `io`: the thread and its loop (sockets, commands, timers), the only async code;
//! - `ingress`: datagram -> leg, and the servicing of touched legs;
//! - `route`: one decrypted packet -> every receiver and peer bridge that should get it;
//! - `egress`: legs' output gathered and sent in batches (`txbatch`);
//! - `tracks`: sources published, announced, subscribed and torn down;
//! - `legs`: WebRTC legs created, timed out and closed;
//! - `session`: signaling commands and events;
//! - `keyframes`, `repair`, `simulcast`, `speakers`: the media policies;
//! - `flood`: the STUN rate limits in front of legs;
//! - `siblings`: the node's other shards, and datagrams the kernel gave the wrong one;
//! - `cascade`: Octo links and the participants of other bridges;
//! - `admin`: what the admin API asks of a shard;
//! - `fuzzing`: a shard with an Octo peer, for the fuzz targets.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use kaskade_sfu::simulcast::{Layer, Rewrite};
use kaskade_sfu::{
    ConferenceError, ConferenceId, Conferences, EndpointId, JoinRequest, KeyframeDecision,
    KeyframeThrottle, SeqNo, Ssrc, TrackId, TrackKind,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

pub mod admin;
mod cascade;
mod egress;
mod flood;
#[doc(hidden)]
pub mod fuzzing;
mod ingress;
mod io;
mod keyframes;
mod legs;
mod repair;
mod route;
mod rxtime;
mod session;
pub(crate) mod siblings;
mod simulcast;
mod speakers;
mod tracks;
mod txbatch;

pub use io::spawn_all;

use simulcast::LayerIn;

use crate::demux::{Demux, DropReason, LegId, ShardIndex};
use crate::leg::{self, AUDIO_LEVEL_URI, LegSettings};
use crate::messages::{
    BridgeInfo, ErrorCode, IceCandidate, ParticipantInfo, ServerMsg, Target, TrackInfo,
};
use crate::metrics::Metrics;

/// One signaling session (one WebSocket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// What signaling asks of the shard.
#[derive(Debug)]
pub enum Command {
    Join {
        session: SessionId,
        /// The room's id, from the cluster directory.
        conference: ConferenceId,
        room: String,
        identity: String,
        name: String,
        can_publish: bool,
        can_subscribe: bool,
        events: mpsc::UnboundedSender<ServerMsg>,
        started: Instant,
    },
    /// A publisher offer.
    Offer {
        session: SessionId,
        sdp: String,
    },
    /// An answer to our subscriber offer.
    Answer {
        session: SessionId,
        sdp: String,
    },
    Candidate {
        session: SessionId,
        target: Target,
        candidate: Option<IceCandidate>,
    },
    Leave {
        session: SessionId,
    },
    /// A chat line for everyone in the conference, on every bridge.
    Chat {
        session: SessionId,
        text: String,
    },
    /// What the receiver wants of the video it receives (validated by signaling).
    VideoConstraints {
        session: SessionId,
        max_height: Option<u32>,
        tracks: HashMap<TrackId, u32>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    /// The other bridges the cluster directory lists now (Octo links follow it).
    OctoPeers {
        peers: Vec<crate::config::OctoPeer>,
    },
    /// The admin API (shard/admin.rs).
    Admin(admin::AdminRequest),
    /// The shards of this node that carry `conference` now (crate::shards), told to every
    /// shard whenever it changes, before the join that changes it.
    Span {
        conference: ConferenceId,
        shards: crate::shards::ShardSet,
    },
}

/// What the admin API shows of a shard.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub conferences: Vec<ConferenceSnapshot>,
    pub legs: usize,
    pub learned_addresses: usize,
    pub octo_peers: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConferenceSnapshot {
    pub id: String,
    /// The id as a number (the directory's).
    #[serde(skip)]
    pub conference: ConferenceId,
    pub name: String,
    pub participants: Vec<ParticipantInfo>,
}

/// Limits the shard enforces.
#[derive(Debug, Clone)]
pub struct ShardLimits {
    pub max_participants: usize,
    pub max_media_sections: usize,
    /// STUN messages a second reaching legs, per source address and per leg (0: no limit).
    pub stun_per_address: u32,
    pub stun_per_leg: u32,
    /// Legs connecting (ICE and DTLS not done) at most; 0: no limit.
    pub max_pending_legs: usize,
    pub leg_timeout: Duration,
    pub repair: crate::config::RepairMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

/// What a subscriber leg sends for one source track.
struct Sender {
    id: RTCRtpSenderId,
    /// Whether any RTP went out on it (see the track teardown).
    wrote: bool,
    out_ssrc: u32,
    payload_type: u8,
    /// The audio-level extension id negotiated on this leg, once known.
    audio_level_id: Option<u8>,
    /// When each recent packet was last resent to this receiver.
    resend: kaskade_sfu::ResendGuard,
    /// Video: the one continuous stream this receiver sees of the source's layers.
    rewriter: Option<kaskade_sfu::Rewriter>,
    /// The receiver's last report on this stream: fraction lost (/256) and cumulative loss.
    reported_loss: Option<(u8, u32)>,
    /// What its sender reports say (the shard writes them: egress.rs).
    stats: leg::SenderStats,
    clock_rate: u32,
}

struct Leg {
    pc: RTCPeerConnection,
    /// Subscriber legs: forwarded copies encrypted outside `rtc` once verified.
    lean: Option<leg::LeanEgress>,
    owner: EndpointId,
    role: Role,
    /// When the leg was created: it must connect within the leg timeout.
    created: Instant,
    last_rx: Instant,
    deadline: Option<Instant>,
    queued: bool,
    connected: bool,
    /// Publisher legs: `rtc`'s track id -> our track.
    published: HashMap<String, TrackId>,
    /// Subscriber legs: our track -> its sender on this leg.
    senders: HashMap<TrackId, Sender>,
    /// Subscriber legs: an offer is out and unanswered.
    awaiting_answer: bool,
    /// Subscriber legs: something changed since the last offer.
    needs_offer: bool,
    /// Measured from the receiver reports a subscriber leg sends.
    rtt: kaskade_sfu::SmoothedRtt,
    /// Subscriber legs: the downlink estimate layer allocation works with.
    bandwidth: simulcast::Bandwidth,
    /// Publisher legs: the rids of the offered video, lowest layer first.
    rids: Vec<String>,
    /// Subscriber legs: the client's ICE credentials are known (its first answer is in).
    answered: bool,
    /// Subscriber legs: connectivity checks that came before the answer. The client starts
    /// checking as soon as it has our offer, and `rtc` discards a check it cannot verify the
    /// username of, so the connection would wait for the client's next one.
    early_stun: Vec<(SocketAddr, BytesMut)>,
}

/// Where a track's packets come from (each layer's SSRC is in its [`LayerIn`]).
#[derive(Clone, Copy)]
enum Origin {
    /// A publisher leg of this bridge.
    Local {
        leg: LegId,
        receiver: RTCRtpReceiverId,
    },
    /// Another bridge, over Octo.
    Remote { bridge: kaskade_octo::BridgeId },
}

/// Who asked an origin for layers of a track: a peer bridge, and which of its shards (each
/// shard of a node that spans a conference asks for its own receivers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DemandFrom {
    bridge: kaskade_octo::BridgeId,
    shard: u8,
}

/// Forwarding state of one published track.
struct Source {
    kind: TrackKind,
    owner: EndpointId,
    conference: ConferenceId,
    origin: Origin,
    /// The inbound audio-level extension id (the publisher leg's, or Octo's fixed one).
    audio_level_id: Option<u8>,
    /// Subscriber legs that carry it.
    fanout: Vec<LegId>,
    /// When a switch keyframe of each layer was last asked for (repeats wait [`simulcast::KEYFRAME_REPEAT`]).
    switch_asked: [Option<Instant>; kaskade_sfu::simulcast::MAX_LAYERS],
    /// Its layers, lowest first: one without simulcast. Duplicate filters, caches and gap
    /// trackers are per layer, as each layer is its own RTP stream.
    layers: Vec<LayerIn>,
    /// At the origin: which layers each peer bridge needs (simulcast sources only).
    demand: kaskade_sfu::LayerDemand<DemandFrom>,
    /// An administrator muted it (admin API): nothing of it is forwarded, here or to peers.
    muted: bool,
}

impl Source {
    fn new(
        kind: TrackKind,
        owner: EndpointId,
        conference: ConferenceId,
        origin: Origin,
        audio_level_id: Option<u8>,
        repair: crate::config::RepairMode,
        layers: Vec<LayerIn>,
    ) -> Self {
        let layers = if layers.is_empty() {
            vec![LayerIn::new(kind, repair, 0, String::new())]
        } else {
            layers
        };
        Self {
            kind,
            owner,
            conference,
            origin,
            audio_level_id,
            fanout: Vec::new(),
            layers,
            switch_asked: [None; kaskade_sfu::simulcast::MAX_LAYERS],
            demand: kaskade_sfu::LayerDemand::default(),
            muted: false,
        }
    }

    fn is_simulcast(&self) -> bool {
        self.layers.len() > 1
    }
}

struct Peer {
    session: SessionId,
    events: mpsc::UnboundedSender<ServerMsg>,
    publisher: Option<LegId>,
    subscriber: Option<LegId>,
    /// What it asked to get of the video it receives, and its layer allocation.
    video: simulcast::ReceiverVideo,
}

pub struct Shard {
    /// Which of the node's shards this is (its legs' ufrags start with its character).
    index: ShardIndex,
    /// The node's other shards; None when this is the only one.
    siblings: Option<siblings::Siblings>,
    /// What this shard last added to the node's gauges (every shard adds its share).
    gauges: GaugeShares,
    settings: LegSettings,
    limits: ShardLimits,
    bridge: BridgeInfo,
    metrics: Arc<Metrics>,
    demux: Demux,
    legs: Vec<Option<Leg>>,
    free_legs: Vec<u32>,
    timers: BTreeSet<(Instant, LegId)>,
    dirty: Vec<LegId>,
    core: Conferences,
    keyframes: KeyframeThrottle,
    /// Keyframe requests the bridge makes for layer switches and stream starts (shard/simulcast.rs).
    switch_keyframes: KeyframeThrottle,
    sessions: HashMap<SessionId, EndpointId>,
    peers: HashMap<EndpointId, Peer>,
    sources: HashMap<TrackId, Source>,
    /// (publisher leg, inbound SSRC) -> track and layer, the per-packet lookup.
    by_ssrc: HashMap<(LegId, u32), (TrackId, Layer)>,
    /// Outbound SSRC -> track and layer, to attribute keyframe requests and NACKs: a track's
    /// own SSRC (what receivers get, layer 0 on Octo) and its other layers' Octo SSRCs.
    by_out_ssrc: HashMap<u32, (TrackId, Layer)>,
    /// Remote sources: the highest layer local receivers need, told to origin bridges.
    demand: kaskade_sfu::DemandAggregator,
    out: Vec<(SocketAddr, BytesMut)>,
    octo: Option<cascade::Cascade>,
    /// A new gap appeared: run the NACK tick now.
    nack_due: bool,
    /// Something for the NACK tick to do soon (a remote frame left open, a resend copy
    /// queued): tick within [`NACK_TICK`] even if the tick had gone idle.
    nack_wanted: bool,
    speakers: HashMap<ConferenceId, kaskade_sfu::DominantSpeaker<EndpointId>>,
    stun_guard: flood::StunGuard,
}

/// Handle to a running shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub media_addr: SocketAddr,
}

/// What one shard contributes to the node-wide gauges: each adds the change since its last
/// report, so the gauge is the sum over shards.
#[derive(Default)]
struct GaugeShares {
    conferences: i64,
    participants: i64,
    tracks: i64,
    legs: i64,
    octo_streams_out: i64,
    octo_conferences: i64,
    octo_remote: i64,
}

impl GaugeShares {
    fn report(last: &mut i64, gauge: &prometheus::IntGauge, now: i64) {
        gauge.add(now - *last);
        *last = now;
    }
}

impl Shard {
    pub fn new(
        settings: LegSettings,
        limits: ShardLimits,
        bridge: BridgeInfo,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stun_guard = flood::StunGuard::new(limits.stun_per_address, limits.stun_per_leg);
        Self {
            index: ShardIndex(0),
            siblings: None,
            gauges: GaugeShares::default(),
            settings,
            limits,
            bridge,
            metrics,
            demux: Demux::new(),
            legs: Vec::new(),
            free_legs: Vec::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            core: Conferences::new(),
            keyframes: KeyframeThrottle::default(),
            switch_keyframes: simulcast::switch_throttle(),
            sessions: HashMap::new(),
            peers: HashMap::new(),
            sources: HashMap::new(),
            by_ssrc: HashMap::new(),
            by_out_ssrc: HashMap::new(),
            demand: kaskade_sfu::DemandAggregator::default(),
            out: Vec::new(),
            octo: None,
            nack_due: false,
            nack_wanted: false,
            speakers: HashMap::new(),
            stun_guard,
        }
    }
}

#[cfg(test)]
mod tests;
