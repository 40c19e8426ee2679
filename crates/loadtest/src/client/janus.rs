//! The same synthetic client against Janus 1.1's VideoRoom plugin, for side-by-side benchmarks.
//!
//! Media is exactly the kaskade client's: the same `rtc` PeerConnection set-up (`Leg`), the
//! same published streams (`add_tracks`, [`MediaProfile`], the [`crate::Probe`] in every
//! payload) and the same counting ([`ClientStats`]). Only the signaling differs: Janus's HTTP
//! API (create a session, attach `janus.plugin.videoroom`, plugin requests as `message`s,
//! asynchronous events through the session's long poll), one session and one handle per
//! client, as a browser would hold them.
//!
//! - publisher: create the room if it does not exist, `join` as publisher with a chosen feed
//!   id, `publish` with our offer, take the answer from the event that follows;
//! - subscriber: `join` as subscriber to that feed, answer the offer Janus sends, `start`.
//!
//! Janus gathers its own candidates before it sends an SDP (half-trickle) and we put our one
//! host candidate into ours, so no trickle message is needed: every JSEP we send says
//! `"trickle": false`. Janus is a full ICE agent (not ICE-lite like the bridge): our leg
//! runs the controlling side on the publisher and the controlled side on subscribers.
//!
//! [`JanusServer`] starts Janus itself, through `benches/janus/run-janus.sh`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use kaskade_bridge::messages::Target;
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{ClientHandle, Leg, MediaLeg, OutStream, Report};
use super::{add_tracks, apply_answer, recv_on, spawn_task};
use crate::media::MediaProfile;
use crate::stats::ClientStats;

/// The VideoRoom plugin's package name, as `attach` takes it.
pub const VIDEOROOM: &str = "janus.plugin.videoroom";
/// How long a plain API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Janus answers a long poll after at most 30 s (with a keepalive when nothing happened).
const POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// How long to wait for an asynchronous event (a JSEP) after a request.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// VideoRoom's "room already exists" error code.
const ROOM_EXISTS: i64 = 427;

/// How a Janus client behaves.
#[derive(Debug, Clone)]
pub struct JanusSpec {
    /// Janus's HTTP transport; the API is at `http://<api>/janus`.
    pub api: SocketAddr,
    /// The VideoRoom room (created by the publisher when missing).
    pub room: u64,
    /// The display name.
    pub identity: String,
    pub role: JanusRole,
}

#[derive(Debug, Clone)]
pub enum JanusRole {
    /// Joins as publisher `feed` (the id subscribers ask for) and publishes `profile`.
    Publisher { feed: u64, profile: MediaProfile },
    /// Receives every stream of publisher `feed`.
    Subscriber { feed: u64 },
}

/// Spawns a Janus client on the current tokio runtime. Its [`ClientHandle`] reports
/// [`Report::Connected`] when its leg's ICE + DTLS complete on both sides, then [`Report::Failed`] on an
/// error and [`Report::Closed`] at the end, like the kaskade client (no `Signal` reports).
pub fn spawn_janus_client(spec: JanusSpec) -> ClientHandle {
    spawn_task(|reports, stop, stats| run_janus_client(spec, reports, stop, stats))
}

/// Runs a Janus client until `stop` turns true or Janus ends the session.
pub async fn run_janus_client(
    spec: JanusSpec,
    reports: mpsc::UnboundedSender<Report>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ClientStats>,
) -> Result<()> {
    let mut session = JanusSession::open(spec.api, &spec.identity).await?;
    let setup = async {
        match &spec.role {
            JanusRole::Publisher { feed, profile } => {
                publish(&mut session, &spec, *feed, profile).await
            }
            JanusRole::Subscriber { feed } => subscribe(&mut session, &spec, *feed).await,
        }
    };
    // Leaving during set-up (a benchmark giving up) must not wait for Janus.
    let (leg, streams) = tokio::select! {
        r = setup => r?,
        _ = stop.changed() => {
            session.destroy().await;
            return Ok(());
        }
    };
    let target = match spec.role {
        JanusRole::Publisher { .. } => Target::Publisher,
        JanusRole::Subscriber { .. } => Target::Subscriber,
    };
    let r = media_loop(
        leg,
        streams,
        target,
        &mut session,
        &reports,
        &mut stop,
        &stats,
    )
    .await;
    session.destroy().await;
    r
}

