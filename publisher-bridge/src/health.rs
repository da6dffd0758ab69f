//! Readiness state: which dependencies are up (Redis pub/sub reader, Redis stream reader, NATS,
//! streams ensured) and the drain latch that turns readiness off before shutdown. It mirrors
//! connection state into the `bridge_*_connected` gauges; it does not serve HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::metrics::{Metrics, RedisConn};

pub struct Health {
    metrics: Arc<Metrics>,
    redis_pubsub: AtomicBool,
    redis_stream: AtomicBool,
    nats: AtomicBool,
    streams: AtomicBool,
    draining: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    RedisPubsub,
    RedisStream,
    Nats,
    Streams,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Health {
        Health {
            metrics,
            redis_pubsub: AtomicBool::new(false),
            redis_stream: AtomicBool::new(false),
            nats: AtomicBool::new(false),
            streams: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn set(&self, dependency: Dependency, up: bool) {
        let flag = match dependency {
            Dependency::RedisPubsub => {
                self.metrics.set_redis_connected(RedisConn::Pubsub, up);
                &self.redis_pubsub
            }
            Dependency::RedisStream => {
                self.metrics.set_redis_connected(RedisConn::Stream, up);
                &self.redis_stream
            }
            Dependency::Nats => {
                self.metrics.nats_connected.set(up as i64);
                &self.nats
            }
            Dependency::Streams => &self.streams,
        };
        flag.store(up, Ordering::Relaxed);
    }

    /// Readiness off for good: the process is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the bridge is ready, and a JSON body naming each dependency's state.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let get = |flag: &AtomicBool| flag.load(Ordering::Relaxed);
        let checks = [
            ("redis_pubsub", get(&self.redis_pubsub)),
            ("redis_stream", get(&self.redis_stream)),
            ("nats", get(&self.nats)),
            ("jetstream_streams", get(&self.streams)),
        ];
        let draining = get(&self.draining);
        let ready = !draining && checks.iter().all(|(_, up)| *up);
        let down: Vec<&str> = checks.iter().filter(|(_, up)| !up).map(|(name, _)| *name).collect();
        let body = json!({
            "status": if ready { "ready" } else if draining { "draining" } else { "not_ready" },
            "down": down,
            "checks": checks.iter().map(|(name, up)| (name.to_string(), json!(if *up { "up" } else { "down" }))).collect::<serde_json::Map<_, _>>(),
        });
        (ready, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_everything_is_up_and_not_draining() {
        let h = Health::new(Arc::new(Metrics::new()));
        assert!(!h.readiness().0);
        for d in [Dependency::RedisPubsub, Dependency::RedisStream, Dependency::Nats] {
            h.set(d, true);
        }
        let (ready, body) = h.readiness();
        assert!(!ready);
        assert_eq!(body["down"], json!(["jetstream_streams"]));
        h.set(Dependency::Streams, true);
        assert!(h.readiness().0);
        h.start_draining();
        assert_eq!(h.readiness().1["status"], "draining");
    }
}
