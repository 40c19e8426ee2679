//! One WebRTC PeerConnection of a participant ("leg"), on `rtc`'s sans-I/O core.
//!
//! `rtc`'s API changes between minor versions, so everything that touches its configuration
//! lives here: codecs, interceptors, ICE-lite, DTLS role, SRTP. The shard only sees a built
//! PeerConnection and the few knobs below.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::ReceiverReportBuilder;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};

pub mod keytap;
pub mod lean;

pub use keytap::KeyTap;
pub use lean::{LeanEgress, SenderStats};

/// Payload types we register; what a browser offers is remapped onto these in answers.
pub const PT_OPUS: u8 = 111;
pub const PT_VP8: u8 = 96;

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RTP_STREAM_ID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// Settings shared by every leg of a shard.
#[derive(Clone, Debug)]
pub struct LegSettings {
    /// The address in our ICE candidate and the `local_addr` of every datagram we feed.
    pub advertised: SocketAddr,
    pub srtp_profiles: Vec<SrtpProtectionProfile>,
    pub replay_window: usize,
    /// One DTLS certificate for every leg of the node: generating a key pair per
    /// PeerConnection would put an ECDSA key generation on every join.
    pub certificate: RTCCertificate,
    /// Forwarded copies encrypted outside `rtc`'s pipeline once verified (lean.rs).
    pub lean_egress: bool,
}

/// What a leg is for: a subscriber leg sends media, and its sender reports are the shard's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegKind {
    Publisher,
    Subscriber,
}

/// A built leg: its PeerConnection and, for subscriber legs, its lean egress.
pub struct BuiltLeg {
    pub pc: RTCPeerConnection,
    pub lean: Option<LeanEgress>,
}

/// The SRTP crate's name for a profile DTLS negotiated.
fn srtp_profile(
    p: SrtpProtectionProfile,
) -> Option<rtc::srtp::protection_profile::ProtectionProfile> {
    use rtc::srtp::protection_profile::ProtectionProfile as P;
    match p {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(P::AeadAes128Gcm),
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => Some(P::AeadAes256Gcm),
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Some(P::Aes128CmHmacSha1_80),
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => Some(P::Aes128CmHmacSha1_32),
        _ => None,
    }
}

/// The node's DTLS certificate (ECDSA P-256, what every browser accepts).
pub fn generate_certificate() -> Result<RTCCertificate> {
    let provider = rtc::crypto::default_provider().context("crypto provider")?;
    RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec!["kaskade".to_owned()]).context("certificate parameters")?,
    )
    .context("generating the DTLS certificate")
}

pub fn parse_srtp_profile(name: &str) -> Result<SrtpProtectionProfile> {
    Ok(match name {
        "aead_aes_128_gcm" => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        "aead_aes_256_gcm" => SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
        "aes_128_cm_hmac_sha1_80" => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        other => bail!(
            "unknown SRTP profile {other:?} (known: aead_aes_128_gcm, aead_aes_256_gcm, \
             aes_128_cm_hmac_sha1_80)"
        ),
    })
}

fn media_engine() -> Result<MediaEngine> {
    let mut me = MediaEngine::default();
    let video_fb = [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .into_iter()
        .map(|(t, p)| RTCPFeedback {
            typ: t.into(),
            parameter: p.into(),
        })
        .collect();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            payload_type: PT_OPUS,
        },
        RtpCodecKind::Audio,
    )
    .context("registering Opus")?;
    // No video/rtx on purpose: Chrome's rid-simulcast RTX carries only RRID, which `rtc` cannot
    // bind, so repairs would be dropped. Without RTX, Chrome resends on the media SSRC.
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: video_fb,
            },
            payload_type: PT_VP8,
        },
        RtpCodecKind::Video,
    )
    .context("registering VP8")?;
    for (uri, kind) in [
        (MID_URI, RtpCodecKind::Audio),
        (MID_URI, RtpCodecKind::Video),
        (AUDIO_LEVEL_URI, RtpCodecKind::Audio),
        // rid simulcast: each layer's packets name their rid (RFC 8852); a browser refuses an
        // answer that takes simulcast without it.
        (RTP_STREAM_ID_URI, RtpCodecKind::Video),
    ] {
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: uri.into() },
            kind,
            None,
        )
        .with_context(|| format!("registering header extension {uri}"))?;
    }
    Ok(me)
}