/// Creates the room if needed, joins as publisher and publishes: returns the leg with Janus's
/// answer applied, and its streams.
async fn publish(
    session: &mut JanusSession,
    spec: &JanusSpec,
    feed: u64,
    profile: &MediaProfile,
) -> Result<(Leg, Vec<OutStream>)> {
    let created = session
        .request(json!({
            "request": "create",
            "room": spec.room,
            "description": "kaskade benchmark",
            "publishers": 3,
            "audiocodec": "opus",
            "videocodec": "vp8",
            // No bitrate cap (REMB) and no periodic keyframe requests: the bridge sends
            // neither.
            "bitrate": 0,
            "fir_freq": 0,
            "notify_joining": false,
        }))
        .await;
    match created {
        Ok(_) => {}
        Err(JanusError::Plugin { code, .. }) if code == ROOM_EXISTS => {}
        Err(e) => return Err(anyhow!(e)).context("creating the VideoRoom room"),
    }
    session
        .send(
            json!({
                "request": "join", "ptype": "publisher", "room": spec.room, "id": feed,
                "display": spec.identity,
            }),
            None,
        )
        .await
        .context("joining as publisher")?;
    session
        .wait_event("joined as publisher", |d| d["videoroom"] == "joined")
        .await?;

    let simulcast = profile.video.as_ref().is_some_and(|v| v.layers().len() > 1);
    let mut leg = Leg::new(local_ip(spec.api).await?, simulcast, None).await?;
    let mut streams = add_tracks(&mut leg, &spec.identity, profile, 0, Instant::now())?;
    let offer = leg
        .pc
        .create_offer(None)
        .map_err(|e| anyhow!("creating the offer: {e}"))?;
    leg.pc
        .set_local_description(Instant::now(), offer.clone())
        .map_err(|e| anyhow!("setting the local offer: {e}"))?;
    session
        .send(
            json!({"request": "publish", "audio": true, "video": true}),
            Some(json!({"type": "offer", "sdp": offer.sdp, "trickle": false})),
        )
        .await
        .context("publishing")?;
    let event = session
        .wait_event("the answer to our offer", |d| d["configured"] == "ok")
        .await?;
    let sdp = jsep_sdp(&event, "answer")?;
    let answer = RTCSessionDescription::answer(sdp)
        .map_err(|e| anyhow!("Janus's answer does not parse: {e}"))?;
    leg.pc
        .set_remote_description(Instant::now(), answer)
        .map_err(|e| anyhow!("setting Janus's answer: {e}"))?;
    // The negotiated payload types and extension ids are the answer's.
    apply_answer(&mut leg.pc, &mut streams);
    Ok((leg, streams))
}

/// Joins as subscriber to `feed` and answers Janus's offer: returns the leg.
async fn subscribe(
    session: &mut JanusSession,
    spec: &JanusSpec,
    feed: u64,
) -> Result<(Leg, Vec<OutStream>)> {
    session
        .send(
            json!({
                "request": "join", "ptype": "subscriber", "room": spec.room,
                "streams": [{"feed": feed}],
            }),
            None,
        )
        .await
        .context("joining as subscriber")?;
    let event = session
        .wait_event("the subscriber offer", |d| d["videoroom"] == "attached")
        .await?;
    let sdp = jsep_sdp(&event, "offer")?;
    let mut leg = Leg::new(local_ip(spec.api).await?, false, None).await?;
    let offer = RTCSessionDescription::offer(sdp)
        .map_err(|e| anyhow!("Janus's offer does not parse: {e}"))?;
    leg.pc
        .set_remote_description(Instant::now(), offer)
        .map_err(|e| anyhow!("setting Janus's offer: {e}"))?;
    let answer = leg
        .pc
        .create_answer(None)
        .map_err(|e| anyhow!("creating the answer: {e}"))?;
    leg.pc
        .set_local_description(Instant::now(), answer.clone())
        .map_err(|e| anyhow!("setting the local answer: {e}"))?;
    session
        .send(
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer.sdp, "trickle": false})),
        )
        .await
        .context("starting the subscription")?;
    // Janus confirms with `"started": "ok"`; media flows once ICE and DTLS are done, so the
    // confirmation is not waited for here: the media loop ignores it.
    Ok((leg, Vec::new()))
}

