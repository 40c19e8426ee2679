//! Cascade tests: pairs of shards wired back to back, without sockets.

use super::*;

#[cfg(test)]
mod wire_tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_wire_form() {
        let m = OctoMessage::Participant {
            room: "r".into(),
            name: "n".into(),
            tracks: vec![OctoTrack {
                id: "TR01000002".into(),
                kind: "video".into(),
                ssrc: 7,
                layers: Vec::new(),
                muted: false,
            }],
        };
        let s = serde_json::to_string(&m).expect("json");
        assert_eq!(
            s,
            r#"{"type":"participant","room":"r","name":"n","tracks":[{"id":"TR01000002","kind":"video","ssrc":7}]}"#
        );
        assert_eq!(
            serde_json::to_string(&OctoMessage::Bye).expect("json"),
            r#"{"type":"bye"}"#
        );
        assert!(serde_json::from_str::<OctoMessage>(r#"{"type":"nope"}"#).is_err());
    }
}

#[cfg(test)]
pub(super) mod shard_tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use kaskade_octo::{BridgeId, LinkCounter, LinkSecurity, PacketType, Sealer, Suite};
    use tokio::sync::mpsc;

    use super::*;
    use crate::shard::{Command, SessionId, Shard};

    const SECRET: &[u8] = b"a-cluster-secret-for-unit-tests";

    /// A shard with Octo on (bridge 1, peer 2) and a sealer for the peer's side.
    pub(super) fn test_shard() -> (Shard, Sealer) {
        (shard(), sealer(SECRET))
    }

