use super::*;
use crate::config::{Config, JWT_SECRET, TABLE_TOKEN_SECRET};
use serde_json::json;
use wire::tokens::{legacy_table_token, sign_jwt, sign_jwt_with_alg, staff_claims, table_claims};

const JWT: &[u8] = b"jwt-secret";
const TABLE: &[u8] = b"table-secret";

fn config(legacy: bool) -> AuthConfig {
    let map = [
        (JWT_SECRET.to_string(), "jwt-secret".to_string()),
        (TABLE_TOKEN_SECRET.to_string(), "table-secret".to_string()),
        ("ALLOW_LEGACY_TABLE_TOKENS".to_string(), legacy.to_string()),
        ("NATS_ALLOW_ANONYMOUS".to_string(), "true".to_string()),
    ]
    .into_iter()
    .collect();
    Config::from_map(&map).unwrap().auth
}

fn auth() -> Authenticator {
    Authenticator::new(&config(true))
}

fn staff_with(f: impl FnOnce(&mut serde_json::Value)) -> Result<Staff, AuthError> {
    let mut claims = staff_claims(7, 3, &[10, 11], &["WAITER"], 600);
    f(&mut claims);
    auth().verify_staff(&sign_jwt(JWT, &claims), unix_now())
}

#[test]
fn accepts_a_backend_access_token() {
    let s = staff_with(|_| {}).unwrap();
    assert_eq!((s.user_id, s.tenant_id, s.branch_ids.clone()), (7, 3, vec![10, 11]));
    assert!(s.roles.waiter && !s.roles.is_admin());
    assert!(
        staff_with(|c| {
            c.as_object_mut().unwrap().remove("type");
        })
        .is_ok(),
        "type may be absent"
    );
    assert!(staff_with(|c| c["aud"] = json!(["other", "menu-ops-users"])).is_ok(), "aud may be a list");
}

type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn refuses_every_bad_staff_token() {
    let cases: Vec<(&str, Edit)> = vec![
        ("refresh", Box::new(|c| c["type"] = json!("refresh"))),
        ("table type", Box::new(|c| c["type"] = json!("table"))),
        ("expired", Box::new(|c| c["exp"] = json!(unix_now() - 1))),
        ("issuer", Box::new(|c| c["iss"] = json!("someone-else"))),
        ("audience", Box::new(|c| c["aud"] = json!("other"))),
        ("roles as string", Box::new(|c| c["roles"] = json!("WAITER"))),
        ("branch zero", Box::new(|c| c["branch_ids"] = json!([0]))),
        ("branch non-integer", Box::new(|c| c["branch_ids"] = json!(["10"]))),
        ("tenant as string", Box::new(|c| c["tenant_id"] = json!("3"))),
        ("sub not numeric", Box::new(|c| c["sub"] = json!("alice"))),
        ("sub zero", Box::new(|c| c["sub"] = json!("0"))),
        ("sub above i64", Box::new(|c| c["sub"] = json!("9223372036854775808"))),
        ("tenant above i64", Box::new(|c| c["tenant_id"] = json!(9_223_372_036_854_775_808u64))),
        ("tenant zero", Box::new(|c| c["tenant_id"] = json!(0))),
        ("branch above i64", Box::new(|c| c["branch_ids"] = json!([10, u64::MAX]))),
        ("branch negative", Box::new(|c| c["branch_ids"] = json!([-1]))),
        ("nbf in the future", Box::new(|c| c["nbf"] = json!(unix_now() + CLOCK_SKEW_LEEWAY_SECS + 5))),
        ("iat in the future", Box::new(|c| c["iat"] = json!(unix_now() + CLOCK_SKEW_LEEWAY_SECS + 5))),
        ("nbf not a number", Box::new(|c| c["nbf"] = json!("soon"))),
        (
            "no exp",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
    ];
    for (name, mutate) in cases {
        assert!(staff_with(mutate).is_err(), "{name} was accepted");
    }
}

#[test]
fn duplicate_branch_ids_count_once() {
    let s = staff_with(|c| c["branch_ids"] = json!([11, 10, 11, 10, 10])).unwrap();
    assert_eq!(s.branch_ids, vec![10, 11]);
    let s = staff_with(|c| c["branch_ids"] = json!(vec![1; 300])).unwrap();
    assert_eq!(s.branch_ids, vec![1]);
}

#[test]
fn ids_up_to_the_signed_64_bit_maximum_are_ids() {
    let max = MAX_ID;
    let s = staff_with(|c| {
        c["sub"] = json!(max.to_string());
        c["tenant_id"] = json!(max);
        c["branch_ids"] = json!([max]);
    })
    .unwrap();
    assert_eq!((s.user_id, s.tenant_id, s.branch_ids), (max, max, vec![max]));
}

#[test]
fn nbf_and_iat_within_the_clock_skew_leeway_are_accepted() {
    let now = unix_now();
    let edge = now + CLOCK_SKEW_LEEWAY_SECS;
    let a = auth();
    let token = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = staff_claims(7, 3, &[10], &["WAITER"], 600);
        edit(&mut claims);
        sign_jwt(JWT, &claims)
    };
    assert!(a.verify_staff(&token(&|c| c["nbf"] = json!(now - 10)), now).is_ok());
    assert!(a.verify_staff(&token(&|c| c["nbf"] = json!(edge)), now).is_ok());
    assert!(a.verify_staff(&token(&|c| c["iat"] = json!(edge)), now).is_ok());
    assert_eq!(a.verify_staff(&token(&|c| c["nbf"] = json!(edge + 1)), now), Err(AuthError::NotYetValid));
    assert_eq!(a.verify_staff(&token(&|c| c["iat"] = json!(edge + 1)), now), Err(AuthError::IssuedInFuture));
    // The same token becomes valid once its time has come.
    let later = token(&|c| c["nbf"] = json!(now + 120));
    assert_eq!(a.verify_staff(&later, now), Err(AuthError::NotYetValid));
    assert!(a.verify_staff(&later, now + 120).is_ok());
}

