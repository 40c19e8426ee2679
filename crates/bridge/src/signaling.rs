//! The signaling WebSocket: one task per participant, translating proto/signaling.md into
//! shard commands and shard events back into messages.
//!
//! Everything a client can get wrong is caught here or in the shard and answered with an
//! error of its own session; nothing a session sends can affect another one.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{Instrument, debug};

use crate::auth::{Claims, TokenError};
use crate::cluster::Placement;
use crate::limits::{self, NodeSlot, RateLimit};
use crate::messages::{ClientMsg, ErrorCode, ServerMsg, Target, parse_client};
use crate::shard::{Command, SessionId};
use crate::shards::{PlaceError, ShardSlot};
use crate::state::AppState;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A client that says nothing (not even `ping`) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Lifetime of the token a `redirect` carries.
const REDIRECT_TOKEN_SECS: u64 = 60;

/// A draining node that found no bridge to move a participant to asks again this often.
const MIGRATE_RETRY: Duration = Duration::from_secs(2);

struct Session {
    id: SessionId,
    app: Arc<AppState>,
    events: mpsc::UnboundedSender<ServerMsg>,
    joined: bool,
    can_publish: bool,
    /// The region the load balancer's header named (`cluster.region_header`).
    lb_region: Option<String>,
    /// Room, region and claims of the join: what a `migrate` needs to place it again.
    placed: Option<Placed>,
    /// `limits.max_messages_per_sec`: every frame.
    message_rate: RateLimit,
    /// `limits.max_chat_per_sec`: `message`s.
    chat_rate: RateLimit,
    /// The client's address (`limits.max_joins_per_ip_per_sec`).
    peer_ip: Option<IpAddr>,
    /// Held from the join to the end of the session (`limits.max_participants_per_node`).
    node_slot: Option<NodeSlot>,
    /// The shard this session's participant is placed on, held until the session ends: every
    /// later command goes there.
    shard: Option<ShardSlot>,
}

struct Placed {
    room: String,
    region: String,
    claims: Claims,
}

/// What the loop does after handling one client message.
enum Next {
    Continue,
    Reply(ServerMsg),
    Close(ErrorCode, String),
    /// Send this `redirect` and end the session.
    Redirect(ServerMsg),
    Leave,
}

pub async fn run(
    socket: WebSocket,
    app: Arc<AppState>,
    lb_region: Option<String>,
    peer_ip: Option<IpAddr>,
) {
    let id = SessionId(NEXT_SESSION.fetch_add(1, Ordering::Relaxed));
    // Every line of this session names it, its bridge, and once known its room and
    // participant (fields of the span in JSON logs).
    let span = tracing::info_span!(
        "session",
        session = id.0,
        bridge = %app.config.bridge.id,
        room = tracing::field::Empty,
        participant = tracing::field::Empty,
    );
    session(socket, app, lb_region, peer_ip, id)
        .instrument(span)
        .await
}

