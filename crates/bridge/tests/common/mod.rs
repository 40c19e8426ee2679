//! A real WebRTC client for tests, on `rtc` over real loopback UDP: it speaks the signaling
//! protocol over a real WebSocket, publishes synthetic Opus/VP8 RTP and reports what it
//! receives. Each client is one tokio task.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use kaskade_bridge::config::{Config, DEV_API_KEY, DEV_API_SECRET};
use kaskade_bridge::messages::{ServerMsg, Target};
use kaskade_bridge::{Node, auth};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Starts a dev-mode node on free loopback ports; returns its HTTP address.
pub async fn start_node(
    max_participants: usize,
) -> (SocketAddr, std::sync::Arc<kaskade_bridge::metrics::Metrics>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config {
        dev: true,
        ..Default::default()
    };
    config
        .auth
        .keys
        .insert(DEV_API_KEY.into(), DEV_API_SECRET.into());
    config.http.bind_ip = [127, 0, 0, 1].into();
    config.http.port = 0;
    config.media.bind_ip = [127, 0, 0, 1].into();
    config.media.port = 0;
    config.limits.max_participants = max_participants;
    let node = Node::start(config).await.expect("node starts");
    let addr = node.http_addr;
    let metrics = node.metrics();
    tokio::spawn(node.serve(std::future::pending()));
    (addr, metrics)
}

pub fn token(room: &str, identity: &str) -> String {
    auth::mint(
        DEV_API_KEY,
        DEV_API_SECRET,
        &auth::Claims {
            iss: String::new(),
            identity: identity.into(),
            room: room.into(),
            name: None,
            can_publish: true,
            can_subscribe: true,
            exp: auth::now_secs() + 600,
            nbf: None,
        },
    )
    .expect("mint")
}

/// What a client saw.
#[derive(Debug, Clone)]
pub enum Report {
    Signal(ServerMsg),
    Connected(Target),
    /// RTP received on the subscriber leg: (track id, ssrc, sequence number, payload).
    Rtp {
        track: String,
        ssrc: u32,
        seq: u16,
        payload: Bytes,
    },
    Closed,
}

struct Leg {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Leg {
    async fn new() -> Leg {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let local = socket.local_addr().expect("addr");
        let mut me = MediaEngine::default();
        me.register_default_codecs().expect("codecs");
        let registry = register_default_interceptors(rtc::interceptor::Registry::new(), &mut me)
            .expect("interceptors");
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .expect("pc");
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
        .expect("candidate");
        pc.add_local_candidate(RTCIceCandidate::from(&cand).to_json().expect("json"))
            .expect("local candidate");
        Leg { pc, socket, local }
    }

    fn flush(&mut self) {
        while let Some(w) = self.pc.poll_write() {
            let _ = self.socket.try_send_to(&w.message, w.transport.peer_addr);
        }
    }

