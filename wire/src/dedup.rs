//! The de-duplication window of protocol section 6: the same event text seen again within the
//! window is the same event. Keeps 128-bit digests of payload bytes in two generations that
//! rotate every window, so an entry lives between one and two windows and memory stays bounded
//! by the event rate. JetStream de-duplicates what it stores; the gateway uses this for events that
//! reach it on several subjects or through several stream entries, the bridge to skip the extra
//! pub/sub copies of one event before they cost a publish.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Digests are already uniformly distributed: hashing them again is wasted work.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64 ^ (n >> 64) as u64;
    }
}

type DigestSet = HashSet<u128, BuildHasherDefault<PassThrough>>;

pub struct Dedup {
    window: Duration,
    rotated: Instant,
    current: DigestSet,
    previous: DigestSet,
}

impl Dedup {
    pub fn new(window: Duration, now: Instant) -> Self {
        Dedup { window, rotated: now, current: DigestSet::default(), previous: DigestSet::default() }
    }

    pub fn digest(payload: &[u8]) -> u128 {
        xxhash_rust::xxh3::xxh3_128(payload)
    }

    /// `true` the first time `digest` is seen within the window.
    pub fn first_sighting(&mut self, digest: u128, now: Instant) -> bool {
        if now.duration_since(self.rotated) >= self.window {
            let expired_too = now.duration_since(self.rotated) >= self.window * 2;
            self.previous = std::mem::take(&mut self.current);
            if expired_too {
                self.previous.clear();
            }
            self.rotated = now;
        }
        if self.previous.contains(&digest) {
            return false;
        }
        self.current.insert(digest)
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_within_the_window_is_one_event() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60), t0);
        let a = Dedup::digest(br#"{"type":"X","tenant_id":1}"#);
        let b = Dedup::digest(br#"{"type":"X","tenant_id":1} "#);
        assert!(d.first_sighting(a, t0));
        assert!(!d.first_sighting(a, t0 + Duration::from_secs(1)));
        assert!(d.first_sighting(b, t0), "one byte differs: another event");
        assert!(!d.first_sighting(a, t0 + Duration::from_secs(90)), "still remembered after one rotation");
        assert!(d.first_sighting(a, t0 + Duration::from_secs(200)), "forgotten after two windows");
    }

    #[test]
    fn memory_is_bounded_by_two_windows() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(1), t0);
        for i in 0..10_000u32 {
            d.first_sighting(Dedup::digest(&i.to_le_bytes()), t0 + Duration::from_millis(i as u64));
        }
        assert!(d.len() <= 2_000, "{}", d.len());
    }
}
