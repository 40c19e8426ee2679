//! The Redis directory through Sentinel against real processes on loopback: 1 master, 1
//! replica, 3 sentinels. The master is SIGKILLed; the same directory object finds the promoted
//! replica by itself, and what was written before the failover is still there.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, free_port, now_ms, record};
use kaskade_cluster::{Directory, RedisConfig, RedisDirectory};

const MASTER: &str = "kaskade-test";

fn redis(args: &[&str]) -> Proc {
    Proc(
        Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: tests/run.sh installs Debian's redis-server"),
    )
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kaskade-sentinel-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let dir = temp_dir();
    let (m, r) = (free_port(), free_port());
    // A full resync writes an RDB file: keep it in the test's directory, not the crate's.
    let dir_s = dir.to_string_lossy().into_owned();
    let common = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir_s,
    ];
    let ms = m.to_string();
    let rs = r.to_string();
    let mut master = Some(redis(&[&["--port", &ms][..], &common[..]].concat()));
    let _replica = redis(
        &[
            &["--port", &rs, "--replicaof", "127.0.0.1", &ms][..],
            &common[..],
        ]
        .concat(),
    );
    wait_until("the replica in sync", Duration::from_secs(10), || {
        cli(r, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let mut sentinels = Vec::new();
    let mut sentinel_ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {MASTER} 127.0.0.1 {m} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 3000\n"
            ),
        )
        .expect("sentinel conf");
        let conf = conf.to_string_lossy().into_owned();
        sentinels.push(redis(&[&conf, "--sentinel"]));
        sentinel_ports.push(port);
    }
    for p in &sentinel_ports {
        wait_until("sentinels see each other", Duration::from_secs(15), || {
            cli(*p, &["SENTINEL", "sentinels", MASTER])
                .matches("127.0.0.1")
                .count()
                >= 2
        });
    }

    let cfg = RedisConfig {
        sentinel_master_name: MASTER.into(),
        sentinel_addresses: sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
        ..RedisConfig::default()
    };
    let d = RedisDirectory::connect(&cfg)
        .await
        .expect("connect through sentinel");
    d.publish(&record("b-1", 1)).await.expect("publish");
    let id = d.conference("room", now_ms()).await.expect("room").id;
    wait_until("the write replicated", Duration::from_secs(5), || {
        cli(r, &["GET", "kaskade:room:{room}"]).trim() == id.to_string()
    });

    drop(master.take()); // SIGKILL
    let killed = Instant::now();
    loop {
        if d.publish(&record("b-1", 1)).await.is_ok() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(25),
            "no failover followed within 25 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = killed.elapsed();
    assert!(
        cli(
            sentinel_ports[0],
            &["SENTINEL", "get-master-addr-by-name", MASTER]
        )
        .contains(&rs),
        "the replica was not promoted"
    );
    assert_eq!(
        d.conference("room", now_ms())
            .await
            .expect("room after failover")
            .id,
        id,
        "the room's id was lost in the failover"
    );
    let snap = d.nodes(now_ms()).await.expect("nodes");
    assert_eq!(snap.nodes.len(), 1);
    eprintln!("directory writes resumed {took:?} after the master was killed");
    drop(sentinels);
    let _ = std::fs::remove_dir_all(&dir);
}
