//! `kaskade-netsim`: a UDP impairment relay in front of a port, for tests and scripts.
//!
//! It prints one line on stderr once it listens (`kaskade-netsim listening on ADDR ...`), and its
//! counters as one JSON line on stdout when it exits (SIGINT, SIGTERM or `--duration-secs`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use kaskade_netsim::{
    GilbertElliott, ImpairmentConfig, JitterDistribution, RateLimit, Relay, RelayOptions,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
enum Dist {
    #[default]
    Uniform,
    Normal,
}

const REORDER_MS: f64 = kaskade_netsim::DEFAULT_REORDER_DELAY.as_millis() as f64;

/// One direction's flags, whichever prefix they had.
#[derive(Debug, Clone, PartialEq)]
struct Raw {
    loss: f64,
    burst_enter: Option<f64>,
    burst_exit: Option<f64>,
    burst_loss_good: f64,
    burst_loss_bad: f64,
    delay_ms: f64,
    jitter_ms: f64,
    jitter_dist: Dist,
    reorder: f64,
    reorder_ms: f64,
    rate_kbps: Option<f64>,
    queue_bytes: Option<usize>,
    rate_burst_bytes: Option<usize>,
}

fn millis(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v / 1000.0)
        .with_context(|| format!("{name}: {v} is not a duration in ms"))
}

impl Raw {
    fn to_config(&self, prefix: &str, dir: &str) -> Result<ImpairmentConfig> {
        let burst = match (self.burst_enter, self.burst_exit) {
            (None, None) => None,
            (Some(enter), Some(exit)) => Some(GilbertElliott {
                p_good_to_bad: enter,
                p_bad_to_good: exit,
                loss_good: self.burst_loss_good,
                loss_bad: self.burst_loss_bad,
            }),
            _ => bail!("--{prefix}burst-enter and --{prefix}burst-exit go together"),
        };
        let rate = match self.rate_kbps {
            None => None,
            Some(kbps) => {
                if !(kbps.is_finite() && kbps > 0.0) {
                    bail!("--{prefix}rate-kbps must be positive");
                }
                let mut r = RateLimit::new((kbps * 1000.0).round() as u64);
                if let Some(q) = self.queue_bytes {
                    r.queue_bytes = q;
                }
                if let Some(b) = self.rate_burst_bytes {
                    r.burst_bytes = b;
                }
                Some(r)
            }
        };
        let cfg = ImpairmentConfig {
            loss: self.loss,
            burst,
            delay: millis("delay", self.delay_ms)?,
            jitter: millis("jitter", self.jitter_ms)?,
            jitter_distribution: match self.jitter_dist {
                Dist::Uniform => JitterDistribution::Uniform,
                Dist::Normal => JitterDistribution::Normal,
            },
            reorder: self.reorder,
            reorder_delay: millis("reorder hold", self.reorder_ms)?,
            rate,
        };
        cfg.validate().with_context(|| format!("{dir} flags"))?;
        Ok(cfg)
    }
}

/// Declares the flags of one direction under a prefix. A macro because clap's derive cannot
/// flatten the same struct twice with different flag names.
macro_rules! impairment_args {
    ($name:ident, $prefix:literal, $heading:literal, $dir:literal) => {
        #[derive(clap::Args, Debug, Clone)]
        #[command(next_help_heading = $heading)]
        struct $name {
            #[arg(id = concat!($prefix, "loss"), long = concat!($prefix, "loss"),
                  value_name = "P", default_value_t = 0.0,
                  help = concat!("Random loss probability per datagram, ", $dir))]
            loss: f64,
            #[arg(id = concat!($prefix, "burst-enter"), long = concat!($prefix, "burst-enter"),
                  value_name = "P",
                  help = concat!("Burst loss (Gilbert-Elliott): p(good -> bad) per datagram, ", $dir))]
            burst_enter: Option<f64>,
            #[arg(id = concat!($prefix, "burst-exit"), long = concat!($prefix, "burst-exit"),
                  value_name = "P",
                  help = concat!("Burst loss: p(bad -> good) per datagram; mean burst = 1/P, ", $dir))]
            burst_exit: Option<f64>,
            #[arg(id = concat!($prefix, "burst-loss-good"),
                  long = concat!($prefix, "burst-loss-good"), value_name = "P",
                  default_value_t = 0.0, help = "Burst loss: loss probability in the good state")]
            burst_loss_good: f64,
            #[arg(id = concat!($prefix, "burst-loss-bad"),
                  long = concat!($prefix, "burst-loss-bad"), value_name = "P",
                  default_value_t = 1.0, help = "Burst loss: loss probability in the bad state")]
            burst_loss_bad: f64,
            #[arg(id = concat!($prefix, "delay-ms"), long = concat!($prefix, "delay-ms"),
                  value_name = "MS", default_value_t = 0.0,
                  help = concat!("Fixed one-way delay, ", $dir))]
            delay_ms: f64,
            #[arg(id = concat!($prefix, "jitter-ms"), long = concat!($prefix, "jitter-ms"),
                  value_name = "MS", default_value_t = 0.0,
                  help = "Jitter bound: delay varies within +-MS (never reorders by itself)")]
            jitter_ms: f64,
            #[arg(id = concat!($prefix, "jitter-dist"), long = concat!($prefix, "jitter-dist"),
                  value_enum, default_value_t = Dist::Uniform, help = "Jitter distribution")]
            jitter_dist: Dist,
            #[arg(id = concat!($prefix, "reorder"), long = concat!($prefix, "reorder"),
                  value_name = "P", default_value_t = 0.0,
                  help = "Probability that a datagram is held back so later ones overtake it")]
            reorder: f64,
            #[arg(id = concat!($prefix, "reorder-ms"), long = concat!($prefix, "reorder-ms"),
                  value_name = "MS", default_value_t = REORDER_MS,
                  help = "Extra hold of a reordered datagram")]
            reorder_ms: f64,
            #[arg(id = concat!($prefix, "rate-kbps"), long = concat!($prefix, "rate-kbps"),
                  value_name = "KBPS",
                  help = concat!("Rate cap (token bucket, payload kbit/s), ", $dir))]
            rate_kbps: Option<f64>,
            #[arg(id = concat!($prefix, "queue-bytes"), long = concat!($prefix, "queue-bytes"),
                  value_name = "BYTES",
                  help = "Rate cap queue; datagrams beyond it are dropped [default: 100 ms at the rate]")]
            queue_bytes: Option<usize>,
            #[arg(id = concat!($prefix, "rate-burst-bytes"),
                  long = concat!($prefix, "rate-burst-bytes"), value_name = "BYTES",
                  help = "Rate cap bucket depth [default: 1500]")]
            rate_burst_bytes: Option<usize>,
        }

        impl $name {
            fn raw(&self) -> Raw {
                Raw {
                    loss: self.loss,
                    burst_enter: self.burst_enter,
                    burst_exit: self.burst_exit,
                    burst_loss_good: self.burst_loss_good,
                    burst_loss_bad: self.burst_loss_bad,
                    delay_ms: self.delay_ms,
                    jitter_ms: self.jitter_ms,
                    jitter_dist: self.jitter_dist,
                    reorder: self.reorder,
                    reorder_ms: self.reorder_ms,
                    rate_kbps: self.rate_kbps,
                    queue_bytes: self.queue_bytes,
                    rate_burst_bytes: self.rate_burst_bytes,
                }
            }
        }
    };
}

