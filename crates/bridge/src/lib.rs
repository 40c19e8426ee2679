//! The kaskade node: the I/O shell around the media core.
//!
//! `Node::start` binds the media UDP port and the HTTP port and starts the media shard;
//! `Node::serve` runs signaling and the HTTP API until shutdown. The `kaskade` binary and the
//! integration tests both start nodes this way.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod demux;
pub mod directory;
pub mod http;
pub mod leg;
pub mod limits;
pub mod messages;
pub mod metrics;
pub mod rtpext;
pub mod shard;
pub mod shards;
pub mod signaling;
pub mod sockbuf;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::leg::LegSettings;
use crate::messages::BridgeInfo;
use crate::shard::ShardLimits;

/// A started node: ports bound, media shard running, HTTP not yet serving.
pub struct Node {
    pub http_addr: SocketAddr,
    /// Where the media socket is bound.
    pub media_addr: SocketAddr,
    /// The media address put in ICE candidates.
    pub advertised_media: SocketAddr,
    listener: tokio::net::TcpListener,
    state: Arc<state::AppState>,
}

impl Node {
    /// Binds the ports and starts the media shard. Port 0 picks a free port (tests).
    pub async fn start(config: Config) -> Result<Node> {
        let metrics = Arc::new(metrics::Metrics::new().context("creating metrics")?);
        let media_bind = SocketAddr::new(config.media.bind_ip, config.media.port);
        let sockets = bind_media(media_bind, config.shard_count())?;
        let media_addr = sockets[0].local_addr().context("media socket address")?;
        for socket in &sockets {
            size_buffers(socket, "media", config.media.udp_buffer_bytes, &metrics);
        }
        let advertised_media = SocketAddr::new(config.media.advertise_ip, media_addr.port());
        let settings = LegSettings {
            advertised: advertised_media,
            srtp_profiles: config
                .media
                .srtp_profiles
                .iter()
                .map(|p| leg::parse_srtp_profile(p))
                .collect::<Result<_>>()?,
            // Relayed end-to-end retransmissions repeat sequence numbers a leg has already seen.
            lean_egress: config.media.lean_egress,
            replay_window: match config.media.repair {
                config::RepairMode::PerHop => config.media.srtp_replay_window,
                config::RepairMode::EndToEnd => 0,
            },
            certificate: leg::generate_certificate()?,
        };
        let limits = ShardLimits {
            max_participants: config.limits.max_participants,
            max_media_sections: config.limits.max_media_sections,
            stun_per_address: config.limits.stun_per_address_per_sec,
            stun_per_leg: config.limits.stun_per_leg_per_sec,
            max_pending_legs: config.limits.max_pending_legs,
            leg_timeout: Duration::from_secs(config.media.leg_timeout_secs),
            repair: config.media.repair,
        };
        let bridge = BridgeInfo {
            id: config.bridge.id.clone(),
            region: config.bridge.region.clone(),
        };
        let mut octo_port = config.octo.port;
        let octo = if !config.octo_enabled() {
            None
        } else {
            let bind = SocketAddr::new(config.octo.bind_ip, config.octo.port);
            let sock = std::net::UdpSocket::bind(bind)
                .with_context(|| format!("binding the Octo UDP port {bind}"))?;
            octo_port = sock.local_addr().context("Octo socket address")?.port();
            size_buffers(&sock, "octo", config.media.udp_buffer_bytes, &metrics);
            tracing::info!(octo = %bind, peers = config.octo.peers.len(), "Octo links enabled");
            Some((sock, config.octo.clone()))
        };
        let shards = shard::spawn_all(sockets, settings, limits, bridge, metrics.clone(), octo)?;
        let shards = shards::Shards::new(
            shards.into_iter().map(|(h, _thread)| h).collect(),
            config.media.spread_at,
            Some(metrics.clone()),
        )?;
        let http_bind = SocketAddr::new(config.http.bind_ip, config.http.port);
        let listener = tokio::net::TcpListener::bind(http_bind)
            .await
            .with_context(|| format!("binding the HTTP port {http_bind}"))?;
        let http_addr = listener.local_addr().context("HTTP address")?;
        if config.dev {
            tracing::warn!(
                api_key = config::DEV_API_KEY,
                api_secret = config::DEV_API_SECRET,
                "DEV MODE: built-in API key; do not expose this node"
            );
        }
        tracing::info!(
            http = %http_addr,
            media = %media_addr,
            shards = shards.len(),
            advertised = %advertised_media,
            "kaskade serving; demo page at http://{}:{}/",
            if config.http.bind_ip.is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                config.http.bind_ip.to_string()
            },
            http_addr.port(),
        );
        let backend = cluster::Backend::connect(&config, &metrics)
            .await
            .context("cluster directory")?;
        let cluster = Arc::new(cluster::ClusterNode::new(
            &config,
            metrics.clone(),
            http_addr,
            octo_port,
            backend,
        ));
        tracing::info!(
            directory = cluster.backend(),
            strategy = config.cluster.strategy.as_str(),
            "cluster directory"
        );
        let joins = config.limits.max_joins_per_ip_per_sec;
        let state = Arc::new(state::AppState {
            started: Instant::now(),
            // 65 536 addresses tracked at most: a few MB whatever the traffic.
            join_rate: std::sync::Mutex::new(limits::PerKeyRate::new(
                joins,
                joins.saturating_mul(2),
                65_536,
            )),
            node_participants: Arc::default(),
            verifier: auth::Verifier::new(&config.auth.keys, config.auth.max_token_ttl_secs),
            config,
            metrics,
            shards,
            cluster,
        });
        Ok(Node {
            http_addr,
            media_addr,
            advertised_media,
            listener,
            state,
        })
    }

    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.state.metrics.clone()
    }

    /// The node's cluster side: start a drain with `start_drain` (what SIGTERM does).
    pub fn cluster(&self) -> Arc<cluster::ClusterNode> {
        self.state.cluster.clone()
    }

    /// Serves HTTP and signaling until `shutdown` completes, or until a drain has ended (the
    /// node is empty, or `drain.timeout_secs` passed).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let state = self.state.clone();
        let heartbeat = tokio::spawn(cluster::run_heartbeat(
            state.cluster.clone(),
            state.shards.clone(),
            state.config.cluster.pps_capacity,
        ));
        let drained = drain_watch(state.clone());
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                () = drained => {}
            }
        };
        // The peer address reaches signaling (limits.max_joins_per_ip_per_sec).
        let service = http::router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        let r = axum::serve(self.listener, service)
            .with_graceful_shutdown(stop)
            .await
            .context("HTTP server");
        heartbeat.abort();
        state.cluster.withdraw().await;
        r
    }
}

