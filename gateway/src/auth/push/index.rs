//! The staff connections a pushed revocation may concern, by user id and by `jti`: what a
//! keyspace notification is matched against. It is separate from the registry, so fan-out never
//! touches it; a connection enters it once at admission and leaves when its [`Watch`] drops.
//! An entry is created before the handshake's own revocation look-up and bound to its
//! connection after admission, so a revocation written in between is not missed: the entry
//! remembers that it was notified, and the handshake checks again.

use super::super::revocation::TokenRef;
use crate::registry::Conn;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// What a keyspace notification names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `auth:user:revoked:{user_id}`: every token of the user, whatever the tenant.
    User(u64),
    /// `auth:token:blacklist:{jti}`: one token.
    Jti(Box<str>),
}

/// One watched token, and the connection it admitted once bound.
pub struct Watched {
    id: u64,
    pub token: TokenRef,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    conn: Option<Weak<Conn>>,
    /// A notification for this token arrived before the connection was bound.
    notified: bool,
}

impl Watched {
    /// The bound connection, if still open; marks the entry notified when none is bound yet.
    pub fn notify(&self) -> Option<Arc<Conn>> {
        let mut slot = self.slot.lock().expect("watch slot lock");
        match &slot.conn {
            Some(conn) => conn.upgrade(),
            None => {
                slot.notified = true;
                None
            }
        }
    }

    /// Binds the admitted connection; `true` when a notification came before.
    pub fn bind(&self, conn: &Arc<Conn>) -> bool {
        let mut slot = self.slot.lock().expect("watch slot lock");
        slot.conn = Some(Arc::downgrade(conn));
        slot.notified
    }
}

#[derive(Default)]
pub struct Index {
    next_id: u64,
    by_user: HashMap<u64, Vec<Arc<Watched>>>,
    by_jti: HashMap<Box<str>, Vec<Arc<Watched>>>,
}

impl Index {
    pub fn insert(&mut self, token: TokenRef) -> Arc<Watched> {
        self.next_id += 1;
        let watched = Arc::new(Watched { id: self.next_id, token, slot: Mutex::default() });
        self.by_user.entry(watched.token.user_id).or_default().push(watched.clone());
        if let Some(jti) = &watched.token.jti {
            self.by_jti.entry(jti.clone()).or_default().push(watched.clone());
        }
        watched
    }

    pub fn remove(&mut self, watched: &Watched) {
        fn take<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<Arc<Watched>>>, key: &K, id: u64) {
            if let Some(list) = map.get_mut(key) {
                list.retain(|w| w.id != id);
                if list.is_empty() {
                    map.remove(key);
                }
            }
        }
        take(&mut self.by_user, &watched.token.user_id, watched.id);
        if let Some(jti) = &watched.token.jti {
            take(&mut self.by_jti, jti, watched.id);
        }
    }

    /// The entries `target` concerns.
    pub fn matching(&self, target: &Target) -> Vec<Arc<Watched>> {
        let list = match target {
            Target::User(user_id) => self.by_user.get(user_id),
            Target::Jti(jti) => self.by_jti.get(jti),
        };
        list.cloned().unwrap_or_default()
    }

    /// Watched tokens (tests, health).
    pub fn len(&self) -> usize {
        self.by_user.values().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

/// The key a keyspace notification channel names, if it is one of the two revocation keys of
/// database `db`: `__keyspace@0__:auth:user:revoked:42` → `User(42)`.
pub fn parse_channel(channel: &str, db: i64) -> Option<Target> {
    use super::super::revocation::{BLACKLIST_PREFIX, USER_REVOKED_PREFIX};
    let key = channel.strip_prefix(&format!("__keyspace@{db}__:"))?;
    if let Some(user) = key.strip_prefix(USER_REVOKED_PREFIX) {
        return wire::envelope::positive_id(user).map(Target::User);
    }
    key.strip_prefix(BLACKLIST_PREFIX).map(|jti| Target::Jti(jti.into()))
}

/// Whether a keyspace event may have made a token revoked: a key written (`set`, `expire`,
/// `rename_to`, ...) may; a key removed (`del`, `expired`, `evicted`, `rename_from`) cannot.
pub fn may_revoke(event: &str) -> bool {
    !matches!(event, "del" | "expired" | "evicted" | "rename_from" | "unlink")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user_id: u64, jti: Option<&str>) -> TokenRef {
        TokenRef { user_id, jti: jti.map(Box::from), iat: 100 }
    }

    #[test]
    fn finds_entries_by_user_and_by_jti_and_forgets_removed_ones() {
        let mut index = Index::default();
        let a = index.insert(token(7, Some("j1")));
        let b = index.insert(token(7, Some("j2")));
        let c = index.insert(token(8, Some("j1")));
        let d = index.insert(token(9, None));
        let ids = |t: Target, index: &Index| index.matching(&t).iter().map(|w| w.id).collect::<Vec<_>>();
        assert_eq!(ids(Target::User(7), &index), vec![a.id, b.id]);
        assert_eq!(ids(Target::Jti("j1".into()), &index), vec![a.id, c.id]);
        assert_eq!(ids(Target::User(9), &index), vec![d.id]);
        assert!(ids(Target::User(10), &index).is_empty());
        assert_eq!(index.len(), 4);
        for w in [&a, &b, &c, &d] {
            index.remove(w);
        }
        assert!(index.is_empty() && index.by_jti.is_empty());
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn a_notification_before_binding_is_remembered() {
        let mut index = Index::default();
        let w = index.insert(token(7, None));
        assert!(w.notify().is_none());
        let registry = Arc::new(crate::registry::Registry::new(
            crate::registry::Capacity { total: 10, per_user: 10, per_session: 10 },
            8,
        ));
        let audience = crate::routing::Audience::Staff {
            tenant_id: 1,
            branch_ids: Box::from([1u64]),
            endpoint: crate::auth::Endpoint::Waiter,
            admin_view: false,
        };
        let key = crate::registry::ConnKey::User { tenant_id: 1, user_id: 7 };
        let registration =
            registry.admit(crate::auth::Endpoint::Waiter, audience, key, Arc::from([])).expect("admitted");
        assert!(w.bind(&registration.conn), "notified before binding");
        assert_eq!(w.notify().map(|c| c.id), Some(registration.conn.id));
        let fresh = index.insert(token(7, None));
        assert!(!fresh.bind(&registration.conn));
        drop(registration);
        assert!(w.notify().is_none(), "a closed connection is not returned");
    }

    #[test]
    fn reads_keyspace_channels() {
        assert_eq!(parse_channel("__keyspace@0__:auth:user:revoked:42", 0), Some(Target::User(42)));
        assert_eq!(parse_channel("__keyspace@3__:auth:token:blacklist:abc-1", 3), Some(Target::Jti("abc-1".into())));
        assert_eq!(parse_channel("__keyspace@3__:auth:token:blacklist:abc", 0), None, "another database");
        assert_eq!(parse_channel("__keyspace@0__:auth:user:revoked:0", 0), None);
        assert_eq!(parse_channel("__keyspace@0__:auth:user:revoked:x", 0), None);
        assert_eq!(parse_channel("__keyspace@0__:auth:user:revoked:9223372036854775808", 0), None);
        assert_eq!(parse_channel("__keyspace@0__:other", 0), None);
        assert_eq!(parse_channel("auth:user:revoked:1", 0), None);
        assert!(may_revoke("set") && may_revoke("expire") && may_revoke("rename_to"));
        assert!(!may_revoke("del") && !may_revoke("expired"));
    }
}
