//! The connections this replica holds: admission against the connection limits, an index per
//! tenant (by branch, tenant-wide admins, by table session) so fan-out only visits candidates,
//! and each connection's close control and outlet (its queue and socket). Who receives what is decided
//! by `routing`; this module only narrows the candidates and delivers.

use crate::auth::Endpoint;
use crate::close::{CloseReason, Closing};
use crate::outlet::{Offer, Outlet};
use crate::routing::{Audience, EventScope, Role};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tungstenite::Utf8Bytes;

/// One event for connections, shared by every recipient of a fan-out: a queue slot is one
/// pointer.
pub type Outbound = Arc<QueuedEvent>;

/// The payload as published, when the bridge received it (unix microseconds, for the delivery
/// latency histogram), and its stream sequence.
#[derive(Debug)]
pub struct QueuedEvent {
    pub payload: Utf8Bytes,
    pub received_us: Option<u64>,
    /// Stream sequence (`Nats-Sequence` of JetStream's re-publish): the resume cursor.
    pub sequence: Option<u64>,
    /// When the stream stored it (unix nanoseconds, `Nats-Time-Stamp`): the cursor's epoch.
    pub stored_ns: Option<u64>,
    /// The payload with its cursor spliced in, made by the first resuming recipient and shared
    /// by the others (the bytes are the same for all).
    with_cursor: OnceLock<Utf8Bytes>,
    /// The WebSocket frames of both, made by the first recipient written to directly.
    frame: OnceLock<Bytes>,
    frame_with_cursor: OnceLock<Bytes>,
}

impl QueuedEvent {
    pub fn new(payload: Utf8Bytes, received_us: Option<u64>, sequence: Option<u64>, stored_ns: Option<u64>) -> Self {
        QueuedEvent {
            payload,
            received_us,
            sequence,
            stored_ns,
            with_cursor: OnceLock::new(),
            frame: OnceLock::new(),
            frame_with_cursor: OnceLock::new(),
        }
    }

    /// The text a resuming client gets: `"_cursor"` (and `"_epoch"`) first, then the payload;
    /// `None` for an event without its stream sequence.
    pub fn with_cursor(&self) -> Option<Utf8Bytes> {
        let sequence = self.sequence?;
        let text = self.with_cursor.get_or_init(|| {
            crate::connection::resume::with_cursor(self.payload.as_str(), sequence, self.stored_ns).into()
        });
        Some(text.clone())
    }

    /// The payload's text frame.
    pub fn frame(&self) -> Bytes {
        self.frame.get_or_init(|| crate::outlet::text_frame(self.payload.as_bytes())).clone()
    }

    /// The text frame of [`QueuedEvent::with_cursor`] (the payload's, for an event without its
    /// sequence).
    pub fn frame_with_cursor(&self) -> Bytes {
        self.frame_with_cursor
            .get_or_init(|| match self.with_cursor() {
                Some(text) => crate::outlet::text_frame(text.as_bytes()),
                None => self.frame(),
            })
            .clone()
    }
}

/// Asks a connection's task to close with a reason; the first reason wins. Lock-free: the
/// task's loop polls [`Control::closed`] on every wake-up, once per delivered batch.
#[derive(Default)]
#[repr(C)]
pub struct Control {
    /// First: every direct write reads it (see [`Conn`]'s layout).
    closing: AtomicBool,
    /// The connection's task, the only one waiting.
    waker: AtomicWaker,
    reason: OnceLock<Closing>,
}

impl Control {
    /// The bytes of it a direct write reads.
    const HOT: usize = std::mem::offset_of!(Control, closing) + size_of::<AtomicBool>();

    pub fn close(&self, reason: CloseReason) {
        self.close_with(Closing::Documented(reason));
    }

    /// Closes with `closing` unless another reason came first; `true` when this one won.
    pub fn close_with(&self, closing: Closing) -> bool {
        let won = self.reason.set(closing).is_ok();
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
        won
    }

