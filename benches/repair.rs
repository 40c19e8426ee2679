//! Per-hop repair against end-to-end repair, side by side (issue 4).
//!
//! `cargo bench -p kaskade-benches --bench repair` (`-- --secs 30` to change the run length,
//! `-- --only octo --only per_hop` for one row).
//!
//! publisher -> [relay A] -> bridge 1 -> [relay B] -> bridge 2 -> [relay C] -> receiver
//!
//! Every hop loses 5% of its datagrams at random in both directions; the client legs have
//! 10 ms one-way delay (20 ms RTT), the Octo link 30 ms each way (60 ms RTT; bridge 2's NACKs
//! cross a relay of their own). Two real bridges run in this process, the clients are the
//! `rtc` clients of `kaskade-loadtest` over real loopback UDP, the relays are `kaskade-netsim`.
//! Octo runs in plaintext here so the relay can see the RTP headers on the link.
//!
//! For each repair mode (`media.repair` = per_hop, end_to_end) it reports, over the receiver's
//! video packets:
//! - residual loss: packets not delivered within 300 ms of being sent;
//! - repair delay of the packets that were repaired (arrived after a later one): their
//!   one-way latency minus the median latency, mean and p95;
//! - retransmitted bytes on each hop: datagrams that repeat an (SSRC, sequence number) the
//!   hop already carried, counted by the relays, so the figure does not trust the SFU.
//!
//! A second pair of runs loses packets on the Octo link only: the repair delay of an
//! Octo-hop loss, to hold against the target of one Octo RTT + 10 ms.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kaskade_bridge::config::{OctoConfig, OctoPeer, RepairMode};
use kaskade_loadtest::client::{ClientSpec, Report, spawn_client};
use kaskade_loadtest::media::now_us;
use kaskade_loadtest::node::{InProcessNode, dev_config, token};
use kaskade_loadtest::{Kind, MediaProfile, Probe};
use kaskade_netsim::{ImpairmentConfig, Relay, RelayHandle, RelayOptions, RelayStats};

const DEADLINE_US: u64 = 300_000;
const CLIENT_DELAY: Duration = Duration::from_millis(10);
const OCTO_DELAY: Duration = Duration::from_millis(30);

#[derive(Clone, Copy)]
struct Losses {
    client: f64,
    octo: f64,
}

