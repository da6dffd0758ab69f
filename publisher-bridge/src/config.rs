//! The bridge's configuration: every environment variable it reads, their defaults and their
//! validation, through [`wire::settings::Parser`] so that tests pass a map and a bad environment
//! reports every problem at once. It does not connect to anything.

use std::net::SocketAddr;
use std::time::Duration;

use wire::natsconn::NatsSettings;
use wire::otel::OtelSettings;
use wire::settings::{ConfigError, LogFormat, Parser};

pub use wire::redisconn::{RedisSettings, REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE, REDIS_URL};
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const BRIDGE_LISTEN_ADDR: &str = "BRIDGE_LISTEN_ADDR";
pub const BRIDGE_INSTANCE_ID: &str = "BRIDGE_INSTANCE_ID";
pub const BRIDGE_STREAM_KEY: &str = "BRIDGE_STREAM_KEY";
pub const BRIDGE_CONSUMER_GROUP: &str = "BRIDGE_CONSUMER_GROUP";
pub const BRIDGE_GROUP_START: &str = "BRIDGE_GROUP_START";
pub const BRIDGE_READ_COUNT: &str = "BRIDGE_READ_COUNT";
pub const BRIDGE_READ_MAX_BYTES: &str = "BRIDGE_READ_MAX_BYTES";
pub const BRIDGE_STALL_TIMEOUT: &str = "BRIDGE_STALL_TIMEOUT";
pub const BRIDGE_CLAIM_IDLE: &str = "BRIDGE_CLAIM_IDLE";
pub const BRIDGE_CLAIM_INTERVAL: &str = "BRIDGE_CLAIM_INTERVAL";
pub const BRIDGE_MAX_IN_FLIGHT: &str = "BRIDGE_MAX_IN_FLIGHT";
pub const BRIDGE_WORKER_THREADS: &str = "BRIDGE_WORKER_THREADS";
pub const BRIDGE_PUBLISH_TIMEOUT: &str = "BRIDGE_PUBLISH_TIMEOUT";
pub const BRIDGE_EVENTS_REPLICAS: &str = "BRIDGE_EVENTS_REPLICAS";
pub const BRIDGE_EVENTS_STORAGE: &str = "BRIDGE_EVENTS_STORAGE";
pub const BRIDGE_EVENTS_MAX_AGE: &str = "BRIDGE_EVENTS_MAX_AGE";
pub const BRIDGE_EVENTS_MAX_BYTES: &str = "BRIDGE_EVENTS_MAX_BYTES";
pub const BRIDGE_EVENTS_MAX_MSG_SIZE: &str = "BRIDGE_EVENTS_MAX_MSG_SIZE";
pub const BRIDGE_DUPLICATE_WINDOW: &str = "BRIDGE_DUPLICATE_WINDOW";
pub const BRIDGE_DLQ_MAX_AGE: &str = "BRIDGE_DLQ_MAX_AGE";
pub const BRIDGE_DLQ_MAX_BYTES: &str = "BRIDGE_DLQ_MAX_BYTES";
pub const BRIDGE_DLQ_MAX_MSG_SIZE: &str = "BRIDGE_DLQ_MAX_MSG_SIZE";
pub const BRIDGE_ADVISORY_DLQ: &str = "BRIDGE_ADVISORY_DLQ";
pub const BRIDGE_STARTUP_TIMEOUT: &str = "BRIDGE_STARTUP_TIMEOUT";
pub const BRIDGE_SHUTDOWN_TIMEOUT: &str = "BRIDGE_SHUTDOWN_TIMEOUT";
pub const BRIDGE_HTTP_HEADER_TIMEOUT: &str = "BRIDGE_HTTP_HEADER_TIMEOUT";
pub const BRIDGE_HTTP_MAX_UNFINISHED: &str = "BRIDGE_HTTP_MAX_UNFINISHED";
pub const BRIDGE_HTTP_MAX_HEAD_BYTES: &str = "BRIDGE_HTTP_MAX_HEAD_BYTES";

/// The bounds of the bridge's HTTP listener.
pub const HTTP_VARS: wire::http_server::HttpVars = wire::http_server::HttpVars {
    header_timeout: BRIDGE_HTTP_HEADER_TIMEOUT,
    max_unfinished: BRIDGE_HTTP_MAX_UNFINISHED,
    max_head_bytes: BRIDGE_HTTP_MAX_HEAD_BYTES,
};

