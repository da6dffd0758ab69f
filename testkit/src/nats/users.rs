//! The NATS users every test server runs with: the ones `deploy/nats/auth.conf` declares
//! (the same file the local stack and compose run), each with a password generated per fixture.
//! It owns the passwords and how a client or a service presents them; which subjects each user
//! may use is the file's.

use std::path::PathBuf;
use std::time::Duration;

use wire::natsconn::{BRIDGE_INBOX_PREFIX, GATEWAY_INBOX_PREFIX, LOADTEST_INBOX_PREFIX};

/// One user of `deploy/nats/auth.conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatsUser {
    /// May do anything, deleting streams included: a test acting as the backend or an admin.
    Operator,
    Bridge,
    Gateway,
    Loadtest,
}

impl NatsUser {
    pub const ALL: [NatsUser; 4] = [NatsUser::Operator, NatsUser::Bridge, NatsUser::Gateway, NatsUser::Loadtest];

    /// The user name in `auth.conf`.
    pub fn name(self) -> &'static str {
        match self {
            NatsUser::Operator => "operator",
            NatsUser::Bridge => "bridge",
            NatsUser::Gateway => "gateway",
            NatsUser::Loadtest => "loadtest",
        }
    }

    /// The variable `auth.conf` reads this user's password from (nats-server's environment).
    pub fn password_var(self) -> &'static str {
        match self {
            NatsUser::Operator => "NATS_OPERATOR_PASSWORD",
            NatsUser::Bridge => "NATS_BRIDGE_PASSWORD",
            NatsUser::Gateway => "NATS_GATEWAY_PASSWORD",
            NatsUser::Loadtest => "NATS_LOADTEST_PASSWORD",
        }
    }

    /// The reply prefix this user may subscribe to (the operator may subscribe to anything).
    pub fn inbox_prefix(self) -> &'static str {
        match self {
            NatsUser::Operator => "_INBOX",
            NatsUser::Bridge => BRIDGE_INBOX_PREFIX,
            NatsUser::Gateway => GATEWAY_INBOX_PREFIX,
            NatsUser::Loadtest => LOADTEST_INBOX_PREFIX,
        }
    }

    fn index(self) -> usize {
        NatsUser::ALL.iter().position(|u| *u == self).unwrap_or_default()
    }
}

/// `deploy/nats/auth.conf` of this repository.
pub fn auth_conf() -> PathBuf {
    super::super::repo_root().join("deploy/nats/auth.conf")
}

/// Fresh random passwords for every user; one set per server or cluster.
#[derive(Clone)]
pub struct NatsAuth {
    passwords: [String; 4],
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsAuth(*** per-fixture passwords)")
    }
}

impl NatsAuth {
    pub fn generate() -> NatsAuth {
        NatsAuth { passwords: NatsUser::ALL.map(|_| random_password()) }
    }

    pub fn password(&self, user: NatsUser) -> &str {
        &self.passwords[user.index()]
    }

    /// `NATS_USER` and `NATS_PASSWORD` of `user`: what a gateway or bridge process needs.
    pub fn env(&self, user: NatsUser) -> Vec<(String, String)> {
        vec![("NATS_USER".into(), user.name().into()), ("NATS_PASSWORD".into(), self.password(user).into())]
    }

    /// What nats-server needs in its environment to load `auth.conf`.
    pub(crate) fn server_env(&self) -> Vec<(String, String)> {
        NatsUser::ALL.iter().map(|u| (u.password_var().to_string(), self.password(*u).to_string())).collect()
    }

    /// Options of a client logged in as `user`, replying on the user's own inbox prefix.
    pub fn options(&self, user: NatsUser) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .user_and_password(user.name().into(), self.password(user).into())
            .custom_inbox_prefix(user.inbox_prefix())
    }

    /// A client logged in as `user` to `urls` (comma-separated); panics after 10 s.
    pub async fn connect(&self, urls: &str, user: NatsUser) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|u| u.trim().parse().unwrap_or_else(|e| panic!("testkit: NATS URL {u}: {e}")))
            .collect();
        tokio::time::timeout(Duration::from_secs(10), self.options(user).connect(addrs))
            .await
            .unwrap_or_else(|_| panic!("testkit: connecting to NATS at {urls} as {} timed out", user.name()))
            .unwrap_or_else(|e| panic!("testkit: cannot connect to NATS at {urls} as {}: {e}", user.name()))
    }
}

/// 32 hex characters from the kernel's random source.
fn random_password() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("testkit: read /dev/urandom");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_conf_declares_every_user_password_variable_and_inbox() {
        let conf = std::fs::read_to_string(auth_conf()).expect("deploy/nats/auth.conf");
        for user in NatsUser::ALL {
            assert!(conf.contains(&format!("user: {}", user.name())), "{user:?}");
            assert!(conf.contains(&format!("${}", user.password_var())), "{user:?}");
            if user != NatsUser::Operator {
                assert!(conf.contains(&format!("\"{}.>\"", user.inbox_prefix())), "{user:?}");
            }
        }
    }

    #[test]
    fn passwords_differ_per_user_and_per_fixture() {
        let (a, b) = (NatsAuth::generate(), NatsAuth::generate());
        assert_ne!(a.password(NatsUser::Bridge), b.password(NatsUser::Bridge));
        assert_ne!(a.password(NatsUser::Bridge), a.password(NatsUser::Gateway));
        assert_eq!(a.password(NatsUser::Gateway).len(), 32);
        assert!(!format!("{a:?}").contains(a.password(NatsUser::Operator)));
    }
}
