//! One continuous RTP stream for a receiver out of a source's switching simulcast layers.
//!
//! Each layer of a simulcast source is its own RTP stream with its own sequence numbers,
//! timestamps, picture IDs and TL0PICIDX. A receiver gets one stream (one SSRC, chosen by the
//! bridge) and must not notice when the bridge moves it between layers: no jump its jitter
//! buffer reads as a reset, no gap it reads as loss, no picture ID its decoder reads as
//! missing frames.
//!
//! The rewriter does that with *epochs*: a run of packets from one layer, mapped by constant
//! offsets (out = src + offset, in each field's own modulus). A new epoch starts only at a
//! keyframe of the target layer, because that is the first packet a decoder can use after
//! the switch; its offsets are chosen so that it continues right after the last packet sent:
//! sequence number +1, timestamp + the wall time elapsed (in 90 kHz ticks), picture ID +1,
//! TL0PICIDX +1. Within an epoch the offsets never change, so a gap in the source stays a gap
//! (the receiver NACKs it and the bridge answers from its cache), and a reordered packet lands
//! where it belongs. That holds for earlier epochs too: a packet of the previous layer that
//! arrives after the switch (reordered, or repaired upstream) is still forwarded if its number
//! falls inside that epoch's range; one past its end would collide with the new epoch and is
//! dropped, as is a packet of the new layer from before its keyframe.
//!
//! Memory: a [`Rewriter`] keeps no per-packet state, only the last [`EPOCH_HISTORY`] epochs
//! (offsets and the output sequence range each covered, 32 bytes apiece) and the fields of the
//! last packet sent: under 400 bytes per receiver and source, whatever the packet rate. The
//! epoch ring is what lets a retransmission request for an output sequence number be mapped
//! back to the layer and source sequence number the bridge has cached, and rewritten exactly as
//! the first time.

use std::collections::VecDeque;
use std::time::Instant;

use super::Layer;
use super::vp8::{PictureId, Vp8Descriptor};
use crate::ids::SeqNo;

/// RTP clock rate of video (RFC 7741 for VP8; every browser video codec uses it): the rate at
/// which a switch advances the output timestamp over the wall time since the last packet.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;

/// Epochs remembered for retransmissions. Switches happen at keyframes, seconds apart (the
/// selector's hold time, the keyframe throttle), so eight epochs span far more than the
/// packets a sender cache holds (512) and the ~1 s a receiver keeps asking for a packet.
pub const EPOCH_HISTORY: usize = 8;

/// The header fields of one packet from the source, as the rewriter needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePacket {
    /// The layer this packet belongs to ([`Layer::BASE`] for a non-simulcast source).
    pub layer: Layer,
    pub seq: SeqNo,
    pub timestamp: u32,
    /// This packet starts a keyframe (a point where the receiver's decoder can start). For VP8
    /// this is [`Vp8Descriptor::keyframe`]; a bridge that cannot parse a codec may pass `true`
    /// on each frame's first packet and leave keyframe recovery to the receiver's PLI.
    pub keyframe: bool,
    pub picture_id: Option<PictureId>,
    pub tl0_pic_idx: Option<u8>,
}

impl SourcePacket {
    /// A packet with no codec fields (padding, or a codec the bridge does not parse).
    pub const fn plain(layer: Layer, seq: SeqNo, timestamp: u32) -> Self {
        SourcePacket {
            layer,
            seq,
            timestamp,
            keyframe: false,
            picture_id: None,
            tl0_pic_idx: None,
        }
    }

    /// A VP8 packet, with the fields of its parsed payload descriptor.
    pub const fn vp8(layer: Layer, seq: SeqNo, timestamp: u32, d: &Vp8Descriptor) -> Self {
        SourcePacket {
            layer,
            seq,
            timestamp,
            keyframe: d.keyframe,
            picture_id: d.picture_id,
            tl0_pic_idx: d.tl0_pic_idx,
        }
    }
}

/// The fields to write into a forwarded packet (with the receiver's SSRC, which the bridge
/// owns). `picture_id` and `tl0_pic_idx` are `Some` exactly when the source packet had them;
/// write them with [`super::vp8::rewrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: SeqNo,
    pub timestamp: u32,
    pub picture_id: Option<PictureId>,
    pub tl0_pic_idx: Option<u8>,
    /// This packet is the first of a new epoch: the receiver now sees another layer (or the
    /// stream again after a pause). For logs and metrics.
    pub switched: bool,
}

/// Why a packet is not forwarded to this receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The receiver gets nothing from this source (no target layer).
    Paused,
    /// A packet of the target layer, which the receiver can only join at a keyframe.
    AwaitingKeyframe,
    /// A layer the receiver neither gets nor is switching to.
    OtherLayer,
    /// A packet of a layer the receiver gets or got, but from before the switch to it (or
    /// after the switch away): its output sequence number belongs to another epoch.
    OutsideEpoch,
}

