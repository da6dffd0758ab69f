//! The part of the Redis protocol (RESP2) the bridge's own Redis readers speak (pub/sub, and
//! the stream reads): encoding commands, and decoding reply frames incrementally from the front
//! of a read buffer without copying bulk strings (a message's payload is a slice of the buffer
//! it arrived in). redis-rs's general parser cost the bridge half of its CPU under load (`perf`).
//!
//! Bounded: a bulk string longer than the decoder's `cap` is kept as its first `cap` bytes plus
//! its length ([`Frame::Cut`]); the rest is discarded as it arrives, so a 500 MB payload or
//! channel name costs the bridge `cap` bytes, never the whole string. Pure; no I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Redis's own limit on a bulk string (`proto-max-bulk-len`).
const MAX_BULK: usize = 512 << 20;
/// Replies we read are at most four arrays deep (XREADGROUP: streams, a stream, entries, an
/// entry's fields); anything deeper is not a reply we asked for.
const MAX_DEPTH: usize = 5;
const MAX_ELEMENTS: usize = 1 << 20;
/// A simple-string, error or length line longer than this is not a reply we asked for.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    /// A bulk string longer than the decoder's cap: its first `cap` bytes and its length.
    Cut(Blob),
    Null,
    Array(Vec<Frame>),
}

/// A bulk string as kept: `head` is the whole string unless `len` says it was longer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob {
    pub head: Bytes,
    pub len: usize,
}

impl Blob {
    pub fn whole(bytes: Bytes) -> Blob {
        Blob { len: bytes.len(), head: bytes }
    }