#[test]
fn table_jwt_ids_nbf_and_iat() {
    let a = auth();
    let now = unix_now();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = table_claims(3, 10, 5, 99, 600);
        edit(&mut claims);
        a.verify_table(&sign_jwt(TABLE, &claims), now)
    };
    assert!(with(&|_| {}).is_ok());
    for field in ["tenant_id", "branch_id", "table_id", "session_id"] {
        assert!(with(&|c| c[field] = json!(MAX_ID)).is_ok(), "{field} at the maximum");
        assert!(matches!(with(&|c| c[field] = json!(MAX_ID + 1)), Err(AuthError::Malformed(_))), "{field} above i64");
    }
    assert_eq!(with(&|c| c["nbf"] = json!(now + CLOCK_SKEW_LEEWAY_SECS + 1)), Err(AuthError::NotYetValid));
    assert_eq!(with(&|c| c["iat"] = json!(now + CLOCK_SKEW_LEEWAY_SECS + 1)), Err(AuthError::IssuedInFuture));
    assert!(with(&|c| c["nbf"] = json!(now)).is_ok());
    let legacy = |t: u64| legacy_table_token(TABLE, t, 10, 5, 99, now + 600);
    assert!(a.verify_table(&legacy(MAX_ID), now).is_ok());
    assert!(a.verify_table(&legacy(MAX_ID + 1), now).is_err(), "legacy id above i64");
}

#[test]
fn refuses_other_algorithms_and_keys() {
    let claims = staff_claims(7, 3, &[10], &["WAITER"], 600);
    let a = auth();
    assert_eq!(a.verify_staff(&sign_jwt(b"wrong", &claims), unix_now()), Err(AuthError::Signature));
    assert!(a.verify_staff(&sign_jwt_with_alg(JWT, "HS512", &claims), unix_now()).is_err());
    let none = format!("{}.", sign_jwt_with_alg(JWT, "none", &claims).rsplit_once('.').unwrap().0);
    assert!(a.verify_staff(&none, unix_now()).is_err());
    assert!(a.verify_staff("garbage", unix_now()).is_err());
    assert_eq!(a.verify_staff("", unix_now()), Err(AuthError::Missing));
    let table = sign_jwt(TABLE, &table_claims(3, 10, 5, 99, 600));
    assert!(a.verify_staff(&table, unix_now()).is_err(), "table token on a staff endpoint");
}