/// Every variable the bridge reads besides the shared `NATS_*` and `OTEL_*` ones (README, helm
/// chart; see `wire::natsconn::VARS` and `wire::otel::VARS`).
pub const VARS: &[&str] = &[
    REDIS_URL,
    REDIS_TLS_CA_FILE,
    REDIS_TLS_CERT_FILE,
    REDIS_TLS_KEY_FILE,
    LOG_FORMAT,
    BRIDGE_LISTEN_ADDR,
    BRIDGE_INSTANCE_ID,
    BRIDGE_STREAM_KEY,
    BRIDGE_CONSUMER_GROUP,
    BRIDGE_GROUP_START,
    BRIDGE_READ_COUNT,
    BRIDGE_READ_MAX_BYTES,
    BRIDGE_STALL_TIMEOUT,
    BRIDGE_CLAIM_IDLE,
    BRIDGE_CLAIM_INTERVAL,
    BRIDGE_MAX_IN_FLIGHT,
    BRIDGE_PUBLISH_TIMEOUT,
    BRIDGE_EVENTS_REPLICAS,
    BRIDGE_EVENTS_STORAGE,
    BRIDGE_EVENTS_MAX_AGE,
    BRIDGE_EVENTS_MAX_BYTES,
    BRIDGE_EVENTS_MAX_MSG_SIZE,
    BRIDGE_DUPLICATE_WINDOW,
    BRIDGE_DLQ_MAX_AGE,
    BRIDGE_DLQ_MAX_BYTES,
    BRIDGE_DLQ_MAX_MSG_SIZE,
    BRIDGE_ADVISORY_DLQ,
    BRIDGE_STARTUP_TIMEOUT,
    BRIDGE_SHUTDOWN_TIMEOUT,
    BRIDGE_WORKER_THREADS,
    BRIDGE_HTTP_HEADER_TIMEOUT,
    BRIDGE_HTTP_MAX_UNFINISHED,
    BRIDGE_HTTP_MAX_HEAD_BYTES,
];

/// The smallest events-stream message size that still fits a maximal event plus headers.
pub const MIN_EVENTS_MSG_SIZE: i32 = wire::envelope::MAX_EVENT_BYTES as i32 + 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// Where a new consumer group starts reading `events:critical`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupStart {
    /// `$`: only entries added after the group was created (default; see [`crate::source::stream`]).
    New,
    /// `0`: the whole retained history of the Redis stream.
    Beginning,
    /// An explicit entry id such as `1700000000000-0`.
    After(String),
}

impl GroupStart {
    pub fn as_redis_id(&self) -> &str {
        match self {
            GroupStart::New => "$",
            GroupStart::Beginning => "0",
            GroupStart::After(id) => id,
        }
    }
}

