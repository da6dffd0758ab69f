//! The bridge's RESP decoder (`publisher_bridge::source::resp::Decoder`), fed what a Redis
//! server (or anything on its port) sends. Input: one byte for the decoder's cap (0 to 127, or
//! 1 MiB), one for a chunk size (1 to 256), then the bytes.
//!
//! Checked: the bytes decoded in one piece and in chunks give the same frames and the same
//! error (TCP may split a reply anywhere); a bulk string is kept whole up to the cap and cut to
//! exactly the cap beyond; every frame without a cut string re-encodes to bytes that decode to
//! the same frame; classifying a frame as a pub/sub push never panics.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use publisher_bridge::source::resp::{Decoder, Frame, ProtocolError, Push};

fuzz_target!(|data: &[u8]| {
    let [cap, chunk, wire @ ..] = data else { return };
    let cap = if cap & 0x80 != 0 { 1 << 20 } else { usize::from(*cap) };
    let chunk = usize::from(*chunk) + 1;

    let whole = decode(cap, wire, wire.len().max(1));
    let chunked = decode(cap, wire, chunk);
    assert_eq!(whole, chunked, "the same bytes split into chunks of {chunk} decode differently");

    let (frames, _) = whole;
    for frame in frames {
        check_cap(&frame, cap);
        if !has_cut(&frame) {
            let mut again = BytesMut::new();
            encode(&frame, &mut again);
            let decoded = Decoder::new(1 << 20).decode(&mut again);
            assert_eq!(decoded, Ok(Some(frame.clone())), "re-encoding does not decode to the same frame");
            assert!(again.is_empty(), "re-encoding left bytes over");
        }
        if let Push::Message { channel, payload } = frame.into_push() {
            for blob in [channel, payload] {
                assert!(blob.head.len() <= cap && blob.head.len() <= blob.len, "{blob:?}");
            }
        }
    }
});

/// Every frame the bytes hold, fed `chunk` bytes at a time, and the error that ended them.
fn decode(cap: usize, wire: &[u8], chunk: usize) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut decoder = Decoder::new(cap);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in wire.chunks(chunk) {
        buf.put_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn check_cap(frame: &Frame, cap: usize) {
    match frame {
        Frame::Bulk(bytes) => assert!(bytes.len() <= cap, "a bulk string above the cap kept whole"),
        Frame::Cut(blob) => assert!(blob.head.len() == cap && blob.len > cap, "{blob:?}"),
        Frame::Array(parts) => parts.iter().for_each(|p| check_cap(p, cap)),
        _ => {}
    }
}

fn has_cut(frame: &Frame) -> bool {
    match frame {
        Frame::Cut(_) => true,
        Frame::Array(parts) => parts.iter().any(has_cut),
        _ => false,
    }
}

fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Simple(line) | Frame::Error(line) => {
            out.put_u8(if matches!(frame, Frame::Simple(_)) { b'+' } else { b'-' });
            out.put_slice(line);
            out.put_slice(b"\r\n");
        }
        Frame::Integer(n) => out.put_slice(format!(":{n}\r\n").as_bytes()),
        Frame::Bulk(bytes) => {
            out.put_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.put_slice(bytes);
            out.put_slice(b"\r\n");
        }
        Frame::Null => out.put_slice(b"$-1\r\n"),
        Frame::Array(parts) => {
            out.put_slice(format!("*{}\r\n", parts.len()).as_bytes());
            parts.iter().for_each(|p| encode(p, out));
        }
        Frame::Cut(_) => unreachable!("frames with a cut string are not re-encoded"),
    }
}
