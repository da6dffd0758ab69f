use super::*;
use wire::event_types::TypeClass;

fn registry(total: usize, per_user: usize, per_session: usize, queue: usize) -> Arc<Registry> {
    Arc::new(Registry::new(Capacity { total, per_user, per_session }, queue))
}

fn waiter(branches: &[u64]) -> Audience {
    Audience::Staff { tenant_id: 1, branch_ids: branches.into(), endpoint: Endpoint::Waiter, admin_view: false }
}

fn user(id: u64) -> ConnKey {
    ConnKey::User { tenant_id: 1, user_id: id }
}

fn scope(ty: &str, branch: u64, session: Option<u64>) -> EventScope {
    EventScope { tenant_id: 1, branch_id: branch, class: TypeClass::of(ty), sector_id: None, session_id: session }
}

#[test]
fn limits_are_enforced_and_released() {
    let r = registry(3, 2, 1, 8);
    let a = r.admit(Endpoint::Waiter, waiter(&[1]), user(7), Arc::from([])).unwrap();
    let _b = r.admit(Endpoint::Waiter, waiter(&[1]), user(7), Arc::from([])).unwrap();
    assert_eq!(
        r.admit(Endpoint::Waiter, waiter(&[1]), user(7), Arc::from([])).err(),
        Some(CloseReason::TOO_MANY_FOR_USER)
    );
    let diner = Audience::Diner { tenant_id: 1, session_id: 9 };
    let session = ConnKey::Session { tenant_id: 1, session_id: 9 };
    let _d = r.admit(Endpoint::Diner, diner.clone(), session, Arc::from([])).unwrap();
    assert_eq!(
        r.admit(Endpoint::Waiter, waiter(&[1]), user(8), Arc::from([])).err(),
        Some(CloseReason::SERVER_AT_CAPACITY)
    );
    drop(a);
    assert_eq!(r.admit(Endpoint::Diner, diner, session, Arc::from([])).err(), Some(CloseReason::TOO_MANY_FOR_SESSION));
    assert!(r.admit(Endpoint::Waiter, waiter(&[1]), user(7), Arc::from([])).is_ok(), "a freed slot is reusable");
}

#[test]
fn a_multi_branch_admin_gets_an_event_once() {
    let r = registry(10, 3, 3, 8);
    let admin =
        Audience::Staff { tenant_id: 1, branch_ids: vec![1, 2].into(), endpoint: Endpoint::Waiter, admin_view: true };
    let reg = r.admit(Endpoint::Waiter, admin, user(1), Arc::from([])).unwrap();
    let payload = Arc::new(QueuedEvent::new(Utf8Bytes::from("e"), None, None, None));
    let t = r.tenant(1).unwrap();
    assert_eq!(t.fan_out(&scope("ROUND_READY", 2, None), &payload).delivered, 1);
    assert_eq!(t.fan_out(&scope("ROUND_READY", 0, None), &payload).delivered, 1);
    assert_eq!(reg.conn.outlet.try_recv().unwrap().payload, "e");
    assert_eq!(reg.conn.outlet.try_recv().unwrap().payload, "e");
    assert!(reg.conn.outlet.try_recv().is_none());
}

#[test]
fn a_full_queue_closes_the_connection() {
    let r = registry(10, 3, 3, 1);
    let reg = r.admit(Endpoint::Waiter, waiter(&[1]), user(1), Arc::from([])).unwrap();
    let t = r.tenant(1).unwrap();
    let payload = Arc::new(QueuedEvent::new(Utf8Bytes::from("e"), None, None, None));
    assert_eq!(
        t.fan_out(&scope("ROUND_PENDING", 1, None), &payload),
        Fanout { delivered: 1, written: 0, queue_full: 0 }
    );
    assert_eq!(
        t.fan_out(&scope("ROUND_PENDING", 1, None), &payload),
        Fanout { delivered: 0, written: 0, queue_full: 1 }
    );
    assert!(reg.conn.control.is_closing());
    assert_eq!(reg.conn.control.reason.get(), Some(&CloseReason::SLOW_CONSUMER.into()));
}

#[test]
fn tenants_disappear_with_their_last_connection() {
    let r = registry(10, 3, 3, 8);
    let a = r.admit(Endpoint::Waiter, waiter(&[1, 2]), user(1), Arc::from([])).unwrap();
    let b = r
        .admit(
            Endpoint::Diner,
            Audience::Diner { tenant_id: 1, session_id: 4 },
            ConnKey::Session { tenant_id: 1, session_id: 4 },
            Arc::from([]),
        )
        .unwrap();
    let stats = r.stats();
    assert_eq!((stats.total, stats.users, stats.branches, stats.sessions), (2, 1, 2, 1));
    drop(a);
    assert!(r.tenant(1).is_some());
    drop(b);
    assert!(r.tenant(1).is_none());
    assert!(r.is_empty());
}

