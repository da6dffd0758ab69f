//! Protocol sections 2 and 3 over real sockets: which roles each endpoint admits, both table-token
//! forms, every token failure, the origin rule, revocation at connect (and Redis down), the user,
//! session and capacity limits, a draining replica, and the rejection counters. Every refusal is
//! an accepted upgrade closed at once with the documented code and reason.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use serde_json::{json, Value};
use std::time::Duration;

const PONG: &str = r#"{"type":"pong"}"#;
const EVIL: &str = "http://evil.example";

fn accepted() -> Seen {
    Seen::Text(PONG.into())
}

fn auth_failed() -> Seen {
    Seen::Close(4001, "Authentication failed".into())
}

/// Connects, sends a ping and reports what came back: the pong (admitted) or the close.
async fn attempt_from(url: &str, origin: Option<&str>) -> (Seen, Client) {
    let mut client = Client::connect(url, origin).await;
    client.send("ping").await;
    (client.next().await, client)
}

async fn outcome_from(url: &str, origin: Option<&str>) -> Seen {
    attempt_from(url, origin).await.0
}

/// [`attempt_from`] an allowed origin.
async fn attempt(url: &str) -> (Seen, Client) {
    attempt_from(url, Some(ORIGIN)).await
}

async fn outcome(url: &str) -> Seen {
    outcome_from(url, Some(ORIGIN)).await
}

fn staff_url(gw: &Gateway, endpoint: &str, token: &str) -> String {
    gw.ws(&format!("/ws/{endpoint}?token={}", urlencode(token)))
}

fn diner_url(gw: &Gateway, token: &str) -> String {
    gw.ws(&format!("/ws/diner?table_token={}", urlencode(token)))
}

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A change to a token's claims.
type Edit<'a> = &'a dyn Fn(&mut Value);

fn now() -> i64 {
    wire::clock::now_unix()
}

/// An ISO-8601 UTC time as the backend writes it into `auth:user:revoked:{user}`.
fn iso(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    ))
    .unwrap()
}