    /// Resolves once the connection is asked to close, with the reason. Only the connection's
    /// own task waits on it (the last task to poll is the one woken).
    pub fn closed(&self) -> impl std::future::Future<Output = Closing> + '_ {
        std::future::poll_fn(move |cx| {
            if !self.is_closing() {
                self.waker.register(cx.waker());
                if !self.is_closing() {
                    return std::task::Poll::Pending;
                }
            }
            std::task::Poll::Ready(
                self.reason.get().cloned().unwrap_or(Closing::Documented(CloseReason::SERVICE_RESTART)),
            )
        })
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// Where a connection came from and when: the admin API lists it, the audit log prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The TCP peer (a proxy's address behind a load balancer).
    pub peer: SocketAddr,
    /// The first address of `X-Forwarded-For`, as the proxies in front reported it
    /// (informative: a client can put anything there).
    pub forwarded_for: Option<IpAddr>,
    /// Unix milliseconds at admission.
    pub connected_at_ms: u64,
    /// The client opted into resume.
    pub resume: bool,
}

impl Default for ConnInfo {
    fn default() -> Self {
        ConnInfo { peer: SocketAddr::from(([0, 0, 0, 0], 0)), forwarded_for: None, connected_at_ms: 0, resume: false }
    }
}

// What a direct write reads must stay within the two cache lines the walk loads.
const _: () = assert!(Conn::HOT <= 128 && align_of::<Conn>() == 64);

/// One open connection as fan-out sees it.
///
/// Laid out for the fan-out walk, which visits one record per recipient while the kernel's
/// work for each write evicts the cache: what a direct write reads (the outlet's lock and the
/// fields it guards first, then the close flag) sits in the record's first two cache lines,
/// and the walk loads only those (`Conn::prefetch`). `repr(C)` keeps the order written here;
/// the alignment makes the lines the record's own.
#[repr(C, align(64))]
pub struct Conn {
    /// The outbound queue and the socket's write side, shared with the dispatcher.
    pub outlet: Outlet,
    pub control: Control,
    /// Read by the walk only for a pure waiter and an event routed by sector.
    sectors: RwLock<Arc<[u64]>>,
    pub id: u64,
    pub endpoint: Endpoint,
    pub audience: Audience,
    /// Staff user id or diner session id, for limits and statistics.
    pub key: ConnKey,
    pub info: ConnInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKey {
    User { tenant_id: u64, user_id: u64 },
    Session { tenant_id: u64, session_id: u64 },
}

impl Conn {
    pub fn sectors(&self) -> Arc<[u64]> {
        self.sectors.read().expect("sectors lock").clone()
    }

    pub fn set_sectors(&self, sectors: Arc<[u64]>) {
        *self.sectors.write().expect("sectors lock") = sectors;
    }

    /// The bytes of the record a direct write reads: the outlet's lock and the fields it
    /// guards, and the close flag.
    const HOT: usize = std::mem::offset_of!(Conn, control) + Control::HOT;

    /// Starts loading what [`Outlet::offer`] will read of this record: two cache lines.
    fn prefetch(&self) {
        crate::prefetch::head(self, Self::HOT);
    }
}

/// The limits admission enforces.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub total: usize,
    pub per_user: usize,
    pub per_session: usize,
}

/// Outcome of offering one event to a tenant's connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: u64,
    /// Of those, written to the socket at once (the others were queued).
    pub written: u64,
    pub queue_full: u64,
}

#[derive(Default)]
struct TenantIndex {
    /// Staff connections under each branch in their `branch_ids`.
    by_branch: HashMap<u64, Vec<Member>>,
    /// Staff connections with the admin view (tenant-wide events).
    admins: Vec<Member>,
    /// Diner connections by table session.
    by_session: HashMap<u64, Vec<Member>>,
}

/// A candidate in the index, with its role beside it: the walk decides from the list alone,
/// and reads a connection's record only to write to it.
struct Member {
    conn: Arc<Conn>,
    role: Role,
}

impl Member {
    fn of(conn: &Arc<Conn>) -> Member {
        Member { conn: conn.clone(), role: conn.audience.role() }
    }
}

/// Offers `event` to each member of `list` whose role receives it, while the CPU loads the
/// record of the member after next (see [`Conn`]'s layout).
fn walk(list: &[Member], scope: &EventScope, offer: &mut impl FnMut(&Conn)) {
    for (i, member) in list.iter().enumerate() {
        if let Some(after_next) = list.get(i + 2) {
            after_next.conn.prefetch();
        }
        let receives = if member.role.needs_sectors(scope) {
            member.role.receives(&member.conn.sectors.read().expect("sectors lock"), scope)
        } else {
            member.role.receives(&[], scope)
        };
        if receives {
            offer(&member.conn);
        }
    }
}

