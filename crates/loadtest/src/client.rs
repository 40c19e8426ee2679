//! A real WebRTC client on `rtc` over real loopback UDP.
//!
//! It speaks the signaling protocol over a real WebSocket, holds the two PeerConnections of
//! proto/signaling.md (a publisher leg it offers, a subscriber leg the bridge offers), publishes
//! synthetic Opus/VP8-shaped RTP at the rates of a [`MediaProfile`] and counts what it receives
//! in [`ClientStats`]. Each client is one tokio task with one UDP socket per leg; everything a
//! leg does happens inside that task, so a few hundred clients fit on one core.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use kaskade_bridge::messages::{ServerMsg, Target};
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::media::{
    Kind, MediaProfile, Probe, Resolution, now_us, packets_for, vp8_descriptor, vp8_frame_header,
};
use crate::stats::ClientStats;

/// The same client with Janus VideoRoom signaling (benchmarks against Janus).
pub mod janus;
#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod simulcast_tests;

/// The SSRCs a client publishes with. Every publisher uses the same pair: the bridge keys
/// inbound streams by leg, and gives every forwarded copy its own SSRC.
pub const AUDIO_SSRC: u32 = 0x1111_0001;
pub const VIDEO_SSRC: u32 = 0x2222_0002;
/// The SSRCs of the simulcast layers `q`, `h`, `f` (180p, 360p, 720p).
pub const SIMULCAST_SSRCS: [u32; 3] = [0x2222_0010, 0x2222_0011, 0x2222_0012];

/// Datagrams read per wake-up before the legs are serviced: one pass over the legs then
/// serves a whole burst (a video frame arrives as ~8 back-to-back packets).
const READ_BATCH: usize = 64;
/// How far a late publisher catches up (sending the missed packets at once) before it skips.
const MAX_CATCH_UP: Duration = Duration::from_secs(1);
/// Retransmission requests per lost packet, as libwebrtc's receiver (kMaxNackRetries = 10).
const MAX_NACKS_PER_PACKET: u16 = 10;
/// How often the receiver's NACK generator looks for gaps. `rtc` defaults to 100 ms; a
/// browser (libwebrtc) asks as soon as it sees a gap, so a client that waits up to 100 ms
/// would charge the SFU with repair delay that is the client's own.
const NACK_INTERVAL: Duration = Duration::from_millis(20);
/// As libwebrtc's receivers.
const SRTP_REPLAY_WINDOW: usize = 1024;
/// Idle wake-up, so timers are looked at even when a leg reports none.
const IDLE_WAKE: Duration = Duration::from_millis(50);
/// A ping on the signaling socket this often: the node closes a session that says nothing
/// for 90 s (a client that vanished without closing), and a load client may say nothing else
/// for the whole run.
const PING_EVERY: Duration = Duration::from_secs(30);
/// RFC 6464 client-to-mixer audio level.
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// RFC 8843 MID and RFC 8852 RtpStreamId: a simulcast sender puts both in its packets, as
/// Chrome does, so the receiver can bind SSRCs it was never told about to the layers of a
/// media section.
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// The node's HTTP address (signaling is `ws://<http>/ws`).
    pub http: SocketAddr,
    pub room: String,
    pub identity: String,
    pub token: String,
    /// What to publish once joined; `None` makes a pure subscriber.
    pub publish: Option<MediaProfile>,
    /// Report every received RTP packet as [`Report::Rtp`] (functional tests). Load runs leave
    /// it off: [`ClientStats`] counts without a channel message per packet.
    pub report_rtp: bool,
}

/// How a client reaches the network, beyond its [`ClientSpec`] (defaults: as the node says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// Send media (ICE, DTLS, RTP) to this address instead of the node's candidate, and take
    /// what comes back from it as the node's: an impairment relay in front of the node's media
    /// port gives this client a path of its own (the node advertises one address for all).
    pub media_via: Option<SocketAddr>,
    /// Published SSRCs carry this in bits 8..16 ([`tagged_ssrc`]), and so does every probe: a
    /// receiver tells the publishers of different load processes apart (0: the plain SSRCs).
    pub ssrc_tag: u8,
}

/// `base` (one of the publisher SSRCs above, whose bits 8..16 are zero) with `tag` in bits
/// 8..16; [`ssrc_tag`] reads it back.
pub fn tagged_ssrc(base: u32, tag: u8) -> u32 {
    base ^ (u32::from(tag) << 8)
}

/// The tag of a publisher SSRC made by [`tagged_ssrc`].
pub fn ssrc_tag(ssrc: u32) -> u8 {
    (ssrc >> 8) as u8
}

