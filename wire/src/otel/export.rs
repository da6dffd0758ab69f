//! The tracer provider behind [`super::init`]: an OTLP/HTTP protobuf exporter behind the SDK's
//! batch processor (its own thread, bounded queue: spans are dropped, never waited for, when the
//! collector is slow), the configured sampler and the service's resource. The processor's
//! thread has no Tokio runtime, so each HTTP request is spawned onto the service's runtime.

use super::{OtelSettings, RootSampler, Sampler, Service};
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{self as sdk, BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;

/// Spans held for export at most; beyond this they are dropped (and the SDK logs it).
const MAX_QUEUE_SIZE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("OTLP trace export needs a Tokio runtime to send from")]
    NoRuntime,
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

pub(super) fn provider(
    settings: &OtelSettings,
    endpoint: &str,
    service: &Service,
) -> Result<SdkTracerProvider, OtelError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| OtelError::NoRuntime)?;
    let client = OnRuntime {
        runtime,
        inner: opentelemetry_http::hyper::HyperClient::with_default_connector(settings.timeout, None),
    };
    let headers: HashMap<String, String> =
        settings.headers.iter().map(|(k, v)| (k.clone(), v.expose_str().to_string())).collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(settings.timeout)
        .with_headers(headers)
        .build()?;
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

/// Runs each request of `inner` (which needs Tokio) on the service's runtime, so the batch
/// processor's plain thread can wait for it.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    inner: opentelemetry_http::hyper::HyperClient,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime.spawn(async move { inner.send_bytes(request).await }).await?
    }
}
