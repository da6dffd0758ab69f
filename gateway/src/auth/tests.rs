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

#[test]
fn refuses_every_bad_staff_token() {
    let cases: Vec<(&str, Box<dyn FnOnce(&mut serde_json::Value)>)> = vec![
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

#[test]
fn origin_rules() {
    let c = config(true);
    assert!(origin_allowed(Some("http://localhost:5173"), &c));
    assert!(!origin_allowed(Some("http://localhost:5173/"), &c), "exact match");
    assert!(!origin_allowed(Some("http://localhost:5174"), &c));
    assert!(!origin_allowed(Some("http://evil.localhost:5173"), &c));
    assert!(!origin_allowed(None, &c));
}
