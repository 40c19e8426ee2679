use super::session::accepts_no_media;
use super::*;

#[test]
fn answers_that_take_no_media_are_recognised() {
    assert!(accepts_no_media("v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\n"));
    assert!(accepts_no_media(
        "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    ));
    assert!(!accepts_no_media(
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    ));
}

fn shard() -> Shard {
    let settings = LegSettings {
        advertised: SocketAddr::from(([127, 0, 0, 1], 10000)),
        srtp_profiles: vec![leg::parse_srtp_profile("aead_aes_128_gcm").expect("profile")],
        replay_window: 1024,
        certificate: leg::generate_certificate().expect("certificate"),
        lean_egress: true,
    };
    let limits = ShardLimits {
        max_participants: 2,
        max_media_sections: 16,
        stun_per_address: 50,
        stun_per_leg: 100,
        max_pending_legs: 200,
        leg_timeout: Duration::from_secs(30),
        repair: crate::config::RepairMode::PerHop,
    };
    let bridge = BridgeInfo {
        id: "b".into(),
        region: "r".into(),
    };
    Shard::new(
        settings,
        limits,
        bridge,
        Arc::new(Metrics::new().expect("metrics")),
    )
}

fn dropped(s: &Shard, reason: &str) -> u64 {
    s.metrics.udp_dropped.with_label_values(&[reason]).get()
}

#[test]
fn garbage_datagrams_are_dropped_and_counted() {
    let mut s = shard();
    let now = Instant::now();
    let from = SocketAddr::from(([127, 0, 0, 1], 5555));
    s.on_datagram(now, from, &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    s.on_datagram(now, from, &[22, 0xfe, 0xfd]);
    s.on_datagram(now, from, &[0xff; 100]);
    s.on_datagram(now, from, &[]);
    s.on_datagram(now, from, &[0, 1, 0, 0]);
    s.service_dirty(now);
    assert_eq!(dropped(&s, "unknown_source"), 2);
    assert_eq!(dropped(&s, "not_rtc"), 2);
    assert_eq!(dropped(&s, "malformed_stun"), 1);
    assert_eq!(s.metrics.packets_in.get(), 5);
    assert!(s.out.is_empty(), "nothing is ever answered to garbage");
}

fn join(s: &mut Shard, session: u64, identity: &str) -> mpsc::UnboundedReceiver<ServerMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    s.on_command(
        Instant::now(),
        Command::Join {
            session: SessionId(session),
            conference: crate::directory::conference_id("r"),
            room: "r".into(),
            identity: identity.into(),
            name: identity.into(),
            can_publish: true,
            can_subscribe: true,
            events: tx,
            started: Instant::now(),
        },
    );
    rx
}

#[test]
fn hostile_offer_closes_only_that_session() {
    let mut s = shard();
    let mut a = join(&mut s, 1, "a");
    let mut b = join(&mut s, 2, "b");
    assert!(matches!(a.try_recv(), Ok(ServerMsg::Joined { .. })));
    assert!(matches!(b.try_recv(), Ok(ServerMsg::Joined { .. })));
    assert!(matches!(
        a.try_recv(),
        Ok(ServerMsg::ParticipantJoined { .. })
    ));
    let garbage = "v=0\r\nthis is not sdp\r\nm=audio\r\n".repeat(3);
    s.on_command(
        Instant::now(),
        Command::Offer {
            session: SessionId(2),
            sdp: garbage,
        },
    );
    match b.try_recv() {
        Ok(ServerMsg::Error { code, fatal, .. }) => {
            assert_eq!(code, "bad_sdp");
            assert!(fatal);
        }
        other => panic!("expected bad_sdp, got {other:?}"),
    }
    // A gets the departure, and stays.
    assert!(matches!(
        a.try_recv(),
        Ok(ServerMsg::ParticipantLeft { .. })
    ));
    assert_eq!(s.core.participant_count(), 1);
    // Too many media sections are refused before parsing.
    let mut c = join(&mut s, 3, "c");
    assert!(matches!(c.try_recv(), Ok(ServerMsg::Joined { .. })));
    let many = format!(
        "v=0\r\n{}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(100)
    );
    s.on_command(
        Instant::now(),
        Command::Offer {
            session: SessionId(3),
            sdp: many,
        },
    );
    assert!(matches!(c.try_recv(), Ok(ServerMsg::Error { code, .. }) if code == "bad_sdp"));
}

#[test]
fn full_room_and_replaced_identity() {
    let mut s = shard();
    let mut a = join(&mut s, 1, "a");
    let _b = join(&mut s, 2, "b");
    let mut c = join(&mut s, 3, "c");
    assert!(matches!(c.try_recv(), Ok(ServerMsg::Error { code, .. }) if code == "room_full"));
    // The same identity again replaces the first session.
    let mut a2 = join(&mut s, 4, "a");
    assert!(matches!(a2.try_recv(), Ok(ServerMsg::Joined { .. })));
    let mut saw_replaced = false;
    while let Ok(m) = a.try_recv() {
        if let ServerMsg::Error { code, .. } = m {
            saw_replaced = code == "replaced";
        }
    }
    assert!(saw_replaced);
    assert_eq!(s.core.participant_count(), 2);
}

/// A real offer, audio only, from an `rtc` PeerConnection.
fn audio_offer() -> String {
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    let s = shard();
    let (ufrag, pwd) = leg::ice_credentials('a');
    let mut pc = leg::build_peer_connection(
        Instant::now(),
        &s.settings,
        &ufrag,
        &pwd,
        leg::LegKind::Publisher,
    )
    .expect("a client PeerConnection")
    .pc;
    pc.add_transceiver_from_kind(RtpCodecKind::Audio, None)
        .expect("an audio transceiver");
    let offer = pc.create_offer(None).expect("an offer");
    pc.set_local_description(Instant::now(), offer)
        .expect("the local offer");
    pc.local_description().expect("a local description").sdp
}

#[test]
fn a_burst_of_connecting_legs_is_bounded() {
    let mut s = shard();
    s.limits.max_participants = 10;
    s.limits.max_pending_legs = 2;
    let mut rxs: Vec<_> = (1..=3).map(|i| join(&mut s, i, &format!("p{i}"))).collect();
    for i in 1..=3 {
        s.on_command(
            Instant::now(),
            Command::Offer {
                session: SessionId(i),
                sdp: audio_offer(),
            },
        );
    }
    let answered = |rx: &mut mpsc::UnboundedReceiver<ServerMsg>| {
        let mut answer = false;
        let mut error = None;
        while let Ok(m) = rx.try_recv() {
            match m {
                ServerMsg::Answer { .. } => answer = true,
                ServerMsg::Error { code, .. } => error = Some(code),
                _ => {}
            }
        }
        (answer, error)
    };
    assert_eq!(answered(&mut rxs[0]), (true, None));
    assert_eq!(answered(&mut rxs[1]), (true, None));
    // Two legs are connecting: the third offer is turned away, and may come back later.
    assert_eq!(
        answered(&mut rxs[2]),
        (false, Some("unavailable".to_owned()))
    );
    assert_eq!(s.legs.iter().flatten().filter(|l| !l.connected).count(), 2);
}
