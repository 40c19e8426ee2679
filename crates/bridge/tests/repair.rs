//! Loss on a client leg, through a real UDP impairment relay in front of the media port, is
//! repaired at that hop: uplink gaps are NACKed to the publisher, a subscriber's NACKs are
//! answered from the bridge's cache.
//!
//! The node binds its media port on 127.0.0.1 and advertises the same port on 127.0.0.2,
//! where the relay listens: every client leg runs through the relay and the bridge sees the
//! relay's per-client upstream sockets.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kaskade_bridge::messages::ServerMsg;
use kaskade_bridge::metrics::Metrics;
use kaskade_loadtest::node::{InProcessNode, dev_config};
use kaskade_netsim::{ImpairmentConfig, Relay, RelayHandle};

struct Setup {
    http: SocketAddr,
    metrics: Arc<Metrics>,
    relay: RelayHandle,
}

/// A node whose every client leg crosses a relay with `up` (client -> bridge) and `down`
/// impairments.
async fn node_behind_relay(up: ImpairmentConfig, down: ImpairmentConfig) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = dev_config(10);
    config.media.advertise_ip = Ipv4Addr::new(127, 0, 0, 2).into();
    let node = InProcessNode::start(config).await.expect("node starts");
    let listen = SocketAddr::from(([127, 0, 0, 2], node.media.port()));
    let relay = Relay::start(listen, node.media, down, up)
        .await
        .expect("relay on 127.0.0.2");
    Setup {
        http: node.http,
        metrics: node.metrics,
        relay,
    }
}

fn lossy(loss: f64) -> ImpairmentConfig {
    ImpairmentConfig {
        loss,
        delay: Duration::from_millis(5),
        ..ImpairmentConfig::none()
    }
}

/// Alice publishes, Bob subscribes; over ~6 s of media, returns how many of the video packets
/// from the first Bob got to the highest he saw reached him, and how many that is.
async fn bob_video(setup: &Setup, room: &str) -> (usize, usize) {
    let (mut alice, alice_stop) = spawn_client(ClientSpec {
        http: setup.http,
        room: room.into(),
        identity: "alice".into(),
        token: token(room, "alice"),
        publish: true,
    });
    let (mut bob, bob_stop) = spawn_client(ClientSpec {
        http: setup.http,
        room: room.into(),
        identity: "bob".into(),
        token: token(room, "bob"),
        publish: false,
    });
    expect(&mut alice, Duration::from_secs(10), "alice joined", |r| {
        matches!(r, Report::Signal(ServerMsg::Joined { .. })).then_some(())
    })
    .await;
    let mut kinds = HashMap::new();
    let mut seqs: HashSet<u16> = HashSet::new();
    // The first packet Bob got, in arrival order: what came before it (sent while his leg
    // was connecting, or repaired late) is nothing he could know to ask for.
    let mut first: Option<u16> = None;
    let mut started: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let is_video =
        |kinds: &HashMap<String, String>, t: &str| kinds.get(t).is_some_and(|k| k == "video");
    while started.is_none_or(|t| t.elapsed() < Duration::from_secs(6)) {
        assert!(Instant::now() < deadline, "media never flowed");
        let r = tokio::time::timeout(Duration::from_secs(5), bob.recv())
            .await
            .expect("bob hears something")
            .expect("bob runs");
        tracks_by_kind(&mut kinds, &r);
        match r {
            Report::Rtp { track, seq, .. } if is_video(&kinds, &track) => {
                started.get_or_insert_with(Instant::now);
                first.get_or_insert(seq);
                seqs.insert(seq);
            }
            Report::Failed(e) => panic!("bob: {e}"),
            _ => {}
        }
    }
    // Judge the packets sent so far, after their repairs had time to land: the publisher
    // keeps sending meanwhile (once it leaves, its source and cache go, and a packet lost
    // just before cannot be repaired any more).
    let (min, max) = (
        first.expect("packets"),
        *seqs.iter().max().expect("packets"),
    );
    let until = Instant::now() + Duration::from_millis(800);
    while let Ok(Some(r)) = tokio::time::timeout_at(until.into(), bob.recv()).await {
        if let Report::Rtp { track, seq, .. } = r
            && is_video(&kinds, &track)
        {
            seqs.insert(seq);
        }
    }
    let _ = alice_stop.send(true);
    let _ = bob_stop.send(true);
    assert!(max > min && (max - min) < 30_000, "no wrap in a 6 s window");
    let missing: Vec<u16> = (min..=max).filter(|s| !seqs.contains(s)).collect();
    if !missing.is_empty() {
        eprintln!("bob's video: {min}..={max}, missing {missing:?}");
    }
    let expected = usize::from(max - min) + 1;
    (expected - missing.len(), expected)
}

/// 10% loss from the clients to the bridge: the publisher's video gaps are NACKed by the
/// bridge and resent by the publisher (on the media SSRC: no RTX is negotiated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_loss_is_repaired_by_the_bridge() {
    let setup = node_behind_relay(lossy(0.10), lossy(0.0)).await;
    let (got, expected) = bob_video(&setup, "uplink").await;
    let m = &setup.metrics;
    let stats = setup.relay.stats();
    eprintln!(
        "relay dropped {} of {} upstream; bob got {got} of {expected}; bridge NACKs sent {}, \
         recovered {}, unrecovered {}",
        stats.up.dropped_loss,
        stats.up.received,
        m.repair_client.nacks_sent.get(),
        m.repair_client.recovered.get(),
        m.repair_client.lost_unrecovered.get(),
    );
    assert!(stats.up.dropped_loss > 20, "the uplink really lost packets");
    assert!(m.repair_client.nacks_sent.get() > 0, "the bridge asked");
    assert!(
        m.repair_client.recovered.get() > 0,
        "the publisher answered"
    );
    assert_eq!(got, expected, "every video packet reached bob");
}

/// 10% loss from the bridge to the clients: Bob's NACKs are answered from the bridge's cache
/// (the publisher's own link is clean, so nothing could come from it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_loss_is_answered_from_the_cache() {
    let setup = node_behind_relay(lossy(0.0), lossy(0.10)).await;
    let (got, expected) = bob_video(&setup, "downlink").await;
    let m = &setup.metrics;
    let stats = setup.relay.stats();
    eprintln!(
        "relay dropped {} of {} downstream; bob got {got} of {expected}; bridge NACKs received \
         {}, resent {} ({} B), suppressed {}, cache misses {}, NACKs sent upstream {}",
        stats.down.dropped_loss,
        stats.down.received,
        m.repair_client.nacks_received.get(),
        m.repair_client.retransmissions.get(),
        m.repair_client.retransmitted_bytes.get(),
        m.retransmissions_suppressed.get(),
        m.repair_client.cache_misses.get(),
        m.repair_client.nacks_sent.get(),
    );
    assert!(
        stats.down.dropped_loss > 20,
        "the downlink really lost packets"
    );
    assert!(m.repair_client.nacks_received.get() > 0, "bob asked");
    assert!(
        m.repair_client.retransmissions.get() > 0,
        "the bridge answered"
    );
    assert_eq!(
        m.repair_client.nacks_sent.get(),
        0,
        "a downlink loss is never asked of the publisher"
    );
    assert_eq!(got, expected, "every video packet reached bob");
}
