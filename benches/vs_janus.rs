//! kaskade against Janus: the same 1 -> N workload through each SFU, measured the same way in
//! the same run (docs/benchmarks.md, "kaskade vs Janus").
//!
//! For each N and each SFU: start the SFU as a child process pinned to CPU 0 (the `kaskade`
//! binary, or Janus 1.1 with its VideoRoom plugin through `benches/janus/run-janus.sh`), read
//! its idle RSS, connect one publisher (Opus-like audio 50 pps + 720p-like VP8 250 pps, the
//! probe in every payload) and N subscribers, all real DTLS-SRTP legs on `rtc` from this
//! process pinned to CPU 1 (only the signaling differs: kaskade's WebSocket protocol or
//! Janus's HTTP API), warm up, then measure a window: packets all subscribers received, the
//! SFU process's CPU time (every thread, /proc/<pid>/stat), loss by probe index gaps, one-way
//! latency, RSS. The two SFUs alternate within every round, the first one alternating between
//! rounds, and the summary shows, per SFU and N, the median run by packets per CPU-second.
//!
//! Janus runs twice: as installed (one media thread per handle, its default) and with
//! `event_loops = 1` (one media thread for every handle, like kaskade's one shard thread; on
//! one CPU that is Janus's best configuration).
//!
//! `cargo build --release -p kaskade && cargo bench -p kaskade-benches --bench vs_janus`
//! Janus: `apt-get install -y janus` (Debian's 1.1.2); without it the bench runs kaskade alone
//! and says so. Settings as the forwarding bench (`kaskade_benches::Settings`), with other
//! defaults: `BENCH_SUBSCRIBERS=10,50`, `BENCH_REPEAT=3`; `BENCH_SFUS=kaskade,janus,janus:1`
//! picks the SFUs (`janus:N`: Janus with `event_loops = N`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaskade_benches::{
    CONNECT_TIMEOUT, JOIN_WAVE, SFU_CPU, Settings, Window, bench_requested, count_window,
    describe_publisher, log_clients_to, medians, publisher_connected, warm_up,
};
use kaskade_loadtest::client::janus::{
    JanusOptions, JanusRole, JanusServer, JanusSpec, default_script, spawn_janus_client,
};
use kaskade_loadtest::client::{ClientHandle, ClientSpec, Report, spawn_client};
use kaskade_loadtest::node::{ExternalNode, ExternalOptions};
use kaskade_loadtest::{Kind, MediaProfile, procfs, token};
use tokio::sync::mpsc::error::TryRecvError;

const ROOM: &str = "bench";
/// The Janus VideoRoom room, and the feed id the publisher takes in it.
const JANUS_ROOM: u64 = 4242;
const JANUS_FEED: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sfu {
    Kaskade,
    /// Janus with `event_loops = n`, or (`None`) its default of a thread per handle.
    Janus {
        event_loops: Option<usize>,
    },
}

impl Sfu {
    fn parse(s: &str) -> Result<Sfu> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.split_once(':') {
            None if s == "kaskade" => Sfu::Kaskade,
            None if s == "janus" => Sfu::Janus { event_loops: None },
            Some(("janus", n)) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Sfu::Janus {
                    event_loops: Some(n),
                },
                _ => bail!("BENCH_SFUS: {s:?} needs a thread count above 0 after `janus:`"),
            },
            _ => bail!("BENCH_SFUS: unknown SFU {s:?} (kaskade, janus, janus:N)"),
        })
    }

    fn name(self) -> String {
        match self {
            Sfu::Kaskade => "kaskade".into(),
            Sfu::Janus { event_loops: None } => "Janus".into(),
            Sfu::Janus {
                event_loops: Some(n),
            } => format!("Janus, event_loops={n}"),
        }
    }
}

/// A running SFU under test; killed on drop.
enum Server {
    Kaskade(ExternalNode),
    Janus(JanusServer),
}

impl Server {
    fn pid(&self) -> String {
        match self {
            Server::Kaskade(n) => n.pid().to_string(),
            Server::Janus(j) => j.pid().to_string(),
        }
    }

    fn stop(&mut self) {
        match self {
            Server::Kaskade(n) => n.stop(),
            Server::Janus(j) => j.stop(),
        }
    }

