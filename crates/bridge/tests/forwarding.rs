//! Publish, subscribe, media flows, leave: real `rtc` clients against a real node over
//! loopback UDP and a real WebSocket.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kaskade_bridge::messages::{ServerMsg, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_forward_leave() {
    let (http, metrics) = start_node(10).await;
    let spec = |id: &str, publish: bool| ClientSpec {
        http,
        room: "room-1".into(),
        identity: id.into(),
        token: token("room-1", id),
        publish,
    };
    let (mut alice, alice_stop) = spawn_client(spec("alice", true));
    let alice_id = expect(
        &mut alice,
        Duration::from_secs(5),
        "alice joined",
        |r| match r {
            Report::Signal(ServerMsg::Joined { participant, .. }) => Some(participant.id.clone()),
            _ => None,
        },
    )
    .await;
    expect(
        &mut alice,
        Duration::from_secs(10),
        "alice publisher connected",
        |r| matches!(r, Report::Connected(Target::Publisher)).then_some(()),
    )
    .await;
    // A track is published at its first packet: wait for both before Bob joins, so that his
    // `joined` lists them (under load the video's first frame may lag the connection).
    let t0 = std::time::Instant::now();
    while metrics.tracks.get() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "alice's tracks not published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut bob, bob_stop) = spawn_client(spec("bob", false));
    let others = expect(
        &mut bob,
        Duration::from_secs(5),
        "bob joined",
        |r| match r {
            Report::Signal(ServerMsg::Joined { participants, .. }) => Some(participants.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].id, alice_id);
    assert_eq!(
        others[0].tracks.len(),
        2,
        "alice's tracks are listed at join"
    );
    let kinds: HashMap<String, String> = others[0]
        .tracks
        .iter()
        .map(|t| (t.id.clone(), t.kind.clone()))
        .collect();

    // Bob receives both of Alice's tracks, with her payload intact and a bridge-chosen SSRC.
    let mut got: HashMap<String, u32> = HashMap::new();
    expect(
        &mut bob,
        Duration::from_secs(10),
        "audio and video at bob",
        |r| {
            if let Report::Rtp {
                track,
                ssrc,
                payload,
                ..
            } = r
            {
                let text = String::from_utf8_lossy(payload);
                assert!(
                    text.starts_with(&format!("{AUDIO_SSRC:08x}:"))
                        || text.starts_with(&format!("{VIDEO_SSRC:08x}:")),
                    "payload forwarded untouched: {text}"
                );
                assert_ne!(*ssrc, AUDIO_SSRC);
                assert_ne!(*ssrc, VIDEO_SSRC);
                *got.entry(kinds.get(track).cloned().unwrap_or_default())
                    .or_default() += 1;
            }
            (got.get("audio").copied().unwrap_or(0) >= 20
                && got.get("video").copied().unwrap_or(0) >= 20)
                .then_some(())
        },
    )
    .await;
    assert!(metrics.rtp_forwarded.get() >= 40);
    // Bob's leg verified the lean egress on its first copy (leg/lean.rs), and the rtc client
    // decrypted what it encrypted: all but that first copy took the lean path.
    let verified = metrics
        .lean_egress_legs
        .with_label_values(&["verified"])
        .get();
    assert_eq!(verified, 1, "bob's subscriber leg went lean");
    assert_eq!(
        metrics
            .lean_egress_legs
            .with_label_values(&["mismatch"])
            .get(),
        0
    );
    assert!(metrics.rtp_forwarded_lean.get() + 1 >= metrics.rtp_forwarded.get());
    // Each of those came in as an RTP datagram, timed from its kernel receive stamp to the end
    // of the send pass that forwarded it (kaskade_forwarding_delay_seconds{input="client"}).
    let delay = &metrics.forwarding_delay.client;
    let n = delay.get_sample_count();
    assert!(n >= 30, "forwarding delay samples: {n}");
    let mean = delay.get_sample_sum() / n as f64;
    assert!(
        mean > 0.0 && mean < 0.25,
        "mean forwarding delay {mean} s over {n} datagrams"
    );
    assert_eq!(metrics.forwarding_delay.octo.get_sample_count(), 0);

    // Alice never receives her own media: she has no subscriber offer at all.
    while let Ok(r) = alice.try_recv() {
        assert!(
            !matches!(
                r,
                Report::Rtp { .. } | Report::Signal(ServerMsg::Offer { .. })
            ),
            "alice got {r:?}"
        );
    }

    // Alice leaves: Bob hears about it and her tracks go away.
    alice_stop.send(true).expect("stop alice");
    let mut unpublished = 0;
    expect(
        &mut bob,
        Duration::from_secs(5),
        "alice left",
        |r| match r {
            Report::Signal(ServerMsg::TrackUnpublished { participant_id, .. }) => {
                assert_eq!(participant_id, &alice_id);
                unpublished += 1;
                None
            }
            Report::Signal(ServerMsg::ParticipantLeft { participant_id }) => {
                assert_eq!(participant_id, &alice_id);
                Some(())
            }
            _ => None,
        },
    )
    .await;
    assert_eq!(unpublished, 2);
    bob_stop.send(true).expect("stop bob");
}

