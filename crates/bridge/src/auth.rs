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

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is expired or not yet valid")]
    Expired,
    #[error("token is invalid: {0}")]
    Invalid(String),
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
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Verifies tokens against the configured API keys.
pub struct Verifier {
    keys: BTreeMap<String, DecodingKey>,
}

impl Verifier {
    pub fn new(keys: &BTreeMap<String, String>) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|(k, s)| (k.clone(), DecodingKey::from_secret(s.as_bytes())))
                .collect(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        // The issuer picks the key; read it unverified, then verify with that key alone.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed: {e}")))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let iss = unverified_issuer(token)
            .ok_or_else(|| TokenError::Invalid("no issuer (iss) claim".into()))?;
        let key = self
            .keys
            .get(&iss)
            .ok_or_else(|| TokenError::Invalid(format!("unknown API key {iss:?}")))?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
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
        Verifier::new(&keys)
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
}