    fn log(&self, n: usize) -> String {
        match self {
            Server::Kaskade(_) => std::env::temp_dir()
                .join(format!("kaskade-vs-janus-{n}.log"))
                .display()
                .to_string(),
            Server::Janus(j) => j.log.display().to_string(),
        }
    }

    fn publisher(&self, profile: &MediaProfile) -> Result<ClientHandle> {
        Ok(match self {
            Server::Kaskade(node) => spawn_client(kaskade_spec(node, "publisher", Some(profile))?),
            Server::Janus(j) => spawn_janus_client(JanusSpec {
                api: j.api,
                room: JANUS_ROOM,
                identity: "publisher".into(),
                role: JanusRole::Publisher {
                    feed: JANUS_FEED,
                    profile: profile.clone(),
                },
            }),
        })
    }

    fn subscriber(&self, i: usize) -> Result<ClientHandle> {
        let identity = format!("sub-{i}");
        Ok(match self {
            Server::Kaskade(node) => spawn_client(kaskade_spec(node, &identity, None)?),
            Server::Janus(j) => spawn_janus_client(JanusSpec {
                api: j.api,
                room: JANUS_ROOM,
                identity,
                role: JanusRole::Subscriber { feed: JANUS_FEED },
            }),
        })
    }
}

fn kaskade_spec(
    node: &ExternalNode,
    identity: &str,
    publish: Option<&MediaProfile>,
) -> Result<ClientSpec> {
    Ok(ClientSpec {
        http: node.http,
        room: ROOM.into(),
        identity: identity.into(),
        token: token(ROOM, identity)?,
        publish: publish.cloned(),
        report_rtp: false,
    })
}

/// One measured run.
struct Row {
    sfu: Sfu,
    w: Window,
}

fn main() -> Result<()> {
    if !bench_requested("vs_janus") {
        return Ok(());
    }
    // The forwarding bench's settings, with this bench's defaults.
    let settings = Settings::from_lookup(|k| {
        std::env::var(k).ok().or_else(|| match k {
            "BENCH_SUBSCRIBERS" => Some("10,50".into()),
            "BENCH_REPEAT" => Some("3".into()),
            _ => None,
        })
    })?;
    let mut sfus = std::env::var("BENCH_SFUS")
        .unwrap_or_else(|_| "kaskade,janus,janus:1".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Sfu::parse)
        .collect::<Result<Vec<_>>>()?;
    let janus = |s: &Sfu| matches!(s, Sfu::Janus { .. });
    if sfus.iter().any(janus) && !JanusServer::installed() {
        println!(
            "vs_janus: Janus is not installed (no `janus` on the PATH): measuring kaskade alone. \
             Install it with `apt-get install -y janus` (Debian's Janus 1.1.2)."
        );
        sfus.retain(|s| !janus(s));
    }
    if sfus.is_empty() {
        println!("vs_janus: no SFU to measure");
        return Ok(());
    }

    let client_log = log_clients_to("kaskade-vs-janus-clients.log")?;
    let rt = settings.generator_runtime()?;
    let profile = settings.profile();
    eprintln!(
        "kaskade vs Janus (client log: {}): {}, {}, subscribers {:?}, warm-up {:?}, window {:?}, \
         {} round(s), pinning {}",
        client_log.display(),
        sfus.iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(" / "),
        describe_publisher(&profile),
        settings.subscribers,
        settings.warmup,
        settings.measure,
        settings.repeat,
        settings.pinning("SFU"),
    );

    let mut rows = Vec::new();
    for round in 1..=settings.repeat {
        for &n in &settings.subscribers {
            // The order of the SFUs turns by one each round: a slow drift of the machine
            // (another build starting) then does not always favour the same one.
            let mut order = sfus.clone();
            order.rotate_left((round - 1) % sfus.len());
            for sfu in order {
                let r = rt.block_on(run(&settings, &profile, sfu, n));
                let w = match r {
                    Ok(w) => w,
                    Err(e) => {
                        // One SFU failing at one count must not lose the other figures.
                        eprintln!(
                            "  [{round}/{}] {} with {n} subscribers FAILED: {e:#}",
                            settings.repeat,
                            sfu.name()
                        );
                        continue;
                    }
                };
                eprintln!(
                    "  [{round}/{}] {} {n} subscribers: {:.0} egress pps, SFU CPU {:.0}%, {:.0} \
                     pps per CPU-s, loss {:.3}%, load generator CPU {:.0}%, rest of the machine \
                     {:.0}%{}",
                    settings.repeat,
                    sfu.name(),
                    w.egress_pps(),
                    100.0 * w.node_cpu / w.seconds,
                    w.pps_per_cpu(),
                    w.loss_pct(),
                    100.0 * w.generator_cpu / w.seconds,
                    100.0 * w.other_cpu() / w.seconds,
                    if w.disturbed() { " (disturbed)" } else { "" },
                );
                rows.push(Row { sfu, w });
            }
        }
    }

    println!("\nAll runs:\n");
    println!("{}", table(&rows));
    let mut summary = Vec::new();
    for &sfu in &sfus {
        let windows: Vec<Window> = rows
            .iter()
            .filter(|r| r.sfu == sfu)
            .map(|r| r.w.clone())
            .collect();
        summary.extend(
            medians(&without_overloads(windows))
                .into_iter()
                .map(|w| Row { sfu, w }),
        );
    }
    // By subscriber count, then SFU, so the two sit next to each other.
    summary.sort_by_key(|r| (r.w.subscribers, r.sfu));
    println!(
        "Median run per SFU and subscriber count (by pps per SFU CPU-s, leaving out runs that \
         lost {LOSSY_PCT}% or more and disturbed runs where there are others):\n"
    );
    println!("{}", table(&summary));
    if sfus.contains(&Sfu::Kaskade) && sfus.len() > 1 {
        println!("{}", comparison(&summary, &sfus, &settings.subscribers));
    }
    Ok(())
}

