//! Logging and OpenTelemetry traces, shared by the gateway and the bridge: the standard `OTEL_*`
//! variables (read through [`Parser`] like every other setting), the `tracing` subscriber set-up
//! (text or JSON logs, plus an OTLP exporter when an endpoint is set: HTTP with protobuf bodies or
//! gRPC, each over `http://` or `https://` with the CA and client certificate of the standard
//! variables), and the W3C trace
//! context carried in NATS headers ([`propagation`]). Export is off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; while it is
//! off, [`enabled`] is false and services create no spans at all. Which spans exist is each
//! service's business; they are created with target [`TARGET`].

mod export;
pub mod propagation;
mod subscriber;

use crate::settings::{Parser, Secret};
use crate::tls::{TlsFiles, TlsVars};
use std::time::Duration;

pub use export::OtelError;
pub use opentelemetry::trace::SpanKind;
pub use opentelemetry::KeyValue;
pub use subscriber::{enabled, finished_span, init, init_logging, Output, Service, Telemetry};

pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
pub const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
pub const OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
pub const OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
pub const OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE";
pub const OTEL_EXPORTER_OTLP_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
pub const OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Every variable this module reads (README, chart).
pub const VARS: &[&str] = &[
    OTEL_SDK_DISABLED,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
];

/// The `tracing` target of every span meant for export. Logs never show these spans, and the
/// exporter sees nothing else, whatever `RUST_LOG` says.
pub const TARGET: &str = "otel";

/// OTLP over HTTP with protobuf bodies (collector port 4318), the default.
pub const HTTP_PROTOBUF: &str = "http/protobuf";
/// OTLP over gRPC (collector port 4317).
pub const GRPC: &str = "grpc";

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: POST to the endpoint (`<base>/v1/traces`).
    HttpProtobuf,
    /// `grpc`: the collector's `TraceService/Export` at the endpoint's host and port.
    Grpc,
}

/// `OTEL_TRACES_SAMPLER` values (the spec's, without the Jaeger and X-Ray remote samplers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    /// Follows the parent's decision when there is one (a remote parent included); the inner
    /// sampler decides for root spans.
    ParentBased(RootSampler),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

/// The `OTEL_*` settings. `endpoint` is `None` when export is off.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// For `http/protobuf`, the full URL spans are POSTed to (`.../v1/traces`); for `grpc`, the
    /// collector's URL.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// CA and client certificate for an `https://` endpoint (the `*_CERTIFICATE` and
    /// `*_CLIENT_KEY` variables; the `TRACES_` ones win).
    pub tls: TlsFiles,
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    /// `None`: the service's own name.
    pub service_name: Option<String>,
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: Sampler,
}

impl Default for OtelSettings {
    fn default() -> Self {
        OtelSettings {
            endpoint: None,
            protocol: Protocol::HttpProtobuf,
            tls: TlsFiles::default(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            service_name: None,
            resource_attributes: Vec::new(),
            sampler: Sampler::ParentBased(RootSampler::AlwaysOn),
        }
    }
}

impl OtelSettings {
    pub fn read<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>) -> OtelSettings {
        let mut s = OtelSettings::default();
        let disabled = p.bool(OTEL_SDK_DISABLED, false);
        s.protocol = read_protocol(p);
        s.endpoint = match (p.string(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), p.string(OTEL_EXPORTER_OTLP_ENDPOINT)) {
            (Some(url), _) => check_url(p, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, url),
            (None, Some(base)) => {
                let url = match s.protocol {
                    Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                    Protocol::Grpc => base,
                };
                check_url(p, OTEL_EXPORTER_OTLP_ENDPOINT, url)
            }
            (None, None) => None,
        }
        .filter(|_| !disabled);
        let tls_vars = signal_vars(p);
        s.tls = TlsFiles::read(p, tls_vars);
        if s.tls.is_set() && s.endpoint.as_deref().is_some_and(|url| !url.starts_with("https://")) {
            p.problem(tls_vars.ca, "certificate files are given but the OTLP endpoint is not https://");
        }
        if let Some(raw) = p.raw(OTEL_EXPORTER_OTLP_HEADERS) {
            let parsed = key_values(&raw).map(|pairs| pairs.into_iter().map(|(k, v)| (k, Secret::new(v))).collect());
            s.headers = p.check(OTEL_EXPORTER_OTLP_HEADERS, parsed).unwrap_or_default();
        }
        let timeout_ms = p.number(OTEL_EXPORTER_OTLP_TIMEOUT, 10_000u64, 1..=600_000);
        s.timeout = Duration::from_millis(timeout_ms);
        s.service_name = p.string(OTEL_SERVICE_NAME);
        if let Some(raw) = p.string(OTEL_RESOURCE_ATTRIBUTES) {
            s.resource_attributes = p.check(OTEL_RESOURCE_ATTRIBUTES, key_values(&raw)).unwrap_or_default();
        }
        s.sampler = read_sampler(p);
        s
    }