/// What to do with one source packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrite {
    Forward(Rewritten),
    Drop(DropReason),
}

/// The constant offsets of one epoch: how a packet of `layer` maps to the output stream.
///
/// Offsets are modular: sequence numbers mod 2^16, timestamps mod 2^32, TL0PICIDX mod 2^8, and
/// picture IDs mod 2^15 applied at the packet's own width, which is still continuous mod 128
/// for a 7-bit picture ID because 128 divides 32768.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    layer: Layer,
    seq: u16,
    timestamp: u32,
    picture_id: u16,
    tl0_pic_idx: u8,
}

impl Mapping {
    /// The layer whose packets this mapping applies to.
    pub const fn layer(&self) -> Layer {
        self.layer
    }

    /// The output fields of a source packet of this epoch's layer. Deterministic, so a cached
    /// packet resent through it looks exactly as it did the first time.
    pub fn apply(&self, p: &SourcePacket) -> Rewritten {
        Rewritten {
            seq: SeqNo(p.seq.0.wrapping_add(self.seq)),
            timestamp: p.timestamp.wrapping_add(self.timestamp),
            picture_id: p.picture_id.map(|id| id.wrapping_add(self.picture_id)),
            tl0_pic_idx: p.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_pic_idx)),
            switched: false,
        }
    }

    /// The source sequence number that maps to `out`.
    pub const fn source_seq(&self, out: SeqNo) -> SeqNo {
        SeqNo(out.0.wrapping_sub(self.seq))
    }
}

/// Where a retransmission request for an output sequence number is answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retransmission {
    /// The layer whose cache holds the original.
    pub layer: Layer,
    /// Its sequence number in that layer.
    pub seq: SeqNo,
    /// Apply to the cached original to rewrite it as it was first sent.
    pub mapping: Mapping,
}

#[derive(Clone, Copy, Debug)]
struct Epoch {
    mapping: Mapping,
    /// First and highest output sequence numbers of the epoch, unwrapped to 64 bits so that
    /// an epoch longer than half the 16-bit space still knows what came before it.
    first: u64,
    last: u64,
}

/// The packet with the highest output sequence number so far: what the next epoch continues.
#[derive(Clone, Copy, Debug)]
struct Last {
    seq: u64,
    timestamp: u32,
    sent_at: Instant,
    // The latest values the receiver saw; kept across packets without them (padding).
    picture_id: Option<PictureId>,
    tl0_pic_idx: Option<u8>,
}

/// Rewrites one source for one receiver. See the module documentation.
///
/// The bridge sets the target layer (from the [`super::LayerAllocator`]) and passes every
/// packet of every layer of the source; the rewriter forwards the current layer, switches to
/// the target at its next keyframe, and says through [`Rewriter::needs_keyframe`] when the
/// bridge should ask the publisher for one.
#[derive(Clone, Debug)]
pub struct Rewriter {
    target: Option<Layer>,
    /// Oldest first; the newest is the current one while `open`.
    epochs: VecDeque<Epoch>,
    open: bool,
    last: Option<Last>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter with no target: it forwards nothing until [`Rewriter::set_target`].
    pub fn new() -> Self {
        Rewriter {
            target: None,
            epochs: VecDeque::with_capacity(EPOCH_HISTORY),
            open: false,
            last: None,
        }
    }

    /// A rewriter for a non-simulcast source: its only layer is the target from the start.
    /// The first epoch maps every field to itself, so the stream is forwarded unchanged until
    /// a pause; packets before its first keyframe are dropped like at any switch, as a decoder
    /// could not use them.
    pub fn single_layer() -> Self {
        let mut r = Self::new();
        r.target = Some(Layer::BASE);
        r
    }

    /// Chooses the layer the receiver should get; `None` stops forwarding at once.
    ///
    /// A different layer takes over at its next keyframe; until then the current one is still
    /// forwarded, so the receiver's picture never freezes waiting for the switch.
    pub fn set_target(&mut self, target: Option<Layer>) {
        self.target = target;
        if target.is_none() {
            // The receiver will not see this epoch's later packets; resuming starts a new one
            // that continues where the receiver stopped instead of leaving a gap to NACK.
            self.open = false;
        }
    }

    /// The layer the receiver should get.
    pub const fn target(&self) -> Option<Layer> {
        self.target
    }

    /// The layer being forwarded now.
    pub fn current(&self) -> Option<Layer> {
        if self.open {
            self.epochs.back().map(|e| e.mapping.layer)
        } else {
            None
        }
    }