struct Outcome {
    mode: RepairMode,
    losses: Losses,
    sent: u64,
    residual: u64,
    /// Of the residual, packets that arrived, only too late.
    late: u64,
    repaired: u64,
    repair_mean_ms: f64,
    repair_p95_ms: f64,
    base_ms: f64,
    hops: [RelayStats; 3],
    octo_back: RelayStats,
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn lossy(loss: f64, delay: Duration) -> ImpairmentConfig {
    ImpairmentConfig {
        loss,
        delay,
        ..ImpairmentConfig::none()
    }
}

async fn relay(
    listen: SocketAddr,
    upstream: SocketAddr,
    up: ImpairmentConfig,
    down: ImpairmentConfig,
    rtp_offset: usize,
    seed: u64,
) -> Result<RelayHandle> {
    Relay::start_with(RelayOptions {
        up,
        down,
        seed,
        rtp_offset: Some(rtp_offset),
        ..RelayOptions::new(listen, upstream)
    })
    .await
    .with_context(|| format!("relay on {listen}"))
}

async fn bridge(
    id: u32,
    mode: RepairMode,
    octo_port: u16,
    peer_id: u32,
    peer_addr: SocketAddr,
    repair_copy_ms: Option<u64>,
) -> Result<InProcessNode> {
    let mut config = dev_config(10);
    config.media.advertise_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    config.media.repair = mode;
    config.bridge.id = format!("bench-{id}");
    config.octo = OctoConfig {
        bridge_id: id,
        bind_ip: Ipv4Addr::LOCALHOST.into(),
        port: octo_port,
        secret: "repair-bench-cluster-secret".into(),
        plaintext: true,
        peers: vec![OctoPeer {
            id: peer_id,
            name: format!("bench-{peer_id}"),
            region: String::new(),
            address: peer_addr,
            url: String::new(),
        }],
        ..OctoConfig::default()
    };
    if let Some(ms) = repair_copy_ms {
        config.octo.repair_copy_ms = ms;
    }
    InProcessNode::start(config).await
}

async fn scenario(
    mode: RepairMode,
    losses: Losses,
    secs: u64,
    seed: u64,
    repair_copy_ms: Option<u64>,
) -> Result<Outcome> {
    let lo = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let (octo1, octo2, via12, via21) = (
        free_udp_port()?,
        free_udp_port()?,
        free_udp_port()?,
        free_udp_port()?,
    );
    let b1 = bridge(1, mode, octo1, 2, lo(via12), repair_copy_ms).await?;
    let b2 = bridge(2, mode, octo2, 1, lo(via21), repair_copy_ms).await?;
    let front = |n: &InProcessNode| SocketAddr::from(([127, 0, 0, 2], n.media.port()));
    let client = lossy(losses.client, CLIENT_DELAY);
    let octo = lossy(losses.octo, OCTO_DELAY);
    let relay_a = relay(
        front(&b1),
        b1.media,
        client.clone(),
        client.clone(),
        0,
        seed,
    )
    .await?;
    let relay_b = relay(
        lo(via12),
        lo(octo2),
        octo.clone(),
        octo.clone(),
        24,
        seed + 1,
    )
    .await?;
    let relay_b_back = relay(lo(via21), lo(octo1), octo.clone(), octo, 24, seed + 2).await?;
    let relay_c = relay(front(&b2), b2.media, client.clone(), client, 0, seed + 3).await?;

    let room = "repair-bench";
    let publisher = spawn_client(ClientSpec {
        http: b1.http,
        room: room.into(),
        identity: "publisher".into(),
        token: token(room, "publisher")?,
        publish: Some(MediaProfile::hd()),
        report_rtp: false,
    });
    // Join the receiver once bridge 2 knows the room is on bridge 1 (announcements are soft
    // state every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut receiver = spawn_client(ClientSpec {
        http: b2.http,
        room: room.into(),
        identity: "receiver".into(),
        token: token(room, "receiver")?,
        publish: None,
        report_rtp: true,
    });

    // Per video packet, by its index in the publisher's stream (the probe's, contiguous and
    // never wrapping): (send time, first arrival) in microseconds, and whether a later packet
    // had arrived before it (it was repaired). Everything is recorded; only packets *sent*
    // inside the window are judged, so a repair that lands in the window for a packet sent
    // before it counts nowhere.
    let mut packets: HashMap<u64, (u64, u64, bool)> = HashMap::new();
    let mut highest: Option<u64> = None;
    let warmup = Duration::from_secs(2);
    let mut window_start_us: Option<u64> = None;
    let mut measuring_since: Option<Instant> = None;
    let run_end = Instant::now() + Duration::from_secs(secs) + warmup + Duration::from_secs(20);
    let record =
        |packets: &mut HashMap<u64, (u64, u64, bool)>, highest: &mut Option<u64>, probe: &Probe| {
            let late = highest.is_some_and(|h| probe.index < h);
            *highest = Some(highest.map_or(probe.index, |h| h.max(probe.index)));
            packets
                .entry(probe.index)
                .or_insert((probe.sent_us, now_us(), late));
        };
    loop {
        if measuring_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(secs)) {
            break;
        }
        if Instant::now() > run_end {
            bail!("no video reached the receiver");
        }
        let r = match tokio::time::timeout(Duration::from_secs(5), receiver.reports.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => bail!("the receiver stopped"),
            Err(_) => continue,
        };
        match r {
            Report::Rtp { payload, .. } => {
                let Some(probe) = Probe::find(&payload) else {
                    continue;
                };
                if probe.kind != Kind::Video {
                    continue;
                }
                if measuring_since.is_none() {
                    measuring_since = Some(Instant::now() + warmup);
                    window_start_us = Some(now_us() + warmup.as_micros() as u64);
                }
                record(&mut packets, &mut highest, &probe);
            }
            Report::Failed(e) => bail!("receiver failed: {e}"),
            _ => {}
        }
    }
    // Judge what was sent up to 300 ms before the end, after giving it that long.
    let cutoff_sent = now_us().saturating_sub(DEADLINE_US);
    tokio::time::sleep(Duration::from_millis(400)).await;
    while let Ok(r) = receiver.reports.try_recv() {
        if let Report::Rtp { payload, .. } = r
            && let Some(p) = Probe::find(&payload)
            && p.kind == Kind::Video
        {
            record(&mut packets, &mut highest, &p);
        }
    }
    let _ = publisher.stop.send(true);
    let _ = receiver.stop.send(true);
    let hops = [relay_a.stats(), relay_b.stats(), relay_c.stats()];
    for (name, n) in [("bridge 1", &b1), ("bridge 2", &b2)] {
        let m = &n.metrics;
        eprintln!(
            "  {name}: octo nacks sent {} received {}, resent {} + {} copies, cache misses {}, \
             recovered {}, unrecovered {}, tail probes {}; client nacks sent {} received {}, resent {}, suppressed {}, \
             waiting {}, answered on arrival {}, unrecovered {}",
            m.repair_octo.nacks_sent.get(),
            m.repair_octo.nacks_received.get(),
            m.repair_octo.retransmissions.get(),
            m.octo_repair_copies.get(),
            m.repair_octo.cache_misses.get(),
            m.repair_octo.recovered.get(),
            m.repair_octo.lost_unrecovered.get(),
            m.octo_tail_probes.get(),
            m.repair_client.nacks_sent.get(),
            m.repair_client.nacks_received.get(),
            m.repair_client.retransmissions.get(),
            m.retransmissions_suppressed.get(),
            m.repairs_waiting_upstream.get(),
            m.repairs_answered_on_arrival.get(),
            m.repair_client.lost_unrecovered.get(),
        );
    }
    let octo_back = relay_b_back.stats();
    for r in [relay_a, relay_b, relay_b_back, relay_c] {
        r.stop().await;
    }

    let Some(start_us) = window_start_us else {
        bail!("no video measured");
    };
    let mut latencies: Vec<u64> = packets
        .values()
        .map(|(s, a, _)| a.saturating_sub(*s))
        .collect();
    latencies.sort_unstable();
    let base = latencies.get(latencies.len() / 2).copied().unwrap_or(0);
    // The window in stream indices: from the first packet sent after its start to the last
    // one sent before the cutoff; indices in between that never arrived were lost.
    let inside = |s: u64| s >= start_us && s <= cutoff_sent;
    let (Some(lo), Some(hi)) = (
        packets
            .iter()
            .filter(|(_, v)| inside(v.0))
            .map(|(i, _)| *i)
            .min(),
        packets
            .iter()
            .filter(|(_, v)| inside(v.0))
            .map(|(i, _)| *i)
            .max(),
    ) else {
        bail!("no video inside the window");
    };
    let expected = hi - lo + 1;
    let judged: Vec<&(u64, u64, bool)> = (lo..=hi).filter_map(|i| packets.get(&i)).collect();
    let delivered_in_time = judged
        .iter()
        .filter(|(s, a, _)| a.saturating_sub(*s) <= DEADLINE_US)
        .count() as u64;
    let late = judged.len() as u64 - delivered_in_time;
    for (i, (s, a, _)) in (lo..=hi).filter_map(|i| packets.get(&i).map(|v| (i, v))) {
        if a.saturating_sub(*s) > DEADLINE_US {
            eprintln!("  late: index {i}, {} ms", a.saturating_sub(*s) / 1000);
        }
    }
    let never: Vec<u64> = (lo..=hi).filter(|i| !packets.contains_key(i)).collect();
    if !never.is_empty() {
        eprintln!("  never arrived ({}): {never:?}", never.len());
    }
    let mut repairs: Vec<f64> = judged
        .iter()
        .filter(|(_, _, repaired)| *repaired)
        .map(|(s, a, _)| a.saturating_sub(*s).saturating_sub(base) as f64 / 1000.0)
        .collect();
    repairs.sort_by(f64::total_cmp);
    Ok(Outcome {
        mode,
        losses,
        sent: expected,
        residual: expected.saturating_sub(delivered_in_time),
        late,
        repaired: repairs.len() as u64,
        repair_mean_ms: if repairs.is_empty() {
            0.0
        } else {
            repairs.iter().sum::<f64>() / repairs.len() as f64
        },
        repair_p95_ms: repairs
            .get(((repairs.len() as f64 * 0.95) as usize).min(repairs.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0),
        base_ms: base as f64 / 1000.0,
        hops,
        octo_back,
    })
}

