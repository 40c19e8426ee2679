//! What the kaskade benchmarks share: the settings read from the environment, the load
//! generator's set-up, the figures of one measured run and the markdown table they print. The
//! runs themselves are the `[[bench]]` targets (`forwarding.rs`, `vs_janus.rs`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaskade_loadtest::MediaProfile;
use kaskade_loadtest::client::{ClientHandle, Report};
use kaskade_loadtest::procfs::{self, UdpErrors};
use kaskade_loadtest::stats::Histogram;

/// The SFU's CPU and the load generator's, when pinning.
pub const SFU_CPU: &str = "0";
pub const GENERATOR_CPU: &str = "1";
/// Subscribers connecting at once: the SFU's signaling and DTLS handshakes share its one core
/// with its forwarding, so joins come in waves rather than as one storm of N handshakes.
pub const JOIN_WAVE: usize = 10;
/// How long a client may take to connect (and a subscriber to receive media).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the forwarding benchmark, from the environment (docs/benchmarks.md).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `kaskade` binary (`KASKADE_BIN`, default target/release/kaskade, built by
    /// `cargo build --release -p kaskade`).
    pub bin: PathBuf,
    /// Subscriber counts, one run each (`BENCH_SUBSCRIBERS`, default "10,50,100").
    pub subscribers: Vec<usize>,
    /// `BENCH_WARMUP_SECS`, default 3.
    pub warmup: Duration,
    /// `BENCH_MEASURE_SECS`, default 10.
    pub measure: Duration,
    /// Video packets per second of the publisher (`BENCH_VIDEO_PPS`, default 250: 720p).
    pub video_pps: u32,
    /// Pin the node to CPU 0 and the load generator to CPU 1 (`BENCH_PIN`, default 1 when the
    /// machine has two CPUs or more).
    pub pin: bool,
    /// Runs per subscriber count (`BENCH_REPEAT`, default 1); the summary shows the median.
    pub repeat: usize,
}

impl Settings {
    pub fn from_env() -> Result<Settings> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let bin = match get("KASKADE_BIN") {
            Some(p) => PathBuf::from(p),
            None => default_bin(),
        };
        let subscribers = parse_list(&get("BENCH_SUBSCRIBERS").unwrap_or("10,50,100".into()))?;
        let secs = |k: &str, d: f64| -> Result<Duration> {
            match get(k) {
                Some(v) => {
                    let s: f64 = v.trim().parse().with_context(|| format!("{k}={v}"))?;
                    if !(s.is_finite() && s > 0.0) {
                        bail!("{k} must be positive, not {v}");
                    }
                    Ok(Duration::from_secs_f64(s))
                }
                None => Ok(Duration::from_secs_f64(d)),
            }
        };
        let video_pps = match get("BENCH_VIDEO_PPS") {
            Some(v) => v
                .trim()
                .parse()
                .with_context(|| format!("BENCH_VIDEO_PPS={v}"))?,
            None => 250,
        };
        let repeat = match get("BENCH_REPEAT") {
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => bail!("BENCH_REPEAT must be a count above 0, not {v:?}"),
            },
            None => 1,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pin = match get("BENCH_PIN").as_deref().map(str::trim) {
            Some("0") | Some("false") | Some("no") => false,
            Some(_) => true,
            None => cpus >= 2,
        };
        Ok(Settings {
            bin,
            subscribers,
            warmup: secs("BENCH_WARMUP_SECS", 3.0)?,
            measure: secs("BENCH_MEASURE_SECS", 10.0)?,
            video_pps,
            pin,
            repeat,
        })
    }
}

impl Settings {
    /// The publisher's media: 720p-like, at `video_pps`.
    pub fn profile(&self) -> MediaProfile {
        MediaProfile {
            video_pps: self.video_pps,
            ..MediaProfile::hd()
        }
    }

    /// Where the processes run, for the opening line; `sfu` names the process under test.
    pub fn pinning(&self, sfu: &str) -> String {
        if self.pin {
            format!("{sfu} CPU {SFU_CPU}, load generator CPU {GENERATOR_CPU}")
        } else {
            "off".into()
        }
    }