    pub(super) fn join_local(
        s: &mut Shard,
        now: Instant,
        identity: &str,
    ) -> mpsc::UnboundedReceiver<ServerMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = SessionId(s.sessions.len() as u64 + 100);
        s.on_command(
            now,
            Command::Join {
                session,
                conference: crate::directory::conference_id("room"),
                room: "room".into(),
                identity: identity.into(),
                name: identity.into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: now,
            },
        );
        rx
    }

    /// Announces a remote participant `ep` with one audio track sent as `ssrc`.
    pub(super) fn remote_with_audio(s: &mut Shard, sealer: &mut Sealer, ep: u32, ssrc: u32) {
        let room_id = crate::directory::conference_id("room").0;
        let m = OctoMessage::Participant {
            room: "room".into(),
            name: format!("speaker {ep:x}"),
            tracks: vec![OctoTrack {
                id: format!("TR{:08x}", ep + 0x10),
                kind: "audio".into(),
                ssrc,
                layers: Vec::new(),
                muted: false,
            }],
        };
        feed(s, message(sealer, room_id, ep, &m));
    }

    /// An Octo RTP audio packet carrying an RFC 6464 level (-dBov, 127 = silence).
    pub(super) fn audio_rtp(sealer: &mut Sealer, ssrc: u32, seq: u16, level: u8) -> Vec<u8> {
        let room_id = crate::directory::conference_id("room").0;
        let rtp = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 111,
                sequence_number: seq,
                timestamp: u32::from(seq) * 960,
                ssrc,
                extension: true,
                extension_profile: rtc::rtp::header::EXTENSION_PROFILE_ONE_BYTE,
                extensions: vec![rtc::rtp::header::Extension {
                    id: OCTO_AUDIO_LEVEL_ID,
                    payload: bytes::Bytes::copy_from_slice(&[level]),
                }],
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0u8; 40]),
        };
        seal_rtp(sealer, MediaType::Audio, room_id, 0x0200_0001, &rtp)
    }

    /// An RTP packet as the peer bridge seals it for Octo.
    fn seal_rtp(
        sealer: &mut Sealer,
        media: MediaType,
        room_id: u32,
        ep: u32,
        rtp: &rtc::rtp::Packet,
    ) -> Vec<u8> {
        let bytes = rtp.marshal().expect("rtp");
        let meta = octo_meta(
            PacketType::Rtp,
            media,
            ConferenceId(room_id),
            EndpointId(ep),
        );
        let mut out = Vec::new();
        sealer.seal_to_vec(&meta, &bytes, &mut out).expect("seal");
        out
    }

    fn shard() -> Shard {
        shard_pair_side(1, 2)
    }

    /// Two bridges linked over Octo, as the cascade tests start: alice on bridge 1 publishes a
    /// video track in `layers` layers (Octo SSRC 4242 for the first, 5001.. for the others, as
    /// a publisher leg's OnTrack would set it up), bob is on bridge 2, and each bridge has
    /// heard the other's announcements.
    pub(super) struct VideoPair {
        pub a: Shard,
        pub b: Shard,
        pub t0: Instant,
        pub alice: EndpointId,
        pub bob: EndpointId,
        pub tid: TrackId,
    }

    pub(super) fn video_pair(layers: usize) -> VideoPair {
        use crate::shard::{Origin, Source};
        let mut a = shard_pair_side(1, 2);
        let mut b = shard_pair_side(2, 1);
        let t0 = Instant::now();
        let _alice = join_local(&mut a, t0, "alice");
        let _bob = join_local(&mut b, t0, "bob");
        let alice = *a.sessions.values().next().expect("alice");
        let bob = *b.sessions.values().next().expect("bob");
        let tid = a
            .core
            .publish(alice, TrackKind::Video, Ssrc(4242))
            .expect("publish");
        let conference = a.core.conference_of(alice).expect("conf").id;
        let layers = Layer::all()
            .take(layers)
            .map(|l| {
                let i = l.index() as u32;
                let (ssrc, rid) = if layers == 1 {
                    (1, String::new())
                } else {
                    (11 + i, i.to_string())
                };
                let mut lin = LayerIn::new(TrackKind::Video, RepairMode::PerHop, ssrc, rid);
                lin.octo_ssrc = if i == 0 { 4242 } else { 5000 + i };
                a.by_out_ssrc.insert(lin.octo_ssrc, (tid, l));
                lin
            })
            .collect();
        a.sources.insert(
            tid,
            Source::new(
                TrackKind::Video,
                alice,
                conference,
                Origin::Local {
                    leg: crate::demux::LegId(99),
                    receiver: Default::default(),
                },
                None,
                RepairMode::PerHop,
                layers,
            ),
        );
        // Announcements both ways: each bridge learns the other hosts the room (a publisher
        // leg's OnTrack announces at once, as here).
        a.octo_announce(alice);
        a.octo_housekeeping(t0);
        b.octo_housekeeping(t0);
        let link = |from: &mut Shard, to: &mut Shard| {
            let out = std::mem::take(&mut from.octo.as_mut().expect("octo").out);
            for (_, mut d) in out {
                to.on_octo_datagram(
                    t0,
                    SocketAddr::from(([127, 0, 0, 1], 4000)),
                    &mut d,
                    Default::default(),
                );
            }
        };
        link(&mut a, &mut b);
        link(&mut b, &mut a);
        VideoPair {
            a,
            b,
            t0,
            alice,
            bob,
            tid,
        }
    }

    /// Bridge `me` with Octo to bridge `peer` (the peer's Octo address is 127.0.0.1:4000+id).
    pub(super) fn shard_pair_side(me: u32, peer: u32) -> Shard {
        let secret = std::str::from_utf8(SECRET).expect("utf8");
        crate::shard::fuzzing::octo_shard(me, peer, secret, 10).expect("shard")
    }

    fn sealer(secret: &[u8]) -> Sealer {
        let sec = LinkSecurity::encrypted(Suite::Aes128Gcm, secret).expect("security");
        Sealer::new(&sec, BridgeId(2), BridgeId(1), LinkCounter(1)).expect("sealer")
    }

    fn message(s: &mut Sealer, conf: u32, ep: u32, m: &OctoMessage) -> Vec<u8> {
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            ConferenceId(conf),
            EndpointId(ep),
        );
        let mut out = Vec::new();
        s.seal_to_vec(&meta, &serde_json::to_vec(m).expect("json"), &mut out)
            .expect("seal");
        out
    }

    fn dropped(s: &Shard, reason: &str) -> u64 {
        s.metrics.octo_dropped.with_label_values(&[reason]).get()
    }

    fn feed(s: &mut Shard, mut d: Vec<u8>) {
        s.on_octo_datagram(
            Instant::now(),
            SocketAddr::from(([127, 0, 0, 1], 4097)),
            &mut d,
            Default::default(),
        );
    }

    fn announce(room: &str) -> OctoMessage {
        OctoMessage::Participant {
            room: room.into(),
            name: "remote bob".into(),
            tracks: vec![OctoTrack {
                id: "TR02000001".into(),
                kind: "video".into(),
                ssrc: 77,
                layers: Vec::new(),
                muted: false,
            }],
        }
    }

    #[test]
    fn directory_peers_come_and_go_static_ones_stay() {
        use crate::config::OctoPeer;
        let mut s = shard(); // bridge 1, static peer 2
        let peer = |id: u32, name: &str, port: u16| OctoPeer {
            id,
            name: name.into(),
            region: "eu".into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            url: String::new(),
        };
        let metrics = s.metrics.clone();
        let octo = s.octo.as_mut().expect("octo");
        let static_addr = octo.peers.get(&BridgeId(2)).map(|p| p.addr);
        octo.set_directory_peers(
            &[
                peer(3, "b3", 4003),
                peer(2, "elsewhere", 4999),
                peer(1, "me", 4001),
            ],
            &metrics,
        );
        let mut ids: Vec<u32> = octo.peers.keys().map(|b| b.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3], "ourselves never, the new one added");
        assert_eq!(octo.peers.get(&BridgeId(2)).map(|p| p.addr), static_addr);
        assert!(octo.opener.has_peer(BridgeId(3)));
        // Moved: the new address is used.
        octo.set_directory_peers(&[peer(3, "b3", 4013)], &metrics);
        assert_eq!(
            octo.peers.get(&BridgeId(3)).map(|p| p.addr.port()),
            Some(4013)
        );
        // Gone from the directory: the link goes, the static one stays.
        octo.set_directory_peers(&[], &metrics);
        assert!(!octo.peers.contains_key(&BridgeId(3)));
        assert!(!octo.opener.has_peer(BridgeId(3)));
        assert!(octo.peers.contains_key(&BridgeId(2)));
        assert!(octo.opener.has_peer(BridgeId(2)));
    }

    #[test]
    fn every_rejection_is_dropped_and_counted() {
        let mut s = shard();
        let room_id = crate::directory::conference_id("room").0;
        feed(&mut s, vec![1, 2, 3]);
        assert_eq!(dropped(&s, "truncated"), 1);
        feed(&mut s, vec![0u8; 64]);
        assert_eq!(dropped(&s, "bad_version"), 1);
        let forged = message(
            &mut sealer(b"another-secret-of-enough-length"),
            room_id,
            0x0200_0001,
            &announce("room"),
        );
        feed(&mut s, forged);
        assert_eq!(dropped(&s, "auth"), 1);
        let mut good = sealer(SECRET);
        let pkt = message(&mut good, room_id, 0x0200_0001, &announce("room"));
        feed(&mut s, pkt.clone());
        feed(&mut s, pkt);
        assert_eq!(dropped(&s, "replay"), 1);
        let wrong_conf = message(&mut good, room_id ^ 1, 0x0200_0002, &announce("room"));
        feed(&mut s, wrong_conf);
        assert_eq!(dropped(&s, "conference_mismatch"), 1);
        let chat = message(
            &mut good,
            12345,
            0x0200_0001,
            &OctoMessage::Chat {
                name: "x".into(),
                text: "hi".into(),
            },
        );
        feed(&mut s, chat);
        assert_eq!(dropped(&s, "unknown_conference"), 1);
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            ConferenceId(room_id),
            EndpointId(1),
        );
        let mut junk = Vec::new();
        good.seal_to_vec(&meta, b"{not json", &mut junk)
            .expect("seal");
        feed(&mut s, junk);
        assert_eq!(dropped(&s, "bad_message"), 1);
        // RTP for a track nobody announced.
        let rtp = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: 999,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(b"x"),
        };
        feed(
            &mut s,
            seal_rtp(&mut good, MediaType::Video, room_id, 1, &rtp),
        );
        assert_eq!(dropped(&s, "unknown_track"), 1);
        // Nothing of it reached the core.
        assert_eq!(s.core.participant_count(), 0);
    }

    #[test]
    fn announced_participants_appear_to_local_ones_and_expire() {
        let mut s = shard();
        let room_id = crate::directory::conference_id("room").0;
        let mut good = sealer(SECRET);
        // Announced before anyone here joined: cached, then shown at join.
        feed(
            &mut s,
            message(&mut good, room_id, 0x0200_0001, &announce("room")),
        );
        assert_eq!(s.core.participant_count(), 0);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        s.on_command(
            now,
            Command::Join {
                session: SessionId(1),
                conference: crate::directory::conference_id("room"),
                room: "room".into(),
                identity: "alice".into(),
                name: "alice".into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: now,
            },
        );
        match rx.try_recv() {
            Ok(ServerMsg::Joined {
                participants,
                participant,
                ..
            }) => {
                assert_eq!(participant.bridge, "b1");
                assert_eq!(participants.len(), 1);
                assert_eq!(participants[0].id, "EP02000001");
                assert_eq!(participants[0].bridge, "b2");
                assert_eq!(participants[0].tracks.len(), 1);
            }
            other => panic!("expected joined, got {other:?}"),
        }
        // An endpoint id of ours claimed by the peer is refused.
        let mine = s.sessions.get(&SessionId(1)).copied().expect("endpoint");
        feed(
            &mut s,
            message(&mut good, room_id, mine.0, &announce("room")),
        );
        assert_eq!(dropped(&s, "endpoint_conflict"), 1);
        // Silence for longer than the expiry removes the remote participant.
        s.octo_housekeeping(now + REMOTE_EXPIRY + Duration::from_secs(1));
        let mut left = false;
        while let Ok(m) = rx.try_recv() {
            if let ServerMsg::ParticipantLeft { participant_id } = m {
                left = participant_id == "EP02000001";
            }
        }
        assert!(left, "the silent remote participant was removed");
        assert_eq!(s.core.participant_count(), 1);
        assert_eq!(s.core.track_count(), 0);
    }
}

