//! TLS to a dependency (Redis, NATS, an OTLP collector): the three files an operator gives for
//! each ([`TlsFiles`]: the CA bundle that signed the server's certificate, and the client
//! certificate and key where the server asks for one), checked when the settings are read so a
//! wrong path or a file that holds no PEM certificate stops the service at start with the
//! variable's name, and the rustls client configuration built from them ([`TlsFiles::client_config`]).
//!
//! Without a CA file the system's roots are trusted (`/etc/ssl/certs` in the images). rustls
//! runs on `ring` only, as everywhere else in the workspace. Nothing here logs a file's content.

use crate::settings::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The names of one dependency's three variables, e.g. `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`
/// and `REDIS_TLS_KEY_FILE`.
#[derive(Debug, Clone, Copy)]
pub struct TlsVars {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
}

/// Paths of the PEM files for one dependency; all `None` means the system roots and no client
/// certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates that signed the server's certificate (replaces the system roots).
    pub ca_file: Option<String>,
    /// Client certificate chain, for servers that require mutual TLS.
    pub cert_file: Option<String>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
}

/// A client certificate chain and its key, PEM. The key never prints.
pub struct ClientPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientPem {{ cert: {} bytes, key: *** }}", self.cert.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("no system CA certificates were found: give the server's CA file")]
    NoSystemRoots,
    #[error("the TLS client configuration was refused: {0}")]
    Config(#[from] rustls::Error),
}

impl TlsFiles {
    /// Reads the three variables named by `vars`. Each file must exist and hold what it should
    /// (a problem names the variable); a certificate and its key go together.
    pub fn read<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, vars: TlsVars) -> TlsFiles {
        let files =
            TlsFiles { ca_file: p.string(vars.ca), cert_file: p.string(vars.cert), key_file: p.string(vars.key) };
        if let Some(ca) = &files.ca_file {
            p.check(vars.ca, certificates(ca).map(drop).map_err(|e| e.to_string()));
        }
        match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => {
                p.check(vars.cert, certificates(cert).map(drop).map_err(|e| e.to_string()));
                p.check(vars.key, private_key(key).map(drop).map_err(|e| e.to_string()));
            }
            (Some(_), None) => p.problem(vars.key, format!("{} needs its key in {}", vars.cert, vars.key)),
            (None, Some(_)) => p.problem(vars.cert, format!("{} needs its certificate in {}", vars.key, vars.cert)),
            (None, None) => {}
        }
        files
    }

    /// Whether any file is given.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The rustls client configuration: the CA file's certificates as the only roots (else the
    /// system's), and the client certificate when one is given.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(ca) => {
                let (_, ignored) = roots.add_parsable_certificates(certificates(ca)?);
                if roots.is_empty() || ignored > 0 {
                    return Err(TlsError::NoCertificate(ca.clone()));
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if roots.is_empty() {
                    return Err(TlsError::NoSystemRoots);
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        Ok(match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(certificates(cert)?, private_key(key)?)?,
            _ => builder.with_no_client_auth(),
        })
    }

    /// The CA file's bytes (PEM), for libraries that take them rather than a configuration.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, TlsError> {
        self.ca_file.as_deref().map(read).transpose()
    }

    /// The client certificate's and key's bytes (PEM), when both are given.
    pub fn client_pem(&self) -> Result<Option<ClientPem>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(ClientPem { cert: read(cert)?, key: read(key)? })),
            _ => Ok(None),
        }
    }
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_string(), e.to_string()))
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read(path.to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_string()));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    // The parser's message never quotes the key.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| TlsError::Read(path.to_string(), "it holds no PEM private key".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARS: TlsVars = TlsVars { ca: "X_TLS_CA_FILE", cert: "X_TLS_CERT_FILE", key: "X_TLS_KEY_FILE" };

    fn read_files(pairs: &[(&str, &str)]) -> Result<TlsFiles, crate::settings::ConfigError> {
        crate::settings::read_pairs(pairs, |p| TlsFiles::read(p, VARS))
    }

    fn temp(name: &str, content: &str) -> String {
        let dir = std::env::temp_dir().join(format!("wire-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn nothing_set_is_the_system_roots() {
        let files = read_files(&[]).unwrap();
        assert!(!files.is_set());
        assert_eq!(files.ca_pem().unwrap(), None);
        assert!(files.client_pem().unwrap().is_none());
    }

    #[test]
    fn names_each_wrong_file() {
        let not_pem = temp("not.pem", "hello");
        let err =
            read_files(&[(VARS.ca, "/nonexistent/ca.pem"), (VARS.cert, &not_pem), (VARS.key, &not_pem)]).unwrap_err();
        for var in [VARS.ca, VARS.cert, VARS.key] {
            assert!(err.names(var), "{var} missing from {err}");
        }
        assert!(err.to_string().contains("no PEM"), "{err}");
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_other_way_round() {
        let not_pem = temp("half.pem", "x");
        let err = read_files(&[(VARS.cert, &not_pem)]).unwrap_err();
        assert!(err.names(VARS.key), "{err}");
        let err = read_files(&[(VARS.key, &not_pem)]).unwrap_err();
        assert!(err.names(VARS.cert), "{err}");
    }
}