/// JetStream streams the bridge creates or updates at start.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub replicas: usize,
    pub storage: Storage,
    pub events_max_age: Duration,
    pub events_max_bytes: i64,
    pub events_max_msg_size: i32,
    pub duplicate_window: Duration,
    pub dlq_max_age: Duration,
    pub dlq_max_bytes: i64,
    pub dlq_max_msg_size: i32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            storage: Storage::File,
            events_max_age: Duration::from_secs(24 * 3600),
            events_max_bytes: 1 << 30,
            events_max_msg_size: 128 * 1024,
            duplicate_window: Duration::from_secs(120),
            dlq_max_age: Duration::from_secs(7 * 24 * 3600),
            dlq_max_bytes: 256 << 20,
            dlq_max_msg_size: 1 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `REDIS_URL` and the `REDIS_TLS_*` files: the pub/sub reader, the stream reader, the acks.
    pub redis: RedisSettings,
    pub log_format: LogFormat,
    pub nats: NatsSettings,
    pub listen_addr: SocketAddr,
    pub instance_id: String,
    pub stream_key: String,
    pub consumer_group: String,
    pub group_start: GroupStart,
    pub read_count: usize,
    /// Bytes of stream entries read and not yet finished ([`crate::budget`]).
    pub read_max_bytes: usize,
    /// In flight this long without a finished publish: not ready ([`crate::health`]).
    pub stall_timeout: Duration,
    pub claim_idle: Duration,
    pub claim_interval: Duration,
    pub max_in_flight: usize,
    /// Runtime worker threads; 0: one per CPU available to the process.
    pub worker_threads: usize,
    pub publish_timeout: Duration,
    pub streams: StreamSettings,
    pub advisory_dlq: bool,
    pub startup_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// OTLP trace export (off without an endpoint).
    pub otel: OtelSettings,
    /// Header timeout, unfinished-connection cap and head size of the HTTP listener.
    pub http: wire::http_server::HttpLimits,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut p = Parser::new(lookup);
        let redis = RedisSettings::read(&mut p, "redis://localhost:6380");
        let nats = NatsSettings::read(&mut p, wire::natsconn::BRIDGE_INBOX_PREFIX);
        let default_instance = p.string("HOSTNAME").unwrap_or_else(|| format!("bridge-{}", std::process::id()));
        let instance_id = p.string_or(BRIDGE_INSTANCE_ID, &default_instance);
        let group_start = match p.string_or(BRIDGE_GROUP_START, "$").as_str() {
            "$" | "new" => GroupStart::New,
            "0" | "0-0" | "beginning" => GroupStart::Beginning,
            id if is_entry_id(id) => GroupStart::After(id.to_string()),
            other => {
                p.problem(
                    BRIDGE_GROUP_START,
                    format!("'{other}' is not $, 0 or a stream entry id like 1700000000000-0"),
                );
                GroupStart::New
            }
        };
        let d = StreamSettings::default();
        let storage = match p.string_or(BRIDGE_EVENTS_STORAGE, "file").to_ascii_lowercase().as_str() {
            "file" => Storage::File,
            "memory" => Storage::Memory,
            other => {
                p.problem(BRIDGE_EVENTS_STORAGE, format!("'{other}' is not a storage type (file or memory)"));
                Storage::File
            }
        };
        let streams = StreamSettings {
            replicas: p.number(BRIDGE_EVENTS_REPLICAS, d.replicas, 1..=5),
            storage,
            events_max_age: p.duration(BRIDGE_EVENTS_MAX_AGE, d.events_max_age),
            events_max_bytes: p.number(BRIDGE_EVENTS_MAX_BYTES, d.events_max_bytes, -1..=i64::MAX),
            events_max_msg_size: p.number(
                BRIDGE_EVENTS_MAX_MSG_SIZE,
                d.events_max_msg_size,
                MIN_EVENTS_MSG_SIZE..=64 << 20,
            ),
            duplicate_window: p.duration(BRIDGE_DUPLICATE_WINDOW, d.duplicate_window),
            dlq_max_age: p.duration(BRIDGE_DLQ_MAX_AGE, d.dlq_max_age),
            dlq_max_bytes: p.number(BRIDGE_DLQ_MAX_BYTES, d.dlq_max_bytes, -1..=i64::MAX),
            dlq_max_msg_size: p.number(BRIDGE_DLQ_MAX_MSG_SIZE, d.dlq_max_msg_size, 8192..=64 << 20),
        };
        let claim_idle = p.duration(BRIDGE_CLAIM_IDLE, Duration::from_secs(15));
        let config = Config {
            redis,
            log_format: p.log_format(LOG_FORMAT),
            nats,
            listen_addr: p.socket_addr(BRIDGE_LISTEN_ADDR, "0.0.0.0:9100"),
            instance_id,
            stream_key: p.string_or(BRIDGE_STREAM_KEY, "events:critical"),
            consumer_group: p.string_or(BRIDGE_CONSUMER_GROUP, "publisher_bridge"),
            group_start,
            read_count: p.number(BRIDGE_READ_COUNT, 512, 1..=10_000),
            read_max_bytes: p.number(BRIDGE_READ_MAX_BYTES, 32 << 20, 64 << 10..=4 << 30),
            stall_timeout: p.duration(BRIDGE_STALL_TIMEOUT, Duration::from_secs(30)),
            claim_idle,
            claim_interval: p.duration(BRIDGE_CLAIM_INTERVAL, (claim_idle / 3).max(Duration::from_millis(100))),
            max_in_flight: p.number(BRIDGE_MAX_IN_FLIGHT, 1024, 1..=65_536),
            worker_threads: p.number(BRIDGE_WORKER_THREADS, 0, 0..=1024),
            publish_timeout: p.duration(BRIDGE_PUBLISH_TIMEOUT, Duration::from_secs(5)),
            streams,
            advisory_dlq: p.bool(BRIDGE_ADVISORY_DLQ, true),
            startup_timeout: p.duration(BRIDGE_STARTUP_TIMEOUT, Duration::from_secs(10)),
            shutdown_timeout: p.duration(BRIDGE_SHUTDOWN_TIMEOUT, Duration::from_secs(20)),
            otel: OtelSettings::read(&mut p),
            http: wire::http_server::HttpLimits::read(&mut p, &HTTP_VARS),
        };
        config.cross_check(&mut p);
        p.finish(config)
    }

    /// Rules between variables.
    fn cross_check<F: Fn(&str) -> Option<String>>(&self, p: &mut Parser<F>) {
        let s = &self.streams;
        if s.duplicate_window < Duration::from_secs(60) {
            p.problem(BRIDGE_DUPLICATE_WINDOW, "must be at least 60 s (protocol section 6)");
        }
        if s.duplicate_window > s.events_max_age {
            p.problem(BRIDGE_DUPLICATE_WINDOW, "must not exceed BRIDGE_EVENTS_MAX_AGE");
        }
        if s.duplicate_window > s.dlq_max_age {
            p.problem(BRIDGE_DUPLICATE_WINDOW, "must not exceed BRIDGE_DLQ_MAX_AGE");
        }
        // A taken-over entry must be re-published while JetStream still remembers its msg-id.
        if self.claim_idle + self.claim_interval + self.publish_timeout >= s.duplicate_window / 2 {
            p.problem(BRIDGE_CLAIM_IDLE, "BRIDGE_CLAIM_IDLE + BRIDGE_CLAIM_INTERVAL + BRIDGE_PUBLISH_TIMEOUT must stay under half of BRIDGE_DUPLICATE_WINDOW");
        }
        if self.stall_timeout < Duration::from_secs(1) {
            p.problem(BRIDGE_STALL_TIMEOUT, "must be at least 1 s");
        }
        if self.claim_idle <= self.publish_timeout * 2 {
            p.problem(BRIDGE_CLAIM_IDLE, "must be more than twice BRIDGE_PUBLISH_TIMEOUT, or healthy replicas steal each other's in-flight entries");
        }
        for (var, value) in [
            (BRIDGE_STREAM_KEY, &self.stream_key),
            (BRIDGE_CONSUMER_GROUP, &self.consumer_group),
            (BRIDGE_INSTANCE_ID, &self.instance_id),
        ] {
            if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.problem(var, format!("'{value}' must not contain spaces"));
            }
        }
    }

    /// One log line's worth of effective settings, secrets masked.
    pub fn summary(&self) -> String {
        let s = &self.streams;
        format!(
            "redis={} nats={} listen={} instance={} stream_key={} group={} group_start={} read_count={} read_max_bytes={} stall_timeout={:?} claim_idle={:?} \
             claim_interval={:?} max_in_flight={} publish_timeout={:?} replicas={} storage={:?} events_max_age={:?} \
             events_max_bytes={} events_max_msg_size={} duplicate_window={:?} dlq_max_age={:?} dlq_max_bytes={} \
             dlq_max_msg_size={} advisory_dlq={} shutdown_timeout={:?} traces={}",
            mask_url(self.redis.url.expose()),
            mask_url(&self.nats.urls.join(",")),
            self.listen_addr,
            self.instance_id,
            self.stream_key,
            self.consumer_group,
            self.group_start.as_redis_id(),
            self.read_count,
            self.read_max_bytes,
            self.stall_timeout,
            self.claim_idle,
            self.claim_interval,
            self.max_in_flight,
            self.publish_timeout,
            s.replicas,
            s.storage,
            s.events_max_age,
            s.events_max_bytes,
            s.events_max_msg_size,
            s.duplicate_window,
            s.dlq_max_age,
            s.dlq_max_bytes,
            s.dlq_max_msg_size,
            self.advisory_dlq,
            self.shutdown_timeout,
            wire::settings::redact(&self.otel.summary()),
        )
    }
}

