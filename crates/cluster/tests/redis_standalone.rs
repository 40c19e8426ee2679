//! The Redis directory against a real `redis-server` on a loopback port (tests/run.sh installs
//! Debian's package): ids handed out once under concurrency, records with a real TTL, bad
//! records refused, authentication and db, and a Redis restart survived.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{now_ms, record};
use kaskade_cluster::directory::HOST_TTL_MS;
use kaskade_cluster::{Directory, DirectoryError, NodeId, RedisConfig, RedisDirectory};

struct Server {
    child: Child,
    port: u16,
    args: Vec<String>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, &args);
        let s = Server { child, port, args };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.args);
        self.wait_ready();
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(i) = self.args.iter().position(|a| a == "--requirepass") {
            cmd.args(["-a", &self.args[i + 1], "--no-auth-warning"]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli (tests/run.sh installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn spawn(port: u16, extra: &[String]) -> Child {
    Command::new("redis-server")
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
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is not installed: tests/run.sh installs Debian's redis-server")
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(s: &Server) -> RedisConfig {
    RedisConfig {
        address: format!("127.0.0.1:{}", s.port),
        ..RedisConfig::default()
    }
}

#[tokio::test]
async fn registry_ids_and_hosts() {
    let s = Server::start(&[]);
    let a = RedisDirectory::connect(&config(&s))
        .await
        .expect("connect a");
    let b = RedisDirectory::connect(&config(&s))
        .await
        .expect("connect b");

    a.publish(&record("b-1", 1)).await.expect("publish");
    b.publish(&record("b-2", 2)).await.expect("publish");
    let snap = a.nodes(now_ms()).await.expect("nodes");
    let ids: Vec<&str> = snap.nodes.iter().map(|n| n.id.0.as_str()).collect();
    assert_eq!(ids, ["b-1", "b-2"]);
    assert_eq!(snap.refused, 0);
    // The record really carries a TTL in Redis: a dead node goes by itself.
    let pttl: i64 = s
        .cli(&["PTTL", "kaskade:node:{b-1}"])
        .parse()
        .expect("pttl");
    assert!(pttl > 0 && pttl <= 10_000, "PTTL {pttl}");

    // Forged data: garbage JSON, a bad address, a record under another node's key.
    s.cli(&["SET", "kaskade:node:{evil}", "{not json"]);
    s.cli(&["SADD", "kaskade:nodes", "evil"]);
    let mut bad = record("bad", 9);
    bad.octo_addr = "0.0.0.0:4096".parse().expect("addr");
    s.cli(&[
        "SET",
        "kaskade:node:{bad}",
        &serde_json::to_string(&bad).expect("json"),
    ]);
    s.cli(&["SADD", "kaskade:nodes", "bad"]);
    s.cli(&["SET", "kaskade:node:{liar}", &record("b-1", 1).to_json()]);
    s.cli(&["SADD", "kaskade:nodes", "liar"]);
    let snap = b.nodes(now_ms()).await.expect("nodes");
    assert_eq!(snap.nodes.len(), 2, "only the valid records");
    assert_eq!(snap.refused, 3);

    // One new room asked for by two bridges at once: one id for both. 20 rooms: 20 ids.
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..20 {
        let room = format!("room-{i}");
        let (x, y) = tokio::join!(a.conference(&room, now_ms()), b.conference(&room, now_ms()));
        let (x, y) = (x.expect("a"), y.expect("b"));
        assert_eq!(x.id, y.id, "{room}: two ids");
        assert_ne!(x.id, 0);
        ids.insert(x.id);
    }
    assert_eq!(ids.len(), 20, "ids collide");

    // Hosts: counts, fresh only, 0 removes.
    let n1 = NodeId("b-1".into());
    let n2 = NodeId("b-2".into());
    a.set_host("room-1", 0, &n1, 4, now_ms())
        .await
        .expect("host");
    b.set_host("room-1", 0, &n2, 2, now_ms() - HOST_TTL_MS - 1)
        .await
        .expect("stale host");
    let e = a.conference("room-1", now_ms()).await.expect("entry");
    assert_eq!(e.hosts.get(&n1), Some(&4));
    assert!(
        !e.hosts.contains_key(&n2),
        "a stale host entry is not a host"
    );
    a.set_host("room-1", 0, &n1, 0, now_ms())
        .await
        .expect("unhost");
    let e = a.conference("room-1", now_ms()).await.expect("entry");
    assert!(e.hosts.is_empty());

    // An id claimed by another room is refused, never mixed.
    s.cli(&["SET", "kaskade:room:{hijack}", &e.id.to_string()]);
    match a.conference("hijack", now_ms()).await {
        Err(DirectoryError::Refused(_)) => {}
        other => panic!("a hijacked id was accepted: {other:?}"),
    }

    // Redis comes back empty: a host's heartbeat puts its live room's id back, and the
    // counter moves past it, so no new room gets that id.
    let live = a.conference("live-room", now_ms()).await.expect("live").id;
    s.cli(&["FLUSHALL"]);
    a.set_host("live-room", live, &n1, 2, now_ms())
        .await
        .expect("reclaim");
    assert_eq!(
        b.conference("live-room", now_ms()).await.expect("after").id,
        live
    );
    let fresh = b.conference("brand-new", now_ms()).await.expect("new").id;
    assert!(
        fresh > live,
        "a new room took id {fresh}, not past the live {live}"
    );

    a.withdraw(&n1).await.expect("withdraw");
    let snap = a.nodes(now_ms()).await.expect("nodes");
    assert!(snap.nodes.iter().all(|n| n.id != n1));
}

#[tokio::test]
async fn password_and_db() {
    let s = Server::start(&["--requirepass", "s3cret-pass"]);
    let mut c = config(&s);
    let refused = RedisDirectory::connect(&c).await;
    assert!(
        matches!(refused, Err(DirectoryError::Unavailable(_))),
        "no password accepted"
    );
    c.password = "s3cret-pass".into();
    c.db = 3;
    let d = RedisDirectory::connect(&c)
        .await
        .expect("connect with password");
    d.publish(&record("b-9", 9)).await.expect("publish");
    assert_eq!(
        s.cli(&["-n", "3", "SISMEMBER", "kaskade:nodes", "b-9"]),
        "1"
    );
    assert_eq!(
        s.cli(&["-n", "0", "SISMEMBER", "kaskade:nodes", "b-9"]),
        "0"
    );
}

#[tokio::test]
async fn a_redis_restart_is_survived() {
    let mut s = Server::start(&[]);
    let d = RedisDirectory::connect(&config(&s)).await.expect("connect");
    d.publish(&record("b-1", 1)).await.expect("publish");
    s.kill();
    let t0 = Instant::now();
    let r = d.publish(&record("b-1", 1)).await;
    assert!(matches!(r, Err(DirectoryError::Unavailable(_))), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "a lost Redis must not hang a call: {:?}",
        t0.elapsed()
    );
    s.restart();
    // The same directory object reconnects by itself.
    let t0 = Instant::now();
    loop {
        if d.publish(&record("b-1", 1)).await.is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no reconnect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let snap = d.nodes(now_ms()).await.expect("nodes");
    assert_eq!(snap.nodes.len(), 1, "re-registered after the restart");
}

/// The admin API's cluster-wide list: hosted rooms with their hosts, from every bridge's
/// writes; a room whose hosts went stale leaves the list (and its index entry) by itself.
#[tokio::test]
async fn conferences_lists_the_hosted_rooms_of_every_bridge() {
    let s = Server::start(&[]);
    let a = RedisDirectory::connect(&config(&s))
        .await
        .expect("connect a");
    let b = RedisDirectory::connect(&config(&s))
        .await
        .expect("connect b");
    let t = now_ms();
    let x = a.conference("x", t).await.expect("x");
    let y = b.conference("y", t).await.expect("y");
    b.conference("never-hosted", t).await.expect("z");
    a.set_host("x", x.id, &NodeId("b-1".into()), 2, t)
        .await
        .expect("host");
    b.set_host("x", x.id, &NodeId("b-2".into()), 1, t)
        .await
        .expect("host");
    b.set_host("y", y.id, &NodeId("b-2".into()), 4, t)
        .await
        .expect("host");
    let list = a.conferences(t, 100).await.expect("list");
    let got: Vec<(String, u32, usize, u32)> = list
        .iter()
        .map(|c| {
            (
                c.room.clone(),
                c.id,
                c.hosts.len(),
                c.hosts.values().sum::<u32>(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("x".to_string(), x.id, 2, 3), ("y".to_string(), y.id, 1, 4)]
    );
    assert_eq!(a.conferences(t, 1).await.expect("list").len(), 1);
    // Later than the hosts' TTL: nothing is hosted, and the index is cleaned.
    let later = t + HOST_TTL_MS + 1;
    assert!(a.conferences(later, 100).await.expect("list").is_empty());
    assert_eq!(s.cli(&["SCARD", "kaskade:rooms"]), "0");
}
