//! The publisher's rid simulcast against a receiving `rtc` PeerConnection that knows the MID
//! and RtpStreamId extensions (as a browser or a simulcast-aware SFU does): the offer declares
//! three send layers, every layer's packets carry MID and rid, and the receiver binds the three
//! SSRCs it was never told about to the layers `q`, `h`, `f`, key frames included.

use std::collections::{BTreeMap, BTreeSet};

use rtc::peer_connection::event::RTCTrackEvent;

use super::*;
use crate::media::{VideoProfile, parse_vp8};

fn pump(leg: &mut Leg, buf: &mut [u8]) {
    while let Ok((n, from)) = leg.socket.try_recv_from(buf) {
        leg.feed(Instant::now(), from, &buf[..n]);
    }
    leg.handle_due_timeout(Instant::now());
}

#[tokio::test]
async fn simulcast_publisher_sends_three_rid_layers() {
    let ip = IpAddr::from([127, 0, 0, 1]);
    let mut publisher = Leg::new(ip, true, None).await.expect("publisher leg");
    let profile = MediaProfile::load(false, Some(VideoProfile::new(Resolution::High, true)));
    let mut streams =
        add_tracks(&mut publisher, "alice", &profile, 0, Instant::now()).expect("tracks");
    assert_eq!(streams.len(), 3, "one stream per layer");

    let offer = publisher.pc.create_offer(None).expect("offer");
    publisher
        .pc
        .set_local_description(Instant::now(), offer.clone())
        .expect("local offer");
    for line in [
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=simulcast:send q;h;f",
        MID_URI,
        RID_URI,
    ] {
        assert!(
            offer.sdp.contains(line),
            "{line} in the offer:\n{}",
            offer.sdp
        );
    }

    let mut receiver = Leg::new(ip, true, None).await.expect("receiver leg");
    receiver
        .pc
        .set_remote_description(Instant::now(), offer)
        .expect("remote offer");
    let answer = receiver.pc.create_answer(None).expect("answer");
    receiver
        .pc
        .set_local_description(Instant::now(), answer.clone())
        .expect("local answer");
    assert!(
        answer.sdp.contains("a=simulcast:recv q;h;f"),
        "{}",
        answer.sdp
    );
    publisher
        .pc
        .set_remote_description(Instant::now(), answer)
        .expect("remote answer");
    apply_answer(&mut publisher.pc, &mut streams);
    for s in &streams {
        assert_eq!(s.sdes_exts.len(), 2, "MID and rid on layer {:?}", s.rid);
    }

    let stats = ClientStats::new();
    let mut connected = false;
    let mut rids = BTreeSet::new();
    // Per SSRC: packets, key frames seen, probes found.
    let mut got: BTreeMap<u32, (u32, u32, u32)> = BTreeMap::new();
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        pump(&mut publisher, &mut buf);
        pump(&mut receiver, &mut buf);
        if !connected && publisher.drain_events() == Some(RTCPeerConnectionState::Connected) {
            connected = true;
            for s in &mut streams {
                s.start = Instant::now();
            }
        }
        if connected {
            for s in &mut streams {
                s.send_due(Instant::now(), &mut publisher.pc, &stats);
            }
        }
        while publisher.pc.poll_read().is_some() {}
        while let Some(ev) = receiver.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) = ev
                && let Some(rid) = init.rid
            {
                rids.insert(rid.to_string());
            }
        }
        while let Some(m) = receiver.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, pkt) = m.message {
                let e = got.entry(pkt.header.ssrc).or_default();
                e.0 += 1;
                if parse_vp8(&pkt.payload).is_some_and(|(_, key, _)| key) {
                    e.1 += 1;
                }
                if Probe::find(&pkt.payload).is_some_and(|p| p.publisher_ssrc == pkt.header.ssrc) {
                    e.2 += 1;
                }
            }
        }
        publisher.flush();
        receiver.flush();
        if got.len() == 3 && got.values().all(|(n, key, _)| *n >= 30 && *key >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(connected, "the legs connected");
    let want: BTreeSet<String> = ["f", "h", "q"].into_iter().map(String::from).collect();
    assert_eq!(rids, want, "the receiver bound the three layers by rid");
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        SIMULCAST_SSRCS.to_vec(),
        "{got:?}"
    );
    for (ssrc, (n, key, probes)) in &got {
        assert!(
            *n >= 30 && *key >= 1,
            "layer {ssrc:#x}: {n} packets, {key} key frames"
        );
        assert_eq!(probes, n, "every packet carries its probe");
    }
}