#[test]
fn diners_only_get_their_session() {
    let r = registry(10, 3, 3, 8);
    let mine = r
        .admit(
            Endpoint::Diner,
            Audience::Diner { tenant_id: 1, session_id: 4 },
            ConnKey::Session { tenant_id: 1, session_id: 4 },
            Arc::from([]),
        )
        .unwrap();
    let other = r
        .admit(
            Endpoint::Diner,
            Audience::Diner { tenant_id: 1, session_id: 5 },
            ConnKey::Session { tenant_id: 1, session_id: 5 },
            Arc::from([]),
        )
        .unwrap();
    let t = r.tenant(1).unwrap();
    t.fan_out(&scope("CART_SYNC", 3, Some(4)), &Arc::new(QueuedEvent::new(Utf8Bytes::from("x"), None, None, None)));
    assert_eq!(mine.conn.outlet.try_recv().unwrap().payload, "x");
    assert!(other.conn.outlet.try_recv().is_none());
}

#[test]
fn per_endpoint_counts_follow_admission_and_release() {
    let r = registry(10, 5, 5, 8);
    assert_eq!(r.per_endpoint(), [0; 4]);
    let w = r.admit(Endpoint::Waiter, waiter(&[1]), user(7), Arc::from([])).unwrap();
    let diner = Audience::Diner { tenant_id: 1, session_id: 9 };
    let d = r.admit(Endpoint::Diner, diner, ConnKey::Session { tenant_id: 1, session_id: 9 }, Arc::from([])).unwrap();
    assert_eq!(r.per_endpoint(), [1, 0, 0, 1], "counted at admission, before any session task runs");
    assert!(r.admit(Endpoint::Waiter, waiter(&[1]), user(7), Arc::from([])).is_ok());
    assert_eq!(r.per_endpoint(), [1, 0, 0, 1], "a registration dropped at once is no longer counted");
    drop(w);
    drop(d);
    assert_eq!(r.per_endpoint(), [0; 4]);
}

#[tokio::test]
async fn a_close_wakes_the_waiting_task_with_the_first_reason() {
    let control = Arc::new(Control::default());
    let waiting = tokio::spawn({
        let control = control.clone();
        async move { control.closed().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished() && !control.is_closing());
    assert!(control.close_with(CloseReason::TOKEN_REVOKED.into()));
    assert!(!control.close_with(CloseReason::SLOW_CONSUMER.into()), "the first reason wins");
    let reason = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("woken").unwrap();
    assert_eq!(reason, CloseReason::TOKEN_REVOKED.into());
    assert_eq!(control.closed().await, CloseReason::TOKEN_REVOKED.into(), "closed stays closed");
}

#[test]
fn fan_out_routes_waiters_by_their_current_sectors() {
    let r = registry(10, 3, 3, 8);
    let in_5 = r.admit(Endpoint::Waiter, waiter(&[1]), user(1), Arc::from([5])).unwrap();
    let in_6 = r.admit(Endpoint::Waiter, waiter(&[1]), user(2), Arc::from([6])).unwrap();
    let kitchen =
        Audience::Staff { tenant_id: 1, branch_ids: vec![1].into(), endpoint: Endpoint::Kitchen, admin_view: false };
    let cook = r.admit(Endpoint::Kitchen, kitchen, user(3), Arc::from([])).unwrap();
    let t = r.tenant(1).unwrap();
    let payload = Arc::new(QueuedEvent::new(Utf8Bytes::from("e"), None, None, None));
    let in_sector_5 = EventScope { sector_id: Some(5), ..scope("CHECK_REQUESTED", 1, None) };

    assert_eq!(t.fan_out(&in_sector_5, &payload).delivered, 1);
    assert!(in_5.conn.outlet.try_recv().is_some());
    assert!(in_6.conn.outlet.try_recv().is_none(), "another sector's waiter");
    assert!(cook.conn.outlet.try_recv().is_none(), "not a kitchen event");

    in_6.conn.set_sectors(Arc::from([6, 5]));
    assert_eq!(t.fan_out(&in_sector_5, &payload).delivered, 2, "a sector change routes the next event");
    assert!(in_6.conn.outlet.try_recv().is_some());

    let everyone = scope("ROUND_SUBMITTED", 1, None);
    assert_eq!(t.fan_out(&everyone, &payload).delivered, 3, "an event without a sector reaches every waiter");
}

#[test]
fn fan_out_never_crosses_into_another_tenant() {
    let r = registry(10, 3, 3, 8);
    let admin =
        Audience::Staff { tenant_id: 1, branch_ids: vec![1].into(), endpoint: Endpoint::Admin, admin_view: true };
    let reg = r.admit(Endpoint::Admin, admin, user(1), Arc::from([])).unwrap();
    let payload = Arc::new(QueuedEvent::new(Utf8Bytes::from("e"), None, None, None));
    let other_tenant = EventScope { tenant_id: 2, ..scope("ROUND_READY", 1, None) };
    assert_eq!(r.tenant(1).unwrap().fan_out(&other_tenant, &payload), Fanout::default());
    assert!(reg.conn.outlet.try_recv().is_none());
    assert_eq!(r.tenant(1).unwrap().fan_out(&scope("ROUND_READY", 1, None), &payload).delivered, 1);
}
