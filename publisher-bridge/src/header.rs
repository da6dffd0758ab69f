//! Header values from untrusted bytes. A NATS header line ends at CR/LF, so a value carrying one
//! injects headers, and an oversized one is refused by JetStream or makes nats-server drop the
//! connection: every value derived from input goes through [`is_safe`] or [`escape`]. Pure.

use std::fmt::Write;

/// The most bytes an escaped value derived from input takes in a header.
pub const MAX_VALUE: usize = 128;

/// Whether `value` can go into a header as it is: visible ASCII only (no space, no control
/// byte, no byte above 0x7e), and no backslash (the escape character).
pub fn is_safe(value: &[u8]) -> bool {
    value.iter().all(|b| matches!(b, 0x21..=0x7e) && *b != b'\\')
}

/// `head` (the first bytes of a value `len` bytes long) as a header value of at most `max`
/// bytes: visible ASCII kept, a backslash and every other byte written `\xNN`. A value that
/// does not fit (or whose tail was already dropped) is cut at a character boundary and ends in
/// `...[<len>B]`. The result always satisfies [`is_safe`] but for the backslashes of its escapes.
pub fn escape(head: &[u8], len: usize, max: usize) -> String {
    let cut_mark = format!("...[{len}B]");
    let mut out = String::with_capacity(max.min(head.len() * 4 + cut_mark.len()));
    let fits_whole = len == head.len() && escaped_len(head) <= max;
    let budget = if fits_whole { max } else { max.saturating_sub(cut_mark.len()) };
    for &b in head {
        let step = if visible(b) { 1 } else { 4 };
        if out.len() + step > budget {
            break;
        }
        if visible(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if !fits_whole && out.len() + cut_mark.len() <= max {
        out.push_str(&cut_mark);
    }
    out
}

fn visible(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && b != b'\\'
}

fn escaped_len(bytes: &[u8]) -> usize {
    bytes.iter().map(|b| if visible(*b) { 1 } else { 4 }).sum()
}

/// Whether a string [`escape`] produced is fit for a header: visible ASCII only.
#[cfg(test)]
pub fn is_escaped(value: &str) -> bool {
    value.bytes().all(|b| matches!(b, 0x21..=0x7e))
}

/// Now, for `Dlq-At`: RFC 3339, UTC, microseconds.
pub fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_values_pass_unchanged() {
        assert!(is_safe(b"stream:events:critical:1700000000000-0"));
        assert_eq!(escape(b"branch:1:waiters", 16, MAX_VALUE), "branch:1:waiters");
        for bad in [&b"a b"[..], b"a\r\nb", b"\x00", b"caf\xc3\xa9", b"a\\b", b"\x7f"] {
            assert!(!is_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn control_bytes_and_non_ascii_are_escaped() {
        let injected = b"branch:1:waiters\r\nX-Injected: yes";
        let v = escape(injected, injected.len(), MAX_VALUE);
        assert_eq!(v, "branch:1:waiters\\x0d\\x0aX-Injected:\\x20yes");
        assert!(is_escaped(&v));
        assert_eq!(escape("café\\".as_bytes(), 6, MAX_VALUE), "caf\\xc3\\xa9\\x5c");
    }

    #[test]
    fn long_values_are_cut_and_say_how_long_they_were() {
        let long = vec![b'x'; 65_536];
        let v = escape(&long, long.len(), MAX_VALUE);
        assert!(v.len() <= MAX_VALUE, "{}", v.len());
        assert!(v.starts_with("xxxx") && v.ends_with("...[65536B]"), "{v}");
        // Already cut by the reader: the mark gives the real length even when the head fits.
        assert_eq!(escape(b"abc", 2_000_000, MAX_VALUE), "abc...[2000000B]");
        // An escape is never split.
        let v = escape(&[0u8; 100], 100, 20);
        assert_eq!(v, "\\x00\\x00...[100B]");
        assert!(escape(&[0u8; 100], 100, 5).len() <= 5);
    }
}