#[test]
fn roles_are_exact_members() {
    let r = Roles::from_list(&["WAITERS", "SUPERADMIN", "manager"]);
    assert_eq!(r, Roles::default());
    assert!(Endpoint::Admin.admits(Roles::from_list(&["MANAGER"])));
    assert!(!Endpoint::Admin.admits(Roles::from_list(&["WAITER", "KITCHEN"])));
    assert!(Endpoint::Kitchen.admits(Roles::from_list(&["ADMIN"])));
    assert!(!Endpoint::Kitchen.admits(Roles::from_list(&["WAITER"])));
    assert!(!Endpoint::Diner.admits(Roles::from_list(&["ADMIN"])));
}

#[test]
fn table_tokens_in_both_forms() {
    let a = auth();
    let now = unix_now();
    let jwt = sign_jwt(TABLE, &table_claims(3, 10, 5, 99, 600));
    assert_eq!(a.verify_table(&jwt, now).unwrap().session_id, 99);
    let legacy = legacy_table_token(TABLE, 3, 10, 5, 99, now + 600);
    let d = a.verify_table(&legacy, now).unwrap();
    assert_eq!((d.tenant_id, d.branch_id, d.table_id, d.session_id), (3, 10, 5, 99));

    let expired = legacy_table_token(TABLE, 3, 10, 5, 99, now - 1);
    assert_eq!(a.verify_table(&expired, now), Err(AuthError::Expired));
    let forged = legacy_table_token(b"other", 3, 10, 5, 99, now + 600);
    assert_eq!(a.verify_table(&forged, now), Err(AuthError::Signature));
    let upper = legacy.to_uppercase();
    assert!(a.verify_table(&upper, now).is_err(), "signature must be lowercase hex");
    let tampered = legacy.replacen("3:10", "4:10", 1);
    assert!(a.verify_table(&tampered, now).is_err());
    let mut wrong_type = table_claims(3, 10, 5, 99, 600);
    wrong_type["type"] = json!("access");
    assert!(a.verify_table(&sign_jwt(TABLE, &wrong_type), now).is_err());
    let staff = sign_jwt(JWT, &staff_claims(7, 3, &[10], &["WAITER"], 600));
    assert!(a.verify_table(&staff, now).is_err(), "staff token on the diner endpoint");

    let strict = Authenticator::new(&config(false));
    assert!(strict.verify_table(&legacy, now).is_err(), "legacy disabled");
    assert!(strict.verify_table(&jwt, now).is_ok());
}

