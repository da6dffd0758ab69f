//! Push revocation: each replica subscribes to Redis keyspace notifications of the two keys the
//! backend writes (`auth:token:blacklist:{jti}`, `auth:user:revoked:{user_id}`) on a pub/sub
//! connection of its own, and when one is written, checks the staff connections it names
//! against Redis and closes the revoked ones with 4001 `Token expired or revoked`, within a
//! second instead of at the next timer re-check (which stays as the fallback).
//!
//! It owns the subscriber task (reconnecting with capped backoff), the index of watched tokens
//! ([`index`]) and the state `/ws/health/detailed` and `gateway_revocation_push_active` report.
//! It does not decide revocation: [`super::revocation`] does, for every notified token.
//! Redis must publish the notifications: `notify-keyspace-events` holding `K` and `$` (or `A`),
//! checked with `CONFIG GET` at every (re)connect and every [`CHECK_EVERY`].

pub mod index;

use super::revocation::{Revocation, TokenRef, BLACKLIST_PREFIX, USER_REVOKED_PREFIX};
use super::Staff;
use crate::close::{CloseReason, Closing};
use crate::metrics::{Metrics, ResultLabel};
use crate::registry::Conn;
use futures_util::StreamExt;
use index::{Index, Target, Watched};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often the subscription is pinged and the Redis setting read again.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// A connection that stayed up this long resets the reconnect backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ws/health/detailed` says about push revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not subscribed (yet, or the pub/sub connection is down and reconnecting).
    Disconnected { error: Option<String> },
    /// Subscribed, and Redis publishes the notifications.
    Active { setting: String },
    /// Subscribed, but `notify-keyspace-events` lacks `K` or `$`: nothing will arrive.
    Inactive { setting: String },
    /// Subscribed; Redis refused `CONFIG GET` (managed Redis): whether notifications arrive is
    /// the operator's setting.
    Unknown { error: String },
}

impl State {
    pub fn label(&self) -> &'static str {
        match self {
            State::Disconnected { .. } => "disconnected",
            State::Active { .. } => "active",
            State::Inactive { .. } => "inactive",
            State::Unknown { .. } => "unknown",
        }
    }

    fn from_setting(setting: Result<Option<String>, String>) -> State {
        match setting {
            Ok(Some(setting)) if publishes_revocations(&setting) => State::Active { setting },
            Ok(Some(setting)) => State::Inactive { setting },
            Ok(None) => State::Unknown { error: "Redis did not return notify-keyspace-events".into() },
            Err(error) => State::Unknown { error },
        }
    }
}

/// Whether a `notify-keyspace-events` value publishes keyspace events (`K`) of string commands
/// (`$`, or `A` which includes it): what `SET`/`SETEX` on the revocation keys produce.
pub fn publishes_revocations(setting: &str) -> bool {
    setting.contains('K') && (setting.contains('$') || setting.contains('A'))
}

struct Shared {
    index: Mutex<Index>,
    state: Mutex<State>,
    revocation: Revocation,
    metrics: Arc<Metrics>,
}

/// Push revocation of one replica; dropping it stops the subscriber.
pub struct Push {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// Keeps a token watched; dropping it (the connection ended, or was refused) forgets it.
pub struct Watch {
    shared: Arc<Shared>,
    watched: Arc<Watched>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.index.lock().expect("push index lock").remove(&self.watched);
    }
}

impl Watch {
    /// Binds the admitted connection. `true` when a notification for this token arrived since
    /// [`Push::watch`]: the caller must check revocation again.
    pub fn bind(&self, conn: &Arc<Conn>) -> bool {
        self.watched.bind(conn)
    }
}

impl Push {
    /// Starts the subscriber (in the background: a Redis without pub/sub yet is retried).
    pub fn start(revocation: Revocation, metrics: Arc<Metrics>) -> Push {
        let shared = Arc::new(Shared {
            index: Mutex::default(),
            state: Mutex::new(State::Disconnected { error: None }),
            revocation,
            metrics,
        });
        let stop = CancellationToken::new();
        tokio::spawn(subscribe_forever(shared.clone(), stop.clone()));
        Push { shared, _stop: stop.drop_guard() }
    }

    /// Watches `staff`'s token; call before the handshake's revocation look-up, then
    /// [`Watch::bind`] the admitted connection.
    pub fn watch(&self, staff: &Staff) -> Watch {
        let watched = self.shared.index.lock().expect("push index lock").insert(TokenRef::from(staff));
        Watch { shared: self.shared.clone(), watched }
    }

    pub fn state(&self) -> State {
        self.shared.state.lock().expect("push state lock").clone()
    }

    /// The `revocation_push` object of `/ws/health/detailed`.
    pub fn health(&self) -> Value {
        let watched = self.shared.index.lock().expect("push index lock").len();
        let mut out = json!({"status": self.state().label(), "watched_connections": watched});
        match self.state() {
            State::Active { setting } | State::Inactive { setting } => out["notify_keyspace_events"] = json!(setting),
            State::Disconnected { error: Some(error) } | State::Unknown { error } => out["error"] = json!(error),
            State::Disconnected { error: None } => {}
        }
        out
    }
}