    /// Whether bytes were dropped past `head`.
    pub fn is_cut(&self) -> bool {
        self.len > self.head.len()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed reply from Redis: {0}")]
pub struct ProtocolError(&'static str);

/// What a pub/sub connection receives once subscribed.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// `pmessage`: the channel it was published on and the payload, untouched (or cut).
    Message { channel: Blob, payload: Blob },
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
    /// A bulk string, whole or cut.
    pub fn into_blob(self) -> Option<Blob> {
        match self {
            Frame::Bulk(bytes) => Some(Blob::whole(bytes)),
            Frame::Cut(blob) => Some(blob),
            _ => None,
        }
    }

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
            (b"pmessage", Some(_pattern), Some(channel), Some(payload)) => {
                match (channel.into_blob(), payload.into_blob()) {
                    (Some(channel), Some(payload)) => Push::Message { channel, payload },
                    _ => Push::Other,
                }
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

/// Decodes frames from the front of a buffer as their bytes arrive, consuming what it decoded;
/// keeps a partly received array (and the bulk string being discarded) between calls.
#[derive(Debug)]
pub struct Decoder {
    cap: usize,
    /// The arrays being filled, outermost first.
    open: Vec<Partial>,
    /// A cut bulk string whose remaining bytes (and CRLF) are being discarded.
    skipping: Option<(Blob, usize)>,
}

#[derive(Debug)]
struct Partial {
    parts: Vec<Frame>,
    left: usize,
}

/// One element read from the buffer.
enum Step {
    /// Complete.
    Done(Frame),
    /// An array opened or a cut string started: more elements follow.
    Open,
}

impl Decoder {
    /// A decoder keeping at most `cap` bytes of any bulk string.
    pub fn new(cap: usize) -> Decoder {
        Decoder { cap, open: Vec::new(), skipping: None }
    }

    /// Takes one complete frame from the front of `buf`; `Ok(None)` until enough bytes arrived
    /// (what was decoded so far is consumed and kept). After an error the decoder and the
    /// buffer are unusable: the caller drops the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        loop {
            let step = match &mut self.skipping {
                Some((_, left)) => {
                    let n = (*left).min(buf.len());
                    buf.advance(n);
                    *left -= n;
                    if *left > 0 {
                        return Ok(None);
                    }
                    let (blob, _) = self.skipping.take().expect("matched Some");
                    Step::Done(Frame::Cut(blob))
                }
                None => match self.element(buf)? {
                    Some(step) => step,
                    None => return Ok(None),
                },
            };
            if let Step::Done(frame) = step {
                if let Some(frame) = self.complete(frame) {
                    return Ok(Some(frame));
                }
            }
        }
    }

    /// Adds a complete element to the innermost open array; the outermost frame once complete.
    fn complete(&mut self, mut frame: Frame) -> Option<Frame> {
        loop {
            let Some(partial) = self.open.last_mut() else { return Some(frame) };
            partial.parts.push(frame);
            partial.left -= 1;
            if partial.left > 0 {
                return None;
            }
            let done = self.open.pop().expect("last_mut was Some");
            frame = Frame::Array(done.parts);
        }
    }

    /// Reads one element (a whole scalar, an array header, or a cut string's head); consumes
    /// nothing when its bytes are not all there yet.
    fn element(&mut self, buf: &mut BytesMut) -> Result<Option<Step>, ProtocolError> {
        let Some(&kind) = buf.first() else { return Ok(None) };
        let end = match line_end(buf, 1) {
            None if buf.len() > MAX_LINE => return Err(ProtocolError("line too long")),
            None => return Ok(None),
            Some(usize::MAX) => return Err(ProtocolError("CR without LF")),
            // Refused whole too, as it is while it arrives: the same bytes must not be accepted
            // or refused depending on how TCP split them.
            Some(end) if end >= MAX_LINE => return Err(ProtocolError("line too long")),
            Some(end) => end,
        };
        let after_line = end + 2;
        let step = match kind {
            b'+' | b'-' => {
                let line = buf.split_to(after_line).freeze().slice(1..end);
                Step::Done(if kind == b'+' { Frame::Simple(line) } else { Frame::Error(line) })
            }
            b':' => {
                let n = integer(&buf[1..end])?;
                buf.advance(after_line);
                Step::Done(Frame::Integer(n))
            }
            b'$' => {
                let n = integer(&buf[1..end])?;
                if n < 0 {
                    buf.advance(after_line);
                    return Ok(Some(Step::Done(Frame::Null)));
                }
                let n = n as usize;
                if n > MAX_BULK {
                    return Err(ProtocolError("bulk string too long"));
                }
                if n <= self.cap {
                    if buf.len() < after_line + n + 2 {
                        return Ok(None);
                    }
                    if &buf[after_line + n..after_line + n + 2] != b"\r\n" {
                        return Err(ProtocolError("bulk string not terminated"));
                    }
                    buf.advance(after_line);
                    let body = buf.split_to(n).freeze();
                    buf.advance(2);
                    Step::Done(Frame::Bulk(body))
                } else {
                    if buf.len() < after_line + self.cap {
                        return Ok(None);
                    }
                    buf.advance(after_line);
                    let head = buf.split_to(self.cap).freeze();
                    // The rest and the CRLF are discarded unseen.
                    self.skipping = Some((Blob { head, len: n }, n - self.cap + 2));
                    Step::Open
                }
            }
            b'*' | b'>' => {
                let n = integer(&buf[1..end])?;
                buf.advance(after_line);
                if n < 0 {
                    return Ok(Some(Step::Done(Frame::Null)));
                }
                if n == 0 {
                    return Ok(Some(Step::Done(Frame::Array(Vec::new()))));
                }
                if n as usize > MAX_ELEMENTS {
                    return Err(ProtocolError("array too long"));
                }
                if self.open.len() >= MAX_DEPTH {
                    return Err(ProtocolError("nested too deep"));
                }
                self.open.push(Partial { parts: Vec::with_capacity((n as usize).min(1024)), left: n as usize });
                Step::Open
            }
            _ => return Err(ProtocolError("unknown frame type")),
        };
        Ok(Some(step))
    }
}

/// The end of the line starting at `at` (the index of its `\r`), if complete; `usize::MAX` for
/// a CR not followed by LF.
fn line_end(buf: &[u8], at: usize) -> Option<usize> {
    let rest = buf.get(at..)?;
    let cr = rest.iter().position(|b| *b == b'\r')?;
    (rest.get(cr + 1)? == &b'\n').then_some(at + cr).or(Some(usize::MAX))
}

fn integer(line: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(ProtocolError("bad length or integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(text: &[u8]) -> BytesMut {
        BytesMut::from(text)
    }

    fn parse(b: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        Decoder::new(1 << 20).decode(b)
    }

    fn whole(text: &'static [u8]) -> Blob {
        Blob::whole(Bytes::from_static(text))
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
                channel: whole(b"branch:7:waiters"),
                payload: Blob::whole(Bytes::from(payload.to_string()))
            }
        );
    }

    #[test]
    fn a_payload_may_contain_crlf() {
        let mut b = buf(b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$4\r\na\r\nb\r\n");
        assert_eq!(
            parse(&mut b).unwrap().unwrap().into_push(),
            Push::Message { channel: whole(b"c"), payload: whole(b"a\r\nb") }
        );
    }

    #[test]
    fn frames_arrive_byte_by_byte() {
        let confirmation = &b"*3\r\n$10\r\npsubscribe\r\n$9\r\nsession:*\r\n:6\r\n"[..];
        let wire = [confirmation, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"].concat();
        let mut decoder = Decoder::new(64);
        let mut b = BytesMut::new();
        let mut frames = Vec::new();
        for (i, byte) in wire.iter().enumerate() {
            b.put_u8(*byte);
            if let Some(frame) = decoder.decode(&mut b).unwrap() {
                frames.push((i, frame));
            }
        }
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].0, confirmation.len() - 1, "complete exactly at its last byte");
        assert_eq!(frames[0].1.clone().into_push(), Push::Subscribed(6));
        assert_eq!(frames[1].1.clone().into_push(), Push::Pong);
        assert!(b.is_empty());
    }

    #[test]
    fn long_strings_are_cut_and_the_rest_discarded() {
        let channel = "c".repeat(100);
        let payload = "p".repeat(5000);
        let wire = format!(
            "*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$100\r\n{channel}\r\n$5000\r\n{payload}\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        );
        let mut decoder = Decoder::new(16);
        let mut b = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.as_bytes().chunks(7) {
            b.put_slice(chunk);
            assert!(b.len() <= 16 + 7 + 16, "never more than the cap and a chunk buffered: {}", b.len());
            while let Some(frame) = decoder.decode(&mut b).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        let Push::Message { channel: c, payload: p } = frames[0].clone().into_push() else { panic!("{frames:?}") };
        assert_eq!((&c.head[..], c.len, c.is_cut()), (&b"cccccccccccccccc"[..], 100, true));
        assert_eq!((p.head.len(), p.len), (16, 5000));
        assert_eq!(frames[1].clone().into_push(), Push::Pong);
    }

    #[test]
    fn decodes_nested_replies() {
        let wire = b"*1\r\n*2\r\n$1\r\nk\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\ndata\r\n$2\r\n{}\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";
        let frame = parse(&mut buf(wire)).unwrap().unwrap();
        let Frame::Array(streams) = frame else { panic!() };
        let Frame::Array(stream) = &streams[0] else { panic!() };
        let Frame::Array(entries) = &stream[1] else { panic!() };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], Frame::Array(vec![Frame::Bulk(Bytes::from_static(b"2-0")), Frame::Null]));
        assert_eq!(parse(&mut buf(b"*0\r\n")).unwrap(), Some(Frame::Array(vec![])));
    }

    #[test]
    fn decodes_simple_replies_and_errors() {
        let mut b = buf(b"+OK\r\n-NOAUTH Authentication required.\r\n:42\r\n$-1\r\n");
        let mut d = Decoder::new(64);
        assert_eq!(d.decode(&mut b).unwrap(), Some(Frame::Simple(Bytes::from_static(b"OK"))));
        assert_eq!(
            d.decode(&mut b).unwrap().unwrap().into_push(),
            Push::Error("NOAUTH Authentication required.".into())
        );
        assert_eq!(d.decode(&mut b).unwrap(), Some(Frame::Integer(42)));
        assert_eq!(d.decode(&mut b).unwrap(), Some(Frame::Null));
        assert_eq!(d.decode(&mut b).unwrap(), None);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [&b"?what\r\n"[..], b"$abc\r\n", b"$3\r\nabcd\r\n", b"*-x\r\n", b"+a\rb\r\n"] {
            assert!(parse(&mut buf(bad)).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&mut buf(b"$999999999999\r\n")).is_err());
        assert!(parse(&mut buf(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n")).is_err(), "too deep");
        assert!(parse(&mut buf(&[b'+'; MAX_LINE + 2])).is_err(), "endless line");
    }

    /// Found while writing the fuzz target `resp_decoder` (whole and chunked decoding must
    /// agree): a complete line longer than `MAX_LINE` in one read was accepted, the same bytes
    /// arriving in pieces refused.
    #[test]
    fn a_long_line_is_refused_however_it_arrives() {
        let mut wire = vec![b'+'];
        wire.resize(MAX_LINE + 8, b'a');
        wire.extend_from_slice(b"\r\n");
        assert_eq!(parse(&mut buf(&wire)), Err(ProtocolError("line too long")), "in one read");
        let mut decoder = Decoder::new(64);
        let mut b = BytesMut::new();
        let outcome = wire.chunks(4096).find_map(|chunk| {
            b.put_slice(chunk);
            decoder.decode(&mut b).transpose()
        });
        assert_eq!(outcome, Some(Err(ProtocolError("line too long"))), "in pieces");
        let mut longest = vec![b'+'];
        longest.resize(MAX_LINE - 1, b'a');
        longest.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&mut buf(&longest)), Ok(Some(Frame::Simple(_)))), "the longest line allowed");
    }
}
