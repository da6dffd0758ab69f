//! `GET /admin/connections` (this replica's connections, filtered by tenant, user, table session
//! and endpoint) and `POST /admin/connections/close` (a user's or a table session's
//! connections, optionally on one endpoint, closed with the operator's code and reason through
//! each connection's close control, so the close goes through the normal path: audit line,
//! metrics, span).

use super::{bad_request, AdminState};
use crate::auth::Endpoint;
use crate::close::Closing;
use crate::registry::{Conn, ConnKey};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Connections listed at most unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// Which connections a request is about; every given field must match.
#[derive(Debug, Default)]
pub struct Selector {
    pub tenant_id: Option<u64>,
    pub user_id: Option<u64>,
    pub session_id: Option<u64>,
    pub endpoint: Option<String>,
}

impl Selector {
    fn endpoint(&self) -> Result<Option<Endpoint>, String> {
        match self.endpoint.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(name) => Endpoint::ALL
                .into_iter()
                .find(|e| e.as_str() == name)
                .map(Some)
                .ok_or_else(|| format!("endpoint '{name}' is not waiter, kitchen, admin or diner")),
        }
    }

    fn matches(&self, conn: &Conn, endpoint: Option<Endpoint>) -> bool {
        let (tenant, user, session) = match conn.key {
            ConnKey::User { tenant_id, user_id } => (tenant_id, Some(user_id), None),
            ConnKey::Session { tenant_id, session_id } => (tenant_id, None, Some(session_id)),
        };
        self.tenant_id.is_none_or(|t| t == tenant)
            && self.user_id.is_none_or(|u| Some(u) == user)
            && self.session_id.is_none_or(|s| Some(s) == session)
            && endpoint.is_none_or(|e| e == conn.endpoint)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default, deserialize_with = "number_or_empty")]
    tenant_id: Option<u64>,
    #[serde(default, deserialize_with = "number_or_empty")]
    user_id: Option<u64>,
    #[serde(default, deserialize_with = "number_or_empty")]
    session_id: Option<u64>,
    endpoint: Option<String>,
    #[serde(default, deserialize_with = "number_or_empty")]
    limit: Option<u64>,
}

/// `?tenant_id=` (empty) means no filter; anything else must be a whole number.
fn number_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("'{t}' is not a whole number"))),
    }
}

pub async fn list(State(state): State<AdminState>, query: Result<Query<ListQuery>, QueryRejection>) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    let selector = Selector {
        tenant_id: query.tenant_id,
        user_id: query.user_id,
        session_id: query.session_id,
        endpoint: query.endpoint,
    };
    let endpoint = match selector.endpoint() {
        Ok(e) => e,
        Err(message) => return bad_request(message),
    };
    let limit = query.limit.map_or(DEFAULT_LIMIT, |l| l.min(MAX_LIMIT as u64) as usize);
    let matching: Vec<_> =
        state.app.registry.snapshot().into_iter().filter(|c| selector.matches(c, endpoint)).collect();
    let now_ms = wire::clock::now_micros() / 1000;
    let connections: Vec<Value> = matching.iter().take(limit).map(|c| describe(c, now_ms)).collect();
    Json(json!({
        "instance": state.app.config.instance_id,
        "matched": matching.len(),
        "returned": connections.len(),
        "truncated": matching.len() > connections.len(),
        "connections": connections,
    }))
    .into_response()
}

/// `2026-01-01T00:00:00.500Z`: UTC, milliseconds.
fn rfc3339_millis(unix_ms: u64) -> Option<String> {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok()?.format(&format).ok()
}

