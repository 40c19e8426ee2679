//! The Redis directory: many bridges sharing one registry and one conference directory.
//!
//! Keys (every multi-key step names one key at a time, so the layout also suits Redis Cluster;
//! `{...}` hash tags keep a room's keys in one slot):
//!
//! | key | value | TTL |
//! |---|---|---|
//! | `kaskade:node:{<id>}` | the node's record, JSON | `RECORD_TTL_MS`, renewed by each heartbeat |
//! | `kaskade:nodes` | set of node ids (an index; a member whose record expired is removed by the next reader) | none |
//! | `kaskade:room:{<room>}` | the room's conference id | `ROOM_TTL_MS` after its last use |
//! | `kaskade:confid:<id>` | the room holding that id (claims the id) | as the room's |
//! | `kaskade:conf:seq` | the id counter | none |
//! | `kaskade:hosts:{<room>}` | hash node id -> `participants:updated_ms` | as the room's; stale fields are ignored and removed by readers |
//! | `kaskade:rooms` | set of hosted rooms (an index for the admin API; a member with no fresh host is removed by the next reader) | none |
//!
//! Ids are handed out atomically: `INCR` proposes one, `SET NX` on `confid` claims it (the
//! next is tried if a live room holds it), `SET NX` on `room` publishes it; a bridge that
//! loses that race releases its claim and takes the winner's id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::directory::{ConferenceEntry, Directory, DirectoryError, HOST_TTL_MS, NodeSnapshot};
use crate::node::{NodeId, NodeRecord, RECORD_TTL_MS};

/// An unhosted room keeps its id this long (a participant reconnecting finds the same one).
const ROOM_TTL_MS: u64 = 60_000;
/// Every command gives up after this: a join never hangs on a lost Redis.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const NODES: &str = "kaskade:nodes";
const SEQ: &str = "kaskade:conf:seq";
/// Rooms some bridge hosts (an index; a member without fresh hosts is removed by readers).
const ROOMS: &str = "kaskade:rooms";

/// `[redis]` of the config, with the key names LiveKit operators know.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `host:port` of a standalone Redis.
    pub address: String,
    pub username: String,
    pub password: String,
    pub db: u32,
    /// Sentinel: the monitored master's name (with `sentinel_addresses`).
    pub sentinel_master_name: String,
    pub sentinel_addresses: Vec<String>,
    /// Redis Cluster: seed nodes.
    pub cluster_addresses: Vec<String>,
    /// TLS to every Redis node (and to the sentinels), with rustls.
    pub tls: bool,
    /// PEM bundle of the CAs to trust (a private CA) instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS, with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Accept any server certificate (no chain, no name check). For testing only.
    pub tls_insecure_skip_verify: bool,
}

/// The password stays out of logs and panics.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("address", &self.address)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("db", &self.db)
            .field("sentinel_master_name", &self.sentinel_master_name)
            .field("sentinel_addresses", &self.sentinel_addresses)
            .field("cluster_addresses", &self.cluster_addresses)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_insecure_skip_verify", &self.tls_insecure_skip_verify)
            .finish()
    }
}

impl RedisConfig {
    /// Checks the keys; says which are not supported by this build.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_tls()?;
        if !self.cluster_addresses.is_empty() {
            if self.db != 0 {
                return Err("redis.db: Redis Cluster has only database 0".into());
            }
            if !self.sentinel_master_name.is_empty() {
                return Err(
                    "redis: cluster_addresses and sentinel_master_name exclude each other".into(),
                );
            }
            for a in &self.cluster_addresses {
                split_address(a)?;
            }
            return Ok(());
        }
        if !self.sentinel_master_name.is_empty() {
            if self.sentinel_addresses.is_empty() {
                return Err("redis.sentinel_master_name needs redis.sentinel_addresses".into());
            }
            for a in &self.sentinel_addresses {
                split_address(a)?;
            }
            return Ok(());
        }
        if !self.sentinel_addresses.is_empty() {
            return Err("redis.sentinel_addresses needs redis.sentinel_master_name".into());
        }
        split_address(&self.address).map(|_| ())
    }
}

