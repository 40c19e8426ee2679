//! Simulcast across two bridges (issue 5): the origin sends a peer bridge only the layers that
//! bridge's receivers need.
//!
//! Two in-process nodes linked by Octo. A publisher on bridge 1 sends rid simulcast q/h/f
//! (the load client's encoder-shaped VP8: ~150 kbps, ~500 kbps, ~2.5 Mbps, real VP8 payload
//! descriptors and keyframe headers). Receivers on bridge 2 state what they want with
//! `video_constraints`. What crosses the link is measured from bridge 1's own counters: the
//! Octo bytes it sent to bridge 2 against the video bytes it received from the publisher.
//!
//! The receivers here are signaling sessions (join + video_constraints) that leave their
//! subscriber PeerConnection unanswered: layer demand is decided from what receivers ask and
//! the bridge's allocation, not from their media path, and the load client has no way to send
//! constraints. The media path of a switch (keyframe, rewrite, decoding) is covered with real
//! browsers in tests/e2e/test_simulcast_browser.py.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kaskade_bridge::config::{OctoConfig, OctoPeer};
use kaskade_bridge::metrics::Metrics;
use kaskade_loadtest::node::{InProcessNode, dev_config};
use kaskade_loadtest::{MediaProfile, Resolution, VideoProfile, client};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "simulcast-test-cluster-secret-0123456789";
const ROOM: &str = "simulcast-room";

fn free_udp_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("udp probe"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("probe address").port())
        .collect()
}

/// Bridges 1 and 2, linked by Octo on loopback.
async fn start_pair() -> Vec<InProcessNode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ports = free_udp_ports(2);
    let mut nodes = Vec::new();
    for i in 1..=2u32 {
        let j = 3 - i;
        let mut config = dev_config(50);
        config.bridge.id = format!("bridge-{i}");
        config.octo = OctoConfig {
            bridge_id: i,
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            port: ports[(i - 1) as usize],
            secret: SECRET.into(),
            peers: vec![OctoPeer {
                id: j,
                name: format!("bridge-{j}"),
                region: String::new(),
                address: SocketAddr::from(([127, 0, 0, 1], ports[(j - 1) as usize])),
                url: String::new(),
            }],
            ..Default::default()
        };
        nodes.push(InProcessNode::start(config).await.expect("node starts"));
    }
    nodes
}

/// A receiver that only signals: joins bridge `http` and says what it wants of `track`.
struct Viewer {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Viewer {
    async fn join(http: SocketAddr, identity: &str) -> (Viewer, serde_json::Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
            .await
            .expect("connect");
        let join = serde_json::json!({
            "type": "join", "room": ROOM, "name": identity,
            "token": common::token(ROOM, identity),
        });
        ws.send(Message::Text(join.to_string().into()))
            .await
            .expect("send join");
        let mut v = Viewer { ws };
        let joined = v.wait_for("joined").await;
        (v, joined)
    }

    async fn wait_for(&mut self, typ: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {typ}"))
                .expect("socket open")
                .expect("frame");
            if let Message::Text(t) = msg {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                assert_ne!(v["type"], "error", "{v}");
                if v["type"] == typ {
                    return v;
                }
            }
        }
    }

    async fn want(&mut self, track: &str, height: u32) {
        let m = serde_json::json!({"type": "video_constraints", "tracks": {track: height}});
        self.ws
            .send(Message::Text(m.to_string().into()))
            .await
            .expect("send constraints");
    }

