//! A load run: many clients in one process against one node, joined at a steady rate, kept
//! publishing and receiving for a while, then summed up in a [`LoadReport`].
//!
//! Per room there are `max(video, audio)` publishers (publisher `i` sends audio when
//! `i < audio_publishers` and video when `i < video_publishers`, as `lk load-test` does) and
//! `subscribers` clients that only receive. Publishers join first, then subscribers, at
//! `join_rate` clients per second over all rooms. The run lasts until `duration` after the
//! last client was started (or until `shutdown`), then every client's counters are read at
//! once and the clients leave.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaskade_bridge::auth;
use kaskade_bridge::messages::{ServerMsg, Target};
use tokio::sync::mpsc::error::TryRecvError;

use crate::client::{ClientHandle, ClientOptions, ClientSpec, Report, spawn_client_with};
use crate::media::{MediaProfile, Resolution, VideoProfile};
use crate::report::{
    ClientRow, Figures, LoadReport, Role, Settings, StreamRow, Total, loss_pct, ms, round,
};
use crate::stats::Histogram;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The node's HTTP base: `http://host:port` (`ws://` and a bare `host:port` work too).
    pub url: String,
    /// The room name, or with `rooms > 1` the prefix of `<room>-1` ... `<room>-N`.
    pub room: String,
    pub rooms: usize,
    /// Per room.
    pub video_publishers: usize,
    pub audio_publishers: usize,
    pub subscribers: usize,
    /// Load time after the last client started; zero runs until `shutdown`.
    pub duration: Duration,
    pub simulcast: bool,
    pub resolution: Resolution,
    /// Clients started per second.
    pub join_rate: f64,
    /// The key and secret the tokens are signed with (the node's `[auth]` keys).
    pub api_key: String,
    pub api_secret: String,
    /// Every client's media goes through this relay (see [`ClientOptions::media_via`]).
    pub media_via: Option<SocketAddr>,
    /// The tag in every published SSRC (see [`ClientOptions::ssrc_tag`]).
    pub ssrc_tag: u8,
}

impl LoadConfig {
    /// The rooms of the run.
    pub fn room_names(&self) -> Vec<String> {
        if self.rooms <= 1 {
            vec![self.room.clone()]
        } else {
            (1..=self.rooms)
                .map(|i| format!("{}-{i}", self.room))
                .collect()
        }
    }

    pub fn publishers(&self) -> usize {
        self.video_publishers.max(self.audio_publishers)
    }

    pub fn clients(&self) -> usize {
        self.room_names().len() * (self.publishers() + self.subscribers)
    }

    fn validate(&self) -> Result<()> {
        if self.clients() == 0 {
            bail!("nothing to run: no publishers and no subscribers");
        }
        if !(self.join_rate.is_finite() && self.join_rate > 0.0) {
            bail!("the join rate must be above 0 clients per second");
        }
        if self.room.is_empty() {
            bail!("the room name is empty");
        }
        Ok(())
    }

    /// What publisher `i` of a room sends.
    fn profile(&self, i: usize) -> MediaProfile {
        let video =
            (i < self.video_publishers).then(|| VideoProfile::new(self.resolution, self.simulcast));
        MediaProfile::load(i < self.audio_publishers, video)
    }
}

/// The figures of a progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    /// The whole run once every client is started (`None` while joining or without end).
    pub total: Option<Duration>,
    pub started: usize,
    pub connected: usize,
    pub clients: usize,
    pub failed: usize,
    /// Payload bitrate received by all clients over the last interval.
    pub recv_kbps: f64,
    /// Cumulative loss so far.
    pub loss_pct: f64,
}

impl Progress {
    /// One status line, e.g. `12.0 s / 33.0 s | connected 12/12 | recv 30.42 Mbps | loss 0.00%`.
    pub fn line(&self) -> String {
        let time = match self.total {
            Some(t) => format!(
                "{:>5.1} s / {:.1} s",
                self.elapsed.as_secs_f64(),
                t.as_secs_f64()
            ),
            None => format!("{:>5.1} s", self.elapsed.as_secs_f64()),
        };
        let mut l = format!("{time} | connected {}/{}", self.connected, self.clients);
        if self.started < self.clients {
            l.push_str(&format!(" (started {})", self.started));
        }
        l.push_str(&format!(
            " | recv {} | loss {:.2}%",
            crate::report::rate(self.recv_kbps),
            self.loss_pct
        ));
        if self.failed > 0 {
            l.push_str(&format!(" | failed {}", self.failed));
        }
        l
    }
}

