//! The audit log: one line per admitted connection and one per ended connection, target `audit`
//! at level info (keep them with `RUST_LOG=warn,audit=info`), JSON objects with
//! `LOG_FORMAT=json` like every other line. Fields: `action` (`connect` / `close`),
//! `tenant_id`, `user_id` (staff) or `session_id` (diner), `endpoint`, `peer`, `forwarded_for`
//! (when a proxy sent `X-Forwarded-For`), `resume`, `conn_id`; on close also `duration_s`,
//! `code`, `reason` and `by` (`server`, `client`, `lost`). Refused handshakes are not audited:
//! they are counted in `gateway_handshake_rejections_total` and logged at debug.

use crate::registry::{Conn, ConnKey};
use std::time::Duration;

pub const TARGET: &str = "audit";

fn who(conn: &Conn) -> (u64, Option<u64>, Option<u64>) {
    match conn.key {
        ConnKey::User { tenant_id, user_id } => (tenant_id, Some(user_id), None),
        ConnKey::Session { tenant_id, session_id } => (tenant_id, None, Some(session_id)),
    }
}

pub fn opened(conn: &Conn) {
    let (tenant_id, user_id, session_id) = who(conn);
    tracing::info!(
        target: TARGET,
        action = "connect",
        tenant_id,
        user_id,
        session_id,
        endpoint = conn.endpoint.as_str(),
        peer = %conn.info.peer,
        forwarded_for = conn.info.forwarded_for.map(tracing::field::display),
        resume = conn.info.resume,
        conn_id = conn.id,
        "connection opened"
    );
}

pub fn closed(conn: &Conn, duration: Duration, code: u16, reason: &str, by: &'static str) {
    let (tenant_id, user_id, session_id) = who(conn);
    tracing::info!(
        target: TARGET,
        action = "close",
        tenant_id,
        user_id,
        session_id,
        endpoint = conn.endpoint.as_str(),
        peer = %conn.info.peer,
        forwarded_for = conn.info.forwarded_for.map(tracing::field::display),
        resume = conn.info.resume,
        conn_id = conn.id,
        duration_s = (duration.as_secs_f64() * 1000.0).round() / 1000.0,
        code,
        reason,
        by,
        "connection closed"
    );
}
