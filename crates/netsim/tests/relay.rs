//! The relay over real loopback UDP, with an echo server behind it.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaskade_netsim::{ImpairmentConfig, RateLimit, Relay, RelayOptions};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An echo server on loopback; returns its address and the source addresses it has seen.
async fn echo_server() -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>) {
    let socket = UdpSocket::bind(any_port()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            seen2.lock().unwrap().insert(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

struct Probe {
    sent: u64,
    returned: u64,
    rtts: Vec<Duration>,
    foreign: u64,
}

/// Sends `n` numbered 100-byte probes through `relay`, `per_tick` every millisecond, and
/// collects the echoes until `settle` after the last send. With a `window`, at most that many
/// probes are unanswered at once: no kernel buffer on the way can then overflow, however the
/// machine schedules the test (so any loss is the relay's).
async fn probe(
    relay: SocketAddr,
    n: u64,
    per_tick: u64,
    window: Option<u64>,
    settle: Duration,
) -> Probe {
    let socket = Arc::new(UdpSocket::bind(any_port()).await.unwrap());
    socket.connect(relay).await.unwrap();
    let sent_at = Arc::new(Mutex::new(vec![None::<Instant>; n as usize]));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let answered = Arc::new(AtomicU64::new(0));
    let answer = Arc::new(Notify::new());
    let rx = {
        let socket = socket.clone();
        let sent_at = sent_at.clone();
        let answered = answered.clone();
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut got = vec![None::<Duration>; n as usize];
            let mut foreign = 0;
            let mut buf = [0u8; 2048];
            loop {
                let len = tokio::select! {
                    r = socket.recv(&mut buf) => r.unwrap(),
                    _ = &mut done_rx => break,
                };
                let now = Instant::now();
                let i = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
                let sent = sent_at.lock().unwrap().get(i).copied().flatten();
                match sent {
                    Some(s) if len == 100 && got[i].is_none() => got[i] = Some(now - s),
                    _ => foreign += 1,
                }
                answered.fetch_add(1, Relaxed);
                answer.notify_one();
            }
            (got, foreign)
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut i = 0;
    while i < n {
        tick.tick().await;
        for _ in 0..per_tick.min(n - i) {
            while let Some(w) = window
                && i - answered.load(Relaxed) >= w
            {
                tokio::time::timeout(Duration::from_secs(2), answer.notified())
                    .await
                    .expect("probe lost: no echo within 2 s");
            }
            let mut p = [0u8; 100];
            p[..8].copy_from_slice(&i.to_be_bytes());
            sent_at.lock().unwrap()[i as usize] = Some(Instant::now());
            socket.send(&p).await.unwrap();
            i += 1;
        }
    }
    tokio::time::sleep(settle).await;
    done_tx.send(()).unwrap();
    let (got, foreign) = rx.await.unwrap();
    let rtts: Vec<Duration> = got.iter().flatten().copied().collect();
    Probe {
        sent: n,
        returned: rtts.len() as u64,
        rtts,
        foreign,
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn ten_percent_loss_each_way_and_20ms_delay() {
    let (echo, _) = echo_server().await;
    let way = ImpairmentConfig {
        loss: 0.10,
        delay: Duration::from_millis(20),
        ..Default::default()
    };
    let relay = Relay::start_with(RelayOptions {
        down: way.clone(),
        up: way,
        seed: 2024,
        ..RelayOptions::new(any_port(), echo)
    })
    .await
    .unwrap();
    let p = probe(
        relay.local_addr(),
        1000,
        1,
        None,
        Duration::from_millis(300),
    )
    .await;
    let stats = relay.stop().await;

    let lost = 1.0 - p.returned as f64 / p.sent as f64;
    // 1 - 0.9^2 = 0.19; sigma over 1000 probes is 0.012.
    assert!((lost - 0.19).abs() < 0.04, "echo loss {lost}");
    let min = *p.rtts.iter().min().unwrap();
    let med = median(&p.rtts);
    eprintln!("echo loss {lost:.3}, rtt min {min:?} median {med:?}, {stats:?}");
    // 20 ms each way is a floor (timers never fire early); a loaded machine adds a little.
    assert!(min >= Duration::from_millis(40), "min rtt {min:?}");
    assert!(med <= Duration::from_millis(50), "median rtt {med:?}");
    assert_eq!(p.foreign, 0);

    // The counters tell the same story.
    assert_eq!(stats.up.received, 1000);
    assert_eq!(stats.up.dropped(), stats.up.dropped_loss);
    assert_eq!(stats.up.forwarded + stats.up.dropped_loss, 1000);
    assert_eq!(stats.down.received, stats.up.forwarded);
    assert_eq!(
        stats.down.forwarded + stats.down.dropped_loss,
        stats.down.received
    );
    assert_eq!(stats.down.forwarded, p.returned);
    for (name, d) in [("up", stats.up), ("down", stats.down)] {
        let r = d.dropped_loss as f64 / d.received as f64;
        assert!((r - 0.10).abs() < 0.035, "{name} loss {r}");
        assert_eq!(d.send_errors, 0);
    }
    assert_eq!(stats.sessions_opened, 1);
}

#[tokio::test]
async fn transparent_relay_loses_nothing() {
    let (echo, _) = echo_server().await;
    let relay = Relay::start(
        any_port(),
        echo,
        ImpairmentConfig::none(),
        ImpairmentConfig::none(),
    )
    .await
    .unwrap();
    let p = probe(
        relay.local_addr(),
        2000,
        10,
        Some(50),
        Duration::from_millis(200),
    )
    .await;
    let stats = relay.stop().await;
    assert_eq!(p.returned, 2000);
    assert_eq!(p.foreign, 0);
    assert_eq!(stats.up.forwarded, 2000);
    assert_eq!(stats.down.forwarded, 2000);
    assert_eq!(stats.up.forwarded_bytes, 200_000);
    assert_eq!(stats.up.dropped() + stats.down.dropped(), 0);
    // Only the relay's own scheduling: well under a millisecond when the machine is idle; the
    // bound leaves room for a busy one.
    assert!(median(&p.rtts) < Duration::from_millis(10));
}

#[tokio::test]
async fn rate_cap_holds_throughput_over_real_udp() {
    let (echo, _) = echo_server().await;
    let up = ImpairmentConfig {
        rate: Some(RateLimit::new(4_000_000)),
        ..Default::default()
    };
    let relay = Relay::start(any_port(), echo, ImpairmentConfig::none(), up)
        .await
        .unwrap();
    let c = Arc::new(UdpSocket::bind(any_port()).await.unwrap());
    c.connect(relay.local_addr()).await.unwrap();
    let rx = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(300), c.recv(&mut buf)).await
            {
                arrivals.push(Instant::now());
            }
            arrivals
        })
    };
    // 1000-byte datagrams, two per millisecond: 16 Mbit/s offered to a 4 Mbit/s cap.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..1000 {
        tick.tick().await;
        c.send(&[0u8; 1000]).await.unwrap();
        c.send(&[0u8; 1000]).await.unwrap();
    }
    let arrivals = rx.await.unwrap();
    let stats = relay.stop().await;
    let secs = (*arrivals.last().unwrap() - arrivals[0]).as_secs_f64();
    let bps = (arrivals.len() - 1) as f64 * 8000.0 / secs;
    eprintln!("rate cap: {bps:.0} bit/s over {secs:.3} s, {stats:?}");
    assert!((bps - 4e6).abs() < 4e6 * 0.05, "throughput {bps}");
    assert_eq!(
        stats.up.forwarded + stats.up.dropped_queue,
        stats.up.received
    );
    assert!(stats.up.dropped_queue > 1000);
}

#[tokio::test]
async fn reordering_over_real_udp_keeps_every_datagram() {
    let (echo, _) = echo_server().await;
    let down = ImpairmentConfig {
        reorder: 0.1,
        reorder_delay: Duration::from_millis(10),
        ..Default::default()
    };
    let relay = Relay::start_with(RelayOptions {
        down,
        seed: 5,
        ..RelayOptions::new(any_port(), echo)
    })
    .await
    .unwrap();
    let c = Arc::new(UdpSocket::bind(any_port()).await.unwrap());
    c.connect(relay.local_addr()).await.unwrap();
    let rx = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut order = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), c.recv(&mut buf)).await
            {
                order.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
            }
            order
        })
    };
    // 2 ms apart: a 10 ms hold lets ~4 later datagrams overtake.
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for i in 0..500u32 {
        tick.tick().await;
        c.send(&i.to_be_bytes()).await.unwrap();
    }
    let order = rx.await.unwrap();
    let stats = relay.stop().await;
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..500).collect::<Vec<_>>(), "lost or duplicated");
    let late = order.windows(2).filter(|w| w[0] > w[1]).count() as u64;
    assert!(late > 20, "only {late} inversions");
    assert!(late <= stats.down.reordered);
    assert!((stats.down.reordered as f64 / 500.0 - 0.1).abs() < 0.05);
}

