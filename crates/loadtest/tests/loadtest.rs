//! The load run end to end: an in-process node, one publisher (Opus-shaped audio, 720p VP8
//! video) and two subscribers for ~3 s; every subscriber receives both tracks, nearly every
//! packet, and the report says so.

use std::time::Duration;

use kaskade_bridge::config::{DEV_API_KEY, DEV_API_SECRET};
use kaskade_loadtest::node::{InProcessNode, dev_config};
use kaskade_loadtest::report::Role;
use kaskade_loadtest::{LoadConfig, Resolution, run};

fn config(url: String) -> LoadConfig {
    LoadConfig {
        url,
        room: "load".into(),
        rooms: 1,
        video_publishers: 1,
        audio_publishers: 1,
        subscribers: 2,
        duration: Duration::from_secs(3),
        simulcast: false,
        resolution: Resolution::High,
        join_rate: 10.0,
        api_key: DEV_API_KEY.into(),
        api_secret: DEV_API_SECRET.into(),
        media_via: None,
        ssrc_tag: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_two_subscribers() {
    let node = InProcessNode::start(dev_config(10)).await.expect("node");
    let mut progress = Vec::new();
    let report = run(
        &config(format!("http://{}", node.http)),
        std::future::pending(),
        |p| progress.push(*p),
    )
    .await
    .expect("load run");
    eprintln!("{}", report.table());

    assert!(report.ok, "every client connected:\n{}", report.table());
    assert_eq!(report.clients.len(), 3);
    assert!(!progress.is_empty(), "progress was reported");
    assert!(progress.iter().any(|p| p.connected == 3));
    let subs: Vec<_> = report
        .clients
        .iter()
        .filter(|c| c.role == Role::Subscriber)
        .collect();
    assert_eq!(subs.len(), 2);
    for s in subs {
        assert_eq!(s.figures.tracks_expected, 2, "{}", s.name);
        assert_eq!(
            s.figures.tracks_received, s.figures.tracks_expected,
            "{}",
            s.name
        );
        // 3 s of ~300 video + 50 audio pps.
        assert!(
            s.figures.packets_received > 700,
            "{}: {}",
            s.name,
            s.figures.packets_received
        );
        assert!(
            s.figures.loss_pct < 1.0,
            "{}: {:.2}% loss",
            s.name,
            s.figures.loss_pct
        );
        // ~2.5 Mbps of 720p video and ~32 kbps of audio.
        assert!(
            (1500.0..4000.0).contains(&s.figures.bitrate_kbps),
            "{}: {:.0} kbps",
            s.name,
            s.figures.bitrate_kbps
        );
        assert!(s.figures.latency_p50_ms.is_some() && s.errors.is_empty());
        let sub_ms = s.subscriber_ms.expect("the subscriber leg came up");
        assert!(
            sub_ms <= s.connect_ms.expect("connected"),
            "{sub_ms} ms: the subscriber leg is part of being connected"
        );
    }
    let publisher = &report.clients[0];
    assert_eq!(publisher.role, Role::Publisher);
    assert_eq!(
        publisher.subscriber_ms, None,
        "the only publisher has nothing to receive: no subscriber leg"
    );
    assert!(publisher.publishes_audio && publisher.publishes_video);
    assert!(
        publisher.figures.sent_kbps > 1500.0,
        "{:.0}",
        publisher.figures.sent_kbps
    );
    assert_eq!(
        report.total.figures.tracks_received,
        report.total.figures.tracks_expected
    );
    assert_eq!(report.total.failed, 0);

    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON");
    assert_eq!(json["ok"], true);
    assert_eq!(json["total"]["tracks_received"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_cannot_connect_fail_the_run() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut c = config(format!("http://127.0.0.1:{port}"));
    c.subscribers = 1;
    c.duration = Duration::from_millis(500);
    let report = run(&c, std::future::pending(), |_| {})
        .await
        .expect("the run itself completes");
    assert!(!report.ok);
    assert_eq!(report.total.failed, 2);
    assert!(
        report
            .clients
            .iter()
            .all(|c| !c.connected && !c.errors.is_empty()),
        "{}",
        report.table()
    );
}
