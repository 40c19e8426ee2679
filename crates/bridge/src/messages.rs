//! Signaling messages (proto/signaling.md is the contract; proto/signaling.schema.json its
//! machine-checked form).

use serde::{Deserialize, Serialize};

/// Error codes of proto/signaling.md; `as_str` is the wire form and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    MessageTooLarge,
    /// Over a per-session rate (`limits.max_messages_per_sec`, `limits.max_chat_per_sec`).
    RateLimited,
    BinaryFrame,
    NotJoined,
    AlreadyJoined,
    Unauthorized,
    TokenExpired,
    WrongRoom,
    RoomFull,
    /// The node has `limits.max_participants_per_node` participants.
    NodeFull,
    Forbidden,
    BadSdp,
    BadCandidate,
    Draining,
    Unavailable,
    Replaced,
    /// An administrator removed the participant (the admin API).
    Kicked,
    MediaTimeout,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadJson => "bad_json",
            BadMessage => "bad_message",
            UnknownType => "unknown_type",
            MessageTooLarge => "message_too_large",
            RateLimited => "rate_limited",
            BinaryFrame => "binary_frame",
            NotJoined => "not_joined",
            AlreadyJoined => "already_joined",
            Unauthorized => "unauthorized",
            TokenExpired => "token_expired",
            WrongRoom => "wrong_room",
            RoomFull => "room_full",
            NodeFull => "node_full",
            Forbidden => "forbidden",
            BadSdp => "bad_sdp",
            BadCandidate => "bad_candidate",
            Draining => "draining",
            Unavailable => "unavailable",
            Replaced => "replaced",
            Kicked => "kicked",
            MediaTimeout => "media_timeout",
            Internal => "internal",
        }
    }

    /// Whether the session ends with this error.
    pub fn fatal(self) -> bool {
        !matches!(self, ErrorCode::BadCandidate)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Publisher,
    Subscriber,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// Client -> bridge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Join {
        room: String,
        token: String,
        #[serde(default)]
        name: Option<String>,
        /// The client's region, for bridge selection (else the load balancer's header, else
        /// this node's region).
        #[serde(default)]
        region: Option<String>,
        /// Set when following a `redirect`: the join is placed where it lands, so redirects
        /// never loop.
        #[serde(default)]
        redirected: bool,
    },
    Offer {
        target: Target,
        sdp: String,
    },
    Answer {
        target: Target,
        sdp: String,
    },
    Candidate {
        target: Target,
        candidate: Option<IceCandidate>,
    },
    /// A chat line to everyone in the conference.
    Message {
        text: String,
    },
    /// What the client wants of the video it receives: the tallest picture per source track
    /// (`tracks`, track id -> pixels, 0 = none) and overall (`max_height`). Replaces the
    /// previous constraints whole; a track not listed is limited by `max_height` alone.
    VideoConstraints {
        #[serde(default)]
        max_height: Option<u32>,
        #[serde(default)]
        tracks: std::collections::BTreeMap<String, u32>,
    },
    Leave,
    Ping,
}

pub const CLIENT_TYPES: [&str; 8] = [
    "join",
    "offer",
    "answer",
    "candidate",
    "message",
    "video_constraints",
    "leave",
    "ping",
];

/// Largest height a `video_constraints` message may name, in pixels (8K).
pub const MAX_CONSTRAINT_HEIGHT: u32 = 4320;
/// Most per-track entries in one `video_constraints` message.
pub const MAX_CONSTRAINT_TRACKS: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackInfo {
    pub id: String,
    pub kind: String,
    /// An administrator muted it: the bridge forwards none of its media.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    /// The bridge the participant is connected to.
    pub bridge: String,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BridgeInfo {
    pub id: String,
    pub region: String,
}

/// Bridge -> client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        room: String,
        participant: ParticipantInfo,
        participants: Vec<ParticipantInfo>,
        bridge: BridgeInfo,
    },
    Answer {
        target: Target,
        sdp: String,
    },
    Offer {
        target: Target,
        sdp: String,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
    },
    TrackPublished {
        participant_id: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    /// The conference's dominant speaker changed; `recent` lists speakers, most recent first.
    DominantSpeaker {
        participant_id: Option<String>,
        recent: Vec<String>,
    },
    /// An administrator muted or unmuted a track: the bridge stops or resumes forwarding it.
    TrackMuted {
        participant_id: String,
        track_id: String,
        muted: bool,
    },
    /// A chat line.
    Message {
        from: String,
        name: String,
        text: String,
    },
    Pong,
    /// Bridge selection placed this participant on another bridge: open `url` and join the
    /// same room there with `token` (short-lived) and `redirected: true`. The session closes.
    Redirect {
        url: String,
        token: String,
        bridge: String,
    },
    /// This bridge is draining and moves its participants (`drain.migrate`): leave, then join
    /// the same room at `url` with `token` (short-lived) and `redirected: true`, publishing
    /// and subscribing again there. Sent once per session, mid-call.
    Migrate {
        url: String,
        token: String,
        bridge: String,
    },
    Error {
        code: String,
        reason: String,
        fatal: bool,
    },
}

impl ServerMsg {
    pub fn error(code: ErrorCode, reason: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            code: code.as_str().to_owned(),
            reason: reason.into(),
            fatal: code.fatal(),
        }
    }
}

