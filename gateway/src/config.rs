//! Typed gateway configuration, read once at start from the environment the old gateway used
//! (protocol section 1) plus the gateway's own variables. Parsing goes through a lookup function
//! so tests pass a map; every problem is collected and reported at once. It does not read files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;
use wire::http_server::HttpLimits;
use wire::natsconn::NatsSettings;
use wire::otel::OtelSettings;
pub use wire::redisconn::RedisSettings;
use wire::settings::Parser;
pub use wire::settings::{ConfigError, LogFormat, Secret, SecretUrl};

mod vars;

pub use vars::*;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub instance_id: String,
    /// Runtime worker threads; 0: one per CPU available to the process.
    pub worker_threads: usize,
    pub auth: AuthConfig,
    pub limits: Limits,
    /// `REDIS_URL` and the `REDIS_TLS_*` files: revocation look-ups and their push channel.
    pub redis: RedisSettings,
    /// Admit staff when Redis cannot answer the revocation check (default: refuse).
    pub revocation_fail_open: bool,
    pub database_url: Option<SecretUrl>,
    pub sector_cache_ttl: Duration,
    pub nats: NatsSettings,
    /// How long a tenant's subscription outlives its last connection.
    pub unsubscribe_delay: Duration,
    /// How long the same event text counts as the same event.
    pub dedup_window: Duration,
    /// A resume that would replay more events than this gets the gap signal instead.
    pub resume_max_events: u64,
    /// Catch-up endpoints: at most this many events, from at most this far back.
    pub catchup_max_events: usize,
    pub catchup_max_age: Duration,
    /// Catch-up answers hold at most this many bytes of events.
    pub catchup_max_bytes: usize,
    /// Catch-up requests in progress per caller, and in all.
    pub catchup_per_caller: usize,
    pub catchup_concurrency: usize,
    /// Closes of a drain are spread over this window.
    pub drain_window: Duration,
    /// The whole shutdown (drain included) ends within this.
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// The admin API's listener (a separate port, never behind the public Service).
    pub admin_listen_addr: SocketAddr,
    /// Bearer token of the admin API; the API is off without it.
    pub admin_token: Option<Secret>,
    /// OTLP trace export (off without an endpoint).
    pub otel: OtelSettings,
    /// Header timeout, unfinished-connection cap and head size of the public and admin listeners.
    pub http: HttpLimits,
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: Secret,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub table_token_secret: Secret,
    pub allow_legacy_table_tokens: bool,
    pub allowed_origins: Vec<String>,
    /// Origins whose browsers may read the HTTP endpoints' answers (CORS): `ALLOWED_ORIGINS`,
    /// or when it is unset the default origins and their `https://` variants (protocol
    /// section 7, as the old gateway had it).
    pub cors_origins: Vec<String>,
    /// `ENVIRONMENT=development` and `PRODUCTION_CHECK` unset.
    pub allow_missing_origin: bool,
    pub staff_recheck_interval: Duration,
    pub diner_recheck_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections_per_user: usize,
    pub max_connections_per_session: usize,
    pub max_total_connections: usize,
    pub message_rate_limit: u32,
    pub message_rate_window: Duration,
    pub max_message_size: usize,
    pub heartbeat_timeout: Duration,
    pub send_queue_size: usize,
    pub write_timeout: Duration,
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads a map of variables (tests).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| map.get(name).cloned())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut p = Parser::new(lookup);
        let development = p.string_or(ENVIRONMENT, "production").eq_ignore_ascii_case("development");
        let production_check = p.raw(PRODUCTION_CHECK).is_some();
        let allowed_origins = p.list(ALLOWED_ORIGINS);
        let cors_origins = allowed_origins.clone().unwrap_or_else(default_cors_origins);
        let config = Config {
            listen_addr: p.socket_addr(GATEWAY_LISTEN_ADDR, "0.0.0.0:8001"),
            instance_id: p.string(GATEWAY_INSTANCE_ID).unwrap_or_else(default_instance_id),
            worker_threads: p.number(GATEWAY_WORKER_THREADS, 0, 0..=1024),
            auth: AuthConfig {
                jwt_secret: p.required_secret(JWT_SECRET, "the HS256 key the backend signs staff tokens with"),
                jwt_issuer: p.string_or(JWT_ISSUER, "menu-ops"),
                jwt_audience: p.string_or(JWT_AUDIENCE, "menu-ops-users"),
                table_token_secret: p
                    .required_secret(TABLE_TOKEN_SECRET, "the key the backend signs table tokens with"),
                allow_legacy_table_tokens: p.bool(ALLOW_LEGACY_TABLE_TOKENS, true),
                allowed_origins: allowed_origins.unwrap_or_else(default_origins),
                cors_origins,
                allow_missing_origin: development && !production_check,
                staff_recheck_interval: p.duration(WS_TOKEN_RECHECK_INTERVAL, Duration::from_secs(300)),
                diner_recheck_interval: p.duration(WS_DINER_RECHECK_INTERVAL, Duration::from_secs(1800)),
            },
            limits: Limits {
                max_connections_per_user: p.number(WS_MAX_CONNECTIONS_PER_USER, 3, 1..=1000),
                max_connections_per_session: p.number(WS_MAX_CONNECTIONS_PER_SESSION, 12, 1..=1000),
                max_total_connections: p.number(WS_MAX_TOTAL_CONNECTIONS, 15_000, 1..=10_000_000),
                message_rate_limit: p.number(WS_MESSAGE_RATE_LIMIT, 30, 1..=1_000_000),
                message_rate_window: p.duration(WS_MESSAGE_RATE_WINDOW, Duration::from_secs(1)),
                max_message_size: p.number(WS_MAX_MESSAGE_SIZE, 65_536, 16..=16 << 20),
                heartbeat_timeout: p.duration(WS_HEARTBEAT_TIMEOUT, Duration::from_secs(60)),
                send_queue_size: p.number(WS_SEND_QUEUE_SIZE, 256, 1..=1_000_000),
                write_timeout: p.duration(WS_WRITE_TIMEOUT, Duration::from_secs(10)),
                read_buffer_size: p.number(WS_READ_BUFFER_SIZE, 256, 64..=1 << 20),
                write_buffer_size: p.number(WS_WRITE_BUFFER_SIZE, 0, 0..=1 << 20),
            },
            redis: RedisSettings::read(&mut p, "redis://localhost:6380"),
            revocation_fail_open: p.bool(REVOCATION_FAIL_OPEN, false),
            database_url: p.string(DATABASE_URL).and_then(|url| {
                let checked = database_url(&url);
                p.check(DATABASE_URL, checked).map(SecretUrl::new)
            }),
            sector_cache_ttl: p.duration(WS_SECTOR_CACHE_TTL, Duration::from_secs(60)),
            nats: NatsSettings::read(&mut p, wire::natsconn::GATEWAY_INBOX_PREFIX),
            unsubscribe_delay: p.duration(GATEWAY_UNSUBSCRIBE_DELAY, Duration::from_secs(30)),
            dedup_window: p.duration(GATEWAY_DEDUP_WINDOW, Duration::from_secs(120)),
            resume_max_events: p.number(GATEWAY_RESUME_MAX_EVENTS, 10_000, 1..=10_000_000),
            catchup_max_events: p.number(GATEWAY_CATCHUP_MAX_EVENTS, 1_000, 1..=100_000),
            catchup_max_age: p.duration(GATEWAY_CATCHUP_MAX_AGE, Duration::from_secs(3600)),
            catchup_max_bytes: p.number(GATEWAY_CATCHUP_MAX_BYTES, 4 << 20, 64 << 10..=256 << 20),
            catchup_per_caller: p.number(GATEWAY_CATCHUP_PER_CALLER, 2, 1..=100),
            catchup_concurrency: p.number(GATEWAY_CATCHUP_CONCURRENCY, 32, 1..=10_000),
            drain_window: p.duration(GATEWAY_DRAIN_WINDOW, Duration::from_secs(15)),
            shutdown_timeout: p.duration(GATEWAY_SHUTDOWN_TIMEOUT, Duration::from_secs(25)),
            log_format: p.log_format(LOG_FORMAT),
            admin_listen_addr: p.socket_addr(GATEWAY_ADMIN_LISTEN_ADDR, "127.0.0.1:9090"),
            admin_token: p.optional_secret(GATEWAY_ADMIN_TOKEN),
            otel: OtelSettings::read(&mut p),
            http: HttpLimits::read(&mut p, &HTTP_VARS),
        };
        cross_check(&mut p, &config);
        p.finish(config)
    }
}

