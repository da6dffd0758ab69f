//! The load generator's NATS connections: logged in as the `loadtest` user of
//! `deploy/nats/auth.conf` (credentials from `LOADTEST_NATS_USER` / `LOADTEST_NATS_PASSWORD`,
//! which `deploy/stack.sh` writes to `.stack/secrets.env`, or from the URL's `user:password@`),
//! replying on `_INBOX.loadtest`, the only inbox that user may read. What is sent is the
//! scenarios' business.

use anyhow::Context;
use std::time::Duration;

pub const USER_VAR: &str = "LOADTEST_NATS_USER";
pub const PASSWORD_VAR: &str = "LOADTEST_NATS_PASSWORD";

/// Connects to `url` (one or more comma-separated URLs) within 5 s, with `options` plus the
/// credentials and the inbox prefix.
pub async fn connect(url: &str, options: async_nats::ConnectOptions) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse().with_context(|| format!("NATS URL {u}")))
        .collect::<anyhow::Result<_>>()?;
    let from_env = (std::env::var(USER_VAR).ok(), std::env::var(PASSWORD_VAR).ok());
    let mut options = options.custom_inbox_prefix(wire::natsconn::LOADTEST_INBOX_PREFIX);
    if let Some((user, password)) = credentials(&addrs, from_env) {
        options = options.user_and_password(user, password);
    }
    let shown = addrs.iter().map(|a| format!("{}:{}", a.host(), a.port())).collect::<Vec<_>>().join(",");
    tokio::time::timeout(Duration::from_secs(5), options.connect(addrs))
        .await
        .map_err(|_| anyhow::anyhow!("connect to NATS at {shown}: timed out"))?
        .with_context(|| format!("connect to NATS at {shown} (user from {USER_VAR} / {PASSWORD_VAR} or the URL)"))
}

/// The URL's `user:password@` wins over the variables.
fn credentials(
    addrs: &[async_nats::ServerAddr],
    from_env: (Option<String>, Option<String>),
) -> Option<(String, String)> {
    let in_url = addrs.iter().find_map(|a| Some((a.username()?.to_string(), a.password()?.to_string())));
    in_url.or(match from_env {
        (Some(user), Some(password)) if !user.is_empty() => Some((user, password)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(url: &str) -> Vec<async_nats::ServerAddr> {
        vec![url.parse().unwrap()]
    }

    #[test]
    fn credentials_from_the_url_or_the_environment() {
        let env = (Some("loadtest".to_string()), Some("pw".to_string()));
        assert_eq!(credentials(&addrs("nats://127.0.0.1:4222"), env.clone()), Some(("loadtest".into(), "pw".into())));
        assert_eq!(credentials(&addrs("nats://u:p@127.0.0.1:4222"), env), Some(("u".into(), "p".into())));
        assert_eq!(credentials(&addrs("nats://127.0.0.1:4222"), (Some("u".into()), None)), None);
        assert_eq!(credentials(&addrs("nats://127.0.0.1:4222"), (None, None)), None);
    }
}