#[cfg(test)]
mod speaker_tests {
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::shard_tests::{audio_rtp, join_local, remote_with_audio, test_shard};
    use super::*;

    /// Two bridges (shards) that receive the same remote audio levels decide the same
    /// dominant speaker at the same decision instants.
    #[test]
    fn bridges_fed_the_same_levels_agree() {
        let t0 = Instant::now();
        let mut bridges: Vec<(
            Shard,
            mpsc::UnboundedReceiver<ServerMsg>,
            kaskade_octo::Sealer,
        )> = (0..2)
            .map(|i| {
                let (mut s, sealer) = test_shard();
                let rx = join_local(&mut s, t0, &format!("listener-{i}"));
                (s, rx, sealer)
            })
            .collect();
        for (s, _, sealer) in bridges.iter_mut() {
            remote_with_audio(s, sealer, 0x0200_0001, 501);
            remote_with_audio(s, sealer, 0x0200_0002, 502);
        }
        // 3 s of 20 ms frames: speaker 1 talks for the first 1.5 s, then speaker 2.
        let mut decisions: Vec<Vec<(u128, Option<String>)>> = vec![Vec::new(), Vec::new()];
        for frame in 0..150u64 {
            let now = t0 + Duration::from_millis(20 * frame);
            // Speech varies; a quiet frame now and then gives the noise floor something to
            // settle on (a constant level is indistinguishable from steady noise).
            const SPEECH: [u8; 10] = [80, 25, 20, 30, 22, 28, 24, 26, 21, 29];
            let talk = SPEECH[(frame % 10) as usize];
            let (a, b) = if frame < 75 {
                (talk, 127u8)
            } else {
                (127, talk)
            };
            for (i, (s, rx, sealer)) in bridges.iter_mut().enumerate() {
                for (ssrc, level) in [(501u32, a), (502u32, b)] {
                    let mut d = audio_rtp(sealer, ssrc, frame as u16, level);
                    s.on_octo_datagram(
                        now,
                        "127.0.0.1:4097".parse().expect("addr"),
                        &mut d,
                        Default::default(),
                    );
                }
                s.speakers_tick(now);
                while let Ok(m) = rx.try_recv() {
                    if let ServerMsg::DominantSpeaker { participant_id, .. } = m {
                        decisions[i].push((now.duration_since(t0).as_millis(), participant_id));
                    }
                }
            }
        }
        assert_eq!(decisions[0], decisions[1], "both bridges decide alike");
        let last = decisions[0].last().expect("a decision").1.clone();
        assert_eq!(
            last.as_deref(),
            Some("EP02000002"),
            "the second speaker took over"
        );
        let switch_at = decisions[0]
            .iter()
            .find(|(_, p)| p.as_deref() == Some("EP02000002"))
            .map(|(t, _)| *t)
            .expect("switch");
        assert!(
            (1500..=2700).contains(&switch_at),
            "switched {switch_at} ms in (speech changed at 1500 ms)"
        );
    }
}

#[cfg(test)]
mod timeout_tests {
    use std::time::Instant;

    use super::shard_tests::{join_local, remote_with_audio, test_shard};
    use super::*;

