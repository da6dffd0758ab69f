//! Readiness state: which dependencies are up (Redis pub/sub reader, Redis stream reader, NATS,
//! streams ensured), whether the pipeline makes progress, and the drain latch that turns
//! readiness off before shutdown. It mirrors connection state into the `bridge_*_connected`
//! gauges; it does not serve HTTP.
//!
//! Progress: the pipeline calls [`Health::progressed`] whenever a publish is finished (stored,
//! dead-lettered or dropped) and when it turns busy after being idle. The bridge is stalled, and
//! not ready, while publishes are in flight and none finished for `BRIDGE_STALL_TIMEOUT`
//! (NATS refusing everything, a stream gone, every slot held by retries); it is ready again as
//! soon as one finishes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::metrics::{Metrics, RedisConn};

pub struct Health {
    metrics: Arc<Metrics>,
    redis_pubsub: AtomicBool,
    redis_stream: AtomicBool,
    nats: AtomicBool,
    streams: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since `start` of the last progress.
    progress_ms: AtomicU64,
    start: Instant,
    stall_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    RedisPubsub,
    RedisStream,
    Nats,
    Streams,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>, stall_after: Duration) -> Health {
        Health {
            progress_ms: AtomicU64::new(0),
            start: Instant::now(),
            stall_after,
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

    /// A publish finished, or the pipeline turned busy.
    pub fn progressed(&self) {
        self.progress_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long publishes have been in flight without one finishing; `None` when nothing is in
    /// flight or the last one finished within `BRIDGE_STALL_TIMEOUT`.
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.metrics.in_flight.get() <= 0 {
            return None;
        }
        let since =
            self.start.elapsed().saturating_sub(Duration::from_millis(self.progress_ms.load(Ordering::Relaxed)));
        (since >= self.stall_after).then_some(since)
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
        let stalled = self.stalled_for();
        let draining = get(&self.draining);
        let ready = !draining && stalled.is_none() && checks.iter().all(|(_, up)| *up);
        let mut down: Vec<&str> = checks.iter().filter(|(_, up)| !up).map(|(name, _)| *name).collect();
        if stalled.is_some() {
            down.push("pipeline");
        }
        let body = json!({
            "status": if ready { "ready" } else if draining { "draining" } else { "not_ready" },
            "down": down,
            "pipeline": match stalled {
                None => json!("progressing"),
                Some(since) => json!(format!("stalled: {} publishes in flight, none finished for {} s", self.metrics.in_flight.get(), since.as_secs())),
            },
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
        let h = Health::new(Arc::new(Metrics::new()), Duration::from_secs(30));
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

    #[test]
    fn stalled_while_in_flight_without_progress() {
        let metrics = Arc::new(Metrics::new());
        let h = Health::new(metrics.clone(), Duration::from_millis(30));
        for d in [Dependency::RedisPubsub, Dependency::RedisStream, Dependency::Nats, Dependency::Streams] {
            h.set(d, true);
        }
        std::thread::sleep(Duration::from_millis(40));
        assert!(h.readiness().0, "idle is not stalled, however long");
        metrics.in_flight.inc();
        h.progressed();
        assert!(h.readiness().0, "busy since just now");
        std::thread::sleep(Duration::from_millis(40));
        let (ready, body) = h.readiness();
        assert!(!ready);
        assert_eq!(body["down"], json!(["pipeline"]));
        assert!(body["pipeline"].as_str().unwrap().starts_with("stalled: 1 publishes"), "{body}");
        h.progressed();
        assert!(h.readiness().0, "one finished publish is progress");
    }
}
