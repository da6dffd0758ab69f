//! The tracer provider behind [`super::init`]: an OTLP exporter (HTTP with protobuf bodies, or
//! gRPC) behind the SDK's batch processor (its own thread, bounded queue: spans are dropped, never
//! waited for, when the collector is slow), the configured sampler and the service's resource.
//! For `https://` both trust the `OTEL_EXPORTER_OTLP_*CERTIFICATE` file (else the system roots)
//! and present the client certificate when one is given: through rustls for HTTP, through
//! tonic's rustls set-up for gRPC. The
//! processor's thread has no Tokio runtime, so each HTTP request is spawned onto the service's
//! runtime, and the gRPC channel's connection task runs there too.

use super::{OtelSettings, Protocol, RootSampler, Sampler, Service};
use crate::throttle::Throttle;
use crate::tls::TlsError;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{self as sdk, BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::time::Duration;

/// Spans held for export at most; beyond this they are dropped (and the SDK logs it).
const MAX_QUEUE_SIZE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("OTLP trace export needs a Tokio runtime to send from")]
    NoRuntime,
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP over https: {0}")]
    Tls(#[from] TlsError),
    #[error("the OTLP endpoint is not a gRPC URL: {0}")]
    Endpoint(#[from] tonic::transport::Error),
}

pub(super) fn provider(
    settings: &OtelSettings,
    endpoint: &str,
    service: &Service,
) -> Result<SdkTracerProvider, OtelError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtelError::NoRuntime)?;
    // The gRPC channel spawns its connection task when it is built.
    let _entered = runtime.enter();
    let headers: HashMap<String, String> =
        settings.headers.iter().map(|(k, v)| (k.clone(), v.expose_str().to_string())).collect();
    let exporter = match settings.protocol {
        Protocol::HttpProtobuf => {
            let tls = endpoint.starts_with("https://").then(|| settings.tls.client_config()).transpose()?;
            let client = OnRuntime {
                runtime: runtime.clone(),
                inner: opentelemetry_http::hyper::HyperClient::new(connector(tls), settings.timeout, None),
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(settings.timeout)
                .with_headers(headers)
                .build()?
        }
        Protocol::Grpc => {
            let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout);
            if endpoint.starts_with("https://") {
                channel = channel.tls_config(grpc_tls(&settings.tls)?)?;
            }
            let channel = channel.connect_lazy();
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (key, value) in &headers {
                // The settings check only key=value: a header gRPC cannot carry is dropped here,
                // with a warning that never shows the value.
                match (key.to_ascii_lowercase().parse::<tonic::metadata::MetadataKey<_>>(), value.parse()) {
                    (Ok(key), Ok(value)) => {
                        metadata.insert(key, value);
                    }
                    _ => tracing::warn!(header = %key, "OTLP header dropped: not valid gRPC metadata"),
                }
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_metadata(metadata)
                .with_timeout(settings.timeout)
                .build()?
        }
    };
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUE_SIZE).build())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(sampler(settings.sampler))
        .with_resource(resource(settings, service))
        .build())
}

fn sampler(setting: Sampler) -> sdk::Sampler {
    let root = |r: RootSampler| match r {
        RootSampler::AlwaysOn => sdk::Sampler::AlwaysOn,
        RootSampler::AlwaysOff => sdk::Sampler::AlwaysOff,
        RootSampler::TraceIdRatio(ratio) => sdk::Sampler::TraceIdRatioBased(ratio),
    };
    match setting {
        Sampler::AlwaysOn => sdk::Sampler::AlwaysOn,
        Sampler::AlwaysOff => sdk::Sampler::AlwaysOff,
        Sampler::TraceIdRatio(ratio) => sdk::Sampler::TraceIdRatioBased(ratio),
        Sampler::ParentBased(r) => sdk::Sampler::ParentBased(Box::new(root(r))),
    }
}

/// `service.name` (OTEL_SERVICE_NAME, else the service's own), `service.version`,
/// `service.instance.id`, then OTEL_RESOURCE_ATTRIBUTES (which cannot override the name).
fn resource(settings: &OtelSettings, service: &Service) -> Resource {
    let name = settings.service_name.clone().unwrap_or_else(|| service.name.to_string());
    let extra = settings
        .resource_attributes
        .iter()
        .filter(|(k, _)| k != "service.name")
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.version", service.version),
            KeyValue::new("service.instance.id", service.instance_id.clone()),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        ])
        .with_attributes(extra)
        .with_service_name(name)
        .build()
}

/// tonic's TLS settings from the same files (tonic runs rustls on ring too): the CA file, else
/// the system roots; the client certificate when given.
fn grpc_tls(files: &crate::tls::TlsFiles) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut tls = tonic::transport::ClientTlsConfig::new();
    tls = match files.ca_pem()? {
        Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        None => tls.with_native_roots(),
    };
    if let Some(pem) = files.client_pem()? {
        tls = tls.identity(tonic::transport::Identity::from_pem(pem.cert, pem.key));
    }
    Ok(tls)
}

/// TCP for `http://`; for `https://` rustls with `tls` (ALPN http/1.1).
fn connector(tls: Option<rustls::ClientConfig>) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let builder = match tls {
        Some(tls) => HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http(),
        // Never used for TLS: the endpoint is http://. Building the connector still needs roots.
        None => HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http(),
    };
    builder.enable_http1().wrap_connector(http)
}

/// Runs each request of `inner` (which needs Tokio) on the service's runtime, so the batch
/// processor's plain thread can wait for it.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    inner: opentelemetry_http::hyper::HyperClient<HttpsConnector<HttpConnector>>,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, HttpError> {
        static FAILED: Throttle = Throttle::every(Duration::from_secs(30));
        let inner = self.inner.clone();
        let result = self.runtime.spawn(async move { inner.send_bytes(request).await }).await?;
        if let Err(error) = &result {
            // The SDK reports only "network error": say why (a refused certificate, a refused
            // connection), once per interval.
            if let Some(held_back) = FAILED.allow_with_count() {
                tracing::error!(error = %causes(error.as_ref()), held_back, "OTLP export to the collector failed");
            }
        }
        result
    }
}

/// An error and its sources, `: `-separated.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