    /// A participant whose legs never hear from the client is closed with `media_timeout`,
    /// and its legs and learned addresses are evicted.
    #[test]
    fn silent_legs_time_out() {
        let t0 = Instant::now();
        let (mut s, mut sealer) = test_shard();
        let mut rx = join_local(&mut s, t0, "ghost");
        // A remote track makes the bridge open a subscriber leg (and offer it).
        remote_with_audio(&mut s, &mut sealer, 0x0200_0001, 9);
        assert_eq!(s.demux.leg_count(), 1, "a subscriber leg was opened");
        let mut offered = false;
        while let Ok(m) = rx.try_recv() {
            offered |= matches!(m, ServerMsg::Offer { .. });
        }
        assert!(offered);
        s.housekeeping(t0 + Duration::from_secs(29));
        // (The silent remote participant has expired by now; the local one is still here.)
        assert_eq!(s.sessions.len(), 1, "not yet");
        s.housekeeping(t0 + Duration::from_secs(31));
        let mut timed_out = false;
        while let Ok(m) = rx.try_recv() {
            if let ServerMsg::Error { code, fatal, .. } = m {
                timed_out = code == "media_timeout" && fatal;
            }
        }
        assert!(timed_out);
        assert!(s.sessions.is_empty());
        assert_eq!(s.demux.leg_count(), 0, "its leg was evicted");
        assert_eq!(s.legs.iter().flatten().count(), 0);
    }
}

#[cfg(test)]
mod repair_tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::shard_tests::{VideoPair, video_pair};
    use super::*;

    /// Moves every queued Octo datagram from `from` to `to`, dropping the RTP ones when
    /// `lose_rtp` (the payload is encrypted; byte 1 of the authenticated header is the packet
    /// type). Returns how many were dropped.
    fn deliver(from: &mut Shard, to: &mut Shard, now: Instant, lose_rtp: bool) -> usize {
        let out = std::mem::take(&mut from.octo.as_mut().expect("octo").out);
        let mut dropped = 0;
        for (_, mut d) in out {
            if lose_rtp && d.get(1) == Some(&0) {
                dropped += 1;
                continue;
            }
            to.on_octo_datagram(
                now,
                SocketAddr::from(([127, 0, 0, 1], 4000)),
                &mut d,
                Default::default(),
            );
        }
        dropped
    }

    /// A video packet of SSRC 1 (a VP8 descriptor for a payload); `last` ends its frame.
    fn video(seq: u16, last: bool) -> rtc::rtp::Packet {
        let mut p = super::simulcast_tests::packet(1, seq);
        p.header.marker = last;
        p
    }

    /// Loss on an Octo link is repaired from the origin's cache: the receiving bridge NACKs
    /// the gaps, the origin resends them flagged as retransmissions, each arrives once.
    #[test]
    fn octo_link_losses_are_repaired_hop_by_hop() {
        let VideoPair {
            mut a,
            mut b,
            t0,
            tid,
            ..
        } = video_pair(1);
        assert_eq!(b.octo.as_ref().map(|o| o.remote.len()), Some(1));
        // 200 packets, every 10th lost.
        let mut lost = 0;
        for seq in 0..200u16 {
            a.route(t0, tid, Layer::BASE, video(seq, true));
            // Each packet is one RTP datagram on the link.
            lost += deliver(&mut a, &mut b, t0, seq % 10 == 5);
        }
        assert_eq!(lost, 20);
        assert_eq!(b.metrics.rtp_routed_octo.get(), 180);
        // Bridge 2 asks, bridge 1 answers from its cache, the link now loses nothing.
        b.octo_nack_tick(t0);
        assert!(b.metrics.repair_octo.nacks_sent.get() >= 1);
        deliver(&mut b, &mut a, t0, false);
        assert_eq!(a.metrics.repair_octo.retransmissions.get(), 20);
        assert_eq!(a.metrics.repair_octo.cache_misses.get(), 0);
        deliver(&mut a, &mut b, t0, false);
        b.octo_nack_tick(t0 + Duration::from_millis(200));
        assert_eq!(b.metrics.rtp_routed_octo.get(), 200, "every packet once");
        assert_eq!(b.metrics.repair_octo.recovered.get(), 20);
        assert_eq!(b.metrics.repair_octo.lost_unrecovered.get(), 0);

        // A loss whose first NACK is lost too: the copy 10 ms later gets it repaired, long
        // before a retry would; when both copies arrive, the origin resends once.
        for (seq, lose_nack) in [(205u16, true), (215, false)] {
            let resent = a.metrics.repair_octo.retransmissions.get();
            let t = t0 + Duration::from_millis(300 + u64::from(seq));
            for s in seq - 5..=seq + 1 {
                a.route(t, tid, Layer::BASE, video(s, true));
                deliver(&mut a, &mut b, t, s == seq);
            }
            b.octo_nack_tick(t);
            if lose_nack {
                let dropped = std::mem::take(&mut b.octo.as_mut().expect("octo").out);
                assert_eq!(dropped.len(), 1, "one NACK");
            } else {
                deliver(&mut b, &mut a, t, false);
            }
            b.octo_nack_tick(t + Duration::from_millis(10));
            deliver(&mut b, &mut a, t + Duration::from_millis(10), false);
            assert_eq!(
                a.metrics.repair_octo.retransmissions.get(),
                resent + 1,
                "resent once for seq {seq}"
            );
            deliver(&mut a, &mut b, t + Duration::from_millis(10), false);
        }
        assert_eq!(b.metrics.rtp_routed_octo.get(), 214);
        assert_eq!(
            a.metrics.retransmissions_suppressed.get(),
            1,
            "the second copy"
        );

        // A frame's last packet is lost, and so is the first resend. No later packet shows
        // the gap: the silence mid-frame does, and the resend's copy repairs it.
        let t = t0 + Duration::from_secs(1);
        let _ = std::mem::take(&mut a.octo.as_mut().expect("octo").out);
        // Earlier resends' copies, and retries for 207-209 (never sent), are not this case.
        a.octo_nack_tick(t);
        b.octo_nack_tick(t);
        let _ = std::mem::take(&mut a.octo.as_mut().expect("octo").out);
        let _ = std::mem::take(&mut b.octo.as_mut().expect("octo").out);
        for s in 217..=221u16 {
            a.route(t, tid, Layer::BASE, video(s, s == 221));
            deliver(&mut a, &mut b, t, s == 221);
        }
        b.octo_nack_tick(t + Duration::from_millis(5));
        assert!(
            b.octo.as_ref().expect("octo").out.is_empty(),
            "not silent long enough"
        );
        let t = t + Duration::from_millis(10);
        b.octo_nack_tick(t);
        assert_eq!(b.metrics.octo_tail_probes.get(), 1);
        let resent = a.metrics.repair_octo.retransmissions.get();
        let copies = a.metrics.octo_repair_copies.get();
        deliver(&mut b, &mut a, t, false);
        assert!(deliver(&mut a, &mut b, t, true) == 1, "the resend is lost");
        assert_eq!(a.metrics.repair_octo.retransmissions.get(), resent + 1);
        a.octo_nack_tick(t + Duration::from_millis(4));
        assert!(
            a.octo.as_ref().expect("octo").out.is_empty(),
            "the copy waits 5 ms"
        );
        a.octo_nack_tick(t + Duration::from_millis(5));
        assert_eq!(a.metrics.octo_repair_copies.get(), copies + 1);
        deliver(&mut a, &mut b, t + Duration::from_millis(5), false);
        assert_eq!(
            b.metrics.rtp_routed_octo.get(),
            219,
            "the tail arrived, once"
        );
        assert_eq!(b.metrics.repair_octo.lost_unrecovered.get(), 0);
        // The origin's tick has nothing left to do (it may sleep); bridge 2's still asks for
        // 207-209, which bridge 1 never had.
        assert!(!a.octo_nack_tick(t + Duration::from_millis(10)));
        assert!(b.octo_nack_tick(t + Duration::from_millis(10)));
    }
}

