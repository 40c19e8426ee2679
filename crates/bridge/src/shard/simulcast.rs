//! Simulcast in the shard (issue 5, DESIGN.md section 6): which SSRC of a publisher is which
//! layer, what each receiver gets of each source, and how one receiver's stream is rewritten
//! so that a layer switch looks like one continuous stream.
//!
//! The decisions are made by the sans-I/O core (`kaskade_sfu::simulcast`): a
//! [`LayerAllocator`] per receiver, a [`kaskade_sfu::Rewriter`] per receiver and video source.
//! This module feeds them: layer statistics measured here (height from VP8 keyframe headers,
//! bitrate over the last second, whether the layer is flowing), the receiver's constraints
//! from signaling, and it carries out what they decide (targets, keyframe requests).
//!
//! Layer ranks come from the publisher's offer: the rids of its video section are ranked in
//! the order of `a=simulcast:send` (the order a client gives its `sendEncodings`), lowest
//! first, except that Chrome's conventional names `q`, `h`, `f` are always ranked in that
//! order whatever order they come in. proto/signaling.md says what a client must offer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kaskade_sfu::simulcast::{
    Layer, LayerStats, MAX_LAYERS, Rewritten, SelectorConfig, SourceLayers, SourcePacket, vp8,
};
use kaskade_sfu::{
    DuplicateFilter, EndpointId, LayerAllocator, NackTracker, PacketCache, SeqNo, TrackId,
    TrackKind,
};

use super::{Shard, repair};
use crate::config::RepairMode;

/// How often allocations are recomputed and unanswered keyframe requests repeated. Switches
/// wait for a keyframe anyway (hundreds of milliseconds), so a faster tick would buy nothing.
pub const LAYER_TICK: Duration = Duration::from_millis(200);

/// A layer with no packet for this long counts as stopped (a browser drops its top layers
/// when its own uplink or CPU is short; frames come at least every 100 ms while it sends).
const LAYER_IDLE: Duration = Duration::from_millis(1500);

/// Bitrates are measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Bytes per second of one stream, over [`RATE_WINDOW`] windows.
#[derive(Debug, Default)]
pub(super) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: u64,
    last: Option<Instant>,
}

impl RateMeter {
    pub(super) fn add(&mut self, now: Instant, bytes: usize) {
        match self.window_start {
            None => self.window_start = Some(now),
            Some(start) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= RATE_WINDOW {
                    self.bps = (u128::from(self.bytes) * 8 * 1_000_000 / elapsed.as_micros().max(1))
                        as u64;
                    self.bytes = 0;
                    self.window_start = Some(now);
                }
            }
        }
        self.bytes += bytes as u64;
        self.last = Some(now);
    }

    /// The last full window's rate, bits per second; 0 before the first window closed.
    pub(super) fn bps(&self) -> u64 {
        self.bps
    }

    pub(super) fn active(&self, now: Instant) -> bool {
        self.last
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
    }
}

/// One layer of a source as it arrives here (a non-simulcast source has one): its SSRC and
/// the per-stream state that the forwarding and repair paths keep per SSRC.
pub(super) struct LayerIn {
    /// The SSRC it arrives with: the publisher's, or the origin bridge's on Octo. 0 until
    /// known (a publisher's layer before its first packet).
    pub(super) ssrc: u32,
    /// At the origin, the SSRC this layer is sent to peer bridges with (layer 0 uses the
    /// track's own SSRC).
    pub(super) octo_ssrc: u32,
    /// The rid, for announcements and logs; empty without simulcast.
    pub(super) rid: String,
    pub(super) dedupe: DuplicateFilter,
    /// Video, when this hop repairs: what receivers and peer bridges may ask to have resent.
    pub(super) cache: Option<PacketCache<rtc::rtp::Packet>>,
    /// Video, when this hop repairs: the gaps to ask the previous hop to resend.
    pub(super) nack: Option<NackTracker>,
    /// Packets receivers asked for before they got here (shard/repair.rs).
    pub(super) awaited: std::collections::VecDeque<SeqNo>,
    /// Frame height from the last keyframe header, 0 while unknown.
    pub(super) height: u32,
    pub(super) meter: RateMeter,
    /// A remote layer: what its origin last announced (it sees every layer; this bridge
    /// only those its receivers need).
    pub(super) announced: Option<LayerStats>,
}