fn describe(conn: &Conn, now_ms: u64) -> Value {
    let info = &conn.info;
    let mut out = json!({
        "id": conn.id,
        "endpoint": conn.endpoint.as_str(),
        "peer": info.peer.to_string(),
        "forwarded_for": info.forwarded_for.map(|ip| ip.to_string()),
        "connected_since": rfc3339_millis(info.connected_at_ms),
        "connected_seconds": now_ms.saturating_sub(info.connected_at_ms) as f64 / 1000.0,
        "resume": info.resume,
        "closing": conn.control.is_closing(),
    });
    match conn.key {
        ConnKey::User { tenant_id, user_id } => {
            out["tenant_id"] = json!(tenant_id);
            out["user_id"] = json!(user_id);
        }
        ConnKey::Session { tenant_id, session_id } => {
            out["tenant_id"] = json!(tenant_id);
            out["session_id"] = json!(session_id);
        }
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    tenant_id: Option<u64>,
    user_id: Option<u64>,
    session_id: Option<u64>,
    endpoint: Option<String>,
    code: u16,
    #[serde(default)]
    reason: String,
}

pub async fn close(State(state): State<AdminState>, body: Result<Json<CloseRequest>, JsonRejection>) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    let selector = &Selector {
        tenant_id: request.tenant_id,
        user_id: request.user_id,
        session_id: request.session_id,
        endpoint: request.endpoint.clone(),
    };
    if selector.tenant_id.is_none() || selector.user_id.is_some() == selector.session_id.is_some() {
        return bad_request("select tenant_id and exactly one of user_id or session_id (endpoint optional)");
    }
    let endpoint = match selector.endpoint() {
        Ok(e) => e,
        Err(message) => return bad_request(message),
    };
    let closing = match Closing::operator(request.code, &request.reason) {
        Ok(c) => c,
        Err(message) => return bad_request(message),
    };
    let matching: Vec<_> =
        state.app.registry.snapshot().into_iter().filter(|c| selector.matches(c, endpoint)).collect();
    let closed = matching.iter().filter(|c| c.control.close_with(closing.clone())).count();
    tracing::info!(
        target: crate::audit::TARGET,
        action = "admin_close",
        tenant_id = selector.tenant_id,
        user_id = selector.user_id,
        session_id = selector.session_id,
        endpoint = endpoint.map(Endpoint::as_str),
        code = request.code,
        reason = request.reason,
        matched = matching.len(),
        closed,
        "connections closed through the admin API"
    );
    Json(json!({"matched": matching.len(), "closed": closed, "code": request.code, "reason": request.reason}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Capacity, Registry};
    use crate::routing::Audience;
    use std::sync::Arc;

    #[test]
    fn selectors_match_every_given_field() {
        let registry = Arc::new(Registry::new(Capacity { total: 10, per_user: 3, per_session: 3 }, 4));
        let staff =
            Audience::Staff { tenant_id: 1, branch_ids: vec![7].into(), endpoint: Endpoint::Waiter, admin_view: false };
        let waiter =
            registry.admit(Endpoint::Waiter, staff, ConnKey::User { tenant_id: 1, user_id: 5 }, Arc::from([])).unwrap();
        let diner = Audience::Diner { tenant_id: 1, session_id: 9 };
        let table = registry
            .admit(Endpoint::Diner, diner, ConnKey::Session { tenant_id: 1, session_id: 9 }, Arc::from([]))
            .unwrap();
        let sel = |tenant, user, session, endpoint: Option<&str>| Selector {
            tenant_id: tenant,
            user_id: user,
            session_id: session,
            endpoint: endpoint.map(String::from),
        };
        let check = |s: Selector, conn: &Conn| s.matches(conn, s.endpoint().unwrap());
        assert!(check(sel(None, None, None, None), &waiter.conn));
        assert!(check(sel(Some(1), Some(5), None, Some("waiter")), &waiter.conn));
        assert!(!check(sel(Some(1), Some(5), None, Some("kitchen")), &waiter.conn));
        assert!(!check(sel(Some(2), None, None, None), &waiter.conn));
        assert!(!check(sel(Some(1), Some(5), None, None), &table.conn), "a user id never matches a diner");
        assert!(check(sel(Some(1), None, Some(9), None), &table.conn));
        assert!(!check(sel(None, None, Some(9), None), &waiter.conn));
        assert!(sel(None, None, None, Some("bar")).endpoint().is_err());
    }
}