/// The address this host reaches Janus from (127.0.0.1 on loopback): our legs' candidates.
async fn local_ip(api: SocketAddr) -> Result<IpAddr> {
    let probe = UdpSocket::bind(SocketAddr::new(
        if api.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    ))
    .await
    .context("binding a probe socket")?;
    probe
        .connect(api)
        .await
        .with_context(|| format!("no route to {api}"))?;
    Ok(probe.local_addr().context("probe socket address")?.ip())
}

/// The SDP of the event's JSEP, which must be of `kind` ("offer" or "answer").
fn jsep_sdp(event: &Value, kind: &str) -> Result<String> {
    let jsep = event
        .get("jsep")
        .with_context(|| format!("Janus sent no JSEP {kind}: {event}"))?;
    if jsep.get("type").and_then(Value::as_str) != Some(kind) {
        bail!("Janus sent a JSEP that is not an {kind}: {jsep}");
    }
    jsep.get("sdp")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("Janus's JSEP {kind} has no SDP"))
}

/// Services one leg until `stop` turns true, Janus hangs up or the session goes away.
async fn media_loop(
    leg: Leg,
    streams: Vec<OutStream>,
    target: Target,
    session: &mut JanusSession,
    reports: &mpsc::UnboundedSender<Report>,
    stop: &mut watch::Receiver<bool>,
    stats: &ClientStats,
) -> Result<()> {
    let mut leg = MediaLeg::new(leg, streams, target);
    // Janus's `webrtcup`: its side of the leg is up too. A publisher's feed can be subscribed
    // to only from then on, so `Connected` is reported once both sides are up.
    let mut janus_up = false;
    let mut reported = false;
    loop {
        let now = Instant::now();
        leg.pump(now, stats, |_, _| {})?;
        if leg.connected && janus_up && !reported {
            reported = true;
            let _ = reports.send(Report::Connected(target));
        }
        let wake = leg.wake(now);

        tokio::select! {
            _ = stop.changed() => return Ok(()),
            event = session.events.recv() => {
                // The long poll ended: Janus is gone (or the session timed out).
                let Some(event) = event else { return Ok(()) };
                match event.get("janus").and_then(Value::as_str) {
                    Some("hangup") => bail!(
                        "Janus hung up the {target:?} leg: {}",
                        event.get("reason").and_then(Value::as_str).unwrap_or("no reason given")
                    ),
                    Some("detached") => bail!("Janus detached the {target:?} handle"),
                    Some("webrtcup") => janus_up = true,
                    _ => {}
                }
                if let Some(e) = plugin_error(&event) {
                    bail!("Janus reported an error on the {target:?} handle: {e}");
                }
            }
            r = recv_on(Some(&mut leg)) => {
                if let Ok(first) = r {
                    leg.read_batch(first, stats, |_, _| {});
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// An error Janus answered with.
#[derive(Debug)]
enum JanusError {
    /// The request did not get through (network, HTTP, a reply that does not parse).
    Transport(anyhow::Error),
    /// The core refused it (`"janus": "error"`).
    Core { code: i64, reason: String },
    /// The plugin refused it (`error_code` in the plugin data).
    Plugin { code: i64, reason: String },
}

impl std::fmt::Display for JanusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JanusError::Transport(e) => write!(f, "{e:#}"),
            JanusError::Core { code, reason } => write!(f, "Janus error {code}: {reason}"),
            JanusError::Plugin { code, reason } => write!(f, "VideoRoom error {code}: {reason}"),
        }
    }
}

impl std::error::Error for JanusError {}

impl From<anyhow::Error> for JanusError {
    fn from(e: anyhow::Error) -> Self {
        JanusError::Transport(e)
    }
}

/// The plugin's error in a reply or event, if it carries one.
fn plugin_error(msg: &Value) -> Option<JanusError> {
    let data = msg.get("plugindata")?.get("data")?;
    let code = data.get("error_code")?.as_i64().unwrap_or(0);
    let reason = data
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
        .to_string();
    Some(JanusError::Plugin { code, reason })
}

/// One Janus session with one VideoRoom handle, and the long poll that brings its events.
struct JanusSession {
    api: SocketAddr,
    session: u64,
    handle: u64,
    /// Events for our handle, in order (keepalives left out).
    events: mpsc::UnboundedReceiver<Value>,
    poller: JoinHandle<()>,
    prefix: String,
    next_transaction: AtomicU64,
}

impl JanusSession {
    /// Creates a session, attaches the VideoRoom plugin and starts the long poll.
    async fn open(api: SocketAddr, who: &str) -> Result<JanusSession> {
        let prefix = format!("{who}-");
        let reply = janus_post(
            api,
            "/janus",
            json!({"janus": "create", "transaction": format!("{prefix}0")}),
        )
        .await
        .map_err(|e| anyhow!(e))
        .context("creating a Janus session")?;
        let session = reply_id(&reply).context("Janus's reply to create")?;
        let reply = janus_post(
            api,
            &format!("/janus/{session}"),
            json!({"janus": "attach", "plugin": VIDEOROOM, "transaction": format!("{prefix}1")}),
        )
        .await
        .map_err(|e| anyhow!(e))
        .context("attaching the VideoRoom plugin")?;
        let handle = reply_id(&reply).context("Janus's reply to attach")?;
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(long_poll(api, session, tx));
        Ok(JanusSession {
            api,
            session,
            handle,
            events,
            poller,
            prefix,
            next_transaction: AtomicU64::new(2),
        })
    }

    fn transaction(&self) -> String {
        let n = self.next_transaction.fetch_add(1, Ordering::Relaxed);
        format!("{}{n}", self.prefix)
    }

    fn handle_path(&self) -> String {
        format!("/janus/{}/{}", self.session, self.handle)
    }

    /// A synchronous plugin request (`create`, `exists`, ...): returns the plugin's data.
    async fn request(&self, body: Value) -> std::result::Result<Value, JanusError> {
        let msg = json!({"janus": "message", "transaction": self.transaction(), "body": body});
        let reply = janus_post(self.api, &self.handle_path(), msg).await?;
        if let Some(e) = plugin_error(&reply) {
            return Err(e);
        }
        reply
            .get("plugindata")
            .and_then(|p| p.get("data"))
            .cloned()
            .ok_or_else(|| JanusError::Transport(anyhow!("a plugin reply without data: {reply}")))
    }

    /// An asynchronous plugin request (`join`, `publish`, `start`): Janus acknowledges it and
    /// answers with an event.
    async fn send(&self, body: Value, jsep: Option<Value>) -> Result<()> {
        let mut msg = json!({"janus": "message", "transaction": self.transaction(), "body": body});
        if let Some(jsep) = jsep {
            msg["jsep"] = jsep;
        }
        let reply = janus_post(self.api, &self.handle_path(), msg)
            .await
            .map_err(|e| anyhow!(e))?;
        if let Some(e) = plugin_error(&reply) {
            return Err(anyhow!(e));
        }
        Ok(())
    }

    /// Waits for the next plugin event whose data satisfies `wanted`, failing on a plugin
    /// error, a hangup or a timeout; other events (`webrtcup`, `media`, ...) are skipped.
    async fn wait_event(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("no {what} from Janus within {EVENT_TIMEOUT:?}"))?
                .with_context(|| format!("the Janus session ended while waiting for {what}"))?;
            match event.get("janus").and_then(Value::as_str) {
                Some("event") => {}
                Some("hangup") | Some("detached") => {
                    bail!("Janus hung up while we waited for {what}: {event}")
                }
                _ => continue,
            }
            if let Some(e) = plugin_error(&event) {
                return Err(anyhow!(e)).with_context(|| format!("waiting for {what}"));
            }
            if event
                .get("plugindata")
                .and_then(|p| p.get("data"))
                .is_some_and(&wanted)
            {
                return Ok(event);
            }
        }
    }

    /// Ends the session (Janus hangs up its PeerConnection) and the long poll.
    async fn destroy(&mut self) {
        let msg = json!({"janus": "destroy", "transaction": self.transaction()});
        let _ = janus_post(self.api, &format!("/janus/{}", self.session), msg).await;
        self.poller.abort();
    }
}