impl LayerIn {
    pub(super) fn new(kind: TrackKind, repair: RepairMode, ssrc: u32, rid: String) -> Self {
        let (cache, nack) = repair::repair_state(kind, repair);
        LayerIn {
            ssrc,
            octo_ssrc: 0,
            rid,
            dedupe: DuplicateFilter::new(),
            cache,
            nack,
            awaited: std::collections::VecDeque::new(),
            height: 0,
            meter: RateMeter::default(),
            announced: None,
        }
    }
}

/// The label of a layer in the per-layer metrics: one of four values whatever the rids.
pub(super) fn layer_label(layers: usize, layer: Layer) -> usize {
    if layers <= 1 {
        0
    } else {
        1 + layer.index().min(MAX_LAYERS - 1)
    }
}

/// Layer heights assumed before a layer's first keyframe is seen: browsers halve the
/// resolution per layer below the top, and 720p is what a camera sends by default.
fn assumed_height(layers: usize, layer: usize) -> u32 {
    let below_top = layers.saturating_sub(1).saturating_sub(layer).min(4);
    720 >> below_top
}

impl super::Source {
    /// What the allocator needs of each layer, lowest first.
    pub(super) fn layer_stats(&self, now: Instant) -> Vec<LayerStats> {
        let n = self.layers.len();
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if let Some(a) = l.announced {
                    return a;
                }
                LayerStats {
                    height: if l.height > 0 {
                        l.height
                    } else {
                        assumed_height(n, i)
                    },
                    bitrate_bps: l.meter.bps(),
                    active: l.meter.active(now),
                }
            })
            .collect()
    }
}

/// The fields of one video packet as the rewriter reads them.
///
/// A payload without a VP8 picture ID is not VP8 as browsers send it (or not VP8 at all:
/// load generators send opaque payloads): its frames and keyframes cannot be told, so every
/// packet counts as a point where the stream may start. A single-layer source then flows
/// from its first packet; a switch between such layers may land mid-frame, and the
/// receiver's decoder asks for a keyframe.
pub(super) fn source_packet(layer: Layer, packet: &rtc::rtp::Packet) -> SourcePacket {
    let seq = SeqNo(packet.header.sequence_number);
    let ts = packet.header.timestamp;
    if packet.payload.is_empty() {
        // Padding (bandwidth probing): renumbered like media so it leaves no gap.
        return SourcePacket::plain(layer, seq, ts);
    }
    match vp8::parse(&packet.payload) {
        Ok(d) if d.picture_id.is_some() => SourcePacket::vp8(layer, seq, ts, &d),
        _ => SourcePacket {
            keyframe: true,
            ..SourcePacket::plain(layer, seq, ts)
        },
    }
}

/// The frame height in a VP8 keyframe's first packet (RFC 6386 section 9.1: 3-byte frame
/// tag, start code 9d 01 2a, then 14-bit width and height, little-endian).
pub(super) fn vp8_keyframe_height(payload: &[u8]) -> Option<u32> {
    let d = vp8::parse(payload).ok()?;
    if !d.keyframe {
        return None;
    }
    let frame = payload.get(d.len..)?;
    if frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    (h > 0).then_some(u32::from(h))
}

/// A rewritten payload, kept while one packet is copied to its receivers: receivers with the
/// same picture ID and TL0PICIDX offsets (the usual case: they switched at the same keyframe)
/// share one copy.
pub(super) type SharedPayload = Option<(Option<u16>, Option<u8>, bytes::Bytes)>;