/// Asks for `bytes` of kernel buffer each way on `socket` and exports what it got
/// (`kaskade_udp_buffer_bytes{socket, dir}`).
fn size_buffers(
    socket: &std::net::UdpSocket,
    label: &str,
    bytes: usize,
    metrics: &metrics::Metrics,
) {
    let (rcv, snd) = sockbuf::configure(socket, label, bytes);
    for (dir, got) in [("recv", rcv), ("send", snd)] {
        metrics
            .udp_buffer_bytes
            .with_label_values(&[label, dir])
            .set(got as i64);
    }
}

/// The media sockets, one per shard, all on the one media port. Several share it through
/// `SO_REUSEPORT` (the kernel spreads clients over them by 4-tuple; shard/siblings.rs passes on
/// what reached the wrong shard). Port 0 picks a free port for the first, and the others join it.
fn bind_media(addr: SocketAddr, shards: usize) -> Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if shards <= 1 {
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("binding the media UDP port {addr}"))?;
        return Ok(vec![socket]);
    }
    let mut port = addr.port();
    let mut sockets = Vec::with_capacity(shards);
    for i in 0..shards {
        let at = SocketAddr::new(addr.ip(), port);
        let socket = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))
            .context("creating a media socket")?;
        socket
            .set_reuse_port(true)
            .context("SO_REUSEPORT on a media socket")?;
        socket
            .bind(&at.into())
            .with_context(|| format!("binding the media UDP port {at} (shard {i})"))?;
        let socket = std::net::UdpSocket::from(socket);
        port = socket.local_addr().context("media socket address")?.port();
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Completes when a drain has ended: no local participant left, or the timeout passed.
async fn drain_watch(state: Arc<state::AppState>) {
    let timeout = Duration::from_secs(state.config.drain.timeout_secs);
    let mut started: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if !state.cluster.draining() {
            continue;
        }
        let t0 = *started.get_or_insert_with(Instant::now);
        let Some(snap) = state.shards.snapshot().await else {
            return;
        };
        let left = cluster::local_participants(&snap, &state.config.bridge.id);
        if left == 0 {
            tracing::info!("drained: no participant left, stopping");
            return;
        }
        if t0.elapsed() >= timeout {
            tracing::warn!(
                participants = left,
                "drain timeout: stopping with participants still here"
            );
            return;
        }
    }
}
