//! The WebSocket opening handshake, server side (RFC 6455 section 4.2). The gateway's own
//! rather than axum's: the upgraded connection's TCP stream goes to the connection's outlet,
//! which the dispatcher writes to directly. A request that is no WebSocket handshake gets a
//! plain HTTP error and no upgrade.

use crate::outlet::Transport;
use crate::registry::Conn;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use std::future::Future;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// A WebSocket handshake, checked, waiting for its `101`.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is no WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAHandshake {
    NotGet,
    /// `Connection` without `upgrade`, or `Upgrade` other than `websocket`.
    NotUpgrade,
    /// RFC 6455 section 4.4: answered with `426` and the version this server speaks.
    Version,
    Key(&'static str),
    /// The connection cannot be taken over (an HTTP/1.0 request, for one).
    NotUpgradable,
}

impl IntoResponse for NotAHandshake {
    fn into_response(self) -> Response {
        match self {
            NotAHandshake::NotGet => {
                (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")], "a WebSocket handshake is a GET request")
                    .into_response()
            }
            NotAHandshake::NotUpgrade => {
                (StatusCode::BAD_REQUEST, "a WebSocket handshake asks for Connection: upgrade and Upgrade: websocket")
                    .into_response()
            }
            NotAHandshake::Version => {
                (StatusCode::UPGRADE_REQUIRED, [(header::SEC_WEBSOCKET_VERSION, "13")], "WebSocket version 13 only")
                    .into_response()
            }
            NotAHandshake::Key(why) => (StatusCode::BAD_REQUEST, why).into_response(),
            NotAHandshake::NotUpgradable => {
                (StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded").into_response()
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotAHandshake;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotAHandshake> {
        if parts.method != Method::GET {
            return Err(NotAHandshake::NotGet);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") || !has_token(headers, header::UPGRADE, "websocket") {
            return Err(NotAHandshake::NotUpgrade);
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
            return Err(NotAHandshake::Version);
        }
        let key = check_key(headers).map_err(NotAHandshake::Key)?.clone();
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>().ok_or(NotAHandshake::NotUpgradable)?;
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// The `101`; `session` runs on the upgraded connection once the response is written.
    pub fn respond<F, Fut>(self, session: F) -> Response
    where
        F: FnOnce(hyper::upgrade::Upgraded) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Upgrade { key, on_upgrade } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => session(upgraded).await,
                Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
            }
        });
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, HeaderValue::try_from(accept).expect("base64 is a header value")),
            ],
        )
            .into_response()
    }
}

/// The WebSocket over an upgraded connection; on plain TCP, `conn`'s outlet writes to it too.
/// Not `async`: the session's task keeps what an `async` function is given for its whole life,
/// and the upgraded connection would stay there beside the socket made of it.
pub fn open(upgraded: hyper::upgrade::Upgraded, conn: Option<&Arc<Conn>>, config: WebSocketConfig) -> super::WebSocket {
    let transport = Transport::new(upgraded, conn);
    // Without a handshake there is nothing to wait for: tokio-tungstenite only wants a waker,
    // which every later poll replaces.
    tokio_tungstenite::WebSocketStream::from_raw_socket(transport, Role::Server, Some(config))
        .now_or_never()
        .expect("a WebSocket without handshake is ready at once")
}

/// The WebSocket settings of `limits`.
pub fn config(limits: &crate::config::Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(limits.write_buffer_size)
        .max_write_buffer_size(limits.write_buffer_size + (1 << 20))
        .max_message_size(Some(limits.max_message_size))
        .max_frame_size(Some(limits.max_message_size))
}

/// Whether a comma-separated header lists `token` (case-insensitive), in any of its lines.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// RFC 6455 section 4.2.1: exactly one `Sec-WebSocket-Key`, the base64 encoding of a 16-byte
/// nonce (24 characters, the last two `=`).
fn check_key(headers: &HeaderMap) -> Result<&HeaderValue, &'static str> {
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if nonce_of_16_bytes(key.as_bytes()) => Ok(key),
        (Some(_), None) => Err("Sec-WebSocket-Key must be the base64 encoding of 16 bytes"),
        _ => Err("exactly one Sec-WebSocket-Key header is required"),
    }
}

fn nonce_of_16_bytes(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let [body @ .., b'=', b'='] = key else { return false };
    let Some((&last, body)) = body.split_last() else { return false };
    // 16 bytes = 21 full characters and one carrying the last 2 bits (its low 4 bits zero).
    body.len() == 21
        && body.iter().all(|c| ALPHABET.contains(c))
        && ALPHABET.iter().position(|c| *c == last).is_some_and(|i| i & 0b1111 == 0)
}

#[cfg(test)]
mod tests {
    use super::{check_key, has_token, nonce_of_16_bytes};
    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn the_key_is_one_base64_16_byte_nonce() {
        // RFC 6455's example key, and one tungstenite generates.
        for key in ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w=="] {
            assert!(nonce_of_16_bytes(key.as_bytes()), "{key}");
        }
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "dGhlIHNhbXBsZSBub25jZQdGhl==",
            "aGVsbG8=",
        ] {
            assert!(!nonce_of_16_bytes(key.as_bytes()), "{key}");
        }
    }

    #[test]
    fn exactly_one_key_header() {
        let mut headers = HeaderMap::new();
        assert!(check_key(&headers).is_err(), "none");
        headers.append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(check_key(&headers).is_ok());
        headers.append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(check_key(&headers).is_err(), "two");
    }

    #[test]
    fn connection_lists_upgrade_among_its_tokens() {
        let mut headers = HeaderMap::new();
        assert!(!has_token(&headers, header::CONNECTION, "upgrade"));
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.append(header::CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(has_token(&headers, header::CONNECTION, "upgrade"), "in a second line");
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("upgraded"));
        assert!(!has_token(&headers, header::CONNECTION, "upgrade"), "a token, not a substring");
    }
}
