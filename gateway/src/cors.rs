//! CORS for the HTTP endpoints the browser apps call from their own origin (catch-up after every
//! reconnect, health): exactly what the old gateway's middleware allowed (protocol section 7).
//! Origins from `ALLOWED_ORIGINS` (see [`crate::config::AuthConfig::cors_origins`]), credentials
//! allowed, methods GET/POST/OPTIONS, request headers `Authorization`, `Content-Type` and
//! `X-Table-Token`; preflight requests answered here. A request from any other origin gets no
//! `Access-Control-*` header at all (and its preflight no answer but the route's own), so the
//! browser keeps the answer from the page. The WebSocket endpoints check `Origin` themselves
//! (`connection::handshake`).

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

const METHODS: HeaderValue = HeaderValue::from_static("GET, POST, OPTIONS");
const HEADERS: HeaderValue = HeaderValue::from_static("authorization, content-type, x-table-token");
/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");

/// The origins whose pages may read the answers.
#[derive(Debug, Clone)]
pub struct Origins(Arc<[HeaderValue]>);

impl Origins {
    /// Exact origins; entries that cannot be a header value never match a browser's `Origin`.
    pub fn new(origins: &[String]) -> Origins {
        Origins(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect())
    }

    /// The request's `Origin` when it is one of ours.
    fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        self.0.iter().any(|o| o == origin).then(|| origin.clone())
    }
}

/// The middleware (`axum::middleware::from_fn_with_state(origins, cors::middleware)`).
pub async fn middleware(State(origins): State<Origins>, request: Request, next: Next) -> Response {
    let Some(origin) = origins.allowed(request.headers()) else {
        let mut response = next.run(request).await;
        vary(response.headers_mut());
        return response;
    };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(request).await };
    let headers = response.headers_mut();
    vary(headers);
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    if preflight {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, METHODS);
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HEADERS);
        headers.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
    }
    response
}

/// Answers differ by `Origin`: shared caches must keep them apart.
fn vary(headers: &mut HeaderMap) {
    headers.append(VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_match_exactly() {
        let origins = Origins::new(&["https://app.example.com".into(), "bad\nvalue".into()]);
        let mut headers = HeaderMap::new();
        assert_eq!(origins.allowed(&headers), None, "no Origin");
        for (origin, allowed) in [
            ("https://app.example.com", true),
            ("https://app.example.com/", false),
            ("http://app.example.com", false),
            ("https://APP.example.com", false),
            ("null", false),
        ] {
            headers.insert(ORIGIN, HeaderValue::from_static(origin));
            assert_eq!(origins.allowed(&headers).is_some(), allowed, "{origin}");
        }
    }
}
