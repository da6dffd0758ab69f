//! Decoding Redis stream replies (XREADGROUP, XAUTOCLAIM) as the bridge's reader received them
//! ([`crate::source::resp::Frame`], strings cut at [`crate::source::BULK_CAP`]) into entries
//! without copying field values, and picking an entry's event text (`data`, else `payload`).
//! Pure; no I/O.

use bytes::Bytes;

use crate::source::resp::{Blob, Frame};

/// Bytes counted for an entry besides its strings (its share of the reply's structure).
const ENTRY_OVERHEAD: usize = 64;

/// One stream entry; `fields` is `None` when the entry was deleted (trimmed) while pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(Bytes, Blob)>>,
    /// The bytes the reader kept of it (its charge against the read budget).
    pub cost: usize,
}

/// A reply that is not what the command returns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("Redis answered {0}")]
    Redis(String),
    #[error("unexpected reply shape to {0}")]
    Shape(&'static str),
}

fn redis_error(frame: &Frame) -> Option<ReplyError> {
    match frame {
        Frame::Error(text) => Some(ReplyError::Redis(String::from_utf8_lossy(text).into_owned())),
        _ => None,
    }
}

/// XREADGROUP's reply for a single key: nil on timeout, else `[[key, [entry...]]]`.
pub fn from_read(reply: Frame) -> Result<Vec<Entry>, ReplyError> {
    if let Some(e) = redis_error(&reply) {
        return Err(e);
    }
    let streams = match reply {
        Frame::Null => return Ok(Vec::new()),
        Frame::Array(streams) => streams,
        _ => return Err(ReplyError::Shape("XREADGROUP")),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Frame::Array(mut pair) = stream else { return Err(ReplyError::Shape("XREADGROUP")) };
        if pair.len() != 2 {
            return Err(ReplyError::Shape("XREADGROUP"));
        }
        out.extend(entries(pair.pop().expect("two"))?);
    }
    Ok(out)
}

/// XAUTOCLAIM's reply: the next cursor and the claimed entries (Redis 7 drops deleted ids
/// from the pending list by itself and lists them third).
pub fn from_autoclaim(reply: Frame) -> Result<(String, Vec<Entry>), ReplyError> {
    if let Some(e) = redis_error(&reply) {
        return Err(e);
    }
    let Frame::Array(parts) = reply else { return Err(ReplyError::Shape("XAUTOCLAIM")) };
    let mut parts = parts.into_iter();
    let next = parts.next().and_then(text).ok_or(ReplyError::Shape("XAUTOCLAIM"))?;
    let claimed = entries(parts.next().ok_or(ReplyError::Shape("XAUTOCLAIM"))?)?;
    Ok((next, claimed))
}

fn entries(frame: Frame) -> Result<Vec<Entry>, ReplyError> {
    let Frame::Array(entries) = frame else { return Err(ReplyError::Shape("stream entries")) };
    entries.into_iter().map(entry).collect()
}

fn entry(frame: Frame) -> Result<Entry, ReplyError> {
    let Frame::Array(parts) = frame else { return Err(ReplyError::Shape("stream entry")) };
    let mut parts = parts.into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ReplyError::Shape("stream entry"));
    };
    let id = text(id).ok_or(ReplyError::Shape("stream entry id"))?;
    let mut cost = ENTRY_OVERHEAD + id.len();
    let fields = match fields {
        Frame::Null => None,
        Frame::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let name = k.into_blob().map(|b| b.head).unwrap_or_default();
                let value = v.into_blob().unwrap_or_default();
                cost += name.len() + value.head.len();
                pairs.push((name, value));
            }
            Some(pairs)
        }
        _ => return Err(ReplyError::Shape("stream entry fields")),
    };
    Ok(Entry { id, fields, cost })
}

fn text(frame: Frame) -> Option<String> {
    match frame {
        Frame::Bulk(b) | Frame::Simple(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    }
}

/// The event text of an entry: field `data`, else `payload` (an earlier backend wrote that).
/// Without either, a JSON object of the entry's fields (lossy UTF-8, as kept) for the dead letter.
pub fn data_field(fields: Vec<(Bytes, Blob)>) -> Result<Blob, Vec<u8>> {
    let pick = |name: &[u8]| fields.iter().position(|(k, _)| k == name);
    if let Some(i) = pick(b"data").or_else(|| pick(b"payload")) {
        return Ok(fields.into_iter().nth(i).map(|(_, v)| v).unwrap_or_default());
    }
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(&v.head).into_owned().into()))
        .collect();
    Err(serde_json::to_vec(&object).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Frame {
        Frame::Array(vec![bulk(id), Frame::Array(fields.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect())])
    }

    fn blob(s: &str) -> Blob {
        Blob::whole(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn reads_xreadgroup_replies() {
        let entries = Frame::Array(vec![entry("1-0", &[("data", "{}")]), Frame::Array(vec![bulk("2-0"), Frame::Null])]);
        let reply = Frame::Array(vec![Frame::Array(vec![bulk("events:critical"), entries])]);
        let parsed = from_read(reply).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].id, "1-0");
        assert_eq!(parsed[0].fields, Some(vec![(Bytes::from_static(b"data"), blob("{}"))]));
        assert_eq!(parsed[0].cost, ENTRY_OVERHEAD + 3 + 4 + 2);
        assert_eq!(parsed[1].fields, None);
        assert!(from_read(Frame::Null).unwrap().is_empty());
        assert_eq!(
            from_read(Frame::Error(Bytes::from_static(b"NOGROUP no such group"))),
            Err(ReplyError::Redis("NOGROUP no such group".into()))
        );
        assert!(from_read(Frame::Integer(3)).is_err());
    }

    #[test]
    fn cut_values_are_charged_what_was_kept() {
        let cut = Frame::Cut(Blob { head: Bytes::from_static(b"{\"type\""), len: 5_000_000 });
        let reply = Frame::Array(vec![Frame::Array(vec![
            bulk("k"),
            Frame::Array(vec![Frame::Array(vec![bulk("1-0"), Frame::Array(vec![bulk("data"), cut])])]),
        ])]);
        let e = from_read(reply).unwrap().remove(0);
        assert_eq!(e.cost, ENTRY_OVERHEAD + 3 + 4 + 7);
        let data = data_field(e.fields.unwrap()).unwrap();
        assert!(data.is_cut());
        assert_eq!(data.len, 5_000_000);
    }

    #[test]
    fn reads_autoclaim_replies() {
        let reply = Frame::Array(vec![
            bulk("5-0"),
            Frame::Array(vec![entry("3-0", &[("payload", "x")])]),
            Frame::Array(vec![]),
        ]);
        let (next, entries) = from_autoclaim(reply).unwrap();
        assert_eq!(next, "5-0");
        assert_eq!(entries[0].id, "3-0");
        let (next, entries) = from_autoclaim(Frame::Array(vec![bulk("0-0"), Frame::Array(vec![])])).unwrap();
        assert_eq!((next.as_str(), entries.len()), ("0-0", 0));
    }

    #[test]
    fn picks_data_then_payload() {
        let f = |pairs: &[(&str, &str)]| {
            pairs.iter().map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), blob(v))).collect::<Vec<_>>()
        };
        assert_eq!(data_field(f(&[("payload", "p"), ("data", "d")])), Ok(blob("d")));
        assert_eq!(data_field(f(&[("payload", "p")])), Ok(blob("p")));
        assert_eq!(data_field(f(&[("other", "o")])), Err(br#"{"other":"o"}"#.to_vec()));
    }
}