/// `base` with the receiver's fields: sequence number and timestamp in the header, and the
/// VP8 picture ID / TL0PICIDX in the payload. The payload is shared with every other copy and
/// the cache; it is copied only when one of its fields actually changes, and then once per
/// distinct rewrite of this packet (`shared`).
pub(super) fn rewritten_packet(
    base: &rtc::rtp::Packet,
    sp: &SourcePacket,
    r: &Rewritten,
    shared: &mut SharedPayload,
) -> rtc::rtp::Packet {
    let mut p = base.clone();
    p.header.sequence_number = r.seq.0;
    p.header.timestamp = r.timestamp;
    let picture_id = r
        .picture_id
        .map(|x| x.value)
        .filter(|v| Some(*v) != sp.picture_id.map(|x| x.value));
    let tl0 = r.tl0_pic_idx.filter(|v| Some(*v) != sp.tl0_pic_idx);
    if picture_id.is_none() && tl0.is_none() {
        return p;
    }
    if let Some((pid, t, bytes)) = shared.as_ref()
        && *pid == picture_id
        && *t == tl0
    {
        p.payload = bytes.clone();
        return p;
    }
    let mut buf = BytesMut::from(&base.payload[..]);
    if vp8::rewrite(&mut buf, picture_id, tl0).is_ok() {
        p.payload = buf.freeze();
        *shared = Some((picture_id, tl0, p.payload.clone()));
    }
    p
}

/// The rid list of the first video section of an offer that has one, ranked lowest first
/// (see the module documentation), or an error a client can act on.
pub(super) fn offered_rids(sdp: &str) -> Result<Vec<String>, String> {
    if sdp
        .lines()
        .any(|l| l.trim_end().starts_with("a=ssrc-group:SIM"))
    {
        return Err(
            "SSRC-group simulcast (a=ssrc-group:SIM) is not supported: offer rid \
                    simulcast (a=rid and a=simulcast:send, proto/signaling.md)"
                .into(),
        );
    }
    let mut video = false;
    let mut simulcast: Option<Vec<String>> = None;
    let mut rid_lines: Vec<String> = Vec::new();
    let mut found: Option<Vec<String>> = None;
    let mut finish = |simulcast: &mut Option<Vec<String>>, rid_lines: &mut Vec<String>| {
        let list = simulcast
            .take()
            .unwrap_or_else(|| std::mem::take(rid_lines));
        rid_lines.clear();
        if found.is_none() && !list.is_empty() {
            found = Some(list);
        }
    };
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if video {
                finish(&mut simulcast, &mut rid_lines);
            }
            video = m.starts_with("video");
            continue;
        }
        if !video {
            continue;
        }
        if let Some(v) = line.strip_prefix("a=simulcast:") {
            // "send q;h;f" (possibly followed by " recv ..."); alternatives "a,b" take the
            // first, "~x" is a layer that starts paused, still a layer.
            let mut words = v.split_whitespace();
            while let Some(dir) = words.next() {
                let list = words.next().unwrap_or_default();
                if dir == "send" {
                    simulcast = Some(
                        list.split(';')
                            .filter_map(|alt| alt.split(',').next())
                            .map(|r| r.trim_start_matches('~').to_owned())
                            .filter(|r| !r.is_empty())
                            .collect(),
                    );
                }
            }
        } else if let Some(v) = line.strip_prefix("a=rid:") {
            let mut f = v.split_whitespace();
            if let (Some(id), Some("send")) = (f.next(), f.next()) {
                rid_lines.push(id.to_owned());
            }
        }
    }
    if video {
        finish(&mut simulcast, &mut rid_lines);
    }
    let mut rids = found.unwrap_or_default();
    if rids.len() > MAX_LAYERS {
        return Err(format!(
            "{} simulcast layers offered; at most {MAX_LAYERS} are taken",
            rids.len()
        ));
    }
    if rids.iter().any(|r| r.len() > 16) {
        return Err("a rid is longer than 16 characters".into());
    }
    let conventional = |r: &str| match r {
        "q" => Some(0),
        "h" => Some(1),
        "f" => Some(2),
        _ => None,
    };
    if rids.iter().all(|r| conventional(r).is_some()) {
        rids.sort_by_key(|r| conventional(r));
    }
    Ok(rids)
}