impairment_args!(
    DownArgs,
    "",
    "Downlink (upstream -> client)",
    "upstream -> client"
);
impairment_args!(
    UpArgs,
    "up-",
    "Uplink (client -> upstream; or use --symmetric)",
    "client -> upstream"
);

/// UDP impairment relay: clients send to --listen, traffic goes on to --upstream from one socket
/// per client, replies come back. The plain flags impair the downlink (upstream -> client), the
/// --up-* flags the uplink (client -> upstream); --symmetric applies the plain flags both ways.
#[derive(Parser, Debug)]
#[command(name = "kaskade-netsim", version)]
struct Cli {
    /// Address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address traffic is relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Apply the downlink flags to the uplink too (with its own random stream).
    #[arg(long)]
    symmetric: bool,
    /// Seed of the random decisions [default: random]; printed in the exit line.
    #[arg(long)]
    seed: Option<u64>,
    /// Exit after this long.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Close a client mapping after this long without traffic.
    #[arg(long, default_value_t = 120.0)]
    idle_timeout_secs: f64,
    /// Count RTP retransmissions (repeated SSRC and sequence number) both ways; the RTP header
    /// starts this many bytes into a datagram (0 for SRTP, 24 behind a plaintext Octo header).
    #[arg(long)]
    rtp_offset: Option<usize>,
    #[command(flatten)]
    down: DownArgs,
    #[command(flatten)]
    up: UpArgs,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, not anyhow's debug form with a backtrace.
            eprintln!("kaskade-netsim: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();

    let down_raw = cli.down.raw();
    let up_raw = cli.up.raw();
    let down = down_raw.to_config("", "downlink")?;
    let up = if cli.symmetric {
        if up_raw != UpArgs::default_raw() {
            bail!("--symmetric and --up-* flags exclude each other");
        }
        down.clone()
    } else {
        up_raw.to_config("up-", "uplink (--up-*)")?
    };
    let seed = cli.seed.unwrap_or_else(rand::random);
    let idle = Duration::try_from_secs_f64(cli.idle_timeout_secs)
        .context("--idle-timeout-secs is not a duration")?;
    let duration = cli
        .duration_secs
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--duration-secs is not a duration")?;

    let relay = Relay::start_with(RelayOptions {
        down,
        up,
        seed,
        idle_timeout: idle,
        rtp_offset: cli.rtp_offset,
        ..RelayOptions::new(cli.listen, cli.upstream)
    })
    .await
    .with_context(|| format!("cannot start the relay on {}", cli.listen))?;
    let started = Instant::now();
    eprintln!(
        "kaskade-netsim listening on {} upstream {} seed {seed}",
        relay.local_addr(),
        cli.upstream
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let timeout = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = timeout => {}
    }

    let local = relay.local_addr();
    let stats = relay.stop().await;
    println!(
        "{{\"seed\":{seed},\"listen\":\"{local}\",\"upstream\":\"{}\",\"elapsed_secs\":{:.3},{}}}",
        cli.upstream,
        started.elapsed().as_secs_f64(),
        stats.json_fields()
    );
    Ok(())
}

impl UpArgs {
    /// The uplink flags as they are when none is given.
    fn default_raw() -> Raw {
        Raw {
            loss: 0.0,
            burst_enter: None,
            burst_exit: None,
            burst_loss_good: 0.0,
            burst_loss_bad: 1.0,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            jitter_dist: Dist::Uniform,
            reorder: 0.0,
            reorder_ms: REORDER_MS,
            rate_kbps: None,
            queue_bytes: None,
            rate_burst_bytes: None,
        }
    }
}
