//! The catch-up endpoints of protocol section 7, served from JetStream history:
//! `GET /ws/catchup?branch_id=&since=&token=` (staff) and
//! `GET /ws/catchup/session?session_id=&since=&table_token=` (diners). They return, oldest first,
//! exactly the events after `since` that the caller would have received live — same tenant, same
//! routing rule — bounded by `GATEWAY_CATCHUP_MAX_EVENTS` and `GATEWAY_CATCHUP_MAX_AGE`.
//! History is read on the tenant's one filter subject (see [`crate::history`]) and each event
//! kept if [`routing::receives`] says the caller gets it live.

use crate::app::App;
use crate::auth::Endpoint;
use crate::history::{self, Start};
use crate::routing::{self, Audience, EventScope};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, value::RawValue};
use std::collections::HashMap;
use std::sync::Arc;

/// How many stored events one request may scan, per event it may return.
const SCAN_FACTOR: usize = 20;

fn detail(status: StatusCode, detail: &str) -> Response {
    (status, axum::Json(json!({ "detail": detail }))).into_response()
}

fn params(query: Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// A missing or malformed parameter: 422 with this detail.
struct Unprocessable(String);

impl IntoResponse for Unprocessable {
    fn into_response(self) -> Response {
        detail(StatusCode::UNPROCESSABLE_ENTITY, &self.0)
    }
}

fn positive(params: &HashMap<String, String>, name: &str) -> Result<u64, Unprocessable> {
    params
        .get(name)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| Unprocessable(format!("{name} must be a positive integer")))
}

fn since(params: &HashMap<String, String>) -> Result<f64, Unprocessable> {
    params
        .get("since")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| Unprocessable("since must be unix seconds".into()))
}

fn token<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Unprocessable> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Unprocessable(format!("{name} is required")))
}

pub(crate) mod limits;

pub use limits::Caller;

/// How long a refused caller should wait before asking again, in seconds.
const RETRY_AFTER: &str = "1";

/// The answer to a request refused a place among the catch-up requests in progress.
fn refusal(app: &App, refused: limits::Refused) -> Response {
    let (status, text, label) = match refused {
        limits::Refused::Caller => {
            (StatusCode::TOO_MANY_REQUESTS, "Too many catch-up requests in progress", "caller_busy")
        }
        limits::Refused::Replica => (StatusCode::SERVICE_UNAVAILABLE, "Catch-up busy, retry shortly", "replica_busy"),
    };
    app.metrics.catchup_refused.get_or_create(&crate::metrics::ReasonLabel { reason: label }).inc();
    let mut response = detail(status, text);
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static(RETRY_AFTER));
    response
}

pub async fn staff(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    let (branch_id, since, token) = match (positive(&params, "branch_id"), since(&params), token(&params, "token")) {
        (Ok(b), Ok(s), Ok(t)) => (b, s, t),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
    };
    let Ok(staff) = app.auth.verify_staff(token, crate::auth::unix_now()) else {
        return detail(StatusCode::UNAUTHORIZED, "Invalid token");
    };
    if app.is_revoked(&staff).await {
        return detail(StatusCode::UNAUTHORIZED, "Invalid token");
    }
    if !staff.branch_ids.contains(&branch_id) {
        return detail(StatusCode::FORBIDDEN, "No access to this branch");
    }
    let _permit = match app.catchup.try_acquire(Caller::Staff { tenant_id: staff.tenant_id, user_id: staff.user_id }) {
        Ok(permit) => permit,
        Err(refused) => return refusal(&app, refused),
    };
    // What the caller receives live on each endpoint its roles admit.
    let audiences: Vec<Audience> = [Endpoint::Waiter, Endpoint::Kitchen, Endpoint::Admin]
        .into_iter()
        .filter(|e| e.admits(staff.roles))
        .map(|endpoint| Audience::Staff {
            tenant_id: staff.tenant_id,
            branch_ids: vec![branch_id].into(),
            endpoint,
            admin_view: endpoint == Endpoint::Admin || staff.roles.is_admin(),
        })
        .collect();
    let sectors = if audiences.iter().any(Audience::is_pure_waiter) {
        app.sectors.get(staff.tenant_id, staff.user_id).await
    } else {
        Arc::from([])
    };
    collect(&app, staff.tenant_id, since, |scope| audiences.iter().any(|a| routing::receives(a, &sectors, scope))).await
}

pub async fn session(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    let (session_id, since, token) =
        match (positive(&params, "session_id"), since(&params), token(&params, "table_token")) {
            (Ok(s), Ok(t), Ok(k)) => (s, t, k),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
        };
    let Ok(diner) = app.auth.verify_table(token, crate::auth::unix_now()) else {
        return detail(StatusCode::UNAUTHORIZED, "Invalid token");
    };
    if diner.session_id != session_id {
        return detail(StatusCode::FORBIDDEN, "No access to this session");
    }
    let _permit = match app.catchup.try_acquire(Caller::Session { tenant_id: diner.tenant_id, session_id }) {
        Ok(permit) => permit,
        Err(refused) => return refusal(&app, refused),
    };
    let audience = Audience::Diner { tenant_id: diner.tenant_id, session_id };
    collect(&app, diner.tenant_id, since, |scope| routing::receives(&audience, &[], scope)).await
}

/// Reads the tenant's history from `since` and keeps what `receives` accepts.
async fn collect(app: &App, tenant_id: u64, since: f64, receives: impl Fn(&EventScope) -> bool) -> Response {
    let limit = app.config.catchup_max_events;
    let oldest = time::OffsetDateTime::now_utc() - app.config.catchup_max_age;
    let start = time::OffsetDateTime::from_unix_timestamp_nanos((since * 1e9) as i128).unwrap_or(oldest).max(oldest);
    let js = async_nats::jetstream::new(app.nats.clone());
    let mut reader = match history::open(&js, tenant_id, Start::Since(start)).await {
        Ok(reader) => reader,
        Err(error) => {
            tracing::warn!(%error, "catch-up: history unavailable");
            return detail(StatusCode::SERVICE_UNAVAILABLE, "History unavailable");
        }
    };
    let mut events: Vec<Box<RawValue>> = Vec::new();
    // The answer's size: the events and a comma each, within GATEWAY_CATCHUP_MAX_BYTES.
    let mut bytes = 0;
    let mut scanned = 0;
    let mut truncated = false;
    while let Some(item) = reader.next().await {
        let Ok(stored) = item else { return detail(StatusCode::SERVICE_UNAVAILABLE, "History unavailable") };
        scanned += 1;
        if let Some(scope) = stored.scope() {
            if receives(&scope) {
                if events.len() == limit || bytes + stored.payload.len() + 1 > app.config.catchup_max_bytes {
                    truncated = true;
                    break;
                }
                bytes += stored.payload.len() + 1;
                if let Ok(raw) = RawValue::from_string(String::from_utf8_lossy(&stored.payload).into_owned()) {
                    events.push(raw);
                }
            }
        }
        if scanned >= limit * SCAN_FACTOR {
            truncated = !reader.finished();
            break;
        }
    }
    let count = events.len();
    let mut body = json!({ "events": events, "count": count });
    if truncated {
        body["truncated"] = json!(true);
    }
    axum::Json(body).into_response()
}
