//! RTCP a client (after SRTCP) or a peer bridge (inside Octo) sends: `rtc`'s compound
//! unmarshal, then what the bridge reads from the feedback it acts on — NACK lists expanded to
//! sequence numbers and mapped back through a simulcast rewriter, PLI/FIR media SSRCs,
//! receiver-report blocks — and the REMB / transport-wide CC packets `rtc` parses on the way.
//! Finally the packets are marshalled again, as the bridge does when it relays feedback.
#![no_main]

use std::time::Instant;

use kaskade_sfu::SeqNo;
use kaskade_sfu::simulcast::rewriter::SourcePacket;
use kaskade_sfu::simulcast::{Layer, Rewriter};
use libfuzzer_sys::fuzz_target;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

fuzz_target!(|data: &[u8]| {
    let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &data[..]) else {
        return;
    };
    // A receiver that got a few packets of one layer, so NACKs can map to something.
    let now = Instant::now();
    let mut rw = Rewriter::new();
    rw.set_target(Some(Layer::BASE));
    for seq in 100u16..110 {
        let mut p = SourcePacket::plain(Layer::BASE, SeqNo(seq), 9000);
        p.keyframe = seq == 100;
        let _ = rw.rewrite(now, &p);
    }
    let mut ssrcs = 0usize;
    for p in &packets {
        ssrcs += p.destination_ssrc().len();
        let any = p.as_any();
        if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            let mut n = 0usize;
            for seq in nack.nacks.iter().flat_map(|pair| pair.packet_list()) {
                n += 1;
                let _ = rw.retransmission(SeqNo(seq));
            }
            // A pair names at most 17 packets: the expansion is bounded by the datagram.
            assert!(n <= 17 * nack.nacks.len());
        } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
            let _ = pli.media_ssrc;
        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
            // The bridge reads each entry's SSRC (shard/ingress.rs).
            for e in &fir.fir {
                let _ = e.ssrc;
            }
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            for block in &rr.reports {
                let _ = (block.fraction_lost, block.total_lost, block.delay);
            }
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            let _ = remb.bitrate;
        } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
            let _ = cc.packet_chunks.len() + cc.recv_deltas.len();
        }
    }
    let _ = ssrcs;
    let _ = rtc::rtcp::packet::marshal(&packets);
});
