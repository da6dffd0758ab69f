//! An OTLP trace receiver for tests on 127.0.0.1:0, keeping every span with its service name, ids
//! and attributes: OTLP/HTTP (axum answering `POST /v1/traces`, the protobuf
//! `ExportTraceServiceRequest` decoded with `opentelemetry-proto`) in plain text or over TLS, or
//! OTLP/gRPC (tonic's `TraceService`) in plain text or over TLS, where TLS may require a client
//! certificate. Included with `#[path = "support/otlp.rs"] mod otlp;`.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One received span, ids in lowercase hex (`parent` empty for a root).
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent: String,
    pub attributes: HashMap<String, String>,
}

impl Span {
    pub fn attr(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{} has no attribute {key}: {self:?}", self.name))
    }
}

/// What the receiver got: the spans, and the `x-api-key` header of each export request (the
/// header a vendor's endpoint authenticates with, from `OTEL_EXPORTER_OTLP_HEADERS`).
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    api_keys: Mutex<Vec<String>>,
}

const API_KEY: &str = "x-api-key";

pub struct Receiver {
    pub url: String,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// TLS of a receiver: the server certificate of `pki`, and whether clients must present one
/// signed by `pki`'s CA.
pub struct Tls<'a> {
    pub pki: &'a testkit::Pki,
    pub verify_clients: bool,
}

impl Receiver {
    /// OTLP/HTTP on `http://`.
    pub async fn start() -> Receiver {
        let received = Arc::new(Received::default());
        let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, received, task }
    }

    /// OTLP/HTTP on `https://localhost:<port>`.
    pub async fn start_https(tls: Tls<'_>) -> Receiver {
        let received = Arc::new(Received::default());
        let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(received.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&tls)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A refused handshake (wrong CA, no client certificate) just ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver { url, received, task }
    }

    /// OTLP/gRPC on `http://` (no `tls`) or `https://localhost:<port>`.
    pub async fn start_grpc(tls: Option<Tls<'_>>) -> Receiver {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let received = Arc::new(Received::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = tonic::transport::Server::builder();
        let url = match &tls {
            None => format!("http://127.0.0.1:{port}"),
            Some(tls) => {
                let (cert, key) = tls.pki.server();
                let identity =
                    tonic::transport::Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
                let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
                if tls.verify_clients {
                    let ca = tonic::transport::Certificate::from_pem(std::fs::read(tls.pki.ca()).unwrap());
                    config = config.client_ca_root(ca);
                }
                server = server.tls_config(config).unwrap();
                format!("https://localhost:{port}")
            }
        };
        let router = server.add_service(TraceServiceServer::new(Grpc { received: received.clone() }));
        let incoming = tokio_stream_of(listener);
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Receiver { url, received, task }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received.spans.lock().unwrap().clone()
    }

    /// The `x-api-key` header of every export request so far (empty when a request had none).
    pub fn api_keys(&self) -> Vec<String> {
        self.received.api_keys.lock().unwrap().clone()
    }

    /// Every span named `name`.
    pub fn named(&self, name: &str) -> Vec<Span> {
        self.spans().into_iter().filter(|s| s.name == name).collect()
    }
}

/// Accepted connections as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(tcp, _)| tcp);
        Some((accepted, listener))
    })
}

fn server_config(tls: &Tls<'_>) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = tls.pki.server();
    let chain = CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if tls.verify_clients {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(tls.pki.ca()).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

struct Grpc {
    received: Arc<Received>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let key = request.metadata().get(API_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        self.received.api_keys.lock().unwrap().push(key);
        record(&self.received.spans, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receive(
    State(received): State<Arc<Received>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let key = headers.get(API_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    received.api_keys.lock().unwrap().push(key);
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    record(&received.spans, request);
    (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
}

fn record(spans: &Mutex<Vec<Span>>, request: ExportTraceServiceRequest) {
    let mut out = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent: hex::encode(span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}