pub struct Tenant {
    id: u64,
    index: RwLock<TenantIndex>,
}

impl Tenant {
    /// Offers `event` to every connection that receives `scope` (each at most once: a
    /// connection is in exactly one of the lists visited). A full queue closes the connection.
    pub fn fan_out(&self, scope: &EventScope, event: &Outbound) -> Fanout {
        let mut out = Fanout::default();
        if scope.tenant_id != self.id {
            // The dispatcher checked subject and body already; the lists below are this
            // tenant's whatever the event says, so this is the last word on the boundary.
            return out;
        }
        let index = self.index.read().expect("tenant index lock");
        let mut offer = |conn: &Conn| match conn.outlet.offer(event, &conn.control) {
            Offer::Written => {
                out.delivered += 1;
                out.written += 1;
            }
            Offer::Queued => out.delivered += 1,
            Offer::Full => out.queue_full += 1,
            Offer::Dropped => {}
        };
        // The lists hold only connections within the event's reach (routing::receives): its
        // tenant, and its branch (or, tenant-wide, the admin view), or its table session.
        let staff = if scope.branch_id == 0 { Some(&index.admins) } else { index.by_branch.get(&scope.branch_id) };
        if let Some(staff) = staff {
            walk(staff, scope, &mut offer);
        }
        if scope.class.session {
            if let Some(diners) = scope.session_id.and_then(|s| index.by_session.get(&s)) {
                walk(diners, scope, &mut offer);
            }
        }
        out
    }

    fn insert(&self, conn: &Arc<Conn>) {
        let mut index = self.index.write().expect("tenant index lock");
        match &conn.audience {
            Audience::Staff { branch_ids, admin_view, .. } => {
                for branch in branch_ids.iter() {
                    index.by_branch.entry(*branch).or_default().push(Member::of(conn));
                }
                if *admin_view {
                    index.admins.push(Member::of(conn));
                }
            }
            Audience::Diner { session_id, .. } => {
                index.by_session.entry(*session_id).or_default().push(Member::of(conn))
            }
        }
    }

    /// Removes `conn`; `true` when the tenant has no connection left.
    fn remove(&self, conn: &Conn) -> bool {
        fn take(list: &mut Vec<Member>, conn: &Conn) {
            if let Some(pos) = list.iter().position(|m| std::ptr::eq(Arc::as_ptr(&m.conn), conn)) {
                list.swap_remove(pos);
            }
        }
        let mut index = self.index.write().expect("tenant index lock");
        match &conn.audience {
            Audience::Staff { branch_ids, .. } => {
                for branch in branch_ids.iter() {
                    if let Some(list) = index.by_branch.get_mut(branch) {
                        take(list, conn);
                        if list.is_empty() {
                            index.by_branch.remove(branch);
                        }
                    }
                }
                take(&mut index.admins, conn);
            }
            Audience::Diner { session_id, .. } => {
                if let Some(list) = index.by_session.get_mut(session_id) {
                    take(list, conn);
                    if list.is_empty() {
                        index.by_session.remove(session_id);
                    }
                }
            }
        }
        index.by_branch.is_empty() && index.admins.is_empty() && index.by_session.is_empty()
    }
}

#[derive(Default)]
struct Inner {
    all: HashMap<u64, Arc<Conn>>,
    per_key: HashMap<ConnKey, usize>,
    tenants: HashMap<u64, Arc<Tenant>>,
    /// Open connections by endpoint (indexed by `Endpoint as usize`), kept with `all`.
    per_endpoint: [usize; 4],
}

pub(crate) struct Registry {
    capacity: Capacity,
    queue_size: usize,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

/// Keeps a connection registered; dropping it unregisters.
pub struct Registration {
    registry: Arc<Registry>,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.conn);
    }
}

impl Registry {
    pub fn new(capacity: Capacity, queue_size: usize) -> Self {
        Registry { capacity, queue_size, next_id: AtomicU64::new(1), inner: Mutex::default() }
    }

    /// [`Registry::admit_with`] without a peer (the unit tests' connections).
    #[cfg(test)]
    pub fn admit(
        self: &Arc<Self>,
        endpoint: Endpoint,
        audience: Audience,
        key: ConnKey,
        sectors: Arc<[u64]>,
    ) -> Result<Registration, CloseReason> {
        self.admit_with(endpoint, audience, key, sectors, ConnInfo::default())
    }

