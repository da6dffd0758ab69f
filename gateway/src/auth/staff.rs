//! Staff JWT verification: HS256 only, strict claim types, `type` access or absent, ids within
//! the backend's range, `branch_ids` de-duplicated, `nbf` and a future `iat` refused.

use super::{backend_id, check_not_before, AuthError, Roles};
use crate::config::AuthConfig;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// A verified staff access token. Every id is within 1..=[`super::MAX_ID`]; `branch_ids` is
/// sorted and holds each branch once (a token listing a branch three times must not deliver
/// each event three times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff {
    pub user_id: u64,
    pub tenant_id: u64,
    pub branch_ids: Vec<u64>,
    pub roles: Roles,
    pub jti: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tenant_id: u64,
    branch_ids: Vec<u64>,
    roles: Vec<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    exp: i64,
    #[serde(default, rename = "type")]
    token_type: Option<String>,
}

pub(super) struct StaffVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl StaffVerifier {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        StaffVerifier { key: DecodingKey::from_secret(config.jwt_secret.expose()), validation }
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<Staff, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let claims = decode_jwt::<Claims>(token, &self.key, &self.validation)?;
        match claims.token_type.as_deref() {
            None | Some("access") => {}
            Some(other) => return Err(AuthError::WrongType(other.to_string())),
        }
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        check_not_before(claims.iat, claims.nbf, now)?;
        // `positive_id` also refuses ids above the backend's range.
        let user_id = wire::envelope::positive_id(&claims.sub)
            .ok_or_else(|| AuthError::Malformed("sub is not an integer from 1 to 2^63-1".into()))?;
        if !backend_id(claims.tenant_id) {
            return Err(AuthError::Malformed("tenant_id is not an integer from 1 to 2^63-1".into()));
        }
        if !claims.branch_ids.iter().all(|b| backend_id(*b)) {
            return Err(AuthError::Malformed("branch_ids holds an id outside 1 to 2^63-1".into()));
        }
        let mut branch_ids = claims.branch_ids;
        branch_ids.sort_unstable();
        branch_ids.dedup();
        Ok(Staff {
            user_id,
            tenant_id: claims.tenant_id,
            branch_ids,
            roles: Roles::from_list(&claims.roles),
            jti: claims.jti,
            iat: claims.iat.unwrap_or(0),
            exp: claims.exp,
        })
    }
}

/// A verified JWT's claims. jsonwebtoken's serde_json skips the fields it does not read without
/// checking that their strings are UTF-8; JSON must be (RFC 8259, section 8.1), so a token whose
/// header or claims are not is malformed, whoever signed it (a fuzz finding).
pub(super) fn decode_jwt<C: serde::de::DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<C, AuthError> {
    let claims = jsonwebtoken::decode::<C>(token, key, validation).map_err(|e| jwt_error(&e))?.claims;
    if !token.split('.').take(2).all(segment_is_utf8) {
        return Err(AuthError::Malformed("header or claims are not UTF-8".into()));
    }
    Ok(claims)
}

fn segment_is_utf8(segment: &str) -> bool {
    use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
    use base64::Engine;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(segment).is_ok_and(|bytes| std::str::from_utf8(&bytes).is_ok())
}

pub(super) fn jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::Signature,
        other => AuthError::Malformed(format!("{other:?}")),
    }
}
