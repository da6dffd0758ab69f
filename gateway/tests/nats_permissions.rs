//! The NATS trust boundary with the users of `deploy/nats/auth.conf` (what the local stack, compose
//! and every other test run): an anonymous client is refused; the bridge user cannot publish on
//! `live.*`; the gateway user can publish neither events nor `live.*`, nor read another user's
//! replies; only the operator user may purge or delete `EVENTS`. Each refusal is shown by the
//! server's own permissions violation and by its effect (nothing forged arrives, the stream
//! keeps its messages), next to a positive control of what the same user may do.

use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use async_nats::{Client, Event, ServerError};
use futures_util::StreamExt;
use testkit::{NatsServer, NatsUser};
use tokio::sync::mpsc;

const SOON: Duration = Duration::from_secs(10);
/// How long a request the server silently dropped (a refused publish) is waited for.
const REFUSED_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const EVENT: &[u8] = br#"{"type":"ROUND_PENDING","tenant_id":1,"branch_id":1,"v":1}"#;

async fn within<T>(what: &str, fut: impl std::future::IntoFuture<Output = T>) -> T {
    tokio::time::timeout(SOON, fut).await.unwrap_or_else(|_| panic!("timed out after {SOON:?}: {what}"))
}

/// A client logged in as `user` and the server errors it receives (permissions violations).
struct Login {
    client: Client,
    errors: mpsc::UnboundedReceiver<String>,
    user: NatsUser,
}

impl Login {
    async fn new(nats: &NatsServer, user: NatsUser) -> Login {
        let (tx, errors) = mpsc::unbounded_channel();
        let options =
            nats.auth().options(user).request_timeout(Some(REFUSED_REQUEST_TIMEOUT)).event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(ServerError::Other(message)) = event {
                        let _ = tx.send(message);
                    }
                }
            });
        let client = within("connect", options.connect(nats.url())).await.expect("log in");
        Login { client, errors, user }
    }

    /// Waits for the server's `Permissions Violation for <what> to "<subject>"`.
    async fn violation(&mut self, what: &str, subject: &str) {
        let wanted = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
        let user = self.user;
        let mut seen = Vec::new();
        let found = tokio::time::timeout(SOON, async {
            while let Some(message) = self.errors.recv().await {
                if message.to_lowercase().contains(&wanted) {
                    return true;
                }
                seen.push(message);
            }
            false
        })
        .await;
        assert!(
            matches!(found, Ok(true)),
            "user {user:?}: no permissions violation for {what} to {subject}; errors seen: {seen:?}"
        );
    }
}

/// The streams as the bridge creates them, by the bridge user itself (which is allowed).
async fn bridge_creates_streams(nats: &NatsServer) {
    let bridge = nats.connect(NatsUser::Bridge).await;
    let settings = publisher_bridge::config::StreamSettings::default();
    within("create streams", publisher_bridge::sink::streams::ensure_streams(&jetstream::new(bridge), &settings))
        .await
        .expect("the bridge user creates and updates its streams");
}

async fn events_stream(client: &Client) -> Stream {
    within("stream info", jetstream::new(client.clone()).get_stream(wire::subject::EVENTS_STREAM))
        .await
        .expect("EVENTS exists")
}

async fn stored_messages(operator: &Client) -> u64 {
    within("stream info", events_stream(operator).await.info()).await.expect("stream info").state.messages
}