#[cfg(test)]
mod simulcast_tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::shard_tests::{VideoPair, join_local, video_pair};
    use super::*;

    fn deliver(from: &mut Shard, to: &mut Shard, now: Instant) {
        let out = std::mem::take(&mut from.octo.as_mut().expect("octo").out);
        for (_, mut d) in out {
            to.on_octo_datagram(
                now,
                SocketAddr::from(([127, 0, 0, 1], 4000)),
                &mut d,
                Default::default(),
            );
        }
    }

    pub(super) fn packet(ssrc: u32, seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[0x10, 0, 0, 0, 0, 0, 0, 0]),
        }
    }

    /// Sends 10 packets of each layer from bridge 1 and returns how many bridge 2 routed.
    fn crossing(a: &mut Shard, b: &mut Shard, tid: TrackId, now: Instant, seq: &mut u16) -> u64 {
        let before = b.metrics.rtp_routed_octo.get();
        for _ in 0..10 {
            for l in Layer::all() {
                a.route(now, tid, l, packet(11 + l.index() as u32, *seq));
            }
            *seq = seq.wrapping_add(1);
        }
        deliver(a, b, now);
        b.metrics.rtp_routed_octo.get() - before
    }

    /// The origin forwards a peer only the layers that peer's receivers need: none before it
    /// asks, the lowest for a thumbnail, all three for the stage, and the top ones stop only
    /// after the grace period.
    #[test]
    fn the_origin_sends_a_peer_only_the_layers_it_asks_for() {
        let VideoPair {
            mut a,
            mut b,
            t0,
            alice,
            bob,
            tid,
        } = video_pair(3);
        assert_eq!(b.sources.get(&tid).map(|s| s.layers.len()), Some(3));

        // Nobody asked yet: nothing crosses, and what was not sent is counted.
        let mut seq = 100;
        assert_eq!(crossing(&mut a, &mut b, tid, t0, &mut seq), 0);
        assert!(a.metrics.octo_bytes_saved.get() > 0);
        // The origin's next announcement says the layers are flowing.
        a.octo_announce(alice);
        deliver(&mut a, &mut b, t0);

        let want = |b: &mut Shard, a: &mut Shard, h: u32, now: Instant| {
            b.set_video_constraints(now, bob, None, HashMap::from([(tid, h)]));
            b.layers_tick(now);
            deliver(b, a, now);
        };
        want(&mut b, &mut a, 180, t0);
        assert_eq!(crossing(&mut a, &mut b, tid, t0, &mut seq), 10, "L0 only");
        want(&mut b, &mut a, 720, t0);
        assert_eq!(crossing(&mut a, &mut b, tid, t0, &mut seq), 30, "all three");
        // Back to a thumbnail: the top layers keep flowing through the grace period...
        let t1 = t0 + Duration::from_millis(100);
        want(&mut b, &mut a, 180, t1);
        assert_eq!(crossing(&mut a, &mut b, tid, t1, &mut seq), 30, "grace");
        // ...and stop after it.
        let t2 = t1 + Duration::from_millis(2100);
        assert_eq!(
            crossing(&mut a, &mut b, tid, t2, &mut seq),
            10,
            "after the grace"
        );
        // No receiver wants it: nothing at all.
        want(&mut b, &mut a, 0, t2);
        let t3 = t2 + Duration::from_millis(2100);
        assert_eq!(crossing(&mut a, &mut b, tid, t3, &mut seq), 0, "nothing");
    }

    /// What was in flight when a track ended (a peer's RTP after its bye, a keyframe request
    /// after our unpublish) is counted as `track_ended`; `unknown_track` keeps meaning a
    /// track never known, an operator's alarm.
    #[test]
    fn late_packets_of_ended_tracks_are_told_from_unknown_ones() {
        let VideoPair {
            mut a,
            mut b,
            t0,
            alice,
            bob,
            tid,
        } = video_pair(1);
        let dropped = |s: &Shard, r: &str| s.metrics.octo_dropped.with_label_values(&[r]).get();
        let conference = a.core.conference_of(alice).expect("conference").id;
        // Alice's track ends at bridge 1 while bridge 2 still asks for a keyframe of it.
        a.unpublish(t0, tid);
        b.octo_keyframe_request(BridgeId(1), conference, alice, 4242);
        // ...and for an SSRC bridge 1 never sent.
        b.octo_keyframe_request(BridgeId(1), conference, alice, 4343);
        deliver(&mut b, &mut a, t0);
        assert_eq!(dropped(&a, "track_ended"), 1);
        assert_eq!(dropped(&a, "unknown_track"), 1);

        // Bridge 2's bob has an audio track; he leaves, and one of his packets was on its way.
        let bob_track = b
            .core
            .publish(bob, TrackKind::Audio, Ssrc(77))
            .expect("publish");
        b.octo_announce(bob);
        deliver(&mut b, &mut a, t0);
        let bob_ssrc = b
            .core
            .get(conference)
            .and_then(|c| c.tracks().find(|t| t.id == bob_track).map(|t| t.out_ssrc.0))
            .expect("bob's Octo SSRC");
        let t1 = t0 + Duration::from_millis(20);
        b.octo_bye(conference, bob);
        deliver(&mut b, &mut a, t1);
        assert!(a.core.participant(bob).is_none(), "bob is gone at bridge 1");
        let late = |b: &mut Shard, seq: u16| {
            let rtp = packet(bob_ssrc, seq).marshal().expect("rtp");
            let meta = octo_meta(PacketType::Rtp, MediaType::Audio, conference, bob);
            b.octo
                .as_mut()
                .expect("octo")
                .send(BridgeId(1), &meta, &rtp);
        };
        late(&mut b, 1);
        deliver(&mut b, &mut a, t1);
        assert_eq!(dropped(&a, "track_ended"), 2, "bob's late packet");
        assert_eq!(dropped(&a, "unknown_track"), 1);
        // Seconds later the same SSRC is just unknown again.
        a.octo_housekeeping(t1 + Duration::from_secs(10));
        late(&mut b, 2);
        deliver(&mut b, &mut a, t1 + Duration::from_secs(10));
        assert_eq!(dropped(&a, "unknown_track"), 2);
    }

    /// A demand for a track this bridge is not the origin of, or a layer that does not exist,
    /// changes nothing and is counted.
    #[test]
    fn bad_demands_are_dropped_and_counted() {
        let (mut s, mut sealer) = super::shard_tests::test_shard();
        let now = Instant::now();
        let _a = join_local(&mut s, now, "a");
        let room = crate::directory::conference_id("room").0;
        let m = OctoMessage::LayerDemand {
            shard: None,
            tracks: vec![
                OctoDemand {
                    id: "TR01000009".into(),
                    max_layer: Some(0),
                },
                OctoDemand {
                    id: "nonsense".into(),
                    max_layer: Some(1),
                },
                OctoDemand {
                    id: "TR01000009".into(),
                    max_layer: Some(7),
                },
            ],
        };
        let json = serde_json::to_vec(&m).expect("json");
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            ConferenceId(room),
            EndpointId(0),
        );
        let mut d = Vec::new();
        sealer.seal_to_vec(&meta, &json, &mut d).expect("seal");
        s.on_octo_datagram(
            now,
            SocketAddr::from(([127, 0, 0, 1], 4002)),
            &mut d,
            Default::default(),
        );
        let dropped = |r: &str| s.metrics.octo_dropped.with_label_values(&[r]).get();
        assert_eq!(dropped("unknown_track"), 1);
        assert_eq!(dropped("bad_message"), 2);
    }
}

