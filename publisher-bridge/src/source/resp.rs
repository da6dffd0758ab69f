//! The part of the Redis protocol (RESP2) the pub/sub reader speaks: encoding commands, and
//! decoding reply frames from the front of a read buffer without copying bulk strings (a
//! message's payload is a slice of the buffer it arrived in). redis-rs's general parser cost
//! the bridge half of its CPU under load (`perf`); pub/sub frames need a fraction of it.
//! Pure; no I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// Redis's own limit on a bulk string (`proto-max-bulk-len`).
const MAX_BULK: usize = 512 << 20;
/// Pub/sub frames are flat arrays of a few elements; anything deeper is not a reply we asked for.
const MAX_DEPTH: usize = 4;
const MAX_ELEMENTS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Frame>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed reply from Redis: {0}")]
pub struct ProtocolError(&'static str);

/// What a pub/sub connection receives once subscribed.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// `pmessage`: the channel it was published on and the payload, untouched.
    Message { channel: Bytes, payload: Bytes },
    /// `psubscribe` confirmation, with the connection's subscription count.
    Subscribed(i64),
    /// The answer to a PING.
    Pong,
    /// An error reply.
    Error(String),
    /// Anything else (ignored).
    Other,
}

impl Frame {
    /// Classifies a frame received in subscribed mode.
    pub fn into_push(self) -> Push {
        let parts = match self {
            Frame::Error(text) => return Push::Error(String::from_utf8_lossy(&text).into_owned()),
            Frame::Array(parts) => parts,
            _ => return Push::Other,
        };
        let mut parts = parts.into_iter();
        let kind = match parts.next() {
            Some(Frame::Bulk(kind) | Frame::Simple(kind)) => kind,
            _ => return Push::Other,
        };
        match (&kind[..], parts.next(), parts.next(), parts.next()) {
            (b"pmessage", Some(_pattern), Some(Frame::Bulk(channel)), Some(Frame::Bulk(payload))) => {
                Push::Message { channel, payload }
            }
            (b"psubscribe", _, Some(Frame::Integer(count)), None) => Push::Subscribed(count),
            (b"pong", ..) => Push::Pong,
            _ => Push::Other,
        }
    }
}

/// Appends one command in RESP's request form.
pub fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        out.put_slice(arg.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// Takes one complete frame from the front of `buf`; `Ok(None)` until enough bytes arrived.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    let Some(len) = measure(buf, 0, 0)? else { return Ok(None) };
    let bytes = buf.split_to(len).freeze();
    let (frame, _) = build(&bytes, 0);
    Ok(Some(frame))
}

/// The end of the line starting at `at` (the index of its `\r`), if complete.
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    let rest = buf.get(at..)?;
    let cr = rest.iter().position(|b| *b == b'\r')?;
    (rest.get(cr + 1)? == &b'\n').then_some(at + cr).or(Some(usize::MAX))
}

fn integer(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(ProtocolError("bad length or integer"))
}

/// The length in bytes of the frame starting at `at`, without building it.
fn measure(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("nested too deep"));
    }
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some(end) = line_end(buf, at + 1) else { return Ok(None) };
    if end == usize::MAX {
        return Err(ProtocolError("CR without LF"));
    }
    let line = &buf[at + 1..end];
    let after_line = end + 2;
    match kind {
        b'+' | b'-' => Ok(Some(after_line - at)),
        b':' => integer(line).map(|_| Some(after_line - at)),
        b'$' => {
            let n = integer(line)?;
            if n < 0 {
                return Ok(Some(after_line - at));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(ProtocolError("bulk string too long"));
            }
            if buf.len() < after_line + n + 2 {
                return Ok(None);
            }
            if &buf[after_line + n..after_line + n + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not terminated"));
            }
            Ok(Some(after_line + n + 2 - at))
        }
        b'*' | b'>' => {
            let n = integer(line)?;
            if n < 0 {
                return Ok(Some(after_line - at));
            }
            if n as usize > MAX_ELEMENTS {
                return Err(ProtocolError("array too long"));
            }
            let mut pos = after_line;
            for _ in 0..n {
                match measure(buf, pos, depth + 1)? {
                    Some(len) => pos += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos - at))
        }
        _ => Err(ProtocolError("unknown frame type")),
    }
}