/// Builds a PeerConnection for one leg: ICE-lite on the shared port with the given
/// credentials, DTLS server when answering, mDNS off, our codecs and interceptors.
pub fn build_peer_connection(
    now: Instant,
    settings: &LegSettings,
    ufrag: &str,
    pwd: &str,
    kind: LegKind,
) -> Result<BuiltLeg> {
    let mut me = media_engine()?;
    // No NACK generator or responder from `rtc`: the shard detects gaps and answers NACKs
    // itself (shard/repair.rs), across legs and in the receiver's sequence space, from one
    // cache per stream instead of one per leg.
    let registry = Registry::new().with(Slot::from(12_500), FeedbackTap::for_shard());
    let registry = match kind {
        LegKind::Publisher => configure_rtcp_reports(registry),
        // Copies that take the lean path never reach `rtc`'s sender-report interceptor, so
        // the shard writes every sender report of a subscriber leg itself (SenderStats).
        LegKind::Subscriber => {
            registry.with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        }
    };
    let registry =
        configure_twcc_receiver_only(registry, &mut me).context("configuring TWCC feedback")?;

    let tap = Arc::new(KeyTap::new(
        rtc::crypto::default_provider().context("crypto provider")?,
    ));
    let se = SettingEngineBuilder::new()
        .with_crypto_provider(tap.clone())
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_srtp_protection_profiles(settings.srtp_profiles.clone())
        .with_srtp_replay_protection_window(settings.replay_window)
        .with_srtcp_replay_protection_window(settings.replay_window)
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![settings.certificate.clone()])
                .build(),
        )
        .with_media_engine(me)
        .with_setting_engine(se)
        .with_interceptor_registry(registry)
        .build(now)
        .context("building the PeerConnection")?;

    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: settings.advertised.ip().to_string(),
            port: settings.advertised.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .context("creating our host candidate")?;
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .context("encoding our host candidate")?;
    pc.add_local_candidate(init)
        .context("adding our host candidate")?;
    let lean = (kind == LegKind::Subscriber).then(|| {
        let profiles = settings
            .srtp_profiles
            .iter()
            .filter_map(|&p| srtp_profile(p))
            .collect();
        LeanEgress::new(tap, profiles, settings.lean_egress)
    });
    Ok(BuiltLeg { pc, lean })
}

/// Lets the feedback the shard acts on through to the application.
///
/// `rtc` ends the inbound RTCP path inside its interceptor chain; only packets an interceptor
/// marks `DeliverToApplication` get out. The shard needs PLI and FIR (relayed to the
/// publisher), NACKs (answered from its cache) and receiver reports (the leg's RTT, for the
/// resend rule, and its loss, for the bandwidth estimate of layer allocation). The chain
/// still sees them all. A client needs only the keyframe requests ([`FeedbackTap::keyframe_requests`]).
pub struct FeedbackTap {
    /// Whether an RTCP packet goes to the application.
    deliver: fn(&dyn std::any::Any) -> bool,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl FeedbackTap {
    fn with(deliver: fn(&dyn std::any::Any) -> bool) -> Self {
        Self {
            deliver,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    /// PLI, FIR, NACKs and receiver reports: what the shard acts on.
    pub fn for_shard() -> Self {
        Self::with(|p| {
            p.is::<PictureLossIndication>()
                || p.is::<FullIntraRequest>()
                || p.is::<TransportLayerNack>()
                || p.is::<ReceiverReport>()
        })
    }

    /// PLI and FIR only: a publisher answering them with a keyframe.
    pub fn keyframe_requests() -> Self {
        Self::with(|p| p.is::<PictureLossIndication>() || p.is::<FullIntraRequest>())
    }
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| (self.deliver)(p.as_any()))
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Random ICE credentials: ufrag 16 chars, password 32 (RFC 8839 minimums are 4 and 22). The
/// ufrag's first character names the shard (`demux::ufrag_prefix`), so a connectivity check
/// the kernel hands to another shard's socket finds its way.
pub fn ice_credentials(prefix: char) -> (String, String) {
    use crate::demux::UFRAG_ALPHABET as ALPHABET;
    let pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
            .collect()
    };
    let mut ufrag = String::with_capacity(16);
    ufrag.push(prefix);
    ufrag.push_str(&pick(15));
    (ufrag, pick(32))
}

/// The codec a subscriber leg sends for a track of `kind` (the one we registered).
pub fn send_codec(kind: kaskade_sfu::TrackKind) -> (RtpCodecKind, RTCRtpCodec, u8) {
    match kind {
        kaskade_sfu::TrackKind::Audio => (
            RtpCodecKind::Audio,
            RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            PT_OPUS,
        ),
        kaskade_sfu::TrackKind::Video => (
            RtpCodecKind::Video,
            RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            PT_VP8,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a timed assertion: prints the cost of building a leg, the join-time work that
    /// sharing the certificate removes (run with --nocapture to read it).
    #[test]
    fn builds_legs_with_the_shared_certificate() {
        let settings = LegSettings {
            advertised: SocketAddr::from(([127, 0, 0, 1], 10000)),
            srtp_profiles: vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            replay_window: 1024,
            certificate: generate_certificate().expect("certificate"),
            lean_egress: true,
        };
        let t0 = Instant::now();
        for _ in 0..20 {
            let (u, p) = ice_credentials('a');
            let leg = build_peer_connection(Instant::now(), &settings, &u, &p, LegKind::Subscriber)
                .expect("leg");
            assert!(leg.lean.is_some(), "a subscriber leg has a lean egress");
        }
        println!("leg build: {:?} each", t0.elapsed() / 20);
        let t0 = Instant::now();
        for _ in 0..20 {
            generate_certificate().expect("certificate");
        }
        println!(
            "certificate generation (saved per leg): {:?} each",
            t0.elapsed() / 20
        );
        let (u, p) = ice_credentials('a');
        assert_eq!(u.len(), 16);
        assert_eq!(p.len(), 32);
        assert_ne!(ice_credentials('a').0, u, "credentials are random");
    }
}