async fn session(
    socket: WebSocket,
    app: Arc<AppState>,
    lb_region: Option<String>,
    peer_ip: Option<IpAddr>,
    id: SessionId,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMsg>();
    let started = Instant::now();
    let mut s = Session {
        id,
        app: app.clone(),
        message_rate: RateLimit::new(
            started,
            app.config.limits.max_messages_per_sec,
            app.config.limits.max_messages_per_sec.saturating_mul(2),
        ),
        peer_ip,
        node_slot: None,
        shard: None,
        chat_rate: RateLimit::new(
            started,
            app.config.limits.max_chat_per_sec,
            app.config.limits.max_chat_per_sec.saturating_mul(2),
        ),
        events: tx,
        joined: false,
        can_publish: false,
        lb_region,
        placed: None,
    };
    app.metrics.signaling_sessions.inc();
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(idle);
    // drain.migrate: when a drain starts, this session is told where to move (once).
    let mut drain = app.cluster.drain_signal();
    let mut watch_drain = app.config.drain.migrate;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let migrate_at = tokio::time::sleep_until(far());
    tokio::pin!(migrate_at);
    let mut migrate_pending = false;
    let close: Option<(ErrorCode, String)> = loop {
        tokio::select! {
            frame = stream.next() => {
                idle.as_mut().reset((Instant::now() + IDLE_TIMEOUT).into());
                let next = match frame {
                    // A frame over the read cap is refused by the WebSocket layer before we see
                    // it; the session still gets the protocol's answer.
                    Some(Err(e)) if e.to_string().contains("Message too long") => Next::Close(
                        ErrorCode::MessageTooLarge,
                        format!(
                            "over {} bytes",
                            app.config.limits.max_message_bytes
                        ),
                    ),
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                    Some(Ok(Message::Binary(_))) => {
                        Next::Close(ErrorCode::BinaryFrame, "binary frames are not accepted".into())
                    }
                    Some(Ok(Message::Text(text))) => s.on_text(text.as_str()).await,
                };
                match next {
                    Next::Continue => {}
                    Next::Reply(m) => {
                        if send(&mut sink, &m).await.is_err() {
                            break None;
                        }
                    }
                    Next::Close(code, reason) => break Some((code, reason)),
                    Next::Redirect(m) => {
                        let _ = send(&mut sink, &m).await;
                        break None;
                    }
                    Next::Leave => break None,
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break None };
                if let ServerMsg::Joined { participant, .. } = &msg {
                    tracing::Span::current().record("participant", participant.id.as_str());
                    debug!("joined");
                }
                let fatal = matches!(msg, ServerMsg::Error { fatal: true, .. });
                let sent = send(&mut sink, &msg).await;
                if fatal {
                    // The shard already removed the participant.
                    s.joined = false;
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 4000, reason: "error".into() }))).await;
                    break None;
                }
                if sent.is_err() {
                    // The client is gone (it may have left for another bridge mid-event): the
                    // participant leaves now, not at the media timeout.
                    break None;
                }
            }
            _ = &mut idle => break Some((ErrorCode::MediaTimeout, "signaling idle for 90 s".into())),
            r = drain.changed(), if watch_drain => {
                watch_drain = false;
                if r.is_ok() && s.joined {
                    migrate_pending = true;
                    migrate_at.as_mut().reset(tokio::time::Instant::now());
                }
            }
            () = &mut migrate_at, if migrate_pending => {
                match s.migration().await {
                    Some(m) => {
                        migrate_pending = false;
                        migrate_at.as_mut().reset(far());
                        // The session stays until the client leaves: it keeps its media
                        // until it has somewhere else to be.
                        if send(&mut sink, &m).await.is_err() {
                            break None;
                        }
                    }
                    None => migrate_at.as_mut().reset(tokio::time::Instant::now() + MIGRATE_RETRY),
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        app.metrics
            .signaling_errors
            .with_label_values(&[code.as_str()])
            .inc();
        debug!(session = s.id.0, code = code.as_str(), %reason, "closing session");
        let _ = send(&mut sink, &ServerMsg::error(code, reason)).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 4000,
                reason: code.as_str().into(),
            })))
            .await;
    } else {
        let _ = sink.send(Message::Close(None)).await;
    }
    // The closing handshake: wait briefly for the client's close so that our close frame is
    // not lost to a reset of the connection.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    debug!(
        session = s.id.0,
        joined = s.joined,
        "signaling session ended"
    );
    if s.joined
        && let Some(slot) = s.shard.take()
    {
        // The leave goes out before the slot is given back (which may tell the shards the
        // conference no longer spans this one).
        let _ = slot
            .handle()
            .commands
            .send(Command::Leave { session: s.id });
    }
    app.metrics.signaling_sessions.dec();
}

async fn send<S>(sink: &mut S, msg: &ServerMsg) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let text = serde_json::to_string(msg).map_err(|_| ())?;
    sink.send(Message::Text(text.into())).await.map_err(|_| ())
}