impl RedisConfig {
    fn validate_tls(&self) -> Result<(), String> {
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (key, file) in files {
            match file {
                Some(path) if !self.tls => {
                    return Err(format!(
                        "redis.{key} ({}) needs redis.tls = true",
                        path.display()
                    ));
                }
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(format!(
                        "redis.{key} is empty: name a PEM file or leave it out"
                    ));
                }
                _ => {}
            }
        }
        if self.tls_insecure_skip_verify && !self.tls {
            return Err("redis.tls_insecure_skip_verify needs redis.tls = true".into());
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(
                    "redis.tls_cert_file needs redis.tls_key_file (mutual TLS: both or neither)"
                        .into(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "redis.tls_key_file needs redis.tls_cert_file (mutual TLS: both or neither)"
                        .into(),
                );
            }
            _ => {}
        }
        // redis-rs's Sentinel client connects to the master without any client certificate
        // when verification is off (TlsMode::Insecure drops the certificates): refuse rather
        // than fail later with a handshake error.
        if self.tls_insecure_skip_verify
            && self.tls_cert_file.is_some()
            && !self.sentinel_master_name.is_empty()
        {
            return Err("redis.tls_insecure_skip_verify: with Sentinel, redis-rs sends no client certificate (redis.tls_cert_file) to the master when verification is off; use redis.tls_ca_file instead".into());
        }
        Ok(())
    }

    /// The certificates to load for TLS (read now: a file that cannot be read or holds no
    /// PEM object is refused with its path). `None` without TLS.
    fn tls_certificates(&self) -> Result<Option<redis::TlsCertificates>, DirectoryError> {
        if !self.tls {
            return Ok(None);
        }
        let root_cert = match &self.tls_ca_file {
            Some(path) => Some(read_certs("tls_ca_file", path)?),
            None => None,
        };
        let client_tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert_path), Some(key_path)) => {
                let client_cert = read_certs("tls_cert_file", cert_path)?;
                let client_key = read_file("tls_key_file", key_path)?;
                PrivateKeyDer::from_pem_slice(&client_key)
                    .map_err(|e| bad_pem("tls_key_file", key_path, e))?;
                Some(redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            _ => None,
        };
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// The address of one node, over TLS if configured.
    fn node_addr(&self, a: &str) -> Result<redis::ConnectionAddr, DirectoryError> {
        let (host, port) = split_address(a).map_err(DirectoryError::Refused)?;
        Ok(if self.tls {
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: self.tls_insecure_skip_verify,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host, port)
        })
    }

    fn tls_mode(&self) -> redis::TlsMode {
        if self.tls_insecure_skip_verify {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        }
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, DirectoryError> {
    std::fs::read(path).map_err(|e| {
        DirectoryError::Refused(format!("redis.{key}: cannot read {}: {e}", path.display()))
    })
}

/// A PEM file of one or more certificates, checked to hold at least one.
fn read_certs(key: &str, path: &Path) -> Result<Vec<u8>, DirectoryError> {
    let pem = read_file(key, path)?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad_pem(key, path, e))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad_pem(key, path, "no CERTIFICATE in it"));
    }
    Ok(pem)
}

fn bad_pem(key: &str, path: &Path, e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Refused(format!(
        "redis.{key}: {} is not usable PEM: {e}",
        path.display()
    ))
}

/// rustls needs a process-wide crypto provider: ring (already used by the rest of kaskade),
/// installed once. If the process installed one before, that one stays and is used.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only means a provider is already installed: nothing to do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn split_address(a: &str) -> Result<(String, u16), String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("redis.address {a:?} must be host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("redis.address {a:?}: bad port"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("redis.address {a:?} must be host:port"));
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

/// One node (standalone or Sentinel's master) or a Redis Cluster: both reconnect by
/// themselves, and the cluster connection follows slot moves and failovers.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisDirectory {
    /// The connection to the master; replaced when Sentinel names a new one.
    conn: std::sync::Mutex<Conn>,
    /// With Sentinel: how to find the master again, and when we last asked.
    sentinel: Option<tokio::sync::Mutex<(SentinelClient, Option<Instant>)>>,
}

fn unavailable(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

/// A client that cannot be built from the config (bad TLS material, bad combination).
fn refused(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Refused(format!("redis client: {e}"))
}

/// Runs one Redis call with the command timeout.
async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, DirectoryError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(DirectoryError::Unavailable(
            "redis: no answer within 1 s".into(),
        )),
    }
}

fn node_key(id: &NodeId) -> String {
    format!("kaskade:node:{{{}}}", id.0)
}
fn room_key(room: &str) -> String {
    format!("kaskade:room:{{{room}}}")
}
fn hosts_key(room: &str) -> String {
    format!("kaskade:hosts:{{{room}}}")
}
fn confid_key(id: u32) -> String {
    format!("kaskade:confid:{id}")
}