/// The origin's cache is sized by the RTT of the peer bridges it may resend to.
#[cfg(test)]
mod cache_age_tests {
    use std::time::Duration;

    use super::shard_tests::{VideoPair, video_pair};
    use super::*;

    fn ages(s: &Shard, tid: TrackId) -> Vec<Option<Duration>> {
        s.sources[&tid]
            .layers
            .iter()
            .filter_map(|l| l.cache.as_ref())
            .map(|c| c.max_age())
            .collect()
    }

    #[test]
    fn the_cache_keeps_three_round_trips_of_its_furthest_receiver() {
        let VideoPair { mut a, t0, tid, .. } = video_pair(1);
        let ms = Duration::from_millis;
        let peer_rtt = |a: &Shard, secs: f64| {
            a.octo.as_ref().expect("octo").peers[&BridgeId(2)]
                .rtt
                .set(secs)
        };
        // Bridge 2 hosts someone in the room. The pair's ping measured a loopback RTT: the floor.
        a.expire_caches(t0);
        assert_eq!(ages(&a, tid), vec![Some(ms(1000))]);
        // A link whose RTT is not known yet: the floor until it is.
        peer_rtt(&a, 0.0);
        a.expire_caches(t0);
        assert_eq!(ages(&a, tid), vec![Some(ms(1000))]);
        peer_rtt(&a, 0.4);
        a.expire_caches(t0);
        assert_eq!(ages(&a, tid), vec![Some(ms(1200))]);
        peer_rtt(&a, 0.02);
        a.expire_caches(t0);
        assert_eq!(ages(&a, tid), vec![Some(ms(1000))], "libwebrtc's floor");
        peer_rtt(&a, 0.9);
        a.expire_caches(t0);
        assert_eq!(ages(&a, tid), vec![Some(ms(1500))], "at most 1.5 s");
    }
}