    /// The load generator's runtime: one thread, so it gets exactly one core (pinned to
    /// [`GENERATOR_CPU`] with `pin`), the SFU the other.
    pub fn generator_runtime(&self) -> Result<tokio::runtime::Runtime> {
        if self.pin {
            // Before any thread exists, so every thread of this process inherits the CPU.
            pin_self(GENERATOR_CPU)?;
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the load generator runtime")
    }
}

/// Whether `cargo bench` runs this target: it passes `--bench`. `cargo test --all-targets`
/// runs bench targets without it, and a test run must not start a minute of load on a shared
/// machine, so `name` then says it skipped.
pub fn bench_requested(name: &str) -> bool {
    if std::env::args().any(|a| a == "--bench") {
        return true;
    }
    println!("{name} benchmark: skipped (run it with `cargo bench`)");
    false
}

/// Sends the clients' own warnings (rtc's ICE/DTLS trouble) to `file_name` in the temporary
/// directory and returns its path: on the terminal they would bury the results, and they are
/// what explains a client that never connects.
pub fn log_clients_to(file_name: &str) -> Result<PathBuf> {
    let client_log = std::env::temp_dir().join(file_name);
    let file = std::fs::File::create(&client_log)
        .with_context(|| format!("creating {}", client_log.display()))?;
    // rtc warns once per SRTP replay it drops; under a retransmission storm that is millions
    // of lines, so that one target is quiet unless RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,rtc::peer_connection::handler=error")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(client_log)
}

/// The publisher's rates, for the opening line.
pub fn describe_publisher(profile: &MediaProfile) -> String {
    format!(
        "publisher {} pps ({} audio x {} B + {} video x {} B at {} fps)",
        profile.total_pps(),
        profile.audio_pps,
        profile.audio_payload,
        profile.video_pps,
        profile.video_payload,
        profile.video_fps,
    )
}

/// Waits until the publisher reports a connected leg, failing on its error, its end or
/// [`CONNECT_TIMEOUT`].
pub async fn publisher_connected(publisher: &mut ClientHandle) -> Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline.into(), publisher.reports.recv()).await {
            Ok(Some(Report::Connected(_))) => return Ok(()),
            Ok(Some(Report::Failed(e))) => bail!("the publisher failed: {e}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("the publisher ended"),
            Err(_) => bail!("the publisher did not connect in {CONNECT_TIMEOUT:?}"),
        }
    }
}

/// target/release/kaskade of this workspace (benches/ sits at the workspace root).
fn default_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("..").join("target"));
    target.join("release").join("kaskade")
}

fn parse_list(s: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .with_context(|| format!("BENCH_SUBSCRIBERS: {p:?} is not a count"))
        })
        .collect::<Result<_>>()?;
    if v.is_empty() || v.contains(&0) {
        bail!("BENCH_SUBSCRIBERS needs counts above 0, e.g. \"10,50,100\"");
    }
    Ok(v)
}

/// Raw figures of one measurement window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub subscribers: usize,
    pub seconds: f64,
    /// Packets the publisher wrote (audio + video).
    pub sent: u64,
    /// Packets all subscribers received.
    pub received: u64,
    /// Packets the subscribers should have received within the spans they saw.
    pub expected: u64,
    pub lost: u64,
    /// `kaskade_rtp_forwarded_total` over the window.
    pub forwarded_metric: u64,
    /// CPU seconds of the node and of the load generator.
    pub node_cpu: f64,
    pub generator_cpu: f64,
    /// Busy CPU seconds of the whole machine (all CPUs), to see what else ran meanwhile.
    pub machine_cpu: f64,
    pub latency_p50_us: Option<u32>,
    pub latency_p99_us: Option<u32>,
    pub rss_idle_kib: u64,
    pub rss_loaded_kib: u64,
    /// Datagrams the kernel dropped for full socket buffers, machine-wide, over the window.
    pub udp_rcvbuf_drops: u64,
    pub udp_sndbuf_drops: u64,
    /// `kaskade_udp_send_errors_total` over the window (the node's sends refused, e.g. a
    /// full socket buffer: the node does not wait for room).
    pub node_send_errors: u64,
    /// `kaskade_udp_packets_in_total` over the window: the publisher's media plus every
    /// receiver's RTCP.
    pub node_packets_in: u64,
}