    /// The layer whose keyframe the rewriter is waiting for, if any: the bridge should ask the
    /// publisher for one (through its keyframe throttle).
    pub fn needs_keyframe(&self) -> Option<Layer> {
        self.target.filter(|t| self.current() != Some(*t))
    }

    /// Decides on one source packet and, if it is forwarded, gives its output fields.
    pub fn rewrite(&mut self, now: Instant, p: &SourcePacket) -> Rewrite {
        let Some(target) = self.target else {
            return Rewrite::Drop(DropReason::Paused);
        };
        if p.layer == target && p.keyframe && self.current() != Some(target) {
            return Rewrite::Forward(self.start_epoch(now, p));
        }
        let Some(last) = self.last else {
            return Rewrite::Drop(if p.layer == target {
                DropReason::AwaitingKeyframe
            } else {
                DropReason::OtherLayer
            });
        };
        let newest = self.epochs.len().saturating_sub(1);
        let mut known_layer = false;
        // Newest first: the same layer may have several epochs (2, then 1, then 2 again), and
        // a packet belongs to the one whose output range its mapped sequence number falls in.
        for (i, e) in self.epochs.iter_mut().enumerate().rev() {
            if e.mapping.layer != p.layer {
                continue;
            }
            known_layer = true;
            let out = e.mapping.apply(p);
            let seq = unwrap_seq(last.seq, out.seq);
            let is_current = self.open && i == newest;
            if seq < e.first || (!is_current && seq > e.last) {
                continue;
            }
            if is_current && seq > last.seq {
                e.last = seq;
                self.last = Some(Last {
                    seq,
                    timestamp: out.timestamp,
                    sent_at: now,
                    picture_id: out.picture_id.or(last.picture_id),
                    tl0_pic_idx: out.tl0_pic_idx.or(last.tl0_pic_idx),
                });
            }
            return Rewrite::Forward(out);
        }
        Rewrite::Drop(if p.layer == target && self.current() != Some(target) {
            DropReason::AwaitingKeyframe
        } else if known_layer {
            DropReason::OutsideEpoch
        } else {
            DropReason::OtherLayer
        })
    }

    /// Maps a receiver's retransmission request back to the cached original, if the output
    /// sequence number was handed out in one of the remembered epochs. A sequence number that
    /// was never sent (ahead of the stream, or older than the epoch history) gives `None`.
    pub fn retransmission(&self, out: SeqNo) -> Option<Retransmission> {
        let last = self.last?;
        let seq = unwrap_seq(last.seq, out);
        let e = self
            .epochs
            .iter()
            .rev()
            .find(|e| e.first <= seq && seq <= e.last)?;
        Some(Retransmission {
            layer: e.mapping.layer,
            seq: e.mapping.source_seq(out),
            mapping: e.mapping,
        })
    }

    fn start_epoch(&mut self, now: Instant, p: &SourcePacket) -> Rewritten {
        let (mapping, first) = match self.last {
            // The first epoch maps every field to itself: nothing to be continuous with, and an
            // unchanged single-layer stream is easier to debug.
            None => (
                Mapping {
                    layer: p.layer,
                    seq: 0,
                    timestamp: 0,
                    picture_id: 0,
                    tl0_pic_idx: 0,
                },
                (1u64 << 16) + u64::from(p.seq.0),
            ),
            Some(last) => {
                let first = last.seq + 1;
                let timestamp = last
                    .timestamp
                    .wrapping_add(ticks_since(last.sent_at, now))
                    .wrapping_sub(p.timestamp);
                let picture_id = match (last.picture_id, p.picture_id) {
                    (Some(l), Some(s)) => l.value.wrapping_add(1).wrapping_sub(s.value),
                    _ => 0,
                };
                let tl0_pic_idx = match (last.tl0_pic_idx, p.tl0_pic_idx) {
                    (Some(l), Some(s)) => l.wrapping_add(1).wrapping_sub(s),
                    _ => 0,
                };
                (
                    Mapping {
                        layer: p.layer,
                        seq: (first as u16).wrapping_sub(p.seq.0),
                        timestamp,
                        picture_id,
                        tl0_pic_idx,
                    },
                    first,
                )
            }
        };
        if self.epochs.len() == EPOCH_HISTORY {
            self.epochs.pop_front();
        }
        self.epochs.push_back(Epoch {
            mapping,
            first,
            last: first,
        });
        self.open = true;
        let out = mapping.apply(p);
        let prev = self.last;
        self.last = Some(Last {
            seq: first,
            timestamp: out.timestamp,
            sent_at: now,
            picture_id: out.picture_id.or(prev.and_then(|l| l.picture_id)),
            tl0_pic_idx: out.tl0_pic_idx.or(prev.and_then(|l| l.tl0_pic_idx)),
        });
        Rewritten {
            switched: true,
            ..out
        }
    }
}