/// Parses one text frame, telling apart the failures the protocol names.
pub fn parse_client(text: &str) -> Result<ClientMsg, (ErrorCode, String)> {
    // Every reason quotes some of the client's text (serde quotes an unknown variant or field
    // name whole, and Debug escapes grow a quoted type up to eightfold): bound it, since it goes
    // back to the client and into the logs.
    parse_client_unbounded(text).map_err(|(code, reason)| {
        let bounded = truncate(&reason, MAX_REASON_CHARS);
        if bounded.len() == reason.len() {
            (code, reason)
        } else {
            (code, bounded.to_owned())
        }
    })
}

fn parse_client_unbounded(text: &str) -> Result<ClientMsg, (ErrorCode, String)> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err((ErrorCode::BadJson, "not a JSON object".into()));
    };
    let Some(typ) = obj.get("type").and_then(|t| t.as_str()).map(str::to_owned) else {
        return Err((ErrorCode::BadJson, "no string field \"type\"".into()));
    };
    if !CLIENT_TYPES.contains(&typ.as_str()) {
        return Err((
            ErrorCode::UnknownType,
            format!("unknown message type {:?}", truncate(&typ, 64)),
        ));
    }
    // `candidate` may be null (end of candidates) but not absent: serde would read both as
    // `None`.
    if typ == "candidate" && !obj.contains_key("candidate") {
        return Err((
            ErrorCode::BadMessage,
            "candidate: missing field `candidate` (null ends the candidates)".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| (ErrorCode::BadMessage, format!("{typ}: {e}")))
}

/// Longest reason (in characters) of an error about a client's message.
pub const MAX_REASON_CHARS: usize = 256;

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the signaling fuzz target: an unknown `target` of 2 KB came back whole in the
    /// error's reason (serde quotes the unknown variant), so a client could make the bridge
    /// echo and log arbitrary amounts of its text.
    #[test]
    fn reasons_are_bounded_whatever_the_input() {
        let raw = include_str!("../../../fuzz/regressions/signaling/long-unknown-variant");
        let (code, reason) = parse_client(raw).unwrap_err();
        assert_eq!(code, ErrorCode::BadMessage);
        assert!(reason.starts_with("answer: unknown variant"), "{reason}");
        assert!(
            reason.chars().count() <= MAX_REASON_CHARS,
            "{} chars",
            reason.len()
        );
        let long_field = format!(
            r#"{{"type":"join","room":"r","token":"t","{}":1}}"#,
            "x".repeat(5000)
        );
        let (_, reason) = parse_client(&long_field).unwrap_err();
        assert!(reason.chars().count() <= MAX_REASON_CHARS);
        // The second find: a type of 64 DEL characters, each escaped to 8 in the reason.
        let raw = include_str!("../../../fuzz/regressions/signaling/escaped-unknown-type");
        let (code, reason) = parse_client(raw).unwrap_err();
        assert_eq!(code, ErrorCode::UnknownType);
        assert!(
            reason.chars().count() <= MAX_REASON_CHARS,
            "{} chars",
            reason.len()
        );
    }

    #[test]
    fn parses_and_classifies() {
        assert!(matches!(
            parse_client(r#"{"type":"join","room":"r","token":"t"}"#),
            Ok(ClientMsg::Join { .. })
        ));
        assert!(matches!(
            parse_client(r#"{"type":"candidate","target":"publisher","candidate":null}"#),
            Ok(ClientMsg::Candidate {
                candidate: None,
                ..
            })
        ));
        assert_eq!(parse_client("{").unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(parse_client("[1]").unwrap_err().0, ErrorCode::BadJson);
        assert_eq!(
            parse_client(r#"{"type":5}"#).unwrap_err().0,
            ErrorCode::BadJson
        );
        assert_eq!(
            parse_client(r#"{"type":"dance"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse_client(r#"{"type":"join","room":"r"}"#).unwrap_err().0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse_client(r#"{"type":"candidate","target":"publisher"}"#)
                .unwrap_err()
                .0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            parse_client(r#"{"type":"offer","target":"sideways","sdp":""}"#)
                .unwrap_err()
                .0,
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn video_constraints_parse() {
        match parse_client(
            r#"{"type":"video_constraints","max_height":720,"tracks":{"TR01000002":180}}"#,
        ) {
            Ok(ClientMsg::VideoConstraints { max_height, tracks }) => {
                assert_eq!(max_height, Some(720));
                assert_eq!(tracks.get("TR01000002"), Some(&180));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client(r#"{"type":"video_constraints"}"#),
            Ok(ClientMsg::VideoConstraints {
                max_height: None,
                ..
            })
        ));
        for bad in [
            r#"{"type":"video_constraints","max_height":-1}"#,
            r#"{"type":"video_constraints","max_height":"720"}"#,
            r#"{"type":"video_constraints","tracks":{"TR1":1.5}}"#,
            r#"{"type":"video_constraints","tracks":[1]}"#,
            r#"{"type":"video_constraints","extra":1}"#,
        ] {
            assert_eq!(
                parse_client(bad).unwrap_err().0,
                ErrorCode::BadMessage,
                "{bad}"
            );
        }
    }

    #[test]
    fn server_messages_have_wire_names() {
        let s = serde_json::to_string(&ServerMsg::error(ErrorCode::RoomFull, "full"))
            .expect("serialize");
        assert_eq!(
            s,
            r#"{"type":"error","code":"room_full","reason":"full","fatal":true}"#
        );
        let s = serde_json::to_string(&ServerMsg::ParticipantLeft {
            participant_id: "EP1".into(),
        })
        .expect("serialize");
        assert_eq!(s, r#"{"type":"participant_left","participant_id":"EP1"}"#);
    }
}