/// Where a leg's datagrams go and whom they come from, with an optional media relay.
///
/// `rtc` addresses the node's candidate; with a relay the datagrams go to the relay instead,
/// and what arrives from the relay is handed to `rtc` as coming from that candidate, so ICE
/// and DTLS never see the detour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MediaRoute {
    via: Option<SocketAddr>,
    /// The candidate `rtc` last addressed.
    peer: Option<SocketAddr>,
}

impl MediaRoute {
    /// Where to send a datagram `rtc` addressed to `peer`.
    fn outbound(&mut self, peer: SocketAddr) -> SocketAddr {
        match self.via {
            Some(via) => {
                self.peer = Some(peer);
                via
            }
            None => peer,
        }
    }

    /// Who `rtc` should think sent a datagram that came from `from`.
    fn inbound(&self, from: SocketAddr) -> SocketAddr {
        match (self.via, self.peer) {
            (Some(via), Some(peer)) if via == from => peer,
            _ => from,
        }
    }
}

/// What a client saw.
#[derive(Debug, Clone)]
pub enum Report {
    Signal(ServerMsg),
    Connected(Target),
    /// RTP received on the subscriber leg: (rtc's track id, ssrc, sequence number, payload).
    Rtp {
        track: String,
        ssrc: u32,
        seq: u16,
        payload: Bytes,
    },
    /// The client stopped on an error (network, protocol, a refused negotiation).
    Failed(String),
    /// The client ended; always the last report.
    Closed,
}

/// A running client.
pub struct ClientHandle {
    pub reports: mpsc::UnboundedReceiver<Report>,
    /// Send `true` to make the client leave.
    pub stop: watch::Sender<bool>,
    pub stats: Arc<ClientStats>,
    pub task: JoinHandle<()>,
}

/// Spawns a client on the current tokio runtime.
pub fn spawn_client(spec: ClientSpec) -> ClientHandle {
    spawn_client_with(spec, ClientOptions::default())
}

/// [`spawn_client`] with [`ClientOptions`].
pub fn spawn_client_with(spec: ClientSpec, options: ClientOptions) -> ClientHandle {
    spawn_task(move |reports, stop, stats| run_client_with(spec, options, reports, stop, stats))
}

/// Spawns the client task `run` makes from its reports channel, stop signal and counters:
/// its error becomes [`Report::Failed`], and [`Report::Closed`] always comes last.
fn spawn_task<F>(
    run: impl FnOnce(mpsc::UnboundedSender<Report>, watch::Receiver<bool>, Arc<ClientStats>) -> F,
) -> ClientHandle
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(ClientStats::new());
    let client = run(tx.clone(), stop_rx, stats.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = client.await {
            let _ = tx.send(Report::Failed(format!("{e:#}")));
        }
        let _ = tx.send(Report::Closed);
    });
    ClientHandle {
        reports: rx,
        stop: stop_tx,
        stats,
        task,
    }
}

/// One PeerConnection and its UDP socket.
struct Leg {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    route: MediaRoute,
}