/// A subscriber leg's downlink estimate, for the allocator: loss-based, from the receiver
/// reports of the video it gets (the loss-based half of GCC, draft-ietf-rmcat-gcc section 6).
///
/// Why not a delay-based estimate: `rtc` 0.21 has one (its `CongestionControlInterceptor`
/// driving a `Gcc` from TWCC feedback, off by default; on subscriber legs it would also need
/// `rtc`'s TWCC sender to number every packet), and browsers send REMB when `goog-remb` is
/// offered. Both were considered and REMB was tried against Chromium: a delay-based estimate
/// grows to at most ~1.5x the rate it *receives* (GCC's AIMD; REMB measured 147-152 kbps for a
/// receiver getting the 150 kbps layer), so without probing (padding) it can never justify
/// moving a receiver from a thumbnail layer up to the stage layer. Loss, by contrast, says when
/// a downlink is short, and its absence lets the estimate grow back. Probing plus GCC is the
/// step after this one.
///
/// - Loss is measured over windows of at least [`LOSS_WINDOW`] from the reports' cumulative
///   counters (packets expected and lost), so it is the loss left after repair: a packet the
///   bridge resent in time is not lost. A browser reports every ~200 ms, and the fraction
///   lost of such a short interval counts packets whose repair was still under way (measured:
///   single reports of 6-10% through an Octo link losing 5% and repairing all of it).
/// - No estimate until the first lossy window: allocation follows the constraints alone.
/// - Loss over 10%: the estimate becomes what got through (what was sent, less the loss). GCC
///   keeps half the loss's worth more, but without probing the estimate must regrow from there
///   before the allocator tries the layer that caused the loss again: from the throughput, a
///   capped downlink is re-probed about half as often.
/// - Loss under 2%: the estimate grows 8% per second; once it is far above what is sent it
///   is dropped (back to unconstrained).
/// - In between: it holds.
#[derive(Debug, Default)]
pub(super) struct Bandwidth {
    estimate: Option<(u64, Instant)>,
    sent: RateMeter,
    /// Per reported SSRC: the extended highest sequence number and cumulative loss last seen.
    counters: HashMap<u32, (u32, u32)>,
    /// The current window: since when, packets expected, packets lost.
    window: Option<(Instant, u64, i64)>,
}

/// Loss is judged over at least this long.
pub const LOSS_WINDOW: Duration = Duration::from_secs(1);

impl Bandwidth {
    /// Video bytes just sent on the leg.
    pub(super) fn on_sent(&mut self, now: Instant, bytes: u64) {
        self.sent.add(now, bytes as usize);
    }

    /// One report block of the leg's video: its SSRC, extended highest sequence number and
    /// cumulative packets lost (RFC 3550 6.4.1).
    pub(super) fn on_report_block(&mut self, now: Instant, ssrc: u32, highest: u32, lost: u32) {
        // Cumulative loss is a signed 24-bit field: late arrivals can make it shrink.
        let lost = lost & 0x00ff_ffff;
        let (start, expected, lost_sum) = self.window.get_or_insert((now, 0, 0));
        if let Some((h0, l0)) = self.counters.insert(ssrc, (highest, lost)) {
            let d_expected = highest.wrapping_sub(h0);
            // A sequence reset or a stream restart: skip the sample rather than read it as
            // thousands of packets.
            if d_expected < 1 << 15 {
                *expected += u64::from(d_expected);
                let d_lost = ((lost.wrapping_sub(l0) << 8) as i32) >> 8;
                *lost_sum += i64::from(d_lost);
            }
        }
        let (start, expected, lost_sum) = (*start, *expected, *lost_sum);
        if now.saturating_duration_since(start) >= LOSS_WINDOW && expected > 0 {
            self.window = Some((now, 0, 0));
            let fraction = (lost_sum.max(0) as f64 / expected as f64).min(1.0);
            self.on_loss_report(now, (fraction * 256.0).min(255.0) as u8);
        }
    }

    /// Forgets a stream the leg no longer reports (a track removed).
    pub(super) fn forget_ssrc(&mut self, ssrc: u32) {
        self.counters.remove(&ssrc);
    }

    /// The loss (of 256) over a window.
    pub(super) fn on_loss_report(&mut self, now: Instant, fraction_lost: u8) {
        let sent = self.sent.bps();
        if sent == 0 {
            return;
        }
        let loss = f64::from(fraction_lost) / 256.0;
        if loss > 0.10 {
            let cut = (sent as f64 * (1.0 - loss)) as u64;
            let e = self.estimate.map_or(cut, |(e, _)| e.min(cut));
            self.estimate = Some((e, now));
        } else if loss < 0.02
            && let Some((e, at)) = self.estimate
        {
            let secs = now.saturating_duration_since(at).as_secs_f64().min(5.0);
            let grown = (e as f64 * 1.08f64.powf(secs)) as u64;
            self.estimate = if grown > sent.saturating_mul(4).max(UNCONSTRAINED_BPS) {
                None
            } else {
                Some((grown, now))
            };
        }
    }

