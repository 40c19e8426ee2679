//! `kaskade`: the cascading SFU node, its tokens, and its load tester.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kaskade_bridge::config::{self, Config, Overrides};
use kaskade_bridge::{Node, auth};
use kaskade_loadtest::cli::LoadtestArgs;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "kaskade",
    version,
    about = "kaskade: a cascading SFU for WebRTC conferences"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a bridge.
    Serve(ServeArgs),
    /// Mint an access token.
    Token(TokenArgs),
    /// Load a node with many synthetic WebRTC clients and report what they received
    /// (docs/loadtest.md).
    Loadtest(LoadtestArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "KASKADE_CONFIG")]
    config: Option<PathBuf>,
    /// Dev mode: built-in API key, token endpoint for the demo page.
    #[arg(long, env = "KASKADE_DEV")]
    dev: bool,
    #[arg(long, env = "KASKADE_HTTP_PORT")]
    http_port: Option<u16>,
    #[arg(long, env = "KASKADE_HTTP_BIND_IP")]
    http_bind_ip: Option<IpAddr>,
    /// The one UDP port of all WebRTC media.
    #[arg(long, env = "KASKADE_MEDIA_PORT")]
    media_port: Option<u16>,
    #[arg(long, env = "KASKADE_BIND_IP")]
    bind_ip: Option<IpAddr>,
    /// The IP put in our ICE candidate (the public IP behind a 1:1 NAT).
    #[arg(long, env = "KASKADE_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    #[arg(long, env = "KASKADE_API_KEY")]
    api_key: Option<String>,
    #[arg(long, env = "KASKADE_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    #[arg(long, env = "KASKADE_MAX_PARTICIPANTS")]
    max_participants: Option<usize>,
    /// Media threads, each with a socket on the media port; 0: one per core (media.shards).
    #[arg(long, env = "KASKADE_SHARDS")]
    shards: Option<usize>,
    /// Participants of one conference a shard takes before others join on another shard; 0:
    /// never (media.spread_at).
    #[arg(long, env = "KASKADE_SPREAD_AT")]
    spread_at: Option<usize>,
    /// "text" or "json".
    #[arg(long, env = "KASKADE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. "info" or "info,kaskade_bridge=debug".
    #[arg(long, env = "KASKADE_LOG")]
    log_level: Option<String>,
    #[arg(long, env = "KASKADE_BRIDGE_ID")]
    bridge_id: Option<String>,
    #[arg(long, env = "KASKADE_REGION")]
    region: Option<String>,
    /// The Octo UDP port (bridge-to-bridge), used when peers are configured.
    #[arg(long, env = "KASKADE_OCTO_PORT")]
    octo_port: Option<u16>,
    /// The cluster secret of the Octo links.
    #[arg(long, env = "KASKADE_OCTO_SECRET", hide_env_values = true)]
    octo_secret: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long, env = "KASKADE_API_KEY", default_value = config::DEV_API_KEY)]
    api_key: String,
    #[arg(long, env = "KASKADE_API_SECRET", default_value = config::DEV_API_SECRET, hide_env_values = true)]
    api_secret: String,
    /// An admin token for the server API (/admin/v1) instead of a participant's: it names no
    /// room; `--identity` (optional) names who it is for.
    #[arg(long, conflicts_with_all = ["room", "name", "no_publish", "no_subscribe"])]
    admin: bool,
    #[arg(long, required_unless_present = "admin")]
    room: Option<String>,
    #[arg(long, required_unless_present = "admin")]
    identity: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Validity in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    #[arg(long)]
    no_publish: bool,
    #[arg(long)]
    no_subscribe: bool,
}

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Loadtest(a) => {
            init_loadtest_logging()?;
            // Non-zero when a client failed to connect or ended on an error.
            Ok(if kaskade_loadtest::cli::main(a)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Token(a) => {
            if a.admin {
                let t = auth::mint_admin(&a.api_key, &a.api_secret, a.identity, a.ttl)?;
                println!("{t}");
                return Ok(ExitCode::SUCCESS);
            }
            let claims = auth::Claims {
                iss: String::new(),
                identity: a.identity.unwrap_or_default(),
                room: a.room.unwrap_or_default(),
                name: a.name,
                can_publish: !a.no_publish,
                can_subscribe: !a.no_subscribe,
                exp: auth::now_secs() + a.ttl,
                nbf: None,
            };
            println!("{}", auth::mint(&a.api_key, &a.api_secret, &claims)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve(a) => serve(a).map(|()| ExitCode::SUCCESS),
    }
}

/// The load clients log warnings only (`RUST_LOG` overrides): `rtc` warns once per SRTP replay
/// it drops, which under loss would bury the progress line, so it is quiet below errors.
fn init_loadtest_logging() -> Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("warn,rtc=error"))
        .context("log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

fn serve(a: ServeArgs) -> Result<()> {
    let overrides = Overrides {
        dev: a.dev,
        http_port: a.http_port,
        http_bind_ip: a.http_bind_ip,
        media_port: a.media_port,
        media_bind_ip: a.bind_ip,
        advertise_ip: a.advertise_ip,
        api_key: a.api_key,
        api_secret: a.api_secret,
        max_participants: a.max_participants,
        shards: a.shards,
        spread_at: a.spread_at,
        log_format: a.log_format,
        log_level: a.log_level,
        bridge_id: a.bridge_id,
        region: a.region,
        octo_port: a.octo_port,
        octo_secret: a.octo_secret,
    };
    let config = Config::load(a.config.as_deref(), overrides)?;
    init_logging(&config)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the signaling runtime")?;
    rt.block_on(async move {
        let node = Node::start(config).await?;
        // SIGTERM (what orchestrators send) drains: no new participants, exit when empty or
        // at drain.timeout_secs. Ctrl-C stops at once.
        let cluster = node.cluster();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            while term.recv().await.is_some() {
                cluster.start_drain();
            }
        });
        node.serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}

fn init_logging(config: &Config) -> Result<()> {
    let filter = EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let json = match config.log.format.as_str() {
        "json" => true,
        "text" => false,
        // "auto": people read a terminal, collectors (Loki, Elasticsearch) read JSON.
        _ => !std::io::IsTerminal::is_terminal(&std::io::stdout()),
    };
    let r = if json {
        // One object per line: the event's fields at the top level, the enclosing span's
        // (bridge, session, room, participant) under "span".
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    r.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}
