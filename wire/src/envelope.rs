//! Validation of the backend's event envelope (protocol section 5): what makes an event
//! deliverable, and the dead-letter reason when it is not. It reads only the routing fields and
//! never re-serialises: the payload bytes stay exactly as the backend published them.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Events larger than this are never delivered (protocol section 5).
pub const MAX_EVENT_BYTES: usize = 65_536;

/// Ids are stored by the backend in PostgreSQL integer columns; anything above is not an id.
const MAX_ID: u64 = i64::MAX as u64;

/// A positive id written as decimal digits (a channel segment, a token's `sub`, a legacy table
/// token field): `None` for signs, spaces, zero, or anything above `i64::MAX` (the backend's columns).
pub fn positive_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|id| (1..=MAX_ID).contains(id))
}

/// Why an event was refused. [`Reject::reason`] is the dead-letter reason and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    TooLarge,
    NotJson,
    NotObject,
    /// Valid JSON object that cannot be read as an envelope (for example a duplicated key).
    BadEnvelope,
    BadType,
    BadTenant,
    BadBranch,
    BadSector,
    BadSession,
    BadTable,
}

impl Reject {
    pub const ALL: [Reject; 10] = [
        Reject::TooLarge,
        Reject::NotJson,
        Reject::NotObject,
        Reject::BadEnvelope,
        Reject::BadType,
        Reject::BadTenant,
        Reject::BadBranch,
        Reject::BadSector,
        Reject::BadSession,
        Reject::BadTable,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::NotJson => "not_json",
            Reject::NotObject => "not_object",
            Reject::BadEnvelope => "bad_envelope",
            Reject::BadType => "bad_type",
            Reject::BadTenant => "bad_tenant",
            Reject::BadBranch => "bad_branch",
            Reject::BadSector => "bad_sector",
            Reject::BadSession => "bad_session",
            Reject::BadTable => "bad_table",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// The routing fields of a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_type: String,
    pub tenant_id: u64,
    /// `None` when the body has no `branch_id`; the bridge then takes it from the channel.
    pub branch_id: Option<u64>,
    pub sector_id: Option<u64>,
    pub session_id: Option<u64>,
    pub table_id: Option<u64>,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow, default)]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tenant_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    branch_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sector_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    session_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    table_id: Option<&'a RawValue>,
}

/// Validates `payload` as an event envelope.
pub fn parse(payload: &[u8]) -> Result<Envelope, Reject> {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(Reject::TooLarge);
    }
    // JSON text is UTF-8; serde skips unknown fields without checking their bytes.
    if std::str::from_utf8(payload).is_err() {
        return Err(Reject::NotJson);
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
            Ok(_) => Reject::NotObject,
            Err(_) => Reject::NotJson,
        });
    }
    let raw: Raw<'_> = serde_json::from_slice(payload).map_err(|_| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
            Ok(_) => Reject::BadEnvelope,
            Err(_) => Reject::NotJson,
        }
    })?;

    let event_type = raw
        .event_type
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .filter(|t| !t.is_empty())
        .ok_or(Reject::BadType)?;
    let tenant_id = raw.tenant_id.and_then(|v| id(v, 1)).ok_or(Reject::BadTenant)?;
    Ok(Envelope {
        event_type,
        tenant_id,
        branch_id: optional_id(raw.branch_id, 0).ok_or(Reject::BadBranch)?,
        sector_id: optional_id(raw.sector_id, 1).ok_or(Reject::BadSector)?,
        session_id: optional_id(raw.session_id, 1).ok_or(Reject::BadSession)?,
        table_id: optional_id(raw.table_id, 1).ok_or(Reject::BadTable)?,
    })
}

/// An integer id of at least `min`; `5.0`, `"5"` and `-1` are not ids.
fn id(value: &RawValue, min: u64) -> Option<u64> {
    serde_json::from_str::<u64>(value.get()).ok().filter(|id| (min..=MAX_ID).contains(id))
}

