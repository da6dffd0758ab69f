//! Redis connection settings shared by the gateway and the bridge: `REDIS_URL` (`redis://`,
//! `rediss://` for TLS, or `redis+unix://`), the `REDIS_TLS_*` files ([`crate::tls`]), their
//! validation, and the client library's `Client` built from them. Managed Redis services mostly
//! require TLS, some a client certificate too. The URL may hold a password: it is kept as a
//! [`SecretUrl`] and no message repeats it.

use crate::settings::{Parser, SecretUrl};
use crate::tls::{TlsError, TlsFiles, TlsVars};

pub const REDIS_URL: &str = "REDIS_URL";
pub const REDIS_TLS_CA_FILE: &str = "REDIS_TLS_CA_FILE";
pub const REDIS_TLS_CERT_FILE: &str = "REDIS_TLS_CERT_FILE";
pub const REDIS_TLS_KEY_FILE: &str = "REDIS_TLS_KEY_FILE";

pub const TLS_VARS: TlsVars = TlsVars { ca: REDIS_TLS_CA_FILE, cert: REDIS_TLS_CERT_FILE, key: REDIS_TLS_KEY_FILE };

/// Every variable this module reads (README, chart).
pub const VARS: &[&str] = &[REDIS_URL, REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE];

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: SecretUrl,
    /// Used only with a `rediss://` URL.
    pub tls: TlsFiles,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisConnError {
    #[error("REDIS_URL: {0}")]
    Url(redis::RedisError),
    #[error("Redis TLS: {0}")]
    Tls(#[from] TlsError),
}

impl RedisSettings {
    /// Reads `REDIS_URL` (else `default_url`) and the `REDIS_TLS_*` files.
    pub fn read<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, default_url: &str) -> RedisSettings {
        let url = p.string_or(REDIS_URL, default_url);
        let tls = TlsFiles::read(p, TLS_VARS);
        let settings = RedisSettings { url: SecretUrl::new(url), tls };
        // The library's message may quote the URL: it is not repeated.
        if redis::Client::open(settings.url.expose()).is_err() {
            p.problem(
                REDIS_URL,
                "is not a Redis URL like redis://:password@host:6379/0 (rediss://... for TLS, redis+unix:///path)",
            );
        } else if settings.url.expose().contains("#insecure") {
            p.problem(REDIS_URL, "#insecure (no certificate check) is refused: give the CA in REDIS_TLS_CA_FILE");
        }
        if settings.tls.is_set() && !settings.is_tls() {
            p.problem(REDIS_URL, "REDIS_TLS_* files are given but REDIS_URL is not rediss://: TLS would not be used");
        }
        settings
    }

    /// Whether connections use TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url.expose().starts_with("rediss://")
    }

    /// The client library's `Client`, with the CA and client certificate when given.
    pub fn client(&self) -> Result<redis::Client, RedisConnError> {
        if !self.is_tls() || !self.tls.is_set() {
            return redis::Client::open(self.url.expose()).map_err(RedisConnError::Url);
        }
        let certificates = redis::TlsCertificates {
            client_tls: self
                .tls
                .client_pem()?
                .map(|pem| redis::ClientTlsConfig { client_cert: pem.cert, client_key: pem.key }),
            root_cert: self.tls.ca_pem()?,
        };
        redis::Client::build_with_tls(self.url.expose(), certificates).map_err(RedisConnError::Url)
    }

    /// The rustls configuration for connections made without the client library (the bridge's
    /// own readers); `None` without TLS.
    pub fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, TlsError> {
        self.is_tls().then(|| self.tls.client_config()).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<RedisSettings, crate::settings::ConfigError> {
        crate::settings::read_pairs(pairs, |p| RedisSettings::read(p, "redis://localhost:6380"))
    }

    #[test]
    fn plain_and_tls_urls() {
        let plain = read(&[]).unwrap();
        assert!(!plain.is_tls());
        assert!(plain.tls_config().unwrap().is_none());
        let tls = read(&[(REDIS_URL, "rediss://:pw@cache.example:6380/1")]).unwrap();
        assert!(tls.is_tls());
        assert!(tls.client().is_ok());
    }

    #[test]
    fn refuses_bad_urls_without_quoting_them() {
        let err = read(&[(REDIS_URL, "http://user:hunter2@x")]).unwrap_err();
        assert!(err.names(REDIS_URL) && !err.to_string().contains("hunter2"), "{err}");
        let err = read(&[(REDIS_URL, "rediss://h:6380/#insecure")]).unwrap_err();
        assert!(err.names(REDIS_URL), "{err}");
    }

    #[test]
    fn tls_files_need_a_rediss_url() {
        let ca = std::env::temp_dir().join(format!("redisconn-{}.pem", std::process::id()));
        std::fs::write(&ca, "not a certificate").unwrap();
        let err = read(&[(REDIS_TLS_CA_FILE, ca.to_str().unwrap())]).unwrap_err();
        assert!(err.names(REDIS_URL) && err.names(REDIS_TLS_CA_FILE), "{err}");
    }
}