/// Checks a `video_constraints` message: heights at most 8K, at most 256 tracks, each a
/// track id (unknown ids are fine: a track may have gone meanwhile).
fn video_constraints(
    max_height: Option<u32>,
    tracks: std::collections::BTreeMap<String, u32>,
) -> Result<std::collections::HashMap<kaskade_sfu::TrackId, u32>, String> {
    use crate::messages::{MAX_CONSTRAINT_HEIGHT, MAX_CONSTRAINT_TRACKS};
    if max_height.is_some_and(|h| h > MAX_CONSTRAINT_HEIGHT) {
        return Err(format!(
            "video_constraints: max_height over {MAX_CONSTRAINT_HEIGHT}"
        ));
    }
    if tracks.len() > MAX_CONSTRAINT_TRACKS {
        return Err(format!(
            "video_constraints: more than {MAX_CONSTRAINT_TRACKS} tracks"
        ));
    }
    tracks
        .into_iter()
        .map(|(id, h)| {
            let tid = kaskade_sfu::TrackId::parse(&id)
                .ok_or_else(|| "video_constraints: a key of tracks is not a track id".to_owned())?;
            if h > MAX_CONSTRAINT_HEIGHT {
                return Err(format!(
                    "video_constraints: a height over {MAX_CONSTRAINT_HEIGHT}"
                ));
            }
            Ok((tid, h))
        })
        .collect()
}

impl Session {
    /// Closes this session for going over `limit` (a label of `kaskade_limit_hits_total`).
    fn over_limit(&self, limit: &str, reason: String) -> Next {
        self.app
            .metrics
            .limit_hits
            .with_label_values(&[limit])
            .inc();
        Next::Close(ErrorCode::RateLimited, reason)
    }

