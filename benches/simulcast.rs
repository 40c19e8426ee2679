//! Inter-bridge bytes with and without simulcast layer suppression (issue 5).
//!
//! A conference on two bridges linked by Octo: four simulcast publishers (two on each bridge,
//! the load client's encoder-shaped VP8, layers q/h/f at ~150/500/2500 kbps, publish-only
//! tokens) and three viewers on each bridge that show every publisher on a small tile (they
//! ask 180 pixels of every video with `video_constraints`). The viewers are signaling sessions
//! that leave their subscriber PeerConnection unanswered: what crosses the link depends only
//! on what they ask, and this keeps the 2-core machine free for the publishers and bridges.
//!
//! Each mode runs on a fresh pair of in-process bridges: `octo.layer_suppression = true` (the
//! default: a peer gets only the layers its receivers need) and `false` (every layer to every
//! peer, as Jitsi does). Bytes are the bridges' own Octo counters (sealed datagrams: RTP plus
//! the 24-byte Octo header and the 16-byte AEAD tag), over a measured window after a warm-up
//! longer than the 2 s grace period.
//!
//! `cargo bench -p kaskade-benches --bench simulcast` (release build of the bridge library, in
//! process; `-- --secs N` sets the window, default 10).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use kaskade_bridge::config::{OctoConfig, OctoPeer};
use kaskade_bridge::metrics::Metrics;
use kaskade_loadtest::node::{InProcessNode, dev_config, token_with};
use kaskade_loadtest::{MediaProfile, Resolution, VideoProfile, client};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "simulcast-bench-cluster-secret-0123456789";
const PUBLISHERS_PER_BRIDGE: usize = 2;
const VIEWERS_PER_BRIDGE: usize = 3;
const WARMUP: Duration = Duration::from_secs(5);

fn free_udp_ports(n: usize) -> Result<Vec<u16>> {
    let socks = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    socks.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

async fn start_pair(suppression: bool) -> Result<Vec<InProcessNode>> {
    let ports = free_udp_ports(2)?;
    let mut nodes = Vec::new();
    for i in 1..=2u32 {
        let j = 3 - i;
        let mut config = dev_config(100);
        config.bridge.id = format!("bench-{i}");
        config.octo = OctoConfig {
            bridge_id: i,
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            port: ports[(i - 1) as usize],
            secret: SECRET.into(),
            layer_suppression: suppression,
            peers: vec![OctoPeer {
                id: j,
                name: format!("bench-{j}"),
                region: String::new(),
                address: SocketAddr::from(([127, 0, 0, 1], ports[(j - 1) as usize])),
                url: String::new(),
            }],
            ..Default::default()
        };
        nodes.push(InProcessNode::start(config).await?);
    }
    Ok(nodes)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Joins as a viewer and asks `height` pixels of every video track in `joined`.
async fn viewer(http: SocketAddr, room: &str, identity: &str, height: u32) -> Result<(Ws, usize)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws")).await?;
    let join = serde_json::json!({
        "type": "join", "room": room, "name": identity, "token": token_with(room, identity, true)?,
    });
    ws.send(Message::Text(join.to_string().into())).await?;
    let joined = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("waiting for joined")?
            .context("socket closed")??;
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("joined") => break v,
                Some("error") => bail!("join refused: {v}"),
                _ => {}
            }
        }
    };
    let mut tracks = serde_json::Map::new();
    for p in joined["participants"].as_array().into_iter().flatten() {
        for t in p["tracks"].as_array().into_iter().flatten() {
            if t["kind"] == "video"
                && let Some(id) = t["id"].as_str()
            {
                tracks.insert(id.to_owned(), height.into());
            }
        }
    }
    let n = tracks.len();
    let m = serde_json::json!({"type": "video_constraints", "tracks": tracks});
    ws.send(Message::Text(m.to_string().into())).await?;
    Ok((ws, n))
}

struct Sample {
    octo_kbps: f64,
    published_kbps: f64,
    saved_kbps: f64,
}

fn octo_out(m: &Metrics, peer: &str) -> u64 {
    m.octo_bytes_out.with_label_values(&[peer]).get()
}

async fn run(suppression: bool, secs: u64) -> Result<Sample> {
    let nodes = start_pair(suppression).await?;
    let room = format!("sim-bench-{suppression}");
    let mut publishers = Vec::new();
    for (b, node) in nodes.iter().enumerate() {
        for k in 0..PUBLISHERS_PER_BRIDGE {
            let id = format!("pub-{b}-{k}");
            publishers.push(client::spawn_client(client::ClientSpec {
                http: node.http,
                room: room.clone(),
                identity: id.clone(),
                token: token_with(&room, &id, false)?,
                publish: Some(MediaProfile::load(
                    false,
                    Some(VideoProfile::new(Resolution::High, true)),
                )),
                report_rtp: false,
            }));
        }
    }
    // Both bridges have announced their publishers (once a second) before viewers join.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut viewers = Vec::new();
    for (b, node) in nodes.iter().enumerate() {
        for k in 0..VIEWERS_PER_BRIDGE {
            let (ws, n) = viewer(node.http, &room, &format!("view-{b}-{k}"), 180).await?;
            if n != PUBLISHERS_PER_BRIDGE * nodes.len() {
                bail!("viewer {b}-{k} sees {n} video tracks");
            }
            viewers.push(ws);
        }
    }
    tokio::time::sleep(WARMUP).await;
    let (m1, m2) = (&nodes[0].metrics, &nodes[1].metrics);
    let octo = || octo_out(m1, "bench-2") + octo_out(m2, "bench-1");
    let published = || m1.bytes_in.get() + m2.bytes_in.get();
    let saved = || m1.octo_bytes_saved.get() + m2.octo_bytes_saved.get();
    let (o0, p0, s0) = (octo(), published(), saved());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let kbps = |bytes: u64| bytes as f64 * 8.0 / secs as f64 / 1000.0;
    let sample = Sample {
        octo_kbps: kbps(octo() - o0),
        published_kbps: kbps(published() - p0),
        saved_kbps: kbps(saved() - s0),
    };
    for p in &publishers {
        let _ = p.stop.send(true);
    }
    for mut v in viewers {
        let _ = v.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(sample)
}

fn main() -> Result<()> {
    let secs = std::env::args()
        .skip_while(|a| a != "--secs")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "2 bridges, {} simulcast publishers (q/h/f), {} viewers on 180p tiles per bridge, {secs} s window",
            2 * PUBLISHERS_PER_BRIDGE,
            VIEWERS_PER_BRIDGE
        );
        println!(
            "{:<22} {:>16} {:>16} {:>14}",
            "mode", "Octo kbps (both)", "published kbps", "saved kbps"
        );
        let mut results = Vec::new();
        for suppression in [false, true] {
            let s = run(suppression, secs).await?;
            println!(
                "{:<22} {:>16.0} {:>16.0} {:>14.0}",
                if suppression {
                    "layer suppression on"
                } else {
                    "every layer (Jitsi)"
                },
                s.octo_kbps,
                s.published_kbps,
                s.saved_kbps
            );
            results.push(s);
        }
        if let [off, on] = results.as_slice() {
            println!(
                "inter-bridge bytes: {:.1}% of sending every layer ({:.0} kbps saved)",
                100.0 * on.octo_kbps / off.octo_kbps.max(1.0),
                off.octo_kbps - on.octo_kbps
            );
        }
        Ok(())
    })
}