fn mode_name(m: RepairMode) -> &'static str {
    match m {
        RepairMode::PerHop => "per-hop",
        RepairMode::EndToEnd => "end-to-end",
    }
}

fn print(o: &Outcome) {
    let bytes: Vec<u64> = o
        .hops
        .iter()
        .map(|h| h.up.rtp_repeat_bytes + h.down.rtp_repeat_bytes)
        .collect();
    let total: u64 = bytes.iter().sum();
    println!(
        "| {} | {:.0}% / {:.0}% | {} | {} ({:.3}%), {} late | {} | {:.1} | {:.1} | {:.1} | {} / {} / {} = {} |",
        mode_name(o.mode),
        o.losses.client * 100.0,
        o.losses.octo * 100.0,
        o.sent,
        o.residual,
        o.residual as f64 * 100.0 / o.sent.max(1) as f64,
        o.late,
        o.repaired,
        o.repair_mean_ms,
        o.repair_p95_ms,
        o.base_ms,
        bytes[0] / 1024,
        bytes[1] / 1024,
        bytes[2] / 1024,
        total / 1024,
    );
    eprintln!(
        "  relays: A up {:?}\n          B (1->2) {:?}\n          B back (2->1) {:?}\n          C down {:?}",
        o.hops[0].up, o.hops[1].up, o.octo_back.up, o.hops[2].down
    );
}

