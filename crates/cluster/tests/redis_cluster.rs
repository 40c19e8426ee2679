//! The Redis directory on a real Redis Cluster of 3 masters on loopback (created with
//! `redis-cli --cluster create`): every operation works with its keys spread over the slots.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, free_port, now_ms, record};
use kaskade_cluster::{Directory, NodeId, RedisConfig, RedisDirectory};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_on_a_three_master_cluster() {
    let dir = std::env::temp_dir().join(format!(
        "kaskade-rcluster-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs = Vec::new();
    for p in &ports {
        let conf = dir.join(format!("nodes-{p}.conf"));
        procs.push(Proc(
            Command::new("redis-server")
                .args([
                    "--port",
                    &p.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "redis-server is not installed: tests/run.sh installs Debian's redis-server",
                ),
        ));
    }
    for p in &ports {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server {p} did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for p in &ports {
        let t0 = Instant::now();
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "CLUSTER", "INFO"])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "cluster not ok on {p}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let cfg = RedisConfig {
        cluster_addresses: vec![addrs[0].clone()],
        ..RedisConfig::default()
    };
    let a = RedisDirectory::connect(&cfg).await.expect("connect a");
    let b = RedisDirectory::connect(&RedisConfig {
        cluster_addresses: vec![addrs[2].clone()],
        ..RedisConfig::default()
    })
    .await
    .expect("connect b");
    for i in 1..=5 {
        a.publish(&record(&format!("bridge-{i}"), i))
            .await
            .expect("publish");
    }
    let snap = b.nodes(now_ms()).await.expect("nodes");
    assert_eq!(snap.nodes.len(), 5);
    // Room keys land on every master; ids stay unique and agreed.
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..30 {
        let room = format!("room-{i}");
        let (x, y) = tokio::join!(a.conference(&room, now_ms()), b.conference(&room, now_ms()));
        let (x, y) = (x.expect("a"), y.expect("b"));
        assert_eq!(x.id, y.id);
        ids.insert(x.id);
    }
    assert_eq!(ids.len(), 30);
    let n = NodeId("bridge-1".into());
    let e = a.conference("room-7", now_ms()).await.expect("entry");
    a.set_host("room-7", e.id, &n, 3, now_ms())
        .await
        .expect("host");
    let e = b.conference("room-7", now_ms()).await.expect("entry");
    assert_eq!(e.hosts.get(&n), Some(&3));
    let spread: Vec<usize> = ports
        .iter()
        .map(|p| {
            let o = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "DBSIZE"])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    assert!(
        spread.iter().all(|k| *k > 0),
        "keys not spread over the masters: {spread:?}"
    );
    a.withdraw(&n).await.expect("withdraw");
    assert_eq!(b.nodes(now_ms()).await.expect("nodes").nodes.len(), 4);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
