//! How fast the cluster directory places joins: each join does what signaling does before a
//! participant exists (the room's id and hosts, the node registry, bridge selection), through
//! the Redis directory against a real `redis-server` on loopback, and through the embedded
//! one for reference. Prints joins per second and the latency a join pays, p50/p99/max.
//!
//! `cargo bench -p kaskade-benches --bench directory [-- --seconds 10 --concurrency 16]`

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kaskade_cluster::{
    Directory, MemoryDirectory, NodeId, NodeRecord, Placements, RedisConfig, RedisDirectory,
    SelectionParams,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn record(i: u32) -> NodeRecord {
    NodeRecord {
        id: NodeId(format!("bridge-{i}")),
        octo_id: i,
        region: ["eu", "us", "ap"][(i % 3) as usize].into(),
        octo_addr: format!("127.0.0.1:{}", 4000 + i)
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        signaling_url: format!("ws://127.0.0.1:{}/ws", 7000 + i),
        stress: 0.1 * f64::from(i),
        participants: 0,
        conferences: 0,
        draining: false,
        updated_ms: now_ms(),
    }
}

/// One join's directory work, as `ClusterNode::place` does it.
async fn place<D: Directory>(d: &D, room: &str, params: &SelectionParams) -> Result<()> {
    let now = now_ms();
    let entry = d.conference(room, now).await?;
    let nodes = d.nodes(now).await?;
    let hosts: HashMap<NodeId, u32> = entry.hosts.clone();
    let chosen = kaskade_cluster::select::select(
        &nodes.nodes,
        &hosts,
        entry.id,
        "eu",
        params,
        &Placements::default(),
        now,
    )
    .context("no bridge selectable")?;
    d.set_host(room, entry.id, &chosen.node, 1, now).await?;
    Ok(())
}

async fn run<D: Directory>(
    name: &str,
    dirs: Vec<Arc<D>>,
    seconds: u64,
    concurrency: usize,
) -> Result<()> {
    for (i, d) in dirs.iter().enumerate() {
        d.publish(&record(i as u32 + 1)).await?;
    }
    let params = SelectionParams::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let d = dirs[t % dirs.len()].clone();
        let params = params.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Most joins are to rooms that exist; one in four makes a new room.
                let room = if n.is_multiple_of(4) {
                    format!("new-{t}-{n}")
                } else {
                    format!("room-{}", n % 50)
                };
                let t0 = Instant::now();
                place(d.as_ref(), &room, &params).await?;
                lat.push(t0.elapsed());
                n += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let took = t0.elapsed().as_secs_f64();
    all.sort_unstable();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{name:<24} {:>8.0} joins/s   p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms   ({} joins, {concurrency} in flight, {} directory clients)",
        all.len() as f64 / took,
        q(0.50).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        all.len(),
        dirs.len(),
    );
    Ok(())
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds = arg(&args, "--seconds", 10);
    let concurrency = arg(&args, "--concurrency", 16) as usize;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian package redis-server)")?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = RedisConfig {
        address: format!("127.0.0.1:{port}"),
        ..RedisConfig::default()
    };
    let mut redis = Vec::new();
    for _ in 0..3 {
        redis.push(Arc::new(RedisDirectory::connect(&cfg).await?));
    }
    let r = async {
        run(
            "embedded (memory)",
            vec![Arc::new(MemoryDirectory::new())],
            seconds,
            concurrency,
        )
        .await?;
        run("redis (3 bridges)", redis, seconds, concurrency).await
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    r
}