/// The next message of `sub`, or `None` within `wait`.
async fn next_within(sub: &mut async_nats::Subscriber, wait: Duration) -> Option<async_nats::Message> {
    tokio::time::timeout(wait, sub.next()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrong_password_clients_are_refused() {
    let nats = NatsServer::start().await;
    let anonymous = within("anonymous connect", async_nats::connect(nats.url())).await;
    assert!(anonymous.is_err(), "an anonymous client must not connect");
    let wrong = async_nats::ConnectOptions::new().user_and_password("gateway".into(), "not-the-password".into());
    assert!(within("wrong password", wrong.connect(nats.url())).await.is_err());
    // The same server admits its users.
    let gateway = nats.connect(NatsUser::Gateway).await;
    within("subscribe", gateway.subscribe("live.1.>")).await.expect("the gateway user subscribes live.<tenant>.>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_stores_events_but_cannot_publish_live() {
    let nats = NatsServer::start().await;
    bridge_creates_streams(&nats).await;
    let operator = nats.connect(NatsUser::Operator).await;
    let mut live = within("subscribe", operator.subscribe("live.>")).await.unwrap();
    within("flush", operator.flush()).await.unwrap();
    let mut bridge = Login::new(&nats, NatsUser::Bridge).await;

    within("publish", bridge.client.publish("live.1.1.waiters", EVENT.into())).await.unwrap();
    bridge.violation("publish", "live.1.1.waiters").await;

    // What it may do: store an event, which the stream re-publishes on live.* by itself.
    let ack = within("publish", jetstream::new(bridge.client.clone()).publish("events.1.1.waiters", EVENT.into()))
        .await
        .expect("publish")
        .await
        .expect("the bridge user stores events");
    let republished = next_within(&mut live, SOON).await.expect("the stored event, re-published on live.*");
    assert_eq!(republished.subject.as_str(), "live.1.1.waiters");
    let sequence =
        republished.headers.as_ref().and_then(|h| h.get(async_nats::header::NATS_SEQUENCE)).map(|v| v.to_string());
    assert_eq!(sequence, Some(ack.sequence.to_string()), "the only live.* message is the stored one");
    assert!(next_within(&mut live, Duration::from_millis(500)).await.is_none(), "nothing forged reached live.*");

    // It may not read what the gateway reads through its replies, nor the live subjects.
    within("subscribe", bridge.client.subscribe("live.>")).await.unwrap();
    bridge.violation("subscription", "live.>").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reads_live_and_history_but_publishes_nothing() {
    let nats = NatsServer::start().await;
    bridge_creates_streams(&nats).await;
    let operator = nats.connect(NatsUser::Operator).await;
    let mut watch = within("subscribe", operator.subscribe(">")).await.unwrap();
    within("flush", operator.flush()).await.unwrap();
    let mut gateway = Login::new(&nats, NatsUser::Gateway).await;
    let mut live = within("subscribe", gateway.client.subscribe("live.1.>")).await.unwrap();
    within("flush", gateway.client.flush()).await.unwrap();

    for subject in ["events.1.1.waiters", "live.1.1.waiters", "dlq.bad_tenant"] {
        within("publish", gateway.client.publish(subject, EVENT.into())).await.unwrap();
        gateway.violation("publish", subject).await;
    }
    for subject in ["events.>", "_INBOX.bridge.>", "$JS.EVENT.ADVISORY.>"] {
        within("subscribe", gateway.client.subscribe(subject)).await.unwrap();
        gateway.violation("subscription", subject).await;
    }
    // None of its publishes reached anyone (the operator subscribed to every subject).
    while let Some(message) = next_within(&mut watch, Duration::from_millis(500)).await {
        let subject = message.subject.as_str();
        assert!(!["events.", "live.", "dlq."].iter().any(|p| subject.starts_with(p)), "got through: {subject}");
    }
    assert_eq!(stored_messages(&operator).await, 0);

    // What it may do: receive what the bridge stored, and read it back as history.
    let bridge = nats.connect(NatsUser::Bridge).await;
    within("store", jetstream::new(bridge).publish("events.1.1.waiters", EVENT.into())).await.unwrap().await.unwrap();
    let message = next_within(&mut live, SOON).await.expect("the gateway user receives live.<tenant>.>");
    assert_eq!(message.payload.as_ref(), EVENT);
    let js = jetstream::new(gateway.client.clone());
    let mut reader = within("open history", gateway::history::open(&js, 1, gateway::history::Start::After(0)))
        .await
        .expect("the gateway user reads history through an ordered consumer");
    let stored = within("read history", reader.next()).await.expect("one event").expect("read");
    assert_eq!((stored.sequence, stored.payload.as_ref()), (1, EVENT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_may_purge_or_delete_the_events_stream() {
    let nats = NatsServer::start().await;
    bridge_creates_streams(&nats).await;
    let operator = nats.connect(NatsUser::Operator).await;
    within("store", jetstream::new(operator.clone()).publish("events.1.1.waiters", EVENT.into()))
        .await
        .unwrap()
        .await
        .unwrap();

    for user in [NatsUser::Bridge, NatsUser::Gateway, NatsUser::Loadtest] {
        let mut login = Login::new(&nats, user).await;
        let js = jetstream::new(login.client.clone());
        let stream = events_stream(&login.client).await;
        assert!(within("purge", stream.purge()).await.is_err(), "{user:?} purged EVENTS");
        login.violation("publish", "$JS.API.STREAM.PURGE.EVENTS").await;
        assert!(within("delete", js.delete_stream("EVENTS")).await.is_err(), "{user:?} deleted EVENTS");
        login.violation("publish", "$JS.API.STREAM.DELETE.EVENTS").await;
        assert!(within("delete message", stream.delete_message(1)).await.is_err(), "{user:?} deleted a message");
        login.violation("publish", "$JS.API.STREAM.MSG.DELETE.EVENTS").await;
        assert_eq!(stored_messages(&operator).await, 1, "EVENTS intact after {user:?}");
    }

    let js = jetstream::new(operator.clone());
    within("purge", events_stream(&operator).await.purge()).await.expect("the operator purges EVENTS");
    assert_eq!(stored_messages(&operator).await, 0);
    within("delete", js.delete_stream("EVENTS")).await.expect("the operator deletes EVENTS");
    assert!(within("stream info", js.get_stream("EVENTS")).await.is_err(), "EVENTS is gone");
}