impl RedisDirectory {
    /// Connects (one attempt, bounded); afterwards the manager reconnects by itself, and with
    /// Sentinel a failed call makes the next one ask the sentinels for the master.
    pub async fn connect(config: &RedisConfig) -> Result<Self, DirectoryError> {
        config.validate().map_err(DirectoryError::Refused)?;
        let certs = config.tls_certificates()?;
        if certs.is_some() {
            install_crypto_provider();
        }
        if !config.cluster_addresses.is_empty() {
            return Self::connect_cluster(config, certs).await;
        }
        let (client, sentinel) = if config.sentinel_master_name.is_empty() {
            let addr = config.node_addr(&config.address)?;
            let mut settings = redis::RedisConnectionInfo::default().set_db(i64::from(config.db));
            if !config.username.is_empty() {
                settings = settings.set_username(&config.username);
            }
            if !config.password.is_empty() {
                settings = settings.set_password(&config.password);
            }
            let info = redis::IntoConnectionInfo::into_connection_info(addr)
                .map_err(unavailable)?
                .set_redis_settings(settings);
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            };
            (client.map_err(refused)?, None)
        } else {
            let addrs = config
                .sentinel_addresses
                .iter()
                .map(|a| config.node_addr(a))
                .collect::<Result<Vec<_>, _>>()?;
            let mut b = SentinelClientBuilder::new(
                addrs,
                &config.sentinel_master_name,
                SentinelServerType::Master,
            )
            .map_err(unavailable)?
            .set_client_to_redis_db(i64::from(config.db));
            if !config.username.is_empty() {
                b = b.set_client_to_redis_username(&config.username);
            }
            if !config.password.is_empty() {
                b = b.set_client_to_redis_password(&config.password);
            }
            if let Some(certs) = certs {
                // Both hops over TLS with the same trust and client certificate: the
                // sentinels, and the master they name (reached at the address they report).
                b = b
                    .set_client_to_sentinel_tls_mode(config.tls_mode())
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_tls_mode(config.tls_mode())
                    .set_client_to_redis_certificates(certs);
            }
            let mut sc = b.build().map_err(refused)?;
            let client = timed(sc.async_get_client()).await?;
            (
                client,
                Some(tokio::sync::Mutex::new((sc, Some(Instant::now())))),
            )
        };
        let conn = Conn::Single(manager(client).await?);
        Ok(Self {
            conn: std::sync::Mutex::new(conn),
            sentinel,
        })
    }

    async fn connect_cluster(
        config: &RedisConfig,
        certs: Option<redis::TlsCertificates>,
    ) -> Result<Self, DirectoryError> {
        let seeds = config
            .cluster_addresses
            .iter()
            .map(|a| config.node_addr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT);
        if !config.username.is_empty() {
            b = b.username(&config.username);
        }
        if !config.password.is_empty() {
            b = b.password(&config.password);
        }
        if let Some(certs) = certs {
            // Every node the slot map names is reached over TLS with these.
            b = b.tls(config.tls_mode()).certs(certs);
        }
        let client = b.build().map_err(refused)?;
        let mut conn = timed(client.get_async_connection()).await?;
        let _: String = timed(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(Self {
            conn: std::sync::Mutex::new(Conn::Cluster(conn)),
            sentinel: None,
        })
    }

    fn conn(&self) -> Conn {
        // The guard only clones a handle: a panic cannot leave it half-written.
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Passes a call's result on; a failure under Sentinel looks the master up again (at most
    /// every 250 ms) so the next call goes to the promoted replica.
    async fn checked<T>(&self, r: Result<T, DirectoryError>) -> Result<T, DirectoryError> {
        if let (Err(DirectoryError::Unavailable(_)), Some(s)) = (&r, &self.sentinel) {
            let mut guard = s.lock().await;
            let (sc, last) = &mut *guard;
            if last.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
                *last = Some(Instant::now());
                if let Ok(client) = timed(sc.async_get_client()).await
                    && let Ok(conn) = manager(client).await
                {
                    *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Conn::Single(conn);
                }
            }
        }
        r
    }

    async fn claim_id(&self, room: &str) -> Result<u32, DirectoryError> {
        let mut c = self.conn();
        for _ in 0..64 {
            let n: u64 = timed(c.incr(SEQ, 1u64)).await?;
            // 0 is the Octo link itself; wrap at 2^32.
            let id = (n % (1u64 << 32)) as u32;
            if id == 0 {
                continue;
            }
            if set_nx_px(&mut c, &confid_key(id), room, ROOM_TTL_MS).await? {
                return Ok(id);
            }
        }
        Err(DirectoryError::Exhausted)
    }

    async fn touch_room(&self, room: &str, id: u32) -> Result<(), DirectoryError> {
        let mut c = self.conn();
        let ttl = ROOM_TTL_MS as i64;
        let _: bool = timed(c.pexpire(room_key(room), ttl)).await?;
        let _: bool = timed(c.pexpire(confid_key(id), ttl)).await?;
        let _: bool = timed(c.pexpire(hosts_key(room), ttl)).await?;
        Ok(())
    }
}

