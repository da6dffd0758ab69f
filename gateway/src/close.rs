//! The close vocabulary (protocol section 4): every documented server-initiated close with the
//! code and reason the client sees and a bounded metric label, and the operator's closes the
//! admin API may send. A leaf: the connection, the registry, shutdown, admin and push revocation
//! all close connections with it, and it imports nothing from them.

/// A server-initiated close: the code and reason the client sees, and a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    pub label: &'static str,
}

const fn close(code: u16, reason: &'static str, label: &'static str) -> CloseReason {
    CloseReason { code, reason, label }
}

impl CloseReason {
    pub const AUTH_FAILED: CloseReason = close(4001, "Authentication failed", "auth_failed");
    pub const TOKEN_REVOKED: CloseReason = close(4001, "Token expired or revoked", "token_revoked");
    pub const TOKEN_EXPIRED: CloseReason = close(4001, "Token expired", "token_expired");
    pub const SESSION_MISMATCH: CloseReason = close(4001, "Session mismatch", "session_mismatch");
    pub const ORIGIN_NOT_ALLOWED: CloseReason = close(4003, "Origin not allowed", "origin_not_allowed");
    pub const ACCESS_DENIED: CloseReason = close(4003, "Access denied", "access_denied");
    pub const SERVER_AT_CAPACITY: CloseReason = close(1013, "Server at capacity", "server_at_capacity");
    pub const TOO_MANY_FOR_USER: CloseReason = close(1013, "Too many connections for user", "too_many_for_user");
    pub const TOO_MANY_FOR_SESSION: CloseReason =
        close(1013, "Too many connections for session", "too_many_for_session");
    pub const SERVICE_RESTART: CloseReason = close(1012, "Service restart", "service_restart");
    pub const MESSAGE_TOO_LARGE: CloseReason = close(1009, "Message too large", "message_too_large");
    pub const RATE_LIMITED: CloseReason = close(4029, "Rate limit exceeded", "rate_limited");
    pub const HEARTBEAT_TIMEOUT: CloseReason = close(1001, "Heartbeat timeout", "heartbeat_timeout");
    pub const BINARY_FRAME: CloseReason = close(1003, "Binary frames not supported", "binary_frame");
    pub const SLOW_CONSUMER: CloseReason = close(1013, "Client too slow", "slow_consumer");
    pub const PROTOCOL_ERROR: CloseReason = close(1002, "Protocol error", "protocol_error");
    pub const INVALID_UTF8: CloseReason = close(1007, "Invalid UTF-8", "invalid_utf8");
}

/// Why the server closes an open connection: one of the documented reasons, or an operator's
/// choice through the admin API (code and text chosen at run time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    Documented(CloseReason),
    Operator { code: u16, reason: Box<str> },
}

/// Codes an operator may close with: the application range and the standard codes that make
/// sense for a server to send.
pub const OPERATOR_CODES: [u16; 6] = [1000, 1001, 1008, 1011, 1012, 1013];
/// A close frame's reason is at most 123 bytes (RFC 6455 section 5.5).
pub const MAX_CLOSE_REASON: usize = 123;

impl Closing {
    /// An operator's close, if the code and reason are sendable.
    pub fn operator(code: u16, reason: &str) -> Result<Closing, String> {
        if !(4000..=4999).contains(&code) && !OPERATOR_CODES.contains(&code) {
            return Err(format!("code {code} is not 4000-4999, 1000, 1001, 1008, 1011, 1012 or 1013"));
        }
        if reason.len() > MAX_CLOSE_REASON {
            return Err(format!("reason is {} bytes; at most {MAX_CLOSE_REASON}", reason.len()));
        }
        Ok(Closing::Operator { code, reason: reason.into() })
    }

    pub fn code(&self) -> u16 {
        match self {
            Closing::Documented(r) => r.code,
            Closing::Operator { code, .. } => *code,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Closing::Documented(r) => r.reason,
            Closing::Operator { reason, .. } => reason,
        }
    }

    /// The bounded metric label: the documented reason's, or `admin_closed`.
    pub fn label(&self) -> &'static str {
        match self {
            Closing::Documented(r) => r.label,
            Closing::Operator { .. } => "admin_closed",
        }
    }
}

impl From<CloseReason> for Closing {
    fn from(reason: CloseReason) -> Closing {
        Closing::Documented(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_closes_take_sendable_codes_and_short_reasons() {
        let c = Closing::operator(4100, "moved to another terminal").unwrap();
        assert_eq!((c.code(), c.reason(), c.label()), (4100, "moved to another terminal", "admin_closed"));
        for code in OPERATOR_CODES {
            assert!(Closing::operator(code, "").is_ok(), "{code}");
        }
        for code in [999, 1002, 1005, 1006, 1015, 3000, 5000] {
            assert!(Closing::operator(code, "").is_err(), "{code}");
        }
        assert!(Closing::operator(4000, &"x".repeat(123)).is_ok());
        assert!(Closing::operator(4000, &"x".repeat(124)).is_err());
        assert_eq!(Closing::from(CloseReason::SLOW_CONSUMER).code(), 1013);
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        for r in [
            CloseReason::AUTH_FAILED,
            CloseReason::TOKEN_REVOKED,
            CloseReason::SLOW_CONSUMER,
            CloseReason::TOO_MANY_FOR_SESSION,
        ] {
            assert!(r.reason.len() <= 123, "close reasons are limited to 123 bytes");
        }
    }
}
