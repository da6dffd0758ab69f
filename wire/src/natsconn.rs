//! NATS connection settings shared by the gateway and the bridge: the `NATS_*` variables, their
//! validation (credentials are required in production unless explicitly waived), and building a
//! client that reconnects forever with capped, jittered backoff and replies on the component's
//! own inbox prefix. What a service does with the connection is its own business; which
//! subjects its NATS user may use is `deploy/nats/auth.conf`'s.

use crate::settings::{Parser, Secret};
use crate::tls::{TlsError, TlsFiles, TlsVars};
use std::time::Duration;

pub const NATS_URL: &str = "NATS_URL";
pub const NATS_CREDS_FILE: &str = "NATS_CREDS_FILE";
pub const NATS_USER: &str = "NATS_USER";
pub const NATS_PASSWORD: &str = "NATS_PASSWORD";
pub const NATS_TOKEN: &str = "NATS_TOKEN";
pub const NATS_TLS_CA_FILE: &str = "NATS_TLS_CA_FILE";
pub const NATS_TLS_CERT_FILE: &str = "NATS_TLS_CERT_FILE";
pub const NATS_TLS_KEY_FILE: &str = "NATS_TLS_KEY_FILE";
pub const NATS_TLS_REQUIRED: &str = "NATS_TLS_REQUIRED";

/// The CA bundle that signed the servers' certificates, and a client certificate for servers
/// that verify clients (mutual TLS).
pub const TLS_VARS: TlsVars = TlsVars { ca: NATS_TLS_CA_FILE, cert: NATS_TLS_CERT_FILE, key: NATS_TLS_KEY_FILE };
pub const NATS_SUBSCRIPTION_CAPACITY: &str = "NATS_SUBSCRIPTION_CAPACITY";
pub const NATS_INBOX_PREFIX: &str = "NATS_INBOX_PREFIX";
pub const NATS_ALLOW_ANONYMOUS: &str = "NATS_ALLOW_ANONYMOUS";
/// `production` (the default) refuses to connect to NATS without credentials.
pub const ENVIRONMENT: &str = "ENVIRONMENT";

/// Reply subjects of each component start with its own prefix, so that NATS permissions can
/// let each user read only its own replies (`deploy/nats/auth.conf`: `_INBOX.gateway.>`, ...).
pub const GATEWAY_INBOX_PREFIX: &str = "_INBOX.gateway";
pub const BRIDGE_INBOX_PREFIX: &str = "_INBOX.bridge";
pub const LOADTEST_INBOX_PREFIX: &str = "_INBOX.loadtest";

/// Every variable this module reads, for README and startup logs.
pub const VARS: &[&str] = &[
    NATS_URL,
    NATS_CREDS_FILE,
    NATS_USER,
    NATS_PASSWORD,
    NATS_TOKEN,
    NATS_TLS_CA_FILE,
    NATS_TLS_CERT_FILE,
    NATS_TLS_KEY_FILE,
    NATS_TLS_REQUIRED,
    NATS_SUBSCRIPTION_CAPACITY,
    NATS_INBOX_PREFIX,
    NATS_ALLOW_ANONYMOUS,
    ENVIRONMENT,
];

#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// One or more server URLs, comma-separated in `NATS_URL`.
    pub urls: Vec<String>,
    pub creds_file: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// CA and client certificate files; TLS is used when a URL says `tls://`, when
    /// `NATS_TLS_REQUIRED` is set or when the server asks for it.
    pub tls: TlsFiles,
    pub tls_required: bool,
    /// Messages buffered per subscription before the client reports a slow consumer and drops.
    pub subscription_capacity: usize,
    /// Prefix of this client's reply subjects (`NATS_INBOX_PREFIX`, else the component's).
    pub inbox_prefix: String,
    /// `NATS_ALLOW_ANONYMOUS`: connect without credentials even in production.
    pub allow_anonymous: bool,
}