impl Window {
    pub fn participants(&self) -> usize {
        self.subscribers + 1
    }

    /// Egress packets per second, as counted by the receivers.
    pub fn egress_pps(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    pub fn metric_pps(&self) -> f64 {
        self.forwarded_metric as f64 / self.seconds
    }

    /// Forwarded (received) packets per CPU-second of the node.
    pub fn pps_per_cpu(&self) -> f64 {
        if self.node_cpu > 0.0 {
            self.received as f64 / self.node_cpu
        } else {
            0.0
        }
    }

    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        100.0 * self.lost as f64 / self.expected as f64
    }

    /// What the node should have sent: every published packet to every subscriber.
    pub fn ideal_egress(&self) -> u64 {
        self.sent * self.subscribers as u64
    }

    /// Node memory above idle, per participant, in KiB.
    pub fn kib_per_participant(&self) -> f64 {
        self.rss_loaded_kib.saturating_sub(self.rss_idle_kib) as f64 / self.participants() as f64
    }

    /// CPU seconds the rest of the machine took during the window (builds, other tests): more
    /// than a few percent of a core and the figures are disturbed.
    pub fn other_cpu(&self) -> f64 {
        (self.machine_cpu - self.node_cpu - self.generator_cpu).max(0.0)
    }

    /// Other processes took more than 10% of a CPU during the window: pinning keeps the node
    /// and the generator on their own CPUs, not others off them.
    pub fn disturbed(&self) -> bool {
        self.other_cpu() / self.seconds > 0.1
    }

    /// The load generator used most of its core: its figures, not the node's, set the pace.
    pub fn generator_bound(&self) -> bool {
        self.generator_cpu / self.seconds > 0.9
    }

    /// The cost columns every results table has, from the SFU's CPU to the other CPU:
    /// `| `-separated, without the outer bars.
    pub fn cost_cells(&self) -> String {
        let us_per_packet = if self.received > 0 {
            self.node_cpu * 1e6 / self.received as f64
        } else {
            0.0
        };
        format!(
            "{:.0}% | {:.0} | {:.1} | {:.3}% | {} | {} | {:.1} -> {:.1} MiB | {:.0} KiB | {:.0}%{} \
             | {:.0}%",
            100.0 * self.node_cpu / self.seconds,
            self.pps_per_cpu(),
            us_per_packet,
            self.loss_pct(),
            ms(self.latency_p50_us),
            ms(self.latency_p99_us),
            self.rss_idle_kib as f64 / 1024.0,
            self.rss_loaded_kib as f64 / 1024.0,
            self.kib_per_participant(),
            100.0 * self.generator_cpu / self.seconds,
            if self.generator_bound() {
                " (bound)"
            } else {
                ""
            },
            100.0 * self.other_cpu() / self.seconds,
        )
    }
}

/// Per subscriber count, the run with the median forwarding efficiency (pps per node
/// CPU-second): a real run, not a blend of figures from different runs. Disturbed runs (see
/// [`Window::disturbed`]) are left out when the count has an undisturbed one.
pub fn medians(rows: &[Window]) -> Vec<Window> {
    let mut counts: Vec<usize> = Vec::new();
    for w in rows {
        if !counts.contains(&w.subscribers) {
            counts.push(w.subscribers);
        }
    }
    let mut out = Vec::new();
    for n in counts {
        let mut runs: Vec<&Window> = rows.iter().filter(|w| w.subscribers == n).collect();
        if runs.iter().any(|w| !w.disturbed()) {
            runs.retain(|w| !w.disturbed());
        }
        runs.sort_by(|a, b| a.pps_per_cpu().total_cmp(&b.pps_per_cpu()));
        if let Some(w) = runs.get(runs.len() / 2) {
            out.push((*w).clone());
        }
    }
    out
}