impl Shared {
    fn set_state(&self, state: State) {
        let active = matches!(state, State::Active { .. });
        self.metrics.revocation_push_active.set(i64::from(active));
        let mut current = self.state.lock().expect("push state lock");
        if current.label() != state.label() {
            match &state {
                State::Active { setting } => {
                    tracing::info!(notify_keyspace_events = %setting, "push revocation active")
                }
                State::Inactive { setting } => tracing::warn!(
                    notify_keyspace_events = %setting,
                    "push revocation inactive: Redis's notify-keyspace-events lacks K and $ (set it to K$ or add them); revocations are found by the timer re-check only"
                ),
                State::Unknown { error } => tracing::warn!(
                    %error,
                    "push revocation: cannot read Redis's notify-keyspace-events; revocations are pushed only if it holds K and $"
                ),
                State::Disconnected { error } => {
                    tracing::warn!(
                        error = error.as_deref().unwrap_or(""),
                        "push revocation: Redis pub/sub disconnected; reconnecting"
                    )
                }
            }
        }
        *current = state;
    }

    async fn read_setting(&self) -> State {
        State::from_setting(self.revocation.notify_keyspace_events().await.map_err(|e| e.to_string()))
    }

    /// One notification: the watched tokens it names are checked against Redis, the revoked
    /// ones' connections closed. A failed look-up closes nothing (the timer re-check, with its
    /// failure policy, is still to come).
    fn notified(self: &Arc<Self>, target: Target) {
        let watched = self.shared_matching(&target);
        let conns: Vec<(Arc<Conn>, TokenRef)> =
            watched.iter().filter_map(|w| w.notify().map(|conn| (conn, w.token.clone()))).collect();
        if conns.is_empty() {
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            for (conn, token) in conns {
                if conn.control.is_closing() {
                    continue;
                }
                let result = match shared.revocation.check(&token).await {
                    Ok(true) => "revoked",
                    Ok(false) => "ok",
                    Err(error) => {
                        if crate::telemetry::REDIS_ERRORS.allow() {
                            tracing::warn!(%error, "pushed revocation: look-up failed; the timer re-check will tell");
                        }
                        "error"
                    }
                };
                shared.metrics.revocation_checks.get_or_create(&ResultLabel { result }).inc();
                if result == "revoked" && conn.control.close_with(Closing::Documented(CloseReason::TOKEN_REVOKED)) {
                    shared.metrics.revocation_push_closed.inc();
                    tracing::info!(
                        conn_id = conn.id,
                        user_id = token.user_id,
                        "token revoked: connection closed by push"
                    );
                }
            }
        });
    }

    fn shared_matching(&self, target: &Target) -> Vec<Arc<Watched>> {
        self.index.lock().expect("push index lock").matching(target)
    }
}

/// Subscribes, serves notifications until the connection drops, and starts again with capped
/// backoff (reset after a healthy period), until `stop`.
async fn subscribe_forever(shared: Arc<Shared>, stop: CancellationToken) {
    let client = shared.revocation.client().clone();
    let db = client.get_connection_info().redis_settings().db();
    let patterns =
        [format!("__keyspace@{db}__:{BLACKLIST_PREFIX}*"), format!("__keyspace@{db}__:{USER_REVOKED_PREFIX}*")];
    let mut backoff = wire::backoff::Backoff::reconnect().reset_after(HEALTHY_AFTER);
    loop {
        let started = Instant::now();
        let error = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            error = serve_once(&shared, &client, &patterns, db) => error,
        };
        shared.set_state(State::Disconnected { error: Some(error) });
        backoff.healthy(started.into_std());
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One pub/sub connection's life; returns why it ended.
async fn serve_once(shared: &Arc<Shared>, client: &redis::Client, patterns: &[String; 2], db: i64) -> String {
    let pubsub = match tokio::time::timeout(TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "no connection within 2 s".into(),
    };
    let (mut sink, mut stream) = pubsub.split();
    match tokio::time::timeout(TIMEOUT, sink.psubscribe(patterns)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return format!("PSUBSCRIBE refused: {e}"),
        Err(_) => return "PSUBSCRIBE not confirmed within 2 s".into(),
    }
    shared.set_state(shared.read_setting().await);
    let mut check = tokio::time::interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return "connection closed".into() };
                let event: String = message.get_payload().unwrap_or_default();
                tracing::debug!(channel = message.get_channel_name(), %event, "keyspace notification");
                if let Some(target) = index::parse_channel(message.get_channel_name(), db) {
                    if index::may_revoke(&event) {
                        shared.notified(target);
                    }
                }
            }
            _ = check.tick() => {
                match tokio::time::timeout(TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("PING failed: {e}"),
                    Err(_) => return "PING not answered within 2 s".into(),
                }
                shared.set_state(shared.read_setting().await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_redis_setting() {
        for active in ["K$", "$K", "AK", "KEA", "Kg$xe", "AKE"] {
            assert!(publishes_revocations(active), "{active}");
        }
        for inactive in ["", "E$", "Ex", "Kx", "Kgl", "KEg"] {
            assert!(!publishes_revocations(inactive), "{inactive}");
        }
        assert_eq!(State::from_setting(Ok(Some("K$".into()))).label(), "active");
        assert_eq!(State::from_setting(Ok(Some("".into()))).label(), "inactive");
        assert_eq!(State::from_setting(Err("ERR unknown command 'CONFIG'".into())).label(), "unknown");
    }
}
