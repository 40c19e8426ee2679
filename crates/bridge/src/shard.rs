//! A media shard: one thread that owns the media UDP socket, every WebRTC leg on it and the
//! conferences placed on it.
//!
//! Packets never cross a thread or a task: a datagram is read, attributed by the demux, fed to
//! its leg, and whatever that produces (forwarded copies into other legs, their encrypted
//! output) is sent before the next datagram is read. Signaling talks to the shard through a
//! command channel and hears back through each session's event channel.

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
mod repair;
mod rxtime;
mod simulcast;
mod speakers;
mod txbatch;

use simulcast::LayerIn;

use crate::demux::{Demux, LegId};
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
}

struct Leg {
    pc: RTCPeerConnection,
    owner: EndpointId,
    role: Role,
    /// When the leg was created: it must connect within the leg timeout.
    created: Instant,
    last_rx: Instant,
    deadline: Option<Instant>,
    queued: bool,
    /// RTP written since its output was last taken (see [`FLUSH_WRITES`]).
    unflushed: u8,
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
}

/// RTP packets written to a leg before its output is taken, even mid-pass. `rtc` passes writes
/// through a queue per pipeline stage and interceptor (entries of a few hundred bytes), and each
/// queue keeps the capacity of the largest burst it ever held: with a whole receive batch (up
/// to 33 datagrams) written to a leg at once, that was ~125 KiB per subscriber leg at 720p, for
/// the leg's lifetime (docs/benchmarks.md, the meeting section).
const FLUSH_WRITES: u8 = 4;

/// Moves what a leg has to send to `out`.
///
/// A lite leg writes only to addresses whose checks it answered (after MESSAGE-INTEGRITY
/// passed): that is when a 4-tuple becomes trustworthy, and is learned here.
fn take_writes(
    leg_id: LegId,
    leg: &mut Leg,
    out: &mut Vec<(SocketAddr, BytesMut)>,
    demux: &mut Demux,
) {
    leg.unflushed = 0;
    while let Some(w) = leg.pc.poll_write() {
        let addr = w.transport.peer_addr;
        if !demux.is_learned(&addr) {
            debug!(leg = leg_id.0, %addr, "learned address");
            demux.learn(leg_id, addr);
        }
        out.push((addr, w.message));
    }
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
    demand: kaskade_sfu::LayerDemand<kaskade_octo::BridgeId>,
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
}

/// Handle to a running shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub media_addr: SocketAddr,
}

/// Binds the media socket and starts the shard on its own thread.
pub fn spawn(
    socket: std::net::UdpSocket,
    settings: LegSettings,
    limits: ShardLimits,
    bridge: BridgeInfo,
    metrics: Arc<Metrics>,
    octo: Option<(std::net::UdpSocket, crate::config::OctoConfig)>,
) -> Result<(ShardHandle, std::thread::JoinHandle<()>)> {
    socket
        .set_nonblocking(true)
        .context("making the media socket non-blocking")?;
    let media_addr = socket.local_addr().context("media socket address")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut shard = Shard::new(settings, limits, bridge, metrics);
    let octo_socket = match octo {
        Some((sock, config)) => {
            // Ids this bridge allocates carry its Octo id, so they never collide across the
            // bridges of a conference.
            shard.core = Conferences::with_id_prefix(config.bridge_id as u8);
            sock.set_nonblocking(true)
                .context("making the Octo socket non-blocking")?;
            shard.octo = Some(cascade::Cascade::new(
                &config,
                &shard.metrics,
                Instant::now(),
            )?);
            Some(sock)
        }
        None => None,
    };
    let bridge_id = shard.bridge.id.clone();
    let thread = std::thread::Builder::new()
        .name("kaskade-shard-0".into())
        .spawn(move || {
            // Every line the media thread logs names its bridge (a field of this span in JSON).
            let _span = tracing::info_span!("shard", bridge = %bridge_id).entered();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the shard runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let octo = match octo_socket.map(UdpSocket::from_std).transpose() {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot register the Octo socket");
                        return;
                    }
                };
                match UdpSocket::from_std(socket) {
                    Ok(socket) => shard.run(socket, octo, rx).await,
                    Err(e) => tracing::error!(error = %e, "cannot register the media socket"),
                }
            });
        })
        .context("starting the shard thread")?;
    Ok((
        ShardHandle {
            commands: tx,
            media_addr,
        },
        thread,
    ))
}

const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often gaps (uplink, Octo) are turned into NACKs: a gap waits at most this long before
/// its first request. Short, because every millisecond here is repair delay; a reordered
/// packet that arrives meanwhile is simply not asked for.
const NACK_TICK: Duration = Duration::from_millis(5);
/// The NACK tick's period while it has nothing to do; a packet that gives it work wakes it.
const NACK_IDLE: Duration = Duration::from_secs(1);
const MAX_DATAGRAM: usize = 2048;

