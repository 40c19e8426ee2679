//! Configuration: defaults, then a TOML file, then environment, then flags.
//!
//! Environment variables and flags are handled by clap (every flag has a `KASKADE_*` twin), so
//! this module only has to merge "file" under "command line". Every key is documented in
//! docs/configuration.md.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The API key and secret dev mode uses, printed at start. Never valid outside dev mode.
pub const DEV_API_KEY: &str = "devkey";
pub const DEV_API_SECRET: &str = "devsecret-change-me";
/// The most media shards a node runs (a shard's index is the first character of its legs'
/// ICE ufrags, and the high byte of the ids it allocates).
pub const MAX_SHARDS: usize = 32;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Dev mode: a built-in API key, and `/api/dev-token` for the demo page.
    pub dev: bool,
    pub bridge: BridgeConfig,
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub octo: OctoConfig,
    pub cluster: ClusterConfig,
    pub drain: DrainConfig,
    pub admin: AdminConfig,
    /// The Redis cluster directory; absent: the embedded one (docs/cluster.md).
    pub redis: Option<kaskade_cluster::RedisConfig>,
}

/// Bridge selection and the load this node reports (docs/cluster.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `single`, `region` (default) or `split`.
    pub strategy: kaskade_cluster::Strategy,
    /// Participants of one conference a bridge takes before it counts as overloaded for it.
    pub max_participants_per_bridge: u32,
    /// Stress at or above which a bridge is overloaded.
    pub overload_stress: f64,
    /// Packets per second (in + out) this node carries at stress 1.
    pub pps_capacity: u64,
    /// The header a load balancer sets to the client's region (used when the join message
    /// names none).
    pub region_header: String,
    /// The signaling URL clients reach this node at, for redirects; empty:
    /// `ws://<media.advertise_ip>:<http.port>/ws`.
    pub public_url: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            strategy: kaskade_cluster::Strategy::Region,
            max_participants_per_bridge: 80,
            overload_stress: 0.8,
            pps_capacity: 50_000,
            region_header: "X-Kaskade-Region".into(),
            public_url: String::new(),
        }
    }
}

/// The admin API (/admin/v1, docs/admin.md): admin tokens always; Basic auth with an API key
/// and secret unless turned off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub basic_auth: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { basic_auth: true }
    }
}

/// Draining: on SIGTERM or `POST /admin/drain` the node takes no new participants, keeps its
/// own, and exits when it is empty or after `timeout_secs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    pub timeout_secs: u64,
    /// Move the participants to other bridges instead of waiting for them to leave: each
    /// gets a `migrate` message naming the bridge selection chose for it.
    pub migrate: bool,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 600,
            migrate: false,
        }
    }
}

/// The Octo channel between bridges (proto/octo.md). Off unless peers are configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OctoConfig {
    /// This bridge's id in the cluster, 1-255: it keys the link crypto and prefixes every
    /// participant and track id this bridge allocates.
    pub bridge_id: u32,
    pub bind_ip: IpAddr,
    pub port: u16,
    /// AEAD suite: "aes128gcm" or "chacha20poly1305".
    pub suite: String,
    /// The cluster secret every bridge shares (at least 16 bytes).
    pub secret: String,
    /// No encryption or authentication at all. Only on a network secured otherwise.
    pub plaintext: bool,
    /// Send a peer only the simulcast layers its receivers need (issue 5). Off sends every
    /// layer of every local simulcast track to every peer in the conference, as Jitsi does:
    /// for comparison (docs/benchmarks.md), not for production.
    pub layer_suppression: bool,
    /// Each packet resent to a peer after its NACK is sent again this many ms later (0: once
    /// only). A lost resend otherwise costs a whole retry round (an RTT and more); the copy
    /// costs what the link loses, since only repairs are doubled.
    pub repair_copy_ms: u64,
    /// The other bridges (a static list until the cluster directory fills it).
    pub peers: Vec<OctoPeer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OctoPeer {
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub region: String,
    /// Its Octo socket.
    pub address: std::net::SocketAddr,
    /// Its public signaling URL, for the demo page.
    #[serde(default)]
    pub url: String,
}

