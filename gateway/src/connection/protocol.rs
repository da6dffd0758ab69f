//! The text protocol on an open socket (protocol section 4): what a client frame means and the
//! replies (the close codes: [`crate::close`]; the rate window and the timers: `timing`).
//! Pure logic, no I/O.

use serde::Deserialize;

/// What a client text frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Ping,
    RefreshSectors,
    Other,
}

pub const PONG: &str = r#"{"type":"pong"}"#;

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
}

/// `ping`, a JSON object whose `type` is `ping`, or `refresh_sectors`; anything else is `Other`.
pub fn classify(text: &str) -> Inbound {
    let text = text.trim();
    match text {
        "ping" => Inbound::Ping,
        "refresh_sectors" => Inbound::RefreshSectors,
        _ if text.starts_with('{') => match serde_json::from_str::<Typed>(text) {
            Ok(Typed { kind: Some(serde_json::Value::String(kind)) }) if kind == "ping" => Inbound::Ping,
            _ => Inbound::Other,
        },
        _ => Inbound::Other,
    }
}

/// The reply to `refresh_sectors`: `sectors_updated:` and the ids joined by commas.
pub fn sectors_updated(sectors: &[u64]) -> String {
    let ids: Vec<String> = sectors.iter().map(u64::to_string).collect();
    format!("sectors_updated:{}", ids.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ping_form() {
        for text in [
            "ping",
            " ping\n",
            r#"{"type":"ping"}"#,
            r#"{ "type" : "ping" , "ts": 5 }"#,
            "{\n\"type\":\"ping\"}",
            // Valid JSON (RFC 8259 sets no range on numbers) that an f64 cannot hold (fuzz finding).
            r#"{"p":1e+000012996995786650955,"type":"ping"}"#,
        ] {
            assert_eq!(classify(text), Inbound::Ping, "{text}");
        }
        for text in [
            "PING",
            "pingpong",
            r#"{"type":"pong"}"#,
            r#"{"type":["ping"]}"#,
            r#"["ping"]"#,
            "{not json",
            r#"{"kind":"ping"}"#,
        ] {
            assert_eq!(classify(text), Inbound::Other, "{text}");
        }
        assert_eq!(classify("refresh_sectors"), Inbound::RefreshSectors);
    }

    #[test]
    fn sector_reply_format() {
        assert_eq!(sectors_updated(&[]), "sectors_updated:");
        assert_eq!(sectors_updated(&[5, 12]), "sectors_updated:5,12");
    }
}