impl Shard {
    pub fn new(
        settings: LegSettings,
        limits: ShardLimits,
        bridge: BridgeInfo,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
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
        }
    }

    async fn run(
        mut self,
        socket: UdpSocket,
        octo_socket: Option<UdpSocket>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        info!(addr = ?socket.local_addr().ok(), advertised = %self.settings.advertised, "media shard running");
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut octo_buf = vec![0u8; MAX_DATAGRAM];
        // Kernel receive timestamps (shard/rxtime.rs), for kaskade_forwarding_delay_seconds.
        let mut cmsg = rxtime::Cmsg::new();
        let mut octo_cmsg = rxtime::Cmsg::new();
        let mut pending = rxtime::Pending::new();
        for (name, s) in
            std::iter::once(("media", Some(&socket))).chain([("Octo", octo_socket.as_ref())])
        {
            if let Some(s) = s
                && !rxtime::enable(s)
            {
                warn!(
                    socket = name,
                    "no kernel receive timestamps: the forwarding delay starts at the read"
                );
            }
        }
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut next_speakers = Instant::now() + speakers::SPEAKER_TICK;
        let mut next_nack = Instant::now() + NACK_TICK;
        let mut next_layers = Instant::now() + simulcast::LAYER_TICK;
        loop {
            if self.nack_due {
                self.nack_due = false;
                self.nack_wanted |= self.nack_tick(Instant::now());
            }
            if self.nack_wanted {
                self.nack_wanted = false;
                next_nack = next_nack.min(Instant::now() + NACK_TICK);
            }
            self.service_dirty(Instant::now());
            self.send_out(&socket, octo_socket.as_ref());
            pending.observe(&self.metrics.forwarding_delay);
            let next_timer = self.timers.first().map(|(t, _)| *t);
            let wake = next_timer
                .map_or(next_housekeeping, |t| t.min(next_housekeeping))
                .min(next_speakers)
                .min(next_nack)
                .min(next_layers);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(Instant::now(), cmd),
                    None => break,
                },
                // recvmsg (rxtime::recv) in place of recv_from: the same datagram, plus the
                // kernel's receive timestamp.
                r = socket.async_io(Interest::READABLE, || {
                    rxtime::recv(&socket, &mut buf, &mut cmsg)
                }) => match r {
                    Ok((n, from, stamp)) => {
                        let now = Instant::now();
                        let data = buf.get(..n).unwrap_or_default();
                        self.on_client_datagram(now, from, data, stamp, &mut pending);
                        // Drain what is already queued before flushing: one pass of the dirty
                        // legs then serves many datagrams.
                        for _ in 1..rxtime::BATCH {
                            let r = socket.try_io(Interest::READABLE, || {
                                rxtime::recv(&socket, &mut buf, &mut cmsg)
                            });
                            match r {
                                Ok((n, from, stamp)) => {
                                    let data = buf.get(..n).unwrap_or_default();
                                    self.on_client_datagram(now, from, data, stamp, &mut pending);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "media socket receive error"),
                },
                // select! picks among ready branches at random, so a flooding peer bridge
                // cannot starve the media socket (and vice versa).
                r = async {
                    match octo_socket.as_ref() {
                        Some(s) => {
                            s.async_io(Interest::READABLE, || {
                                rxtime::recv(s, &mut octo_buf, &mut octo_cmsg)
                            })
                            .await
                        }
                        None => std::future::pending().await,
                    }
                } => match r {
                    Ok((n, from, stamp)) => {
                        let now = Instant::now();
                        if let Some(d) = octo_buf.get_mut(..n) {
                            if rxtime::is_octo_rtp(d) {
                                pending.push(rxtime::Input::Octo, stamp);
                            }
                            self.on_octo_datagram(now, from, d);
                        }
                    }
                    Err(e) => debug!(error = %e, "Octo socket receive error"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.on_timers(now);
                    if now >= next_nack {
                        // Idle (nothing missing, no frame open, no copy queued), the tick
                        // sleeps until a packet gives it work: 200 wake-ups a second less.
                        next_nack = now
                            + if self.nack_tick(now) {
                                NACK_TICK
                            } else {
                                NACK_IDLE
                            };
                    }
                    if now >= next_layers {
                        self.layers_tick(now);
                        next_layers = now + simulcast::LAYER_TICK;
                    }
                    if now >= next_speakers {
                        self.speakers_tick(now);
                        next_speakers = now + speakers::SPEAKER_TICK;
                    }
                    if now >= next_housekeeping {
                        self.housekeeping(now);
                        next_housekeeping = now + HOUSEKEEPING;
                    }
                }
            }
        }
        info!("media shard stopped");
    }

    /// Turns gaps into NACKs, toward publishers and origin bridges. True while there is more
    /// to do in later ticks: gaps still missing, remote frames open, resend copies queued.
    fn nack_tick(&mut self, now: Instant) -> bool {
        if self.limits.repair == crate::config::RepairMode::PerHop {
            let uplink = self.uplink_nack_tick(now);
            let octo = self.octo_nack_tick(now);
            uplink || octo
        } else {
            false
        }
    }

    fn send_out(&mut self, socket: &UdpSocket, octo_socket: Option<&UdpSocket>) {
        if let (Some(octo), Some(sock)) = (self.octo.as_mut(), octo_socket) {
            let out = std::mem::take(&mut octo.out);
            let sent = txbatch::send_all(sock, &out);
            if sent.failed > 0 {
                self.metrics.send_errors.inc_by(sent.failed);
                debug!(failed = sent.failed, "Octo sends failed");
            }
            for (_, bytes) in out {
                octo.recycle(bytes);
            }
        }
        if !self.out.is_empty() {
            let sent = txbatch::send_all(socket, &self.out);
            self.out.clear();
            self.metrics.packets_out.inc_by(sent.packets);
            self.metrics.bytes_out.inc_by(sent.bytes);
            if sent.failed > 0 {
                self.metrics.send_errors.inc_by(sent.failed);
                debug!(failed = sent.failed, "media sends failed");
            }
        }
    }

    // ---- datagrams and timers -------------------------------------------------------------

    /// A datagram from the media socket, received and read at `stamp`: RTP joins the
    /// forwarding-delay batch, observed after the next send pass.
    fn on_client_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        stamp: rxtime::Stamp,
        pending: &mut rxtime::Pending,
    ) {
        if rxtime::is_client_rtp(data) {
            pending.push(rxtime::Input::Client, stamp);
        }
        self.on_datagram(now, from, data);
    }

    /// Feeds one datagram to its leg (or drops and counts it).
    pub fn on_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.metrics.packets_in.inc();
        self.metrics.bytes_in.inc_by(data.len() as u64);
        let leg_id = match self.demux.route(from, data) {
            Ok(l) => l,
            Err(reason) => {
                self.metrics
                    .udp_dropped
                    .with_label_values(&[reason.as_str()])
                    .inc();
                return;
            }
        };
        let local_addr = self.settings.advertised;
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        leg.last_rx = now;
        let r = leg.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
        if let Err(e) = r {
            self.metrics.leg_read_errors.inc();
            debug!(leg = leg_id.0, error = %e, "leg refused a datagram");
        }
        self.mark(leg_id);
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(&(t, leg_id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(leg) = self.leg_mut(leg_id) {
                leg.deadline = None;
                if let Err(e) = leg.pc.handle_timeout(now) {
                    debug!(leg = leg_id.0, error = %e, "leg timeout handling failed");
                }
                self.mark(leg_id);
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let timeout = self.limits.leg_timeout;
        let stale: Vec<EndpointId> = self
            .legs
            .iter()
            .flatten()
            // Silent, or never connected: ICE checks alone keep `last_rx` fresh while a failed
            // DTLS handshake leaves the leg useless.
            .filter(|l| {
                now.saturating_duration_since(l.last_rx) > timeout
                    || (!l.connected && now.saturating_duration_since(l.created) > timeout)
            })
            .map(|l| l.owner)
            .collect();
        for ep in stale {
            self.fail(
                now,
                ep,
                ErrorCode::MediaTimeout,
                "nothing received, or the connection never completed, within the leg timeout",
            );
        }
        self.octo_housekeeping(now);
        self.expire_caches(now);
        // Peers whose demands ended or timed out hold no state.
        for src in self.sources.values_mut() {
            src.demand.expire(now);
        }
        self.metrics.conferences.set(self.core.len() as i64);
        self.metrics
            .participants
            .set(self.core.participant_count() as i64);
        self.metrics.tracks.set(self.core.track_count() as i64);
        self.metrics
            .legs
            .set(self.legs.iter().flatten().count() as i64);
    }

    fn mark(&mut self, leg_id: LegId) {
        if let Some(leg) = self.leg_mut(leg_id)
            && !leg.queued
        {
            leg.queued = true;
            self.dirty.push(leg_id);
        }
    }

    /// Drains every touched leg: events, then application reads (which may touch other
    /// legs), then network writes, then its timer.
    fn service_dirty(&mut self, now: Instant) {
        while let Some(leg_id) = self.dirty.pop() {
            if let Some(leg) = self.leg_mut(leg_id) {
                leg.queued = false;
            } else {
                continue;
            }
            self.drain_events(now, leg_id);
            self.drain_reads(now, leg_id);
            let Some(leg) = self
                .legs
                .get_mut(leg_id.0 as usize)
                .and_then(|l| l.as_mut())
            else {
                continue;
            };
            take_writes(leg_id, leg, &mut self.out, &mut self.demux);
            let next = leg.pc.poll_timeout();
            let prev = std::mem::replace(&mut leg.deadline, next);
            if prev != next {
                if let Some(p) = prev {
                    self.timers.remove(&(p, leg_id));
                }
                if let Some(n) = next {
                    self.timers.insert((n, leg_id));
                }
            }
        }
    }

    fn drain_events(&mut self, now: Instant, leg_id: LegId) {
        loop {
            let Some(leg) = self.leg_mut(leg_id) else {
                return;
            };
            let Some(ev) = leg.pc.poll_event() else {
                return;
            };
            let (owner, role) = (leg.owner, leg.role);
            match ev {
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                    if role == Role::Publisher =>
                {
                    self.on_track_open(now, leg_id, owner, init);
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track))
                    if role == Role::Publisher =>
                {
                    let tid = self
                        .leg_mut(leg_id)
                        .and_then(|l| l.published.remove(&track));
                    if let Some(tid) = tid {
                        self.unpublish(now, tid);
                    }
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    debug!(leg = leg_id.0, ?role, %state, "leg state");
                    match state {
                        RTCPeerConnectionState::Connected => {
                            if let Some(l) = self.leg_mut(leg_id) {
                                l.connected = true;
                            }
                            if role == Role::Subscriber {
                                self.request_keyframes_for(now, leg_id);
                            }
                        }
                        RTCPeerConnectionState::Failed => {
                            self.fail(now, owner, ErrorCode::MediaTimeout, "connection failed");
                            return;
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    fn drain_reads(&mut self, now: Instant, leg_id: LegId) {
        loop {
            let Some(leg) = self.leg_mut(leg_id) else {
                return;
            };
            let Some(msg) = leg.pc.poll_read() else {
                return;
            };
            match msg.message {
                RTCMessage::RtpPacket(track, packet) => self.forward(now, leg_id, &track, packet),
                RTCMessage::RtcpPacket(_, packets) => {
                    for p in &packets {
                        let any = p.as_any();
                        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            self.on_keyframe_request(now, leg_id, pli.media_ssrc);
                        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                            for e in &fir.fir {
                                self.on_keyframe_request(now, leg_id, e.ssrc);
                            }
                        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                            self.on_receiver_nack(now, leg_id, nack);
                        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                            self.on_receiver_report(now, leg_id, rr);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // ---- media -----------------------------------------------------------------------------

    fn on_track_open(
        &mut self,
        now: Instant,
        leg_id: LegId,
        owner: EndpointId,
        init: RTCTrackEventInit,
    ) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        // Every rid layer of a track fires its own OnTrack (same track id, its own SSRC and
        // rid); the rid's rank in the offer is the layer.
        let rids = leg.rids.clone();
        let layer = match init.rid.as_deref().filter(|r| !r.is_empty()) {
            None => Layer::BASE,
            Some(rid) => match rids
                .iter()
                .position(|r| r == rid)
                .and_then(|i| Layer::new(i as u8))
            {
                Some(l) => l,
                None => {
                    warn!(endpoint = %owner, rid, "a layer with a rid the offer did not list is ignored");
                    return;
                }
            },
        };
        // A re-offer can fire OnTrack again for a track we know: keep one track per id.
        if let Some(&tid) = leg.published.get(&init.track_id) {
            self.by_ssrc.insert((leg_id, init.ssrc), (tid, layer));
            if let Some(src) = self.sources.get_mut(&tid) {
                src.origin = Origin::Local {
                    leg: leg_id,
                    receiver: init.receiver_id,
                };
                if let Some(l) = src.layers.get_mut(layer.index()) {
                    l.ssrc = init.ssrc;
                }
                debug!(track = %tid, %layer, ssrc = init.ssrc, "layer bound");
            }
            return;
        }
        let Some(mut receiver) = leg.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let kind = match receiver.track().kind() {
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        let audio_level_id = receiver
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == AUDIO_LEVEL_URI)
            .and_then(|h| u8::try_from(h.id).ok());
        let out_ssrc = self.fresh_ssrc();
        let tid = match self.core.publish(owner, kind, Ssrc(out_ssrc)) {
            Ok(t) => t,
            Err(e) => {
                warn!(endpoint = %owner, error = %e, "track refused");
                return;
            }
        };
        info!(endpoint = %owner, track = %tid, kind = kind.as_str(), ssrc = init.ssrc, rid = ?init.rid, "track published");
        if let Some(leg) = self.leg_mut(leg_id) {
            leg.published.insert(init.track_id.clone(), tid);
        }
        self.by_ssrc.insert((leg_id, init.ssrc), (tid, layer));
        self.by_out_ssrc.insert(out_ssrc, (tid, Layer::BASE));
        let Some(conference) = self.core.conference_of(owner).map(|c| c.id) else {
            return;
        };
        // Simulcast video: one layer per offered rid, each with its own Octo SSRC (layer 0
        // goes with the track's).
        let repair = self.limits.repair;
        let mut layers: Vec<LayerIn> = if kind == TrackKind::Video && init.rid.is_some() {
            rids.iter()
                .map(|r| LayerIn::new(kind, repair, 0, r.clone()))
                .collect()
        } else {
            vec![LayerIn::new(kind, repair, 0, String::new())]
        };
        for (i, l) in layers.iter_mut().enumerate() {
            if i == layer.index() {
                l.ssrc = init.ssrc;
            }
            l.octo_ssrc = if i == 0 { out_ssrc } else { self.fresh_ssrc() };
            if let Some(lay) = Layer::new(i as u8) {
                self.by_out_ssrc.insert(l.octo_ssrc, (tid, lay));
            }
        }
        self.sources.insert(
            tid,
            Source::new(
                kind,
                owner,
                conference,
                Origin::Local {
                    leg: leg_id,
                    receiver: init.receiver_id,
                },
                audio_level_id,
                repair,
                layers,
            ),
        );
        self.announce_track(now, owner, tid, kind);
        self.octo_announce(owner);
    }

    /// Tells the conference about a new track and subscribes every local receiver to it.
    fn announce_track(&mut self, now: Instant, owner: EndpointId, tid: TrackId, kind: TrackKind) {
        if let Some(conference) = self.core.conference_of(owner).map(|c| c.id) {
            self.speaker_added(now, conference, owner, kind);
        }
        let subscribers: Vec<EndpointId> = self
            .core
            .track_with_conference(tid)
            .map(|(c, t)| c.subscribers(t).collect())
            .unwrap_or_default();
        let announce = ServerMsg::TrackPublished {
            participant_id: owner.to_string(),
            track: TrackInfo {
                id: tid.to_string(),
                kind: kind.as_str().into(),
                muted: false,
            },
        };
        self.broadcast(owner, &announce);
        for sub in subscribers {
            self.subscribe(now, sub, tid);
        }
    }

    /// Adds `track` to `receiver`'s subscriber leg (creating it) and renegotiates.
    fn subscribe(&mut self, now: Instant, receiver: EndpointId, tid: TrackId) {
        let Some(leg_id) = self.subscriber_leg(now, receiver) else {
            return;
        };
        let Some(track) = self.core.track(tid) else {
            return;
        };
        let (kind, owner, out_ssrc) = (track.kind, track.owner, track.out_ssrc.0);
        let simulcast = self.sources.get(&tid).is_some_and(Source::is_simulcast);
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.senders.contains_key(&tid) {
            return;
        }
        let (codec_kind, codec, payload_type) = leg::send_codec(kind);
        let media = MediaStreamTrack::new(
            owner.to_string(),
            tid.to_string(),
            tid.to_string(),
            codec_kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        // Every video copy goes through a rewriter, simulcast or not, so that every receiver's
        // stream is numbered the same way; a simulcast one gets its layer from the allocator.
        let rewriter = (kind == TrackKind::Video).then(|| {
            if simulcast {
                kaskade_sfu::Rewriter::new()
            } else {
                kaskade_sfu::Rewriter::single_layer()
            }
        });
        match leg.pc.add_track(media) {
            Ok(id) => {
                leg.senders.insert(
                    tid,
                    Sender {
                        id,
                        wrote: false,
                        out_ssrc,
                        payload_type,
                        audio_level_id: None,
                        resend: kaskade_sfu::ResendGuard::default(),
                        rewriter,
                        reported_loss: None,
                    },
                );
                leg.needs_offer = true;
                if let Some(src) = self.sources.get_mut(&tid) {
                    src.fanout.push(leg_id);
                }
                self.offer_if_needed(now, leg_id);
                if kind == TrackKind::Video {
                    self.allocate_for(now, receiver);
                }
            }
            Err(e) => {
                warn!(endpoint = %receiver, track = %tid, error = %e, "cannot add track to subscriber leg")
            }
        }
    }

    fn subscriber_leg(&mut self, now: Instant, ep: EndpointId) -> Option<LegId> {
        let existing = self.peers.get(&ep)?.subscriber;
        if existing.is_some() {
            return existing;
        }
        let leg_id = match self.new_leg(now, ep, Role::Subscriber) {
            Ok(l) => l,
            Err(e) => {
                self.fail(now, ep, ErrorCode::Internal, &format!("{e:#}"));
                return None;
            }
        };
        if let Some(p) = self.peers.get_mut(&ep) {
            p.subscriber = Some(leg_id);
        }
        Some(leg_id)
    }

    fn offer_if_needed(&mut self, now: Instant, leg_id: LegId) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.awaiting_answer || !leg.needs_offer {
            return;
        }
        let owner = leg.owner;
        let sdp = leg
            .pc
            .create_offer(None)
            .and_then(|o| {
                let sdp = o.sdp.clone();
                leg.pc.set_local_description(now, o).map(|_| sdp)
            })
            .map_err(|e| e.to_string());
        match sdp {
            Ok(sdp) => {
                leg.awaiting_answer = true;
                leg.needs_offer = false;
                self.mark(leg_id);
                self.send_to(
                    owner,
                    ServerMsg::Offer {
                        target: Target::Subscriber,
                        sdp,
                    },
                );
            }
            Err(e) => self.fail(
                now,
                owner,
                ErrorCode::Internal,
                &format!("creating subscriber offer: {e}"),
            ),
        }
    }

    /// Forwards one RTP packet from a publisher leg to every subscriber leg of its track.
    fn forward(&mut self, now: Instant, leg_id: LegId, rtc_track: &str, packet: rtc::rtp::Packet) {
        let ssrc = packet.header.ssrc;
        let (tid, layer) = match self.by_ssrc.get(&(leg_id, ssrc)) {
            Some(t) => *t,
            None => {
                // Before OnTrack was seen for a new SSRC of a known track (re-offer). Only a
                // single-layer track can be attributed without it: a simulcast layer's rank
                // comes from its rid, which OnTrack carries.
                let known = self
                    .leg_mut(leg_id)
                    .and_then(|l| l.published.get(rtc_track).copied())
                    .filter(|t| self.sources.get(t).is_some_and(|s| !s.is_simulcast()));
                match known {
                    Some(t) => {
                        self.by_ssrc.insert((leg_id, ssrc), (t, Layer::BASE));
                        if let Some(l) = self.sources.get_mut(&t).and_then(|s| s.layers.first_mut())
                        {
                            l.ssrc = ssrc;
                        }
                        (t, Layer::BASE)
                    }
                    None => {
                        self.metrics.rtp_unroutable.inc();
                        return;
                    }
                }
            }
        };
        self.route(now, tid, layer, packet);
    }

    /// Forwards one RTP packet of `tid`'s `layer` (from a publisher leg or from Octo) to every
    /// local subscriber leg and, for a local track, to each peer bridge of its conference that
    /// needs the layer.
    fn route(&mut self, now: Instant, tid: TrackId, layer: Layer, packet: rtc::rtp::Packet) {
        let Some(src) = self.sources.get_mut(&tid) else {
            self.metrics.rtp_unroutable.inc();
            return;
        };
        let layer_count = src.layers.len();
        let Some(lin) = src.layers.get_mut(layer.index()) else {
            self.metrics.rtp_unroutable.inc();
            return;
        };
        let seq = SeqNo(packet.header.sequence_number);
        // A repair: receivers that saw the gap may be NACKing it right now.
        let (filled, new_gap) = lin.nack.as_mut().map_or((false, false), |n| {
            let before = n.pending();
            let filled = n.on_video_packet(now, seq, packet.header.marker);
            (filled, n.pending() > before)
        });
        // Every millisecond before the first NACK is repair delay: ask at once, not at the
        // next tick (a packet that was only reordered costs one needless request).
        self.nack_due |= new_gap;
        // A remote frame still open may need a tail probe (octo_nack_tick).
        self.nack_wanted |= lin.nack.is_some()
            && !packet.header.marker
            && matches!(src.origin, Origin::Remote { .. });
        // End to end, a duplicate video packet is a publisher's retransmission for some
        // receiver downstream: it is relayed like the original (that is the cost measured).
        let repeat = !lin.dedupe.accept(seq);
        if repeat
            && (src.kind == TrackKind::Audio
                || self.limits.repair == crate::config::RepairMode::PerHop)
        {
            self.metrics.rtp_duplicates.inc();
            return;
        }
        // What the rewriters read of a video packet, parsed once for every receiver.
        let codec = (src.kind == TrackKind::Video).then(|| {
            let sp = simulcast::source_packet(layer, &packet);
            if sp.keyframe
                && let Some(h) = simulcast::vp8_keyframe_height(&packet.payload)
            {
                lin.height = h;
            }
            lin.meter.add(now, 12 + packet.payload.len());
            sp
        });
        self.note_arrival(tid, layer, seq);
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        // Muted: still tracked above (gaps, cache), so repair works again at once on unmute.
        if src.muted {
            self.metrics.rtp_muted.inc();
            return;
        }
        // hardening (issue 14): only a one-byte level is copied; see rtpext::audio_level.
        let audio_level = src
            .audio_level_id
            .and_then(|id| crate::rtpext::audio_level(&packet.header, id));
        // Header extensions are per leg (ids differ, and `rtc` refuses ids not negotiated on
        // the sending leg); the ones a receiver needs are re-added with that leg's ids.
        let mut base = packet;
        base.header.extension = false;
        base.header.extensions.clear();
        base.header.extensions_padding = 0;
        let local_origin = matches!(src.origin, Origin::Local { .. });
        if src.kind == TrackKind::Audio
            && let Some(level) = audio_level.as_ref().and_then(|l| l.first().copied())
        {
            let (conference, owner) = (src.conference, src.owner);
            self.speaker_level(now, conference, owner, level);
        }
        let Some(src) = self.sources.get_mut(&tid) else {
            return;
        };
        if local_origin {
            self.metrics.rtp_routed_local.inc();
        } else {
            self.metrics.rtp_routed_octo.inc();
        }
        let kind = src.kind;
        let fanout = std::mem::take(&mut src.fanout);
        let mut forwarded = 0u64;
        let mut forwarded_bytes = 0u64;
        let mut shared_payload: simulcast::SharedPayload = None;
        for &sub in &fanout {
            let Some(leg) = self.legs.get_mut(sub.0 as usize).and_then(|l| l.as_mut()) else {
                continue;
            };
            if !leg.connected {
                continue;
            }
            let Some(sender) = leg.senders.get_mut(&tid) else {
                continue;
            };
            let mut p = match (sender.rewriter.as_mut(), codec.as_ref()) {
                (Some(rw), Some(sp)) => {
                    let before = rw.current();
                    match rw.rewrite(now, sp) {
                        Rewrite::Forward(r) => {
                            if r.switched
                                && let Some(before) = before
                            {
                                let m = &self.metrics.simulcast_switches;
                                if layer > before {
                                    m.up.inc();
                                } else if layer < before {
                                    m.down.inc();
                                }
                            }
                            simulcast::rewritten_packet(&base, sp, &r, &mut shared_payload)
                        }
                        Rewrite::Drop(_) => continue,
                    }
                }
                _ => base.clone(),
            };
            p.header.ssrc = sender.out_ssrc;
            p.header.payload_type = sender.payload_type;
            if filled {
                // Counts as this receiver's resend: a NACK it sent before this arrives is not
                // answered with a second copy within the RTT.
                sender
                    .resend
                    .allow(now, SeqNo(p.header.sequence_number), leg.rtt.get());
            }
            if let (Some(level), Some(id)) = (&audio_level, sender.audio_level_id) {
                p.header.extension = true;
                p.header.extension_profile = rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE;
                p.header.extensions.push(rtc::rtp::header::Extension {
                    id,
                    payload: level.clone(),
                });
            }
            let len = 12 + p.payload.len() as u64;
            let sender_id = sender.id;
            let Some(mut s) = leg.pc.rtp_sender(sender_id) else {
                continue;
            };
            match s.write_rtp(now, p) {
                Ok(()) => {
                    sender.wrote = true;
                    forwarded += 1;
                    forwarded_bytes += len;
                    if kind == TrackKind::Video {
                        leg.bandwidth.on_sent(now, len);
                    }
                    if !leg.queued {
                        leg.queued = true;
                        self.dirty.push(sub);
                    }
                    leg.unflushed = leg.unflushed.saturating_add(1);
                    if leg.unflushed >= FLUSH_WRITES {
                        take_writes(sub, leg, &mut self.out, &mut self.demux);
                    }
                }
                Err(e) => debug!(leg = sub.0, error = %e, "write_rtp refused"),
            }
        }
        self.metrics.rtp_forwarded.inc_by(forwarded);
        if kind == TrackKind::Video
            && let Some(c) = self
                .metrics
                .simulcast_forwarded_bytes
                .get(simulcast::layer_label(layer_count, layer))
        {
            c.inc_by(forwarded_bytes);
        }
        if repeat {
            let r = &self.metrics.repair_client;
            r.retransmissions.inc_by(forwarded);
            r.retransmitted_bytes
                .inc_by(forwarded * (12 + base.payload.len() as u64));
        }
        if let Some(src) = self.sources.get_mut(&tid) {
            src.fanout = fanout;
            if let Some(cache) = src
                .layers
                .get_mut(layer.index())
                .and_then(|l| l.cache.as_mut())
            {
                // The payload is reference-counted: caching shares it, it does not copy it.
                cache.insert(now, seq, base.clone());
            }
        }
        // Never relay what came over Octo: the full mesh stays loop-free.
        if local_origin {
            let sent = self.octo_forward(now, tid, layer, &base, audio_level.as_ref());
            if repeat {
                let r = &self.metrics.repair_octo;
                r.retransmissions.inc_by(sent);
                r.retransmitted_bytes
                    .inc_by(sent * (12 + base.payload.len() as u64));
            }
        }
    }

    /// A receiver asked for a keyframe of the track it receives as `out_ssrc`: of the layer
    /// it is being sent (or switched to).
    fn on_keyframe_request(&mut self, now: Instant, leg_id: LegId, out_ssrc: u32) {
        let Some(&(tid, _)) = self.by_out_ssrc.get(&out_ssrc) else {
            return;
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        let receiver = leg.owner;
        let layer = leg
            .senders
            .get(&tid)
            .and_then(|s| s.rewriter.as_ref())
            .and_then(|rw| rw.target().or(rw.current()))
            .unwrap_or(Layer::BASE);
        self.request_keyframe(now, receiver, tid, layer);
    }

    /// Asks `tid`'s publisher for a keyframe of `layer` on behalf of `receiver`, through the
    /// throttle.
    fn request_keyframe(&mut self, now: Instant, receiver: EndpointId, tid: TrackId, layer: Layer) {
        let decision = self.keyframes.request(now, receiver, tid);
        if self.count_keyframe_decision(decision) {
            self.send_keyframe_request(now, tid, layer);
        }
    }

    /// Counts a throttle decision; whether the request goes out.
    fn count_keyframe_decision(&self, decision: KeyframeDecision) -> bool {
        let label = match decision {
            KeyframeDecision::Forward => "forwarded",
            KeyframeDecision::SuppressedReceiver => "suppressed_receiver",
            KeyframeDecision::SuppressedSource => "suppressed_source",
        };
        self.metrics
            .keyframe_requests
            .with_label_values(&[label])
            .inc();
        decision == KeyframeDecision::Forward
    }

    /// Asks `tid`'s publisher (or origin bridge) for a keyframe of `layer`, unthrottled.
    fn send_keyframe_request(&mut self, now: Instant, tid: TrackId, layer: Layer) {
        let Some(src) = self.sources.get(&tid) else {
            return;
        };
        // A layer whose SSRC is not known yet: the base layer's stands in (browsers answer a
        // PLI on any layer with keyframes on all of them, or at least on that one).
        let media_ssrc = src
            .layers
            .get(layer.index())
            .map(|l| l.ssrc)
            .filter(|s| *s != 0)
            .or_else(|| src.layers.first().map(|l| l.ssrc))
            .unwrap_or(0);
        let (pub_leg, rid) = match src.origin {
            Origin::Local { leg, receiver } => (leg, receiver),
            Origin::Remote { bridge } => {
                // The origin bridge owns the publisher; it throttles again on its side.
                let (conference, owner) = (src.conference, src.owner);
                self.octo_keyframe_request(bridge, conference, owner, media_ssrc);
                return;
            }
        };
        let Some(leg) = self.leg_mut(pub_leg) else {
            return;
        };
        let Some(mut r) = leg.pc.rtp_receiver(rid) else {
            return;
        };
        // FIR and PLI both become PLI: every WebRTC publisher answers PLI.
        if let Err(e) = r.write_rtcp(
            now,
            vec![Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            })],
        ) {
            debug!(error = %e, "sending PLI failed");
        }
        self.mark(pub_leg);
    }

    /// Asks for a keyframe of the layer `receiver` gets (or is switching to) of `tid`.
    fn request_receiver_keyframe(&mut self, now: Instant, receiver: EndpointId, tid: TrackId) {
        let layer = self
            .peers
            .get(&receiver)
            .and_then(|p| p.subscriber)
            .and_then(|l| self.legs.get(l.0 as usize)?.as_ref())
            .and_then(|l| l.senders.get(&tid)?.rewriter.as_ref())
            .and_then(|rw| rw.target().or(rw.current()));
        if let Some(layer) = layer {
            self.request_keyframe(now, receiver, tid, layer);
        }
    }

    /// A subscriber leg just connected or renegotiated: its decoders need a keyframe of every
    /// video track, or they show nothing until the publisher's next natural one.
    fn request_keyframes_for(&mut self, now: Instant, leg_id: LegId) {
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        let tracks: Vec<(TrackId, Option<Layer>)> = leg
            .senders
            .iter()
            .map(|(t, s)| (*t, s.rewriter.as_ref().and_then(|rw| rw.target())))
            .collect();
        // The stream starts like a layer switch: at a keyframe of the layer it gets.
        for (tid, layer) in tracks {
            if let Some(layer) = layer {
                self.request_layer_keyframe(now, tid, layer);
            }
        }
    }

    fn unpublish(&mut self, now: Instant, tid: TrackId) {
        let Some(track) = self.core.unpublish(tid) else {
            return;
        };
        info!(track = %tid, endpoint = %track.owner, "track unpublished");
        if track.kind == TrackKind::Audio
            && let Some(conference) = self.core.conference_of(track.owner).map(|c| c.id)
        {
            self.speaker_removed(now, conference, track.owner);
        }
        self.teardown_source(now, tid, track.owner, track.out_ssrc);
    }

    fn teardown_source(&mut self, now: Instant, tid: TrackId, owner: EndpointId, out_ssrc: Ssrc) {
        self.keyframes.forget_source(tid);
        self.switch_keyframes.forget_source(tid);
        self.by_out_ssrc.remove(&out_ssrc.0);
        self.demand.remove_source(tid);
        if let Some(src) = self.sources.remove(&tid) {
            for l in &src.layers {
                self.by_out_ssrc.remove(&l.octo_ssrc);
            }
            match src.origin {
                Origin::Local { .. } => self.by_ssrc.retain(|_, (t, _)| *t != tid),
                Origin::Remote { bridge } => {
                    if let Some(o) = self.octo.as_mut() {
                        for l in &src.layers {
                            o.by_ssrc.remove(&(bridge, l.ssrc));
                        }
                    }
                }
            }
            for sub in src.fanout {
                let Some(leg) = self.leg_mut(sub) else {
                    continue;
                };
                if let Some(sender) = leg.senders.remove(&tid) {
                    leg.bandwidth.forget_ssrc(sender.out_ssrc);
                    let r = if sender.wrote {
                        leg.pc.remove_track(sender.id)
                    } else {
                        // A receiver that never got a packet of this track does not take the
                        // next track `rtc` would put on the same transceiver (its stream was
                        // never bound): retire the transceiver, so the next one gets a new one.
                        let t = rtc::rtp_transceiver::RTCRtpTransceiverId::from(sender.id);
                        match leg.pc.rtp_transceiver(t) {
                            Some(mut t) => t.stop(),
                            None => Ok(()),
                        }
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "removing a track from a subscriber leg failed");
                    }
                    leg.needs_offer = true;
                    self.offer_if_needed(now, sub);
                }
            }
        }
        self.broadcast(
            owner,
            &ServerMsg::TrackUnpublished {
                participant_id: owner.to_string(),
                track_id: tid.to_string(),
            },
        );
    }

    // ---- commands --------------------------------------------------------------------------

    pub fn on_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Join {
                session,
                conference,
                room,
                identity,
                name,
                can_publish,
                can_subscribe,
                events,
                started,
            } => self.join(
                now,
                session,
                JoinRequest {
                    conference,
                    room: &room,
                    identity: &identity,
                    name: &name,
                    can_publish,
                    can_subscribe,
                    max_participants: self.limits.max_participants,
                },
                events,
                started,
            ),
            Command::Offer { session, sdp } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.publisher_offer(now, ep, sdp);
                }
            }
            Command::Answer { session, sdp } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.subscriber_answer(now, ep, sdp);
                }
            }
            Command::Candidate {
                session,
                target,
                candidate,
            } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.remote_candidate(ep, target, candidate);
                }
            }
            Command::Leave { session } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.leave(now, ep);
                }
            }
            Command::Chat { session, text } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.chat(ep, text);
                }
            }
            Command::VideoConstraints {
                session,
                max_height,
                tracks,
            } => {
                if let Some(ep) = self.sessions.get(&session).copied() {
                    self.set_video_constraints(now, ep, max_height, tracks);
                }
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Admin(req) => self.on_admin(now, req),
            Command::OctoPeers { peers } => {
                if let Some(octo) = self.octo.as_mut() {
                    octo.set_directory_peers(&peers, &self.metrics);
                }
            }
        }
    }

    fn join(
        &mut self,
        now: Instant,
        session: SessionId,
        req: JoinRequest<'_>,
        events: mpsc::UnboundedSender<ServerMsg>,
        started: Instant,
    ) {
        let mut joined = self.core.join(&req);
        if let Err(ConferenceError::IdentityInUse(old)) = joined {
            // The newest session of an identity wins (a reload, a second tab).
            self.fail(
                now,
                old,
                ErrorCode::Replaced,
                "the same identity joined from another session",
            );
            joined = self.core.join(&req);
        }
        let joined = match joined {
            Ok(j) => j,
            Err(ConferenceError::Full(n)) => {
                self.reject(
                    &events,
                    ErrorCode::RoomFull,
                    format!("the conference has {n} participants, the maximum"),
                );
                return;
            }
            Err(e) => {
                self.reject(&events, ErrorCode::Internal, e.to_string());
                return;
            }
        };
        let ep = joined.endpoint;
        // Participants other bridges announced before this conference existed here.
        self.materialize_remote(now, joined.conference);
        self.sessions.insert(session, ep);
        self.peers.insert(
            ep,
            Peer {
                session,
                events,
                publisher: None,
                subscriber: None,
                video: simulcast::ReceiverVideo::new(),
            },
        );
        let Some(conf) = self.core.get(joined.conference) else {
            return;
        };
        let me = self.participant_info(conf.id, ep);
        let others: Vec<ParticipantInfo> = conf
            .participants()
            .filter(|p| p.id != ep)
            .map(|p| self.participant_info(conf.id, p.id))
            .collect();
        let subscriptions: Vec<TrackId> = conf.subscriptions(ep).map(|t| t.id).collect();
        info!(endpoint = %ep, room = %conf.name, conference = %conf.id, identity = req.identity, "participant joined");
        self.send_to(
            ep,
            ServerMsg::Joined {
                room: conf.name.clone(),
                participant: me.clone(),
                participants: others,
                bridge: self.bridge.clone(),
            },
        );
        self.metrics
            .join_seconds
            .observe(now.saturating_duration_since(started).as_secs_f64());
        self.broadcast(ep, &ServerMsg::ParticipantJoined { participant: me });
        self.octo_announce(ep);
        // A newcomer hears the current dominant speaker at once, not at the next change.
        if let Some(dsi) = self.speakers.get(&joined.conference)
            && dsi.dominant().is_some()
        {
            let msg = ServerMsg::DominantSpeaker {
                participant_id: dsi.dominant().map(|e| e.to_string()),
                recent: dsi.recent_speakers().map(|e| e.to_string()).collect(),
            };
            self.send_to(ep, msg);
        }
        for tid in subscriptions {
            self.subscribe(now, ep, tid);
        }
    }

    fn reject(&self, events: &mpsc::UnboundedSender<ServerMsg>, code: ErrorCode, reason: String) {
        self.metrics
            .signaling_errors
            .with_label_values(&[code.as_str()])
            .inc();
        let _ = events.send(ServerMsg::error(code, reason));
    }

    fn publisher_offer(&mut self, now: Instant, ep: EndpointId, sdp: String) {
        let sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if sections > self.limits.max_media_sections {
            self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                &format!(
                    "{sections} media sections, at most {} allowed",
                    self.limits.max_media_sections
                ),
            );
            return;
        }
        let rids = match simulcast::offered_rids(&sdp) {
            Ok(r) => r,
            Err(why) => {
                self.fail(now, ep, ErrorCode::BadSdp, &why);
                return;
            }
        };
        let leg_id = match self.peers.get(&ep).and_then(|p| p.publisher) {
            Some(l) => l,
            None => match self.new_leg(now, ep, Role::Publisher) {
                Ok(l) => {
                    if let Some(p) = self.peers.get_mut(&ep) {
                        p.publisher = Some(l);
                    }
                    l
                }
                Err(e) => {
                    self.fail(now, ep, ErrorCode::Internal, &format!("{e:#}"));
                    return;
                }
            },
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        leg.rids = rids;
        let answer = RTCSessionDescription::offer(sdp)
            .and_then(|offer| leg.pc.set_remote_description(now, offer))
            .and_then(|_| leg.pc.create_answer(None))
            .and_then(|answer| {
                let sdp = answer.sdp.clone();
                leg.pc.set_local_description(now, answer).map(|_| sdp)
            });
        match answer {
            Ok(sdp) if accepts_no_media(&sdp) => self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                "the offer has no audio or video with a codec this bridge takes (Opus, VP8)",
            ),
            Ok(sdp) => {
                self.mark(leg_id);
                self.send_to(
                    ep,
                    ServerMsg::Answer {
                        target: Target::Publisher,
                        sdp,
                    },
                );
            }
            Err(e) => self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                &format!("publisher offer refused: {e}"),
            ),
        }
    }

    fn subscriber_answer(&mut self, now: Instant, ep: EndpointId, sdp: String) {
        let Some(leg_id) = self.peers.get(&ep).and_then(|p| p.subscriber) else {
            self.fail(
                now,
                ep,
                ErrorCode::BadMessage,
                "no subscriber offer is waiting for an answer",
            );
            return;
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if !leg.awaiting_answer {
            self.fail(
                now,
                ep,
                ErrorCode::BadMessage,
                "no subscriber offer is waiting for an answer",
            );
            return;
        }
        let r = RTCSessionDescription::answer(sdp)
            .and_then(|answer| leg.pc.set_remote_description(now, answer));
        if let Err(e) = r {
            self.fail(
                now,
                ep,
                ErrorCode::BadSdp,
                &format!("subscriber answer refused: {e}"),
            );
            return;
        }
        leg.awaiting_answer = false;
        // Now the extension ids of this leg are known.
        let ids: Vec<(TrackId, RTCRtpSenderId)> =
            leg.senders.iter().map(|(t, s)| (*t, s.id)).collect();
        for (tid, sid) in ids {
            let level_id = leg.pc.rtp_sender(sid).and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .header_extensions
                    .iter()
                    .find(|h| h.uri == AUDIO_LEVEL_URI)
                    .and_then(|h| u8::try_from(h.id).ok())
            });
            if let Some(s) = leg.senders.get_mut(&tid) {
                s.audio_level_id = level_id;
            }
        }
        let connected = leg.connected;
        self.mark(leg_id);
        if connected {
            self.request_keyframes_for(now, leg_id);
        }
        self.offer_if_needed(now, leg_id);
    }

    fn remote_candidate(&mut self, ep: EndpointId, target: Target, c: Option<IceCandidate>) {
        let Some(peer) = self.peers.get(&ep) else {
            return;
        };
        let leg_id = match target {
            Target::Publisher => peer.publisher,
            Target::Subscriber => peer.subscriber,
        };
        // An ICE-lite bridge learns the client's addresses from its checks; candidates only
        // help `rtc` pair faster, so one that does not fit is reported and ignored.
        let (Some(leg_id), Some(c)) = (leg_id, c) else {
            return;
        };
        if c.candidate.is_empty() {
            return;
        }
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if leg.pc.remote_description().is_none() {
            return;
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        if let Err(e) = leg.pc.add_remote_candidate(init) {
            self.send_error(
                ep,
                ErrorCode::BadCandidate,
                format!("candidate ignored: {e}"),
            );
        }
    }

    /// Removes a participant and everything it had.
    fn leave(&mut self, now: Instant, ep: EndpointId) {
        let Some(peer) = self.peers.remove(&ep) else {
            return;
        };
        self.sessions.remove(&peer.session);
        for leg_id in [peer.publisher, peer.subscriber].into_iter().flatten() {
            self.close_leg(leg_id);
        }
        self.keyframes.forget_receiver(ep);
        self.demand.remove_receiver(ep);
        // Subscriber legs of others that carried this participant's tracks.
        for src in self.sources.values_mut() {
            src.fanout
                .retain(|l| Some(*l) != peer.subscriber && Some(*l) != peer.publisher);
        }
        // Unpublish first, while the participant is still a member, so the others hear
        // track_unpublished before participant_left.
        let tracks = self
            .core
            .participant(ep)
            .map(|p| p.tracks.clone())
            .unwrap_or_default();
        for t in tracks {
            self.unpublish(now, t);
        }
        if let Some(conf) = self.core.conference_of(ep).map(|c| c.id) {
            self.octo_bye(conf, ep);
        }
        let Some(left) = self.core.leave(ep) else {
            return;
        };
        info!(endpoint = %ep, conference = %left.conference, identity = %left.participant.identity, "participant left");
        for (_, tracks) in &left.dropped_remote {
            for t in tracks {
                self.teardown_source(now, t.id, t.owner, t.out_ssrc);
            }
        }
        if let Some(conf) = self.core.get(left.conference) {
            let others: Vec<EndpointId> = conf.participants().map(|p| p.id).collect();
            for o in others {
                self.send_to(
                    o,
                    ServerMsg::ParticipantLeft {
                        participant_id: ep.to_string(),
                    },
                );
            }
        }
    }

    /// Ends one participant's session with a fatal error; nobody else is affected.
    fn fail(&mut self, now: Instant, ep: EndpointId, code: ErrorCode, reason: &str) {
        if !self.peers.contains_key(&ep) {
            return;
        }
        warn!(endpoint = %ep, code = code.as_str(), reason, "closing session");
        self.send_error(ep, code, reason.to_owned());
        self.leave(now, ep);
    }

    fn send_error(&self, ep: EndpointId, code: ErrorCode, reason: String) {
        self.metrics
            .signaling_errors
            .with_label_values(&[code.as_str()])
            .inc();
        self.send_to(ep, ServerMsg::error(code, reason));
    }

    fn send_to(&self, ep: EndpointId, msg: ServerMsg) {
        if let Some(p) = self.peers.get(&ep) {
            let _ = p.events.send(msg);
        }
    }

    /// Sends `msg` to everyone in `from`'s conference but `from`.
    fn broadcast(&self, from: EndpointId, msg: &ServerMsg) {
        let Some(conf) = self.core.conference_of(from) else {
            return;
        };
        for p in conf.participants().filter(|p| p.id != from) {
            self.send_to(p.id, msg.clone());
        }
    }

    /// A chat line from a local participant: to everyone here and on every peer bridge.
    fn chat(&mut self, ep: EndpointId, text: String) {
        let Some(conf) = self.core.conference_of(ep) else {
            return;
        };
        let name = conf
            .participant(ep)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let conference = conf.id;
        let locals: Vec<EndpointId> = conf
            .participants()
            .filter(|p| !p.remote)
            .map(|p| p.id)
            .collect();
        let msg = ServerMsg::Message {
            from: ep.to_string(),
            name: name.clone(),
            text: text.clone(),
        };
        for l in locals {
            self.send_to(l, msg.clone());
        }
        self.octo_chat(conference, ep, name, text);
    }

    // ---- legs ------------------------------------------------------------------------------

    fn new_leg(&mut self, now: Instant, owner: EndpointId, role: Role) -> Result<LegId> {
        let (ufrag, pwd) = leg::ice_credentials();
        let pc = leg::build_peer_connection(now, &self.settings, &ufrag, &pwd)?;
        let leg = Leg {
            pc,
            owner,
            role,
            created: now,
            last_rx: now,
            deadline: None,
            queued: false,
            unflushed: 0,
            connected: false,
            published: HashMap::new(),
            senders: HashMap::new(),
            awaiting_answer: false,
            needs_offer: false,
            rtt: kaskade_sfu::SmoothedRtt::default(),
            bandwidth: simulcast::Bandwidth::default(),
            rids: Vec::new(),
        };
        let id = match self.free_legs.pop() {
            Some(i) => {
                self.legs[i as usize] = Some(leg);
                LegId(i)
            }
            None => {
                self.legs.push(Some(leg));
                LegId((self.legs.len() - 1) as u32)
            }
        };
        self.demux.add_leg(id, &ufrag);
        debug!(leg = id.0, endpoint = %owner, ?role, "leg created");
        Ok(id)
    }

    fn close_leg(&mut self, leg_id: LegId) {
        let Some(mut leg) = self.legs.get_mut(leg_id.0 as usize).and_then(|l| l.take()) else {
            return;
        };
        if let Err(e) = leg.pc.close() {
            debug!(leg = leg_id.0, error = %e, "closing leg");
        }
        // Whatever close produced (DTLS close_notify) still goes out.
        while let Some(w) = leg.pc.poll_write() {
            self.out.push((w.transport.peer_addr, w.message));
        }
        if let Some(d) = leg.deadline {
            self.timers.remove(&(d, leg_id));
        }
        self.demux.remove_leg(leg_id);
        self.by_ssrc.retain(|(l, _), _| *l != leg_id);
        self.free_legs.push(leg_id.0);
    }

    fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        self.legs.get_mut(id.0 as usize).and_then(|l| l.as_mut())
    }

    fn fresh_ssrc(&self) -> u32 {
        loop {
            let s: u32 = rand::random();
            if s != 0 && !self.by_out_ssrc.contains_key(&s) {
                return s;
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            conferences: self
                .core
                .iter()
                .map(|c| ConferenceSnapshot {
                    id: c.id.to_string(),
                    conference: c.id,
                    name: c.name.clone(),
                    participants: c
                        .participants()
                        .map(|p| self.participant_info(c.id, p.id))
                        .collect(),
                })
                .collect(),
            legs: self.demux.leg_count(),
            learned_addresses: self.demux.addr_count(),
            octo_peers: self.peer_list(),
        }
    }
}