/// Loss from which a run measured an overload, not the forwarding cost.
const LOSSY_PCT: f64 = 1.0;

/// Leaves out, per subscriber count, the runs that lost [`LOSSY_PCT`] or more of the media
/// when the count has runs that did not: a collapsed run (overload, the SFU's or the
/// machine's) forwards less, often at a misleadingly low cost per packet.
fn without_overloads(windows: Vec<Window>) -> Vec<Window> {
    let clean = |w: &Window| w.loss_pct() < LOSSY_PCT;
    let counts_with_clean: Vec<usize> = windows
        .iter()
        .filter(|w| clean(w))
        .map(|w| w.subscribers)
        .collect();
    windows
        .into_iter()
        .filter(|w| clean(w) || !counts_with_clean.contains(&w.subscribers))
        .collect()
}

async fn start(settings: &Settings, sfu: Sfu, n: usize) -> Result<Server> {
    let cpus = settings.pin.then(|| SFU_CPU.to_string());
    Ok(match sfu {
        Sfu::Kaskade => Server::Kaskade(
            ExternalNode::start(
                &settings.bin,
                &ExternalOptions {
                    max_participants: n + 1,
                    cpus,
                    log_level: "warn".into(),
                    log_file: Some(std::env::temp_dir().join(format!("kaskade-vs-janus-{n}.log"))),
                },
            )
            .await?,
        ),
        Sfu::Janus { event_loops } => Server::Janus(
            JanusServer::start(&JanusOptions {
                script: default_script(),
                cpus,
                rtp_ports: "20000-29999".into(),
                work_dir: std::env::temp_dir().join(match event_loops {
                    None => format!("kaskade-vs-janus-janus-{n}"),
                    Some(k) => format!("kaskade-vs-janus-janus-loops{k}-{n}"),
                }),
                // JANUS_DEBUG_LEVEL (0-7) for a more talkative log; 3: warnings and errors.
                debug_level: std::env::var("JANUS_DEBUG_LEVEL")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(3),
                event_loops,
            })
            .await?,
        ),
    })
}

