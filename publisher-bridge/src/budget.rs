//! The readers' memory bounds: [`BULK_CAP`], the most bytes kept of any one string Redis sends,
//! and the stream reads' byte budget (`BRIDGE_READ_MAX_BYTES`) for the entries read from
//! `events:critical` and not yet finished (stored in JetStream, or dropped). Each entry is
//! charged what the reader kept of it (strings cut at [`BULK_CAP`]) and releases its charge when
//! its last holder drops it ([`Charge`]); each read asks for as many entries as fit the budget
//! left if each were as large as the largest entry seen lately, never fewer than one (so the
//! budget holds to within one entry), and waits while nothing is left. No I/O.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The most bytes kept of any string Redis sends the readers (a payload, a channel name, a stream
/// field): one more than the contract's largest event, so that anything longer is known to be
/// `too_large` without keeping it. The rest of a longer string is discarded as it arrives.
pub const BULK_CAP: usize = wire::envelope::MAX_EVENT_BYTES + 1;

/// The size assumed for an entry before any is seen: one field cut at [`BULK_CAP`] with room
/// for its id and field name.
pub const ENTRY_FLOOR: usize = BULK_CAP + 256;

pub struct ReadBudget {
    limit: usize,
    used: AtomicUsize,
    /// The largest entry charged since the previous read (at least [`ENTRY_FLOOR`]).
    largest: AtomicUsize,
    freed: Notify,
}

/// Bytes of the budget held by one entry; released on drop.
pub struct Charge {
    budget: Arc<ReadBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let before = self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        if before >= self.budget.limit && before - self.bytes < self.budget.limit {
            self.budget.freed.notify_waiters();
        }
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({} B)", self.bytes)
    }
}

impl ReadBudget {
    pub fn new(limit: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget {
            limit,
            used: AtomicUsize::new(0),
            largest: AtomicUsize::new(ENTRY_FLOOR),
            freed: Notify::new(),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Charges one entry of `bytes`.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.largest.fetch_max(bytes, Ordering::Relaxed);
        Charge { budget: self.clone(), bytes }
    }

    /// How many entries the next read may ask for, at most `max`: waits until some budget is
    /// free, then as many as fit it at the largest entry size seen since the last call.
    pub async fn next_count(&self, max: usize) -> usize {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(count) = self.count_now(max) {
                return count;
            }
            freed.await;
        }
    }

    /// [`ReadBudget::next_count`] without waiting: `None` while the budget is spent.
    pub fn count_now(&self, max: usize) -> Option<usize> {
        let used = self.used();
        if used >= self.limit {
            return None;
        }
        let entry = self.largest.swap(ENTRY_FLOOR, Ordering::Relaxed).max(ENTRY_FLOOR);
        Some(((self.limit - used) / entry).clamp(1, max.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn count_fits_the_budget_left() {
        let b = ReadBudget::new(100 * ENTRY_FLOOR);
        assert_eq!(b.count_now(512), Some(100));
        assert_eq!(b.count_now(10), Some(10));
        let held: Vec<Charge> = (0..60).map(|_| b.charge(ENTRY_FLOOR)).collect();
        assert_eq!(b.count_now(512), Some(40));
        // A large entry makes the next read assume that size.
        let big = b.charge(20 * ENTRY_FLOOR);
        assert_eq!(b.count_now(512), Some(1), "20 floors left at 20 floors each");
        drop(big);
        assert_eq!(b.count_now(512), Some(40), "back to the floor once read");
        drop(held);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_single_entry_can_always_be_read() {
        let b = ReadBudget::new(1000);
        assert_eq!(b.count_now(512), Some(1), "the budget is below one entry");
        let _c = b.charge(999);
        assert_eq!(b.count_now(512), Some(1));
    }

    #[tokio::test]
    async fn waits_until_charges_are_released() {
        let b = ReadBudget::new(2 * ENTRY_FLOOR);
        let held = b.charge(3 * ENTRY_FLOOR);
        assert_eq!(b.count_now(512), None);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.next_count(512).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "nothing free yet");
        drop(held);
        let count = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("joined");
        assert_eq!(count, 1, "the large entry seen since the last read sets the size assumed");
        assert_eq!(b.count_now(512), Some(2));
    }
}
