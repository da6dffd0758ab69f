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

/// Why a publish was not acknowledged; every kind is retried.
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
}

impl Refused {
    pub fn in_process_elsewhere(&self) -> bool {
        matches!(self, Refused::Api { err_code: IN_PROCESS_ELSEWHERE, .. })
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
    fn anything_else_is_unreadable() {
        for body in [&b""[..], b"not json", b"{}", br#"{"stream":"EVENTS"}"#, b"[1]"] {
            assert!(matches!(parse(body), Err(Refused::Unreadable(_))), "{:?}", String::from_utf8_lossy(body));
        }
    }
}
