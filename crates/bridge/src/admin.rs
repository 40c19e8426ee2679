//! The admin API, `/admin/v1` (proto/admin.openapi.yaml is the contract, docs/admin.md the
//! guide): node stats, the cluster's conferences, a conference's participants, and what an
//! operator does to them (kick, mute a track, a message, drain).
//!
//! Authentication: `Authorization: Bearer <admin token>` (`kaskade token --admin`), or HTTP
//! Basic with an API key and secret unless `admin.basic_auth = false`. Every error is JSON,
//! `{"error": {"code", "message"}}`; nothing here touches media but through one shard command.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::info;

use crate::auth::{AdminTokenError, TokenError};
use crate::shard::Command;
use crate::shard::admin::{AdminError, AdminRequest, ParticipantDetail};
use crate::state::AppState;

/// Most conferences one list returns.
const MAX_LIST: usize = 1000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/v1/node", get(node))
        .route("/admin/v1/drain", post(drain))
        .route("/admin/v1/conferences", get(conferences))
        .route(
            "/admin/v1/conferences/{room}/participants",
            get(participants),
        )
        .route(
            "/admin/v1/conferences/{room}/participants/{participant}",
            delete(kick),
        )
        .route(
            "/admin/v1/conferences/{room}/participants/{participant}/tracks/{track}/mute",
            post(mute),
        )
        .route("/admin/v1/conferences/{room}/messages", post(message))
        // The first admin endpoints, kept for existing scripts.
        .route("/admin/conferences", get(local_snapshot))
        .route("/admin/drain", post(drain))
}

/// An error answer: status and `{"error": {"code", "message"}}`.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn shard_stopped() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the media shard has stopped",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"kaskade\""),
            );
        }
        r
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let status = match e {
            AdminError::Remote { .. } => StatusCode::CONFLICT,
            _ => StatusCode::NOT_FOUND,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// Who called: the admin token's subject, or the Basic auth key.
struct Caller(String);

fn authorize(app: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |code, m: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, m);
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized(
            "unauthorized",
            "an admin token (Authorization: Bearer) is required",
        ));
    };
    if let Some(token) = v.strip_prefix("Bearer ") {
        return match app.verifier.verify_admin(token.trim()) {
            Ok(c) => Ok(Caller(c.sub.unwrap_or(c.iss))),
            Err(AdminTokenError::NotAdmin) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token carries no admin grant",
            )),
            Err(AdminTokenError::Token(TokenError::Expired)) => Err(unauthorized(
                "token_expired",
                "the token is expired or not yet valid",
            )),
            Err(AdminTokenError::Token(TokenError::Invalid(why))) => {
                Err(unauthorized("invalid_token", &why))
            }
        };
    }
    if let Some(b64) = v.strip_prefix("Basic ") {
        if !app.config.admin.basic_auth {
            return Err(unauthorized(
                "unauthorized",
                "Basic auth is turned off (admin.basic_auth): use an admin token",
            ));
        }
        return basic_key(app, b64.trim())
            .map(Caller)
            .ok_or_else(|| unauthorized("unauthorized", "wrong API key or secret"));
    }
    Err(unauthorized(
        "unauthorized",
        "Authorization must be Bearer (an admin token) or Basic",
    ))
}

/// The API key whose secret the Basic credentials carry.
fn basic_key(app: &AppState, b64: &str) -> Option<String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (key, secret) = raw.split_once(':')?;
    app.config
        .auth
        .keys
        .get(key)
        .filter(|s| constant_time_eq(s.as_bytes(), secret.as_bytes()))
        .map(|_| key.to_owned())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends one admin request to every shard and waits for the answer of the one holding the
/// room (the others answer that they have no such conference).
async fn ask<T>(
    app: &AppState,
    make: impl Fn(oneshot::Sender<Result<T, AdminError>>) -> AdminRequest,
) -> Result<T, ApiError> {
    let mut all = ask_all(app, make).await?;
    Ok(all.swap_remove(0))
}

/// Sends one admin request to every shard and returns the answers of all that hold the room
/// (a conference spread over shards is held by several), or the refusal that matters.
async fn ask_all<T>(
    app: &AppState,
    make: impl Fn(oneshot::Sender<Result<T, AdminError>>) -> AdminRequest,
) -> Result<Vec<T>, ApiError> {
    let mut waiting = Vec::with_capacity(app.shards.len());
    for shard in app.shards.all() {
        let (tx, rx) = oneshot::channel();
        shard
            .commands
            .send(Command::Admin(make(tx)))
            .map_err(|_| ApiError::shard_stopped())?;
        waiting.push(rx);
    }
    let mut answers = Vec::new();
    let mut refusal = None;
    for rx in waiting {
        match rx.await.map_err(|_| ApiError::shard_stopped())? {
            Ok(answer) => answers.push(answer),
            // A shard without the room says so; the room's own shard says what matters.
            Err(AdminError::NoConference(_)) if refusal.is_some() => {}
            Err(e) => refusal = Some(e),
        }
    }
    if !answers.is_empty() {
        return Ok(answers);
    }
    Err(ApiError::from(refusal.ok_or_else(ApiError::shard_stopped)?))
}

