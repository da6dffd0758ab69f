//! Wall-clock readings every crate uses: unix seconds (token times), unix microseconds (the
//! `Bridge-Received-At` header, delivery latency). A clock before 1970 reads 0.

use std::time::{SystemTime, UNIX_EPOCH};

fn since_epoch() -> std::time::Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Unix time in seconds.
pub fn now_unix() -> i64 {
    since_epoch().as_secs() as i64
}

/// Unix time in microseconds.
pub fn now_micros() -> u64 {
    since_epoch().as_micros() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readings_agree() {
        let (secs, micros) = (super::now_unix(), super::now_micros());
        assert!(secs > 1_700_000_000, "{secs}");
        assert!((micros / 1_000_000) as i64 - secs <= 1, "{micros} {secs}");
    }
}
