//! Admission of a WebSocket (protocol section 2): drain state, origin, token, role,
//! revocation (and the token watched for pushed revocations), limits, sectors and the tenant subscription are all settled before the `101`
//! is sent, so an accepted client is already receiving. A refused client still gets its upgrade
//! and is closed at once with the documented code, so browsers see the reason instead of 1006.

use super::upgrade::{NotAHandshake, Upgrade};
use super::{close, Session};
use crate::app::App;
use crate::auth::{Endpoint, Identity};
use crate::close::CloseReason;
use crate::registry::{ConnInfo, ConnKey};
use crate::routing::Audience;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// `peer` is the TCP peer (`None` when the router is served without connect info).
pub async fn upgrade(
    app: Arc<App>,
    endpoint: Endpoint,
    upgrade: Result<Upgrade, NotAHandshake>,
    headers: HeaderMap,
    query: Option<String>,
    peer: Option<SocketAddr>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(why) => {
            app.metrics.rejected("bad_handshake");
            return why.into_response();
        }
    };
    let info = ConnInfo {
        peer: peer.unwrap_or(ConnInfo::default().peer),
        forwarded_for: forwarded_for(&headers),
        connected_at_ms: wire::clock::now_micros() / 1000,
        resume: query_param(query.as_deref().unwrap_or_default(), super::resume::PARAM).is_some(),
    };
    match admit(&app, endpoint, &headers, query.as_deref(), info).await {
        Ok(session) => {
            let session = Box::new(session);
            upgrade.respond(move |upgraded| session.run(upgraded))
        }
        Err(reason) => {
            app.metrics.rejected(reason.label);
            tracing::debug!(endpoint = endpoint.as_str(), reason = reason.label, peer = %info.peer, "connection refused");
            crate::traces::connection(endpoint, None, &info, reason.code, reason.reason, "refused");
            let config = super::upgrade::config(&app.config.limits);
            upgrade.respond(move |upgraded| async move {
                let mut socket = super::upgrade::open(upgraded, None, config);
                close(&mut socket, reason).await
            })
        }
    }
}

async fn admit(
    app: &Arc<App>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    query: Option<&str>,
    info: ConnInfo,
) -> Result<Session, CloseReason> {
    if app.is_draining() {
        return Err(CloseReason::SERVICE_RESTART);
    }
    let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("\u{fffd}"));
    if !crate::auth::origin_allowed(origin, &app.config.auth) {
        return Err(CloseReason::ORIGIN_NOT_ALLOWED);
    }
    let param = if endpoint == Endpoint::Diner { "table_token" } else { "token" };
    let token = query_param(query.unwrap_or_default(), param).unwrap_or_default();
    let now = crate::auth::unix_now();
    let mut watch = None;
    let identity = if endpoint == Endpoint::Diner {
        Identity::Diner(app.auth.verify_table(&token, now).map_err(|e| refused(endpoint, &e))?)
    } else {
        let staff = app.auth.verify_staff(&token, now).map_err(|e| refused(endpoint, &e))?;
        if !endpoint.admits(staff.roles) {
            return Err(CloseReason::ACCESS_DENIED);
        }
        // Watched from before the look-up: a revocation pushed meanwhile is not missed.
        watch = Some(app.push.watch(&staff));
        if app.is_revoked(&staff).await {
            return Err(CloseReason::AUTH_FAILED);
        }
        Identity::Staff(staff)
    };
    let (audience, key) = match &identity {
        Identity::Staff(s) => (
            Audience::Staff {
                tenant_id: s.tenant_id,
                branch_ids: s.branch_ids.clone().into(),
                endpoint,
                admin_view: endpoint == Endpoint::Admin || s.roles.is_admin(),
            },
            ConnKey::User { tenant_id: s.tenant_id, user_id: s.user_id },
        ),
        Identity::Diner(d) => (
            Audience::Diner { tenant_id: d.tenant_id, session_id: d.session_id },
            ConnKey::Session { tenant_id: d.tenant_id, session_id: d.session_id },
        ),
    };
    let sectors = match &identity {
        Identity::Staff(s) if audience.is_pure_waiter() => app.sectors.get(s.tenant_id, s.user_id).await,
        _ => Arc::from([]),
    };
    let tenant_id = identity.tenant_id();
    let registration = app.registry.admit_with(endpoint, audience, key, sectors, info)?;
    if let (Some(watch), Identity::Staff(staff)) = (&watch, &identity) {
        if watch.bind(&registration.conn) && app.is_revoked(staff).await {
            return Err(CloseReason::AUTH_FAILED);
        }
    }
    let lease = app.subscriptions.acquire(tenant_id).await;
    let table_token = (endpoint == Endpoint::Diner).then(|| token.into_boxed_str());
    let query = query.unwrap_or_default();
    registration.conn.outlet.set_resume(query_param(query, super::resume::PARAM).map(|value| super::resume::Resume {
        request: super::resume::parse(&value, query_param(query, super::resume::EPOCH_PARAM).as_deref()),
        mark: None,
    }));
    let _task = app.sessions.token();
    Ok(Session { app: app.clone(), identity, table_token, registration, lease, _watch: watch, _task })
}

/// The first address of `X-Forwarded-For`, if it parses.
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get("x-forwarded-for")?.to_str().ok()?;
    value.split(',').next()?.trim().parse().ok()
}

fn refused(endpoint: Endpoint, error: &crate::auth::AuthError) -> CloseReason {
    tracing::debug!(endpoint = endpoint.as_str(), reason = error.label(), %error, "token refused");
    CloseReason::AUTH_FAILED
}

/// The first value of `name` in a URL query, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::{forwarded_for, query_param};
    use axum::http::HeaderMap;

    #[test]
    fn reads_and_decodes_the_token_parameter() {
        assert_eq!(query_param("token=a.b.c&x=1", "token").as_deref(), Some("a.b.c"));
        assert_eq!(query_param("table_token=1%3A2%3A3", "table_token").as_deref(), Some("1:2:3"));
        assert_eq!(query_param("other=1", "token"), None);
        assert_eq!(query_param("", "token"), None);
    }

    #[test]
    fn reads_the_first_forwarded_address() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers), None);
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        assert_eq!(forwarded_for(&headers), Some("203.0.113.7".parse().unwrap()));
        headers.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(forwarded_for(&headers), None);
    }
}
