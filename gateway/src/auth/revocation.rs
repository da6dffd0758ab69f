//! Token revocation as the backend records it in Redis (protocol section 3):
//! `auth:token:blacklist:{jti}` exists, or `auth:user:revoked:{user_id}` holds an ISO-8601 UTC
//! time after the token's `iat`. Both keys are read in one round trip. Whether a Redis failure
//! counts as revoked is the caller's policy (`REVOCATION_FAIL_OPEN`).

use super::Staff;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis key the backend writes when it blacklists one token.
pub const BLACKLIST_PREFIX: &str = "auth:token:blacklist:";
/// The Redis key the backend writes when it revokes every token of a user issued before a time.
pub const USER_REVOKED_PREFIX: &str = "auth:user:revoked:";

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("Redis did not answer within {TIMEOUT:?}")]
    Timeout,
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Settings(#[from] wire::redisconn::RedisConnError),
}

/// Whether `e` says the connection is broken, rather than that Redis answered with an error:
/// only then can another connection do better.
fn connection_broken(e: &redis::RedisError) -> bool {
    !matches!(e.kind(), redis::ErrorKind::Server(_))
}

/// What a revocation look-up needs from a staff token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    pub user_id: u64,
    pub jti: Option<Box<str>>,
    /// Unix seconds; 0 when the token had no `iat`.
    pub iat: i64,
}

impl From<&Staff> for TokenRef {
    fn from(staff: &Staff) -> TokenRef {
        TokenRef { user_id: staff.user_id, jti: staff.jti.as_deref().map(Box::from), iat: staff.iat }
    }
}

#[derive(Clone)]
pub struct Revocation {
    client: redis::Client,
    redis: ConnectionManager,
}

impl Revocation {
    /// Connects to Redis; fails if the first connection cannot be made, then reconnects by itself.
    pub async fn connect(settings: &wire::redisconn::RedisSettings) -> Result<Revocation, RevocationError> {
        let client = settings.client()?;
        // One plain attempt first: the manager retries a refused connection (a wrong CA, a
        // missing client certificate, a wrong password) until the timeout and reports only that.
        let first = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        tokio::time::timeout(TIMEOUT * 2, client.get_multiplexed_async_connection_with_config(&first))
            .await
            .map_err(|_| RevocationError::Timeout)??;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(5));
        let redis = tokio::time::timeout(TIMEOUT * 3, ConnectionManager::new_with_config(client.clone(), config))
            .await
            .map_err(|_| RevocationError::Timeout)??;
        Ok(Revocation { client, redis })
    }

    /// The client the connections are made from (the push subscriber opens its own).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether `staff`'s token has been revoked.
    pub async fn is_revoked(&self, staff: &Staff) -> Result<bool, RevocationError> {
        self.check(&TokenRef::from(staff)).await
    }

    /// Whether the token has been revoked. A look-up that fails on a broken connection (Redis
    /// restarted, a connection cut) is retried once on a fresh connection, so a Redis restart
    /// does not turn into a refusal; only a second failure is returned.
    pub async fn check(&self, token: &TokenRef) -> Result<bool, RevocationError> {
        Ok(verdict(token, self.ask(&pipeline(token)).await?))
    }

    /// `pipe`'s answer from the shared connection, or, when that one is broken, once more from a
    /// fresh connection; Redis's own refusals are returned as they are.
    async fn ask<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, RevocationError> {
        let mut redis = self.redis.clone();
        match tokio::time::timeout(TIMEOUT, pipe.query_async(&mut redis)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) if !connection_broken(&e) => Err(e.into()),
            _ => {
                tracing::debug!("Redis request failed on the shared connection: retrying on a fresh one");
                let mut fresh = self.fresh().await?;
                Ok(tokio::time::timeout(TIMEOUT, pipe.query_async(&mut fresh))
                    .await
                    .map_err(|_| RevocationError::Timeout)??)
            }
        }
    }

    /// A new connection of its own, outside the shared manager (which reconnects by itself).
    async fn fresh(&self) -> Result<MultiplexedConnection, RevocationError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        Ok(tokio::time::timeout(TIMEOUT, self.client.get_multiplexed_async_connection_with_config(&config))
            .await
            .map_err(|_| RevocationError::Timeout)??)
    }

    pub async fn ping(&self) -> Result<(), RevocationError> {
        let mut redis = self.redis.clone();
        tokio::time::timeout(TIMEOUT, redis::cmd("PING").query_async::<String>(&mut redis))
            .await
            .map_err(|_| RevocationError::Timeout)??;
        Ok(())
    }

    /// `CONFIG GET notify-keyspace-events`: `Ok(None)` when Redis does not say (managed Redis
    /// often refuses `CONFIG`).
    ///
    /// Asked like a look-up ([`Revocation::ask`]): right after a Redis restart the push
    /// subscriber asks this first, and an error would report push revocation as `unknown` until
    /// its next check.
    pub async fn notify_keyspace_events(&self) -> Result<Option<String>, RevocationError> {
        let mut get = redis::pipe();
        get.cmd("CONFIG").arg("GET").arg("notify-keyspace-events");
        let (answer,): (std::collections::HashMap<String, String>,) = self.ask(&get).await?;
        Ok(answer.get("notify-keyspace-events").cloned())
    }
}

/// Both keys in one round trip: `EXISTS auth:token:blacklist:{jti}` (an `ECHO 0` without a jti)
/// and `GET auth:user:revoked:{user_id}`.
fn pipeline(token: &TokenRef) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    match &token.jti {
        Some(jti) => pipe.exists(format!("{BLACKLIST_PREFIX}{jti}")),
        None => pipe.cmd("ECHO").arg(0),
    };
    pipe.get(format!("{USER_REVOKED_PREFIX}{}", token.user_id));
    pipe
}

fn verdict(token: &TokenRef, (blacklisted, revoked_at): (bool, Option<String>)) -> bool {
    if blacklisted {
        return true;
    }
    match revoked_at {
        None => false,
        Some(text) => match parse_utc(&text) {
            Some(revoked_at) => (token.iat as f64) < revoked_at,
            None => {
                tracing::warn!(user_id = token.user_id, value = %text, "unreadable auth:user:revoked value: treating the token as revoked");
                true
            }
        },
    }
}

/// Unix seconds of an ISO-8601 time: with an offset (`Z`, `+00:00`) or naive (taken as UTC, as
/// Python's `datetime.utcnow().isoformat()` writes it).
pub fn parse_utc(text: &str) -> Option<f64> {
    use time::macros::format_description;
    let text = text.trim();
    let unix = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000) as f64 / 1e6;
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Some(unix(t));
    }
    let naive = [
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"),
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]"),
    ];
    naive.iter().find_map(|format| time::PrimitiveDateTime::parse(text, format).ok()).map(|t| unix(t.assume_utc()))
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
        assert_eq!(parse_utc("2026-01-01T00:00:00"), Some(1_767_225_600.0));
        assert_eq!(parse_utc("2026-01-01 00:00:00.000001"), Some(1_767_225_600.000001));
        assert_eq!(parse_utc("yesterday"), None);
        assert_eq!(parse_utc("2026-01-01"), None);
    }
}