    /// One log line's worth: where spans go and how they are sampled (header values masked).
    pub fn summary(&self) -> String {
        match &self.endpoint {
            None => "off".to_string(),
            Some(url) => {
                format!("{url} protocol={:?} sampler={:?} headers={}", self.protocol, self.sampler, self.headers.len())
            }
        }
    }
}

fn read_protocol<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>) -> Protocol {
    let (var, value) = match (p.string(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL), p.string(OTEL_EXPORTER_OTLP_PROTOCOL)) {
        (Some(v), _) => (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, v),
        (None, Some(v)) => (OTEL_EXPORTER_OTLP_PROTOCOL, v),
        (None, None) => return Protocol::HttpProtobuf,
    };
    match value.as_str() {
        HTTP_PROTOBUF => Protocol::HttpProtobuf,
        GRPC => Protocol::Grpc,
        other => {
            p.problem(var, format!("'{other}' is not supported: {HTTP_PROTOBUF} (port 4318) or {GRPC} (port 4317)"));
            Protocol::HttpProtobuf
        }
    }
}

/// The certificate variables in effect: each `TRACES_` one when set, else the general one.
fn signal_vars<F: Fn(&str) -> Option<String>>(p: &Parser<F>) -> TlsVars {
    let pick = |signal: &'static str, general: &'static str| if p.raw(signal).is_some() { signal } else { general };
    TlsVars {
        ca: pick(OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, OTEL_EXPORTER_OTLP_CERTIFICATE),
        cert: pick(OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE),
        key: pick(OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_KEY),
    }
}

fn check_url<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, var: &'static str, url: String) -> Option<String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let result = match rest {
        Some(rest) if !rest.is_empty() && !url.contains(char::is_whitespace) && url.parse::<http::Uri>().is_ok() => {
            Ok(url)
        }
        _ => Err(format!("'{url}' is not a URL like http://otel-collector:4318 or https://collector.example:4317")),
    };
    p.check(var, result)
}

