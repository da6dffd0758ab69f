//! The catch-up endpoints (contract section 7) against real JetStream history: exactly the
//! events the caller would have received live, oldest first — never another tenant's events
//! sharing the branch id, no admin-only events for waiters, never another table session's —
//! and every documented error.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use serde_json::Value;

fn events_of(body: &Value) -> Vec<String> {
    body["events"].as_array().unwrap().iter().map(|e| e.to_string()).collect()
}

/// `serde_json::Value` re-serialised, to compare with what `event` produced.
fn canonical(text: &str) -> String {
    serde_json::from_str::<Value>(text).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_and_diners_get_exactly_what_they_would_have_received() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway().await;
    let since = wire::clock::now_unix() as f64 - 1.0;

    let kitchen_event = event("ROUND_SUBMITTED", 1, 10, None, None, 1);
    let admin_only = event("ENTITY_UPDATED", 1, 10, None, None, 2);
    let other_tenant_same_branch = event("ROUND_PENDING", 2, 10, None, None, 3);
    let session_77 = event("CART_SYNC", 1, 10, None, Some(77), 4);
    let session_78 = event("CART_SYNC", 1, 10, None, Some(78), 5);
    let other_branch = event("ROUND_PENDING", 1, 11, None, None, 6);
    let tenant_wide = event("ENTITY_CREATED", 1, 0, None, None, 7);
    let ready_77 = event("ROUND_READY", 1, 10, None, Some(77), 8);
    store(&js, 1, 10, "kitchen", &kitchen_event).await;
    store(&js, 1, 10, "admin", &admin_only).await;
    store(&js, 2, 10, "waiters", &other_tenant_same_branch).await;
    store(&js, 1, 10, "session", &session_77).await;
    store(&js, 1, 10, "session", &session_78).await;
    store(&js, 1, 11, "waiters", &other_branch).await;
    store(&js, 1, 0, "admin", &tenant_wide).await;
    store(&js, 1, 10, "kitchen", &ready_77).await;

    let ask = |token: String| format!("/ws/catchup?branch_id=10&since={since}&token={token}");
    let cases: [(&str, String, Vec<&String>); 4] = [
        (
            "waiter",
            staff_token(2, 1, &[10, 11], &["WAITER"]),
            vec![&kitchen_event, &session_77, &session_78, &ready_77],
        ),
        ("kitchen", staff_token(3, 1, &[10], &["KITCHEN"]), vec![&kitchen_event, &ready_77]),
        (
            "manager",
            staff_token(4, 1, &[10], &["MANAGER"]),
            vec![&kitchen_event, &admin_only, &session_77, &session_78, &tenant_wide, &ready_77],
        ),
        ("admin of tenant 2", staff_token(5, 2, &[10], &["ADMIN"]), vec![&other_tenant_same_branch]),
    ];
    for (who, token, expected) in cases {
        let (status, body) = gw.get_json(&ask(token)).await;
        assert_eq!(status, 200, "{who}: {body}");
        let expected: Vec<String> = expected.iter().map(|e| canonical(e)).collect();
        assert_eq!(events_of(&body), expected, "{who}");
        assert_eq!(body["count"], expected.len(), "{who}");
    }

    let (status, body) = gw
        .get_json(&format!(
            "/ws/catchup/session?session_id=77&since={since}&table_token={}",
            urlencode(&table_token(1, 10, 3, 77))
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        events_of(&body),
        vec![canonical(&session_77), canonical(&ready_77)],
        "only this session's SESSION events"
    );
    let legacy = urlencode(&legacy_table_token(1, 10, 4, 78));
    let (_, body) = gw.get_json(&format!("/ws/catchup/session?session_id=78&since={since}&table_token={legacy}")).await;
    assert_eq!(events_of(&body), vec![canonical(&session_78)]);

    // `since` after everything: nothing.
    let later = wire::clock::now_unix() as f64 + 5.0;
    let (_, body) = gw
        .get_json(&format!("/ws/catchup?branch_id=10&since={later}&token={}", staff_token(4, 1, &[10], &["MANAGER"])))
        .await;
    assert_eq!(body["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_error() {
    let stack = Stack::start().await;
    let _js = events_stream(&stack).await;
    let gw = stack.gateway().await;
    let staff = staff_token(2, 1, &[10], &["WAITER"]);
    let diner = urlencode(&table_token(1, 10, 3, 77));
    let cases = [
        (format!("/ws/catchup?since=1&token={staff}"), 422, None),
        (format!("/ws/catchup?branch_id=x&since=1&token={staff}"), 422, None),
        (format!("/ws/catchup?branch_id=10&token={staff}"), 422, None),
        (format!("/ws/catchup?branch_id=10&since=soon&token={staff}"), 422, None),
        ("/ws/catchup?branch_id=10&since=1".to_string(), 422, None),
        ("/ws/catchup?branch_id=10&since=1&token=garbage".to_string(), 401, Some("Invalid token")),
        (format!("/ws/catchup?branch_id=10&since=1&token={diner}"), 401, Some("Invalid token")),
        (format!("/ws/catchup?branch_id=11&since=1&token={staff}"), 403, Some("No access to this branch")),
        (format!("/ws/catchup/session?since=1&table_token={diner}"), 422, None),
        (format!("/ws/catchup/session?session_id=77&since=-1&table_token={diner}"), 422, None),
        (format!("/ws/catchup/session?session_id=77&since=1&table_token={staff}"), 401, Some("Invalid token")),
        (
            format!("/ws/catchup/session?session_id=78&since=1&table_token={diner}"),
            403,
            Some("No access to this session"),
        ),
    ];
    for (path, status, detail) in cases {
        let (got, body) = gw.get_json(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        if let Some(detail) = detail {
            assert_eq!(body, serde_json::json!({ "detail": detail }), "{path}");
        }
    }
    // A revoked staff token is an invalid token here too.
    let claims = wire::tokens::staff_claims(9, 1, &[10], &["WAITER"], 3600);
    stack.redis_set(&format!("auth:token:blacklist:{}", claims["jti"].as_str().unwrap()), "1").await;
    let revoked = wire::tokens::sign_jwt(JWT_SECRET.as_bytes(), &claims);
    let (got, _) = gw.get_json(&format!("/ws/catchup?branch_id=10&since=1&token={revoked}")).await;
    assert_eq!(got, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_by_the_configured_count() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway_with(&[("GATEWAY_CATCHUP_MAX_EVENTS", "3")]).await;
    let since = wire::clock::now_unix() as f64 - 1.0;
    for seq in 0..6 {
        store(&js, 1, 10, "waiters", &event("ROUND_PENDING", 1, 10, None, None, seq)).await;
    }
    let (status, body) = gw
        .get_json(&format!("/ws/catchup?branch_id=10&since={since}&token={}", staff_token(2, 1, &[10], &["WAITER"])))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 3, "oldest first, at most the limit");
    assert_eq!(body["truncated"], true);
    assert_eq!(events_of(&body)[0], canonical(&event("ROUND_PENDING", 1, 10, None, None, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_in_bytes_and_in_requests_per_caller() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway_with(&[("GATEWAY_CATCHUP_MAX_BYTES", "65536"), ("GATEWAY_CATCHUP_PER_CALLER", "1")]).await;
    let since = wire::clock::now_unix() as f64 - 1.0;
    let padding = "x".repeat(1000);
    for seq in 0..300 {
        let mut event: Value = serde_json::from_str(&event("ROUND_PENDING", 1, 10, None, None, seq)).unwrap();
        event["entity"]["note"] = padding.clone().into();
        store(&js, 1, 10, "waiters", &event.to_string()).await;
    }
    let ask = format!("/ws/catchup?branch_id=10&since={since}&token={}", staff_token(2, 1, &[10], &["WAITER"]));
    let (status, text) = gw.get(&ask).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&text).unwrap();
    let count = body["count"].as_u64().unwrap();
    assert!((50..300).contains(&count), "about 64 of the 300 ~1 KiB events fit 64 KiB: {count}");
    assert_eq!(body["truncated"], true, "the cut is said");
    assert!(text.len() < 65536 + 1024, "the answer stays within the byte bound: {} bytes", text.len());

    // One request at a time for this caller: a burst of 30 at once gets some 429s, each with
    // Retry-After, and every other answer is complete.
    let url = gw.http(&ask);
    let answers = futures_util::future::join_all((0..30).map(|_| {
        let url = url.clone();
        async move { testkit::http_exchange("GET", &url, &[], None).await.expect("an answer") }
    }))
    .await;
    let refused: Vec<_> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        !refused.is_empty(),
        "30 concurrent requests of one caller overlap: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 429));
    for answer in &refused {
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert!(answer.body.contains("Too many catch-up requests in progress"), "{}", answer.body);
    }
    let counted = gw.metric(r#"gateway_catchup_refused_total{reason="caller_busy"}"#).await;
    assert_eq!(counted, refused.len() as f64, "each refusal is counted");
    let other_user = format!("/ws/catchup?branch_id=10&since={since}&token={}", staff_token(3, 1, &[10], &["WAITER"]));
    assert_eq!(gw.get(&other_user).await.0, 200, "another caller is not affected");
    gw.stop().await;
}

/// Stores `payload` under the subject the bridge would choose for it (its role from the body).
async fn store_as_bridge(js: &async_nats::jetstream::Context, payload: &str) -> u64 {
    let v: Value = serde_json::from_str(payload).unwrap();
    let (tenant, branch) = (v["tenant_id"].as_u64().unwrap(), v["branch_id"].as_u64().unwrap());
    let class = wire::event_types::TypeClass::of(v["type"].as_str().unwrap());
    store(js, tenant, branch, wire::subject::Role::of(class, branch).as_str(), payload).await
}

/// Reads `client` until `fence` arrives; everything it received live, fence included.
async fn live_until(who: &str, client: &mut Client, fence: &str) -> Vec<String> {
    let mut received = Vec::new();
    loop {
        match client.next().await {
            Seen::Text(text) => {
                let done = text == fence;
                received.push(canonical(&text));
                if done {
                    return received;
                }
            }
            other => panic!("{who}: expected events up to the fence, saw {other:?} after {received:?}"),
        }
    }
}

/// nats-server 2.15.1 skips history when a consumer has several filter subjects and a start
/// time and one filter's first message comes after that time (the old catch-up used two
/// filters for admins and three for diners). Two histories of that shape, one per tenant:
/// in tenant 1, events of the branch came before `since` and the tenant's first tenant-wide
/// event, the branch's first admin-only event and session 77's first kitchen-subject event
/// come after it; in tenant 3, only tenant-wide events came before `since` and the branch's
/// first events come after a tenant-wide one. Admin, manager, waiter, kitchen and diner get
/// from catch-up exactly what they received live, and so does a resume from the last event
/// before `since`: live dispatch, resume replays and catch-up route through one `EventScope`,
/// and this is where the three are seen to agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_and_resume_equal_live_whatever_filter_gets_its_first_message_after_since() {
    let stack = Stack::start().await;
    let js = events_stream(&stack).await;
    let gw = stack.gateway().await;
    let e = |ty: &str, tenant: u64, branch: u64, sector: Option<u64>, session: Option<u64>, seq: u64| {
        event(ty, tenant, branch, sector, session, seq)
    };
    let before = [
        e("ROUND_PENDING", 1, 10, None, None, 1),
        e("CART_SYNC", 1, 10, None, Some(77), 2),
        e("ROUND_SUBMITTED", 1, 10, None, None, 3),
        e("ENTITY_CREATED", 3, 0, None, None, 4),
        e("CHECK_REQUESTED", 3, 0, None, Some(77), 5),
    ];
    let mut last = 0;
    // Per tenant, the sequence of its last event before `since`: a resume cursor of its own.
    let mut cursor_of_tenant = std::collections::HashMap::new();
    for payload in &before {
        last = store_as_bridge(&js, payload).await;
        let tenant = serde_json::from_str::<Value>(payload).unwrap()["tenant_id"].as_u64().unwrap();
        cursor_of_tenant.insert(tenant, last);
    }
    let stored_at = js.get_stream("EVENTS").await.unwrap().get_raw_message(last).await.unwrap().time;
    let since = (stored_at.unix_timestamp_nanos() as f64 + 1e6) / 1e9;
    wait_until("the clock passed since", || async move {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() > since + 0.002
    })
    .await;

    struct Who {
        name: &'static str,
        tenant: u64,
        client: Client,
        catchup: String,
        /// The connection's path and query, to come back with `&resume=`.
        connect: String,
    }
    let mut clients = Vec::new();
    for tenant in [1, 3] {
        let staff = [
            ("admin", "admin", staff_token(10, tenant, &[10], &["ADMIN"])),
            ("manager", "kitchen", staff_token(11, tenant, &[10], &["MANAGER"])),
            ("waiter", "waiter", staff_token(12, tenant, &[10], &["WAITER"])),
            ("kitchen", "kitchen", staff_token(13, tenant, &[10], &["KITCHEN"])),
        ];
        for (name, endpoint, token) in staff {
            let connect = format!("/ws/{endpoint}?token={token}");
            clients.push(Who {
                name,
                tenant,
                client: gw.connect(&connect).await,
                catchup: format!("/ws/catchup?branch_id=10&since={since}&token={token}"),
                connect,
            });
        }
        let diner = table_token(tenant, 10, 3, 77);
        let connect = format!("/ws/diner?table_token={}", urlencode(&diner));
        clients.push(Who {
            name: "diner",
            tenant,
            client: gw.connect(&connect).await,
            catchup: format!("/ws/catchup/session?session_id=77&since={since}&table_token={}", urlencode(&diner)),
            connect,
        });
    }

    let after = [
        e("SERVICE_CALL_CREATED", 1, 10, None, None, 11),
        e("CART_ITEM_ADDED", 1, 10, None, Some(77), 12),
        e("ROUND_SUBMITTED", 1, 10, None, Some(77), 13),
        e("ENTITY_UPDATED", 3, 0, None, None, 14),
        e("ENTITY_CREATED", 1, 0, None, None, 15),
        e("CART_SYNC", 3, 10, None, Some(77), 16),
        e("ROUND_READY", 1, 10, None, Some(77), 17),
        e("ENTITY_UPDATED", 1, 10, None, None, 18),
        e("ROUND_SUBMITTED", 3, 10, None, None, 19),
        e("CHECK_REQUESTED", 1, 0, None, Some(77), 20),
        e("ROUND_PENDING", 1, 10, Some(5), None, 21),
        e("SERVICE_CALL_CREATED", 1, 10, Some(5), None, 22),
        e("ROUND_PENDING", 2, 10, None, None, 23),
        e("PAYMENT_APPROVED", 3, 10, None, Some(77), 24),
        e("ROUND_PENDING", 3, 12, None, None, 25),
        e("CART_SYNC", 1, 11, None, Some(78), 26),
        e("ROUND_IN_KITCHEN", 3, 10, None, Some(77), 27),
    ];
    for payload in &after {
        store_as_bridge(&js, payload).await;
    }
    // Every audience above receives this one: its arrival ends each live list.
    let fences: Vec<String> = [1, 3].iter().map(|t| e("ROUND_READY", *t, 10, None, Some(77), 99)).collect();
    for fence in &fences {
        store_as_bridge(&js, fence).await;
    }
    for who in &mut clients {
        let fence = &fences[usize::from(who.tenant == 3)];
        let live = live_until(who.name, &mut who.client, fence).await;
        let (status, body) = gw.get_json(&who.catchup).await;
        assert_eq!(status, 200, "{} of tenant {}: {body}", who.name, who.tenant);
        assert_eq!(events_of(&body), live, "{} of tenant {}: catch-up differs from live", who.name, who.tenant);
        assert!(live.len() >= 3, "{} of tenant {} received {live:?}", who.name, who.tenant);
        // The same audience resuming from its tenant's last event stored before `since`.
        let cursor = cursor_of_tenant[&who.tenant];
        let mut resumed = gw.connect(&format!("{}&resume={cursor}", who.connect)).await;
        let mut replayed = Vec::new();
        loop {
            let text = match resumed.next().await {
                Seen::Text(text) => text,
                other => panic!("{} of tenant {}: resume saw {other:?} after {replayed:?}", who.name, who.tenant),
            };
            let done = without_cursor(&text) == *fence;
            replayed.push(canonical(&without_cursor(&text)));
            if done {
                break;
            }
        }
        assert_eq!(replayed, live, "{} of tenant {}: the resume replay differs from live", who.name, who.tenant);
        resumed.close().await;
    }
}