impl Drop for JanusSession {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// `data.id` of a `success` reply (the new session's or handle's id).
fn reply_id(reply: &Value) -> Result<u64> {
    reply
        .get("data")
        .and_then(|d| d.get("id"))
        .and_then(Value::as_u64)
        .with_context(|| format!("no id in {reply}"))
}

/// Long-polls the session's events into `tx` until Janus stops answering or nobody listens.
async fn long_poll(api: SocketAddr, session: u64, tx: mpsc::UnboundedSender<Value>) {
    let path = format!("/janus/{session}?maxev=10");
    loop {
        let body = match http_request(api, "GET", &path, None, POLL_TIMEOUT).await {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                tracing::debug!(session, status, %body, "the Janus long poll was refused");
                return;
            }
            Err(e) => {
                tracing::debug!(session, error = %format!("{e:#}"), "the Janus long poll failed");
                return;
            }
        };
        let events = match serde_json::from_str::<Value>(&body) {
            Ok(Value::Array(events)) => events,
            Ok(event) => vec![event],
            Err(e) => {
                tracing::warn!(session, error = %e, %body, "a Janus event that does not parse");
                return;
            }
        };
        for event in events {
            match event.get("janus").and_then(Value::as_str) {
                Some("keepalive") => {}
                // A session Janus no longer knows (timed out, destroyed): nothing more comes.
                Some("error") => {
                    tracing::debug!(session, %event, "the Janus long poll ended");
                    return;
                }
                _ => {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// POSTs a Janus API message and returns the reply, an error for `"janus": "error"`.
async fn janus_post(
    api: SocketAddr,
    path: &str,
    msg: Value,
) -> std::result::Result<Value, JanusError> {
    let body = msg.to_string();
    let (status, text) = http_request(api, "POST", path, Some(&body), REQUEST_TIMEOUT).await?;
    if status != 200 {
        return Err(JanusError::Transport(anyhow!(
            "POST {path} answered HTTP {status}: {text}"
        )));
    }
    let reply: Value = serde_json::from_str(&text).map_err(|e| {
        JanusError::Transport(anyhow!("a Janus reply that does not parse ({e}): {text}"))
    })?;
    if reply.get("janus").and_then(Value::as_str) == Some("error") {
        let err = reply.get("error");
        return Err(JanusError::Core {
            code: err
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64)
                .unwrap_or(0),
            reason: err
                .and_then(|e| e.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string(),
        });
    }
    Ok(reply)
}

/// A minimal HTTP/1.1 exchange (one request per connection), enough for Janus's JSON API:
/// returns the status and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            req.push_str("\r\n");
        }
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{path} timed out"))?
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    parse_response(&raw).with_context(|| format!("the response to {method} http://{addr}{path}"))
}

/// Status and body of a complete HTTP/1.1 response (`Content-Length`, chunked, or up to the
/// end of the connection).
fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the header")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body).context("a malformed chunked body")?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().context("a bad Content-Length")?;
        body.get(..len)
            .context("a body shorter than its Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = s.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&s[..line_end]).ok()?;
        let size = size.split(';').next()?.trim();
        let n = usize::from_str_radix(size, 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        let chunk = s.get(line_end + 2..line_end + 2 + n)?;
        out.extend_from_slice(chunk);
        s = s.get(line_end + 2 + n + 2..)?;
    }
}

/// How to start a [`JanusServer`].
#[derive(Debug, Clone)]
pub struct JanusOptions {
    /// `benches/janus/run-janus.sh` (it writes the configuration and builds the loopback
    /// shim).
    pub script: PathBuf,
    /// CPUs to pin Janus to, as `taskset -c` takes them; `None` leaves it free.
    pub cpus: Option<String>,
    /// UDP ports for Janus's PeerConnections (one per handle), as "min-max".
    pub rtp_ports: String,
    /// Where Janus's configuration, shim and log go.
    pub work_dir: PathBuf,
    /// Janus's log level, 0-7 (3: warnings and errors).
    pub debug_level: u8,
    /// Janus's `event_loops`: `None` keeps its default of one thread per handle.
    pub event_loops: Option<usize>,
}

/// Janus running as a child process; killed on drop.
pub struct JanusServer {
    child: Child,
    /// The HTTP transport (API at `/janus`).
    pub api: SocketAddr,
    pub log: PathBuf,
}

impl JanusServer {
    /// Whether a `janus` executable is on the `PATH`.
    pub fn installed() -> bool {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("janus").is_file()))
    }

    /// Starts Janus on a free loopback HTTP port and waits until its API answers.
    pub async fn start(opts: &JanusOptions) -> Result<JanusServer> {
        if !opts.script.is_file() {
            bail!("{} does not exist", opts.script.display());
        }
        std::fs::create_dir_all(&opts.work_dir)
            .with_context(|| format!("creating {}", opts.work_dir.display()))?;
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free TCP port")?
            .port();
        let log = opts.work_dir.join("janus.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let mut cmd = Command::new("bash");
        cmd.arg(&opts.script)
            .arg("--http-port")
            .arg(port.to_string())
            .arg("--rtp-ports")
            .arg(&opts.rtp_ports)
            .arg("--work-dir")
            .arg(&opts.work_dir)
            .arg("--debug-level")
            .arg(opts.debug_level.to_string());
        if let Some(cpus) = &opts.cpus {
            cmd.arg("--cpus").arg(cpus);
        }
        if let Some(n) = opts.event_loops {
            cmd.arg("--event-loops").arg(n.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", opts.script.display()))?;
        let mut server = JanusServer {
            child,
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.child.try_wait().context("polling Janus")? {
                bail!(
                    "Janus exited at start ({status}); its log: {}",
                    server.log.display()
                );
            }
            let info = json!({"janus": "info", "transaction": "ready"});
            if let Ok(reply) = janus_post(server.api, "/janus", info).await
                && reply.get("janus").and_then(Value::as_str) == Some("server_info")
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "Janus did not answer on {} within 15 s; its log: {}",
                    server.api,
                    server.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Janus's own PID: the script `exec`s it (through `taskset` and `env`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills Janus and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JanusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The script that starts Janus, in this repository.
pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/janus/run-janus.sh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello";
        assert_eq!(parse_response(raw).unwrap(), (200, "hello".into()));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap(), (200, "hello world".into()));
        let raw = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(raw).unwrap(), (404, "nope".into()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn replies() {
        let ok = json!({"janus": "success", "data": {"id": 42}});
        assert_eq!(reply_id(&ok).unwrap(), 42);
        assert!(reply_id(&json!({"janus": "success"})).is_err());
        let e = json!({"janus": "success", "plugindata": {"plugin": VIDEOROOM,
            "data": {"videoroom": "event", "error_code": 427, "error": "Room 1 already exists"}}});
        assert!(matches!(
            plugin_error(&e),
            Some(JanusError::Plugin { code: 427, .. })
        ));
        assert!(plugin_error(&ok).is_none());
        let ev = json!({"janus": "event", "jsep": {"type": "answer", "sdp": "v=0"}});
        assert_eq!(jsep_sdp(&ev, "answer").unwrap(), "v=0");
        assert!(jsep_sdp(&ev, "offer").is_err());
        assert!(jsep_sdp(&json!({"janus": "event"}), "offer").is_err());
    }

    #[test]
    fn the_script_is_in_the_repository() {
        assert!(default_script().is_file(), "{}", default_script().display());
    }
}