    /// Bits per second available for video, `u64::MAX` when unknown.
    pub(super) fn estimate(&self, _now: Instant) -> u64 {
        self.estimate.map_or(u64::MAX, |(e, _)| e)
    }
}

/// An estimate that has grown past this (and past 4x what is sent) no longer limits.
const UNCONSTRAINED_BPS: u64 = 20_000_000;

/// What a receiver asked to get of the video it receives (signaling `video_constraints`).
#[derive(Debug, Default)]
pub(super) struct ReceiverVideo {
    /// The receiver-wide cap, e.g. its window; `None` = no cap.
    pub(super) max_height: Option<u32>,
    /// Per source track: the tallest picture wanted (its tile); 0 = nothing. Tracks not
    /// listed are unconstrained.
    pub(super) tracks: HashMap<TrackId, u32>,
    pub(super) allocator: LayerAllocator,
}

impl ReceiverVideo {
    pub(super) fn new() -> Self {
        ReceiverVideo {
            max_height: None,
            tracks: HashMap::new(),
            allocator: LayerAllocator::new(SelectorConfig::default()),
        }
    }
}

impl Shard {
    /// A receiver's new constraints: they replace the previous ones whole.
    pub(super) fn set_video_constraints(
        &mut self,
        now: Instant,
        ep: EndpointId,
        max_height: Option<u32>,
        tracks: HashMap<TrackId, u32>,
    ) {
        let Some(peer) = self.peers.get_mut(&ep) else {
            return;
        };
        peer.video.max_height = max_height;
        peer.video.tracks = tracks;
        self.allocate_for(now, ep);
    }