/// A JWT over raw header and claims bytes, signed with `secret` (HS256).
fn sign_raw(secret: &[u8], header: &[u8], claims: &[u8]) -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    use hmac::Mac;
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[test]
fn tokens_whose_json_is_not_utf8_are_malformed_even_when_signed() {
    // A fuzz finding: serde_json skips the fields it does not read without checking their
    // strings, so bytes that are not UTF-8 in an unknown claim passed.
    let header = br#"{"alg":"HS256","typ":"JWT"}"#;
    let now = unix_now();
    let mut staff = staff_claims(7, 3, &[10], &["WAITER"], 600).to_string().into_bytes();
    staff.truncate(staff.len() - 1);
    let plain = [staff.as_slice(), br#","note":"ok"}"#].concat();
    assert!(auth().verify_staff(&sign_raw(JWT, header, &plain), now).is_ok(), "the same token, UTF-8");
    let broken = [staff.as_slice(), b",\"note\":\"acces\xed\"}"].concat();
    assert!(matches!(auth().verify_staff(&sign_raw(JWT, header, &broken), now), Err(AuthError::Malformed(_))));
    let header_broken = b"{\"alg\":\"HS256\",\"x\":\"\xff\"}";
    assert!(matches!(auth().verify_staff(&sign_raw(JWT, header_broken, &plain), now), Err(AuthError::Malformed(_))));

    let mut table = table_claims(3, 10, 5, 99, 600).to_string().into_bytes();
    table.truncate(table.len() - 1);
    let plain = [table.as_slice(), br#","note":"ok"}"#].concat();
    assert!(auth().verify_table(&sign_raw(TABLE, header, &plain), now).is_ok());
    let broken = [table.as_slice(), b",\"note\":\"\xc3\"}"].concat();
    assert!(matches!(auth().verify_table(&sign_raw(TABLE, header, &broken), now), Err(AuthError::Malformed(_))));
}

#[test]
fn origin_rules() {
    let c = config(true);
    assert!(origin_allowed(Some("http://localhost:5173"), &c));
    assert!(!origin_allowed(Some("http://localhost:5173/"), &c), "exact match");
    assert!(!origin_allowed(Some("http://localhost:5174"), &c));
    assert!(!origin_allowed(Some("http://evil.localhost:5173"), &c));
    assert!(!origin_allowed(None, &c));
}

/// The claims parser against arbitrary claim values: it never panics, and whatever it accepts
/// holds the invariants the rest of the gateway relies on.
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Any JSON value, nested a little.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Ids at and around every edge: 0, small ones that repeat, the signed and unsigned maxima.
    fn edge_id() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => (1u64..4).prop_map(Value::from),
            1 => Just(Value::from(0)),
            1 => Just(Value::from(MAX_ID)),
            1 => Just(Value::from(MAX_ID + 1)),
            1 => Just(Value::from(u64::MAX)),
            1 => Just(Value::from(-1)),
            1 => any::<u64>().prop_map(Value::from),
        ]
    }

    fn edge_time(now: i64) -> impl Strategy<Value = Value> {
        let leeway = CLOCK_SKEW_LEEWAY_SECS;
        prop_oneof![
            (-1000i64..1000).prop_map(move |d| Value::from(now + d)),
            Just(Value::from(now + leeway)),
            Just(Value::from(now + leeway + 1)),
            Just(Value::from(i64::MAX)),
            Just(Value::from(i64::MIN)),
        ]
    }

    /// A claim: left as minted, removed, an edge value for its kind, or any JSON at all.
    fn claim(plausible: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Option<Value>>> {
        prop_oneof![
            12 => Just(None),
            1 => Just(Some(None)),
            3 => plausible.prop_map(|v| Some(Some(v))),
            1 => any_json().prop_map(|v| Some(Some(v))),
        ]
    }

    fn plausible(name: &str, now: i64) -> BoxedStrategy<Value> {
        match name {
            "sub" => {
                prop_oneof![edge_id().prop_map(|v| Value::from(v.to_string())), "[0-9]{1,21}".prop_map(Value::from)]
                    .boxed()
            }
            "tenant_id" => edge_id().boxed(),
            "branch_ids" => prop_oneof![
                prop::collection::vec(edge_id(), 0..8).prop_map(Value::Array),
                // Repeats, up to the 300 copies of one id that once overflowed a queue.
                prop::collection::vec(1u64..4, 0..300).prop_map(|ids| json!(ids)),
            ]
            .boxed(),
            "iat" | "nbf" | "exp" => edge_time(now).boxed(),
            "roles" => prop::collection::vec(prop::sample::select(vec!["WAITER", "KITCHEN", "ADMIN", "x"]), 0..3)
                .prop_map(|r| Value::from(r.into_iter().map(Value::from).collect::<Vec<_>>()))
                .boxed(),
            "type" => prop::sample::select(vec!["access", "refresh", "table", ""]).prop_map(Value::from).boxed(),
            "jti" => ".{0,12}".prop_map(Value::from).boxed(),
            "aud" => prop_oneof![
                Just(json!("menu-ops-users")),
                Just(json!(["other", "menu-ops-users"])),
                Just(json!("other")),
            ]
            .boxed(),
            _ => any_json().boxed(),
        }
    }

    const CLAIMS: [&str; 10] = ["sub", "tenant_id", "branch_ids", "roles", "jti", "iat", "nbf", "exp", "type", "aud"];

    fn edits(now: i64) -> impl Strategy<Value = Vec<Option<Option<Value>>>> {
        CLAIMS.iter().map(|name| claim(plausible(name, now))).collect::<Vec<_>>()
    }

    /// Applies `edits` (one per name) to `claims`.
    fn apply(claims: &mut Value, names: &[&str], edits: Vec<Option<Option<Value>>>) {
        for (name, edit) in names.iter().zip(edits) {
            match edit {
                None => {}
                Some(None) => {
                    claims.as_object_mut().unwrap().remove(*name);
                }
                Some(Some(value)) => claims[*name] = value,
            }
        }
    }

    /// Run by hand rather than through `proptest!` to count what was accepted: a property whose
    /// cases were all refused would prove nothing about accepted tokens.
    #[test]
    fn staff_claims_never_panic_and_accepted_tokens_hold_the_invariants() {
        const CASES: u32 = 1024;
        let config = ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(CASES) };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let accepted = std::cell::Cell::new(0u32);
        let now = unix_now();
        let result = runner.run(&edits(now), |edits| {
            let mut claims = staff_claims(7, 3, &[10, 11], &["WAITER"], 600);
            apply(&mut claims, &CLAIMS, edits);
            let Ok(staff) = auth().verify_staff(&sign_jwt(JWT, &claims), now) else { return Ok(()) };
            accepted.set(accepted.get() + 1);
            prop_assert!(backend_id(staff.user_id) && backend_id(staff.tenant_id));
            prop_assert!(staff.branch_ids.iter().all(|b| backend_id(*b)));
            prop_assert!(staff.branch_ids.windows(2).all(|w| w[0] < w[1]), "unique: {:?}", staff.branch_ids);
            prop_assert_eq!(Some(staff.tenant_id), claims["tenant_id"].as_u64());
            let listed: std::collections::BTreeSet<u64> =
                claims["branch_ids"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
            prop_assert_eq!(staff.branch_ids.iter().copied().collect::<std::collections::BTreeSet<_>>(), listed);
            prop_assert!(staff.exp > now);
            prop_assert!(staff.iat <= now + CLOCK_SKEW_LEEWAY_SECS);
            prop_assert!(claims["nbf"].as_i64().is_none_or(|nbf| nbf <= now + CLOCK_SKEW_LEEWAY_SECS));
            prop_assert!(matches!(claims["type"].as_str(), None | Some("access")));
            Ok(())
        });
        if let Err(error) = result {
            panic!("{error}");
        }
        assert!(accepted.get() >= CASES / 20, "only {} of {CASES} cases accepted", accepted.get());
        eprintln!("{} of {CASES} generated staff tokens accepted", accepted.get());
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(512) })]

        #[test]
        fn table_claims_never_panic_and_accepted_ids_are_in_range(
            ids in prop::collection::vec(claim(edge_id().boxed()), 4),
            times in prop::collection::vec(claim(edge_time(unix_now()).boxed()), 3),
            kind in claim(plausible("type", 0)),
        ) {
            let now = unix_now();
            let mut claims = table_claims(3, 10, 5, 99, 600);
            let names = ["tenant_id", "branch_id", "table_id", "session_id", "iat", "nbf", "exp", "type"];
            apply(&mut claims, &names, ids.into_iter().chain(times).chain([kind]).collect());
            let Ok(diner) = auth().verify_table(&sign_jwt(TABLE, &claims), now) else { return Ok(()) };
            for id in [diner.tenant_id, diner.branch_id, diner.table_id, diner.session_id] {
                prop_assert!(backend_id(id));
            }
            prop_assert!(diner.exp > now);
            prop_assert!(claims["iat"].as_i64().is_none_or(|iat| iat <= now + CLOCK_SKEW_LEEWAY_SECS));
        }

        #[test]
        fn legacy_table_tokens_never_panic(text in "[0-9a-f:x-]{0,80}") {
            let _ = auth().verify_table(&text, unix_now());
        }
    }
}
