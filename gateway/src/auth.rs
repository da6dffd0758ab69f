//! Who is connecting: the endpoint's accepted roles, the origin rule, and verification of staff
//! JWTs and diner table tokens (protocol sections 2 and 3), with the claim rules both share
//! (ids within the backend's range, `nbf` and a future `iat` within [`CLOCK_SKEW_LEEWAY_SECS`]).
//! Revocation lives in [`revocation`], its push from Redis in [`push`].

pub(crate) mod push;
pub(crate) mod revocation;
mod staff;
mod table;

use crate::config::AuthConfig;
pub use staff::Staff;
pub use table::Diner;

/// The largest id the backend can hold: its ids are signed 64-bit integers (PostgreSQL
/// `bigint`). A token naming a larger id is malformed: no event could ever match it.
pub(crate) const MAX_ID: u64 = i64::MAX as u64;

/// How far in the future a token's `iat` and `nbf` may lie, for clock skew between the
/// backend and the gateway. Beyond it the token is refused (4001): a future `iat` would escape
/// "revoked since T", and `nbf` says the token is not valid yet.
pub const CLOCK_SKEW_LEEWAY_SECS: i64 = 60;

/// Whether `id` is an id the backend can have issued: 1 to [`MAX_ID`].
pub fn backend_id(id: u64) -> bool {
    (1..=MAX_ID).contains(&id)
}

/// `nbf` and `iat` (unix seconds, when present) against `now`, with [`CLOCK_SKEW_LEEWAY_SECS`].
fn check_not_before(iat: Option<i64>, nbf: Option<i64>, now: i64) -> Result<(), AuthError> {
    let latest = now.saturating_add(CLOCK_SKEW_LEEWAY_SECS);
    if nbf.is_some_and(|nbf| nbf > latest) {
        return Err(AuthError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > latest) {
        return Err(AuthError::IssuedInFuture);
    }
    Ok(())
}

/// The four WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Waiter,
    Kitchen,
    Admin,
    Diner,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [Endpoint::Waiter, Endpoint::Kitchen, Endpoint::Admin, Endpoint::Diner];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Waiter => "waiter",
            Endpoint::Kitchen => "kitchen",
            Endpoint::Admin => "admin",
            Endpoint::Diner => "diner",
        }
    }

    /// Whether a staff member with `roles` may use this endpoint.
    pub fn admits(self, roles: Roles) -> bool {
        match self {
            Endpoint::Waiter => roles.waiter || roles.is_admin(),
            Endpoint::Kitchen => roles.kitchen || roles.is_admin(),
            Endpoint::Admin => roles.is_admin(),
            Endpoint::Diner => false,
        }
    }
}

/// Staff roles, matched as exact list members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    pub waiter: bool,
    pub kitchen: bool,
    pub manager: bool,
    pub admin: bool,
}

impl Roles {
    pub fn from_list<S: AsRef<str>>(roles: &[S]) -> Roles {
        let has = |name: &str| roles.iter().any(|r| r.as_ref() == name);
        Roles { waiter: has("WAITER"), kitchen: has("KITCHEN"), manager: has("MANAGER"), admin: has("ADMIN") }
    }

    /// MANAGER or ADMIN: receives what admins receive.
    pub fn is_admin(self) -> bool {
        self.manager || self.admin
    }
}

/// A verified token.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    Staff(Staff),
    Diner(Diner),
}

impl Identity {
    pub fn tenant_id(&self) -> u64 {
        match self {
            Identity::Staff(s) => s.tenant_id,
            Identity::Diner(d) => d.tenant_id,
        }
    }
}

/// Why a token was refused. Every variant closes with 4001; [`AuthError::label`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token issued in the future (iat beyond the clock skew leeway)")]
    IssuedInFuture,
    #[error("wrong token type: {0}")]
    WrongType(String),
    #[error("token revoked")]
    Revoked,
}

impl AuthError {
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "future_iat",
            AuthError::WrongType(_) => "wrong_type",
            AuthError::Revoked => "revoked",
        }
    }
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    staff: staff::StaffVerifier,
    table: table::TableVerifier,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        Authenticator { staff: staff::StaffVerifier::new(config), table: table::TableVerifier::new(config) }
    }

    pub fn verify_staff(&self, token: &str, now: i64) -> Result<Staff, AuthError> {
        self.staff.verify(token, now)
    }

    pub fn verify_table(&self, token: &str, now: i64) -> Result<Diner, AuthError> {
        self.table.verify(token, now)
    }
}

/// The origin rule: exact match against the allowed list (browsers never add a trailing `/`);
/// a missing origin only where allowed.
pub(crate) fn origin_allowed(origin: Option<&str>, config: &AuthConfig) -> bool {
    match origin {
        None => config.allow_missing_origin,
        Some(origin) => config.allowed_origins.iter().any(|allowed| allowed == origin),
    }
}

pub(crate) fn unix_now() -> i64 {
    wire::clock::now_unix()
}

#[cfg(test)]
mod tests;