fn main() -> Result<()> {
    let mut secs = 30u64;
    // `--only octo` runs the Octo-only rows, `--only per_hop` the per-hop ones.
    let mut only: Vec<String> = Vec::new();
    // `--repair-copy-ms 0` turns the Octo resend copies off (`octo.repair_copy_ms`).
    let mut repair_copy_ms = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--secs" {
            secs = args
                .next()
                .and_then(|v| v.parse().ok())
                .context("--secs takes a number")?;
        } else if a == "--repair-copy-ms" {
            repair_copy_ms = Some(
                args.next()
                    .and_then(|v| v.parse().ok())
                    .context("--repair-copy-ms takes a number")?,
            );
        } else if a == "--only" {
            only.push(
                args.next()
                    .context("--only takes octo, all_hops, per_hop or end_to_end")?,
            );
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,rtc::peer_connection::handler=error")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "| repair | loss client / Octo | video packets | residual (> 300 ms) | repaired | \
         repair delay mean ms | p95 ms | base one-way ms | retransmitted KiB A / B / C = total |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, losses) in [
        Losses {
            client: 0.05,
            octo: 0.05,
        },
        Losses {
            client: 0.0,
            octo: 0.05,
        },
    ]
    .into_iter()
    .enumerate()
    {
        for mode in [RepairMode::PerHop, RepairMode::EndToEnd] {
            let names = [
                if losses.client > 0.0 {
                    "all_hops"
                } else {
                    "octo"
                },
                match mode {
                    RepairMode::PerHop => "per_hop",
                    RepairMode::EndToEnd => "end_to_end",
                },
            ];
            if !only.iter().all(|o| names.contains(&o.as_str())) {
                continue;
            }
            let o = rt.block_on(scenario(
                mode,
                losses,
                secs,
                100 + i as u64 * 10,
                repair_copy_ms,
            ))?;
            print(&o);
        }
    }
    Ok(())
}