/// One list from the participant lists of the shards that hold a room: each participant
/// once, as the shard it is connected to sees it (with its receive figures).
fn merge_participants(lists: Vec<Vec<ParticipantDetail>>) -> Vec<ParticipantDetail> {
    let mut by_id: std::collections::BTreeMap<String, ParticipantDetail> = Default::default();
    for p in lists.into_iter().flatten() {
        match by_id.get(&p.id) {
            Some(q) if q.local || !p.local => {}
            _ => {
                by_id.insert(p.id.clone(), p);
            }
        }
    }
    by_id.into_values().collect()
}

/// A JSON body into `T`; a malformed one is a 400 naming what is wrong (serde names the field).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            ApiError::bad_request(format!("body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("body: {field}: {}", e.inner()))
        }
    })
}

/// Path parameters, or a 400 (a segment that does not decode, e.g. bad UTF-8).
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(format!("path: {e}")))
}

fn room_ok(room: &str) -> Result<(), ApiError> {
    if room.is_empty() || room.chars().count() > 128 {
        return Err(ApiError::bad_request("room must be 1-128 characters"));
    }
    Ok(())
}

#[derive(Serialize)]
struct NodeStats {
    bridge: String,
    region: String,
    version: &'static str,
    uptime_secs: u64,
    draining: bool,
    stress: f64,
    participants: i64,
    conferences: i64,
    directory: &'static str,
    strategy: &'static str,
    webrtc_legs: usize,
    octo_peers: usize,
}

async fn node(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let snap = app
        .shards
        .snapshot()
        .await
        .ok_or_else(ApiError::shard_stopped)?;
    Ok(axum::Json(NodeStats {
        bridge: app.config.bridge.id.clone(),
        region: app.config.bridge.region.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: app.started.elapsed().as_secs(),
        draining: app.draining(),
        stress: app.metrics.cluster.stress.get(),
        participants: app.metrics.participants.get(),
        conferences: app.metrics.conferences.get(),
        directory: app.cluster.backend(),
        strategy: app.config.cluster.strategy.as_str(),
        webrtc_legs: snap.legs,
        octo_peers: snap.octo_peers.len(),
    })
    .into_response())
}

async fn drain(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = authorize(&app, &headers)?;
    info!(by = %who.0, "drain requested through the admin API");
    app.cluster.start_drain();
    Ok((
        StatusCode::OK,
        axum::Json(serde_json::json!({"draining": true})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ConferenceRow {
    room: String,
    conference_id: u32,
    participants: u32,
    bridges: Vec<BridgeRow>,
}

#[derive(Serialize)]
struct BridgeRow {
    id: String,
    participants: u32,
}

async fn conferences(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST {
        return Err(ApiError::bad_request(format!("limit must be 1-{MAX_LIST}")));
    }
    let list = app.cluster.conferences(limit).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let rows: Vec<ConferenceRow> = list
        .into_iter()
        .map(|c| {
            let mut bridges: Vec<BridgeRow> = c
                .hosts
                .into_iter()
                .map(|(n, p)| BridgeRow {
                    id: n.0,
                    participants: p,
                })
                .collect();
            bridges.sort_by(|a, b| a.id.cmp(&b.id));
            ConferenceRow {
                room: c.room,
                conference_id: c.id,
                participants: bridges.iter().map(|b| b.participants).sum(),
                bridges,
            }
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "conferences": rows })).into_response())
}

async fn participants(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    room: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let room = path(room)?;
    room_ok(&room)?;
    let lists = ask_all(&app, |reply| AdminRequest::Participants {
        room: room.clone(),
        reply,
    })
    .await?;
    let list = merge_participants(lists);
    Ok(axum::Json(serde_json::json!({ "room": room, "participants": list })).into_response())
}

async fn kick(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let who = authorize(&app, &headers)?;
    let (room, participant) = path(p)?;
    room_ok(&room)?;
    ask(&app, |reply| AdminRequest::Kick {
        room: room.clone(),
        participant: participant.clone(),
        reply,
    })
    .await?;
    info!(by = %who.0, room, participant, "participant kicked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    muted: bool,
}

async fn mute(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let who = authorize(&app, &headers)?;
    let (room, participant, track) = path(p)?;
    room_ok(&room)?;
    let b: MuteBody = body(&bytes)?;
    ask(&app, |reply| AdminRequest::Mute {
        room: room.clone(),
        participant: participant.clone(),
        track: track.clone(),
        muted: b.muted,
        reply,
    })
    .await?;
    info!(by = %who.0, room, participant, track, muted = b.muted, "track mute set");
    Ok(axum::Json(serde_json::json!({"track": track, "muted": b.muted})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: String,
}

async fn message(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    room: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let room = path(room)?;
    room_ok(&room)?;
    let b: MessageBody = body(&bytes)?;
    let n = b.text.chars().count();
    if n == 0 || n > 1000 {
        return Err(ApiError::bad_request("text: must be 1-1000 characters"));
    }
    // Each shard of the room tells its own participants.
    let delivered: usize = ask_all(&app, |reply| AdminRequest::Message {
        room: room.clone(),
        text: b.text.clone(),
        reply,
    })
    .await?
    .into_iter()
    .sum();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "delivered": delivered })),
    )
        .into_response())
}

/// `/admin/conferences`: this node's shard as it is (conferences, participants, tracks).
async fn local_snapshot(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let snap = app
        .shards
        .snapshot()
        .await
        .ok_or_else(ApiError::shard_stopped)?;
    Ok(axum::Json(snap).into_response())
}
