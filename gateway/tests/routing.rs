//! Protocol section 6 over real sockets: the routing matrix for every type set, endpoint,
//! sector, branch, session and tenant combination, with sector assignments read from real
//! PostgreSQL rows. Negative cases are proven by a fence event each connection receives right
//! after: if the row's event was wrongly delivered, the fence is not the next message.

#[path = "support/harness.rs"]
mod harness;
use harness::*;
use wire::event_types::TypeClass;

// Section 6's type sets as the contract writes them (../shared/spec/protocol.md), not the
// code's constants: the oracle below must not read what it checks.
const KITCHEN: &[&str] = &[
    "ROUND_SUBMITTED",
    "ROUND_IN_KITCHEN",
    "ROUND_READY",
    "ROUND_SERVED",
    "TICKET_IN_PROGRESS",
    "TICKET_READY",
    "TICKET_DELIVERED",
];
const SESSION: &[&str] = &[
    "ROUND_IN_KITCHEN",
    "ROUND_READY",
    "ROUND_SERVED",
    "ROUND_CANCELED",
    "CHECK_REQUESTED",
    "CHECK_PAID",
    "PAYMENT_APPROVED",
    "PAYMENT_REJECTED",
    "PAYMENT_FAILED",
    "TABLE_SESSION_STARTED",
    "TABLE_CLEARED",
    "TABLE_STATUS_CHANGED",
    "CART_ITEM_ADDED",
    "CART_ITEM_UPDATED",
    "CART_ITEM_REMOVED",
    "CART_CLEARED",
    "CART_SYNC",
];
const ADMIN_ONLY: &[&str] = &["ENTITY_CREATED", "ENTITY_UPDATED", "ENTITY_DELETED", "CASCADE_DELETE"];
const BRANCH_WIDE_WAITER: &[&str] = &["ROUND_PENDING", "TABLE_SESSION_STARTED"];

#[test]
fn the_codes_type_sets_are_the_contracts() {
    let sorted = |set: &[&'static str]| {
        let mut v = set.to_vec();
        v.sort_unstable();
        v
    };
    use wire::event_types as code;
    assert_eq!(sorted(code::KITCHEN), sorted(KITCHEN), "KITCHEN");
    assert_eq!(sorted(code::SESSION), sorted(SESSION), "SESSION");
    assert_eq!(sorted(code::ADMIN_ONLY), sorted(ADMIN_ONLY), "ADMIN_ONLY");
    assert_eq!(sorted(code::BRANCH_WIDE_WAITER), sorted(BRANCH_WIDE_WAITER), "BRANCH_WIDE_WAITER");
}
use wire::subject::Role;

const SCHEMA: &str = "CREATE TABLE waiter_sector_assignment (
    id serial PRIMARY KEY, tenant_id integer NOT NULL, branch_id integer, sector_id integer NOT NULL,
    waiter_id integer NOT NULL, assignment_date date NOT NULL DEFAULT current_date,
    is_active boolean NOT NULL DEFAULT true)";

/// Who a test connection is, in the words of the contract.
#[derive(Clone, Debug)]
enum Kind {
    /// Admin endpoint, or MANAGER/ADMIN on waiter or kitchen.
    AdminView,
    PureWaiter {
        sectors: Vec<u64>,
    },
    Kitchen,
    Diner {
        session: u64,
    },
}

struct Member {
    name: &'static str,
    tenant: u64,
    branches: Vec<u64>,
    kind: Kind,
    client: Client,
}

#[derive(Clone, Copy, Debug)]
struct Ev {
    ty: &'static str,
    tenant: u64,
    branch: u64,
    sector: Option<u64>,
    session: Option<u64>,
}

/// Section 6, transcribed: the oracle the gateway is checked against.
fn should_receive(m: &Member, e: &Ev) -> bool {
    if m.tenant != e.tenant {
        return false;
    }
    if let Kind::Diner { session } = m.kind {
        return SESSION.contains(&e.ty) && e.session == Some(session);
    }
    if e.branch == 0 {
        return matches!(m.kind, Kind::AdminView);
    }
    if !m.branches.contains(&e.branch) {
        return false;
    }
    match &m.kind {
        Kind::AdminView => true,
        Kind::PureWaiter { sectors } => {
            !ADMIN_ONLY.contains(&e.ty)
                && (BRANCH_WIDE_WAITER.contains(&e.ty) || e.sector.is_none_or(|s| sectors.contains(&s)))
        }
        Kind::Kitchen => KITCHEN.contains(&e.ty),
        Kind::Diner { .. } => unreachable!(),
    }
}

async fn send(nats: &async_nats::Client, e: &Ev, seq: u64) -> String {
    let text = event(e.ty, e.tenant, e.branch, e.sector, e.session, seq);
    let role = Role::of(TypeClass::of(e.ty), e.branch).as_str();
    publish(nats, e.tenant, e.branch, role, &text).await;
    text
}