impl NatsSettings {
    /// Reads the `NATS_*` variables; `default_inbox_prefix` is the component's
    /// ([`GATEWAY_INBOX_PREFIX`], [`BRIDGE_INBOX_PREFIX`]).
    pub fn read<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, default_inbox_prefix: &str) -> NatsSettings {
        let urls = p.list(NATS_URL).unwrap_or_else(|| vec!["nats://127.0.0.1:4222".into()]);
        for url in &urls {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                p.problem(NATS_URL, format!("'{url}' is not a NATS URL like nats://host:4222"));
            }
        }
        let settings = NatsSettings {
            urls,
            creds_file: p.string(NATS_CREDS_FILE),
            user: p.string(NATS_USER),
            password: p.optional_secret(NATS_PASSWORD),
            token: p.optional_secret(NATS_TOKEN),
            tls: TlsFiles::read(p, TLS_VARS),
            tls_required: p.bool(NATS_TLS_REQUIRED, false),
            subscription_capacity: p.number(NATS_SUBSCRIPTION_CAPACITY, 65_536, 64..=16 << 20),
            inbox_prefix: p.string_or(NATS_INBOX_PREFIX, default_inbox_prefix),
            allow_anonymous: p.bool(NATS_ALLOW_ANONYMOUS, false),
        };
        if let Err(why) = check_inbox_prefix(&settings.inbox_prefix) {
            p.problem(NATS_INBOX_PREFIX, why);
        }
        let production = !p.string_or(ENVIRONMENT, "production").eq_ignore_ascii_case("development");
        if production && !settings.has_credentials() && !settings.allow_anonymous {
            p.problem(
                NATS_USER,
                "no NATS credentials: set NATS_USER/NATS_PASSWORD, NATS_CREDS_FILE, NATS_TOKEN or a client certificate (NATS_TLS_CERT_FILE) (ENVIRONMENT=production \
                 refuses an anonymous NATS connection, since a NATS that admits one lets anyone read and forge every \
                 tenant's events; NATS_ALLOW_ANONYMOUS=true waives this)",
            );
        }
        if settings.user.is_some() != settings.password.is_some() {
            p.problem(NATS_PASSWORD, "NATS_USER and NATS_PASSWORD go together");
        }
        let methods = [settings.creds_file.is_some(), settings.user.is_some(), settings.token.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            p.problem(NATS_CREDS_FILE, "choose one of NATS_CREDS_FILE, NATS_USER/NATS_PASSWORD or NATS_TOKEN");
        }
        if let Some(file) = &settings.creds_file {
            if !std::path::Path::new(file).is_file() {
                p.problem(NATS_CREDS_FILE, format!("'{file}' is not a readable file"));
            }
        }
        settings
    }

    /// Whether any credentials are configured (a half user/password pair counts; it is refused
    /// on its own). A client certificate counts: a server with `verify_and_map` takes the
    /// certificate as the user.
    pub fn has_credentials(&self) -> bool {
        self.creds_file.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.token.is_some()
            || self.tls.cert_file.is_some()
    }

    /// Connects with `name` (shown in the server's `/connz`). Fails if the first connection
    /// cannot be made within `first_connect_timeout`; once connected, reconnects forever.
    pub async fn connect(
        &self,
        name: &str,
        first_connect_timeout: Duration,
        on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
    ) -> Result<async_nats::Client, NatsConnectError> {
        let mut options = match &self.creds_file {
            Some(file) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .map_err(|e| NatsConnectError::Credentials(file.clone(), e))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose_str().to_string());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose_str().to_string());
        }
        if self.tls.is_set() {
            options = options.tls_client_config(self.tls.client_config().map_err(NatsConnectError::Tls)?);
        }
        let on_event = std::sync::Arc::new(on_event);
        options = options
            .name(name)
            .custom_inbox_prefix(&self.inbox_prefix)
            .require_tls(self.tls_required)
            .subscription_capacity(self.subscription_capacity)
            .client_capacity(4096)
            .connection_timeout(first_connect_timeout)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let on_event = on_event.clone();
                async move { on_event(event) }
            });
        let addrs: Vec<async_nats::ServerAddr> = self.urls.iter().filter_map(|u| u.parse().ok()).collect();
        tokio::time::timeout(first_connect_timeout, options.connect(addrs))
            .await
            .map_err(|_| NatsConnectError::Timeout(self.urls.join(","), first_connect_timeout))?
            .map_err(|e| NatsConnectError::Connect(self.urls.join(","), e))
    }
}

/// An inbox prefix is one or more dot-separated tokens of printable ASCII without wildcards.
fn check_inbox_prefix(prefix: &str) -> Result<(), String> {
    let bad_token = |t: &str| t.is_empty() || t == "*" || t == ">" || !t.bytes().all(|b| b.is_ascii_graphic());
    if prefix.len() > 128 || prefix.split('.').any(bad_token) {
        return Err(format!("'{prefix}' is not a subject prefix like _INBOX.gateway (tokens, no wildcards)"));
    }
    Ok(())
}