    fn feed(&mut self, from: SocketAddr, data: &[u8]) {
        let _ = self.pc.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
    }
}

/// How a test client behaves.
#[derive(Clone)]
pub struct ClientSpec {
    pub http: SocketAddr,
    pub room: String,
    pub identity: String,
    pub token: String,
    pub publish: bool,
}

pub const AUDIO_SSRC: u32 = 0x1111_0001;
pub const VIDEO_SSRC: u32 = 0x2222_0002;

/// Runs a client until `stop` turns true; everything it sees goes to `reports`.
pub async fn run_client(
    spec: ClientSpec,
    reports: mpsc::UnboundedSender<Report>,
    mut stop: watch::Receiver<bool>,
) {
    let url = format!("ws://{}/ws", spec.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("ws connect");
    let join =
        serde_json::json!({"type":"join","room":spec.room,"token":spec.token,"name":spec.identity});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .expect("send join");

    let mut publisher: Option<Leg> = None;
    let mut senders: Vec<(RTCRtpSenderId, u32, u8, u32)> = Vec::new(); // id, ssrc, pt, ts step
    let mut subscriber: Option<Leg> = None;
    let mut seq: u16 = 1000;
    let mut ts: u32 = 0;
    let mut pub_connected = false;
    let mut next_media = Instant::now() + Duration::from_millis(20);
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];

    loop {
        for leg in [publisher.as_mut(), subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            leg.flush();
        }
        // Events and reads.
        if let Some(p) = publisher.as_mut() {
            while let Some(ev) = p.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Connected,
                ) = ev
                {
                    pub_connected = true;
                    let _ = reports.send(Report::Connected(Target::Publisher));
                }
            }
            while p.pc.poll_read().is_some() {}
        }
        if let Some(s) = subscriber.as_mut() {
            while let Some(ev) = s.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Connected,
                ) = ev
                {
                    let _ = reports.send(Report::Connected(Target::Subscriber));
                }
            }
            while let Some(m) = s.pc.poll_read() {
                if let RTCMessage::RtpPacket(track, pkt) = m.message {
                    let _ = reports.send(Report::Rtp {
                        track,
                        ssrc: pkt.header.ssrc,
                        seq: pkt.header.sequence_number,
                        payload: pkt.payload,
                    });
                }
            }
        }
        for leg in [publisher.as_mut(), subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            leg.flush();
        }

        let mut wake = Instant::now() + Duration::from_millis(50);
        for leg in [publisher.as_mut(), subscriber.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(t) = leg.pc.poll_timeout() {
                wake = wake.min(t);
            }
        }
        if pub_connected {
            wake = wake.min(next_media);
        }
        let pub_sock = publisher.as_ref().map(|l| &l.socket);
        let sub_sock = subscriber.as_ref().map(|l| &l.socket);
        tokio::select! {
            _ = stop.changed() => {
                let _ = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
                let _ = reports.send(Report::Closed);
                return;
            }
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else {
                    let _ = reports.send(Report::Closed);
                    return;
                };
                let Message::Text(text) = frame else { continue };
                let msg: ServerMsg = serde_json::from_str(text.as_str()).expect("server message parses");
                match &msg {
                    ServerMsg::Joined { .. } if spec.publish => {
                        let mut leg = Leg::new().await;
                        for (kind, mime, clock, channels, ssrc, pt, step) in [
                            (RtpCodecKind::Audio, MIME_TYPE_OPUS, 48000, 2, AUDIO_SSRC, 111u8, 960u32),
                            (RtpCodecKind::Video, MIME_TYPE_VP8, 90000, 0, VIDEO_SSRC, 96u8, 3000u32),
                        ] {
                            let codec = RTCRtpCodec {
                                mime_type: mime.into(),
                                clock_rate: clock,
                                channels,
                                sdp_fmtp_line: String::new(),
                                rtcp_feedback: vec![],
                            };
                            let track = MediaStreamTrack::new(
                                spec.identity.clone(),
                                format!("{}-{}", spec.identity, if kind == RtpCodecKind::Audio { "a" } else { "v" }),
                                "label".into(),
                                kind,
                                vec![RTCRtpEncodingParameters {
                                    rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                                    codec,
                                    ..Default::default()
                                }],
                            );
                            let id = leg.pc.add_track(track).expect("add track");
                            senders.push((id, ssrc, pt, step));
                        }
                        let offer = leg.pc.create_offer(None).expect("offer");
                        leg.pc.set_local_description(Instant::now(), offer.clone()).expect("set local");
                        let m = serde_json::json!({"type":"offer","target":"publisher","sdp":offer.sdp});
                        ws.send(Message::Text(m.to_string().into())).await.expect("send offer");
                        publisher = Some(leg);
                    }
                    ServerMsg::Answer { target: Target::Publisher, sdp } => {
                        if let Some(p) = publisher.as_mut() {
                            let answer = RTCSessionDescription::answer(sdp.clone()).expect("answer parses");
                            p.pc.set_remote_description(Instant::now(), answer).expect("set remote answer");
                            // The negotiated payload types are the answer's.
                            for s in senders.iter_mut() {
                                if let Some(mut sender) = p.pc.rtp_sender(s.0)
                                    && let Some(c) = sender.get_parameters().rtp_parameters.codecs.first()
                                {
                                    s.2 = c.payload_type;
                                }
                            }
                        }
                    }
                    ServerMsg::Offer { target: Target::Subscriber, sdp } => {
                        if subscriber.is_none() {
                            subscriber = Some(Leg::new().await);
                        }
                        if let Some(s) = subscriber.as_mut() {
                            let offer = RTCSessionDescription::offer(sdp.clone()).expect("offer parses");
                            s.pc.set_remote_description(Instant::now(), offer).expect("set remote offer");
                            let answer = s.pc.create_answer(None).expect("answer");
                            s.pc.set_local_description(Instant::now(), answer.clone()).expect("set local answer");
                            let m = serde_json::json!({"type":"answer","target":"subscriber","sdp":answer.sdp});
                            ws.send(Message::Text(m.to_string().into())).await.expect("send answer");
                        }
                    }
                    _ => {}
                }
                let _ = reports.send(Report::Signal(msg));
            }
            r = async { match pub_sock { Some(s) => s.recv_from(&mut buf).await, None => std::future::pending().await } } => {
                if let (Ok((n, from)), Some(p)) = (r, publisher.as_mut()) {
                    let data = buf[..n].to_vec();
                    p.feed(from, &data);
                }
            }
            r = async { match sub_sock { Some(s) => s.recv_from(&mut buf2).await, None => std::future::pending().await } } => {
                if let (Ok((n, from)), Some(s)) = (r, subscriber.as_mut()) {
                    let data = buf2[..n].to_vec();
                    s.feed(from, &data);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                for leg in [publisher.as_mut(), subscriber.as_mut()].into_iter().flatten() {
                    let _ = leg.pc.handle_timeout(now);
                }
                if pub_connected && now >= next_media {
                    next_media = now + Duration::from_millis(20);
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(1);
                    if let Some(p) = publisher.as_mut() {
                        for &(id, ssrc, pt, step) in &senders {
                            let payload = Bytes::from(format!("{ssrc:08x}:{seq}").into_bytes());
                            let pkt = rtc::rtp::Packet {
                                header: rtc::rtp::header::Header {
                                    version: 2,
                                    payload_type: pt,
                                    sequence_number: seq,
                                    timestamp: ts.wrapping_mul(step),
                                    ssrc,
                                    marker: true,
                                    ..Default::default()
                                },
                                payload,
                            };
                            if let Some(mut s) = p.pc.rtp_sender(id) {
                                let _ = s.write_rtp(now, pkt);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Waits for a report matching `f`, up to `timeout`.
pub async fn expect<T>(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&Report) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => {
                if let Some(t) = f(&r) {
                    return t;
                }
            }
            Ok(None) => panic!("client ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

pub fn spawn_client(spec: ClientSpec) -> (mpsc::UnboundedReceiver<Report>, watch::Sender<bool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(run_client(spec, tx, stop_rx));
    (rx, stop_tx)
}

pub fn tracks_by_kind(map: &mut HashMap<String, String>, r: &Report) {
    if let Report::Signal(ServerMsg::TrackPublished { track, .. }) = r {
        map.insert(track.id.clone(), track.kind.clone());
    }
}