/// `Some(None)` for a missing or null field, `Some(Some(id))` for a valid id, `None` if invalid.
fn optional_id(value: Option<&RawValue>, min: u64) -> Option<Option<u64>> {
    match value {
        None => Some(None),
        Some(v) => id(v, min).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(payload: &str) -> Reject {
        parse(payload.as_bytes()).expect_err(payload)
    }

    #[test]
    fn reads_a_full_envelope() {
        let e = parse(
            br#"{"type":"ROUND_READY","tenant_id":3,"branch_id":7,"table_id":12,"session_id":99,
                "sector_id":null,"entity":{"round_id":5},"actor":{},"ts":"2026-01-01T00:00:00.000001Z","v":1,"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Envelope {
                event_type: "ROUND_READY".into(),
                tenant_id: 3,
                branch_id: Some(7),
                sector_id: None,
                session_id: Some(99),
                table_id: Some(12),
            }
        );
    }

    #[test]
    fn tenant_wide_and_missing_branch() {
        assert_eq!(parse(br#"{"type":"X","tenant_id":1,"branch_id":0}"#).unwrap().branch_id, Some(0));
        assert_eq!(parse(br#"{"type":"X","tenant_id":1}"#).unwrap().branch_id, None);
    }

    #[test]
    fn classifies_every_bad_input() {
        assert_eq!(reject("not json"), Reject::NotJson);
        assert_eq!(reject("{\"type\":"), Reject::NotJson);
        assert_eq!(reject(""), Reject::NotJson);
        assert_eq!(
            parse(b"{\"type\":\"X\",\"tenant_id\":1,\"note\":\"\xff\"}").unwrap_err(),
            Reject::NotJson,
            "invalid UTF-8"
        );
        assert_eq!(reject("[1,2]"), Reject::NotObject);
        assert_eq!(reject("\"text\""), Reject::NotObject);
        assert_eq!(reject("42"), Reject::NotObject);
        assert_eq!(reject(r#"{"type":"X","tenant_id":1,"tenant_id":2}"#), Reject::BadEnvelope);
        assert_eq!(reject(r#"{"tenant_id":1}"#), Reject::BadType);
        assert_eq!(reject(r#"{"type":7,"tenant_id":1}"#), Reject::BadType);
        assert_eq!(reject(r#"{"type":"X"}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":null}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":"1"}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":0}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":-3}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":1.0}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":1e30}"#), Reject::BadTenant);
        assert_eq!(reject(r#"{"type":"X","tenant_id":1,"branch_id":-1}"#), Reject::BadBranch);
        assert_eq!(
            reject(r#"{"type":"X","tenant_id":1,"branch_id":null}"#.replace("null", "\"2\"").as_str()),
            Reject::BadBranch
        );
        assert_eq!(reject(r#"{"type":"X","tenant_id":1,"sector_id":0}"#), Reject::BadSector);
        assert_eq!(reject(r#"{"type":"X","tenant_id":1,"session_id":"s"}"#), Reject::BadSession);
        assert_eq!(reject(r#"{"type":"X","tenant_id":1,"table_id":2.5}"#), Reject::BadTable);
    }

    #[test]
    fn positive_ids_are_plain_digits() {
        assert_eq!(positive_id("7"), Some(7));
        assert_eq!(positive_id("007"), Some(7));
        assert_eq!(positive_id(&MAX_ID.to_string()), Some(MAX_ID));
        for bad in ["", "0", "-1", "+1", " 1", "1.0", "abc", "9223372036854775808", "99999999999999999999999"] {
            assert_eq!(positive_id(bad), None, "{bad}");
        }
    }

    /// From the fuzz target `envelope` (crash-f86a662b…): an unpaired UTF-16 surrogate escape in
    /// a field the parser does not read. JSON's grammar allows it and browsers' JSON.parse takes
    /// it, so the event is valid and delivered untouched; only readers that build Rust strings
    /// (serde_json's `Value`) refuse it. In the routing field `type` it is refused.
    #[test]
    fn a_lone_surrogate_escape_is_json() {
        let e = parse(br#" {"type":"\u0058","tenant_id":9223372036854775807,"p":"]ud83d\ude00"}"#).unwrap();
        assert_eq!((e.event_type.as_str(), e.tenant_id), ("X", MAX_ID));
        assert!(serde_json::from_slice::<serde_json::Value>(br#"{"p":"\ude00"}"#).is_err(), "strict readers refuse");
        assert_eq!(reject(r#"{"type":"\ud800","tenant_id":1}"#), Reject::BadType);
    }

    #[test]
    fn size_is_counted_in_bytes() {
        let pad = "é".repeat(MAX_EVENT_BYTES / 2); // 2 bytes each
        let body = format!(r#"{{"type":"X","tenant_id":1,"p":"{pad}"}}"#);
        assert!(body.chars().count() < MAX_EVENT_BYTES + 64);
        assert_eq!(reject(&body), Reject::TooLarge);
    }
}
