//! Names of every environment variable the gateway reads. README's configuration table lists
//! the same names with their defaults.

// Shared with the old gateway (protocol section 1).
pub const JWT_SECRET: &str = "JWT_SECRET";
pub const JWT_ISSUER: &str = "JWT_ISSUER";
pub const JWT_AUDIENCE: &str = "JWT_AUDIENCE";
pub const TABLE_TOKEN_SECRET: &str = "TABLE_TOKEN_SECRET";
pub const ALLOW_LEGACY_TABLE_TOKENS: &str = "ALLOW_LEGACY_TABLE_TOKENS";
pub const ALLOWED_ORIGINS: &str = "ALLOWED_ORIGINS";
pub const ENVIRONMENT: &str = "ENVIRONMENT";
pub const PRODUCTION_CHECK: &str = "PRODUCTION_CHECK";
pub use wire::redisconn::{REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE, REDIS_URL};
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const WS_MAX_CONNECTIONS_PER_USER: &str = "WS_MAX_CONNECTIONS_PER_USER";
pub const WS_MAX_TOTAL_CONNECTIONS: &str = "WS_MAX_TOTAL_CONNECTIONS";
pub const WS_MESSAGE_RATE_LIMIT: &str = "WS_MESSAGE_RATE_LIMIT";
pub const WS_MESSAGE_RATE_WINDOW: &str = "WS_MESSAGE_RATE_WINDOW";
pub const WS_MAX_MESSAGE_SIZE: &str = "WS_MAX_MESSAGE_SIZE";
pub const WS_HEARTBEAT_TIMEOUT: &str = "WS_HEARTBEAT_TIMEOUT";

// The gateway's own.
pub const WS_MAX_CONNECTIONS_PER_SESSION: &str = "WS_MAX_CONNECTIONS_PER_SESSION";
pub const WS_TOKEN_RECHECK_INTERVAL: &str = "WS_TOKEN_RECHECK_INTERVAL";
pub const WS_DINER_RECHECK_INTERVAL: &str = "WS_DINER_RECHECK_INTERVAL";
pub const REVOCATION_FAIL_OPEN: &str = "REVOCATION_FAIL_OPEN";
pub const WS_SECTOR_CACHE_TTL: &str = "WS_SECTOR_CACHE_TTL";
pub const WS_SEND_QUEUE_SIZE: &str = "WS_SEND_QUEUE_SIZE";
pub const WS_WRITE_TIMEOUT: &str = "WS_WRITE_TIMEOUT";
pub const WS_READ_BUFFER_SIZE: &str = "WS_READ_BUFFER_SIZE";
pub const WS_WRITE_BUFFER_SIZE: &str = "WS_WRITE_BUFFER_SIZE";
pub const GATEWAY_LISTEN_ADDR: &str = "GATEWAY_LISTEN_ADDR";
pub const GATEWAY_INSTANCE_ID: &str = "GATEWAY_INSTANCE_ID";
pub const GATEWAY_WORKER_THREADS: &str = "GATEWAY_WORKER_THREADS";
pub const GATEWAY_UNSUBSCRIBE_DELAY: &str = "GATEWAY_UNSUBSCRIBE_DELAY";
pub const GATEWAY_DEDUP_WINDOW: &str = "GATEWAY_DEDUP_WINDOW";
pub const GATEWAY_RESUME_MAX_EVENTS: &str = "GATEWAY_RESUME_MAX_EVENTS";
pub const GATEWAY_CATCHUP_MAX_EVENTS: &str = "GATEWAY_CATCHUP_MAX_EVENTS";
pub const GATEWAY_CATCHUP_MAX_AGE: &str = "GATEWAY_CATCHUP_MAX_AGE";
pub const GATEWAY_CATCHUP_MAX_BYTES: &str = "GATEWAY_CATCHUP_MAX_BYTES";
pub const GATEWAY_CATCHUP_PER_CALLER: &str = "GATEWAY_CATCHUP_PER_CALLER";
pub const GATEWAY_CATCHUP_CONCURRENCY: &str = "GATEWAY_CATCHUP_CONCURRENCY";
pub const GATEWAY_DRAIN_WINDOW: &str = "GATEWAY_DRAIN_WINDOW";
pub const GATEWAY_SHUTDOWN_TIMEOUT: &str = "GATEWAY_SHUTDOWN_TIMEOUT";
pub const GATEWAY_ADMIN_LISTEN_ADDR: &str = "GATEWAY_ADMIN_LISTEN_ADDR";
pub const GATEWAY_ADMIN_TOKEN: &str = "GATEWAY_ADMIN_TOKEN";
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const GATEWAY_HTTP_HEADER_TIMEOUT: &str = "GATEWAY_HTTP_HEADER_TIMEOUT";
pub const GATEWAY_HTTP_MAX_UNFINISHED: &str = "GATEWAY_HTTP_MAX_UNFINISHED";
pub const GATEWAY_HTTP_MAX_HEAD_BYTES: &str = "GATEWAY_HTTP_MAX_HEAD_BYTES";

/// The bounds of the public and admin listeners.
pub const HTTP_VARS: wire::http_server::HttpVars = wire::http_server::HttpVars {
    header_timeout: GATEWAY_HTTP_HEADER_TIMEOUT,
    max_unfinished: GATEWAY_HTTP_MAX_UNFINISHED,
    max_head_bytes: GATEWAY_HTTP_MAX_HEAD_BYTES,
};

// NATS_* variables are shared with the bridge: see `wire::natsconn`; so are the OTEL_* ones:
// see `wire::otel`.