impl Leg {
    /// A leg on a new UDP socket bound to `ip` (the address this host reaches the node from).
    /// `simulcast` registers the MID and RtpStreamId header extensions a simulcast sender needs.
    async fn new(ip: IpAddr, simulcast: bool, via: Option<SocketAddr>) -> Result<Leg> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .with_context(|| format!("binding a leg socket on {ip}"))?;
        let local = socket.local_addr().context("leg socket address")?;
        let mut me = MediaEngine::default();
        me.register_default_codecs()
            .map_err(|e| anyhow!("registering codecs: {e}"))?;
        me.register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.into(),
            },
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio,
            None,
        )
        .map_err(|e| anyhow!("registering the audio level extension: {e}"))?;
        if simulcast {
            for uri in [MID_URI, RID_URI] {
                me.register_header_extension(
                    rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                        uri: uri.into(),
                    },
                    RtpCodecKind::Video,
                    None,
                )
                .map_err(|e| anyhow!("registering the {uri} extension: {e}"))?;
            }
        }
        // rtc's defaults (`register_default_interceptors`) less its NACK generator, which asks
        // for a missing packet every 100 ms until it leaves the window: under loss that storm
        // multiplies the bridge's retransmissions. A browser gives up after a few tries.
        for parameter in ["", "pli"] {
            me.register_feedback(
                RTCPFeedback {
                    typ: "nack".into(),
                    parameter: parameter.into(),
                },
                RtpCodecKind::Video,
            );
        }
        let registry = Registry::new()
            .with(Slot::NackResponder, NackResponderBuilder::new().build())
            .with(
                Slot::NackGenerator,
                NackGeneratorBuilder::new()
                    .with_interval(NACK_INTERVAL)
                    .with_max_nacks_per_packet(MAX_NACKS_PER_PACKET)
                    .build(),
            )
            .with(
                Slot::from(12_500),
                kaskade_bridge::leg::FeedbackTap::keyframe_requests(),
            );
        let registry = configure_twcc_receiver_only(registry, &mut me)
            .map_err(|e| anyhow!("registering TWCC: {e}"))?;
        let registry = configure_rtcp_reports(registry);
        // libwebrtc keeps a 1024-packet SRTP replay window so that a late retransmission is not
        // refused as a replay; `rtc` defaults to 64 (~250 ms of 720p video), which would count
        // a twice-repaired packet as lost at the client.
        let se = SettingEngineBuilder::new()
            .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .with_srtcp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_setting_engine(se)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(|e| anyhow!("building a PeerConnection: {e}"))?;
        // Our one host candidate goes into the SDP we produce: the bridge is ICE-lite and only
        // answers checks, so it must know where to expect them from.
        let cand = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(|e| anyhow!("host candidate: {e}"))?;
        let init = RTCIceCandidate::from(&cand)
            .to_json()
            .map_err(|e| anyhow!("candidate JSON: {e}"))?;
        pc.add_local_candidate(init)
            .map_err(|e| anyhow!("adding the local candidate: {e}"))?;
        Ok(Leg {
            pc,
            socket,
            local,
            route: MediaRoute { via, peer: None },
        })
    }

    fn flush(&mut self) {
        while let Some(w) = self.pc.poll_write() {
            // A full socket buffer drops the datagram, as a real network would; SRTP and the
            // receiver's loss counters account for it.
            let to = self.route.outbound(w.transport.peer_addr);
            let _ = self.socket.try_send_to(&w.message, to);
        }
    }

    fn feed(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        // A datagram the PC refuses (stray, replayed, garbage) is the PC's business: it drops it.
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: self.route.inbound(from),
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
    }

    fn handle_due_timeout(&mut self, now: Instant) {
        if self.pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.pc.handle_timeout(now);
        }
    }

    /// Returns the new connection state, if it changed to Connected or Failed.
    fn drain_events(&mut self) -> Option<RTCPeerConnectionState> {
        let mut out = None;
        while let Some(ev) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                state @ (RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed),
            ) = ev
            {
                out = Some(state);
            }
        }
        out
    }
}

/// One published stream and its pacing.
///
/// Tick `k` (a 20 ms Opus frame, or a video frame) is due at `start + k / ticks_per_sec` and
/// carries `floor((k+1) pps / tps) - floor(k pps / tps)` packets, so fractional packets per
/// frame average out exactly; a frame's packets share its RTP timestamp and the last one has
/// the marker bit, as an encoder's would.
struct OutStream {
    sender: RTCRtpSenderId,
    kind: Kind,
    ssrc: u32,
    payload_type: u8,
    payload_size: usize,
    clock_rate: u32,
    ticks_per_sec: u64,
    pps: u64,
    start: Instant,
    tick: u64,
    index: u64,
    seq: u16,
    /// Audio with a speech script: the script, and the negotiated audio-level extension id.
    speech: Vec<(u64, bool)>,
    level_ext: Option<u8>,
    /// Encoder-shaped VP8 frames instead of `pps` fixed-size packets.
    vp8: Option<Vp8Frames>,
    /// A simulcast layer's rid; with the MID, carried in every packet once negotiated.
    rid: Option<&'static str>,
    sdes_exts: Vec<rtc::rtp::header::Extension>,
}

/// The frame sequence of one VP8 layer.
struct Vp8Frames {
    layer: Resolution,
    delta_bytes: usize,
    key_bytes: usize,
    /// Frames per group of pictures: frame `k` is a key frame when `k % gop == 0`.
    gop: u64,
    picture_id: u16,
    tl0: u8,
    /// A key frame was asked for (PLI, FIR): the next frame is one.
    key_pending: bool,
}

impl Vp8Frames {
    /// The payload heads and sizes of frame `k`'s packets.
    fn frame(&mut self, k: u64) -> Vec<(Vec<u8>, usize)> {
        let key = self.key_pending || k.is_multiple_of(self.gop);
        self.key_pending = false;
        let bytes = if key {
            self.key_bytes
        } else {
            self.delta_bytes
        };
        let n = packets_for(bytes);
        let (w, h) = self.layer.width_height();
        let out = (0..n)
            .map(|i| {
                let mut head = Vec::with_capacity(16);
                vp8_descriptor(&mut head, i == 0, self.picture_id, self.tl0);
                if i == 0 {
                    vp8_frame_header(&mut head, key, w, h);
                }
                (head, bytes / n + usize::from(i < bytes % n))
            })
            .collect();
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.tl0 = self.tl0.wrapping_add(1);
        out
    }
}

