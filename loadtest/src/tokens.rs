//! Tokens for the population's members, minted with the backend's secrets through
//! `wire::tokens` (staff JWTs and table JWTs, exactly as the backend issues them), and the
//! `token` subcommand that prints one for demos. It does not verify anything.

use crate::population::{Kind, Member};
use wire::tokens;

/// Staff tokens and table tokens live this long (longer than any run).
const TTL_SECS: i64 = 6 * 3600;

#[derive(Clone)]
pub struct Secrets {
    pub jwt: String,
    pub table: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(****)")
    }
}

/// The path and query (`/ws/waiter?token=...`) with which `member` connects.
pub fn connect_path(member: &Member, secrets: &Secrets) -> String {
    match member.kind {
        Kind::Diner => {
            let session = member.session_id.expect("a diner has a session");
            let table = session - crate::population::SESSION_BASE + 1;
            let claims = tokens::table_claims(member.tenant_id, member.branch_id, table, session, TTL_SECS);
            format!("{}?table_token={}", member.kind.path(), tokens::sign_jwt(secrets.table.as_bytes(), &claims))
        }
        kind => {
            let claims =
                tokens::staff_claims(member.user_id, member.tenant_id, &member.branch_ids, kind.roles(), TTL_SECS);
            format!("{}?token={}", kind.path(), tokens::sign_jwt(secrets.jwt.as_bytes(), &claims))
        }
    }
}

/// A staff access token for the `token staff` subcommand.
pub fn staff(
    secret: &str,
    user_id: u64,
    tenant_id: u64,
    branch_ids: &[u64],
    roles: &[String],
    ttl_secs: i64,
) -> String {
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    tokens::sign_jwt(secret.as_bytes(), &tokens::staff_claims(user_id, tenant_id, branch_ids, &roles, ttl_secs))
}

/// A table token (JWT form, or the legacy `t:b:tbl:s:exp:sig` form) for `token table`.
pub fn table(
    secret: &str,
    tenant_id: u64,
    branch_id: u64,
    table_id: u64,
    session_id: u64,
    ttl_secs: i64,
    legacy: bool,
) -> String {
    if legacy {
        tokens::legacy_table_token(
            secret.as_bytes(),
            tenant_id,
            branch_id,
            table_id,
            session_id,
            wire::clock::now_unix() + ttl_secs,
        )
    } else {
        tokens::sign_jwt(secret.as_bytes(), &tokens::table_claims(tenant_id, branch_id, table_id, session_id, ttl_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::{Mix, Population, PopulationParams};

    #[test]
    fn each_kind_connects_to_its_endpoint_with_its_parameter() {
        let p = Population::new(PopulationParams {
            connections: 100,
            tenants: 1,
            branches: 1,
            mix: Mix::default(),
            diners_per_session: 4,
        })
        .unwrap();
        let secrets = Secrets { jwt: "j".into(), table: "t".into() };
        for kind in Kind::ALL {
            let m = (0..100).map(|s| p.member(s)).find(|m| m.kind == kind).unwrap();
            let path = connect_path(&m, &secrets);
            let want = if kind == Kind::Diner { "?table_token=" } else { "?token=" };
            assert!(path.starts_with(&format!("{}{want}", kind.path())), "{path}");
            assert_eq!(path.matches('.').count(), 2, "a JWT");
        }
        assert!(format!("{secrets:?}").contains("****"));
    }
}