pub fn ms(us: Option<u32>) -> String {
    us.map_or("-".into(), |u| format!("{:.2} ms", f64::from(u) / 1000.0))
}

/// Pins this process (the load generator) to `cpus`, so the SFU under test keeps its own.
pub fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin the load generator; BENCH_PIN=0 skips it")?;
    if !status.success() {
        bail!("taskset failed: {status}");
    }
    Ok(())
}

/// CPU and UDP counters at one instant; two of them bracket a measuring window.
pub struct Sample {
    udp: UdpErrors,
    node_cpu: Duration,
    generator_cpu: Duration,
    machine_cpu: Duration,
    at: Instant,
}

impl Sample {
    /// The counters now, `pid` being the SFU's process.
    pub fn take(pid: &str) -> Result<Sample> {
        Ok(Sample {
            udp: procfs::udp_errors()?,
            node_cpu: procfs::cpu_time(pid)?,
            generator_cpu: procfs::cpu_time("self")?,
            machine_cpu: procfs::machine_cpu()?.0,
            at: Instant::now(),
        })
    }
}

/// What a set of subscribers received since their counters were last taken.
#[derive(Default)]
pub struct Received {
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub latencies: Histogram,
}

impl Received {
    pub fn take(subs: &[ClientHandle]) -> Received {
        let mut out = Received::default();
        for s in subs {
            let r = s.stats.take_received();
            out.received += r.count(None).packets;
            out.expected += r.expected();
            out.lost += r.lost();
            out.latencies.merge(&r.latency_us);
        }
        out
    }
}

/// Once `subs` all receive (after `joined_in`): says so, warms up for the settings' warm-up,
/// then discards the warm-up's counters: the measuring window starts.
pub async fn warm_up(
    settings: &Settings,
    joined_in: Duration,
    publisher: &ClientHandle,
    subs: &[ClientHandle],
) {
    eprintln!(
        "  {} subscribers receiving after {:.1} s; warming up",
        subs.len(),
        joined_in.as_secs_f64()
    );
    tokio::time::sleep(settings.warmup).await;
    for s in subs {
        s.stats.take_received();
    }
    publisher.stats.take_sent();
}

/// What one measuring window counted, for [`Window::measured`].
pub struct Counted {
    before: Sample,
    after: Sample,
    /// Packets the publisher wrote.
    sent: u64,
    rx: Received,
}

/// Counts a window of the settings' measuring time: CPU (the SFU's `pid`, this process's, the
/// machine's), UDP drops, what the publisher sent and what `subs` received.
pub async fn count_window(
    settings: &Settings,
    pid: &str,
    publisher: &ClientHandle,
    subs: &[ClientHandle],
) -> Result<Counted> {
    let before = Sample::take(pid)?;
    tokio::time::sleep(settings.measure).await;
    let after = Sample::take(pid)?;
    Ok(Counted {
        before,
        after,
        sent: publisher.stats.take_sent().total().packets,
        rx: Received::take(subs),
    })
}

impl Window {
    /// The figures common to every SFU of one counted window; the node's own counters
    /// (`/metrics`) are the caller's to add.
    pub fn measured(
        subscribers: usize,
        counted: &Counted,
        rss_idle_kib: u64,
        rss_loaded_kib: u64,
    ) -> Window {
        let Counted {
            before,
            after,
            sent,
            rx,
        } = counted;
        let udp = after.udp.since(before.udp);
        Window {
            subscribers,
            seconds: after.at.saturating_duration_since(before.at).as_secs_f64(),
            sent: *sent,
            received: rx.received,
            expected: rx.expected,
            lost: rx.lost,
            node_cpu: after.node_cpu.saturating_sub(before.node_cpu).as_secs_f64(),
            generator_cpu: after
                .generator_cpu
                .saturating_sub(before.generator_cpu)
                .as_secs_f64(),
            machine_cpu: after
                .machine_cpu
                .saturating_sub(before.machine_cpu)
                .as_secs_f64(),
            latency_p50_us: rx.latencies.percentile(50.0),
            latency_p99_us: rx.latencies.percentile(99.0),
            rss_idle_kib,
            rss_loaded_kib,
            udp_rcvbuf_drops: udp.rcvbuf,
            udp_sndbuf_drops: udp.sndbuf,
            ..Window::default()
        }
    }
}

