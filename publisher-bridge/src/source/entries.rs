//! Decoding Redis stream replies (XREADGROUP, XAUTOCLAIM) into entries without copying field
//! values, and picking an entry's event text (`data`, else `payload`). Pure; no I/O.

use redis::Value;

/// One stream entry; `fields` is `None` when the entry was deleted (trimmed) while pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// XREADGROUP's reply for a single key: nil on timeout, an array (RESP2) or a map (RESP3).
pub fn parse_read_reply(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(parse_entries).collect()
}

/// XAUTOCLAIM's reply: the next cursor and the claimed entries (deleted ids are dropped by Redis
/// 7 from the pending list by itself).
pub fn parse_autoclaim(reply: Value) -> (String, Vec<Entry>) {
    let Value::Array(mut parts) = reply else { return (String::new(), Vec::new()) };
    if parts.len() < 2 {
        return (String::new(), Vec::new());
    }
    let entries = parse_entries(parts.remove(1));
    let next = text(parts.remove(0)).unwrap_or_default();
    (next, entries)
}

fn parse_entries(entries: Value) -> Vec<Entry> {
    let Value::Array(entries) = entries else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else { return None };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = text(parts.pop()?)?;
            let fields = match fields {
                Value::Array(flat) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((bytes(k), bytes(v)));
                    }
                    Some(pairs)
                }
                Value::Map(map) => Some(map.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect()),
                _ => None,
            };
            Some(Entry { id, fields })
        })
        .collect()
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// The event text of an entry: field `data`, else `payload` (an earlier backend wrote that).
/// Without either, a JSON object of the entry's fields (lossy UTF-8) for the dead letter.
pub fn data_field(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u8>, Vec<u8>> {
    let pick = |name: &[u8]| fields.iter().position(|(k, _)| k == name);
    if let Some(i) = pick(b"data").or_else(|| pick(b"payload")) {
        return Ok(fields.into_iter().nth(i).map(|(_, v)| v).unwrap_or_default());
    }
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned().into()))
        .collect();
    Err(serde_json::to_vec(&object).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![bulk(id), Value::Array(fields.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())])
    }

    #[test]
    fn reads_resp2_and_resp3_replies() {
        let entries = Value::Array(vec![entry("1-0", &[("data", "{}")]), Value::Array(vec![bulk("2-0"), Value::Nil])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("events:critical"), entries.clone()])]);
        let parsed = parse_read_reply(resp2);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], Entry { id: "1-0".into(), fields: Some(vec![(b"data".to_vec(), b"{}".to_vec())]) });
        assert_eq!(parsed[1], Entry { id: "2-0".into(), fields: None });
        let resp3 = Value::Map(vec![(bulk("events:critical"), entries)]);
        assert_eq!(parse_read_reply(resp3), parsed);
        assert!(parse_read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn reads_autoclaim_replies() {
        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![entry("3-0", &[("payload", "x")])]),
            Value::Array(vec![]),
        ]);
        let (next, entries) = parse_autoclaim(reply);
        assert_eq!(next, "5-0");
        assert_eq!(entries[0].id, "3-0");
        let (next, entries) = parse_autoclaim(Value::Array(vec![bulk("0-0"), Value::Array(vec![])]));
        assert_eq!((next.as_str(), entries.len()), ("0-0", 0));
    }

    #[test]
    fn picks_data_then_payload() {
        let f = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect::<Vec<_>>()
        };
        assert_eq!(data_field(f(&[("payload", "p"), ("data", "d")])), Ok(b"d".to_vec()));
        assert_eq!(data_field(f(&[("payload", "p")])), Ok(b"p".to_vec()));
        assert_eq!(data_field(f(&[("other", "o")])), Err(br#"{"other":"o"}"#.to_vec()));
    }
}
