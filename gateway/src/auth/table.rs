//! Diner table tokens: the JWT form (exactly two dots) and the legacy
//! `tenant:branch:table:session:expires_at:sig` form, compared in constant time. Ids must be
//! within the backend's range; the JWT form's `nbf` and a future `iat` are refused.

use super::staff::decode_jwt;
use super::{backend_id, check_not_before, AuthError};
use crate::config::AuthConfig;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;

/// A verified diner table token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diner {
    pub tenant_id: u64,
    pub branch_id: u64,
    pub table_id: u64,
    pub session_id: u64,
    pub exp: i64,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "type")]
    token_type: String,
    tenant_id: u64,
    branch_id: u64,
    table_id: u64,
    session_id: u64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    exp: i64,
}

pub(super) struct TableVerifier {
    secret: Vec<u8>,
    key: DecodingKey,
    validation: Validation,
    allow_legacy: bool,
}

impl TableVerifier {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&["integrador:table"]);
        validation.set_audience(&["integrador:diner"]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 0;
        TableVerifier {
            secret: config.table_token_secret.expose().to_vec(),
            key: DecodingKey::from_secret(config.table_token_secret.expose()),
            validation,
            allow_legacy: config.allow_legacy_table_tokens,
        }
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<Diner, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let diner = if token.matches('.').count() == 2 {
            self.verify_jwt(token, now)?
        } else if self.allow_legacy {
            self.verify_legacy(token)?
        } else {
            return Err(AuthError::Malformed("legacy table tokens are disabled".into()));
        };
        if diner.exp <= now {
            return Err(AuthError::Expired);
        }
        Ok(diner)
    }

    fn verify_jwt(&self, token: &str, now: i64) -> Result<Diner, AuthError> {
        let c = decode_jwt::<Claims>(token, &self.key, &self.validation)?;
        if c.token_type != "table" {
            return Err(AuthError::WrongType(c.token_type));
        }
        if c.exp <= now {
            return Err(AuthError::Expired);
        }
        check_not_before(c.iat, c.nbf, now)?;
        if ![c.tenant_id, c.branch_id, c.table_id, c.session_id].into_iter().all(backend_id) {
            return Err(AuthError::Malformed("table token ids must be integers from 1 to 2^63-1".into()));
        }
        Ok(Diner {
            tenant_id: c.tenant_id,
            branch_id: c.branch_id,
            table_id: c.table_id,
            session_id: c.session_id,
            exp: c.exp,
        })
    }

    fn verify_legacy(&self, token: &str) -> Result<Diner, AuthError> {
        let malformed = || AuthError::Malformed("not a legacy table token".into());
        let (signed, sig) = token.rsplit_once(':').ok_or_else(malformed)?;
        let fields: Vec<&str> = signed.split(':').collect();
        if fields.len() != 5
            || sig.len() != 32
            || !sig.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(malformed());
        }
        let sig = hex::decode(sig).map_err(|_| malformed())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        // Constant-time comparison of the first 16 bytes (32 hex characters) of the tag.
        mac.verify_truncated_left(&sig).map_err(|_| AuthError::Signature)?;
        // `positive_id` refuses ids above the backend's range too.
        let id = |i: usize| wire::envelope::positive_id(fields[i]).ok_or_else(malformed);
        let exp: i64 = fields[4].parse().map_err(|_| malformed())?;
        Ok(Diner { tenant_id: id(0)?, branch_id: id(1)?, table_id: id(2)?, session_id: id(3)?, exp })
    }
}