/// Role lists tried on every staff endpoint: exact members only, no substrings, no case folding.
#[rustfmt::skip]
const ROLE_SETS: &[&[&str]] = &[
    &["WAITER"], &["KITCHEN"], &["MANAGER"], &["ADMIN"], &["WAITER", "KITCHEN"], &["KITCHEN", "ADMIN"],
    &[], &["WAITERS"], &["manager"], &["waiter"], &["ADMINISTRATOR"], &["DINER"], &["MANAGER "],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_staff_endpoint_admits_exactly_its_roles() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut user = 100;
    for roles in ROLE_SETS {
        for endpoint in ["waiter", "kitchen", "admin"] {
            let has = |r: &str| roles.contains(&r);
            let admitted = match endpoint {
                "waiter" => has("WAITER") || has("MANAGER") || has("ADMIN"),
                "kitchen" => has("KITCHEN") || has("MANAGER") || has("ADMIN"),
                _ => has("MANAGER") || has("ADMIN"),
            };
            let expected = if admitted { accepted() } else { Seen::Close(4003, "Access denied".into()) };
            user += 1;
            let seen = outcome(&staff_url(&gw, endpoint, &staff_token(user, 1, &[10], roles))).await;
            assert_eq!(seen, expected, "roles {roles:?} on /ws/{endpoint}");
        }
    }
    let denied = gw.metric(r#"wsgateway_connections_rejected_total{reason="access_denied"}"#).await;
    assert!(denied >= 20.0, "access denials are counted, saw {denied}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diners_connect_with_both_table_token_forms() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let jwt = table_token(1, 10, 3, 77);
    let legacy = legacy_table_token(1, 10, 4, 77);
    assert_eq!(outcome(&diner_url(&gw, &jwt)).await, accepted(), "JWT-form table token");
    assert_eq!(outcome(&diner_url(&gw, &legacy)).await, accepted(), "legacy table token");
    gw.stop().await;

    let strict = stack.gateway_with(&[("ALLOW_LEGACY_TABLE_TOKENS", "false")]).await;
    assert_eq!(outcome(&diner_url(&strict, &legacy)).await, auth_failed(), "legacy refused when disabled");
    assert_eq!(outcome(&diner_url(&strict, &jwt)).await, accepted(), "JWT form still works when legacy is disabled");
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_failure_closes_4001() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let roles = ["WAITER", "KITCHEN", "MANAGER"];
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = wire::tokens::staff_claims(7, 1, &[10], &roles, 3600);
        edit(&mut c);
        c
    };
    let sign = |c: &Value| wire::tokens::sign_jwt(JWT_SECRET.as_bytes(), c);
    let alg_none = format!("{}.{}.", b64url(br#"{"alg":"none"}"#), b64url(claims(&|_| {}).to_string().as_bytes()));
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(&|_| {}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let staff_failures: Vec<(&str, String)> = vec![
        ("empty token", String::new()),
        ("garbage", "not-a-token".into()),
        ("garbage with two dots", "a.b.c".into()),
        ("expired", sign(&claims(&|c| c["exp"] = json!(now() - 10)))),
        ("wrong key", wire::tokens::sign_jwt(b"another-secret", &claims(&|_| {}))),
        ("alg none, empty signature", alg_none),
        (
            "alg none header over an HS256 signature",
            wire::tokens::sign_jwt_with_alg(JWT_SECRET.as_bytes(), "none", &claims(&|_| {})),
        ),
        ("HS512", hs512),
        ("no exp", sign(&claims(&|c| drop(c.as_object_mut().unwrap().remove("exp"))))),
        ("type refresh", sign(&claims(&|c| c["type"] = json!("refresh")))),
        ("type table", sign(&claims(&|c| c["type"] = json!("table")))),
        ("wrong issuer", sign(&claims(&|c| c["iss"] = json!("someone-else")))),
        ("wrong audience", sign(&claims(&|c| c["aud"] = json!("other-users")))),
        ("roles as a string", sign(&claims(&|c| c["roles"] = json!("WAITER,KITCHEN,MANAGER")))),
        ("tenant_id as a string", sign(&claims(&|c| c["tenant_id"] = json!("1")))),
        ("branch_ids holding 0", sign(&claims(&|c| c["branch_ids"] = json!([10, 0])))),
        ("branch_ids holding a string", sign(&claims(&|c| c["branch_ids"] = json!(["10"])))),
        ("sub non-numeric", sign(&claims(&|c| c["sub"] = json!("abc")))),
        ("sub zero", sign(&claims(&|c| c["sub"] = json!("0")))),
        ("JWT table token", table_token(1, 10, 3, 77)),
        ("legacy table token", legacy_table_token(1, 10, 3, 77)),
    ];
    let mut refused_count = 0.0;
    let mut control_user = 100;
    for endpoint in ["waiter", "kitchen", "admin"] {
        let controls: [(&str, Edit<'_>); 3] = [
            ("the unmodified claims", &|_| {}),
            ("aud as a list containing the audience", &|c| c["aud"] = json!(["other", "menu-ops-users"])),
            ("no type claim", &|c| drop(c.as_object_mut().unwrap().remove("type"))),
        ];
        for (row, edit) in controls {
            control_user += 1;
            let token = sign(&claims(&|c| {
                edit(c);
                c["sub"] = json!(control_user.to_string());
            }));
            assert_eq!(
                outcome(&staff_url(&gw, endpoint, &token)).await,
                accepted(),
                "control: {row} on /ws/{endpoint}"
            );
        }
        for (row, token) in &staff_failures {
            assert_eq!(outcome(&staff_url(&gw, endpoint, token)).await, auth_failed(), "{row} on /ws/{endpoint}");
            refused_count += 1.0;
        }
        let seen = outcome(&gw.ws(&format!("/ws/{endpoint}"))).await;
        assert_eq!(seen, auth_failed(), "no token parameter on /ws/{endpoint}");
        let seen = outcome(&gw.ws(&format!("/ws/{endpoint}?table_token={}", staff_token(8, 1, &[10], &roles)))).await;
        assert_eq!(seen, auth_failed(), "staff token in the wrong parameter on /ws/{endpoint}");
        refused_count += 2.0;
    }

    let t = now();
    let legacy = |exp: i64| wire::tokens::legacy_table_token(TABLE_SECRET.as_bytes(), 1, 10, 3, 77, exp);
    let valid_legacy = legacy(t + 3600);
    let (signed, sig) = valid_legacy.rsplit_once(':').unwrap();
    let flipped = format!("{signed}:{}{}", &sig[..31], if sig.ends_with('0') { '1' } else { '0' });
    let upper = format!("{signed}:{}", sig.to_uppercase());
    assert_ne!(upper, valid_legacy, "the signature holds a hex letter");
    let table = |edit: &dyn Fn(&mut Value)| {
        let mut c = wire::tokens::table_claims(1, 10, 3, 77, 3 * 3600);
        edit(&mut c);
        wire::tokens::sign_jwt(TABLE_SECRET.as_bytes(), &c)
    };
    let diner_failures: Vec<(&str, String)> = vec![
        ("empty table token", String::new()),
        ("garbage", "garbage".into()),
        ("staff token", staff_token(7, 1, &[10], &roles)),
        ("staff claims signed with the table key", wire::tokens::sign_jwt(TABLE_SECRET.as_bytes(), &claims(&|_| {}))),
        ("JWT table token expired", table(&|c| c["exp"] = json!(t - 10))),
        (
            "JWT table token, wrong key",
            wire::tokens::sign_jwt(b"another-secret", &wire::tokens::table_claims(1, 10, 3, 77, 3600)),
        ),
        ("JWT table token, type access", table(&|c| c["type"] = json!("access"))),
        ("JWT table token, session_id a string", table(&|c| c["session_id"] = json!("77"))),
        ("legacy expired", legacy(t - 10)),
        ("legacy bad signature", flipped),
        ("legacy uppercase signature", upper),
        ("legacy with five fields", signed.to_string()),
    ];
    assert_eq!(outcome(&diner_url(&gw, &table(&|_| {}))).await, accepted(), "diner control: unmodified table claims");
    assert_eq!(outcome(&diner_url(&gw, &valid_legacy)).await, accepted(), "diner control: valid legacy token");
    for (row, token) in &diner_failures {
        assert_eq!(outcome(&diner_url(&gw, token)).await, auth_failed(), "diner: {row}");
        refused_count += 1.0;
    }
    assert_eq!(outcome(&gw.ws("/ws/diner")).await, auth_failed(), "diner: no table_token parameter");
    let seen = outcome(&gw.ws(&format!("/ws/diner?token={}", table_token(1, 10, 3, 77)))).await;
    assert_eq!(seen, auth_failed(), "diner: table token in the `token` parameter");
    refused_count += 2.0;

    let counted = gw.metric(r#"wsgateway_connections_rejected_total{reason="auth_failed"}"#).await;
    assert_eq!(counted, refused_count, "every refusal counted as auth_failed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_is_checked_on_every_endpoint_before_the_token() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let not_allowed = Seen::Close(4003, "Origin not allowed".into());
    let valid = [
        ("waiter", staff_url(&gw, "waiter", &staff_token(2, 1, &[10], &["WAITER"]))),
        ("kitchen", staff_url(&gw, "kitchen", &staff_token(3, 1, &[10], &["KITCHEN"]))),
        ("admin", staff_url(&gw, "admin", &staff_token(4, 1, &[10], &["ADMIN"]))),
        ("diner", diner_url(&gw, &table_token(1, 10, 3, 77))),
    ];
    let mut refusals = 0.0;
    for (endpoint, url) in &valid {
        for origin in [EVIL, "http://localhost:5174", "https://localhost:5173", "http://localhost:5173.evil.example"] {
            assert_eq!(
                outcome_from(url, Some(origin)).await,
                not_allowed,
                "valid token, origin {origin} on /ws/{endpoint}"
            );
            refusals += 1.0;
        }
        let bad_token = gw.ws(&format!("/ws/{endpoint}?token=garbage&table_token=garbage"));
        assert_eq!(
            outcome_from(&bad_token, Some(EVIL)).await,
            not_allowed,
            "bad origin and bad token on /ws/{endpoint}"
        );
        assert_eq!(
            outcome_from(&gw.ws(&format!("/ws/{endpoint}")), Some(EVIL)).await,
            not_allowed,
            "bad origin, no token on /ws/{endpoint}"
        );
        refusals += 2.0;
        assert_eq!(outcome(url).await, accepted(), "allowed origin on /ws/{endpoint}");
        assert_eq!(
            outcome_from(url, Some("http://127.0.0.1:5173")).await,
            accepted(),
            "second allowed origin on /ws/{endpoint}"
        );
    }
    let counted = gw.metric(r#"wsgateway_connections_rejected_total{reason="origin_not_allowed"}"#).await;
    assert_eq!(counted, refusals, "origin refusals counted");
    assert_eq!(
        gw.metric(r#"wsgateway_connections_rejected_total{reason="auth_failed"}"#).await,
        0.0,
        "no token was looked at"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_origin_is_accepted_only_in_development() {
    let stack = Stack::start().await;
    let cases = [
        ("production (default)", vec![], false),
        ("ENVIRONMENT=development", vec![("ENVIRONMENT", "development")], true),
        (
            "ENVIRONMENT=development and PRODUCTION_CHECK=1",
            vec![("ENVIRONMENT", "development"), ("PRODUCTION_CHECK", "1")],
            false,
        ),
    ];
    for (row, env, allowed) in cases {
        let gw = stack.gateway_with(&env).await;
        for url in [
            staff_url(&gw, "waiter", &staff_token(2, 1, &[10], &["WAITER"])),
            diner_url(&gw, &table_token(1, 10, 3, 77)),
        ] {
            let expected = if allowed { accepted() } else { Seen::Close(4003, "Origin not allowed".into()) };
            assert_eq!(outcome_from(&url, None).await, expected, "no Origin header, {row}: {url}");
            assert_eq!(
                outcome_from(&url, Some(EVIL)).await,
                Seen::Close(4003, "Origin not allowed".into()),
                "bad Origin, {row}"
            );
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_refused_at_connect() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let t = now();
    let token = |user: u64, jti: &str| {
        let jti = jti.to_string();
        staff_token_with(user, 1, &[10], &["WAITER"], move |c| {
            c["jti"] = json!(jti);
            c["iat"] = json!(t - 100);
        })
    };
    stack.redis_set("auth:token:blacklist:jti-black", "1").await;
    stack.redis_set("auth:user:revoked:21", &iso(t - 50)).await;
    stack.redis_set("auth:user:revoked:22", &iso(t - 200)).await;

    let cases = [
        ("blacklisted jti", token(20, "jti-black"), auth_failed()),
        ("same user, another jti", token(20, "jti-white"), accepted()),
        ("user revoked after iat", token(21, "jti-21"), auth_failed()),
        ("user revoked before iat", token(22, "jti-22"), accepted()),
    ];
    for (row, token, expected) in cases {
        assert_eq!(outcome(&staff_url(&gw, "waiter", &token)).await, expected, "{row}");
    }
    assert_eq!(gw.metric(r#"wsgateway_connections_rejected_total{reason="auth_failed"}"#).await, 2.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_staff_unless_fail_open_and_still_admits_diners() {
    let mut stack = Stack::start().await;
    let strict = stack.gateway().await;
    let open = stack.gateway_with(&[("REVOCATION_FAIL_OPEN", "true")]).await;
    let staff = staff_token(2, 1, &[10], &["WAITER"]);
    assert_eq!(outcome(&staff_url(&strict, "waiter", &staff)).await, accepted(), "baseline with Redis up");
    stack.redis.kill();
    assert_eq!(
        outcome(&staff_url(&strict, "waiter", &staff)).await,
        auth_failed(),
        "Redis down: staff refused (fail closed)"
    );
    let seen = outcome(&staff_url(&strict, "admin", &staff_token(3, 1, &[10], &["ADMIN"]))).await;
    assert_eq!(seen, auth_failed(), "Redis down: admin refused (fail closed)");
    let diner = table_token(1, 10, 3, 77);
    assert_eq!(outcome(&diner_url(&strict, &diner)).await, accepted(), "Redis down: diners need no Redis");
    assert_eq!(
        outcome(&diner_url(&strict, &legacy_table_token(1, 10, 3, 77))).await,
        accepted(),
        "Redis down: legacy diner"
    );
    assert_eq!(outcome(&staff_url(&open, "waiter", &staff)).await, accepted(), "Redis down, REVOCATION_FAIL_OPEN=true");
    strict.stop().await;
    open.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_total_connection_limits() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut held = Vec::new();
    for (i, endpoint) in ["waiter", "kitchen", "admin"].iter().enumerate() {
        let (seen, client) =
            attempt(&staff_url(&gw, endpoint, &staff_token(2, 1, &[10], &["WAITER", "KITCHEN", "MANAGER"]))).await;
        assert_eq!(seen, accepted(), "connection {} of user 2", i + 1);
        held.push(client);
    }
    let fourth = staff_url(&gw, "waiter", &staff_token(2, 1, &[10], &["WAITER"]));
    assert_eq!(outcome(&fourth).await, Seen::Close(1013, "Too many connections for user".into()), "4th of user 2");
    let other = staff_url(&gw, "waiter", &staff_token(3, 1, &[10], &["WAITER"]));
    assert_eq!(outcome(&other).await, accepted(), "another user still admitted");
    let same_id_other_tenant = staff_url(&gw, "waiter", &staff_token(2, 2, &[10], &["WAITER"]));
    assert_eq!(outcome(&same_id_other_tenant).await, accepted(), "user 2 of another tenant is another user");
    assert_eq!(gw.metric(r#"wsgateway_connections_rejected_total{reason="too_many_for_user"}"#).await, 1.0);

    held.pop().unwrap().close().await;
    gw.wait_connections(2).await;
    assert_eq!(outcome(&fourth).await, accepted(), "a closed connection frees the user's slot");
    drop(held);
    gw.stop().await;

    let small = stack.gateway_with(&[("WS_MAX_TOTAL_CONNECTIONS", "2")]).await;
    let (seen, first) = attempt(&staff_url(&small, "waiter", &staff_token(2, 1, &[10], &["WAITER"]))).await;
    assert_eq!(seen, accepted(), "1st of 2");
    let (seen, _second) = attempt(&diner_url(&small, &table_token(1, 10, 3, 77))).await;
    assert_eq!(seen, accepted(), "2nd of 2");
    let at_capacity = Seen::Close(1013, "Server at capacity".into());
    assert_eq!(
        outcome(&staff_url(&small, "kitchen", &staff_token(3, 1, &[10], &["KITCHEN"]))).await,
        at_capacity,
        "3rd staff"
    );
    assert_eq!(outcome(&diner_url(&small, &table_token(1, 10, 4, 78))).await, at_capacity, "3rd diner");
    assert_eq!(small.metric(r#"wsgateway_connections_rejected_total{reason="server_at_capacity"}"#).await, 2.0);
    first.close().await;
    small.wait_connections(1).await;
    assert_eq!(
        outcome(&diner_url(&small, &table_token(1, 10, 4, 78))).await,
        accepted(),
        "a closed connection frees capacity"
    );
    small.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_limit_fits_a_full_table_and_is_configurable() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut table = Vec::new();
    for phone in 1..=12 {
        let (seen, client) = attempt(&diner_url(&gw, &table_token(1, 10, 3, 77))).await;
        assert_eq!(seen, accepted(), "diner {phone} of a full table");
        table.push(client);
    }
    gw.stop().await;

    let gw = stack.gateway_with(&[("WS_MAX_CONNECTIONS_PER_SESSION", "2")]).await;
    let session_url = |gw: &Gateway, table: u64| diner_url(gw, &table_token(1, 10, table, 77));
    let (seen, first) = attempt(&session_url(&gw, 3)).await;
    assert_eq!(seen, accepted(), "1st diner");
    let (seen, _second) = attempt(&diner_url(&gw, &legacy_table_token(1, 10, 3, 77))).await;
    assert_eq!(seen, accepted(), "2nd diner (legacy form, same session)");
    let too_many = Seen::Close(1013, "Too many connections for session".into());
    assert_eq!(outcome(&session_url(&gw, 3)).await, too_many, "3rd diner of session 77");
    assert_eq!(outcome(&diner_url(&gw, &table_token(1, 10, 4, 78))).await, accepted(), "another session");
    assert_eq!(outcome(&diner_url(&gw, &table_token(2, 10, 3, 77))).await, accepted(), "session 77 of another tenant");
    assert_eq!(gw.metric(r#"wsgateway_connections_rejected_total{reason="too_many_for_session"}"#).await, 1.0);
    first.close().await;
    gw.wait_connections(1).await;
    assert_eq!(outcome(&session_url(&gw, 3)).await, accepted(), "a closed connection frees the session's slot");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_refuses_new_connections_with_1012() {
    let stack = Stack::start().await;
    let gw = stack.gateway_with(&[("GATEWAY_DRAIN_WINDOW", "3s"), ("GATEWAY_SHUTDOWN_TIMEOUT", "8s")]).await;
    let mut connected = Vec::new();
    for user in 2..=4 {
        connected.push(gw.staff("waiter", &staff_token(user, 1, &[10], &["WAITER"])).await);
    }
    assert_eq!(gw.get("/readyz").await.0, 200);
    gw.shutdown.cancel();
    wait_until("/readyz answers 503 while draining", || async { gw.get("/readyz").await.0 == 503 }).await;
    let restart = Seen::Close(1012, "Service restart".into());
    assert_eq!(outcome(&staff_url(&gw, "waiter", &staff_token(9, 1, &[10], &["WAITER"]))).await, restart, "new staff");
    assert_eq!(outcome(&diner_url(&gw, &table_token(1, 10, 3, 77))).await, restart, "new diner");
    assert_eq!(gw.metric(r#"wsgateway_connections_rejected_total{reason="service_restart"}"#).await, 2.0);
    for client in &mut connected {
        client.expect_close(1012, "Service restart").await;
    }
    tokio::time::timeout(Duration::from_secs(20), gw.task).await.expect("drain ends in time").unwrap().unwrap();
}
