//! How many catch-up requests may read history at once: at most
//! `GATEWAY_CATCHUP_PER_CALLER` per caller (a staff user, or a diner's table session) and
//! `GATEWAY_CATCHUP_CONCURRENCY` in all. A request over either bound is refused at once (429 or
//! 503 with `Retry-After`) instead of queueing JetStream reads and their memory. Pure bookkeeping:
//! a [`Permit`] gives its places back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Who is asking: the same keys the connection limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Staff { tenant_id: u64, user_id: u64 },
    Session { tenant_id: u64, session_id: u64 },
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The caller already has its share in progress.
    Caller,
    /// The replica has every place taken.
    Replica,
}

#[derive(Debug)]
pub struct CatchupLimits {
    per_caller: usize,
    total: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    by_caller: HashMap<Caller, usize>,
}

/// One request's places; dropping it releases them.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<CatchupLimits>,
    caller: Caller,
}

impl CatchupLimits {
    pub fn new(per_caller: usize, total: usize) -> Arc<CatchupLimits> {
        Arc::new(CatchupLimits { per_caller, total, state: Mutex::default() })
    }

    pub fn try_acquire(self: &Arc<Self>, caller: Caller) -> Result<Permit, Refused> {
        let mut state = self.state.lock().expect("catch-up limits lock");
        let held = state.by_caller.get(&caller).copied().unwrap_or(0);
        if held >= self.per_caller {
            return Err(Refused::Caller);
        }
        if state.total >= self.total {
            return Err(Refused::Replica);
        }
        state.total += 1;
        *state.by_caller.entry(caller).or_default() += 1;
        Ok(Permit { limits: self.clone(), caller })
    }

    /// Requests in progress.
    #[cfg(test)]
    pub fn in_progress(&self) -> usize {
        self.state.lock().expect("catch-up limits lock").total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limits.state.lock().expect("catch-up limits lock");
        state.total -= 1;
        if let Some(n) = state.by_caller.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                state.by_caller.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Caller = Caller::Staff { tenant_id: 1, user_id: 7 };
    const B: Caller = Caller::Session { tenant_id: 1, session_id: 7 };
    const C: Caller = Caller::Staff { tenant_id: 2, user_id: 7 };

    #[test]
    fn per_caller_and_total_bounds_hold_and_release() {
        let limits = CatchupLimits::new(2, 3);
        let a1 = limits.try_acquire(A).unwrap();
        let _a2 = limits.try_acquire(A).unwrap();
        assert_eq!(limits.try_acquire(A).unwrap_err(), Refused::Caller, "a caller's share is 2");
        let _b = limits.try_acquire(B).unwrap();
        assert_eq!(limits.try_acquire(C).unwrap_err(), Refused::Replica, "3 in all");
        assert_eq!(limits.in_progress(), 3);
        drop(a1);
        assert!(limits.try_acquire(C).is_ok(), "a freed place is reusable");
        assert_eq!(limits.in_progress(), 2, "the temporary permit was dropped again");
    }
}
