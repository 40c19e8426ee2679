//! Access tokens: HS256 JWTs signed with an API secret.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Tolerated clock skew on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    pub identity: String,
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub can_publish: bool,
    #[serde(default = "yes")]
    pub can_subscribe: bool,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

fn yes() -> bool {
    true
}

/// An admin token (`kaskade token --admin`): the server API's credential. It names no room or
/// identity; `admin: true` is the grant, and a participant token never carries it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminClaims {
    /// The API key that signed the token.
    pub iss: String,
    /// Who the token was minted for (logged with each admin call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default)]
    pub admin: bool,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Mints an admin token valid for `ttl_secs`.
pub fn mint_admin(
    api_key: &str,
    secret: &str,
    sub: Option<String>,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    let c = AdminClaims {
        iss: api_key.to_owned(),
        sub,
        admin: true,
        exp: now_secs() + ttl_secs,
        nbf: None,
    };
    Ok(jsonwebtoken::encode(
        &header(api_key),
        &c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// HS256 with `kid` naming the API key, so verifiers pick the key by its id.
fn header(api_key: &str) -> Header {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(api_key.to_owned());
    h
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is expired or not yet valid")]
    Expired,
    #[error("token is invalid: {0}")]
    Invalid(String),
}

/// Why an admin token was refused: a bad token (401), or a good one without the grant (403).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenError {
    #[error(transparent)]
    Token(TokenError),
    #[error("the token carries no admin grant")]
    NotAdmin,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints a token.
pub fn mint(api_key: &str, secret: &str, claims: &Claims) -> anyhow::Result<String> {
    let mut c = claims.clone();
    c.iss = api_key.to_owned();
    Ok(jsonwebtoken::encode(
        &header(api_key),
        &c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Verifies tokens against the configured API keys.
pub struct Verifier {
    keys: BTreeMap<String, DecodingKey>,
    max_ttl_secs: u64,
}

impl Verifier {
    pub fn new(keys: &BTreeMap<String, String>, max_ttl_secs: u64) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|(k, s)| (k.clone(), DecodingKey::from_secret(s.as_bytes())))
                .collect(),
            max_ttl_secs,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.decode(token)
    }

    /// An admin token: valid, and carrying the admin grant.
    pub fn verify_admin(&self, token: &str) -> Result<AdminClaims, AdminTokenError> {
        let c: AdminClaims = self.decode(token).map_err(AdminTokenError::Token)?;
        if !c.admin {
            return Err(AdminTokenError::NotAdmin);
        }
        Ok(c)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        // The issuer picks the key; read it unverified, then verify with that key alone.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed: {e}")))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let times = unverified_times(token)
            .ok_or_else(|| TokenError::Invalid("no issuer (iss) claim".into()))?;
        // `kid` picks the key (key rotation, as LiveKit and JWKS do); without it, `iss` does.
        // Both present must agree: a token cannot claim one key and be signed with another.
        let key_id = match &header.kid {
            Some(kid) if *kid != times.iss => {
                return Err(TokenError::Invalid(format!(
                    "kid {kid:?} and iss {:?} name different keys",
                    times.iss
                )));
            }
            Some(kid) => kid.clone(),
            None => times.iss.clone(),
        };
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| TokenError::Invalid(format!("unknown API key {key_id:?}")))?;
        if let Some(exp) = times.exp {
            let from = times.nbf.or(times.iat).unwrap_or_else(now_secs);
            if exp.saturating_sub(from) > self.max_ttl_secs {
                return Err(TokenError::Invalid(format!(
                    "valid for {} s, longer than the {} s allowed (auth.max_token_ttl_secs)",
                    exp.saturating_sub(from),
                    self.max_ttl_secs
                )));
            }
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<T>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

/// The claims that pick the key and bound the lifetime, read before the signature is checked
/// (only to choose how to check it; nothing unverified is trusted beyond that).
#[derive(Deserialize)]
struct Times {
    iss: String,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
}

fn unverified_times(token: &str) -> Option<Times> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Times>(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: String::new(),
            identity: "alice".into(),
            room: "r1".into(),
            name: None,
            can_publish: true,
            can_subscribe: false,
            exp,
            nbf: None,
        }
    }

    fn verifier() -> Verifier {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_string(), "secret-one".to_string());
        keys.insert("k2".to_string(), "secret-two".to_string());
        Verifier::new(&keys, 24 * 3600)
    }

    #[test]
    fn round_trip_with_key_selection() {
        let t = mint("k2", "secret-two", &claims(now_secs() + 60)).expect("mint");
        let c = verifier().verify(&t).expect("valid");
        assert_eq!(c.identity, "alice");
        assert_eq!(c.iss, "k2");
        assert!(!c.can_subscribe);
    }

    #[test]
    fn rejections() {
        let v = verifier();
        let wrong_secret = mint("k1", "secret-two", &claims(now_secs() + 60)).expect("mint");
        assert!(matches!(
            v.verify(&wrong_secret),
            Err(TokenError::Invalid(_))
        ));
        let unknown_key = mint("k9", "x", &claims(now_secs() + 60)).expect("mint");
        assert!(matches!(
            v.verify(&unknown_key),
            Err(TokenError::Invalid(_))
        ));
        let expired = mint("k1", "secret-one", &claims(now_secs() - 3600)).expect("mint");
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let mut early = claims(now_secs() + 7200);
        early.nbf = Some(now_secs() + 3600);
        let early = mint("k1", "secret-one", &early).expect("mint");
        assert_eq!(v.verify(&early), Err(TokenError::Expired));
        assert!(matches!(v.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        assert!(matches!(v.verify(""), Err(TokenError::Invalid(_))));
        // alg=none must never pass.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJrMSJ9.";
        assert!(matches!(v.verify(none), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn kid_picks_the_key_and_must_agree_with_iss() {
        let v = verifier();
        let enc = |kid: Option<&str>, iss: &str, secret: &str| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = kid.map(str::to_owned);
            let mut c = claims(now_secs() + 60);
            c.iss = iss.into();
            jsonwebtoken::encode(&h, &c, &EncodingKey::from_secret(secret.as_bytes()))
                .expect("encode")
        };
        // Minted tokens name their key in kid; the rotated-in key verifies its own tokens.
        let t = mint("k2", "secret-two", &claims(now_secs() + 60)).expect("mint");
        assert_eq!(
            jsonwebtoken::decode_header(&t)
                .expect("header")
                .kid
                .as_deref(),
            Some("k2")
        );
        assert!(v.verify(&t).is_ok());
        assert!(v.verify(&enc(Some("k1"), "k1", "secret-one")).is_ok());
        // kid and iss disagree: refused even though k1's secret signed it.
        assert!(matches!(
            v.verify(&enc(Some("k2"), "k1", "secret-one")),
            Err(TokenError::Invalid(m)) if m.contains("kid")
        ));
        // A kid of a key that was rotated out.
        assert!(matches!(
            v.verify(&enc(Some("k0"), "k0", "old-secret")),
            Err(TokenError::Invalid(m)) if m.contains("unknown API key")
        ));
    }

    #[test]
    fn tokens_longer_than_the_maximum_lifetime_are_refused() {
        let v = verifier();
        let long = mint("k1", "secret-one", &claims(now_secs() + 30 * 24 * 3600)).expect("mint");
        assert!(matches!(
            v.verify(&long),
            Err(TokenError::Invalid(m)) if m.contains("max_token_ttl_secs")
        ));
        // Counted from nbf when there is one: a token for tomorrow, valid one hour, is fine
        // to present once tomorrow has come (here: refused as not yet valid, not as too long).
        let mut later = claims(now_secs() + 2 * 24 * 3600 + 3600);
        later.nbf = Some(now_secs() + 2 * 24 * 3600);
        let later = mint("k1", "secret-one", &later).expect("mint");
        assert_eq!(v.verify(&later), Err(TokenError::Expired));
        let short = Verifier::new(
            &BTreeMap::from([("k1".to_string(), "secret-one".to_string())]),
            60,
        );
        let hour = mint("k1", "secret-one", &claims(now_secs() + 3600)).expect("mint");
        assert!(short.verify(&hour).is_err());
        assert!(v.verify(&hour).is_ok());
    }

    #[test]
    fn admin_tokens() {
        let v = verifier();
        let t = mint_admin("k1", "secret-one", Some("ops".into()), 60).expect("mint");
        let c = v.verify_admin(&t).expect("admin");
        assert_eq!((c.iss.as_str(), c.sub.as_deref()), ("k1", Some("ops")));
        // A participant token is a valid token without the grant.
        let p = mint("k1", "secret-one", &claims(now_secs() + 60)).expect("mint");
        assert_eq!(v.verify_admin(&p), Err(AdminTokenError::NotAdmin));
        let wrong = mint_admin("k1", "secret-two", None, 60).expect("mint");
        assert!(matches!(
            v.verify_admin(&wrong),
            Err(AdminTokenError::Token(TokenError::Invalid(_)))
        ));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &AdminClaims {
                iss: "k1".into(),
                sub: None,
                admin: true,
                exp: now_secs() - 3600,
                nbf: None,
            },
            &EncodingKey::from_secret(b"secret-one"),
        )
        .expect("encode");
        assert_eq!(
            v.verify_admin(&expired),
            Err(AdminTokenError::Token(TokenError::Expired))
        );
        // An admin token is no participant token: it names no room.
        assert!(matches!(v.verify(&t), Err(TokenError::Invalid(_))));
    }
}
