//! Forwarding benchmark: the real `kaskade` binary, one publisher, N subscribers.
//!
//! For each N: start the node as a child process on free loopback ports, read its idle RSS,
//! connect one publisher (Opus-like audio 50 pps + 720p-like video 250 pps) and N subscribers
//! (real DTLS-SRTP legs on `rtc`), warm up, then measure a window: packets received by all
//! subscribers, the node's CPU time (/proc/<pid>/stat) and `kaskade_rtp_forwarded_total`,
//! loss by probe index gaps, one-way latency, the node's RSS, and this process's own CPU time
//! (a load generator that saturates its core measures itself, not the node).
//!
//! `cargo build --release -p kaskade && cargo bench -p kaskade-benches --bench forwarding`
//! Settings come from the environment: see `kaskade_benches::Settings` and docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaskade_benches::{
    CONNECT_TIMEOUT, JOIN_WAVE, SFU_CPU, Settings, Window, bench_requested, count_window,
    describe_publisher, log_clients_to, markdown_table, medians, publisher_connected, warm_up,
};
use kaskade_bridge::messages::ServerMsg;
use kaskade_loadtest::client::{ClientHandle, ClientSpec, Report, spawn_client};
use kaskade_loadtest::node::{ExternalNode, ExternalOptions};
use kaskade_loadtest::{Kind, MediaProfile, procfs, token};
use tokio::sync::mpsc::error::TryRecvError;

const ROOM: &str = "bench";

fn main() -> Result<()> {
    if !bench_requested("forwarding") {
        return Ok(());
    }
    let settings = Settings::from_env()?;
    let client_log = log_clients_to("kaskade-bench-clients.log")?;
    let rt = settings.generator_runtime()?;
    let profile = settings.profile();
    eprintln!(
        "forwarding benchmark (client log: {}): node {}, {}, warm-up {:?}, window {:?}, {} run(s) \
         per count, pinning {}",
        client_log.display(),
        settings.bin.display(),
        describe_publisher(&profile),
        settings.warmup,
        settings.measure,
        settings.repeat,
        settings.pinning("node"),
    );
    let mut rows = Vec::new();
    // Repeats go round the whole list, so a disturbance (another build) hits one run of each
    // count rather than every run of one count.
    for round in 1..=settings.repeat {
        for &n in &settings.subscribers {
            let w = rt
                .block_on(run(&settings, &profile, n))
                .with_context(|| format!("run with {n} subscribers"))?;
            eprintln!(
                "  [{round}/{}] {n} subscribers: {:.0} egress pps, node CPU {:.0}%, load generator \
                 CPU {:.0}%, rest of the machine {:.0}%, publisher sent {:.0} pps, receivers got \
                 {:.2}% of the ideal egress",
                settings.repeat,
                w.egress_pps(),
                100.0 * w.node_cpu / w.seconds,
                100.0 * w.generator_cpu / w.seconds,
                100.0 * w.other_cpu() / w.seconds,
                w.sent as f64 / w.seconds,
                100.0 * w.received as f64 / w.ideal_egress().max(1) as f64,
            );
            eprintln!(
                "        node in {:.0} pps, node send errors {}, kernel UDP drops: {} receive \
                 buffer, {} send buffer (machine-wide)",
                w.node_packets_in as f64 / w.seconds,
                w.node_send_errors,
                w.udp_rcvbuf_drops,
                w.udp_sndbuf_drops,
            );
            if w.generator_bound() {
                eprintln!(
                    "  WARNING: the load generator used >90% of its core: figures at {n} \
                     subscribers measure the generator as much as the node"
                );
            }
            if w.disturbed() {
                eprintln!(
                    "  WARNING: other processes used {:.0}% of a CPU during the window: this run \
                     is disturbed",
                    100.0 * w.other_cpu() / w.seconds
                );
            }
            rows.push(w);
        }
    }
    println!();
    if settings.repeat > 1 {
        println!("All runs:\n");
        println!("{}", markdown_table(&rows));
        println!(
            "Median run per subscriber count (by pps per node CPU-s, leaving out disturbed runs \
             where a count has undisturbed ones):\n"
        );
        println!("{}", markdown_table(&medians(&rows)));
    } else {
        println!("{}", markdown_table(&rows));
    }
    Ok(())
}

fn spec(
    http: std::net::SocketAddr,
    identity: &str,
    publish: Option<MediaProfile>,
) -> Result<ClientSpec> {
    Ok(ClientSpec {
        http,
        room: ROOM.into(),
        identity: identity.into(),
        token: token(ROOM, identity)?,
        publish,
        report_rtp: false,
    })
}

/// How far a client got, to say where a stuck one stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    #[default]
    Connecting,
    Joined,
    /// The bridge sent a subscriber offer.
    Offered,
    /// The subscriber leg's ICE + DTLS completed.
    Connected,
}

/// Drops the signaling reports queued so far, noting the stage reached, failing on a
/// client's error.
fn drain(c: &mut ClientHandle, who: &str, stage: &mut Stage) -> Result<()> {
    loop {
        let reached = match c.reports.try_recv() {
            Ok(Report::Failed(e)) => bail!("{who} failed: {e}"),
            Ok(Report::Closed) | Err(TryRecvError::Disconnected) => bail!("{who} ended"),
            Err(TryRecvError::Empty) => return Ok(()),
            Ok(Report::Signal(ServerMsg::Joined { .. })) => Stage::Joined,
            Ok(Report::Signal(ServerMsg::Offer { .. })) => Stage::Offered,
            Ok(Report::Connected(_)) => Stage::Connected,
            Ok(_) => continue,
        };
        *stage = (*stage).max(reached);
    }
}

