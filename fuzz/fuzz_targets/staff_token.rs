//! Staff JWTs (`Authenticator::verify_staff`). Input: one mode byte, then
//! - mode 0: the token text as a client sends it;
//! - mode 1: claims bytes, signed here with the right key and the backend's header;
//! - mode 2: `header\nclaims`, both fuzzed, signed with the right key.
//!
//! Modes 1 and 2 get past the signature, so the fuzzer explores claim parsing and the header.
//! An accepted token must be signed with the key, say HS256, and carry exactly the claims the
//! verifier reports: ids in range, branches sorted and unique, issuer, audience and type right.
#![no_main]

use fuzz::{authenticator, segment, sign, signed_by, split_line, AUDIENCE, HS256_HEADER, ISSUER, JWT_SECRET, NOW};
use gateway::auth::{backend_id, Authenticator, Roles, Staff, CLOCK_SKEW_LEEWAY_SECS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;

static AUTH: LazyLock<Authenticator> = LazyLock::new(authenticator);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(token) => token.to_string(),
            Err(_) => return,
        },
        1 => sign(JWT_SECRET, HS256_HEADER, rest),
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            match split_line(text) {
                (header, Some(claims)) => sign(JWT_SECRET, header.as_bytes(), claims.as_bytes()),
                (claims, None) => sign(JWT_SECRET, HS256_HEADER, claims.as_bytes()),
            }
        }
    };
    if let Ok(staff) = AUTH.verify_staff(&token, NOW) {
        check(&token, &staff);
    }
});

fn check(token: &str, staff: &Staff) {
    assert!(signed_by(JWT_SECRET, token), "accepted without the key's signature: {token}");
    let Some(header) = segment(token, 0) else { return };
    assert_eq!(header["alg"], "HS256", "accepted another algorithm: {header}");
    let Some(claims) = segment(token, 1) else { return };
    assert!(claims.is_object(), "{claims}");

    assert!(backend_id(staff.user_id) && backend_id(staff.tenant_id), "{staff:?}");
    assert!(staff.branch_ids.iter().all(|b| backend_id(*b)), "{staff:?}");
    assert!(staff.branch_ids.windows(2).all(|w| w[0] < w[1]), "branches not sorted and unique: {staff:?}");
    assert!(staff.exp > NOW, "expired token accepted: {staff:?}");
    assert!(staff.iat <= NOW + CLOCK_SKEW_LEEWAY_SECS, "future iat accepted: {staff:?}");
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64) {
        assert!(nbf <= NOW + CLOCK_SKEW_LEEWAY_SECS, "future nbf accepted: {claims}");
    }

    assert_eq!(claims["iss"], ISSUER, "{claims}");
    let audience_ok = match &claims["aud"] {
        Value::String(aud) => aud == AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "wrong audience accepted: {claims}");
    assert!(matches!(&claims["type"], Value::Null) || claims["type"] == "access", "{claims}");
    let sub = claims["sub"].as_str().and_then(wire::envelope::positive_id);
    assert_eq!(sub, Some(staff.user_id), "{claims}");
    assert_eq!(claims["tenant_id"].as_u64(), Some(staff.tenant_id), "{claims}");
    assert_eq!(claims["exp"].as_i64(), Some(staff.exp), "{claims}");
    let mut branches: Vec<u64> =
        claims["branch_ids"].as_array().expect("branch_ids is a list").iter().map(|b| b.as_u64().unwrap()).collect();
    branches.sort_unstable();
    branches.dedup();
    assert_eq!(branches, staff.branch_ids, "{claims}");
    let roles: Vec<&str> =
        claims["roles"].as_array().expect("roles is a list").iter().filter_map(Value::as_str).collect();
    assert_eq!(Roles::from_list(&roles), staff.roles, "{claims}");
}