/// The client library's reconnect delays ([`crate::backoff::Backoff::reconnect`]): the first
/// attempt at once, then 100 ms doubling to 5 s, ±50 %.
pub fn reconnect_delay(attempt: usize) -> Duration {
    match attempt {
        0 | 1 => Duration::ZERO,
        n => crate::backoff::Backoff::reconnect().after((n - 2).min(32) as u32).next_delay(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("NATS TLS: {0}")]
    Tls(TlsError),
    #[error("cannot read NATS credentials file {0}: {1}")]
    Credentials(String, std::io::Error),
    #[error("cannot connect to NATS at {0} within {1:?}: is nats-server running and NATS_URL right?")]
    Timeout(String, Duration),
    #[error("cannot connect to NATS at {0}: {1}")]
    Connect(String, async_nats::ConnectError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<NatsSettings, crate::settings::ConfigError> {
        crate::settings::read_pairs(pairs, |p| NatsSettings::read(p, GATEWAY_INBOX_PREFIX))
    }

    const USER: [(&str, &str); 2] = [(NATS_USER, "gateway"), (NATS_PASSWORD, "pw")];

    #[test]
    fn defaults_and_lists() {
        let s = read(&USER).unwrap();
        assert_eq!(s.urls, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(s.inbox_prefix, GATEWAY_INBOX_PREFIX);
        assert!(!s.allow_anonymous);
        let two = read(&[USER[0], USER[1], (NATS_URL, "nats://a:4222, nats://b:4222")]).unwrap();
        assert_eq!(two.urls.len(), 2);
    }

    #[test]
    fn refuses_half_credentials_and_missing_files() {
        let err = read(&[(NATS_USER, "u"), (NATS_TLS_CA_FILE, "/nonexistent/ca.pem")]).unwrap_err();
        assert!(err.names(NATS_PASSWORD) && err.names(NATS_TLS_CA_FILE), "{err}");
        assert!(read(&[USER[0], USER[1], (NATS_URL, "not a url at all")]).unwrap_err().names(NATS_URL));
    }

    #[test]
    fn production_refuses_to_run_without_credentials_in_one_line() {
        for env in [&[][..], &[(ENVIRONMENT, "production")], &[(ENVIRONMENT, "staging")]] {
            let err = read(env).unwrap_err();
            assert_eq!(err.0.len(), 1, "{err}");
            assert!(err.names(NATS_USER), "{err}");
            let message = &err.0[0].message;
            assert!(!message.contains('\n'), "one line: {message}");
            for named in ["NATS_USER", "NATS_CREDS_FILE", "NATS_TOKEN", NATS_ALLOW_ANONYMOUS, "production"] {
                assert!(message.contains(named), "{message} should name {named}");
            }
        }
    }

    #[test]
    fn any_credential_kind_satisfies_production() {
        assert!(read(&USER).is_ok());
        assert!(read(&[(NATS_TOKEN, "t0ken")]).is_ok());
        // Only its existence is checked here; the client reads it when connecting.
        assert!(read(&[(NATS_CREDS_FILE, concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))]).is_ok());
    }

    #[test]
    fn anonymous_only_when_waived_or_in_development() {
        let waived = read(&[(NATS_ALLOW_ANONYMOUS, "true")]).unwrap();
        assert!(waived.allow_anonymous && !waived.has_credentials());
        assert!(read(&[(ENVIRONMENT, "development")]).is_ok());
        assert!(read(&[(ENVIRONMENT, "Development")]).is_ok());
        assert!(read(&[(NATS_ALLOW_ANONYMOUS, "false")]).unwrap_err().names(NATS_USER));
        assert!(read(&[(NATS_ALLOW_ANONYMOUS, "maybe")]).unwrap_err().names(NATS_ALLOW_ANONYMOUS));
    }

    #[test]
    fn inbox_prefix_is_validated() {
        let custom = read(&[USER[0], USER[1], (NATS_INBOX_PREFIX, "_INBOX.gw-eu")]).unwrap();
        assert_eq!(custom.inbox_prefix, "_INBOX.gw-eu");
        for bad in ["_INBOX.>", "_INBOX.*.x", "a..b", ".a", "a b", "x.", "\u{e9}"] {
            let err = read(&[USER[0], USER[1], (NATS_INBOX_PREFIX, bad)]).unwrap_err();
            assert!(err.names(NATS_INBOX_PREFIX), "{bad:?} accepted");
        }
    }

    #[test]
    fn backoff_starts_at_once_and_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let second = reconnect_delay(2);
        assert!(second >= Duration::from_millis(50) && second <= Duration::from_millis(150), "{second:?}");
        for attempt in 0..100 {
            assert!(reconnect_delay(attempt) <= Duration::from_millis(7_500));
        }
    }
}