/// Rules between variables.
fn cross_check<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, config: &Config) {
    if config.drain_window >= config.shutdown_timeout {
        p.problem(
            GATEWAY_DRAIN_WINDOW,
            format!(
                "the drain window ({:?}) must be shorter than GATEWAY_SHUTDOWN_TIMEOUT ({:?})",
                config.drain_window, config.shutdown_timeout
            ),
        );
    }
    if config.auth.allowed_origins.iter().any(|o| o == "*") {
        p.problem(ALLOWED_ORIGINS, "'*' is not accepted: list exact origins");
    }
    if config.admin_token.as_ref().is_some_and(|t| t.expose().len() < MIN_ADMIN_TOKEN_LEN) {
        p.problem(
            GATEWAY_ADMIN_TOKEN,
            format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters (generate one: openssl rand -hex 32)"),
        );
    }
    if config.admin_token.is_some()
        && config.admin_listen_addr.port() == config.listen_addr.port()
        && config.listen_addr.port() != 0
    {
        p.problem(
            GATEWAY_ADMIN_LISTEN_ADDR,
            "must be another port than GATEWAY_LISTEN_ADDR: the admin API is never public",
        );
    }
    if config.dedup_window < Duration::from_secs(60) {
        p.problem(GATEWAY_DEDUP_WINDOW, "must be at least 60 s (protocol section 6)");
    }
}

/// Accepts the backend's SQLAlchemy form (`postgresql+psycopg://...`) and plain `postgres://`.
fn database_url(url: &str) -> Result<String, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("is not a URL like postgres://user:password@host:5432/db".into());
    };
    let base = scheme.split('+').next().unwrap_or(scheme);
    if base != "postgres" && base != "postgresql" {
        return Err(format!("scheme '{scheme}' is not PostgreSQL"));
    }
    let normalized = format!("postgres://{rest}");
    // The parser's message may quote the offending part of the URL: it is not repeated.
    tokio_postgres::Config::from_str(&normalized).map_err(|_| "cannot be parsed as a PostgreSQL URL".to_string())?;
    Ok(normalized)
}

fn default_origins() -> Vec<String> {
    let ports = [5173, 5176, 5177, 5178, 5179, 5180];
    ["http://localhost", "http://127.0.0.1"]
        .iter()
        .flat_map(|host| ports.iter().map(move |port| format!("{host}:{port}")))
        .collect()
}

/// The default origins and the same hosts over `https://`.
fn default_cors_origins() -> Vec<String> {
    let plain = default_origins();
    let secure = plain.iter().map(|o| o.replacen("http://", "https://", 1)).collect::<Vec<_>>();
    plain.into_iter().chain(secure).collect()
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "gateway".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests;
