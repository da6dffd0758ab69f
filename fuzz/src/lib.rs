//! What the fuzz targets share: the keys and clock the token targets verify with, and JWT
//! signing over raw bytes (so the fuzzer reaches claim parsing past the signature check).

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use gateway::auth::Authenticator;
use gateway::config::AuthConfig;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use wire::settings::Secret;

pub const JWT_SECRET: &[u8] = b"fuzz-jwt-secret";
pub const TABLE_SECRET: &[u8] = b"fuzz-table-secret";
pub const ISSUER: &str = "menu-ops";
pub const AUDIENCE: &str = "menu-ops-users";
/// The verification clock: fixed, so that a run is reproducible (2027-01-15). Seeds expire at
/// 1_900_000_000.
pub const NOW: i64 = 1_800_000_000;
/// The header the backend signs with.
pub const HS256_HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

pub fn authenticator() -> Authenticator {
    Authenticator::new(&AuthConfig {
        jwt_secret: Secret::new(JWT_SECRET),
        jwt_issuer: ISSUER.into(),
        jwt_audience: AUDIENCE.into(),
        table_token_secret: Secret::new(TABLE_SECRET),
        allow_legacy_table_tokens: true,
        allowed_origins: Vec::new(),
        cors_origins: Vec::new(),
        allow_missing_origin: false,
        staff_recheck_interval: Duration::from_secs(60),
        diner_recheck_interval: Duration::from_secs(60),
    })
}

/// URL-safe base64 with or without padding: the checks must not be stricter than the verifier
/// on encoding details, only on what the token says.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `b64(header).b64(claims).b64(HMAC-SHA256)`: a correctly signed JWT whatever the bytes are.
pub fn sign(secret: &[u8], header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac(secret, input.as_bytes())))
}

/// Whether `token` is `header.claims.signature` with the right HS256 signature under `secret`:
/// anything the verifier accepts must be.
pub fn signed_by(secret: &[u8], token: &str) -> bool {
    let Some((input, sig)) = token.rsplit_once('.') else { return false };
    LENIENT.decode(sig).is_ok_and(|sig| sig == mac(secret, input.as_bytes()))
}

/// The decoded JSON of an accepted JWT's header (`0`) or claims (`1`) segment; panics when it is
/// not JSON. `None` for valid JSON that serde_json's `Value` cannot hold: a number beyond an
/// f64 (RFC 8259 sets no range), which the verifier skips in a field it does not read.
pub fn segment(token: &str, index: usize) -> Option<serde_json::Value> {
    let text = token.split('.').nth(index).unwrap_or_else(|| panic!("accepted without segment {index}: {token}"));
    let bytes = LENIENT.decode(text).unwrap_or_else(|e| panic!("accepted segment {index} is not base64url: {e}"));
    match serde_json::from_slice(&bytes) {
        Ok(value) => Some(value),
        Err(e) if e.to_string().starts_with("number out of range") => None,
        Err(e) => panic!("accepted segment {index} is not JSON: {e}: {}", String::from_utf8_lossy(&bytes)),
    }
}

fn mac(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// Splits `text` at its first newline: the fuzz inputs of several targets are newline-separated
/// fields, so that seeds stay readable files.
pub fn split_line(text: &str) -> (&str, Option<&str>) {
    match text.split_once('\n') {
        Some((first, rest)) => (first, Some(rest)),
        None => (text, None),
    }
}