/// A reconnecting connection to `client`, checked with a PING: Redis accepts a connection
/// before authentication, so a wrong password or db would otherwise show only later.
async fn manager(client: redis::Client) -> Result<ConnectionManager, DirectoryError> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let mut conn = timed(ConnectionManager::new_with_config(client, cfg)).await?;
    let _: String = timed(redis::cmd("PING").query_async(&mut conn)).await?;
    Ok(conn)
}

/// The room's hosts refreshed within `HOST_TTL_MS`; stale or garbled fields are deleted.
async fn fresh_hosts(
    c: &mut Conn,
    room: &str,
    now_ms: u64,
) -> Result<HashMap<NodeId, u32>, DirectoryError> {
    let raw: HashMap<String, String> = timed(c.hgetall(hosts_key(room))).await?;
    let mut hosts = HashMap::new();
    for (node, v) in raw {
        let parsed = v
            .split_once(':')
            .and_then(|(n, t)| Some((n.parse::<u32>().ok()?, t.parse::<u64>().ok()?)));
        match parsed {
            Some((n, at)) if now_ms.saturating_sub(at) < HOST_TTL_MS && n > 0 => {
                hosts.insert(NodeId(node), n);
            }
            _ => {
                let _: i64 = timed(c.hdel(hosts_key(room), &node)).await?;
            }
        }
    }
    Ok(hosts)
}

/// `SET key value NX PX ttl`: whether this call created the key.
async fn set_nx_px(
    c: &mut Conn,
    key: &str,
    value: impl redis::ToRedisArgs,
    ttl_ms: u64,
) -> Result<bool, DirectoryError> {
    let r: Option<String> = timed(
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(c),
    )
    .await?;
    Ok(r.is_some())
}

/// Parses a stored id; 0 and garbage are refused.
fn parse_id(raw: &str) -> Result<u32, DirectoryError> {
    match raw.parse::<u32>() {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(DirectoryError::Refused(format!(
            "stored conference id {raw:?}"
        ))),
    }
}

impl RedisDirectory {
    async fn publish_once(&self, record: &NodeRecord) -> Result<(), DirectoryError> {
        record.validate()?;
        let mut c = self.conn();
        let _: () = timed(c.pset_ex(node_key(&record.id), record.to_json(), RECORD_TTL_MS)).await?;
        let _: i64 = timed(c.sadd(NODES, &record.id.0)).await?;
        Ok(())
    }

    async fn withdraw_once(&self, node: &NodeId) -> Result<(), DirectoryError> {
        let mut c = self.conn();
        let _: i64 = timed(c.del(node_key(node))).await?;
        let _: i64 = timed(c.srem(NODES, &node.0)).await?;
        Ok(())
    }

    async fn nodes_once(&self, _now_ms: u64) -> Result<NodeSnapshot, DirectoryError> {
        let mut c = self.conn();
        let ids: Vec<String> = timed(c.smembers(NODES)).await?;
        let mut snap = NodeSnapshot::default();
        for id in ids.into_iter().take(4096) {
            let raw: Option<Vec<u8>> = timed(c.get(node_key(&NodeId(id.clone())))).await?;
            match raw {
                // Expired: the node is gone; drop it from the index.
                None => {
                    let _: i64 = timed(c.srem(NODES, &id)).await?;
                }
                Some(raw) => match NodeRecord::from_json(&raw) {
                    Ok(r) if r.id.0 == id => snap.nodes.push(r),
                    _ => snap.refused += 1,
                },
            }
        }
        snap.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(snap)
    }