    async fn on_text(&mut self, text: &str) -> Next {
        // Counted before parsing: malformed floods cost the same as well-formed ones.
        if !self.message_rate.allow(Instant::now()) {
            let rate = self.app.config.limits.max_messages_per_sec;
            return self.over_limit(
                limits::MESSAGE_RATE,
                format!("more than {rate} messages a second"),
            );
        }
        let limits = &self.app.config.limits;
        if text.len() > limits.max_message_bytes {
            return Next::Close(
                ErrorCode::MessageTooLarge,
                format!(
                    "{} bytes; at most {} allowed",
                    text.len(),
                    limits.max_message_bytes
                ),
            );
        }
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err((code, reason)) => return Next::Close(code, reason),
        };
        match (self.joined, msg) {
            (true, ClientMsg::Ping) => Next::Reply(ServerMsg::Pong),
            (
                false,
                ClientMsg::Join {
                    room,
                    token,
                    name,
                    region,
                    redirected,
                },
            ) => self.join(room, token, name, region, redirected).await,
            (false, _) => Next::Close(ErrorCode::NotJoined, "join first".into()),
            (true, ClientMsg::Join { .. }) => {
                Next::Close(ErrorCode::AlreadyJoined, "this session has joined".into())
            }
            (true, ClientMsg::Offer { target, sdp }) => {
                if target != Target::Publisher {
                    return Next::Close(
                        ErrorCode::BadMessage,
                        "clients offer only on the publisher PeerConnection".into(),
                    );
                }
                if !self.can_publish {
                    return Next::Close(
                        ErrorCode::Forbidden,
                        "the token does not allow publishing".into(),
                    );
                }
                if let Some(e) = self.check_sdp(&sdp) {
                    return e;
                }
                self.command(Command::Offer {
                    session: self.id,
                    sdp,
                })
            }
            (true, ClientMsg::Answer { target, sdp }) => {
                if target != Target::Subscriber {
                    return Next::Close(
                        ErrorCode::BadMessage,
                        "clients answer only on the subscriber PeerConnection".into(),
                    );
                }
                if let Some(e) = self.check_sdp(&sdp) {
                    return e;
                }
                self.command(Command::Answer {
                    session: self.id,
                    sdp,
                })
            }
            (true, ClientMsg::Candidate { target, candidate }) => {
                if let Some(c) = &candidate
                    && c.candidate.len() > 1024
                {
                    return Next::Reply(ServerMsg::error(
                        ErrorCode::BadCandidate,
                        "candidate longer than 1024 bytes ignored",
                    ));
                }
                self.command(Command::Candidate {
                    session: self.id,
                    target,
                    candidate,
                })
            }
            (true, ClientMsg::Message { text }) => {
                if text.is_empty() || text.chars().count() > 1000 {
                    return Next::Close(
                        ErrorCode::BadMessage,
                        "a message text must be 1-1000 characters".into(),
                    );
                }
                if !self.chat_rate.allow(Instant::now()) {
                    let rate = self.app.config.limits.max_chat_per_sec;
                    return self.over_limit(
                        limits::CHAT_RATE,
                        format!("more than {rate} chat messages a second"),
                    );
                }
                self.command(Command::Chat {
                    session: self.id,
                    text,
                })
            }
            (true, ClientMsg::VideoConstraints { max_height, tracks }) => {
                match video_constraints(max_height, tracks) {
                    Ok(tracks) => self.command(Command::VideoConstraints {
                        session: self.id,
                        max_height,
                        tracks,
                    }),
                    Err(why) => Next::Close(ErrorCode::BadMessage, why),
                }
            }
            (true, ClientMsg::Leave) => {
                debug!(session = self.id.0, "leave");
                self.joined = false;
                if let Some(slot) = self.shard.take() {
                    let _ = slot
                        .handle()
                        .commands
                        .send(Command::Leave { session: self.id });
                }
                Next::Leave
            }
        }
    }

    /// A token for the same room and identity on the chosen bridge, valid for a minute:
    /// enough to follow the redirect, too short to be worth stealing.
    fn redirect_token(&self, claims: &Claims) -> Result<String, String> {
        let secret = self
            .app
            .config
            .auth
            .keys
            .get(&claims.iss)
            .ok_or_else(|| "the token's key is gone".to_owned())?;
        let c = Claims {
            exp: crate::auth::now_secs() + REDIRECT_TOKEN_SECS,
            nbf: None,
            ..claims.clone()
        };
        crate::auth::mint(&claims.iss, secret, &c)
            .map_err(|e| format!("minting a redirect token: {e:#}"))
    }

    /// The `migrate` for this session of a draining node, or None when no other bridge can
    /// take it now.
    async fn migration(&self) -> Option<ServerMsg> {
        let p = self.placed.as_ref()?;
        let target = self.app.cluster.migration_target(&p.room, &p.region).await;
        let (node, url) = match target {
            Ok(Some(t)) => t,
            Ok(None) => {
                debug!(session = self.id.0, "drain: no bridge to migrate to yet");
                return None;
            }
            Err(e) => {
                debug!(session = self.id.0, error = %e, "drain: migration placement failed");
                return None;
            }
        };
        match self.redirect_token(&p.claims) {
            Ok(token) => {
                debug!(session = self.id.0, bridge = %node, "drain: migrating a participant");
                Some(ServerMsg::Migrate {
                    url,
                    token,
                    bridge: node.0,
                })
            }
            Err(why) => {
                tracing::warn!(session = self.id.0, %why, "drain: no token to migrate with");
                None
            }
        }
    }

    fn check_sdp(&self, sdp: &str) -> Option<Next> {
        let max = self.app.config.limits.max_sdp_bytes;
        (sdp.len() > max).then(|| {
            Next::Close(
                ErrorCode::BadSdp,
                format!("SDP of {} bytes; at most {max} allowed", sdp.len()),
            )
        })
    }

    fn command(&self, cmd: Command) -> Next {
        match self.shard.as_ref().map(|s| s.handle().commands.send(cmd)) {
            Some(Ok(())) => Next::Continue,
            Some(Err(_)) => {
                Next::Close(ErrorCode::Internal, "the media shard is not running".into())
            }
            // Commands come after the join, which picks the shard.
            None => Next::Close(
                ErrorCode::Internal,
                "no media shard for this session".into(),
            ),
        }
    }

    async fn join(
        &mut self,
        room: String,
        token: String,
        name: Option<String>,
        region: Option<String>,
        redirected: bool,
    ) -> Next {
        if self.app.draining() {
            return Next::Close(
                ErrorCode::Draining,
                "this bridge takes no new participants".into(),
            );
        }
        if room.is_empty() || room.chars().count() > 128 {
            return Next::Close(
                ErrorCode::BadMessage,
                "room must be 1-128 characters".into(),
            );
        }
        // Before the token check, which is the costly part of a join.
        if let Some(ip) = self.peer_ip {
            let allowed = self
                .app
                .join_rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .allow(Instant::now(), ip);
            if !allowed {
                let rate = self.app.config.limits.max_joins_per_ip_per_sec;
                return self.over_limit(
                    limits::JOIN_RATE,
                    format!("more than {rate} joins a second from {ip}"),
                );
            }
        }
        let claims = match self.app.verifier.verify(&token) {
            Ok(c) => c,
            Err(TokenError::Expired) => {
                return Next::Close(
                    ErrorCode::TokenExpired,
                    "the token is expired or not yet valid".into(),
                );
            }
            Err(TokenError::Invalid(why)) => return Next::Close(ErrorCode::Unauthorized, why),
        };
        if claims.room != room {
            return Next::Close(ErrorCode::WrongRoom, "the token is for another room".into());
        }
        if claims.identity.is_empty() || claims.identity.chars().count() > 128 {
            return Next::Close(
                ErrorCode::Unauthorized,
                "the token's identity must be 1-128 characters".into(),
            );
        }
        let name = name
            .or_else(|| claims.name.clone())
            .unwrap_or_else(|| claims.identity.clone());
        if name.chars().count() > 64 {
            return Next::Close(ErrorCode::BadMessage, "name is over 64 characters".into());
        }
        if region.as_ref().is_some_and(|r| r.chars().count() > 64) {
            return Next::Close(ErrorCode::BadMessage, "region is over 64 characters".into());
        }
        let region = region
            .or_else(|| self.lb_region.clone())
            .unwrap_or_else(|| self.app.cluster.region().to_owned());
        let conference = match self.app.cluster.place(&room, &region, redirected).await {
            Ok(Placement::Here(id)) => id,
            Ok(Placement::Elsewhere { node, url }) => {
                return match self.redirect_token(&claims) {
                    Ok(token) => {
                        self.app.metrics.cluster.redirects.inc();
                        debug!(session = self.id.0, bridge = %node, "redirecting a join");
                        Next::Redirect(ServerMsg::Redirect {
                            url,
                            token,
                            bridge: node.0,
                        })
                    }
                    Err(why) => Next::Close(ErrorCode::Internal, why),
                };
            }
            // The rule when the directory cannot be reached (docs/cluster.md): refuse the
            // join clearly rather than guess an id another bridge may give another room.
            Err(e) => return Next::Close(ErrorCode::Unavailable, e.to_string()),
        };
        if self.app.draining() {
            return Next::Close(
                ErrorCode::Draining,
                "this bridge takes no new participants".into(),
            );
        }
        let max = self.app.config.limits.max_participants_per_node;
        let Some(slot) = NodeSlot::take(&self.app.node_participants, max) else {
            self.app
                .metrics
                .limit_hits
                .with_label_values(&[limits::NODE_PARTICIPANTS])
                .inc();
            return Next::Close(
                ErrorCode::NodeFull,
                format!("this bridge has {max} participants, its most"),
            );
        };
        let max = self.app.config.limits.max_participants;
        let placed = match self.app.shards.place(conference, &claims.identity, max) {
            Ok(p) => p,
            Err(PlaceError::Full(n)) => {
                return Next::Close(
                    ErrorCode::RoomFull,
                    format!("the conference has {n} participants, the maximum"),
                );
            }
        };
        self.node_slot = Some(slot);
        self.shard = Some(placed);
        self.joined = true;
        self.can_publish = claims.can_publish;
        tracing::Span::current().record("room", room.as_str());
        self.placed = Some(Placed {
            room: room.clone(),
            region,
            claims: claims.clone(),
        });
        self.command(Command::Join {
            session: self.id,
            conference,
            room,
            identity: claims.identity,
            name,
            can_publish: claims.can_publish,
            can_subscribe: claims.can_subscribe,
            events: self.events.clone(),
            started: Instant::now(),
        })
    }
}