/// The results as a markdown table, one row per window.
pub fn markdown_table(rows: &[Window]) -> String {
    let mut out = String::new();
    out.push_str(
        "| subscribers | egress pps (receivers) | egress pps (/metrics) | node CPU | pps per node CPU-s \
         | us CPU per packet | loss | latency p50 | latency p99 | node RSS idle -> loaded \
         | RSS per participant | load-gen CPU | other CPU |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for w in rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} |\n",
            w.subscribers,
            w.egress_pps(),
            w.metric_pps(),
            w.cost_cells(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_overrides() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.subscribers, vec![10, 50, 100]);
        assert_eq!(s.warmup, Duration::from_secs(3));
        assert_eq!(s.measure, Duration::from_secs(10));
        assert_eq!(s.video_pps, 250);
        assert!(s.bin.ends_with("release/kaskade"));

        let s = Settings::from_lookup(|k| match k {
            "BENCH_SUBSCRIBERS" => Some(" 5, 20 ".into()),
            "BENCH_PIN" => Some("0".into()),
            "KASKADE_BIN" => Some("/x/kaskade".into()),
            "BENCH_MEASURE_SECS" => Some("2.5".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.subscribers, vec![5, 20]);
        assert!(!s.pin);
        assert_eq!(s.bin, PathBuf::from("/x/kaskade"));
        assert_eq!(s.measure, Duration::from_millis(2500));

        for bad in ["", "10,x", "0"] {
            let r = Settings::from_lookup(|k| (k == "BENCH_SUBSCRIBERS").then(|| bad.into()));
            assert!(r.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn window_figures() {
        let w = Window {
            subscribers: 9,
            seconds: 10.0,
            sent: 3000,
            received: 26_000,
            expected: 27_000,
            lost: 1000,
            forwarded_metric: 27_000,
            node_cpu: 2.0,
            generator_cpu: 9.5,
            machine_cpu: 12.0,
            latency_p50_us: Some(1500),
            latency_p99_us: None,
            rss_idle_kib: 10_000,
            rss_loaded_kib: 12_000,
            ..Default::default()
        };
        assert_eq!(w.egress_pps(), 2600.0);
        assert_eq!(w.pps_per_cpu(), 13_000.0);
        assert_eq!(w.ideal_egress(), 27_000);
        assert_eq!(w.kib_per_participant(), 200.0);
        assert!((w.loss_pct() - 3.7037).abs() < 1e-3);
        assert!(w.generator_bound());
        let t = markdown_table(&[w]);
        assert!(t.contains("| 9 | 2600 | 2700 | 20% | 13000 |"), "{t}");
        assert!(t.contains("1.50 ms | - |"), "{t}");
        assert!(t.contains("95% (bound) | 5% |"), "{t}");
    }

    #[test]
    fn median_runs() {
        let run = |n: usize, cpu: f64| Window {
            subscribers: n,
            seconds: 1.0,
            received: 1000,
            node_cpu: cpu,
            ..Default::default()
        };
        let rows = [run(10, 1.0), run(20, 1.0), run(10, 0.5), run(10, 2.0)];
        let m = medians(&rows);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].subscribers, m[0].node_cpu), (10, 1.0));
        assert_eq!(m[1].subscribers, 20);

        // A disturbed run does not count while an undisturbed one exists.
        let mut noisy = run(10, 0.5);
        noisy.machine_cpu = 0.5 + 0.5;
        assert!(noisy.disturbed());
        let m = medians(&[noisy.clone(), run(10, 2.0)]);
        assert_eq!(m[0].node_cpu, 2.0);
        let m = medians(&[noisy]);
        assert_eq!(m[0].node_cpu, 0.5, "all disturbed: the median of all");
    }
}