impl OutStream {
    fn due(&self) -> Instant {
        self.start + Duration::from_nanos(self.tick * 1_000_000_000 / self.ticks_per_sec)
    }

    /// Writes every packet due by `now` into the PC (it encrypts and queues them).
    fn send_due(&mut self, now: Instant, pc: &mut RTCPeerConnection, stats: &ClientStats) {
        let behind = now.saturating_duration_since(self.due());
        if behind > MAX_CATCH_UP {
            // The task was starved (or the machine suspended): skip rather than burst.
            self.tick += (behind.as_secs_f64() * self.ticks_per_sec as f64) as u64;
        }
        while self.due() <= now {
            let k = self.tick;
            let timestamp = (k * u64::from(self.clock_rate) / self.ticks_per_sec) as u32;
            let shape = match self.vp8.as_mut() {
                Some(v) => v.frame(k),
                None => {
                    let n =
                        (k + 1) * self.pps / self.ticks_per_sec - k * self.pps / self.ticks_per_sec;
                    (0..n).map(|_| (Vec::new(), self.payload_size)).collect()
                }
            };
            let n = shape.len();
            for (i, (head, size)) in shape.into_iter().enumerate() {
                let payload = Probe {
                    publisher_ssrc: self.ssrc,
                    kind: self.kind,
                    index: self.index,
                    sent_us: now_us(),
                }
                .encode_after(&head, size);
                let len = payload.len();
                let mut pkt = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: self.payload_type,
                        sequence_number: self.seq,
                        timestamp,
                        ssrc: self.ssrc,
                        marker: i + 1 == n,
                        ..Default::default()
                    },
                    payload: Bytes::from(payload),
                };
                if !self.sdes_exts.is_empty() {
                    pkt.header.extension = true;
                    pkt.header.extension_profile = rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE;
                    pkt.header.extensions.extend(self.sdes_exts.iter().cloned());
                }
                if let Some(id) = self.level_ext {
                    let ms = now.saturating_duration_since(self.start).as_millis() as u64;
                    let level = crate::media::speech_level(&self.speech, ms, self.index);
                    pkt.header.extension = true;
                    pkt.header.extension_profile = rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE;
                    pkt.header.extensions.push(rtc::rtp::header::Extension {
                        id,
                        payload: Bytes::copy_from_slice(&[level]),
                    });
                }
                self.seq = self.seq.wrapping_add(1);
                self.index += 1;
                if let Some(mut s) = pc.rtp_sender(self.sender)
                    && s.write_rtp(now, pkt).is_ok()
                {
                    stats.on_sent(self.kind, len);
                }
            }
            self.tick += 1;
        }
    }
}