/// Churn on one subscriber leg: Alice publishes and leaves, then Carol publishes tracks of the
/// same kinds. The bridge's `rtc` reuses the transceivers Alice's tracks left behind (same
/// mids, new SSRCs), and Bob must receive Carol's media on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_a_new_publisher_after_another_left() {
    let (http, _metrics) = start_node(10).await;
    let spec = |id: &str, publish: bool| ClientSpec {
        http,
        room: "room-churn".into(),
        identity: id.into(),
        token: token("room-churn", id),
        publish,
    };
    let (mut bob, bob_stop) = spawn_client(spec("bob", false));
    let (mut alice, alice_stop) = spawn_client(spec("alice", true));
    expect(
        &mut alice,
        Duration::from_secs(10),
        "alice publisher connected",
        |r| matches!(r, Report::Connected(Target::Publisher)).then_some(()),
    )
    .await;
    let mut kinds = HashMap::new();
    let mut got: HashMap<String, u32> = HashMap::new();
    expect(
        &mut bob,
        Duration::from_secs(10),
        "alice's media at bob",
        |r| {
            tracks_by_kind(&mut kinds, r);
            if let Report::Rtp { track, .. } = r {
                *got.entry(kinds.get(track).cloned().unwrap_or_default())
                    .or_default() += 1;
            }
            (got.get("audio").copied().unwrap_or(0) >= 10
                && got.get("video").copied().unwrap_or(0) >= 10)
                .then_some(())
        },
    )
    .await;
    alice_stop.send(true).expect("stop alice");
    expect(&mut bob, Duration::from_secs(5), "alice left", |r| {
        matches!(r, Report::Signal(ServerMsg::ParticipantLeft { .. })).then_some(())
    })
    .await;

    let (_carol, carol_stop) = spawn_client(spec("carol", true));
    let mut carol_tracks: HashMap<String, String> = HashMap::new();
    let mut got: HashMap<String, u32> = HashMap::new();
    expect(
        &mut bob,
        Duration::from_secs(10),
        "carol's media at bob",
        |r| {
            if let Report::Signal(ServerMsg::TrackPublished { track, .. }) = r {
                carol_tracks.insert(track.id.clone(), track.kind.clone());
            }
            if let Report::Rtp { track, .. } = r
                && let Some(kind) = carol_tracks.get(track)
            {
                *got.entry(kind.clone()).or_default() += 1;
            }
            (got.get("audio").copied().unwrap_or(0) >= 10
                && got.get("video").copied().unwrap_or(0) >= 10)
                .then_some(())
        },
    )
    .await;
    carol_stop.send(true).expect("stop carol");
    bob_stop.send(true).expect("stop bob");
}

/// Alice leaves right after Bob joined: the tracks of his first subscriber offer end before
/// they ever carried a packet to him (what a cascade sees when participants move bridges).
/// Carol's tracks, published next, must reach him: a transceiver whose stream his `rtc` never
/// bound must not be reused for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_that_never_carried_media_do_not_block_the_next_ones() {
    let (http, _metrics) = start_node(10).await;
    for round in 0..3 {
        let room = format!("room-race-{round}");
        let spec = |id: &str, publish: bool| ClientSpec {
            http,
            room: room.clone(),
            identity: id.into(),
            token: token(&room, id),
            publish,
        };
        let (mut alice, alice_stop) = spawn_client(spec("alice", true));
        expect(
            &mut alice,
            Duration::from_secs(10),
            "alice publisher connected",
            |r| matches!(r, Report::Connected(Target::Publisher)).then_some(()),
        )
        .await;
        let (mut bob, bob_stop) = spawn_client(spec("bob", false));
        expect(&mut bob, Duration::from_secs(5), "bob joined", |r| {
            matches!(r, Report::Signal(ServerMsg::Joined { .. })).then_some(())
        })
        .await;
        alice_stop.send(true).expect("stop alice");
        expect(&mut bob, Duration::from_secs(5), "alice left", |r| {
            matches!(r, Report::Signal(ServerMsg::ParticipantLeft { .. })).then_some(())
        })
        .await;
        let (_carol, carol_stop) = spawn_client(spec("carol", true));
        let mut carol_tracks: HashMap<String, String> = HashMap::new();
        let mut got: HashMap<String, u32> = HashMap::new();
        expect(
            &mut bob,
            Duration::from_secs(10),
            "carol's media at bob",
            |r| {
                if let Report::Signal(ServerMsg::TrackPublished { track, .. }) = r {
                    carol_tracks.insert(track.id.clone(), track.kind.clone());
                }
                if let Report::Rtp { track, .. } = r
                    && let Some(kind) = carol_tracks.get(track)
                {
                    *got.entry(kind.clone()).or_default() += 1;
                }
                (got.get("audio").copied().unwrap_or(0) >= 10
                    && got.get("video").copied().unwrap_or(0) >= 10)
                    .then_some(())
            },
        )
        .await;
        carol_stop.send(true).expect("stop carol");
        bob_stop.send(true).expect("stop bob");
    }
}
