//! `kaskade loadtest`: the flags, a progress line while it runs, the table and the JSON.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use kaskade_bridge::config::{DEV_API_KEY, DEV_API_SECRET};

use crate::media::Resolution;
use crate::report::LoadReport;
use crate::run::{LoadConfig, Progress, run};

/// Many WebRTC clients in this process against one node: publishers send Opus-shaped audio and
/// VP8-shaped video at real rates, everyone receives, and the end shows per client the tracks
/// received, bitrate, loss and latency.
#[derive(Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// The node's HTTP base; signaling is <url>/ws (plain HTTP only).
    #[arg(long, env = "KASKADE_URL", default_value = "http://127.0.0.1:7880")]
    pub url: String,
    /// The room, or with --rooms N the prefix of rooms <room>-1 ... <room>-N.
    #[arg(long, default_value = "loadtest")]
    pub room: String,
    /// Number of rooms, each with the publishers and subscribers below.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers of video per room.
    #[arg(long, default_value_t = 1)]
    pub video_publishers: usize,
    /// Publishers of audio per room (publisher i sends audio if i < this, video if i <
    /// --video-publishers: the two overlap).
    #[arg(long, default_value_t = 1)]
    pub audio_publishers: usize,
    /// Receive-only clients per room.
    #[arg(long, default_value_t = 5)]
    pub subscribers: usize,
    /// Load time after the last client started, e.g. 30s, 2m, 1h; 0 runs until Ctrl-C.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Video publishers send rid simulcast: every layer from 180p (q) up to --resolution.
    #[arg(long)]
    pub simulcast: bool,
    /// Video resolution: 180p, 360p or 720p (or low, medium, high): ~150, 500, 2500 kbps.
    #[arg(long, default_value = "720p", value_parser = parse_resolution)]
    pub resolution: Resolution,
    /// Clients started per second.
    #[arg(long, default_value_t = 5.0)]
    pub join_rate: f64,
    /// The API key the tokens are signed for (the node's dev key by default).
    #[arg(long, env = "KASKADE_API_KEY", default_value = DEV_API_KEY)]
    pub api_key: String,
    /// The secret of --api-key: tokens are minted here, HS256.
    #[arg(long, env = "KASKADE_API_SECRET", default_value = DEV_API_SECRET, hide_env_values = true)]
    pub api_secret: String,
    /// Also write the report as JSON to FILE; "-" prints it on stdout (the table then goes
    /// to stderr).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Send every client's media to this UDP address (an impairment relay such as
    /// kaskade-netsim in front of the node's media port) instead of the node's candidate.
    #[arg(long, value_name = "ADDR")]
    pub media_via: Option<std::net::SocketAddr>,
    /// Put this tag (0-255) in bits 8..16 of every published SSRC: the JSON's per-stream
    /// `publisher_tag` then tells which load process a received stream came from.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ssrc_tag: u8,
}

impl LoadtestArgs {
    pub fn config(&self) -> LoadConfig {
        LoadConfig {
            url: self.url.clone(),
            room: self.room.clone(),
            rooms: self.rooms,
            video_publishers: self.video_publishers,
            audio_publishers: self.audio_publishers,
            subscribers: self.subscribers,
            duration: self.duration,
            simulcast: self.simulcast,
            resolution: self.resolution,
            join_rate: self.join_rate,
            api_key: self.api_key.clone(),
            api_secret: self.api_secret.clone(),
            media_via: self.media_via,
            ssrc_tag: self.ssrc_tag,
        }
    }
}

/// `30s`, `2m`, `1h`, `500ms`, or plain seconds (`45`, `2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_resolution(s: &str) -> Result<Resolution, String> {
    Resolution::parse(s)
        .ok_or_else(|| format!("{s:?}: expected 180p, 360p or 720p (low, medium, high)"))
}

/// The status line on stderr: redrawn in place on a terminal every second, a plain line every
/// 5 seconds otherwise (logs, CI).
struct ProgressLine {
    tty: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    fn show(&mut self, p: &Progress) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}", p.line());
            self.drawn = true;
        } else if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            let _ = writeln!(err, "{}", p.line());
            self.last = Some(Instant::now());
        }
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// Runs `kaskade loadtest`; returns whether every client connected and none failed.
pub fn main(args: LoadtestArgs) -> Result<bool> {
    let config = args.config();
    if config.clients() > 2000 {
        bail!(
            "{} clients in one process: split the load over several `kaskade loadtest` runs",
            config.clients()
        );
    }
    // A client holds a WebSocket and up to two UDP sockets.
    let fds = 3 * config.clients() as u64 + 64;
    if let Some(limit) = open_files_limit()
        && limit < fds
    {
        tracing::warn!(
            limit,
            needed = fds,
            "the open files limit is too low for this many clients: raise it (ulimit -n {fds})"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the load runtime")?;
    let mut line = ProgressLine {
        tty: std::io::stderr().is_terminal(),
        last: None,
        drawn: false,
    };
    let quiet = args.quiet;
    let report = rt.block_on(run(
        &config,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
        |p| {
            if !quiet {
                line.show(p);
            }
        },
    ));
    line.finish();
    let report = report?;
    output(&args, &report)?;
    Ok(report.ok)
}

/// The soft limit of open files of this process (Linux `/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&text)
}

fn parse_open_files_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn output(args: &LoadtestArgs, report: &LoadReport) -> Result<()> {
    match args.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            eprint!("{}", report.table());
            println!("{}", report.json());
        }
        Some(path) => {
            print!("{}", report.table());
            std::fs::write(path, report.json() + "\n")
                .with_context(|| format!("writing the JSON report to {}", path.display()))?;
            eprintln!("JSON report: {}", path.display());
        }
        None => print!("{}", report.table()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn open_files() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max processes             95000                95000                processes\n\
                    Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_files_limit(text), Some(1024));
        assert_eq!(
            parse_open_files_limit("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn flags() {
        let a = Cli::try_parse_from(["x"]).expect("defaults").args;
        assert_eq!(a.url, "http://127.0.0.1:7880");
        assert_eq!(
            (
                a.rooms,
                a.video_publishers,
                a.audio_publishers,
                a.subscribers
            ),
            (1, 1, 1, 5)
        );
        assert_eq!(a.resolution, Resolution::High);
        assert!(!a.simulcast && a.json.is_none());
        assert_eq!(a.api_key, DEV_API_KEY);

        let a = Cli::try_parse_from([
            "x",
            "--url",
            "http://10.1.2.3:7880",
            "--room",
            "load",
            "--rooms",
            "3",
            "--video-publishers",
            "2",
            "--audio-publishers",
            "4",
            "--subscribers",
            "20",
            "--duration",
            "1m",
            "--simulcast",
            "--resolution",
            "medium",
            "--join-rate",
            "2.5",
            "--api-key",
            "k",
            "--api-secret",
            "s",
            "--json",
            "-",
        ])
        .expect("flags")
        .args;
        let c = a.config();
        assert_eq!(c.room_names(), vec!["load-1", "load-2", "load-3"]);
        assert_eq!(c.clients(), 3 * (4 + 20));
        assert_eq!(c.duration, Duration::from_secs(60));
        assert!(c.simulcast);
        assert_eq!(c.resolution, Resolution::Medium);
        assert_eq!(c.join_rate, 2.5);
        assert_eq!((c.api_key.as_str(), c.api_secret.as_str()), ("k", "s"));
        assert_eq!(a.json, Some(PathBuf::from("-")));
        assert!(Cli::try_parse_from(["x", "--resolution", "4k"]).is_err());
    }
}