fn ws_text(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

/// One encoding of a published track: the stream it becomes and how it is shaped.
struct Encoding {
    ssrc: u32,
    rid: Option<&'static str>,
    vp8: Option<Vp8Frames>,
}

/// Adds our audio and video tracks to the publisher leg and returns their streams: one per
/// audio track, one per video layer (three rid encodings of one track with simulcast).
fn add_tracks(
    leg: &mut Leg,
    identity: &str,
    profile: &MediaProfile,
    ssrc_tag: u8,
    now: Instant,
) -> Result<Vec<OutStream>> {
    let mut streams = Vec::new();
    for kind in [Kind::Audio, Kind::Video] {
        let (mime, clock_rate, channels, pt, pps, tps, size) = match kind {
            Kind::Audio => (
                MIME_TYPE_OPUS,
                48_000,
                2,
                111u8,
                profile.audio_pps,
                profile.audio_pps,
                profile.audio_payload,
            ),
            Kind::Video => (
                MIME_TYPE_VP8,
                90_000,
                0,
                96u8,
                profile.video_pps(),
                profile
                    .video
                    .as_ref()
                    .map_or(profile.video_fps, |v| v.fps)
                    .max(1),
                profile.video_payload,
            ),
        };
        if pps == 0 {
            continue;
        }
        let encodings: Vec<Encoding> = match (kind, &profile.video) {
            (Kind::Audio, _) => vec![Encoding {
                ssrc: tagged_ssrc(AUDIO_SSRC, ssrc_tag),
                rid: None,
                vp8: None,
            }],
            (Kind::Video, None) => vec![Encoding {
                ssrc: tagged_ssrc(VIDEO_SSRC, ssrc_tag),
                rid: None,
                vp8: None,
            }],
            (Kind::Video, Some(v)) => {
                let layers = v.layers();
                let simulcast = layers.len() > 1;
                layers
                    .into_iter()
                    .map(|layer| {
                        let (delta_bytes, key_bytes) = v.frame_bytes(layer);
                        Encoding {
                            ssrc: tagged_ssrc(
                                if simulcast {
                                    SIMULCAST_SSRCS[layer as usize]
                                } else {
                                    VIDEO_SSRC
                                },
                                ssrc_tag,
                            ),
                            rid: simulcast.then(|| layer.rid()),
                            vp8: Some(Vp8Frames {
                                layer,
                                delta_bytes,
                                key_bytes,
                                gop: v.gop_frames(),
                                picture_id: 0,
                                tl0: 0,
                                key_pending: false,
                            }),
                        }
                    })
                    .collect()
            }
        };
        let codec = RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        };
        let (rtc_kind, suffix) = match kind {
            Kind::Audio => (RtpCodecKind::Audio, "a"),
            Kind::Video => (RtpCodecKind::Video, "v"),
        };
        let track = MediaStreamTrack::new(
            identity.to_string(),
            format!("{identity}-{suffix}"),
            "label".into(),
            rtc_kind,
            encodings
                .iter()
                .map(|e| RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(e.ssrc),
                        rid: e.rid.unwrap_or_default().into(),
                        ..Default::default()
                    },
                    codec: codec.clone(),
                    ..Default::default()
                })
                .collect(),
        );
        let sender = leg
            .pc
            .add_track(track)
            .map_err(|e| anyhow!("adding the {} track: {e}", kind.as_str()))?;
        for e in encodings {
            streams.push(OutStream {
                sender,
                kind,
                ssrc: e.ssrc,
                payload_type: pt,
                payload_size: size,
                clock_rate,
                ticks_per_sec: u64::from(tps),
                pps: u64::from(pps),
                start: now,
                tick: 0,
                index: 0,
                seq: 1000,
                speech: if kind == Kind::Audio {
                    profile.speech.clone()
                } else {
                    Vec::new()
                },
                level_ext: None,
                vp8: e.vp8,
                rid: e.rid,
                sdes_exts: Vec::new(),
            });
        }
    }
    Ok(streams)
}

/// The MID of the transceiver that holds `sender`, once negotiated.
fn sender_mid(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> Option<String> {
    let ids: Vec<_> = pc.get_transceivers().collect();
    ids.into_iter().find_map(|id| {
        let t = pc.rtp_transceiver(id)?;
        if t.sender() == Some(sender) {
            t.mid().clone()
        } else {
            None
        }
    })
}

/// After the publisher answer: the negotiated payload types and header extension ids.
fn apply_answer(pc: &mut RTCPeerConnection, streams: &mut [OutStream]) {
    for s in streams.iter_mut() {
        let mid = if s.rid.is_some() {
            sender_mid(pc, s.sender)
        } else {
            None
        };
        let Some(mut sender) = pc.rtp_sender(s.sender) else {
            continue;
        };
        let params = sender.get_parameters().rtp_parameters.clone();
        if let Some(c) = params.codecs.first() {
            s.payload_type = c.payload_type;
        }
        let ext_id = |uri: &str| {
            params
                .header_extensions
                .iter()
                .find(|h| h.uri == uri)
                .and_then(|h| u8::try_from(h.id).ok())
        };
        if !s.speech.is_empty() {
            s.level_ext = ext_id(AUDIO_LEVEL_URI);
        }
        s.sdes_exts.clear();
        if let Some(rid) = s.rid {
            // Without the RtpStreamId extension in the answer the layers cannot be told
            // apart by the receiver; they are sent anyway, as a browser would.
            if let (Some(id), Some(mid)) = (ext_id(MID_URI), mid) {
                s.sdes_exts.push(rtc::rtp::header::Extension {
                    id,
                    payload: Bytes::from(mid.into_bytes()),
                });
            }
            if let Some(id) = ext_id(RID_URI) {
                s.sdes_exts.push(rtc::rtp::header::Extension {
                    id,
                    payload: Bytes::from_static(rid.as_bytes()),
                });
            }
        }
    }
}

/// A PLI or FIR from the bridge: the named stream's next frame is a key frame.
fn on_publisher_rtcp(packets: &[Box<dyn rtc::rtcp::Packet>], streams: &mut [OutStream]) {
    let mut want = |ssrc: u32| {
        for s in streams.iter_mut().filter(|s| s.ssrc == ssrc) {
            if let Some(v) = s.vp8.as_mut() {
                v.key_pending = true;
            }
        }
    };
    for p in packets {
        let any = p.as_any();
        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
            want(pli.media_ssrc);
        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
            for e in &fir.fir {
                want(e.ssrc);
            }
        }
    }
}

