//! Token revocation as the backend records it in Redis (protocol section 3):
//! `auth:token:blacklist:{jti}` exists, or `auth:user:revoked:{user_id}` holds an ISO-8601 UTC
//! time after the token's `iat`. Both keys are read in one round trip. Whether a Redis failure
//! counts as revoked is the caller's policy (`REVOCATION_FAIL_OPEN`).

use super::Staff;
use chrono::{DateTime, NaiveDateTime};
use redis::aio::ConnectionManager;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("Redis did not answer within {TIMEOUT:?}")]
    Timeout,
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Revocation {
    redis: ConnectionManager,
}

impl Revocation {
    /// Connects to Redis; fails if the first connection cannot be made, then reconnects by itself.
    pub async fn connect(url: &str) -> Result<Revocation, RevocationError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(5));
        let redis = tokio::time::timeout(TIMEOUT * 3, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| RevocationError::Timeout)??;
        Ok(Revocation { redis })
    }

    /// Whether `staff`'s token has been revoked.
    pub async fn is_revoked(&self, staff: &Staff) -> Result<bool, RevocationError> {
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        match &staff.jti {
            Some(jti) => pipe.exists(format!("auth:token:blacklist:{jti}")),
            None => pipe.cmd("ECHO").arg(0),
        };
        pipe.get(format!("auth:user:revoked:{}", staff.user_id));
        let (blacklisted, revoked_at): (bool, Option<String>) =
            tokio::time::timeout(TIMEOUT, pipe.query_async(&mut redis))
                .await
                .map_err(|_| RevocationError::Timeout)??;
        if blacklisted {
            return Ok(true);
        }
        Ok(match revoked_at {
            None => false,
            Some(text) => match parse_utc(&text) {
                Some(revoked_at) => (staff.iat as f64) < revoked_at,
                None => {
                    tracing::warn!(user_id = staff.user_id, value = %text, "unreadable auth:user:revoked value: treating the token as revoked");
                    true
                }
            },
        })
    }

    pub async fn ping(&self) -> Result<(), RevocationError> {
        let mut redis = self.redis.clone();
        tokio::time::timeout(TIMEOUT, redis::cmd("PING").query_async::<String>(&mut redis))
            .await
            .map_err(|_| RevocationError::Timeout)??;
        Ok(())
    }
}

/// Unix seconds of an ISO-8601 time: with an offset (`Z`, `+00:00`) or naive (taken as UTC, as
/// Python's `datetime.utcnow().isoformat()` writes it).
pub fn parse_utc(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros() as f64 / 1e6);
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|t| t.and_utc().timestamp_micros() as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::parse_utc;

    #[test]
    fn reads_the_forms_python_writes() {
        let expected = 1_767_225_600.5; // 2026-01-01T00:00:00.5Z
        for text in [
            "2026-01-01T00:00:00.500000+00:00",
            "2026-01-01T00:00:00.5Z",
            "2026-01-01T00:00:00.500000",
            "2026-01-01 00:00:00.5",
        ] {
            assert_eq!(parse_utc(text), Some(expected), "{text}");
        }
        assert_eq!(parse_utc("2026-01-01T01:00:00+01:00"), Some(1_767_225_600.0));
        assert_eq!(parse_utc("yesterday"), None);
    }
}
