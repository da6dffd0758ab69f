//! The publishes awaiting JetStream's acknowledgement, by reply token. Every publish gets the
//! next token (its reply subject ends in it); an acknowledgement takes its entry back in O(1);
//! entries that waited longer than the publish timeout are taken from the front (tokens are
//! handed out in time order, so the oldest are always there). A late acknowledgement of an entry
//! already taken finds nothing. No I/O, no clock of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub struct InFlight<T> {
    /// Token of `slots[0]`.
    base: u64,
    /// Taken entries stay as `None` until everything before them is taken too.
    slots: VecDeque<Option<(Instant, T)>>,
    len: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight { base: 0, slots: VecDeque::new(), len: 0 }
    }
}

impl<T> InFlight<T> {
    /// Adds an entry sent at `sent`; returns its token.
    pub fn push(&mut self, sent: Instant, item: T) -> u64 {
        let token = self.base + self.slots.len() as u64;
        self.slots.push_back(Some((sent, item)));
        self.len += 1;
        token
    }

    /// The entry of `token`, unless it was taken already (or never given out).
    pub fn take(&mut self, token: u64) -> Option<T> {
        let index = usize::try_from(token.checked_sub(self.base)?).ok()?;
        let (_, item) = self.slots.get_mut(index)?.take()?;
        self.len -= 1;
        self.compact();
        Some(item)
    }

    /// Takes every entry sent before `now - timeout`, oldest first.
    pub fn expired(&mut self, now: Instant, timeout: Duration) -> Vec<T> {
        let mut expired = Vec::new();
        while let Some(front) = self.slots.front_mut() {
            match front {
                Some((sent, _)) if now.saturating_duration_since(*sent) < timeout => break,
                Some(_) => {
                    let (_, item) = front.take().expect("matched Some");
                    expired.push(item);
                    self.len -= 1;
                }
                None => {}
            }
            self.slots.pop_front();
            self.base += 1;
        }
        expired
    }

    /// Entries not taken yet.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the taken entries at the front.
    fn compact(&mut self) {
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_in_any_order_take_each_entry_once() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        let tokens: Vec<u64> = (0..5).map(|i| f.push(t0, i)).collect();
        assert_eq!(tokens, vec![0, 1, 2, 3, 4]);
        assert_eq!(f.take(3), Some(3));
        assert_eq!(f.take(3), None, "a second acknowledgement finds nothing");
        assert_eq!(f.take(0), Some(0));
        assert_eq!(f.take(1), Some(1));
        assert_eq!(f.len(), 2);
        assert_eq!(f.slots.len(), 3, "the taken front (tokens 0 and 1) was dropped");
        assert_eq!(f.take(99), None, "a token never given out");
        assert_eq!(f.take(4), Some(4));
        assert_eq!(f.take(2), Some(2));
        assert!(f.is_empty());
        assert_eq!(f.push(t0, 5), 5, "tokens keep counting");
    }

    #[test]
    fn only_entries_older_than_the_timeout_expire() {
        let t0 = Instant::now();
        let mut f = InFlight::default();
        f.push(t0, "a");
        f.push(t0 + Duration::from_millis(10), "b");
        f.push(t0 + Duration::from_millis(20), "c");
        assert_eq!(f.take(1), Some("b"));
        let timeout = Duration::from_millis(100);
        assert!(f.expired(t0 + Duration::from_millis(99), timeout).is_empty());
        assert_eq!(f.expired(t0 + Duration::from_millis(115), timeout), vec!["a"]);
        assert_eq!(f.len(), 1);
        assert_eq!(f.take(0), None, "the acknowledgement of an expired entry comes too late");
        assert_eq!(f.expired(t0 + Duration::from_secs(1), timeout), vec!["c"]);
        assert!(f.is_empty());
        assert_eq!(f.push(t0, "d"), 3);
        assert_eq!(f.take(3), Some("d"));
    }
}