/// A leg with the streams it publishes, serviced the same way by every client: the kaskade
/// client's publisher and subscriber legs, the Janus client's one leg per handle.
struct MediaLeg {
    leg: Leg,
    /// What it publishes (none on a subscriber leg).
    streams: Vec<OutStream>,
    target: Target,
    /// ICE + DTLS completed: the streams' pacing runs from then on.
    connected: bool,
    buf: Vec<u8>,
}

impl MediaLeg {
    fn new(leg: Leg, streams: Vec<OutStream>, target: Target) -> MediaLeg {
        MediaLeg {
            leg,
            streams,
            target,
            connected: false,
            buf: vec![0u8; 2048],
        }
    }

    /// Services the leg at `now`: its due timer, its state, the streams' due packets once it
    /// is up, what it decrypted ([`Self::drain_reads`]), then its writes. True when the leg
    /// has just come up (ICE + DTLS completed, the first time); an error when it failed.
    fn pump(
        &mut self,
        now: Instant,
        stats: &ClientStats,
        on_rtp: impl FnMut(String, rtc::rtp::Packet),
    ) -> Result<bool> {
        self.leg.handle_due_timeout(now);
        let mut came_up = false;
        match self.leg.drain_events() {
            Some(RTCPeerConnectionState::Connected) if !self.connected => {
                self.connected = true;
                came_up = true;
                // Media starts now: pacing counts from the moment the leg can carry it.
                for s in &mut self.streams {
                    s.start = now;
                }
            }
            Some(RTCPeerConnectionState::Failed) => {
                bail!("the {} leg failed", target_name(self.target))
            }
            _ => {}
        }
        if self.connected {
            for s in &mut self.streams {
                s.send_due(now, &mut self.leg.pc, stats);
            }
        }
        self.drain_reads(stats, on_rtp);
        self.leg.flush();
        Ok(came_up)
    }

    /// When the leg wants its next [`Self::pump`]: its timer, its streams' next packet, or
    /// the idle wake-up.
    fn wake(&mut self, now: Instant) -> Instant {
        let mut wake = now + IDLE_WAKE;
        if let Some(t) = self.leg.pc.poll_timeout() {
            wake = wake.min(t);
        }
        if self.connected {
            for s in &self.streams {
                wake = wake.min(s.due());
            }
        }
        wake
    }

    /// Feeds the datagram [`recv_on`] received (`n` bytes from `from`, in the leg's buffer)
    /// and up to `READ_BATCH - 1` more already waiting on the socket. Reads are drained after
    /// each datagram so the latency sample is taken when the packet is decrypted, not after
    /// the whole batch.
    fn read_batch(
        &mut self,
        (mut n, mut from): (usize, SocketAddr),
        stats: &ClientStats,
        mut on_rtp: impl FnMut(String, rtc::rtp::Packet),
    ) {
        for i in 0..READ_BATCH {
            if i > 0 {
                match self.leg.socket.try_recv_from(&mut self.buf) {
                    Ok(next) => (n, from) = next,
                    Err(_) => break,
                }
            }
            self.leg.feed(Instant::now(), from, &self.buf[..n]);
            self.drain_reads(stats, &mut on_rtp);
        }
    }

    /// Reads what the leg decrypted: RTP is counted, then handed to `on_rtp`; RTCP asking
    /// for a key frame goes to the streams, the rest (receiver reports, NACKs, TWCC) the
    /// interceptors consume.
    fn drain_reads(
        &mut self,
        stats: &ClientStats,
        mut on_rtp: impl FnMut(String, rtc::rtp::Packet),
    ) {
        while let Some(m) = self.leg.pc.poll_read() {
            match m.message {
                RTCMessage::RtpPacket(track, pkt) => {
                    stats.on_received(pkt.header.ssrc, &pkt.payload, now_us());
                    on_rtp(track, pkt);
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    on_publisher_rtcp(&packets, &mut self.streams)
                }
                _ => {}
            }
        }
    }
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::Publisher => "publisher",
        Target::Subscriber => "subscriber",
    }
}

/// Receives on a leg's socket into its buffer; pends forever while the leg does not exist.
async fn recv_on(leg: Option<&mut MediaLeg>) -> std::io::Result<(usize, SocketAddr)> {
    match leg {
        Some(l) => l.leg.socket.recv_from(&mut l.buf).await,
        None => std::future::pending().await,
    }
}

/// Most `redirect`s a join follows: one is the protocol (a redirected join stays where it
/// lands); a second means the target drained meanwhile.
const MAX_REDIRECTS: usize = 2;