/// Fences: every member receives exactly one of them (checked by `fence_of`).
fn fences() -> [Ev; 4] {
    [
        Ev { ty: "ROUND_IN_KITCHEN", tenant: 1, branch: 10, sector: None, session: Some(77) },
        Ev { ty: "CART_SYNC", tenant: 1, branch: 12, sector: None, session: Some(78) },
        Ev { ty: "ROUND_IN_KITCHEN", tenant: 1, branch: 11, sector: None, session: None },
        Ev { ty: "ROUND_IN_KITCHEN", tenant: 2, branch: 10, sector: None, session: Some(77) },
    ]
}

fn fence_of(m: &Member) -> usize {
    let hits: Vec<usize> = fences().iter().enumerate().filter(|(_, f)| should_receive(m, f)).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "{} must receive exactly one fence, gets {hits:?}", m.name);
    hits[0]
}

async fn members(gw: &Gateway) -> Vec<Member> {
    let staff = |name, tenant, user, branches: &[u64], roles: &[&str], endpoint, kind| {
        let token = staff_token(user, tenant, branches, roles);
        let branches = branches.to_vec();
        async move { Member { name, tenant, branches, kind, client: gw.staff(endpoint, &token).await } }
    };
    let diner = |name, tenant, session, token: String| async move {
        Member { name, tenant, branches: vec![10], kind: Kind::Diner { session }, client: gw.diner(&token).await }
    };
    vec![
        staff("admin", 1, 1, &[10], &["ADMIN"], "admin", Kind::AdminView).await,
        staff("manager on waiter", 1, 2, &[10], &["MANAGER"], "waiter", Kind::AdminView).await,
        staff("manager on kitchen", 1, 3, &[10], &["MANAGER"], "kitchen", Kind::AdminView).await,
        staff("admin+waiter roles on waiter", 1, 4, &[10], &["WAITER", "ADMIN"], "waiter", Kind::AdminView).await,
        staff("waiter in sector 5", 1, 21, &[10], &["WAITER"], "waiter", Kind::PureWaiter { sectors: vec![5] }).await,
        staff("waiter in sector 6", 1, 22, &[10], &["WAITER"], "waiter", Kind::PureWaiter { sectors: vec![6] }).await,
        staff("waiter without sector", 1, 23, &[10], &["WAITER"], "waiter", Kind::PureWaiter { sectors: vec![] }).await,
        staff("kitchen", 1, 31, &[10], &["KITCHEN"], "kitchen", Kind::Kitchen).await,
        staff("waiter+kitchen roles on kitchen", 1, 32, &[10], &["WAITER", "KITCHEN"], "kitchen", Kind::Kitchen).await,
        diner("diner of session 77 (JWT)", 1, 77, table_token(1, 10, 3, 77)).await,
        diner("diner of session 78 (legacy)", 1, 78, legacy_table_token(1, 10, 4, 78)).await,
        staff("admin of branch 11", 1, 41, &[11], &["ADMIN"], "admin", Kind::AdminView).await,
        staff("waiter of branch 11", 1, 42, &[11], &["WAITER"], "waiter", Kind::PureWaiter { sectors: vec![] }).await,
        staff("admin of tenant 2, branch 10", 2, 1, &[10], &["ADMIN"], "admin", Kind::AdminView).await,
        diner("diner of tenant 2, session 77", 2, 77, table_token(2, 10, 3, 77)).await,
    ]
    .into_iter()
    .map(|mut m| {
        m.branches = if let Kind::Diner { .. } = m.kind { vec![] } else { m.branches };
        m
    })
    .collect()
}

