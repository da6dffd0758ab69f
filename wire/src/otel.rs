//! Logging and OpenTelemetry traces, shared by the gateway and the bridge: the standard `OTEL_*`
//! variables (read through [`Parser`] like every other setting), the `tracing` subscriber set-up
//! (text or JSON logs, plus an OTLP/HTTP exporter when an endpoint is set), and the W3C trace
//! context carried in NATS headers ([`propagation`]). Export is off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; while it is
//! off, [`enabled`] is false and services create no spans at all. Which spans exist is each
//! service's business; they are created with target [`TARGET`].

mod export;
pub mod propagation;
mod subscriber;

use crate::settings::{Parser, Secret};
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
    OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
];

/// The `tracing` target of every span meant for export. Logs never show these spans, and the
/// exporter sees nothing else, whatever `RUST_LOG` says.
pub const TARGET: &str = "otel";

/// The only protocol built in: OTLP over HTTP with protobuf bodies (collector port 4318).
pub const HTTP_PROTOBUF: &str = "http/protobuf";

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
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub endpoint: Option<String>,
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
        s.endpoint = match (p.string(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), p.string(OTEL_EXPORTER_OTLP_ENDPOINT)) {
            (Some(url), _) => check_url(p, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, url),
            (None, Some(base)) => {
                check_url(p, OTEL_EXPORTER_OTLP_ENDPOINT, format!("{}/v1/traces", base.trim_end_matches('/')))
            }
            (None, None) => None,
        }
        .filter(|_| !disabled);
        for var in [OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL] {
            if let Some(protocol) = p.string(var).filter(|v| v != HTTP_PROTOBUF) {
                p.problem(
                    var,
                    format!(
                        "'{protocol}' is not supported: only {HTTP_PROTOBUF} is built in (the collector's port 4318)"
                    ),
                );
            }
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
            Some(url) => format!("{url} sampler={:?} headers={}", self.sampler, self.headers.len()),
        }
    }
}

fn check_url<F: Fn(&str) -> Option<String>>(p: &mut Parser<F>, var: &'static str, url: String) -> Option<String> {
    let result = if url.starts_with("https://") {
        Err("https is not built in: send to a collector (agent or in-cluster Service) over http://".to_string())
    } else if !url.starts_with("http://") || url.len() <= "http://".len() || url.contains(char::is_whitespace) {
        Err(format!("'{url}' is not a URL like http://otel-collector:4318"))
    } else {
        Ok(url)
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
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut p = Parser::new(move |k: &str| map.get(k).cloned());
        let s = OtelSettings::read(&mut p);
        p.finish(s)
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
            (OTEL_EXPORTER_OTLP_ENDPOINT, "https://c:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
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
}