    /// Admits a connection if the limits allow; `info` records where it came from.
    pub fn admit_with(
        self: &Arc<Self>,
        endpoint: Endpoint,
        audience: Audience,
        key: ConnKey,
        sectors: Arc<[u64]>,
        info: ConnInfo,
    ) -> Result<Registration, CloseReason> {
        let mut inner = self.inner.lock().expect("registry lock");
        if inner.all.len() >= self.capacity.total {
            return Err(CloseReason::SERVER_AT_CAPACITY);
        }
        let held = inner.per_key.get(&key).copied().unwrap_or(0);
        match key {
            ConnKey::User { .. } if held >= self.capacity.per_user => return Err(CloseReason::TOO_MANY_FOR_USER),
            ConnKey::Session { .. } if held >= self.capacity.per_session => {
                return Err(CloseReason::TOO_MANY_FOR_SESSION)
            }
            _ => {}
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            endpoint,
            key,
            sectors: RwLock::new(sectors),
            audience,
            control: Control::default(),
            outlet: Outlet::new(self.queue_size),
            info,
        });
        *inner.per_key.entry(key).or_default() += 1;
        inner.per_endpoint[endpoint as usize] += 1;
        inner.all.insert(conn.id, conn.clone());
        let tenant_id = conn.audience.tenant_id();
        inner
            .tenants
            .entry(tenant_id)
            .or_insert_with(|| Arc::new(Tenant { id: tenant_id, index: RwLock::default() }))
            .insert(&conn);
        Ok(Registration { registry: self.clone(), conn })
    }

    fn remove(&self, conn: &Conn) {
        let mut inner = self.inner.lock().expect("registry lock");
        if inner.all.remove(&conn.id).is_none() {
            return;
        }
        inner.per_endpoint[conn.endpoint as usize] -= 1;
        if let Some(n) = inner.per_key.get_mut(&conn.key) {
            *n -= 1;
            if *n == 0 {
                inner.per_key.remove(&conn.key);
            }
        }
        let tenant_id = conn.audience.tenant_id();
        if inner.tenants.get(&tenant_id).is_some_and(|t| t.remove(conn)) {
            inner.tenants.remove(&tenant_id);
        }
    }

    /// The tenant's index, if this replica holds any of its connections.
    pub fn tenant(&self, tenant_id: u64) -> Option<Arc<Tenant>> {
        self.inner.lock().expect("registry lock").tenants.get(&tenant_id).cloned()
    }

    /// Open connections by endpoint (indexed by `Endpoint as usize`): admitted ones count from
    /// admission, before their `101` is sent, until their registration is dropped.
    pub fn per_endpoint(&self) -> [usize; 4] {
        self.inner.lock().expect("registry lock").per_endpoint
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("registry lock").all.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Every open connection, in admission order (drain closes them in this order).
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut all: Vec<_> = self.inner.lock().expect("registry lock").all.values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn stats(&self) -> Stats {
        let all = self.snapshot();
        let mut s = Stats { total: all.len(), ..Stats::default() };
        let (mut users, mut branches, mut sectors, mut sessions) =
            (HashSet::new(), HashSet::new(), HashSet::new(), HashSet::new());
        for conn in &all {
            s.per_endpoint[conn.endpoint as usize] += 1;
            match (&conn.audience, conn.key) {
                (Audience::Staff { tenant_id, branch_ids, admin_view, .. }, ConnKey::User { user_id, .. }) => {
                    users.insert((*tenant_id, user_id));
                    branches.extend(branch_ids.iter().map(|b| (*tenant_id, *b)));
                    s.admin_connections += usize::from(*admin_view);
                    if conn.audience.is_pure_waiter() {
                        sectors.extend(conn.sectors().iter().map(|sector| (*tenant_id, *sector)));
                    }
                }
                (Audience::Diner { tenant_id, session_id }, _) => {
                    sessions.insert((*tenant_id, *session_id));
                }
                _ => {}
            }
        }
        s.users = users.len();
        s.branches = branches.len();
        s.sectors = sectors.len();
        s.sessions = sessions.len();
        s
    }
}

/// Counts for `/ws/health`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub total: usize,
    pub per_endpoint: [usize; 4],
    pub users: usize,
    pub branches: usize,
    pub sectors: usize,
    pub sessions: usize,
    pub admin_connections: usize,
}

#[cfg(test)]
mod tests;
