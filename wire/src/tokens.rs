//! Minting of the backend's tokens (protocol section 3): staff JWTs, table JWTs and legacy
//! table tokens. The gateway verifies with its own code; this exists so that tests, the demo
//! stack and the loadtest can produce exactly what the backend produces.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs `claims` as an HS256 JWT (or with the `alg` given, to produce forged headers in tests).
pub fn sign_jwt_with_alg(secret: &[u8], alg: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

pub fn sign_jwt(secret: &[u8], claims: &Value) -> String {
    sign_jwt_with_alg(secret, "HS256", claims)
}

/// Claims of a staff access token as the backend issues them.
pub fn staff_claims(user_id: u64, tenant_id: u64, branch_ids: &[u64], roles: &[&str], ttl_secs: i64) -> Value {
    let now = crate::clock::now_unix();
    json!({
        "sub": user_id.to_string(),
        "tenant_id": tenant_id,
        "branch_ids": branch_ids,
        "roles": roles,
        "email": format!("user{user_id}@example.test"),
        "iss": "menu-ops",
        "aud": "menu-ops-users",
        "iat": now,
        "exp": now + ttl_secs,
        "jti": format!("jti-{user_id}-{now}-{}", next_nonce()),
        "type": "access",
    })
}

/// Claims of a table token in JWT form.
pub fn table_claims(tenant_id: u64, branch_id: u64, table_id: u64, session_id: u64, ttl_secs: i64) -> Value {
    let now = crate::clock::now_unix();
    json!({
        "iss": "integrador:table",
        "aud": "integrador:diner",
        "type": "table",
        "tenant_id": tenant_id,
        "branch_id": branch_id,
        "table_id": table_id,
        "session_id": session_id,
        "iat": now,
        "exp": now + ttl_secs,
    })
}

/// `{tenant}:{branch}:{table}:{session}:{expires_at}:{sig}` with the first 32 hex characters of
/// HMAC-SHA256 over the first five fields.
pub fn legacy_table_token(
    secret: &[u8],
    tenant_id: u64,
    branch_id: u64,
    table_id: u64,
    session_id: u64,
    expires_at: i64,
) -> String {
    let signed = format!("{tenant_id}:{branch_id}:{table_id}:{session_id}:{expires_at}");
    format!("{signed}:{}", legacy_signature(secret, &signed))
}

pub fn legacy_signature(secret: &[u8], signed: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    let mut hex = hex::encode(mac.finalize().into_bytes());
    hex.truncate(32);
    hex
}

fn next_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NONCE: AtomicU64 = AtomicU64::new(0);
    NONCE.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_token_has_six_fields_and_a_32_hex_signature() {
        let t = legacy_table_token(b"s", 1, 2, 3, 4, 5);
        let parts: Vec<_> = t.split(':').collect();
        assert_eq!(parts.len(), 6);
        assert_eq!(parts[5].len(), 32);
        assert!(parts[5].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn jwt_has_three_segments() {
        assert_eq!(sign_jwt(b"k", &json!({"a": 1})).matches('.').count(), 2);
    }
}