/// One client of the run and what its reports said so far.
struct Client {
    name: String,
    identity: String,
    room: String,
    role: Role,
    profile: Option<MediaProfile>,
    tracks_expected: usize,
    /// When it is due to start, from the run's start.
    at: Duration,
    handle: Option<ClientHandle>,
    started: Option<Instant>,
    joined: bool,
    pub_connected: bool,
    /// When its subscriber leg first came up.
    sub_connected_at: Option<Instant>,
    connected_at: Option<Instant>,
    /// The client task ended (error or closed by the node) before the run did.
    ended: bool,
    /// `migrate` messages followed.
    migrations: u64,
    errors: Vec<String>,
}

impl Client {
    fn needs_publisher_leg(&self) -> bool {
        self.profile.is_some()
    }

    fn is_connected(&self) -> bool {
        self.joined
            && (self.pub_connected || !self.needs_publisher_leg())
            && (self.sub_connected_at.is_some() || self.tracks_expected == 0)
    }

    /// Takes the reports queued so far.
    fn drain(&mut self) {
        let Some(h) = self.handle.as_mut() else {
            return;
        };
        loop {
            match h.reports.try_recv() {
                Ok(Report::Signal(ServerMsg::Joined { .. })) => self.joined = true,
                Ok(Report::Signal(ServerMsg::Migrate { .. })) => self.migrations += 1,
                Ok(Report::Signal(ServerMsg::Error { code, reason, .. })) => {
                    self.errors.push(format!("{code}: {reason}"));
                }
                Ok(Report::Connected(Target::Publisher)) => self.pub_connected = true,
                Ok(Report::Connected(Target::Subscriber)) => {
                    self.sub_connected_at.get_or_insert_with(Instant::now);
                }
                Ok(Report::Failed(e)) => {
                    self.errors.push(e);
                    self.ended = true;
                }
                Ok(Report::Closed) | Err(TryRecvError::Disconnected) => {
                    if !self.ended {
                        self.errors.push("the node closed the connection".into());
                    }
                    self.ended = true;
                    return;
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
            }
        }
        if self.connected_at.is_none() && self.is_connected() {
            self.connected_at = Some(Instant::now());
        }
    }
}

/// A short tag for this run's identities, so two runs against one node do not replace each
/// other's participants.
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

/// Splits `http://host:port/...` into `host:port`; refuses TLS (the clients speak plain
/// WebSocket). A missing port is 80 after `http://`/`ws://` and 7880 (the node's default)
/// for a bare host.
pub fn host_port(url: &str) -> Result<String> {
    let url = url.trim();
    let (rest, default_port) = if let Some(r) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
    {
        (r, 80)
    } else if url.starts_with("https://") || url.starts_with("wss://") {
        bail!(
            "{url}: TLS is not supported by the load clients; point --url at the node's plain \
             HTTP port (http://host:7880)"
        );
    } else if url.contains("://") {
        bail!("{url}: expected http://host:port");
    } else {
        (url, 7880)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        bail!("{url}: no host");
    }
    // An IPv6 literal is bracketed: its port follows the `]`.
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, rest)| rest.starts_with(':')),
        None => authority.contains(':'),
    };
    if has_port {
        Ok(authority.to_string())
    } else {
        Ok(format!("{authority}:{default_port}"))
    }
}

/// Resolves the node's address from `url`.
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let hp = host_port(url)?;
    tokio::net::lookup_host(&hp)
        .await
        .with_context(|| format!("resolving {hp}"))?
        .next()
        .with_context(|| format!("{hp} resolves to no address"))
}