    async fn conference_once(
        &self,
        room: &str,
        now_ms: u64,
    ) -> Result<ConferenceEntry, DirectoryError> {
        let mut c = self.conn();
        let existing: Option<String> = timed(c.get(room_key(room))).await?;
        let id = match existing {
            Some(raw) => parse_id(&raw)?,
            None => {
                let mine = self.claim_id(room).await?;
                if set_nx_px(&mut c, &room_key(room), mine, ROOM_TTL_MS).await? {
                    mine
                } else {
                    // Another bridge published the room first: its id, and our claim released.
                    let _: i64 = timed(c.del(confid_key(mine))).await?;
                    let raw: Option<String> = timed(c.get(room_key(room))).await?;
                    parse_id(raw.as_deref().unwrap_or(""))?
                }
            }
        };
        // The id's claim must name this room: anything else is a directory we cannot trust.
        let owner: Option<String> = timed(c.get(confid_key(id))).await?;
        match owner {
            Some(o) if o == room => {}
            None => {
                let _: bool = timed(c.set_nx(confid_key(id), room)).await?;
            }
            Some(_) => {
                return Err(DirectoryError::Refused(format!(
                    "conference id {id} is claimed by another room"
                )));
            }
        }
        self.touch_room(room, id).await?;
        let hosts = fresh_hosts(&mut c, room, now_ms).await?;
        Ok(ConferenceEntry {
            room: room.to_owned(),
            id,
            hosts,
        })
    }

    async fn conferences_once(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ConferenceEntry>, DirectoryError> {
        let mut c = self.conn();
        let mut rooms: Vec<String> = timed(c.smembers(ROOMS)).await?;
        rooms.sort();
        let mut out = Vec::new();
        for room in rooms {
            if out.len() >= limit {
                break;
            }
            let hosts = fresh_hosts(&mut c, &room, now_ms).await?;
            let raw: Option<String> = timed(c.get(room_key(&room))).await?;
            match raw.as_deref().map(parse_id) {
                Some(Ok(id)) if !hosts.is_empty() => out.push(ConferenceEntry { room, id, hosts }),
                // No live host, or the room's id expired: no longer a conference.
                _ => {
                    let _: i64 = timed(c.srem(ROOMS, &room)).await?;
                }
            }
        }
        Ok(out)
    }

    async fn set_host_once(
        &self,
        room: &str,
        id: u32,
        node: &NodeId,
        participants: u32,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        let mut c = self.conn();
        if participants == 0 {
            let _: i64 = timed(c.hdel(hosts_key(room), &node.0)).await?;
            return Ok(());
        }
        let _: i64 =
            timed(c.hset(hosts_key(room), &node.0, format!("{participants}:{now_ms}"))).await?;
        let _: i64 = timed(c.sadd(ROOMS, room)).await?;
        if id != 0 {
            // A Redis that restarted empty has forgotten the live room: put its id back
            // (never over another room's), and keep the counter past it.
            let _: bool = timed(c.set_nx(room_key(room), id)).await?;
            let _: bool = timed(c.set_nx(confid_key(id), room)).await?;
            let seq: Option<u64> = timed(c.get(SEQ)).await?;
            if seq.unwrap_or(0) < u64::from(id) {
                let _: () = timed(c.set(SEQ, u64::from(id))).await?;
            }
        }
        let raw: Option<String> = timed(c.get(room_key(room))).await?;
        if let Some(raw) = raw {
            self.touch_room(room, parse_id(&raw)?).await?;
        }
        Ok(())
    }
}

/// Every call goes to the current master; a failed one (with Sentinel) makes the next look the
/// master up again, since after a failover the old address is dead or a read-only replica.
impl Directory for RedisDirectory {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, record: &NodeRecord) -> Result<(), DirectoryError> {
        self.checked(self.publish_once(record).await).await
    }

    async fn withdraw(&self, node: &NodeId) -> Result<(), DirectoryError> {
        self.checked(self.withdraw_once(node).await).await
    }

    async fn nodes(&self, now_ms: u64) -> Result<NodeSnapshot, DirectoryError> {
        self.checked(self.nodes_once(now_ms).await).await
    }

    async fn conference(&self, room: &str, now_ms: u64) -> Result<ConferenceEntry, DirectoryError> {
        self.checked(self.conference_once(room, now_ms).await).await
    }

    async fn set_host(
        &self,
        room: &str,
        id: u32,
        node: &NodeId,
        participants: u32,
        now_ms: u64,
    ) -> Result<(), DirectoryError> {
        self.checked(
            self.set_host_once(room, id, node, participants, now_ms)
                .await,
        )
        .await
    }

    async fn conferences(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ConferenceEntry>, DirectoryError> {
        self.checked(self.conferences_once(now_ms, limit).await)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_not_in_debug_output() {
        let c = RedisConfig {
            password: "hunter2".into(),
            ..Default::default()
        };
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("<redacted>"), "{d}");
    }
}