impl Default for OctoConfig {
    fn default() -> Self {
        Self {
            bridge_id: 1,
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            port: 4096,
            suite: "aes128gcm".into(),
            secret: String::new(),
            plaintext: false,
            layer_suppression: true,
            repair_copy_ms: 5,
            peers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    pub id: String,
    pub region: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub bind_ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    pub bind_ip: IpAddr,
    pub port: u16,
    /// The address put in our ICE candidate: the public IP behind a 1:1 NAT.
    pub advertise_ip: IpAddr,
    /// SRTP profiles offered in DTLS, in our order of preference.
    pub srtp_profiles: Vec<String>,
    /// A leg that receives nothing for this long is closed.
    pub leg_timeout_secs: u64,
    /// SRTP/SRTCP replay window, in packets. `rtc` defaults to 64, which drops late
    /// retransmissions.
    pub srtp_replay_window: usize,
    /// Where lost packets are repaired; see [`RepairMode`].
    pub repair: RepairMode,
    /// Kernel receive and send buffer asked for the media and Octo sockets (bytes).
    pub udp_buffer_bytes: usize,
    /// Encrypt forwarded copies with the leg's SRTP keys directly, once verified against
    /// `rtc`'s own output, instead of writing each through `rtc`'s pipeline.
    pub lean_egress: bool,
    /// Media threads ("shards"), each with its own socket on the one media port; 0: one per
    /// available core. A conference lives on one shard; shard 0 also carries the Octo links
    /// (docs/architecture.md, "Shards").
    pub shards: usize,
    /// Participants of one conference a shard takes before the next one joins on another
    /// shard, which the conference then spans (docs/architecture.md, "A conference over
    /// several shards"); 0: a conference never leaves its shard.
    pub spread_at: usize,
}

/// Where lost packets are repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RepairMode {
    /// Every hop repairs its own losses: gaps are NACKed toward the previous hop, receivers'
    /// NACKs are answered from this bridge's cache and never forwarded.
    #[default]
    PerHop,
    /// No caches, no NACKs of our own: receivers' NACKs travel to the publisher and its
    /// retransmissions are relayed to everyone (duplicates included). Only for measuring
    /// per-hop repair against it (docs/benchmarks.md); it also turns SRTP replay protection
    /// off on the legs, since relayed retransmissions repeat sequence numbers.
    EndToEnd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API key -> secret. Several keys at once is how a key is rotated: add the new one,
    /// move token minting to it, drop the old one once its tokens have expired.
    pub keys: BTreeMap<String, String>,
    /// Longest a token may be valid for, from its `nbf` (or `iat`, or now) to its `exp`: a
    /// leaked token with a far expiry is refused outright.
    pub max_token_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: BTreeMap::new(),
            max_token_ttl_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_participants: usize,
    pub max_message_bytes: usize,
    pub max_sdp_bytes: usize,
    pub max_media_sections: usize,
    /// STUN messages a second that reach legs from one source address (0: no limit).
    pub stun_per_address_per_sec: u32,
    /// STUN messages a second that reach one leg, whatever their sources (0: no limit).
    pub stun_per_leg_per_sec: u32,
    /// Legs being set up (ICE and DTLS handshakes in flight) at most per node (0: no limit).
    pub max_pending_legs: usize,
    /// Messages a signaling session may send per second, with a burst of twice that; 0: no
    /// limit. Over it the session is closed with `rate_limited`.
    pub max_messages_per_sec: u32,
    /// Chat messages a participant may send per second, with a burst of twice that; 0: no
    /// limit. Over it the session is closed with `rate_limited`.
    pub max_chat_per_sec: u32,
    /// `join`s per second from one source IP address, with a burst of twice that; 0 (the
    /// default): no limit, since behind a load balancer every join comes from its address.
    pub max_joins_per_ip_per_sec: u32,
    /// Participants (joined signaling sessions) on this node, all conferences together; the
    /// next join gets `node_full`. 0: no cap.
    pub max_participants_per_node: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// "text", "json", or "auto" (the default): text on a terminal, JSON otherwise (a log
    /// collector reading a pipe or a file).
    pub format: String,
    /// A tracing EnvFilter directive, e.g. "info" or "info,kaskade_bridge=debug".
    pub level: String,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            id: "bridge-1".into(),
            region: "local".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            port: 7880,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            port: 10000,
            advertise_ip: IpAddr::from([127, 0, 0, 1]),
            // GCM only: `rtc` picks the first profile in the *client's* list, and browsers list
            // AES_CM first, so offering both would always land on the 2x costlier AES_CM.
            srtp_profiles: vec!["aead_aes_128_gcm".into()],
            leg_timeout_secs: 30,
            srtp_replay_window: 2048,
            udp_buffer_bytes: 4 << 20,
            repair: RepairMode::PerHop,
            lean_egress: true,
            shards: 0,
            spread_at: 100,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_participants: 100,
            max_message_bytes: 65_536,
            max_sdp_bytes: 32_768,
            max_media_sections: 16,
            stun_per_address_per_sec: 50,
            stun_per_leg_per_sec: 100,
            max_pending_legs: 200,
            max_messages_per_sec: 50,
            max_chat_per_sec: 5,
            max_joins_per_ip_per_sec: 0,
            max_participants_per_node: 1000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "auto".into(),
            // rtc logs every state change of every PeerConnection at info, and warns six
            // times per DTLS handshake about Chrome's DTLS 1.3 extensions.
            level: "info,rtc=warn,rtc_ice=warn,rtc_dtls=error".into(),
        }
    }
}