/// Fails on a client's error or end; drops its other reports.
fn check(c: &mut ClientHandle, who: &str) -> Result<()> {
    loop {
        match c.reports.try_recv() {
            Ok(Report::Failed(e)) => bail!("{who} failed: {e}"),
            Ok(Report::Closed) | Err(TryRecvError::Disconnected) => bail!("{who} ended"),
            Err(TryRecvError::Empty) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// Connects `n` subscribers in waves; each counts once both kinds of media reach it.
async fn join_subscribers(
    server: &Server,
    publisher: &mut ClientHandle,
    n: usize,
    subs: &mut Vec<ClientHandle>,
) -> Result<()> {
    while subs.len() < n {
        let first = subs.len();
        for i in first..(first + JOIN_WAVE).min(n) {
            subs.push(server.subscriber(i)?);
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        for (i, s) in subs.iter_mut().enumerate().skip(first) {
            while !(s.stats.receiving(Kind::Audio) && s.stats.receiving(Kind::Video)) {
                check(s, &format!("subscriber {i}"))?;
                if Instant::now() > deadline {
                    bail!(
                        "subscriber {i} received no media (audio {}, video {}) within \
                         {CONNECT_TIMEOUT:?}",
                        s.stats.receiving(Kind::Audio),
                        s.stats.receiving(Kind::Video),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for (i, s) in subs.iter_mut().enumerate() {
            check(s, &format!("subscriber {i}"))?;
        }
        check(publisher, "the publisher")?;
    }
    Ok(())
}

async fn run(settings: &Settings, profile: &MediaProfile, sfu: Sfu, n: usize) -> Result<Window> {
    let mut server = start(settings, sfu, n).await?;
    let r = measure(settings, profile, &server, n).await;
    server.stop();
    r.with_context(|| format!("{} log: {}", sfu.name(), server.log(n)))
}

async fn measure(
    settings: &Settings,
    profile: &MediaProfile,
    server: &Server,
    n: usize,
) -> Result<Window> {
    let pid = server.pid();
    // Let the SFU finish starting (threads, allocator arenas) before its idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_kib = procfs::rss_kib(&pid)?;

    let mut publisher = server.publisher(profile)?;
    publisher_connected(&mut publisher).await?;

    let join_start = Instant::now();
    let mut subs = Vec::with_capacity(n);
    let joined = join_subscribers(server, &mut publisher, n, &mut subs).await;
    let stop_all = |subs: &[ClientHandle], publisher: &ClientHandle| {
        for c in subs.iter().chain([publisher]) {
            let _ = c.stop.send(true);
        }
    };
    if let Err(e) = joined {
        stop_all(&subs, &publisher);
        return Err(e.context("joining"));
    }
    warm_up(settings, join_start.elapsed(), &publisher, &subs).await;
    let counted = count_window(settings, &pid, &publisher, &subs).await?;
    let mut failed = Ok(());
    for (i, s) in subs.iter_mut().enumerate() {
        if failed.is_ok() {
            failed = check(s, &format!("subscriber {i}"));
        }
    }
    let rss_loaded_kib = procfs::rss_kib(&pid)?;
    stop_all(&subs, &publisher);
    // Let the leaves reach the SFU before it is killed (they only matter for its log).
    tokio::time::sleep(Duration::from_millis(200)).await;
    failed.context("during the window")?;

    Ok(Window::measured(n, &counted, rss_idle_kib, rss_loaded_kib))
}

/// The runs as a markdown table.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| SFU | subscribers | egress pps (receivers) | SFU CPU | pps per SFU CPU-s | us CPU per \
         packet | loss | latency p50 | latency p99 | SFU RSS idle -> loaded | RSS per \
         participant | load-gen CPU | other CPU | kernel UDP drops (rcvbuf) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for Row { sfu, w } in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} |\n",
            sfu.name(),
            w.subscribers,
            w.egress_pps(),
            w.cost_cells(),
            w.udp_rcvbuf_drops,
        ));
    }
    out
}

/// kaskade's figures next to each Janus's, per subscriber count, from the median runs.
fn comparison(summary: &[Row], sfus: &[Sfu], counts: &[usize]) -> String {
    let mut out = String::from(
        "| subscribers | SFU | pps per CPU-s | kaskade / this | CPU | RSS per participant |\n\
         |---:|---|---:|---:|---:|---:|\n",
    );
    for &n in counts {
        let get = |sfu: Sfu| {
            summary
                .iter()
                .find(|r| r.sfu == sfu && r.w.subscribers == n)
        };
        let Some(k) = get(Sfu::Kaskade) else {
            continue;
        };
        for &sfu in sfus {
            let Some(r) = get(sfu) else { continue };
            let ratio = if r.w.pps_per_cpu() > 0.0 {
                format!("{:.2}x", k.w.pps_per_cpu() / r.w.pps_per_cpu())
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "| {n} | {} | {:.0} | {ratio} | {:.0}% | {:.0} KiB |\n",
                sfu.name(),
                r.w.pps_per_cpu(),
                100.0 * r.w.node_cpu / r.w.seconds,
                r.w.kib_per_participant(),
            ));
        }
    }
    out
}