#[tokio::test]
async fn each_client_gets_its_own_mapping_and_its_own_replies() {
    let (echo, seen) = echo_server().await;
    let relay = Relay::start(
        any_port(),
        echo,
        ImpairmentConfig::none(),
        ImpairmentConfig::none(),
    )
    .await
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let s = UdpSocket::bind(any_port()).await.unwrap();
        s.connect(relay.local_addr()).await.unwrap();
        clients.push(s);
    }
    for round in 0..5u8 {
        for (k, c) in clients.iter().enumerate() {
            c.send(&[k as u8, round]).await.unwrap();
        }
        for (k, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
                .await
                .expect("echo")
                .unwrap();
            assert_eq!(
                &buf[..n],
                &[k as u8, round],
                "client {k} got another's reply"
            );
        }
    }
    let sources = seen.lock().unwrap().clone();
    assert_eq!(sources.len(), 3, "one upstream source per client");
    for c in &clients {
        assert!(!sources.contains(&c.local_addr().unwrap()));
    }
    let stats = relay.stats();
    assert_eq!(stats.sessions_opened, 3);
    assert_eq!(stats.sessions_active, 3);
    assert_eq!(stats.up.forwarded, 15);
}

#[tokio::test]
async fn idle_mappings_close_and_reopen() {
    let (echo, seen) = echo_server().await;
    let relay = Relay::start_with(RelayOptions {
        idle_timeout: Duration::from_millis(100),
        ..RelayOptions::new(any_port(), echo)
    })
    .await
    .unwrap();
    let c = UdpSocket::bind(any_port()).await.unwrap();
    c.connect(relay.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    c.send(b"a").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(relay.stats().sessions_active, 0);
    c.send(b"b").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let stats = relay.stats();
    assert_eq!((stats.sessions_opened, stats.sessions_active), (2, 1));
    // A new mapping is a new upstream socket.
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn dropping_the_handle_frees_the_port() {
    let (echo, _) = echo_server().await;
    let relay = Relay::start(
        any_port(),
        echo,
        ImpairmentConfig::none(),
        ImpairmentConfig::none(),
    )
    .await
    .unwrap();
    let addr = relay.local_addr();
    drop(relay);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("relay port still bound after drop: {e}"),
        }
    }
}