/// Values given on the command line or in `KASKADE_*` variables; `None` keeps the file's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub dev: bool,
    pub http_port: Option<u16>,
    pub http_bind_ip: Option<IpAddr>,
    pub media_port: Option<u16>,
    pub media_bind_ip: Option<IpAddr>,
    pub advertise_ip: Option<IpAddr>,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    pub max_participants: Option<usize>,
    pub shards: Option<usize>,
    pub spread_at: Option<usize>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub bridge_id: Option<String>,
    pub region: Option<String>,
    pub octo_port: Option<u16>,
    pub octo_secret: Option<String>,
}

impl Config {
    /// Loads the effective configuration. Without a file and without keys, the node runs in
    /// dev mode so that `kaskade serve` alone gives a working demo; with a file, keys are
    /// required unless the file (or `--dev`) asks for dev mode.
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Config> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<Config>(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        c.dev |= o.dev;
        if let Some(v) = o.http_port {
            c.http.port = v;
        }
        if let Some(v) = o.http_bind_ip {
            c.http.bind_ip = v;
        }
        if let Some(v) = o.media_port {
            c.media.port = v;
        }
        if let Some(v) = o.media_bind_ip {
            c.media.bind_ip = v;
        }
        if let Some(v) = o.advertise_ip {
            c.media.advertise_ip = v;
        }
        if let Some(v) = o.max_participants {
            c.limits.max_participants = v;
        }
        if let Some(v) = o.shards {
            c.media.shards = v;
        }
        if let Some(v) = o.spread_at {
            c.media.spread_at = v;
        }
        if let Some(v) = o.log_format {
            c.log.format = v;
        }
        if let Some(v) = o.log_level {
            c.log.level = v;
        }
        if let Some(v) = o.bridge_id {
            c.bridge.id = v;
        }
        if let Some(v) = o.region {
            c.bridge.region = v;
        }
        if let Some(v) = o.octo_port {
            c.octo.port = v;
        }
        if let Some(v) = o.octo_secret {
            c.octo.secret = v;
        }
        match (o.api_key, o.api_secret) {
            (Some(k), Some(s)) => {
                c.auth.keys.insert(k, s);
            }
            (None, None) => {}
            _ => bail!("--api-key and --api-secret go together"),
        }
        if file.is_none() && c.auth.keys.is_empty() {
            c.dev = true;
        }
        if c.dev {
            c.auth
                .keys
                .entry(DEV_API_KEY.into())
                .or_insert_with(|| DEV_API_SECRET.into());
        }
        c.validate()?;
        Ok(c)
    }

    /// Octo runs with static peers, or with a directory that lists them.
    pub fn octo_enabled(&self) -> bool {
        !self.octo.peers.is_empty() || self.redis.is_some()
    }

    /// How many media shards the node runs: `media.shards`, 0 meaning one per available core.
    pub fn shard_count(&self) -> usize {
        let wanted = match self.media.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        wanted.clamp(1, MAX_SHARDS)
    }