type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens signaling and joins, following the bridge's `redirect` to the bridge selection chose
/// (proto/signaling.md, Redirects). Returns the socket and its first frame after the join.
async fn join_following_redirects(spec: &ClientSpec, to: Destination) -> Result<(Ws, Message)> {
    let Destination {
        mut url,
        mut token,
        mut redirected,
    } = to;
    for _ in 0..=MAX_REDIRECTS {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let join = serde_json::json!({
            "type": "join", "room": spec.room, "token": token, "name": spec.identity,
            "redirected": redirected,
        });
        ws.send(ws_text(join)).await.context("sending join")?;
        let frame = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break Message::Text(t),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow!("signaling at {url}: {e}")),
                None => bail!("signaling at {url} closed before answering the join"),
            }
        };
        if let Message::Text(t) = &frame
            && let Ok(ServerMsg::Redirect {
                url: next,
                token: t2,
                ..
            }) = serde_json::from_str::<ServerMsg>(t.as_str())
        {
            let _ = ws.close(None).await;
            url = next;
            token = t2;
            redirected = true;
            continue;
        }
        return Ok((ws, frame));
    }
    bail!("more than {MAX_REDIRECTS} redirects joining {}", spec.room)
}

/// Where a client joins: the node it was pointed at, or where a `redirect` or `migrate` sent it.
struct Destination {
    url: String,
    token: String,
    /// Placed where it lands (proto/signaling.md, Redirects).
    redirected: bool,
}

/// How one signaling session of a client ended.
enum Ended {
    /// Stopped by the run, or closed by the node.
    Done,
    /// The node drains and moves the client: join there.
    Migrate(Destination),
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs a client until `stop` turns true or the bridge closes the socket. Everything it sees
/// goes to `reports` (per packet only with `spec.report_rtp`), and its counters to `stats`.
///
/// A `migrate` from a draining node is followed like a redirect, mid-call: the client leaves,
/// joins the named bridge, and publishes and subscribes again there. Its received streams so
/// far are retired (still counted for loss and bitrate, no longer as tracks).
pub async fn run_client(
    spec: ClientSpec,
    reports: mpsc::UnboundedSender<Report>,
    stop: watch::Receiver<bool>,
    stats: Arc<ClientStats>,
) -> Result<()> {
    run_client_with(spec, ClientOptions::default(), reports, stop, stats).await
}

/// [`run_client`] with [`ClientOptions`].
pub async fn run_client_with(
    spec: ClientSpec,
    options: ClientOptions,
    reports: mpsc::UnboundedSender<Report>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ClientStats>,
) -> Result<()> {
    // The room in the URL lets a load balancer route by room (docker/haproxy.cfg).
    let mut to = Destination {
        url: format!("ws://{}/ws?room={}", spec.http, url_escape(&spec.room)),
        token: spec.token.clone(),
        redirected: false,
    };
    loop {
        match session(&spec, options, &reports, &mut stop, &stats, to).await? {
            Ended::Done => return Ok(()),
            Ended::Migrate(next) => {
                stats.retire_streams();
                to = next;
            }
        }
    }
}

/// One signaling session and its media legs, until the run stops it, the node closes it, or
/// the node tells the client to migrate.
async fn session(
    spec: &ClientSpec,
    options: ClientOptions,
    reports: &mpsc::UnboundedSender<Report>,
    stop: &mut watch::Receiver<bool>,
    stats: &ClientStats,
    to: Destination,
) -> Result<Ended> {
    let (mut ws, first) = join_following_redirects(spec, to).await?;
    let mut first = Some(first);
    // Media goes out from the address the signaling connection left from: the interface that
    // reaches the node (127.0.0.1 on loopback).
    let local_ip = match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().context("signaling socket address")?.ip(),
        _ => bail!("signaling over TLS is not supported"),
    };
    let simulcast = spec
        .publish
        .as_ref()
        .and_then(|p| p.video.as_ref())
        .is_some_and(|v| v.layers().len() > 1);

    let mut publisher: Option<MediaLeg> = None;
    let mut subscriber: Option<MediaLeg> = None;
    // The subscriber leg's RTP, one report a packet when asked (the publisher leg gets none).
    let report_rtp = |track: String, pkt: rtc::rtp::Packet| {
        if spec.report_rtp {
            let _ = reports.send(Report::Rtp {
                track,
                ssrc: pkt.header.ssrc,
                seq: pkt.header.sequence_number,
                payload: pkt.payload,
            });
        }
    };

