//! Test glue over the shared WebRTC client of `kaskade-loadtest` (real `rtc` PeerConnections
//! over real loopback UDP and a real WebSocket): an in-process node, tokens, and the
//! panicking helpers a test wants.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kaskade_bridge::messages::ServerMsg;
use kaskade_bridge::metrics::Metrics;
use kaskade_loadtest::node::{InProcessNode, dev_config};
use kaskade_loadtest::{MediaProfile, client};
use tokio::sync::{mpsc, watch};

pub use kaskade_loadtest::Report;
#[allow(unused_imports)]
pub use kaskade_loadtest::client::{AUDIO_SSRC, VIDEO_SSRC};

/// Starts a dev-mode node in this process on free loopback ports; returns its HTTP address.
pub async fn start_node(max_participants: usize) -> (SocketAddr, Arc<Metrics>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let node = InProcessNode::start(dev_config(max_participants))
        .await
        .expect("node starts");
    (node.http, node.metrics)
}

pub fn token(room: &str, identity: &str) -> String {
    kaskade_loadtest::token(room, identity).expect("mint")
}

/// How a test client behaves: a publisher sends light audio and video
/// ([`MediaProfile::light`]); every client reports each RTP packet it receives.
#[derive(Clone)]
pub struct ClientSpec {
    pub http: SocketAddr,
    pub room: String,
    pub identity: String,
    pub token: String,
    pub publish: bool,
}

impl From<ClientSpec> for client::ClientSpec {
    fn from(s: ClientSpec) -> Self {
        client::ClientSpec {
            http: s.http,
            room: s.room,
            identity: s.identity,
            token: s.token,
            publish: s.publish.then(MediaProfile::light),
            report_rtp: true,
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
            Ok(Some(Report::Failed(e))) => panic!("client failed while waiting for {what}: {e}"),
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
    let h = client::spawn_client(spec.into());
    (h.reports, h.stop)
}

pub fn tracks_by_kind(map: &mut HashMap<String, String>, r: &Report) {
    if let Report::Signal(ServerMsg::TrackPublished { track, .. }) = r {
        map.insert(track.id.clone(), track.kind.clone());
    }
}