/// A bridge of two shards behind one Octo gateway, against a bridge of one: what reaches the
/// gateway for the other shard's conference is handed there opened, and what that shard sends
/// leaves sealed by the gateway.
#[cfg(test)]
mod gateway_tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::shard_tests::shard_pair_side;
    use super::*;
    use crate::demux::ShardIndex;
    use crate::shard::siblings::{Handoff, Siblings};
    use crate::shard::{Command, SessionId, rxtime};

    /// Joins `who`; the receiver of its events must be kept (a session whose events cannot be
    /// delivered is gone).
    fn join(
        s: &mut Shard,
        now: Instant,
        conference: ConferenceId,
        room: &str,
        who: &str,
    ) -> (EndpointId, mpsc::UnboundedReceiver<ServerMsg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        s.on_command(
            now,
            Command::Join {
                session: SessionId(s.sessions.len() as u64 + 1),
                conference,
                room: room.into(),
                identity: who.into(),
                name: who.into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: now,
            },
        );
        s.core
            .iter()
            .flat_map(|c| c.participants())
            .find(|p| p.name == who)
            .map(|p| (p.id, rx))
            .expect("joined")
    }

    /// Everything the bridge of one shard sent, into the gateway.
    fn to_gateway(from: &mut Shard, gateway: &mut Shard, now: Instant) {
        for (_, mut d) in std::mem::take(&mut from.octo.as_mut().expect("octo").out) {
            let from_addr = SocketAddr::from(([127, 0, 0, 1], 4002));
            gateway.on_octo_datagram(now, from_addr, &mut d, Default::default());
        }
    }

    /// Bridge 1 as a node of two shards: shard 0 the Octo gateway, shard 1 sending through it.
    struct Node {
        a0: Shard,
        a1: Shard,
        /// What was handed to shard 0 and to shard 1.
        q0: mpsc::Receiver<Handoff>,
        q1: mpsc::Receiver<Handoff>,
    }

    /// A room whose conference starts on shard `home` of two.
    fn room_on(home: u32) -> (String, ConferenceId) {
        (0..)
            .map(|i| format!("room-{i}"))
            .map(|r| (r.clone(), crate::directory::conference_id(&r)))
            .find(|(_, c)| c.0 % 2 == home)
            .expect("an id of either parity")
    }

    /// Signaling's word to both shards that `conference` spans them now.
    fn span_both(
        a0: &mut Shard,
        a1: &mut Shard,
        now: Instant,
        conference: ConferenceId,
    ) -> ShardSet {
        let span = ShardSet(0b11);
        for s in [a0, a1] {
            s.on_command(
                now,
                Command::Span {
                    conference,
                    shards: span,
                },
            );
        }
        span
    }

    fn two_shard_node() -> Node {
        let (mut a0, mut a1) = (shard_pair_side(1, 2), shard_pair_side(1, 2));
        let (h0, q0) = mpsc::channel(256);
        let (h1, q1) = mpsc::channel(256);
        let (n0, i0) = mpsc::unbounded_channel();
        let (n1, i1) = mpsc::unbounded_channel();
        let queues = vec![h0.clone(), h1];
        a0.siblings = Some(Siblings::new(
            ShardIndex(0),
            queues.clone(),
            vec![n0.clone(), n1.clone()],
            i0,
        ));
        a1.index = ShardIndex(1);
        a1.core = kaskade_sfu::Conferences::with_id_space(1, 1, 2);
        a1.siblings = Some(Siblings::new(
            ShardIndex(1),
            queues.clone(),
            vec![n0, n1],
            i1,
        ));
        a1.octo
            .as_mut()
            .expect("octo")
            .relay_through(h0, &a1.metrics);
        // As spawn_all sets a node of several shards up: conferences may span both.
        for (i, s) in [&mut a0, &mut a1].into_iter().enumerate() {
            let octo = s.octo.as_mut().expect("octo");
            octo.spread = Some(spread::Spread::new(
                ShardIndex(i as u8),
                queues.clone(),
                &s.metrics,
            ));
        }
        Node { a0, a1, q0, q1 }
    }

    #[test]
    fn the_gateway_opens_for_its_shards_and_seals_for_them() {
        let now = Instant::now();
        let (room, conference) = room_on(1);

        let Node {
            mut a0,
            mut a1,
            mut q0,
            mut q1,
        } = two_shard_node();
        let mut b = shard_pair_side(2, 1);
        let mut pending = rxtime::Pending::new();

        // Alice joins on shard 1; its announcement goes to the gateway to be sealed, and no
        // ping does: the links are the gateway's.
        let (alice, _alice_events) = join(&mut a1, now, conference, &room, "alice");
        // Past every shard's first announce time: the full housekeeping, pings included.
        let later = Instant::now() + Duration::from_secs(2);
        a1.octo_housekeeping(later);
        assert!(
            a1.octo.as_ref().expect("octo").out.is_empty(),
            "shard 1 seals nothing"
        );
        let mut relayed = 0;
        while let Ok(h) = q0.try_recv() {
            match &h {
                Handoff::OctoOut { meta, .. } => {
                    assert_ne!(
                        meta.packet_type,
                        PacketType::Control,
                        "pings are the gateway's"
                    );
                    relayed += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
            a0.on_handed_off(now, h, &mut pending);
        }
        assert!(relayed > 0);
        for (_, mut d) in std::mem::take(&mut a0.octo.as_mut().expect("octo").out) {
            b.on_octo_datagram(
                now,
                SocketAddr::from(([127, 0, 0, 1], 4001)),
                &mut d,
                Default::default(),
            );
        }
        let b_octo = b.octo.as_ref().expect("octo");
        assert!(
            b_octo.remote.contains_key(&alice),
            "the peer learned alice through the gateway"
        );
        assert_eq!(alice.0 >> 24, 1, "bridge 1's ids");
        assert_eq!((alice.0 & 0x00ff_ffff) % 2, 1, "shard 1's lane");

        // Bob joins the room on the peer: the gateway opens its announcement and hands it to
        // shard 1, keeping nothing of the conference itself.
        let (bob, _bob_events) = join(&mut b, now, conference, &room, "bob");
        b.octo_housekeeping(later);
        to_gateway(&mut b, &mut a0, now);
        assert!(a0.octo.as_ref().expect("octo").remote.is_empty());
        let mut handed = 0;
        while let Ok(h) = q1.try_recv() {
            assert!(matches!(h, Handoff::OctoIn { .. }), "{h:?}");
            handed += 1;
            a1.on_handed_off(now, h, &mut pending);
        }
        assert!(handed > 0);
        assert!(a1.octo.as_ref().expect("octo").remote.contains_key(&bob));
        assert_eq!(a0.metrics.handoffs_out.get(), handed);
        // The peer's pings were answered by the gateway itself.
        assert!(
            a0.octo
                .as_ref()
                .expect("octo")
                .out
                .iter()
                .any(|(addr, _)| addr.port() == 4002),
            "the gateway answers the peer's ping"
        );
    }

    /// Two shards of one node carrying one conference (crate::shards placed one participant on
    /// each): each learns the other's participant as one of this bridge's, through the
    /// in-process link, and the peer bridge hears of both through the gateway, as of one node.
    #[test]
    fn the_shards_of_a_spread_conference_link_like_bridges() {
        let now = Instant::now();
        let (room, conference) = room_on(0);
        let Node {
            mut a0,
            mut a1,
            mut q0,
            mut q1,
        } = two_shard_node();
        let mut b = shard_pair_side(2, 1);
        let span = span_both(&mut a0, &mut a1, now, conference);
        let mut pending = rxtime::Pending::new();
        let (alice, _ae) = join(&mut a0, now, conference, &room, "alice");
        let (carol, _ce) = join(&mut a1, now, conference, &room, "carol");
        let later = Instant::now() + Duration::from_secs(2);
        a0.octo_housekeeping(later);
        a1.octo_housekeeping(later);
        // Deliver what each shard queued for the other (the gateway also seals shard 1's
        // announcements for the peer).
        let (mut to_a0, mut to_a1) = (0, 0);
        while let Ok(h) = q1.try_recv() {
            assert!(matches!(h, Handoff::Sibling { .. }), "{h:?}");
            to_a1 += 1;
            a1.on_handed_off(later, h, &mut pending);
        }
        while let Ok(h) = q0.try_recv() {
            to_a0 += 1;
            a0.on_handed_off(later, h, &mut pending);
        }
        assert!(to_a0 > 0 && to_a1 > 0);
        for (s, other, mine) in [(&a0, carol, alice), (&a1, alice, carol)] {
            let octo = s.octo.as_ref().expect("octo");
            let r = octo
                .remote
                .get(&other)
                .expect("the other shard's participant");
            assert_eq!(
                spread::sibling_of(r.bridge),
                Some(ShardIndex(u8::from(other == carol)))
            );
            assert!(!octo.remote.contains_key(&mine));
            assert_eq!(
                s.bridge_of(other),
                s.bridge.id,
                "on this bridge, not another"
            );
            assert!(s.core.participant(other).is_some_and(|p| p.remote));
            // Counted once in the node's gauges: by its own shard.
            assert_eq!(s.counted_elsewhere().0, 1);
        }
        // The peer bridge learns both, as participants of bridge 1, through the gateway.
        for (_, mut d) in std::mem::take(&mut a0.octo.as_mut().expect("octo").out) {
            b.on_octo_datagram(
                later,
                SocketAddr::from(([127, 0, 0, 1], 4001)),
                &mut d,
                Default::default(),
            );
        }
        let b_octo = b.octo.as_ref().expect("octo");
        for ep in [alice, carol] {
            let r = b_octo.remote.get(&ep).expect("known to the peer");
            assert_eq!(r.bridge, BridgeId(1));
        }
        // The peer's feedback about carol's track goes to shard 1 (her id's lane), its
        // announcements to both shards.
        let rtcp = kaskade_octo::Header {
            packet_type: PacketType::Rtcp,
            media: MediaType::Video,
            flags: kaskade_octo::Flags::default(),
            sender: BridgeId(2),
            conference: kaskade_octo::ConferenceId(conference.0),
            endpoint: kaskade_octo::EndpointId(carol.0),
            counter: LinkCounter(1),
        };
        let octo = a0.octo.as_ref().expect("octo");
        assert_eq!(octo.shards_for(&rtcp), ShardSet::one(ShardIndex(1)));
        let message = kaskade_octo::Header {
            packet_type: PacketType::Message,
            ..rtcp
        };
        assert_eq!(octo.shards_for(&message), span);
    }

    /// A conference spreads to a second shard while a peer bridge's participant is in it:
    /// the shard that carried it passes that participant on at once, so the new shard's
    /// joiner sees it and its media is taken from the first packet, not after the peer's
    /// next refresh.
    #[test]
    fn a_shard_joining_a_span_hears_of_other_bridges_at_once() {
        let now = Instant::now();
        let (room, conference) = room_on(0);
        let Node {
            mut a0,
            mut a1,
            q0: _q0,
            mut q1,
        } = two_shard_node();
        let mut b = shard_pair_side(2, 1);
        let mut pending = rxtime::Pending::new();
        let (_alice, _ae) = join(&mut a0, now, conference, &room, "alice");
        let (bob, _be) = join(&mut b, now, conference, &room, "bob");
        b.octo_housekeeping(now + Duration::from_secs(2));
        to_gateway(&mut b, &mut a0, now);
        assert!(a0.octo.as_ref().expect("octo").remote.contains_key(&bob));
        assert!(q1.try_recv().is_err(), "shard 1 carries none of it yet");

        span_both(&mut a0, &mut a1, now, conference);
        let (_carol, mut carol_events) = join(&mut a1, now, conference, &room, "carol");
        let mut relayed = 0;
        // Taken a moment later: the soft state still ages from when shard 0 heard it.
        let later = now + Duration::from_millis(1500);
        while let Ok(h) = q1.try_recv() {
            if let Handoff::Heard { header, at, .. } = &h {
                assert_eq!(header.sender, BridgeId(2), "as bob's bridge said it");
                assert_eq!(*at, now);
                relayed += 1;
            }
            a1.on_handed_off(later, h, &mut pending);
        }
        assert_eq!(relayed, 1, "bob, once");
        let r = a1
            .octo
            .as_ref()
            .expect("octo")
            .remote
            .get(&bob)
            .expect("shard 1 knows bob");
        assert_eq!(r.bridge, BridgeId(2));
        assert_eq!(r.last_seen, now, "as old as shard 0's");
        assert_ne!(a1.bridge_of(bob), a1.bridge.id, "on the other bridge");
        let mut told = false;
        while let Ok(m) = carol_events.try_recv() {
            told |= matches!(&m, ServerMsg::ParticipantJoined { participant } if participant.id == bob.to_string());
        }
        assert!(told, "carol sees bob without waiting for bridge 2");
        assert_eq!(a0.metrics.handoffs_out.get(), 1);
    }
}