    fn validate(&self) -> Result<()> {
        if self.media.shards > MAX_SHARDS {
            bail!("media.shards must be 0 (one per core) to {MAX_SHARDS}");
        }
        if self.auth.keys.is_empty() {
            bail!(
                "no API key configured: set [auth.keys] in the config file or \
                 KASKADE_API_KEY/KASKADE_API_SECRET (or run with --dev for the built-in demo key)"
            );
        }
        if !self.dev {
            for (k, s) in &self.auth.keys {
                if s.len() < 32 {
                    bail!("the secret of API key {k:?} is shorter than 32 characters");
                }
                if k == DEV_API_KEY {
                    bail!("the dev API key may not be used outside dev mode");
                }
            }
        }
        if self.media.advertise_ip.is_unspecified() {
            bail!("media.advertise_ip must be an address clients can reach, not 0.0.0.0");
        }
        if self.media.srtp_profiles.is_empty() {
            bail!("media.srtp_profiles is empty");
        }
        for p in &self.media.srtp_profiles {
            crate::leg::parse_srtp_profile(p)?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json" | "auto") {
            bail!("log.format must be \"auto\", \"text\" or \"json\"");
        }
        if let Some(r) = &self.redis {
            r.validate().map_err(|e| anyhow::anyhow!(e))?;
        }
        if self.octo_enabled() {
            let o = &self.octo;
            if !(1..=255).contains(&o.bridge_id) {
                bail!("octo.bridge_id must be 1-255");
            }
            // A copy later than the retry (RTT + 25% + 10 ms, at least 20 ms) is no insurance.
            if o.repair_copy_ms > 20 {
                bail!("octo.repair_copy_ms must be 0-20 (0: no copies)");
            }
            if kaskade_octo::Suite::from_name(&o.suite).is_none() {
                bail!("octo.suite must be \"aes128gcm\" or \"chacha20poly1305\"");
            }
            if !o.plaintext && o.secret.len() < kaskade_octo::MIN_SECRET_LEN {
                bail!(
                    "octo.secret must be at least {} bytes (or set octo.plaintext = true on a \
                     network secured otherwise)",
                    kaskade_octo::MIN_SECRET_LEN
                );
            }
            let mut ids = std::collections::BTreeSet::new();
            for p in &o.peers {
                if p.id == o.bridge_id || !(1..=255).contains(&p.id) || !ids.insert(p.id) {
                    bail!(
                        "octo peer {:?}: id {} must be 1-255, unique and not ours",
                        p.name,
                        p.id
                    );
                }
            }
        }
        let id = &self.bridge.id;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            bail!("bridge.id must be 1-64 characters of [A-Za-z0-9._-]");
        }
        let cl = &self.cluster;
        if !(cl.overload_stress > 0.0 && cl.overload_stress.is_finite()) {
            bail!("cluster.overload_stress must be a number above 0");
        }
        if cl.max_participants_per_bridge == 0 || cl.pps_capacity == 0 {
            bail!("cluster.max_participants_per_bridge and cluster.pps_capacity must be above 0");
        }
        if axum::http::HeaderName::from_bytes(cl.region_header.as_bytes()).is_err() {
            bail!(
                "cluster.region_header {:?} is not a header name",
                cl.region_header
            );
        }
        let url = &cl.public_url;
        if !(url.is_empty() || url.starts_with("ws://") || url.starts_with("wss://")) {
            bail!("cluster.public_url must start with ws:// or wss://");
        }
        if self.limits.max_message_bytes < 1024 {
            bail!("limits.max_message_bytes must be at least 1024");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_dev_mode() {
        let c = Config::load(None, Overrides::default()).expect("load");
        assert!(c.dev);
        assert_eq!(
            c.auth.keys.get(DEV_API_KEY).map(String::as_str),
            Some(DEV_API_SECRET)
        );
        assert_eq!(c.http.port, 7880);
        assert_eq!(c.media.port, 10000);
    }

    #[test]
    fn production_file_without_key_refuses() {
        let dir = std::env::temp_dir().join(format!("kaskade-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("prod.toml");
        std::fs::write(&path, "[http]\nport = 8000\n").expect("write");
        let err = Config::load(Some(&path), Overrides::default()).expect_err("must refuse");
        assert!(err.to_string().contains("no API key"), "{err}");

        std::fs::write(
            &path,
            "[auth.keys]\nprod = \"0123456789abcdef0123456789abcdef\"\n[media]\nadvertise_ip = \"203.0.113.7\"\n",
        )
        .expect("write");
        let o = Overrides {
            http_port: Some(9000),
            ..Default::default()
        };
        let c = Config::load(Some(&path), o).expect("load");
        assert!(!c.dev);
        assert_eq!(c.http.port, 9000, "flags win over the file");
        assert_eq!(c.media.advertise_ip.to_string(), "203.0.113.7");

        std::fs::write(&path, "[auth.keys]\nprod = \"short\"\n").expect("write");
        assert!(Config::load(Some(&path), Overrides::default()).is_err());
        std::fs::write(&path, "bogus = 1\n").expect("write");
        let err = Config::load(Some(&path), Overrides::default()).expect_err("unknown key");
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shards_default_to_the_cores() {
        let mut c = Config::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.shard_count(), cores.min(MAX_SHARDS));
        c.media.shards = 3;
        assert_eq!(c.shard_count(), 3);
        c.octo.peers.push(OctoPeer {
            id: 2,
            name: "b".into(),
            region: String::new(),
            address: "127.0.0.1:4097".parse().expect("addr"),
            url: String::new(),
        });
        assert_eq!(
            c.shard_count(),
            3,
            "Octo goes through shard 0, with any number of shards"
        );
        c.octo.peers.clear();
        c.media.shards = MAX_SHARDS + 1;
        c.dev = true;
        let err = c.validate().expect_err("too many shards");
        assert!(format!("{err:#}").contains("media.shards"), "{err:#}");
    }
}