    let mut next_ping = Instant::now() + PING_EVERY;
    loop {
        let now = Instant::now();
        if now >= next_ping {
            ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
                .await
                .context("sending a ping")?;
            next_ping = now + PING_EVERY;
        }
        if let Some(p) = publisher.as_mut()
            && p.pump(now, stats, |_, _| {})?
        {
            let _ = reports.send(Report::Connected(Target::Publisher));
        }
        if let Some(s) = subscriber.as_mut()
            && s.pump(now, stats, report_rtp)?
        {
            let _ = reports.send(Report::Connected(Target::Subscriber));
        }
        let wake = [publisher.as_mut(), subscriber.as_mut()]
            .into_iter()
            .flatten()
            .map(|leg| leg.wake(now))
            .fold((now + IDLE_WAKE).min(next_ping), Instant::min);

        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
                return Ok(Ended::Done);
            }
            frame = async {
                match first.take() {
                    Some(m) => Some(Ok(m)),
                    None => ws.next().await,
                }
            } => {
                let Some(Ok(frame)) = frame else {
                    return Ok(Ended::Done);
                };
                let Message::Text(text) = frame else { continue };
                let msg: ServerMsg = serde_json::from_str(text.as_str())
                    .with_context(|| format!("a server message that does not parse: {text}"))?;
                if let ServerMsg::Migrate { url, token, .. } = &msg {
                    let next = Destination { url: url.clone(), token: token.clone(), redirected: true };
                    let _ = reports.send(Report::Signal(msg));
                    // Break before make: the same identity is not in the room twice.
                    if let Err(e) = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await {
                        tracing::warn!(identity = %spec.identity, error = %e, "leave before migrating");
                    }
                    let _ = ws.close(None).await;
                    return Ok(Ended::Migrate(next));
                }
                match &msg {
                    ServerMsg::Joined { .. } => {
                        if let Some(profile) = &spec.publish {
                            let mut leg = Leg::new(local_ip, simulcast, options.media_via).await?;
                            let streams = add_tracks(&mut leg, &spec.identity, profile, options.ssrc_tag, Instant::now())?;
                            let offer = leg.pc.create_offer(None).map_err(|e| anyhow!("creating the offer: {e}"))?;
                            leg.pc
                                .set_local_description(Instant::now(), offer.clone())
                                .map_err(|e| anyhow!("setting the local offer: {e}"))?;
                            let m = serde_json::json!({"type":"offer","target":"publisher","sdp":offer.sdp});
                            ws.send(ws_text(m)).await.context("sending the offer")?;
                            publisher = Some(MediaLeg::new(leg, streams, Target::Publisher));
                        }
                    }
                    ServerMsg::Answer { target: Target::Publisher, sdp } => {
                        if let Some(p) = publisher.as_mut() {
                            let answer = RTCSessionDescription::answer(sdp.clone())
                                .map_err(|e| anyhow!("the publisher answer does not parse: {e}"))?;
                            p.leg.pc
                                .set_remote_description(Instant::now(), answer)
                                .map_err(|e| anyhow!("setting the publisher answer: {e}"))?;
                            // The negotiated payload types and extension ids are the answer's.
                            apply_answer(&mut p.leg.pc, &mut p.streams);
                        }
                    }
                    ServerMsg::Offer { target: Target::Subscriber, sdp } => {
                        if subscriber.is_none() {
                            let leg = Leg::new(local_ip, false, options.media_via).await?;
                            subscriber = Some(MediaLeg::new(leg, Vec::new(), Target::Subscriber));
                        }
                        if let Some(s) = subscriber.as_mut() {
                            let offer = RTCSessionDescription::offer(sdp.clone())
                                .map_err(|e| anyhow!("the subscriber offer does not parse: {e}"))?;
                            s.leg.pc
                                .set_remote_description(Instant::now(), offer)
                                .map_err(|e| anyhow!("setting the subscriber offer: {e}"))?;
                            let answer = s.leg.pc.create_answer(None).map_err(|e| anyhow!("creating the answer: {e}"))?;
                            s.leg.pc
                                .set_local_description(Instant::now(), answer.clone())
                                .map_err(|e| anyhow!("setting the local answer: {e}"))?;
                            let m = serde_json::json!({"type":"answer","target":"subscriber","sdp":answer.sdp});
                            ws.send(ws_text(m)).await.context("sending the answer")?;
                        }
                    }
                    _ => {}
                }
                let _ = reports.send(Report::Signal(msg));
            }
            r = recv_on(publisher.as_mut()) => {
                if let (Ok(first), Some(p)) = (r, publisher.as_mut()) {
                    p.read_batch(first, stats, |_, _| {});
                }
            }
            r = recv_on(subscriber.as_mut()) => {
                if let (Ok(first), Some(s)) = (r, subscriber.as_mut()) {
                    s.read_batch(first, stats, report_rtp);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}
