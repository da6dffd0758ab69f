//! Diner table tokens, both forms (`Authenticator::verify_table`). Input: one mode byte, then
//! - mode 0: the token text as a client sends it (JWT or legacy form);
//! - mode 1: JWT claims bytes, signed here with the right key and the backend's header;
//! - mode 2: `header\nclaims`, both fuzzed, signed with the right key;
//! - mode 3: the five signed fields of a legacy token (`tenant:branch:table:session:expires`),
//!   given the right signature here.
//!
//! An accepted token must be signed with the key and carry exactly what the verifier reports:
//! four ids in range, not expired, the JWT form of type `table` for the diner audience.
#![no_main]

use fuzz::{authenticator, segment, sign, signed_by, split_line, HS256_HEADER, NOW, TABLE_SECRET};
use gateway::auth::{backend_id, Authenticator, Diner, CLOCK_SKEW_LEEWAY_SECS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;
use wire::envelope::positive_id;
use wire::tokens::legacy_signature;

static AUTH: LazyLock<Authenticator> = LazyLock::new(authenticator);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = match mode % 4 {
        1 => sign(TABLE_SECRET, HS256_HEADER, rest),
        mode => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            match (mode, split_line(text)) {
                (0, _) => text.to_string(),
                (2, (header, Some(claims))) => sign(TABLE_SECRET, header.as_bytes(), claims.as_bytes()),
                (2, (claims, None)) => sign(TABLE_SECRET, HS256_HEADER, claims.as_bytes()),
                _ => format!("{text}:{}", legacy_signature(TABLE_SECRET, text)),
            }
        }
    };
    if let Ok(diner) = AUTH.verify_table(&token, NOW) {
        check(&token, &diner);
    }
});

fn check(token: &str, diner: &Diner) {
    let ids = [diner.tenant_id, diner.branch_id, diner.table_id, diner.session_id];
    assert!(ids.into_iter().all(backend_id), "{diner:?}");
    assert!(diner.exp > NOW, "expired token accepted: {diner:?}");
    if token.matches('.').count() == 2 {
        check_jwt(token, diner);
    } else {
        check_legacy(token, diner);
    }
}

fn check_jwt(token: &str, diner: &Diner) {
    assert!(signed_by(TABLE_SECRET, token), "accepted without the key's signature: {token}");
    let Some(header) = segment(token, 0) else { return };
    assert_eq!(header["alg"], "HS256", "accepted another algorithm: {header}");
    let Some(c) = segment(token, 1) else { return };
    assert_eq!(c["type"], "table", "{c}");
    assert_eq!(c["iss"], "integrador:table", "{c}");
    let audience_ok = match &c["aud"] {
        Value::String(aud) => aud == "integrador:diner",
        Value::Array(list) => list.iter().any(|a| a == "integrador:diner"),
        _ => false,
    };
    assert!(audience_ok, "wrong audience accepted: {c}");
    for (field, id) in [
        ("tenant_id", diner.tenant_id),
        ("branch_id", diner.branch_id),
        ("table_id", diner.table_id),
        ("session_id", diner.session_id),
    ] {
        assert_eq!(c[field].as_u64(), Some(id), "{field}: {c}");
    }
    assert_eq!(c["exp"].as_i64(), Some(diner.exp), "{c}");
    for field in ["iat", "nbf"] {
        if let Some(t) = c.get(field).and_then(Value::as_i64) {
            assert!(t <= NOW + CLOCK_SKEW_LEEWAY_SECS, "future {field} accepted: {c}");
        }
    }
}

fn check_legacy(token: &str, diner: &Diner) {
    let (signed, sig) = token.rsplit_once(':').expect("a legacy token has a signature");
    assert_eq!(sig, legacy_signature(TABLE_SECRET, signed), "accepted without the key's signature: {token}");
    let fields: Vec<&str> = signed.split(':').collect();
    assert_eq!(fields.len(), 5, "{token}");
    let ids: Vec<Option<u64>> = fields[..4].iter().map(|f| positive_id(f)).collect();
    assert_eq!(ids, [diner.tenant_id, diner.branch_id, diner.table_id, diner.session_id].map(Some), "{token}");
    assert_eq!(fields[4].parse::<i64>().ok(), Some(diner.exp), "{token}");
}