#[tokio::test]
async fn invalid_impairment_is_refused() {
    let bad = ImpairmentConfig {
        loss: 2.0,
        ..Default::default()
    };
    let r = Relay::start(any_port(), any_port(), bad, ImpairmentConfig::none()).await;
    assert_eq!(r.err().unwrap().kind(), std::io::ErrorKind::InvalidInput);
}

/// The binary as Python tests use it: start, wait for the listening line, send, SIGTERM, read
/// the JSON line.
#[tokio::test]
async fn binary_reports_counters_on_sigterm() {
    let (echo, _) = echo_server().await;
    // Find a free port for --listen (the binary needs a fixed one, as scripts give it).
    let listen = std::net::UdpSocket::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kaskade-netsim"))
        .args([
            "--listen",
            &listen.to_string(),
            "--upstream",
            &echo.to_string(),
        ])
        .args([
            "--loss",
            "0.5",
            "--delay-ms",
            "5",
            "--symmetric",
            "--seed",
            "7",
        ])
        .args(["--duration-secs", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    assert!(line.starts_with("kaskade-netsim listening on"), "{line}");

    let p = probe(listen, 200, 1, None, Duration::from_millis(100)).await;
    // ~25% come back through 50% loss each way.
    assert!(
        p.returned > 20 && p.returned < 90,
        "{} returned",
        p.returned
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let j = lines[0];
    assert!(j.starts_with("{\"seed\":7,"), "{j}");
    assert!(j.contains("\"up\":{\"received\":200,"), "{j}");
    assert!(
        j.contains(&format!(
            "\"down\":{{\"received\":{},",
            200 - count(j, "up", "dropped")
        )),
        "{j}"
    );
}

/// A number field of one direction's object in the JSON line.
fn count(json: &str, dir: &str, field: &str) -> u64 {
    let obj = &json[json.find(&format!("\"{dir}\":{{")).unwrap()..];
    let key = format!("\"{field}\":");
    let at = obj.find(&key).unwrap() + key.len();
    obj[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn help_lists_both_directions() {
    let out = Command::new(env!("CARGO_BIN_EXE_kaskade-netsim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--loss",
        "--burst-enter",
        "--delay-ms",
        "--jitter-ms",
        "--reorder",
        "--rate-kbps",
        "--up-loss",
        "--up-rate-kbps",
        "--symmetric",
        "--duration-secs",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
