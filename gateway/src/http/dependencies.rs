//! The last round of dependency checks behind `/ws/health/detailed`: the endpoint is
//! unauthenticated, and each round costs a JetStream request, a Redis PING and a database query,
//! so at most one round runs per [`DEPENDENCIES_TTL`] however many requests come (the others
//! wait for it and share its answer). What a round checks is the caller's (`crate::http`).

use serde_json::Value;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How long one round of dependency checks answers `/ws/health/detailed`.
pub const DEPENDENCIES_TTL: Duration = Duration::from_secs(1);

/// Whether every dependency was up, and their states, as of the last round.
#[derive(Default)]
pub struct DependencyCache(tokio::sync::Mutex<Option<(Instant, bool, Value)>>);

impl DependencyCache {
    /// The last round's answer while it is fresh, else `check`'s (which becomes the last round).
    pub async fn get(&self, check: impl Future<Output = (bool, Value)>) -> (bool, Value) {
        let mut last = self.0.lock().await;
        if let Some((at, healthy, deps)) = last.as_ref() {
            if at.elapsed() < DEPENDENCIES_TTL {
                return (*healthy, deps.clone());
            }
        }
        let (healthy, deps) = check.await;
        *last = Some((Instant::now(), healthy, deps.clone()));
        (healthy, deps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn one_round_per_ttl() {
        let cache = DependencyCache::default();
        assert_eq!(cache.get(async { (true, json!(1)) }).await, (true, json!(1)));
        assert_eq!(cache.get(async { (false, json!(2)) }).await, (true, json!(1)), "fresh: not checked again");
        tokio::time::advance(DEPENDENCIES_TTL).await;
        assert_eq!(cache.get(async { (false, json!(3)) }).await, (false, json!(3)), "stale: checked again");
    }
}