fn is_entry_id(id: &str) -> bool {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    [ms, seq].iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// `redis://user:secret@host` → `redis://user:***@host` (shared with the gateway).
pub use wire::settings::mask_url;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `pairs` over NATS credentials (production refuses to run without them).
    fn read(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let creds = [("NATS_USER", "bridge"), ("NATS_PASSWORD", "pw")];
        let map: HashMap<String, String> =
            creds.iter().chain(pairs).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn production_refuses_anonymous_nats_unless_waived() {
        let anonymous = |extra: &[(&str, &str)]| {
            let map: HashMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Config::from_lookup(move |k| map.get(k).cloned())
        };
        let err = anonymous(&[]).unwrap_err();
        assert!(err.names("NATS_USER") && err.0.len() == 1, "{err}");
        assert!(anonymous(&[("NATS_ALLOW_ANONYMOUS", "true")]).is_ok());
        assert!(anonymous(&[("ENVIRONMENT", "development")]).is_ok());
        assert_eq!(read(&[]).unwrap().nats.inbox_prefix, "_INBOX.bridge");
    }

    #[test]
    fn defaults() {
        let c = read(&[("HOSTNAME", "pod-7")]).unwrap();
        assert_eq!(c.redis.url.expose(), "redis://localhost:6380");
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:9100");
        assert_eq!(c.instance_id, "pod-7");
        assert_eq!(c.stream_key, "events:critical");
        assert_eq!(c.consumer_group, "publisher_bridge");
        assert_eq!(c.group_start, GroupStart::New);
        assert_eq!(c.claim_idle, Duration::from_secs(15));
        assert_eq!(c.claim_interval, Duration::from_secs(5));
        assert_eq!(c.max_in_flight, 1024);
        assert_eq!(c.read_max_bytes, 32 << 20);
        assert_eq!(c.stall_timeout, Duration::from_secs(30));
        assert_eq!(c.streams, StreamSettings::default());
        assert!(c.advisory_dlq);
    }

    #[test]
    fn reads_every_setting() {
        let c = read(&[
            (REDIS_URL, "redis://:pw@r:6379/2"),
            (BRIDGE_INSTANCE_ID, "b1"),
            (BRIDGE_GROUP_START, "0"),
            (BRIDGE_EVENTS_REPLICAS, "3"),
            (BRIDGE_EVENTS_STORAGE, "memory"),
            (BRIDGE_EVENTS_MAX_AGE, "2h"),
            (BRIDGE_DUPLICATE_WINDOW, "5m"),
            (BRIDGE_MAX_IN_FLIGHT, "64"),
            (BRIDGE_CLAIM_IDLE, "30s"),
        ])
        .unwrap();
        assert_eq!(c.instance_id, "b1");
        assert_eq!(c.group_start, GroupStart::Beginning);
        assert_eq!(c.streams.replicas, 3);
        assert_eq!(c.streams.storage, Storage::Memory);
        assert_eq!(c.streams.events_max_age, Duration::from_secs(7200));
        assert_eq!(c.streams.duplicate_window, Duration::from_secs(300));
        assert_eq!(c.claim_interval, Duration::from_secs(10));
        assert!(!c.summary().contains("pw"), "{}", c.summary());
    }

    #[test]
    fn reports_every_problem() {
        let err = read(&[
            (REDIS_URL, "http://nope"),
            (BRIDGE_EVENTS_REPLICAS, "7"),
            (BRIDGE_EVENTS_STORAGE, "tape"),
            (BRIDGE_DUPLICATE_WINDOW, "30s"),
            (BRIDGE_GROUP_START, "yesterday"),
            (BRIDGE_EVENTS_MAX_MSG_SIZE, "1000"),
            (BRIDGE_READ_MAX_BYTES, "100"),
            (BRIDGE_STALL_TIMEOUT, "10ms"),
        ])
        .unwrap_err();
        for var in [
            REDIS_URL,
            BRIDGE_EVENTS_REPLICAS,
            BRIDGE_EVENTS_STORAGE,
            BRIDGE_DUPLICATE_WINDOW,
            BRIDGE_GROUP_START,
            BRIDGE_EVENTS_MAX_MSG_SIZE,
            BRIDGE_READ_MAX_BYTES,
            BRIDGE_STALL_TIMEOUT,
        ] {
            assert!(err.names(var), "{var} missing from {err}");
        }
    }

    #[test]
    fn claim_idle_must_fit_the_duplicate_window() {
        assert!(read(&[(BRIDGE_CLAIM_IDLE, "90s")]).unwrap_err().names(BRIDGE_CLAIM_IDLE));
        assert!(read(&[(BRIDGE_CLAIM_IDLE, "5s")]).unwrap_err().names(BRIDGE_CLAIM_IDLE));
        assert!(read(&[(BRIDGE_CLAIM_IDLE, "90s"), (BRIDGE_DUPLICATE_WINDOW, "10m")]).is_ok());
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(mask_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(mask_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn the_start_line_and_the_debug_form_show_no_password() {
        let c = read(&[
            (REDIS_URL, "redis://:redis-pw@r:6379/0"),
            ("NATS_URL", "nats://bridge:nats-pw@n1:4222,nats://n2:4222"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:otel-pw@collector:4318"),
        ])
        .unwrap();
        let summary = c.summary();
        for pw in ["redis-pw", "nats-pw", "otel-pw"] {
            assert!(!summary.contains(pw), "{summary}");
        }
        assert!(
            summary.contains("redis=redis://:***@r:6379/0 nats=nats://bridge:***@n1:4222,nats://n2:4222"),
            "{summary}"
        );
        let debug = wire::settings::redact(&format!("{c:?}"));
        assert!(!debug.contains("redis-pw") && !debug.contains("nats-pw") && !debug.contains("otel-pw"), "{debug}");
    }
}