/// `seq` placed in the 64-bit output space nearest to `highest` (within half the 16-bit
/// space). `highest` starts at 2^16 and only grows, so the result never underflows.
fn unwrap_seq(highest: u64, seq: SeqNo) -> u64 {
    highest.saturating_add_signed(i64::from(seq.diff(SeqNo(highest as u16))))
}

/// Video clock ticks for the wall time from `since` to `now`, at least 1 so that the new
/// epoch's first frame never shares the previous frame's timestamp.
fn ticks_since(since: Instant, now: Instant) -> u32 {
    let micros = now.saturating_duration_since(since).as_micros();
    let ticks = micros.saturating_mul(u128::from(VIDEO_CLOCK_RATE)) / 1_000_000;
    // The timestamp wraps at 2^32 anyway; only the residue matters.
    ((ticks % (1u128 << 32)) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulcast::vp8::PictureIdWidth::{Bits7, Bits15};
    use proptest::prelude::*;
    use std::time::Duration;

    const L0: Layer = Layer::BASE;
    const L1: Layer = match Layer::new(1) {
        Some(l) => l,
        None => panic!(),
    };
    const L2: Layer = Layer::TOP;

    /// One layer of a synthetic VP8 source: its own counters, advanced frame by frame.
    #[derive(Clone, Copy)]
    struct Src {
        layer: Layer,
        seq: u16,
        ts: u32,
        pic: PictureId,
        tl0: u8,
    }

    impl Src {
        fn new(layer: Layer, seq: u16, ts: u32, pic: PictureId, tl0: u8) -> Self {
            Src {
                layer,
                seq,
                ts,
                pic,
                tl0,
            }
        }

        /// The next packet; `frame_start` starts a new frame (and a new TL0 picture: these
        /// streams have one temporal layer), `key` makes it a keyframe.
        fn next(&mut self, frame_start: bool, key: bool) -> SourcePacket {
            if frame_start {
                self.ts = self.ts.wrapping_add(3000);
                self.pic = self.pic.wrapping_add(1);
                self.tl0 = self.tl0.wrapping_add(1);
            }
            let p = SourcePacket {
                layer: self.layer,
                seq: SeqNo(self.seq),
                timestamp: self.ts,
                keyframe: key,
                picture_id: Some(self.pic),
                tl0_pic_idx: Some(self.tl0),
            };
            self.seq = self.seq.wrapping_add(1);
            p
        }
    }

    fn fwd(r: &mut Rewriter, now: Instant, p: &SourcePacket) -> Rewritten {
        match r.rewrite(now, p) {
            Rewrite::Forward(out) => out,
            Rewrite::Drop(why) => panic!("{p:?} dropped: {why:?}"),
        }
    }

    fn dropped(r: &mut Rewriter, now: Instant, p: &SourcePacket) -> DropReason {
        match r.rewrite(now, p) {
            Rewrite::Drop(why) => why,
            Rewrite::Forward(out) => panic!("{p:?} forwarded as {out:?}"),
        }
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// The output of `b` continues right after `a` across a switch.
    fn assert_continues(a: &Rewritten, b: &Rewritten, elapsed_ticks: u32) {
        assert!(b.switched);
        assert_eq!(b.seq.0, a.seq.0.wrapping_add(1));
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(elapsed_ticks));
        let (pa, pb) = (a.picture_id.unwrap(), b.picture_id.unwrap());
        assert_eq!(pb.value, pa.wrapping_add(1).value & pb.width.mask());
        assert_eq!(
            b.tl0_pic_idx.unwrap(),
            a.tl0_pic_idx.unwrap().wrapping_add(1)
        );
    }

    #[test]
    fn single_layer_is_forwarded_unchanged_across_wraps_and_keeps_gaps() {
        let t0 = Instant::now();
        let mut r = Rewriter::single_layer();
        assert_eq!(r.needs_keyframe(), Some(L0));
        let mut s = Src::new(
            L0,
            65532,
            u32::MAX - 7000,
            PictureId::new(32765, Bits15),
            253,
        );
        // Before the first keyframe nothing is usable.
        let early = s.next(true, false);
        assert_eq!(dropped(&mut r, t0, &early), DropReason::AwaitingKeyframe);
        let key = s.next(true, true);
        let out = fwd(&mut r, t0, &key);
        assert!(out.switched);
        assert_eq!(r.current(), Some(L0));
        assert_eq!(r.needs_keyframe(), None);
        let mut seen = vec![(key, out)];
        for i in 0..6 {
            let p = s.next(i % 2 == 0, false);
            if i == 2 {
                continue; // lost upstream
            }
            seen.push((p, fwd(&mut r, ms(t0, 10 * i), &p)));
        }
        // Every field crossed its wrap (seq 65535, ts 2^32, picture ID 32767, TL0 255), and
        // the output equals the input, gap included.
        for (p, out) in &seen {
            assert_eq!(out.seq, p.seq);
            assert_eq!(out.timestamp, p.timestamp);
            assert_eq!(out.picture_id, p.picture_id);
            assert_eq!(out.tl0_pic_idx, p.tl0_pic_idx);
        }
        let seqs: Vec<u16> = seen.iter().map(|(_, o)| o.seq.0).collect();
        assert_eq!(seqs, vec![65533, 65534, 65535, 1, 2, 3]);
        assert_eq!(
            r.retransmission(SeqNo(0)).map(|x| (x.layer, x.seq)),
            Some((L0, SeqNo(0)))
        );
    }

    #[test]
    fn wraps_within_an_epoch_with_offsets() {
        // A switch gives non-zero offsets; then each source field wraps inside the epoch.
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        r.set_target(Some(L0));
        let mut a = Src::new(L0, 100, 1000, PictureId::new(10, Bits7), 10);
        fwd(&mut r, t0, &a.next(true, true));
        r.set_target(Some(L1));
        let mut b = Src::new(L1, 65530, u32::MAX - 6000, PictureId::new(125, Bits7), 253);
        let first = fwd(&mut r, ms(t0, 40), &b.next(true, true));
        let mut prev = first;
        for _ in 0..8 {
            let out = fwd(&mut r, ms(t0, 50), &b.next(true, false));
            assert!(!out.switched);
            assert_eq!(out.seq.0, prev.seq.0.wrapping_add(1));
            assert_eq!(out.timestamp, prev.timestamp.wrapping_add(3000));
            // 7 bits: out wraps at 128 exactly when the source does, one step at a time.
            let (pp, po) = (prev.picture_id.unwrap(), out.picture_id.unwrap());
            assert_eq!(po, pp.wrapping_add(1));
            assert_eq!(po.width, Bits7);
            assert_eq!(
                out.tl0_pic_idx.unwrap(),
                prev.tl0_pic_idx.unwrap().wrapping_add(1)
            );
            prev = out;
        }
        assert_eq!(b.seq, 3, "the source sequence number wrapped");
        assert!(
            b.pic.value < 125 && b.tl0 < 253,
            "picture ID and TL0 wrapped"
        );
    }

    #[test]
    fn switch_up_then_down_is_continuous() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        r.set_target(Some(L0));
        let mut lo = Src::new(L0, 1000, 50_000, PictureId::new(300, Bits15), 7);
        let mut hi = Src::new(L2, 40_000, 9_000_000, PictureId::new(20_000, Bits15), 200);

        fwd(&mut r, t0, &lo.next(true, true));
        fwd(&mut r, ms(t0, 33), &lo.next(true, false));

        // Up: the high layer waits for its keyframe while the low one keeps flowing.
        r.set_target(Some(L2));
        assert_eq!(r.needs_keyframe(), Some(L2));
        assert_eq!(r.current(), Some(L0));
        assert_eq!(
            dropped(&mut r, ms(t0, 40), &hi.next(true, false)),
            DropReason::AwaitingKeyframe
        );
        let last = fwd(&mut r, ms(t0, 66), &lo.next(true, false));
        let key = fwd(&mut r, ms(t0, 90), &hi.next(true, true));
        assert_continues(&last, &key, 24 * 90);
        assert_eq!(r.current(), Some(L2));
        assert_eq!(r.needs_keyframe(), None);
        // The low layer is no longer forwarded; the high one is, with the same offsets.
        assert_eq!(
            dropped(&mut r, ms(t0, 99), &lo.next(true, false)),
            DropReason::OutsideEpoch
        );
        let next = fwd(&mut r, ms(t0, 100), &hi.next(false, false));
        assert_eq!(next.seq.0, key.seq.0 + 1);
        assert_eq!(next.timestamp, key.timestamp);
        let last_hi = fwd(&mut r, ms(t0, 123), &hi.next(true, false));
        assert_eq!(last_hi.timestamp, key.timestamp + 3000);

        // Down: same rules the other way.
        r.set_target(Some(L0));
        assert_eq!(r.needs_keyframe(), Some(L0));
        let lo_key = fwd(&mut r, ms(t0, 150), &lo.next(true, true));
        assert_continues(&last_hi, &lo_key, 27 * 90);
        assert_eq!(
            dropped(&mut r, ms(t0, 151), &hi.next(true, false)),
            DropReason::OutsideEpoch
        );
    }

    #[test]
    fn switch_wraps_every_output_field() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        r.set_target(Some(L0));
        // The first epoch is the identity, so the receiver's last values are at the top of
        // each field's range.
        let mut a = Src::new(L0, 65535, u32::MAX, PictureId::new(32767, Bits15), 255);
        let p = SourcePacket {
            keyframe: true,
            ..a.next(false, false)
        };
        let last = fwd(&mut r, t0, &p);
        assert_eq!(last.seq, SeqNo(65535));
        r.set_target(Some(L1));
        let mut b = Src::new(L1, 7, 123, PictureId::new(5, Bits15), 9);
        let key = fwd(&mut r, t0, &b.next(true, true));
        assert_eq!(key.seq, SeqNo(0));
        assert_eq!(key.timestamp, 0, "u32::MAX + 1 tick (no time elapsed)");
        assert_eq!(key.picture_id, Some(PictureId::new(0, Bits15)));
        assert_eq!(key.tl0_pic_idx, Some(0));
        // A 7-bit layer continues the receiver's picture IDs mod 128.
        r.set_target(Some(L2));
        let mut c = Src::new(L2, 500, 0, PictureId::new(100, Bits7), 0);
        let c_key = fwd(&mut r, ms(t0, 1), &c.next(true, true));
        assert_eq!(c_key.seq, SeqNo(1));
        assert_eq!(c_key.picture_id, Some(PictureId::new(1, Bits7)));
        assert_eq!(c_key.timestamp, 90);
    }

    #[test]
    fn lost_keyframe_start_delays_the_switch_and_later_losses_stay_gaps() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        r.set_target(Some(L0));
        let mut lo = Src::new(L0, 10, 0, PictureId::new(1, Bits15), 1);
        let mut hi = Src::new(L1, 5000, 0, PictureId::new(1, Bits15), 1);
        fwd(&mut r, t0, &lo.next(true, true));
        r.set_target(Some(L1));

        // The keyframe's first packet is lost: its other packets are no place to join.
        let _lost_start = hi.next(true, true);
        assert_eq!(
            dropped(&mut r, t0, &hi.next(false, false)),
            DropReason::AwaitingKeyframe
        );
        let last = fwd(&mut r, ms(t0, 30), &lo.next(true, false));
        assert_eq!(r.needs_keyframe(), Some(L1));

        // The next keyframe arrives, but its second packet is lost.
        let before_key = hi.next(true, false);
        let key = fwd(&mut r, ms(t0, 60), &hi.next(true, true));
        assert_continues(&last, &key, 30 * 90);
        let lost = hi.next(false, false);
        let after = fwd(&mut r, ms(t0, 61), &hi.next(false, false));
        assert_eq!(
            after.seq.0,
            key.seq.0 + 2,
            "the loss stays a gap for the receiver to NACK"
        );
        // The NACK maps to the packet the bridge cached from the layer.
        let rtx = r.retransmission(SeqNo(key.seq.0 + 1)).unwrap();
        assert_eq!((rtx.layer, rtx.seq), (L1, lost.seq));
        assert_eq!(rtx.mapping.apply(&lost).seq, SeqNo(key.seq.0 + 1));
        // The upstream repair of it is forwarded in place; a late packet from before the
        // keyframe is not (its number belongs to the previous epoch).
        assert_eq!(fwd(&mut r, ms(t0, 70), &lost).seq, SeqNo(key.seq.0 + 1));
        assert_eq!(
            dropped(&mut r, ms(t0, 71), &before_key),
            DropReason::OutsideEpoch
        );
    }

    #[test]
    fn reordering_across_a_switch() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        r.set_target(Some(L0));
        let mut lo = Src::new(L0, 100, 0, PictureId::new(1, Bits15), 1);
        let mut hi = Src::new(L2, 900, 0, PictureId::new(1, Bits15), 1);
        let lo_key = fwd(&mut r, t0, &lo.next(true, true));
        let late_lo = lo.next(false, false); // overtaken below
        let lo_last = fwd(&mut r, t0, &lo.next(false, false));
        let after_lo = lo.next(true, false); // after the switch point, never sent
        r.set_target(Some(L2));
        let hi_key = hi.next(true, true);
        let hi_second = hi.next(false, false);
        // The keyframe's second packet overtakes the first: too early to switch on.
        assert_eq!(
            dropped(&mut r, t0, &hi_second),
            DropReason::AwaitingKeyframe
        );
        let key = fwd(&mut r, t0, &hi_key);
        assert_continues(&lo_last, &key, 1);
        // The overtaken packet of the old layer still lands in its own epoch's range.
        let late = fwd(&mut r, t0, &late_lo);
        assert_eq!(late.seq.0, lo_key.seq.0 + 1);
        assert!(!late.switched);
        // A packet of the old layer past its last one would collide with the new epoch.
        assert_eq!(dropped(&mut r, t0, &after_lo), DropReason::OutsideEpoch);
        // Nothing after the keyframe was sent yet: no number to retransmit.
        assert_eq!(r.retransmission(SeqNo(key.seq.0 + 1)), None);
        // A reordered packet of the current epoch keeps the epoch's offsets.
        let third = hi.next(false, false);
        let fourth = fwd(&mut r, t0, &hi.next(false, false));
        assert_eq!(fwd(&mut r, t0, &third).seq.0 + 1, fourth.seq.0);
        // The receiver NACKs the dropped second keyframe packet: mapped to the layer's cache.
        let rtx = r.retransmission(SeqNo(key.seq.0 + 1)).unwrap();
        assert_eq!((rtx.layer, rtx.seq), (L2, hi_second.seq));
        assert_eq!(rtx.mapping.apply(&hi_second).seq, SeqNo(key.seq.0 + 1));
        assert_eq!(
            r.retransmission(fourth.seq).map(|x| x.seq),
            Some(SeqNo(903))
        );
    }

    #[test]
    fn retransmissions_after_two_switches_are_rewritten_as_first_sent() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        r.set_target(Some(L0));
        let mut srcs = [
            Src::new(L0, 60_000, 1, PictureId::new(120, Bits7), 250),
            Src::new(L1, 65_000, 2, PictureId::new(32_760, Bits15), 3),
            Src::new(L2, 3, 3, PictureId::new(77, Bits15), 77),
        ];
        let mut sent: Vec<(SourcePacket, Rewritten)> = Vec::new();
        let mut t = 0;
        for (layer, next) in [(0usize, Some(L2)), (2, Some(L1)), (1, None)] {
            for i in 0..20 {
                t += 5;
                let p = srcs[layer].next(i % 3 == 0, i == 0);
                if i == 7 {
                    continue; // a loss in every epoch
                }
                sent.push((p, fwd(&mut r, ms(t0, t), &p)));
            }
            r.set_target(next);
        }
        assert_eq!(r.current(), None);
        for (p, first) in &sent {
            let rtx = r.retransmission(first.seq).unwrap();
            assert_eq!((rtx.layer, rtx.seq), (p.layer, p.seq));
            assert_eq!(
                rtx.mapping.apply(p),
                Rewritten {
                    switched: false,
                    ..*first
                }
            );
        }
        // The output is gapless apart from the three losses.
        let first = sent[0].1.seq;
        let last = sent[sent.len() - 1].1.seq;
        assert_eq!(last.diff(first), 59);
        // Nothing past the end was ever sent.
        assert_eq!(r.retransmission(SeqNo(last.0.wrapping_add(1))), None);
        // While paused nothing is forwarded, and resuming continues without a gap.
        let p = srcs[1].next(true, false);
        assert_eq!(dropped(&mut r, ms(t0, t), &p), DropReason::Paused);
        r.set_target(Some(L1));
        assert_eq!(r.needs_keyframe(), Some(L1));
        let resumed = fwd(&mut r, ms(t0, t + 500), &srcs[1].next(true, true));
        assert_eq!(resumed.seq.0, last.0.wrapping_add(1));
        assert_eq!(
            resumed.timestamp,
            sent[sent.len() - 1].1.timestamp + 500 * 90
        );
    }

    #[test]
    fn epoch_history_is_bounded() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        let mut srcs = [
            Src::new(L0, 0, 0, PictureId::new(0, Bits15), 0),
            Src::new(L1, 0, 0, PictureId::new(0, Bits15), 0),
        ];
        let mut firsts = Vec::new();
        for i in 0..EPOCH_HISTORY + 3 {
            let layer = i % 2;
            r.set_target(Some(srcs[layer].layer));
            firsts.push(fwd(&mut r, t0, &srcs[layer].next(true, true)).seq);
            fwd(&mut r, t0, &srcs[layer].next(false, false));
        }
        assert_eq!(r.epochs.len(), EPOCH_HISTORY);
        assert!(r.epochs.capacity() < 2 * EPOCH_HISTORY);
        // The oldest three epochs are forgotten; the rest still map.
        for (i, seq) in firsts.iter().enumerate() {
            assert_eq!(r.retransmission(*seq).is_some(), i >= 3, "epoch {i}");
        }
        // The memory bound stated in the module documentation.
        let bytes =
            std::mem::size_of::<Rewriter>() + r.epochs.capacity() * std::mem::size_of::<Epoch>();
        assert!(bytes < 400, "{bytes} bytes");
    }

    #[test]
    fn a_long_epoch_still_knows_its_start() {
        // More than 2^15 packets into an epoch, a reordered packet is still recognised as
        // part of it (a 16-bit comparison with the epoch's first number would say "before").
        let t0 = Instant::now();
        let mut r = Rewriter::single_layer();
        let mut s = Src::new(L0, 0, 0, PictureId::new(0, Bits15), 0);
        fwd(&mut r, t0, &s.next(true, true));
        for _ in 0..40_000 {
            fwd(&mut r, t0, &s.next(false, false));
        }
        let late = s.next(false, false);
        fwd(&mut r, t0, &s.next(false, false));
        assert_eq!(fwd(&mut r, t0, &late).seq, late.seq);
    }

    #[test]
    fn other_layers_and_padding() {
        let t0 = Instant::now();
        let mut r = Rewriter::new();
        assert_eq!(r.needs_keyframe(), None);
        let key0 = Src::new(L0, 1, 1, PictureId::new(1, Bits15), 1).next(true, true);
        assert_eq!(dropped(&mut r, t0, &key0), DropReason::Paused);
        r.set_target(Some(L0));
        let out = fwd(&mut r, t0, &key0);
        let key2 = Src::new(L2, 1, 1, PictureId::new(1, Bits15), 1).next(true, true);
        assert_eq!(dropped(&mut r, t0, &key2), DropReason::OtherLayer);
        // Padding has no codec fields but takes its sequence number in the stream, and the
        // picture ID the next switch continues from is the last real one.
        let pad = SourcePacket::plain(L0, SeqNo(2), 1);
        let pad_out = fwd(&mut r, t0, &pad);
        assert_eq!((pad_out.seq, pad_out.picture_id), (SeqNo(2), None));
        r.set_target(Some(L2));
        let switched = fwd(&mut r, t0, &key2);
        assert_eq!(switched.seq, SeqNo(3));
        assert_eq!(
            switched.picture_id.unwrap().value,
            out.picture_id.unwrap().value + 1
        );
    }

    #[derive(Clone, Debug)]
    enum Step {
        Packet { layer: usize, key: bool, lost: bool },
        Target(Option<usize>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0..3usize, prop::bool::weighted(0.1), prop::bool::weighted(0.05))
                .prop_map(|(layer, key, lost)| Step::Packet { layer, key, lost }),
            1 => prop::option::weighted(0.9, 0..3usize).prop_map(Step::Target),
        ]
    }

    proptest! {
        /// Whatever the switches and losses: at a switch the output continues at +1; inside
        /// an epoch it moves exactly as the source does; every packet sent in the remembered
        /// epochs maps back to its source and is rewritten identically.
        #[test]
        fn continuity_and_retransmission(
            starts in prop::array::uniform3((any::<u16>(), any::<u32>(), 0..32768u16, any::<u8>())),
            steps in prop::collection::vec(step(), 1..400),
        ) {
            let t0 = Instant::now();
            let mut r = Rewriter::new();
            let mut srcs: Vec<Src> = starts
                .iter()
                .enumerate()
                .map(|(i, (seq, ts, pic, tl0))| {
                    let width = if i == 1 { Bits7 } else { Bits15 };
                    Src::new(Layer::new(i as u8).unwrap(), *seq, *ts, PictureId::new(*pic, width), *tl0)
                })
                .collect();
            let mut sent: Vec<(SourcePacket, Rewritten, usize)> = Vec::new();
            let mut epoch = 0usize;
            for (i, s) in steps.iter().enumerate() {
                let now = ms(t0, 7 * i as u64);
                match *s {
                    Step::Target(t) => r.set_target(t.and_then(|t| Layer::new(t as u8))),
                    Step::Packet { layer, key, lost } => {
                        let p = srcs[layer].next(key || i % 4 == 0, key);
                        if lost {
                            continue;
                        }
                        if let Rewrite::Forward(out) = r.rewrite(now, &p) {
                            prop_assert_eq!(Some(p.layer), r.current());
                            if let Some((pp, prev, _)) = sent.last() {
                                if out.switched {
                                    prop_assert_eq!(out.seq.diff(prev.seq), 1);
                                    prop_assert!(p.keyframe);
                                } else {
                                    prop_assert_eq!(out.seq.diff(prev.seq), p.seq.diff(pp.seq));
                                    prop_assert_eq!(
                                        out.timestamp.wrapping_sub(prev.timestamp),
                                        p.timestamp.wrapping_sub(pp.timestamp)
                                    );
                                }
                            }
                            if out.switched {
                                epoch += 1;
                            }
                            sent.push((p, out, epoch));
                        }
                    }
                }
            }
            for (p, out, e) in &sent {
                if epoch - e >= EPOCH_HISTORY {
                    continue;
                }
                let rtx = r.retransmission(out.seq);
                prop_assert!(rtx.is_some());
                let rtx = rtx.unwrap();
                prop_assert_eq!((rtx.layer, rtx.seq), (p.layer, p.seq));
                prop_assert_eq!(rtx.mapping.apply(p), Rewritten { switched: false, ..*out });
            }
        }
    }
}