    /// Every [`LAYER_TICK`]: reallocates every receiver (estimates and layer statistics move)
    /// and repeats keyframe requests that were not answered yet.
    pub(super) fn layers_tick(&mut self, now: Instant) {
        let receivers: Vec<EndpointId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.subscriber.is_some())
            .map(|(e, _)| *e)
            .collect();
        for ep in receivers {
            self.allocate_for(now, ep);
            self.repeat_keyframe_requests(now, ep);
        }
        self.demand_tick(now);
    }

    /// Chooses the layer of every video source `ep` receives and sets its rewriters' targets.
    pub(super) fn allocate_for(&mut self, now: Instant, ep: EndpointId) {
        let Some(peer) = self.peers.get_mut(&ep) else {
            return;
        };
        let Some(leg_id) = peer.subscriber else {
            return;
        };
        let Some(leg) = self
            .legs
            .get_mut(leg_id.0 as usize)
            .and_then(|l| l.as_mut())
        else {
            return;
        };
        let dominant = self
            .core
            .conference_of(ep)
            .and_then(|c| self.speakers.get(&c.id))
            .and_then(|d| d.dominant());
        // Priority: the dominant speaker (on everyone's stage) first, then by track id so
        // that the order is stable.
        let mut order: Vec<(bool, TrackId)> = leg
            .senders
            .iter()
            .filter(|(_, s)| s.rewriter.is_some())
            .filter_map(|(t, _)| {
                let src = self.sources.get(t)?;
                Some((Some(src.owner) != dominant, *t))
            })
            .collect();
        if order.is_empty() {
            return;
        }
        order.sort_unstable();
        let stats: Vec<Vec<LayerStats>> = order
            .iter()
            .map(|(_, t)| {
                self.sources
                    .get(t)
                    .map(|s| s.layer_stats(now))
                    .unwrap_or_default()
            })
            .collect();
        let inputs: Vec<SourceLayers<'_>> = order
            .iter()
            .zip(&stats)
            .map(|((_, t), layers)| SourceLayers {
                source: *t,
                max_height: peer.video.tracks.get(t).copied().unwrap_or(u32::MAX),
                layers,
            })
            .collect();
        // A loss-based estimate cannot tell random loss from congestion, so it may lower
        // layers but never takes a source away: the budget always covers every wanted
        // source's lowest active layer (with the allocator's headroom for a raise).
        let floor: u64 = inputs
            .iter()
            .filter(|s| s.max_height > 0 && peer.video.max_height != Some(0))
            .filter_map(|s| s.layers.iter().find(|l| l.active))
            .map(|l| l.bitrate_bps.saturating_mul(115) / 100 + 1)
            .fold(0u64, u64::saturating_add);
        let available = leg.bandwidth.estimate(now).max(floor);
        let allocations =
            peer.video
                .allocator
                .allocate(now, available, peer.video.max_height, &inputs);
        let connected = leg.connected;
        let mut requests = Vec::new();
        for a in allocations {
            let Some(sender) = leg.senders.get_mut(&a.source) else {
                continue;
            };
            let Some(rw) = sender.rewriter.as_mut() else {
                continue;
            };
            if rw.target() != a.layer {
                tracing::debug!(receiver = %ep, track = %a.source, from = ?rw.target(), to = ?a.layer, available, "layer target");
                rw.set_target(a.layer);
                if let Some(l) = rw.needs_keyframe() {
                    requests.push((a.source, l));
                }
            }
            // Only simulcast layers are filtered at the origin; a single-layer source
            // crosses whenever the peer hosts someone in the conference.
            if self.sources.get(&a.source).is_some_and(|s| {
                s.is_simulcast() && matches!(s.origin, super::Origin::Remote { .. })
            }) {
                self.demand.set(a.source, ep, a.layer);
            }
        }
        // A changed demand goes to origin bridges now, ahead of the keyframe request below:
        // an origin that got the request first would have the keyframe before it may forward
        // the layer, and the switch would wait for the next one.
        self.demand_tick(now);
        // Before the leg connects, the keyframe it needs is asked for when it does.
        if connected {
            for (tid, layer) in requests {
                self.request_layer_keyframe(now, tid, layer);
            }
        }
    }

    /// Asks for a keyframe of `layer` for the receivers switching to it (or starting on it).
    /// Such requests have their own throttle ([`switch_throttle`]), keyed by source and layer
    /// rather than by receiver: one keyframe serves every receiver waiting for that layer, and
    /// a receiver's own PLI budget (3 per 10 s) stays for its decoder's needs.
    pub(super) fn request_layer_keyframe(&mut self, now: Instant, tid: TrackId, layer: Layer) {
        let decision = self
            .switch_keyframes
            .request(now, switch_requester(layer), tid);
        if self.count_keyframe_decision(decision) {
            if let Some(at) = self
                .sources
                .get_mut(&tid)
                .and_then(|s| s.switch_asked.get_mut(layer.index()))
            {
                *at = Some(now);
            }
            self.send_keyframe_request(now, tid, layer);
        }
    }

    /// Asks again for the keyframes `ep`'s rewriters still wait for (the throttle keeps this
    /// within the per-receiver limits).
    fn repeat_keyframe_requests(&mut self, now: Instant, ep: EndpointId) {
        let Some(leg_id) = self.peers.get(&ep).and_then(|p| p.subscriber) else {
            return;
        };
        let Some(leg) = self.leg_mut(leg_id) else {
            return;
        };
        if !leg.connected {
            return;
        }
        let waiting: Vec<(TrackId, Layer)> = leg
            .senders
            .iter()
            .filter_map(|(t, s)| Some((*t, s.rewriter.as_ref()?.needs_keyframe()?)))
            .collect();
        for (tid, layer) in waiting {
            let Some(src) = self.sources.get(&tid) else {
                continue;
            };
            // The last request may still be answered: a keyframe takes an encoder's time and
            // a round trip to the publisher.
            let recent = src
                .switch_asked
                .get(layer.index())
                .copied()
                .flatten()
                .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REPEAT);
            if !recent
                && src
                    .layers
                    .get(layer.index())
                    .is_some_and(|l| l.meter.active(now) || l.announced.is_some_and(|a| a.active))
            {
                self.request_layer_keyframe(now, tid, layer);
            }
        }
    }
}

/// An unanswered switch keyframe request is repeated after this long: a publisher's keyframe
/// arrives within an encoder frame time plus a round trip, well under it on any sane link, and
/// a request lost on the way must not leave a receiver on the old layer for long.
pub const KEYFRAME_REPEAT: Duration = Duration::from_millis(400);

