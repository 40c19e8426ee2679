//! What every HTTP handler and signaling session shares: the node's config, metrics, media
//! shards and cluster side. HTTP, the admin API and signaling all read it; none of them
//! depends on another through it.

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::Verifier;
use crate::cluster::ClusterNode;
use crate::config::Config;
use crate::limits::PerKeyRate;
use crate::metrics::Metrics;
use crate::shards::Shards;

pub struct AppState {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub verifier: Verifier,
    /// The media shards; a conference lives on one.
    pub shards: Shards,
    pub cluster: Arc<ClusterNode>,
    /// When the node started (the admin API's uptime).
    pub started: Instant,
    /// `limits.max_joins_per_ip_per_sec`, shared by every session.
    pub join_rate: Mutex<PerKeyRate<IpAddr>>,
    /// Joined signaling sessions (`limits.max_participants_per_node`; `limits::NodeSlot`).
    pub node_participants: Arc<AtomicUsize>,
}

impl AppState {
    pub fn draining(&self) -> bool {
        self.cluster.draining()
    }
}