/// Builds the frame at `at` of a buffer [`measure`] accepted; returns it and where it ends.
fn build(bytes: &Bytes, at: usize) -> (Frame, usize) {
    let end = line_end(bytes, at + 1).expect("measured");
    let line = &bytes[at + 1..end];
    let after_line = end + 2;
    match bytes[at] {
        b'+' => (Frame::Simple(bytes.slice(at + 1..end)), after_line),
        b'-' => (Frame::Error(bytes.slice(at + 1..end)), after_line),
        b':' => (Frame::Integer(integer(line).expect("measured")), after_line),
        b'$' => match integer(line).expect("measured") {
            n if n < 0 => (Frame::Null, after_line),
            n => {
                let n = n as usize;
                (Frame::Bulk(bytes.slice(after_line..after_line + n)), after_line + n + 2)
            }
        },
        _ => match integer(line).expect("measured") {
            n if n < 0 => (Frame::Null, after_line),
            n => {
                let mut parts = Vec::with_capacity(n as usize);
                let mut pos = after_line;
                for _ in 0..n {
                    let (part, next) = build(bytes, pos);
                    parts.push(part);
                    pos = next;
                }
                (Frame::Array(parts), pos)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(text: &[u8]) -> BytesMut {
        BytesMut::from(text)
    }

    #[test]
    fn encodes_commands() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"PSUBSCRIBE", b"branch:*:waiters"]);
        assert_eq!(&out[..], b"*2\r\n$10\r\nPSUBSCRIBE\r\n$16\r\nbranch:*:waiters\r\n");
    }

    #[test]
    fn decodes_a_pmessage_without_touching_the_payload() {
        let payload = "{\"type\":\"X\",\"text\":\"l\u{00ed}nea\\r\\n\"}";
        let wire = format!(
            "*4\r\n$8\r\npmessage\r\n$8\r\nbranch:*\r\n$16\r\nbranch:7:waiters\r\n${}\r\n{payload}\r\n",
            payload.len()
        );
        let mut b = buf(wire.as_bytes());
        let frame = parse(&mut b).unwrap().unwrap();
        assert!(b.is_empty());
        assert_eq!(
            frame.into_push(),
            Push::Message {
                channel: Bytes::from_static(b"branch:7:waiters"),
                payload: Bytes::from(payload.to_string())
            }
        );
    }

    #[test]
    fn a_payload_may_contain_crlf() {
        let mut b = buf(b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$4\r\na\r\nb\r\n");
        assert_eq!(
            parse(&mut b).unwrap().unwrap().into_push(),
            Push::Message { channel: Bytes::from_static(b"c"), payload: Bytes::from_static(b"a\r\nb") }
        );
    }

    #[test]
    fn waits_for_every_byte_of_a_frame() {
        let confirmation = &b"*3\r\n$10\r\npsubscribe\r\n$9\r\nsession:*\r\n:6\r\n"[..];
        let wire = [confirmation, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"].concat();
        for cut in 0..confirmation.len() {
            let mut b = buf(&wire[..cut]);
            assert_eq!(parse(&mut b), Ok(None), "cut at {cut}");
            assert_eq!(b.len(), cut, "nothing consumed");
        }
        let mut b = buf(&wire);
        assert_eq!(parse(&mut b).unwrap().unwrap().into_push(), Push::Subscribed(6));
        assert_eq!(parse(&mut b).unwrap().unwrap().into_push(), Push::Pong);
        assert_eq!(parse(&mut b), Ok(None));
    }

    #[test]
    fn decodes_simple_replies_and_errors() {
        let mut b = buf(b"+OK\r\n-NOAUTH Authentication required.\r\n:42\r\n$-1\r\n");
        assert_eq!(parse(&mut b).unwrap(), Some(Frame::Simple(Bytes::from_static(b"OK"))));
        assert_eq!(parse(&mut b).unwrap().unwrap().into_push(), Push::Error("NOAUTH Authentication required.".into()));
        assert_eq!(parse(&mut b).unwrap(), Some(Frame::Integer(42)));
        assert_eq!(parse(&mut b).unwrap(), Some(Frame::Null));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [&b"?what\r\n"[..], b"$abc\r\n", b"$3\r\nabcd\r\n", b"*-x\r\n", b"+a\rb\r\n"] {
            assert!(parse(&mut buf(bad)).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&mut buf(b"$999999999999\r\n")).is_err());
        assert!(parse(&mut buf(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n")).is_err(), "too deep");
    }
}