/// The throttle of the bridge's own keyframe requests for switches: per source and layer at
/// most one per 300 ms (a lost request is repeated after [`KEYFRAME_REPEAT`]) and 20 per 10 s;
/// per source one per 200 ms, as for receivers' requests.
pub(super) fn switch_throttle() -> kaskade_sfu::KeyframeThrottle {
    kaskade_sfu::KeyframeThrottle::new(kaskade_sfu::keyframe::KeyframeLimits {
        per_receiver_interval: Duration::from_millis(300),
        per_receiver_burst: 20,
        per_receiver_window: Duration::from_secs(10),
        per_source_interval: Duration::from_millis(200),
    })
}

/// The pseudo-receiver that layer-switch keyframe requests are throttled under: bridge
/// prefix 0 with an index no participant gets (ids count up from 1).
fn switch_requester(layer: Layer) -> EndpointId {
    EndpointId(0x00ff_ff00 + layer.index() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_OFFER: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:1\r\n\
        a=rid:q send\r\n\
        a=rid:h send\r\n\
        a=rid:f send\r\n\
        a=simulcast:send q;h;f\r\n";

    #[test]
    fn rids_are_ranked_from_the_offer() {
        assert_eq!(
            offered_rids(CHROME_OFFER).expect("rids"),
            vec!["q", "h", "f"]
        );
        // Chrome's names rank q < h < f in any order.
        let swapped = CHROME_OFFER.replace("send q;h;f", "send f;h;q");
        assert_eq!(offered_rids(&swapped).expect("rids"), vec!["q", "h", "f"]);
        // Other names keep the offer's order; paused (~) and alternatives count once.
        let other = CHROME_OFFER.replace("send q;h;f", "send ~lo;mid,x;hi");
        assert_eq!(offered_rids(&other).expect("rids"), vec!["lo", "mid", "hi"]);
        // Without a=simulcast, the a=rid lines' order.
        let no_sim = CHROME_OFFER.replace("a=simulcast:send q;h;f\r\n", "");
        assert_eq!(offered_rids(&no_sim).expect("rids"), vec!["q", "h", "f"]);
        assert!(
            offered_rids("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n")
                .expect("rids")
                .is_empty()
        );
    }

    #[test]
    fn ssrc_group_simulcast_and_too_many_layers_are_refused() {
        let sim = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ssrc-group:SIM 1 2 3\r\n";
        assert!(offered_rids(sim).unwrap_err().contains("ssrc-group"));
        let four = CHROME_OFFER.replace("send q;h;f", "send a;b;c;d");
        assert!(offered_rids(&four).unwrap_err().contains("at most 3"));
    }

    #[test]
    fn keyframe_heights_are_read_from_the_vp8_header() {
        // Descriptor: X, S; I with a 15-bit picture id; then a keyframe header for 640x360.
        let mut p = vec![0x90, 0x80, 0x81, 0x02];
        p.extend_from_slice(&[0x10, 0, 0, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&640u16.to_le_bytes());
        p.extend_from_slice(&360u16.to_le_bytes());
        assert_eq!(vp8_keyframe_height(&p), Some(360));
        // A delta frame says nothing.
        p[4] = 0x11;
        assert_eq!(vp8_keyframe_height(&p), None);
        assert_eq!(vp8_keyframe_height(&[]), None);
        assert_eq!(vp8_keyframe_height(&[0x90, 0x80]), None);
    }

    #[test]
    fn payload_is_copied_only_when_a_field_changes() {
        let payload = bytes::Bytes::from_static(&[0x90, 0xc0, 0x81, 0x02, 7, 0x10, 0, 0]);
        let base = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                sequence_number: 10,
                timestamp: 1000,
                ..Default::default()
            },
            payload: payload.clone(),
        };
        let sp = source_packet(Layer::BASE, &base);
        assert!(sp.keyframe);
        let same = Rewritten {
            seq: SeqNo(10),
            timestamp: 1000,
            picture_id: sp.picture_id,
            tl0_pic_idx: sp.tl0_pic_idx,
            switched: false,
        };
        let mut shared = None;
        let p = rewritten_packet(&base, &sp, &same, &mut shared);
        assert_eq!(p.payload.as_ptr(), payload.as_ptr(), "shared, not copied");
        assert!(shared.is_none());
        let moved = Rewritten {
            seq: SeqNo(500),
            timestamp: 9000,
            picture_id: sp.picture_id.map(|x| x.wrapping_add(5)),
            tl0_pic_idx: Some(9),
            switched: true,
        };
        let p = rewritten_packet(&base, &sp, &moved, &mut shared);
        // A second receiver with the same rewrite shares the first one's copy.
        let again = rewritten_packet(&base, &sp, &moved, &mut shared);
        assert_eq!(p.payload.as_ptr(), again.payload.as_ptr());
        assert_ne!(p.payload.as_ptr(), payload.as_ptr());
        assert_eq!(p.header.sequence_number, 500);
        assert_eq!(p.header.timestamp, 9000);
        let d = vp8::parse(&p.payload).expect("vp8");
        assert_eq!(d.picture_id.map(|x| x.value), Some(0x107));
        assert_eq!(d.tl0_pic_idx, Some(9));
        assert_eq!(&payload[..], &[0x90, 0xc0, 0x81, 0x02, 7, 0x10, 0, 0]);
    }

    #[test]
    fn opaque_payloads_start_anywhere_and_padding_is_plain() {
        let base = rtc::rtp::Packet {
            header: Default::default(),
            payload: bytes::Bytes::from_static(b"a1b2c3d4:KLTv"),
        };
        assert!(source_packet(Layer::BASE, &base).keyframe);
        let pad = rtc::rtp::Packet::default();
        assert!(!source_packet(Layer::BASE, &pad).keyframe);
    }

    #[test]
    fn loss_lowers_the_estimate_and_its_absence_raises_it() {
        let t0 = Instant::now();
        let mut b = Bandwidth::default();
        assert_eq!(b.estimate(t0), u64::MAX);
        // 2 Mbps sent for a second.
        for i in 0..=100u64 {
            b.on_sent(t0 + Duration::from_millis(i * 10), 2500);
        }
        let t1 = t0 + Duration::from_secs(1);
        b.on_loss_report(t1, 2); // <1%: nothing to grow from
        assert_eq!(b.estimate(t1), u64::MAX);
        b.on_loss_report(t1, 64); // 25% lost
        assert_eq!(b.estimate(t1), 1_500_000);
        b.on_loss_report(t1, 12); // ~5%: holds
        assert_eq!(b.estimate(t1), 1_500_000);
        let t2 = t1 + Duration::from_secs(1);
        b.on_loss_report(t2, 0);
        assert_eq!(b.estimate(t2), 1_620_000);
        // A later, smaller loss never raises it.
        b.on_loss_report(t2, 40);
        assert_eq!(b.estimate(t2), 1_620_000);
    }

    #[test]
    fn loss_is_judged_over_a_window_after_repair() {
        let t0 = Instant::now();
        let mut b = Bandwidth::default();
        for i in 0..=100u64 {
            b.on_sent(t0 + Duration::from_millis(i * 10), 2500);
        }
        let at = |ms: u64| t0 + Duration::from_millis(1000 + ms);
        // Reports every 200 ms: a short-lived gap of 8 (repaired by the next report) is no loss.
        b.on_report_block(at(0), 7, 1000, 0);
        b.on_report_block(at(200), 7, 1040, 8);
        b.on_report_block(at(400), 7, 1080, 0);
        b.on_report_block(at(600), 7, 1120, 0);
        b.on_report_block(at(800), 7, 1160, 0);
        b.on_report_block(at(1000), 7, 1200, 0);
        assert_eq!(b.estimate(at(1000)), u64::MAX, "repaired loss is not loss");
        // 30% lost for a window: cut to what got through.
        b.on_report_block(at(2000), 7, 1400, 60);
        assert_eq!(b.estimate(at(2000)), 1_406_250);
        // A new SSRC's first block only sets its baseline.
        b.on_report_block(at(2100), 9, 50_000, 3);
        b.forget_ssrc(9);
    }

    #[test]
    fn meter_measures_bitrate_and_activity() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=50u64 {
            m.add(t0 + Duration::from_millis(i * 20), 1250);
        }
        // 50 packets of 1250 B in 1 s = 500 kbps.
        assert_eq!(m.bps(), 500_000);
        assert!(m.active(t0 + Duration::from_secs(2)));
        assert!(!m.active(t0 + Duration::from_secs(3)));
    }
}