async fn seeded_stack() -> Stack {
    let stack = Stack::with_postgres().await;
    stack
        .sql(&format!(
            "{SCHEMA};
             INSERT INTO waiter_sector_assignment (tenant_id, branch_id, sector_id, waiter_id, assignment_date, is_active) VALUES
               (1, 10, 5, 21, current_date, true),
               (1, 10, 6, 22, current_date, true),
               (1, 10, 9, 22, current_date, false),
               (1, 10, 9, 21, current_date - 1, true),
               (2, 10, 9, 23, current_date, true);"
        ))
        .await;
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_matrix() {
    let stack = seeded_stack().await;
    let gw = stack.gateway().await;
    let mut members = members(&gw).await;
    let fence_index: Vec<usize> = members.iter().map(fence_of).collect();
    let nats = stack.nats_client().await;

    let types = [
        "ROUND_SUBMITTED",       // KITCHEN
        "ROUND_READY",           // KITCHEN + SESSION
        "CHECK_REQUESTED",       // SESSION
        "ENTITY_UPDATED",        // ADMIN_ONLY
        "ROUND_PENDING",         // BRANCH_WIDE_WAITER
        "TABLE_SESSION_STARTED", // BRANCH_WIDE_WAITER + SESSION
        "SERVICE_CALL_CREATED",  // in no set
        "SOMETHING_NOBODY_KNOWS",
    ];
    let placements = [
        (1, 10, None, None),
        (1, 10, Some(5), Some(77)),
        (1, 10, Some(6), Some(78)),
        (1, 10, Some(9), None),
        (1, 0, None, Some(77)),
        (1, 11, Some(5), Some(77)),
        (2, 10, None, Some(77)),
    ];
    let mut rows = Vec::new();
    let mut seq = 0;
    for ty in types {
        for (tenant, branch, sector, session) in placements {
            let e = Ev { ty, tenant, branch, sector, session };
            seq += 1;
            let text = send(&nats, &e, seq).await;
            let mut fence_texts = Vec::new();
            for f in fences() {
                seq += 1;
                fence_texts.push(send(&nats, &f, seq).await);
            }
            rows.push((e, text, fence_texts));
        }
    }
    let mut deliveries = 0;
    for (e, text, fence_texts) in &rows {
        for (m, fence) in members.iter_mut().zip(&fence_index) {
            if should_receive(m, e) {
                deliveries += 1;
                assert_eq!(m.client.next().await, Seen::Text(text.clone()), "{} should receive {e:?}", m.name);
            }
            assert_eq!(
                m.client.next().await,
                Seen::Text(fence_texts[*fence].clone()),
                "{} must not receive {e:?}",
                m.name
            );
        }
    }
    assert!(deliveries > 150, "the matrix exercises deliveries ({deliveries})");
    for m in &mut members {
        assert_eq!(
            m.client.next_within(std::time::Duration::from_millis(200)).await,
            Seen::Nothing,
            "{} got extra messages",
            m.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_gets_an_event_once_however_many_subjects_carry_it() {
    let stack = Stack::start().await;
    let gw = stack.gateway().await;
    let mut manager = gw.staff("waiter", &staff_token(2, 1, &[10, 11], &["MANAGER", "WAITER"])).await;
    let mut admin = gw.staff("admin", &staff_token(1, 1, &[10], &["ADMIN"])).await;
    let mut diner = gw.diner(&table_token(1, 10, 3, 77)).await;
    let nats = stack.nats_client().await;
    let e = event("ROUND_READY", 1, 10, Some(5), Some(77), 1);
    for role in ["waiters", "kitchen", "admin", "session"] {
        publish(&nats, 1, 10, role, &e).await;
    }
    let fence = event("ROUND_READY", 1, 10, None, Some(77), 2);
    publish(&nats, 1, 10, "kitchen", &fence).await;
    for client in [&mut manager, &mut admin, &mut diner] {
        assert_eq!(client.text().await, e);
        assert_eq!(client.text().await, fence, "the copies on other subjects were not delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sectors_reads_the_table_bypassing_the_cache() {
    let stack = seeded_stack().await;
    let gw = stack.gateway().await;
    let mut waiter = gw.staff("waiter", &staff_token(24, 1, &[10], &["WAITER"])).await;
    let nats = stack.nats_client().await;
    let in_sector_7 = |seq| event("SERVICE_CALL_CREATED", 1, 10, Some(7), None, seq);
    let fence = |seq| event("ROUND_PENDING", 1, 10, Some(7), None, seq);

    publish(&nats, 1, 10, "waiters", &in_sector_7(1)).await;
    publish(&nats, 1, 10, "waiters", &fence(2)).await;
    assert_eq!(waiter.text().await, fence(2), "no sector yet");

    stack.sql("INSERT INTO waiter_sector_assignment (tenant_id, branch_id, sector_id, waiter_id) VALUES (1, 10, 7, 24), (1, 10, 8, 24)").await;
    // A second connection of the same waiter within the cache TTL still sees the cached (empty) set.
    let mut second = gw.staff("waiter", &staff_token(24, 1, &[10], &["WAITER"])).await;
    publish(&nats, 1, 10, "waiters", &in_sector_7(3)).await;
    publish(&nats, 1, 10, "waiters", &fence(4)).await;
    assert_eq!(second.text().await, fence(4), "served from the cache");
    assert_eq!(waiter.text().await, fence(4));

    waiter.send("refresh_sectors").await;
    assert_eq!(waiter.text().await, "sectors_updated:7,8");
    publish(&nats, 1, 10, "waiters", &in_sector_7(5)).await;
    assert_eq!(waiter.text().await, in_sector_7(5));
    publish(&nats, 1, 10, "waiters", &fence(6)).await;
    assert_eq!(waiter.text().await, fence(6));
    assert_eq!(second.text().await, fence(6), "the other connection did not refresh: still no sector");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reachable_database_waiters_get_branch_wide_events() {
    let stack = Stack::start().await;
    let dead = format!("postgresql+psycopg://nobody@127.0.0.1:{}/menu", testkit::free_port());
    let gw = stack.gateway_with(&[("DATABASE_URL", &dead)]).await;
    let mut waiter = gw.staff("waiter", &staff_token(2, 1, &[10], &["WAITER"])).await;
    waiter.send("refresh_sectors").await;
    assert_eq!(waiter.text().await, "sectors_updated:");
    let nats = stack.nats_client().await;
    let sectored = event("SERVICE_CALL_CREATED", 1, 10, Some(5), None, 1);
    let branch_wide = event("SERVICE_CALL_CREATED", 1, 10, None, None, 2);
    publish(&nats, 1, 10, "waiters", &sectored).await;
    publish(&nats, 1, 10, "waiters", &branch_wide).await;
    assert_eq!(waiter.text().await, branch_wide);
    assert!(gw.metric("gateway_sector_lookups_total{result=\"error\"}").await >= 2.0);
}
