//! The time an event's writes began, carried in its frame so that the floor's reader can tell
//! how long each frame took to reach it: 16 hex digits of Unix microseconds at the start of the
//! frame's JSON string (`{"p":"00063e3d…xxx"}`). The frame keeps its size and stays valid JSON;
//! the sender writes the digits once per event into the one frame all its recipients get, as a
//! gateway encodes one frame per event.

/// Hex digits of a stamp.
const DIGITS: usize = 16;
/// The frame's JSON before the string's content: `{"p":"`.
const BEFORE: usize = 6;

/// Where the stamp sits in a frame of `frame_bytes` bytes built by [`super::frame`], or `None`
/// when the frame is too short to carry one.
pub fn offset(frame_bytes: usize) -> Option<usize> {
    let header = super::header_bytes(frame_bytes);
    let payload = frame_bytes.checked_sub(header)?;
    (payload >= BEFORE + DIGITS + 2).then_some(header + BEFORE)
}

/// Writes `micros` at `offset` of `frame`.
pub fn write(frame: &mut [u8], offset: usize, micros: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in frame[offset..offset + DIGITS].iter_mut().enumerate() {
        *digit = HEX[(micros >> (4 * (DIGITS - 1 - i))) as usize & 0xf];
    }
}

/// Follows one socket's bytes, a sequence of frames of one size, however the reads split them,
/// and hands over each frame's stamp once its last digit arrived.
pub struct Follower {
    frame_bytes: usize,
    offset: usize,
    /// Position within the current frame.
    at: usize,
    digits: [u8; DIGITS],
}

impl Follower {
    /// `None` when frames of this size carry no stamp.
    pub fn new(frame_bytes: usize) -> Option<Follower> {
        Some(Follower { frame_bytes, offset: offset(frame_bytes)?, at: 0, digits: [0; DIGITS] })
    }

    /// Takes the bytes of one read; calls `stamped` with each stamp completed by them (frames
    /// whose digits are not a stamp are passed over).
    pub fn feed(&mut self, mut bytes: &[u8], mut stamped: impl FnMut(u64)) {
        let end_of_digits = self.offset + DIGITS;
        while !bytes.is_empty() {
            let take = (self.frame_bytes - self.at).min(bytes.len());
            let (from, to) = (self.at.max(self.offset), (self.at + take).min(end_of_digits));
            if from < to {
                self.digits[from - self.offset..to - self.offset].copy_from_slice(&bytes[from - self.at..to - self.at]);
                if to == end_of_digits {
                    if let Some(micros) =
                        std::str::from_utf8(&self.digits).ok().and_then(|s| u64::from_str_radix(s, 16).ok())
                    {
                        stamped(micros);
                    }
                }
            }
            self.at = (self.at + take) % self.frame_bytes;
            bytes = &bytes[take..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_frame_keeps_its_size_header_and_json() {
        for size in [26, 332, 401, 2_000] {
            let mut frame = super::super::frame(size).unwrap();
            let at = offset(size).unwrap();
            write(&mut frame, at, 0x0006_3e3d_1234_abcd);
            assert_eq!(frame.len(), size);
            let payload = &frame[super::super::header_bytes(size)..];
            let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert!(json["p"].as_str().unwrap().starts_with("00063e3d1234abcd"), "{json}");
        }
        assert_eq!(offset(25), None, "a payload of 23 bytes holds no stamp");
        assert_eq!(offset(2), None);
    }

    #[test]
    fn stamps_are_read_back_however_the_reads_split_the_frames() {
        let size = 140;
        let mut stream = Vec::new();
        for micros in [1, 0xffff_ffff_ffff, 1_796_320_561_962_891] {
            let mut frame = super::super::frame(size).unwrap();
            write(&mut frame, offset(size).unwrap(), micros);
            stream.extend_from_slice(&frame);
        }
        // An unstamped frame is passed over.
        stream.extend_from_slice(&super::super::frame(size).unwrap());
        for chunk in [1, 3, 7, 16, 139, 140, 141, 1_000] {
            let mut follower = Follower::new(size).unwrap();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                follower.feed(piece, |m| seen.push(m));
            }
            assert_eq!(seen, vec![1, 0xffff_ffff_ffff, 1_796_320_561_962_891], "reads of {chunk} bytes");
        }
    }
}
