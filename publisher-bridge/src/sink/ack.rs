//! JetStream's answer to one publish, read from the reply message: stored (or a duplicate of a
//! stored message), or refused with the reason. No I/O.

use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::ErrorCode;
use async_nats::Message;
use async_nats::StatusCode;
use serde::Deserialize;

/// JetStream's 10158 "duplicate message id is in process": a publish with the same
/// `Nats-Msg-Id` is being stored right now (by another bridge replica).
pub const IN_PROCESS_ELSEWHERE: u16 = ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT.0 as u16;

/// A publish JetStream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream: String,
    pub sequence: u64,
    /// Already stored within the duplicate window: this publish added nothing.
    pub duplicate: bool,
}

impl From<PublishAck> for Stored {
    fn from(ack: PublishAck) -> Stored {
        Stored { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate }
    }
}

/// Why a publish was not acknowledged. Every kind is retried but those
/// [`Refused::permanent`] names: a retry of those can never succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No stream listens on the subject right now (a leader election, or the stream is gone).
    #[error("no responders (no stream leader for the subject)")]
    NoResponders,
    #[error("JetStream error {err_code} ({code}): {description}")]
    Api { code: u16, err_code: u16, description: String },
    #[error("unreadable acknowledgement: {0}")]
    Unreadable(String),
    #[error("no acknowledgement within the publish timeout")]
    TimedOut,
    /// The client could not send or wait (a closed connection, say).
    #[error("publish failed: {0}")]
    Other(String),
    /// The message is larger than the server accepts on a connection (`max_payload`): sending
    /// it would make nats-server close the connection.
    #[error("message larger than the server's max_payload")]
    MaxPayload,
}

impl Refused {
    pub fn in_process_elsewhere(&self) -> bool {
        matches!(self, Refused::Api { err_code: IN_PROCESS_ELSEWHERE, .. })
    }

    /// `Some(reason)` when the refusal is about the message itself (or a stream that will never
    /// take it), so that a retry cannot succeed; `None` for anything that may pass later (no
    /// responders during a leader election, timeouts, 10158, a full stream, a lost connection).
    pub fn permanent(&self) -> Option<&'static str> {
        let code = match self {
            Refused::MaxPayload => return Some("max_payload"),
            Refused::Api { err_code, .. } => *err_code as u64,
            _ => return None,
        };
        Some(match ErrorCode(code) {
            ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => "message_too_large",
            ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM => "header_too_large",
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID => "expected_mismatch",
            ErrorCode::BAD_REQUEST => "bad_request",
            ErrorCode::STREAM_SEALED => "stream_sealed",
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
struct Reply {
    stream: Option<String>,
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    code: u16,
    #[serde(default)]
    err_code: u16,
    #[serde(default)]
    description: String,
}

/// Reads the reply to a publish.
pub fn read(reply: &Message) -> Result<Stored, Refused> {
    match reply.status {
        Some(StatusCode::NO_RESPONDERS) => return Err(Refused::NoResponders),
        Some(status) if status != StatusCode::OK => {
            return Err(Refused::Unreadable(format!("status {status} {}", reply.description.as_deref().unwrap_or(""))));
        }
        _ => {}
    }
    parse(&reply.payload)
}

/// Reads the JSON body of a publish acknowledgement.
pub fn parse(body: &[u8]) -> Result<Stored, Refused> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| Refused::Unreadable(format!("{e}: {}", String::from_utf8_lossy(body))))?;
    match reply {
        Reply { error: Some(e), .. } => {
            Err(Refused::Api { code: e.code, err_code: e.err_code, description: e.description })
        }
        Reply { stream: Some(stream), seq: Some(sequence), duplicate, .. } => {
            Ok(Stored { stream, sequence, duplicate })
        }
        _ => Err(Refused::Unreadable(String::from_utf8_lossy(body).into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_duplicate() {
        assert_eq!(
            parse(br#"{"stream":"EVENTS","seq":42}"#),
            Ok(Stored { stream: "EVENTS".into(), sequence: 42, duplicate: false })
        );
        assert_eq!(
            parse(br#"{"stream":"EVENTS","domain":"hub","seq":7,"duplicate":true}"#),
            Ok(Stored { stream: "EVENTS".into(), sequence: 7, duplicate: true })
        );
    }

    #[test]
    fn api_errors_keep_their_codes() {
        let conflict =
            parse(br#"{"error":{"code":400,"err_code":10158,"description":"duplicate message id is in process"}}"#)
                .unwrap_err();
        assert!(conflict.in_process_elsewhere());
        let other =
            parse(br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#).unwrap_err();
        assert!(!other.in_process_elsewhere());
        assert_eq!(other.to_string(), "JetStream error 10077 (503): maximum messages exceeded");
    }

    #[test]
    fn only_refusals_about_the_message_are_permanent() {
        let api = |err_code: u16| Refused::Api { code: 400, err_code, description: String::new() };
        assert_eq!(api(10054).permanent(), Some("message_too_large"));
        assert_eq!(api(10097).permanent(), Some("header_too_large"));
        assert_eq!(api(10071).permanent(), Some("expected_mismatch"));
        assert_eq!(api(10070).permanent(), Some("expected_mismatch"));
        assert_eq!(api(10003).permanent(), Some("bad_request"));
        assert_eq!(Refused::MaxPayload.permanent(), Some("max_payload"));
        for transient in [
            api(IN_PROCESS_ELSEWHERE),
            api(10077),
            api(10008),
            Refused::NoResponders,
            Refused::TimedOut,
            Refused::Other("connection closed".into()),
            Refused::Unreadable("?".into()),
        ] {
            assert_eq!(transient.permanent(), None, "{transient}");
        }
        // Each permanent reason is a label value the metrics declare up front.
        for refused in [api(10054), api(10097), api(10071), api(10003), Refused::MaxPayload] {
            let reason = refused.permanent().unwrap();
            assert!(crate::metrics::DROPPED_REASONS.contains(&reason), "{reason}");
        }
    }

    #[test]
    fn anything_else_is_unreadable() {
        for body in [&b""[..], b"not json", b"{}", br#"{"stream":"EVENTS"}"#, b"[1]"] {
            assert!(matches!(parse(body), Err(Refused::Unreadable(_))), "{:?}", String::from_utf8_lossy(body));
        }
    }
}
