//! HTTP: the demo page, the signaling WebSocket, health, metrics, the admin API (admin.rs)
//! and (in dev mode only) a token endpoint for the demo page.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::auth::{self, Claims};
use crate::state::AppState;

/// The signaling WebSocket's read buffer (tungstenite's default is 128 KiB per socket).
const WS_READ_BUFFER: usize = 4096;

pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/ws", get(ws))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes());
    if state.config.dev {
        r = r.route("/api/dev-token", get(dev_token));
    }
    r.with_state(state)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../static/index.html"),
    )
}
async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
}
async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/style.css"),
    )
}

async fn ws(
    ws: WebSocketUpgrade,
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    // Absent only when the router is served without connect info (tests that build it alone).
    let peer_ip = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    // The client's region as the load balancer saw it (bridge selection's second choice,
    // after the join message's own).
    let lb_region = headers
        .get(app.cluster.region_header.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty() && r.len() <= 64)
        .map(str::to_owned);
    // Oversized frames are read (up to 2 MiB, or 4x the limit if larger) so that they get the
    // protocol's `message_too_large` and a clean close rather than a reset; past the cap the
    // session still gets the error, but the close may be lost to the unread data.
    let cap = app
        .config
        .limits
        .max_message_bytes
        .saturating_mul(4)
        .max(2 << 20);
    // tungstenite allocates its read buffer up front, 128 KiB by default: with one socket per
    // participant that was the largest single item of a participant's memory. Signaling
    // messages are a few KB; a larger frame grows the buffer to its length as it is read.
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| crate::signaling::run(socket, app, lb_region, peer_ip))
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    if app.shards.any_stopped() {
        return (StatusCode::SERVICE_UNAVAILABLE, "media shard stopped\n").into_response();
    }
    let draining = app.draining();
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ok" },
        "bridge": app.config.bridge.id,
        "region": app.config.bridge.region,
        "participants": app.metrics.participants.get(),
        "stress": app.metrics.cluster.stress.get(),
        "directory": app.cluster.backend(),
    });
    // 503 while draining, so a load balancer's health check stops sending new sessions here
    // while the calls already on the node go on.
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    name: Option<String>,
}

/// Dev mode only: a token for the demo page, signed with the built-in dev key.
async fn dev_token(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<DevTokenQuery>,
) -> Response {
    let Some(secret) = app.config.auth.keys.get(crate::config::DEV_API_KEY) else {
        return (StatusCode::NOT_FOUND, "not in dev mode\n").into_response();
    };
    let claims = Claims {
        iss: String::new(),
        identity: q.identity,
        room: q.room,
        name: q.name,
        can_publish: true,
        can_subscribe: true,
        exp: auth::now_secs() + 6 * 3600,
        nbf: None,
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    match auth::mint(crate::config::DEV_API_KEY, secret, &claims) {
        Ok(token) => axum::Json(serde_json::json!({
            "token": token,
            "url": format!("ws://{host}/ws"),
        }))
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}