/// Connects `n` subscribers in waves; each counts once both kinds of media reach it.
async fn join_subscribers(
    node: &ExternalNode,
    publisher: &mut ClientHandle,
    n: usize,
) -> Result<Vec<ClientHandle>> {
    let mut subs: Vec<ClientHandle> = Vec::with_capacity(n);
    let r = join_waves(node, publisher, n, &mut subs).await;
    if r.is_err() {
        // Say whether the stall was one client's or many clients dropped out meanwhile.
        let mut ended = Vec::new();
        for (i, s) in subs.iter_mut().enumerate() {
            if let Err(e) = drain(s, &format!("subscriber {i}"), &mut Stage::default()) {
                ended.push(format!("{e:#}"));
            }
        }
        if !ended.is_empty() {
            let total = subs.len();
            return r.map(|_| subs).with_context(|| {
                format!(
                    "meanwhile {} of {total} subscribers ended; first: {}",
                    ended.len(),
                    ended[0]
                )
            });
        }
    }
    r.map(|_| subs)
}

async fn join_waves(
    node: &ExternalNode,
    publisher: &mut ClientHandle,
    n: usize,
    subs: &mut Vec<ClientHandle>,
) -> Result<()> {
    while subs.len() < n {
        let first = subs.len();
        for i in first..(first + JOIN_WAVE).min(n) {
            subs.push(spawn_client(spec(node.http, &format!("sub-{i}"), None)?));
        }
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        for (i, s) in subs.iter_mut().enumerate().skip(first) {
            let mut stage = Stage::default();
            while !(s.stats.receiving(Kind::Audio) && s.stats.receiving(Kind::Video)) {
                drain(s, &format!("subscriber {i}"), &mut stage)?;
                if Instant::now() > deadline {
                    bail!(
                        "subscriber {i} received no media (audio {}, video {}) within \
                         {CONNECT_TIMEOUT:?}; it got as far as {stage:?}",
                        s.stats.receiving(Kind::Audio),
                        s.stats.receiving(Kind::Video),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Earlier subscribers too: one that dropped out meanwhile must not go unnoticed.
        for (i, s) in subs.iter_mut().enumerate() {
            drain(s, &format!("subscriber {i}"), &mut Stage::default())?;
        }
        drain(publisher, "the publisher", &mut Stage::default())?;
    }
    Ok(())
}

async fn run(settings: &Settings, profile: &MediaProfile, n: usize) -> Result<Window> {
    let log_file = std::env::temp_dir().join(format!("kaskade-bench-{n}.log"));
    let mut node = ExternalNode::start(
        &settings.bin,
        &ExternalOptions {
            max_participants: n + 1,
            cpus: settings.pin.then(|| SFU_CPU.to_string()),
            log_level: "warn".into(),
            log_file: Some(log_file.clone()),
        },
    )
    .await?;
    let pid = node.pid().to_string();
    // Let the node finish starting (threads, allocator arenas) before its idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_kib = procfs::rss_kib(&pid)?;

    let mut publisher = spawn_client(spec(node.http, "publisher", Some(profile.clone()))?);
    publisher_connected(&mut publisher).await?;

    let join_start = Instant::now();
    let udp_join = procfs::udp_errors()?;
    let mut subs = match join_subscribers(&node, &mut publisher, n).await {
        Ok(subs) => subs,
        Err(e) => {
            let drops = procfs::udp_errors()?.since(udp_join);
            let e = e.context(format!(
                "kernel UDP drops while joining (machine-wide): {} receive buffer, {} send buffer",
                drops.rcvbuf, drops.sndbuf
            ));
            // The node's counters (drops by reason, legs, errors) say where a join stalled.
            let path = std::env::temp_dir().join(format!("kaskade-bench-{n}.metrics"));
            if let Ok(text) = node.metrics_text().await {
                let _ = std::fs::write(&path, text);
            }
            return Err(e.context(format!(
                "joining; node log {}, node metrics {}",
                log_file.display(),
                path.display()
            )));
        }
    };
    warm_up(settings, join_start.elapsed(), &publisher, &subs).await;
    let fwd0 = node.metric("kaskade_rtp_forwarded_total").await?;
    let send_err0 = node.metric("kaskade_udp_send_errors_total").await?;
    let in0 = node.metric("kaskade_udp_packets_in_total").await?;
    let counted = count_window(settings, &pid, &publisher, &subs).await?;
    for (i, s) in subs.iter_mut().enumerate() {
        drain(s, &format!("subscriber {i}"), &mut Stage::default())?;
    }
    let fwd1 = node.metric("kaskade_rtp_forwarded_total").await?;
    let send_err1 = node.metric("kaskade_udp_send_errors_total").await?;
    let in1 = node.metric("kaskade_udp_packets_in_total").await?;
    let rss_loaded_kib = procfs::rss_kib(&pid)?;

    for c in subs.iter().chain([&publisher]) {
        let _ = c.stop.send(true);
    }
    // Let the leaves reach the node before it is killed (they only matter for its log).
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.stop();

    Ok(Window {
        forwarded_metric: (fwd1 - fwd0).max(0.0) as u64,
        node_send_errors: (send_err1 - send_err0).max(0.0) as u64,
        node_packets_in: (in1 - in0).max(0.0) as u64,
        ..Window::measured(n, &counted, rss_idle_kib, rss_loaded_kib)
    })
}