    async fn leave(mut self) {
        let _ = self
            .ws
            .send(Message::Text(r#"{"type":"leave"}"#.into()))
            .await;
    }
}

/// Over `window`: the Octo bytes bridge 1 sent to bridge 2 and the RTP bytes it received
/// (the publisher's three layers: the publisher sends video only).
async fn link_share(origin: &Metrics, window: Duration) -> (u64, u64, f64) {
    let out = origin.octo_bytes_out.with_label_values(&["bridge-2"]);
    let (o0, i0) = (out.get(), origin.bytes_in.get());
    tokio::time::sleep(window).await;
    let (o, i) = (out.get() - o0, origin.bytes_in.get() - i0);
    (o, i, o as f64 / i.max(1) as f64)
}

fn video_track(joined_or_event: &serde_json::Value) -> Option<String> {
    let tracks = joined_or_event["participants"]
        .as_array()?
        .iter()
        .flat_map(|p| p["tracks"].as_array().cloned().unwrap_or_default());
    tracks
        .filter(|t| t["kind"] == "video")
        .find_map(|t| t["id"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_carries_only_the_layers_remote_receivers_need() {
    let nodes = start_pair().await;
    let (origin, remote) = (&nodes[0], &nodes[1]);
    let m1: Arc<Metrics> = origin.metrics.clone();

    // The publisher on bridge 1: three simulcast layers, no audio.
    let publisher = client::spawn_client(client::ClientSpec {
        http: origin.http,
        room: ROOM.into(),
        identity: "pub".into(),
        token: common::token(ROOM, "pub"),
        publish: Some(MediaProfile::load(
            false,
            Some(VideoProfile::new(Resolution::High, true)),
        )),
        report_rtp: false,
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while m1.rtp_routed_local.get() < 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the publisher's layers reach bridge 1");

    // A viewer on bridge 2 wants a thumbnail. The publisher is in its `joined` once bridge 1
    // has announced it (within a second), else its track comes as an event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut small, joined) = Viewer::join(remote.http, "small").await;
    let track = match video_track(&joined) {
        Some(t) => t,
        None => small.wait_for("track_published").await["track"]["id"]
            .as_str()
            .expect("track id")
            .to_owned(),
    };
    small.want(&track, 180).await;
    // Demands travel at once; let the first announcements and the grace of a start settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent, received, thumb_share) = link_share(&m1, Duration::from_secs(3)).await;
    println!(
        "one 180p viewer: link {sent} B of {received} B published ({:.1}%)",
        thumb_share * 100.0
    );
    // q is ~150 of ~3150 kbps: about 5% of the publisher's bytes (Octo adds 40 B a packet).
    assert!(
        thumb_share < 0.15,
        "only the lowest layer crosses: {thumb_share}"
    );
    assert!(
        thumb_share > 0.01,
        "the lowest layer crosses: {thumb_share}"
    );
    assert!(m1.octo_bytes_saved.get() > 0);
    // Bridge 2 times what comes over the link (kaskade_forwarding_delay_seconds{input="octo"}).
    let octo = &remote.metrics.forwarding_delay.octo;
    let n = octo.get_sample_count();
    assert!(n > 0, "Octo RTP timed on bridge 2");
    let mean = octo.get_sample_sum() / n as f64;
    assert!(mean > 0.0 && mean < 0.25, "mean Octo delay {mean} s");

    // A second viewer wants the stage: every layer crosses within a keyframe interval.
    let (mut stage, _) = Viewer::join(remote.http, "stage").await;
    stage.want(&track, 720).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, received, full_share) = link_share(&m1, Duration::from_secs(3)).await;
    println!(
        "plus a 720p viewer: link {sent} B of {received} B published ({:.1}%)",
        full_share * 100.0
    );
    assert!(full_share > 0.85, "all three layers cross: {full_share}");

    // The stage viewer leaves: after the grace period the top layers stop again.
    stage.leave().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, _, after) = link_share(&m1, Duration::from_secs(2)).await;
    println!("after the 720p viewer left: {:.1}%", after * 100.0);
    assert!(after < 0.15, "back to the lowest layer: {after}");

    // Nobody on bridge 2 wants the video at all: nothing crosses.
    small.want(&track, 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent, _, none) = link_share(&m1, Duration::from_secs(2)).await;
    println!("no viewer wants it: link {sent} B ({:.2}%)", none * 100.0);
    assert!(none < 0.01, "nothing crosses: {none}");

    small.leave().await;
    let _ = publisher.stop.send(true);
}

/// A receiver whose downlink cannot carry the top layer ends up on a lower one: its receiver
/// reports show the loss the cap causes, the loss-based estimate drops below the top layer's
/// bitrate, and the allocator moves it down (and holds it there, with hysteresis, while the
/// estimate regrows and probes the top layer again now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_short_of_bandwidth_gets_a_lower_layer() {
    use kaskade_netsim::{ImpairmentConfig, RateLimit, Relay};
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // Every client leg crosses a relay on 127.0.0.2 whose downlink carries 1.2 Mbps: the 360p
    // layer (~500 kbps) fits, the 720p one (~2.5 Mbps) does not.
    let mut config = dev_config(10);
    config.media.advertise_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    let node = InProcessNode::start(config).await.expect("node starts");
    let down = ImpairmentConfig {
        rate: Some(RateLimit::new(1_200_000)),
        ..ImpairmentConfig::none()
    };
    let _relay = Relay::start(
        SocketAddr::from(([127, 0, 0, 2], node.media.port())),
        node.media,
        down,
        ImpairmentConfig::none(),
    )
    .await
    .expect("relay on 127.0.0.2");
    let m = node.metrics.clone();
    let room = "bandwidth-room";
    let publisher = client::spawn_client(client::ClientSpec {
        http: node.http,
        room: room.into(),
        identity: "pub".into(),
        token: common::token(room, "pub"),
        publish: Some(MediaProfile::load(
            false,
            Some(VideoProfile::new(Resolution::High, true)),
        )),
        report_rtp: false,
    });
    let viewer = client::spawn_client(client::ClientSpec {
        http: node.http,
        room: room.into(),
        identity: "viewer".into(),
        token: common::token(room, "viewer"),
        publish: None,
        report_rtp: false,
    });
    let [_, low, mid, high] = &m.simulcast_forwarded_bytes;
    // The viewer starts unconstrained, on the top layer; the loss shows in its first reports.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (l0, m0, h0) = (low.get(), mid.get(), high.get());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (l, md, h) = (low.get() - l0, mid.get() - m0, high.get() - h0);
    let down = m.simulcast_switches.down.get();
    println!(
        "over 8 s at a 1.2 Mbps downlink: low {l} B, mid {md} B, high {h} B; switches down {down}, up {}",
        m.simulcast_switches.up.get()
    );
    assert!(down >= 1, "the viewer was moved down");
    assert!(
        md > h,
        "the viewer spends most of its time below the top layer"
    );
    assert!(md + l > 0, "and still gets video");
    let _ = viewer.stop.send(true);
    let _ = publisher.stop.send(true);
}