fn read_sampler<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>) -> Sampler {
    let ratio = match p.string(OTEL_TRACES_SAMPLER_ARG) {
        None => 1.0,
        Some(arg) => match arg.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                p.problem(OTEL_TRACES_SAMPLER_ARG, format!("'{arg}' is not a ratio from 0 to 1"));
                1.0
            }
        },
    };
    let name = p.string_or(OTEL_TRACES_SAMPLER, "parentbased_always_on").to_ascii_lowercase();
    match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio),
        "parentbased_always_on" => Sampler::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(RootSampler::TraceIdRatio(ratio)),
        other => {
            p.problem(
                OTEL_TRACES_SAMPLER,
                format!(
                    "'{other}' is not a sampler (always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio)"
                ),
            );
            Sampler::ParentBased(RootSampler::AlwaysOn)
        }
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (the spec's format for
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`).
fn key_values(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("'{}' is not key=value", pair.trim()))?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| format!("the value of '{}' is not UTF-8", key.trim()))?;
            match key.trim() {
                "" => Err("an empty key".to_string()),
                key => Ok((key.to_string(), value.into_owned())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<OtelSettings, crate::settings::ConfigError> {
        crate::settings::read_pairs(pairs, OtelSettings::read)
    }

    #[test]
    fn off_without_an_endpoint() {
        let s = read(&[]).unwrap();
        assert_eq!(s, OtelSettings::default());
        assert_eq!(s.summary(), "off");
        let disabled = read(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"), (OTEL_SDK_DISABLED, "true")]).unwrap();
        assert_eq!(disabled.endpoint, None);
    }

    #[test]
    fn endpoints_follow_the_spec() {
        let base = read(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/")]).unwrap();
        assert_eq!(base.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
        let exact = read(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://a:4318"),
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://b:9/x"),
        ])
        .unwrap();
        assert_eq!(exact.endpoint.as_deref(), Some("http://b:9/x"));
    }

    #[test]
    fn reads_sampler_resource_and_headers() {
        let s = read(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
            (OTEL_TRACES_SAMPLER, "parentbased_traceidratio"),
            (OTEL_TRACES_SAMPLER_ARG, "0.25"),
            (OTEL_RESOURCE_ATTRIBUTES, "deployment.environment=prod,k8s.cluster.name=eu%2C1"),
            (OTEL_EXPORTER_OTLP_HEADERS, "authorization=Bearer%20abc"),
            (OTEL_EXPORTER_OTLP_TIMEOUT, "2500"),
            (OTEL_SERVICE_NAME, "gw"),
        ])
        .unwrap();
        assert_eq!(s.sampler, Sampler::ParentBased(RootSampler::TraceIdRatio(0.25)));
        assert_eq!(s.resource_attributes[1], ("k8s.cluster.name".to_string(), "eu,1".to_string()));
        assert_eq!(s.headers[0].1.expose_str(), "Bearer abc");
        assert!(!format!("{s:?}").contains("abc"), "header values never print");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.service_name.as_deref(), Some("gw"));
    }

    #[test]
    fn reports_every_problem() {
        let err = read(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "ftp://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
            (OTEL_TRACES_SAMPLER, "jaeger_remote"),
            (OTEL_TRACES_SAMPLER_ARG, "2"),
            (OTEL_RESOURCE_ATTRIBUTES, "novalue"),
            (OTEL_EXPORTER_OTLP_TIMEOUT, "soon"),
        ])
        .unwrap_err();
        for var in [
            OTEL_EXPORTER_OTLP_ENDPOINT,
            OTEL_EXPORTER_OTLP_PROTOCOL,
            OTEL_TRACES_SAMPLER,
            OTEL_TRACES_SAMPLER_ARG,
            OTEL_RESOURCE_ATTRIBUTES,
            OTEL_EXPORTER_OTLP_TIMEOUT,
        ] {
            assert!(err.names(var), "{var} missing from {err}");
        }
        assert!(read(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf")]).is_ok());
    }

    #[test]
    fn grpc_and_https() {
        let grpc =
            read(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "https://vendor.example:443"), (OTEL_EXPORTER_OTLP_PROTOCOL, GRPC)])
                .unwrap();
        assert_eq!(grpc.protocol, Protocol::Grpc);
        assert_eq!(grpc.endpoint.as_deref(), Some("https://vendor.example:443"), "gRPC takes the base URL as it is");
        let per_signal = read(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, GRPC),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, HTTP_PROTOBUF),
        ])
        .unwrap();
        assert_eq!(per_signal.protocol, Protocol::HttpProtobuf);
        assert_eq!(per_signal.endpoint.as_deref(), Some("https://c:4318/v1/traces"));
    }

    #[test]
    fn certificates_need_an_https_endpoint_and_follow_the_traces_variables() {
        let err = read(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://c:4318"),
            (OTEL_EXPORTER_OTLP_CERTIFICATE, "/nonexistent/general.pem"),
            (OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, "/nonexistent/traces.pem"),
        ])
        .unwrap_err();
        assert!(err.names(OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE), "{err}");
        assert!(!err.names(OTEL_EXPORTER_OTLP_CERTIFICATE), "the TRACES_ variable wins: {err}");
        assert!(err.to_string().contains("not https://"), "{err}");
        let err =
            read(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "https://c"), (OTEL_EXPORTER_OTLP_CLIENT_KEY, "/nonexistent/k")])
                .unwrap_err();
        assert!(err.names(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE), "a key needs its certificate: {err}");
    }
}