/// Whether an answer rejects every audio and video section (port 0 or no formats): the offer
/// had nothing we can receive.
fn accepts_no_media(answer: &str) -> bool {
    !answer.lines().any(|l| {
        let mut f = l.split_whitespace();
        let kind = f.next();
        let port = f.next();
        let formats = f.skip(1).count();
        matches!(kind, Some("m=audio" | "m=video")) && port != Some("0") && formats > 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_take_no_media_are_recognised() {
        assert!(accepts_no_media("v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\n"));
        assert!(accepts_no_media(
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        ));
        assert!(!accepts_no_media(
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        ));
    }

    fn shard() -> Shard {
        let settings = LegSettings {
            advertised: SocketAddr::from(([127, 0, 0, 1], 10000)),
            srtp_profiles: vec![leg::parse_srtp_profile("aead_aes_128_gcm").expect("profile")],
            replay_window: 1024,
            certificate: leg::generate_certificate().expect("certificate"),
        };
        let limits = ShardLimits {
            max_participants: 2,
            max_media_sections: 16,
            leg_timeout: Duration::from_secs(30),
            repair: crate::config::RepairMode::PerHop,
        };
        let bridge = BridgeInfo {
            id: "b".into(),
            region: "r".into(),
        };
        Shard::new(
            settings,
            limits,
            bridge,
            Arc::new(Metrics::new().expect("metrics")),
        )
    }

    fn dropped(s: &Shard, reason: &str) -> u64 {
        s.metrics.udp_dropped.with_label_values(&[reason]).get()
    }

    #[test]
    fn garbage_datagrams_are_dropped_and_counted() {
        let mut s = shard();
        let now = Instant::now();
        let from = SocketAddr::from(([127, 0, 0, 1], 5555));
        s.on_datagram(now, from, &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        s.on_datagram(now, from, &[22, 0xfe, 0xfd]);
        s.on_datagram(now, from, &[0xff; 100]);
        s.on_datagram(now, from, &[]);
        s.on_datagram(now, from, &[0, 1, 0, 0]);
        s.service_dirty(now);
        assert_eq!(dropped(&s, "unknown_source"), 2);
        assert_eq!(dropped(&s, "not_rtc"), 2);
        assert_eq!(dropped(&s, "malformed_stun"), 1);
        assert_eq!(s.metrics.packets_in.get(), 5);
        assert!(s.out.is_empty(), "nothing is ever answered to garbage");
    }

    fn join(s: &mut Shard, session: u64, identity: &str) -> mpsc::UnboundedReceiver<ServerMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        s.on_command(
            Instant::now(),
            Command::Join {
                session: SessionId(session),
                conference: crate::directory::conference_id("r"),
                room: "r".into(),
                identity: identity.into(),
                name: identity.into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: Instant::now(),
            },
        );
        rx
    }

    #[test]
    fn hostile_offer_closes_only_that_session() {
        let mut s = shard();
        let mut a = join(&mut s, 1, "a");
        let mut b = join(&mut s, 2, "b");
        assert!(matches!(a.try_recv(), Ok(ServerMsg::Joined { .. })));
        assert!(matches!(b.try_recv(), Ok(ServerMsg::Joined { .. })));
        assert!(matches!(
            a.try_recv(),
            Ok(ServerMsg::ParticipantJoined { .. })
        ));
        let garbage = "v=0\r\nthis is not sdp\r\nm=audio\r\n".repeat(3);
        s.on_command(
            Instant::now(),
            Command::Offer {
                session: SessionId(2),
                sdp: garbage,
            },
        );
        match b.try_recv() {
            Ok(ServerMsg::Error { code, fatal, .. }) => {
                assert_eq!(code, "bad_sdp");
                assert!(fatal);
            }
            other => panic!("expected bad_sdp, got {other:?}"),
        }
        // A gets the departure, and stays.
        assert!(matches!(
            a.try_recv(),
            Ok(ServerMsg::ParticipantLeft { .. })
        ));
        assert_eq!(s.core.participant_count(), 1);
        // Too many media sections are refused before parsing.
        let mut c = join(&mut s, 3, "c");
        assert!(matches!(c.try_recv(), Ok(ServerMsg::Joined { .. })));
        let many = format!(
            "v=0\r\n{}",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(100)
        );
        s.on_command(
            Instant::now(),
            Command::Offer {
                session: SessionId(3),
                sdp: many,
            },
        );
        assert!(matches!(c.try_recv(), Ok(ServerMsg::Error { code, .. }) if code == "bad_sdp"));
    }

    #[test]
    fn full_room_and_replaced_identity() {
        let mut s = shard();
        let mut a = join(&mut s, 1, "a");
        let _b = join(&mut s, 2, "b");
        let mut c = join(&mut s, 3, "c");
        assert!(matches!(c.try_recv(), Ok(ServerMsg::Error { code, .. }) if code == "room_full"));
        // The same identity again replaces the first session.
        let mut a2 = join(&mut s, 4, "a");
        assert!(matches!(a2.try_recv(), Ok(ServerMsg::Joined { .. })));
        let mut saw_replaced = false;
        while let Ok(m) = a.try_recv() {
            if let ServerMsg::Error { code, .. } = m {
                saw_replaced = code == "replaced";
            }
        }
        assert!(saw_replaced);
        assert_eq!(s.core.participant_count(), 2);
    }
}