/// Runs the load and reports. `progress` is called about once per second; `shutdown` ends
/// the run early (the report covers what ran).
pub async fn run(
    config: &LoadConfig,
    shutdown: impl Future<Output = ()>,
    mut progress: impl FnMut(&Progress),
) -> Result<LoadReport> {
    config.validate()?;
    let http = resolve(&config.url).await?;
    let tag = run_tag();
    let rooms = config.room_names();
    let publishers = config.publishers();
    let tracks_in_room = config.audio_publishers + config.video_publishers;

    // Who joins when: every room's publishers first, then every room's subscribers.
    let mut clients: Vec<Client> = Vec::with_capacity(config.clients());
    for role in [Role::Publisher, Role::Subscriber] {
        for room in &rooms {
            let n = match role {
                Role::Publisher => publishers,
                Role::Subscriber => config.subscribers,
            };
            for i in 0..n {
                let (name, profile, own) = match role {
                    Role::Publisher => {
                        let p = config.profile(i);
                        let own =
                            usize::from(p.publishes_audio()) + usize::from(p.publishes_video());
                        (format!("pub-{i}"), Some(p), own)
                    }
                    Role::Subscriber => (format!("sub-{i}"), None, 0),
                };
                let at = Duration::from_secs_f64(clients.len() as f64 / config.join_rate);
                clients.push(Client {
                    identity: format!("lt-{tag}-{name}"),
                    name,
                    room: room.clone(),
                    role,
                    profile,
                    tracks_expected: tracks_in_room - own,
                    at,
                    handle: None,
                    started: None,
                    joined: false,
                    pub_connected: false,
                    sub_connected_at: None,
                    connected_at: None,
                    ended: false,
                    migrations: 0,
                    errors: Vec::new(),
                });
            }
        }
    }
    let join_span = clients.last().map_or(Duration::ZERO, |c| c.at);
    let end = (!config.duration.is_zero()).then(|| join_span + config.duration);
    // Tokens outlive the run with room to spare; a long run (or one without end) gets a day.
    // Within the bridge's default auth.max_token_ttl_secs (24 h): a token is only checked at join.
    let ttl = end.map_or(86_400, |e| (e.as_secs() + 3600).min(86_400));

    let start = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_progress = start;
    let mut last_bytes = 0u64;
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("stopping early");
                break;
            }
            _ = tick.tick() => {}
        }
        let elapsed = start.elapsed();
        for c in clients
            .iter_mut()
            .filter(|c| c.handle.is_none() && c.at <= elapsed)
        {
            let token = auth::mint(
                &config.api_key,
                &config.api_secret,
                &auth::Claims {
                    iss: String::new(),
                    identity: c.identity.clone(),
                    room: c.room.clone(),
                    name: Some(c.name.clone()),
                    can_publish: c.role == Role::Publisher,
                    can_subscribe: true,
                    exp: auth::now_secs() + ttl,
                    nbf: None,
                },
            )
            .context("minting a token")?;
            c.handle = Some(spawn_client_with(
                ClientSpec {
                    http,
                    room: c.room.clone(),
                    identity: c.identity.clone(),
                    token,
                    publish: c.profile.clone(),
                    report_rtp: false,
                },
                ClientOptions {
                    media_via: config.media_via,
                    ssrc_tag: config.ssrc_tag,
                },
            ));
            c.started = Some(Instant::now());
        }
        for c in &mut clients {
            c.drain();
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            let mut bytes = 0;
            let mut lost = 0;
            let mut received = 0;
            for h in clients.iter().filter_map(|c| c.handle.as_ref()) {
                let t = h.stats.totals();
                bytes += t.received.bytes;
                received += t.received.packets;
                lost += t.lost;
            }
            let secs = last_progress.elapsed().as_secs_f64();
            progress(&Progress {
                elapsed,
                total: end.filter(|_| elapsed >= join_span),
                started: clients.iter().filter(|c| c.handle.is_some()).count(),
                connected: clients.iter().filter(|c| c.connected_at.is_some()).count(),
                clients: clients.len(),
                failed: clients
                    .iter()
                    .filter(|c| c.ended || !c.errors.is_empty())
                    .count(),
                recv_kbps: bytes.saturating_sub(last_bytes) as f64 * 8.0 / 1000.0 / secs,
                loss_pct: loss_pct(lost, received),
            });
            last_bytes = bytes;
            last_progress = Instant::now();
        }
        if end.is_some_and(|e| elapsed >= e) {
            break;
        }
    }
    let elapsed = start.elapsed();

    // Everyone's counters at one moment, then everyone leaves.
    let mut rows = Vec::with_capacity(clients.len());
    let mut latency = Histogram::default();
    for c in &mut clients {
        c.drain();
        let (received, sent) = match &c.handle {
            Some(h) => (h.stats.received(), h.stats.sent()),
            None => Default::default(),
        };
        latency.merge(&received.latency_us);
        let count = received.count(None);
        let sent_secs = c.connected_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        rows.push(ClientRow {
            name: c.name.clone(),
            identity: c.identity.clone(),
            room: c.room.clone(),
            role: c.role,
            publishes_audio: c
                .profile
                .as_ref()
                .is_some_and(MediaProfile::publishes_audio),
            publishes_video: c
                .profile
                .as_ref()
                .is_some_and(MediaProfile::publishes_video),
            connected: c.connected_at.is_some(),
            connect_ms: c
                .connected_at
                .zip(c.started)
                .map(|(done, started)| done.duration_since(started).as_millis() as u64),
            subscriber_ms: c
                .sub_connected_at
                .zip(c.started)
                .map(|(done, started)| done.duration_since(started).as_millis() as u64),
            figures: Figures {
                tracks_received: received.tracks(),
                tracks_expected: c.tracks_expected,
                packets_received: count.packets,
                packets_lost: received.lost(),
                loss_pct: loss_pct(received.lost(), count.packets),
                bitrate_kbps: round(received.kbps(), 1),
                sent_kbps: if sent_secs > 0.0 {
                    round(sent.total().bytes as f64 * 8.0 / 1000.0 / sent_secs, 1)
                } else {
                    0.0
                },
                latency_p50_ms: ms(received.latency_us.percentile(50.0)),
                latency_p99_ms: ms(received.latency_us.percentile(99.0)),
                layer_switches: received.switches(),
                max_gap_ms: (received.max_gap_us > 0)
                    .then(|| round(received.max_gap_us as f64 / 1000.0, 1)),
                migrations: c.migrations,
            },
            errors: c.errors.clone(),
            streams: {
                let mut streams: Vec<StreamRow> = received
                    .streams
                    .iter()
                    .map(|(&ssrc, s)| StreamRow::new(ssrc, s))
                    .collect();
                streams.sort_by_key(|s| s.ssrc);
                streams
            },
        });
    }
    for h in clients.iter().filter_map(|c| c.handle.as_ref()) {
        let _ = h.stop.send(true);
    }
    // Let the leaves go out (bounded: a stuck client must not hold the report).
    let leave = async {
        for c in &mut clients {
            if let Some(h) = c.handle.as_mut() {
                let _ = (&mut h.task).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
    for c in &clients {
        if let Some(h) = &c.handle {
            h.task.abort();
        }
    }

    let join_secs = clients
        .iter()
        .map(|c| {
            c.connected_at
                .map(|t| t.duration_since(start).as_secs_f64())
        })
        .collect::<Option<Vec<f64>>>()
        .map(|v| v.into_iter().fold(0.0, f64::max));
    let total = Total::of(&rows, &latency);
    Ok(LoadReport {
        url: config.url.clone(),
        rooms,
        settings: Settings {
            video_publishers: config.video_publishers,
            audio_publishers: config.audio_publishers,
            subscribers: config.subscribers,
            duration_secs: config.duration.as_secs_f64(),
            simulcast: config.simulcast,
            resolution: config.resolution.name().into(),
            join_rate: config.join_rate,
        },
        elapsed_secs: round(elapsed.as_secs_f64(), 3),
        join_secs: join_secs.map(|s| round(s, 3)),
        ok: total.failed == 0,
        clients: rows,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoadConfig {
        LoadConfig {
            url: "http://127.0.0.1:7880".into(),
            room: "r".into(),
            rooms: 1,
            video_publishers: 2,
            audio_publishers: 3,
            subscribers: 4,
            duration: Duration::from_secs(1),
            simulcast: false,
            resolution: Resolution::High,
            join_rate: 10.0,
            api_key: "k".into(),
            api_secret: "s".into(),
            media_via: None,
            ssrc_tag: 0,
        }
    }

    #[test]
    fn rooms_and_publishers() {
        let mut c = config();
        assert_eq!(c.room_names(), vec!["r"]);
        assert_eq!(c.publishers(), 3);
        assert_eq!(c.clients(), 7);
        assert!(c.profile(0).publishes_video() && c.profile(0).publishes_audio());
        assert!(!c.profile(2).publishes_video() && c.profile(2).publishes_audio());
        c.rooms = 3;
        assert_eq!(c.room_names(), vec!["r-1", "r-2", "r-3"]);
        assert_eq!(c.clients(), 21);
        c.join_rate = 0.0;
        assert!(c.validate().is_err());
        let mut c = config();
        c.video_publishers = 0;
        c.audio_publishers = 0;
        c.subscribers = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            host_port("http://127.0.0.1:7880").unwrap(),
            "127.0.0.1:7880"
        );
        assert_eq!(
            host_port("http://node.example/").unwrap(),
            "node.example:80"
        );
        assert_eq!(host_port("ws://10.0.0.1:9000/ws").unwrap(), "10.0.0.1:9000");
        assert_eq!(host_port("localhost").unwrap(), "localhost:7880");
        assert_eq!(host_port("localhost:1234").unwrap(), "localhost:1234");
        assert_eq!(host_port("http://[::1]:7880").unwrap(), "[::1]:7880");
        assert_eq!(host_port("http://[::1]").unwrap(), "[::1]:80");
        assert!(host_port("https://node:443").is_err());
        assert!(host_port("ftp://node").is_err());
        assert!(host_port("http://").is_err());
    }

    #[test]
    fn progress_line() {
        let p = Progress {
            elapsed: Duration::from_millis(12_040),
            total: Some(Duration::from_secs(33)),
            started: 12,
            connected: 11,
            clients: 12,
            failed: 1,
            recv_kbps: 30_420.0,
            loss_pct: 0.004,
        };
        assert_eq!(
            p.line(),
            " 12.0 s / 33.0 s | connected 11/12 | recv 30.42 Mbps | loss 0.00% | failed 1"
        );
        let joining = Progress {
            total: None,
            started: 5,
            failed: 0,
            recv_kbps: 120.0,
            ..p
        };
        assert_eq!(
            joining.line(),
            " 12.0 s | connected 11/12 (started 5) | recv 120 kbps | loss 0.00%"
        );
    }
}
