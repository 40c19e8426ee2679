//! The node's side of the cluster: its load (stress), its record in the directory
//! (heartbeat), where a joining participant goes (placement), and draining.
//!
//! Nothing here runs on a media thread: the shard is asked for a snapshot once a second, and
//! the directory is only called from signaling and this module's heartbeat task.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kaskade_cluster::directory::NodeSnapshot;
use kaskade_cluster::{
    ConferenceEntry, Directory, DirectoryError, MemoryDirectory, NodeId, NodeRecord, Placements,
    RedisDirectory, Rule, SelectionParams,
};
use kaskade_sfu::ConferenceId;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::shard::{Command, Snapshot};
use crate::shards::Shards;

/// The directory backend this node uses.
pub enum Backend {
    Memory(MemoryDirectory),
    /// Boxed: the Redis client's state is large and lives once per node.
    Redis(Box<RedisDirectory>),
}

/// Enum dispatch: the trait's methods return `impl Future`, which a `dyn` cannot.
macro_rules! each {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Backend::Memory($d) => $e,
            Backend::Redis($d) => $e,
        }
    };
}

impl Backend {
    /// The configured backend. Redis that cannot be reached at start is retried with
    /// backoff (saying so each time) rather than failing the node into a crash loop; a
    /// configuration Redis cannot be used with (a TLS file that does not load) fails at once.
    pub async fn connect(config: &Config, metrics: &Metrics) -> anyhow::Result<Backend> {
        let Some(r) = &config.redis else {
            return Ok(Backend::Memory(MemoryDirectory::new()));
        };
        let mut delay = Duration::from_millis(250);
        loop {
            match RedisDirectory::connect(r).await {
                Ok(d) => {
                    info!(address = %r.address, tls = r.tls, "cluster directory: Redis");
                    return Ok(Backend::Redis(Box::new(d)));
                }
                Err(DirectoryError::Refused(why)) => {
                    anyhow::bail!("the Redis directory cannot be used: {why}");
                }
                Err(e) => {
                    metrics
                        .cluster
                        .directory_errors
                        .with_label_values(&[e.kind()])
                        .inc();
                    warn!(address = %r.address, error = %e, retry_in_ms = delay.as_millis() as u64, "Redis directory unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub fn name(&self) -> &'static str {
        each!(self, d => d.backend())
    }
    async fn publish(&self, r: &NodeRecord) -> Result<(), DirectoryError> {
        each!(self, d => d.publish(r).await)
    }
    async fn withdraw(&self, n: &NodeId) -> Result<(), DirectoryError> {
        each!(self, d => d.withdraw(n).await)
    }
    async fn nodes(&self, now_ms: u64) -> Result<NodeSnapshot, DirectoryError> {
        each!(self, d => d.nodes(now_ms).await)
    }
    async fn conference(&self, room: &str, now_ms: u64) -> Result<ConferenceEntry, DirectoryError> {
        each!(self, d => d.conference(room, now_ms).await)
    }
    async fn set_host(
        &self,
        room: &str,
        id: u32,
        node: &NodeId,
        participants: u32,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        each!(self, d => d.set_host(room, id, node, participants, now_ms).await)
    }
    async fn conferences(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ConferenceEntry>, DirectoryError> {
        each!(self, d => d.conferences(now_ms, limit).await)
    }
}

/// Where a joining participant goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// On this node, in the conference with this id.
    Here(ConferenceId),
    /// On another bridge: the client is redirected to its signaling URL.
    Elsewhere { node: NodeId, url: String },
}

pub struct ClusterNode {
    backend: Backend,
    metrics: std::sync::Arc<Metrics>,
    params: SelectionParams,
    placements: Mutex<Placements>,
    me: NodeId,
    region: String,
    octo_id: u32,
    octo_addr: SocketAddr,
    url: String,
    pub region_header: String,
    draining: AtomicBool,
    /// The last directory call failed as unreachable.
    directory_down: AtomicBool,
    /// Turns true once at the start of a drain: sessions watch it to migrate.
    drain_signal: tokio::sync::watch::Sender<bool>,
    /// Local participants per room at the last heartbeat, for `set_host`.
    hosted: Mutex<BTreeMap<String, (u32, u32)>>,
    cpu: Mutex<CpuSampler>,
    last_packets: Mutex<Option<(Instant, u64)>>,
}

/// Why a placement failed when the directory answered but no bridge qualified.
const NO_BRIDGE: &str = "no bridge is selectable";

/// Milliseconds since the Unix epoch: the clock directory records carry.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Stress as Jitsi defines it: the larger of packet load and CPU load, each against its
/// capacity (CPU counts as full at 90%).
pub fn stress(pps: f64, pps_capacity: u64, cpu_fraction: f64) -> f64 {
    let packets = pps / pps_capacity.max(1) as f64;
    let cpu = cpu_fraction / 0.9;
    packets.max(cpu).max(0.0)
}

impl ClusterNode {
    pub fn new(
        config: &Config,
        metrics: std::sync::Arc<Metrics>,
        http: SocketAddr,
        octo_port: u16,
        backend: Backend,
    ) -> Self {
        let c = &config.cluster;
        let url = if c.public_url.is_empty() {
            format!(
                "ws://{}/ws",
                SocketAddr::new(config.media.advertise_ip, http.port())
            )
        } else {
            c.public_url.clone()
        };
        ClusterNode {
            backend,
            metrics,
            params: SelectionParams {
                strategy: c.strategy,
                overload_stress: c.overload_stress,
                max_participants_per_bridge: c.max_participants_per_bridge,
            },
            placements: Mutex::new(Placements::default()),
            me: NodeId(config.bridge.id.clone()),
            region: config.bridge.region.clone(),
            octo_id: config.octo.bridge_id,
            octo_addr: SocketAddr::new(config.media.advertise_ip, octo_port),
            url,
            region_header: c.region_header.clone(),
            draining: AtomicBool::new(false),
            directory_down: AtomicBool::new(false),
            drain_signal: tokio::sync::watch::Sender::new(false),
            hosted: Mutex::new(BTreeMap::new()),
            cpu: Mutex::new(CpuSampler::default()),
            last_packets: Mutex::new(None),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining (idempotent): no new participants from now on.
    pub fn start_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::Relaxed);
        self.metrics.cluster.draining.set(1);
        if first {
            info!("draining: no new participants; exiting when empty");
            self.drain_signal.send_replace(true);
        }
        first
    }

    /// Turns true when a drain starts.
    pub fn drain_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain_signal.subscribe()
    }

    /// Where a participant of this draining node goes (`drain.migrate`): the bridge selection
    /// picks with this node out of the running. `None` when nothing else is selectable.
    pub async fn migration_target(
        &self,
        room: &str,
        region: &str,
    ) -> Result<Option<(NodeId, String)>, DirectoryError> {
        let outcome = match self.place(room, region, false).await {
            Ok(Placement::Elsewhere { node, url }) => Ok(Some((node, url))),
            Ok(Placement::Here(_)) => Ok(None),
            Err(DirectoryError::Unavailable(why)) if why == NO_BRIDGE => Ok(None),
            Err(e) => Err(e),
        };
        let label = match &outcome {
            Ok(Some(_)) => "sent",
            Ok(None) => "no_bridge",
            Err(_) => "error",
        };
        self.metrics
            .cluster
            .migrations
            .with_label_values(&[label])
            .inc();
        outcome
    }

    fn count<T>(&self, op: &str, r: Result<T, DirectoryError>) -> Result<T, DirectoryError> {
        self.metrics
            .cluster
            .directory_ops
            .with_label_values(&[op])
            .inc();
        match &r {
            Err(e) => {
                self.metrics
                    .cluster
                    .directory_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                if matches!(e, DirectoryError::Unavailable(_)) {
                    self.directory_down.store(true, Ordering::Relaxed);
                }
            }
            Ok(_) => {
                if self.directory_down.swap(false, Ordering::Relaxed) {
                    self.metrics.cluster.reconnects.inc();
                    info!(op, "cluster directory reachable again");
                }
            }
        }
        r
    }

    fn record(&self, stress: f64, snap: &Snapshot, now_ms: u64) -> NodeRecord {
        let mine = |c: &crate::shard::ConferenceSnapshot| {
            c.participants
                .iter()
                .filter(|p| p.bridge == self.me.0)
                .count() as u32
        };
        NodeRecord {
            id: self.me.clone(),
            octo_id: self.octo_id,
            region: self.region.clone(),
            octo_addr: self.octo_addr,
            signaling_url: self.url.clone(),
            stress,
            participants: snap.conferences.iter().map(mine).sum(),
            conferences: snap.conferences.iter().filter(|c| mine(c) > 0).count() as u32,
            draining: self.draining(),
            updated_ms: now_ms,
        }
    }

    /// Measures stress now (packets since the last call, CPU since the last call).
    fn sample_stress(&self, capacity: u64) -> f64 {
        let now = Instant::now();
        let packets = self.metrics.packets_in.get() + self.metrics.packets_out.get();
        let pps = {
            let mut last = self.last_packets.lock().unwrap_or_else(|p| p.into_inner());
            let pps = match *last {
                Some((t, n)) if now > t => {
                    packets.saturating_sub(n) as f64 / now.duration_since(t).as_secs_f64()
                }
                _ => 0.0,
            };
            *last = Some((now, packets));
            pps
        };
        let cpu = self
            .cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(now)
            .unwrap_or(0.0);
        let s = stress(pps, capacity, cpu);
        self.metrics.cluster.stress.set(s);
        s
    }

    /// One heartbeat: publish this node's record and the conferences it hosts.
    pub async fn heartbeat(&self, snap: &Snapshot, capacity: u64) {
        let stress = self.sample_stress(capacity);
        let now = now_ms();
        let record = self.record(stress, snap, now);
        let r = self.backend.publish(&record).await;
        if self.count("publish", r).is_ok() {
            self.metrics.cluster.heartbeat_age.set(0.0);
        }
        // room -> (local participants, conference id)
        let mut rooms: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        for c in &snap.conferences {
            let n = c
                .participants
                .iter()
                .filter(|p| p.bridge == self.me.0)
                .count() as u32;
            if n > 0 {
                rooms.insert(c.name.clone(), (n, c.conference.0));
            }
        }
        let gone: Vec<String> = {
            let hosted = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
            hosted
                .keys()
                .filter(|r| !rooms.contains_key(*r))
                .cloned()
                .collect()
        };
        let mut failed = false;
        for (room, (n, id)) in rooms
            .iter()
            .map(|(r, v)| (r.as_str(), *v))
            .chain(gone.iter().map(|r| (r.as_str(), (0, 0))))
        {
            let r = self.backend.set_host(room, id, &self.me, n, now).await;
            failed |= self.count("set_host", r).is_err();
        }
        if !failed {
            *self.hosted.lock().unwrap_or_else(|p| p.into_inner()) = rooms;
        }
    }

    /// The other live bridges, as Octo peers (the links the shard keeps).
    pub async fn octo_peers(&self) -> Option<Vec<crate::config::OctoPeer>> {
        let now = now_ms();
        let r = self.backend.nodes(now).await;
        let snap = self.count("nodes", r).ok()?;
        if snap.refused > 0 {
            self.metrics
                .cluster
                .records_refused
                .inc_by(snap.refused as u64);
        }
        Some(
            snap.nodes
                .into_iter()
                .filter(|n| n.id != self.me && n.octo_id != self.octo_id)
                .filter(|n| n.age_ms(now) <= kaskade_cluster::node::STALE_AFTER_MS)
                .map(|n| crate::config::OctoPeer {
                    id: n.octo_id,
                    name: n.id.0,
                    region: n.region,
                    address: n.octo_addr,
                    url: n.signaling_url,
                })
                .collect(),
        )
    }

    /// Where a participant of `room` from `region` goes. A redirected join stays here (no
    /// redirect loops), unless this node drains (refused before this is called).
    pub async fn place(
        &self,
        room: &str,
        region: &str,
        redirected: bool,
    ) -> Result<Placement, DirectoryError> {
        let now = now_ms();
        let r = self.backend.conference(room, now).await;
        let entry = self.count("conference", r)?;
        let id = ConferenceId(entry.id);
        if redirected {
            self.note(Rule::SingleHost, &self.me.clone(), entry.id, now, false);
            return Ok(Placement::Here(id));
        }
        let r = self.backend.nodes(now).await;
        let snap = self.count("nodes", r)?;
        if snap.refused > 0 {
            self.metrics
                .cluster
                .records_refused
                .inc_by(snap.refused as u64);
        }
        let mut nodes = snap.nodes;
        // Our own record may predate a drain by up to a heartbeat: what we know wins.
        for n in nodes.iter_mut().filter(|n| n.id == self.me) {
            n.draining = self.draining();
        }
        // This node is always a candidate, even before its first heartbeat landed.
        if !nodes.iter().any(|n| n.id == self.me) {
            let stress = self.metrics.cluster.stress.get();
            let mut own = self.record(stress, &Snapshot::default(), now);
            own.participants = 0;
            nodes.push(own);
        }
        let hosts: HashMap<NodeId, u32> = entry.hosts;
        let chosen = {
            let placements = self.placements.lock().unwrap_or_else(|p| p.into_inner());
            let conference = entry.id;
            kaskade_cluster::select::select(
                &nodes,
                &hosts,
                conference,
                region,
                &self.params,
                &placements,
                now,
            )
        };
        let Some(sel) = chosen else {
            return Err(DirectoryError::Unavailable(NO_BRIDGE.into()));
        };
        if sel.node == self.me {
            self.note(sel.rule, &sel.node, entry.id, now, true);
            return Ok(Placement::Here(id));
        }
        let Some(target) = nodes.iter().find(|n| n.id == sel.node) else {
            return Err(DirectoryError::Refused("selected node vanished".into()));
        };
        self.note(sel.rule, &sel.node, entry.id, now, true);
        Ok(Placement::Elsewhere {
            node: sel.node.clone(),
            url: target.signaling_url.clone(),
        })
    }

    fn note(&self, rule: Rule, node: &NodeId, conference: u32, now: u64, count_rule: bool) {
        if count_rule {
            self.metrics
                .cluster
                .selections
                .with_label_values(&[rule.as_str()])
                .inc();
        }
        self.placements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(node, conference, now);
    }

    /// The conferences of the whole cluster, from the directory (the admin API's list).
    pub async fn conferences(&self, limit: usize) -> Result<Vec<ConferenceEntry>, DirectoryError> {
        let r = self.backend.conferences(now_ms(), limit).await;
        self.count("conferences", r)
    }

    /// Removes this node's record (clean exit).
    pub async fn withdraw(&self) {
        let r = self.backend.withdraw(&self.me).await;
        if let Err(e) = self.count("withdraw", r) {
            warn!(error = %e, "could not withdraw from the directory");
        }
    }
}

/// Local participants in a snapshot.
pub fn local_participants(snap: &Snapshot, me: &str) -> usize {
    snap.conferences
        .iter()
        .flat_map(|c| &c.participants)
        .filter(|p| p.bridge == me)
        .count()
}

/// Heartbeats every second until the shard stops; seconds since the last good one are
/// exported as `kaskade_heartbeat_age_seconds`.
pub async fn run_heartbeat(node: std::sync::Arc<ClusterNode>, shards: Shards, capacity: u64) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(kaskade_cluster::node::HEARTBEAT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(snap) = shards.snapshot().await else {
            return;
        };
        let age = node.metrics.cluster.heartbeat_age.get();
        node.metrics
            .cluster
            .heartbeat_age
            .set(age + kaskade_cluster::node::HEARTBEAT_MS as f64 / 1000.0);
        node.heartbeat(&snap, capacity).await;
        if let Some(peers) = node.octo_peers().await
            && !shards.send_all(|| Command::OctoPeers {
                peers: peers.clone(),
            })
        {
            return;
        }
    }
}

/// Process CPU time as a fraction of the machine's cores, from /proc/self/stat.
#[derive(Default)]
struct CpuSampler {
    last: Option<(Instant, f64)>,
}

impl CpuSampler {
    fn sample(&mut self, now: Instant) -> Option<f64> {
        let cpu = process_cpu_seconds()?;
        let out = match self.last {
            Some((t, c)) if now > t => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                Some(((cpu - c) / now.duration_since(t).as_secs_f64() / cores).clamp(0.0, 1.0))
            }
            _ => None,
        };
        self.last = Some((now, cpu));
        out
    }
}

#[cfg(target_os = "linux")]
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its closing paren are plain.
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) / hz as f64)
}

#[cfg(not(target_os = "linux"))]
fn process_cpu_seconds() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stress_is_the_larger_load() {
        assert_eq!(stress(0.0, 50_000, 0.0), 0.0);
        assert!((stress(25_000.0, 50_000, 0.1) - 0.5).abs() < 1e-9);
        assert!((stress(1_000.0, 50_000, 0.45) - 0.5).abs() < 1e-9);
        assert!(stress(0.0, 50_000, 0.9) >= 1.0 - 1e-9);
    }

    #[test]
    fn cpu_of_this_process_is_measured() {
        let mut s = CpuSampler::default();
        let t0 = Instant::now();
        assert_eq!(
            s.sample(t0),
            None,
            "the first sample only sets the baseline"
        );
        // Burn some CPU so the second sample has something to see.
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let f = s.sample(Instant::now());
        assert!(f.is_some_and(|f| f > 0.0 && f <= 1.0), "{f:?}");
    }
}
