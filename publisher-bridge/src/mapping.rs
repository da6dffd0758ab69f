//! Pure mapping of one Redis event to its JetStream destination: channel-name parsing, envelope
//! validation (through [`wire::envelope::parse`]), branch resolution, the `events.T.B.R` subject,
//! the dead-letter reason of a refused event, and the de-duplication key. No I/O, no headers.
//!
//! De-duplication key: `Nats-Msg-Id` is the lowercase hex SHA-256 of the exact payload bytes, on
//! both paths (pub/sub and stream). The contract (protocol section 6) says the same event text is
//! the same event however many channels or stream entries carried it, so one digest covers "same
//! event on three channels", "a stream entry re-read after a crash or taken over by another
//! replica", and "the same text on pub/sub and on the stream" alike. A stream entry id would only
//! cover the second case.

use wire::envelope::{self, Reject};
use wire::event_types::TypeClass;
use wire::subject::{EventSubject, Role};

pub use wire::msg_id::Digest;

/// The pattern subscriptions of protocol section 5.
pub const PATTERNS: [&str; 6] =
    ["branch:*:waiters", "branch:*:kitchen", "branch:*:admin", "sector:*:waiters", "session:*", "tenant:*:admin"];

/// A pub/sub channel the bridge understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Branch(u64),
    Sector(u64),
    Session(u64),
    TenantAdmin(u64),
}

impl Channel {
    /// Parses a channel name; `None` for anything that a pattern matched but is not a contract
    /// channel (non-numeric or zero id, extra segments).
    pub fn parse(name: &str) -> Option<Channel> {
        let parts: Vec<&str> = name.split(':').collect();
        match parts.as_slice() {
            ["branch", id, "waiters" | "kitchen" | "admin"] => envelope::positive_id(id).map(Channel::Branch),
            ["sector", id, "waiters"] => envelope::positive_id(id).map(Channel::Sector),
            ["session", id] => envelope::positive_id(id).map(Channel::Session),
            ["tenant", id, "admin"] => envelope::positive_id(id).map(Channel::TenantAdmin),
            _ => None,
        }
    }
}

/// Why an event went to the dead-letter stream. [`DlqReason::as_str`] is the `Dlq-Reason` header,
/// the `dlq.<reason>` subject token and the `reason` metric label (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    Invalid(Reject),
    /// A pattern matched a channel whose ids are not positive integers.
    BadChannel,
    /// `tenant:{t}:admin` carried an event of another tenant.
    TenantMismatch,
    /// A stream entry without a `data` or `payload` field.
    NoData,
    /// A durable consumer on EVENTS gave up after `MaxDeliver` attempts.
    MaxDeliveries,
    /// A durable consumer on EVENTS terminated the message (`AckTerm`).
    Terminated,
}

impl DlqReason {
    pub fn all() -> impl Iterator<Item = DlqReason> {
        Reject::ALL.into_iter().map(DlqReason::Invalid).chain([
            DlqReason::BadChannel,
            DlqReason::TenantMismatch,
            DlqReason::NoData,
            DlqReason::MaxDeliveries,
            DlqReason::Terminated,
        ])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Invalid(reject) => reject.reason(),
            DlqReason::BadChannel => "bad_channel",
            DlqReason::TenantMismatch => "tenant_mismatch",
            DlqReason::NoData => "no_data",
            DlqReason::MaxDeliveries => "max_deliveries",
            DlqReason::Terminated => "terminated",
        }
    }
}

/// Where a Redis event came from, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// A pub/sub channel name.
    Channel(&'a str),
    /// A stream entry: no channel, so the body must carry everything.
    Stream,
}

/// Maps one payload to the subject it is stored under, or the reason it is refused.
pub fn route(via: Via<'_>, payload: &[u8]) -> Result<EventSubject, DlqReason> {
    let channel = match via {
        Via::Channel(name) => Some(Channel::parse(name).ok_or(DlqReason::BadChannel)?),
        Via::Stream => None,
    };
    let envelope = envelope::parse(payload).map_err(DlqReason::Invalid)?;
    if let Some(Channel::TenantAdmin(tenant)) = channel {
        if tenant != envelope.tenant_id {
            return Err(DlqReason::TenantMismatch);
        }
    }
    let branch_id = match (envelope.branch_id, channel) {
        (Some(branch), _) => branch,
        (None, Some(Channel::Branch(branch))) => branch,
        (None, Some(Channel::TenantAdmin(_))) => 0,
        (None, _) => return Err(DlqReason::Invalid(Reject::BadBranch)),
    };
    let role = Role::of(TypeClass::of(&envelope.event_type), branch_id);
    Ok(EventSubject { tenant_id: envelope.tenant_id, branch_id, role })
}

/// `Nats-Msg-Id` of a dead letter: the reason too, since the same text refused for a
/// channel-dependent reason (bad channel, tenant mismatch) on one path may be valid on another.
pub fn dlq_msg_id(reason: DlqReason, digest: &Digest) -> String {
    format!("{}:{}", reason.as_str(), digest.msg_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"type":"ROUND_READY","tenant_id":3,"branch_id":7,"session_id":9}"#;

    fn subject(via: Via<'_>, payload: &str) -> Result<String, &'static str> {
        route(via, payload.as_bytes()).map(|s| s.events()).map_err(DlqReason::as_str)
    }

    #[test]
    fn parses_contract_channels_only() {
        assert_eq!(Channel::parse("branch:7:waiters"), Some(Channel::Branch(7)));
        assert_eq!(Channel::parse("branch:7:kitchen"), Some(Channel::Branch(7)));
        assert_eq!(Channel::parse("branch:7:admin"), Some(Channel::Branch(7)));
        assert_eq!(Channel::parse("sector:4:waiters"), Some(Channel::Sector(4)));
        assert_eq!(Channel::parse("session:99"), Some(Channel::Session(99)));
        assert_eq!(Channel::parse("tenant:3:admin"), Some(Channel::TenantAdmin(3)));
        for bad in [
            "branch:x:waiters",
            "branch:0:admin",
            "branch:-1:admin",
            "branch:+1:admin",
            "branch:1:2:admin",
            "session:",
            "session:1:x",
            "tenant:3:admin:x",
            "sector:abc:waiters",
            "branch::kitchen",
            "session:99999999999999999999",
        ] {
            assert_eq!(Channel::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn subject_follows_the_body_not_the_channel() {
        for channel in ["branch:7:waiters", "branch:7:kitchen", "branch:7:admin", "sector:4:waiters", "session:9"] {
            assert_eq!(subject(Via::Channel(channel), EVENT), Ok("events.3.7.kitchen".into()), "{channel}");
        }
        assert_eq!(subject(Via::Stream, EVENT), Ok("events.3.7.kitchen".into()));
        assert_eq!(subject(Via::Channel("tenant:3:admin"), EVENT), Ok("events.3.7.kitchen".into()));
    }

    #[test]
    fn branch_resolution() {
        let no_branch = r#"{"type":"SERVICE_CALL_CREATED","tenant_id":3}"#;
        assert_eq!(subject(Via::Channel("branch:5:waiters"), no_branch), Ok("events.3.5.waiters".into()));
        assert_eq!(subject(Via::Channel("tenant:3:admin"), no_branch), Ok("events.3.0.admin".into()));
        assert_eq!(subject(Via::Channel("sector:4:waiters"), no_branch), Err("bad_branch"));
        assert_eq!(subject(Via::Channel("session:9"), no_branch), Err("bad_branch"));
        assert_eq!(subject(Via::Stream, no_branch), Err("bad_branch"));
        let tenant_wide = r#"{"type":"ENTITY_UPDATED","tenant_id":3,"branch_id":0}"#;
        assert_eq!(subject(Via::Stream, tenant_wide), Ok("events.3.0.admin".into()));
    }

    #[test]
    fn dead_letter_reasons() {
        assert_eq!(subject(Via::Channel("branch:x:waiters"), EVENT), Err("bad_channel"));
        assert_eq!(subject(Via::Channel("tenant:4:admin"), EVENT), Err("tenant_mismatch"));
        assert_eq!(subject(Via::Stream, "nope"), Err("not_json"));
        assert_eq!(subject(Via::Stream, "[1]"), Err("not_object"));
        assert_eq!(subject(Via::Stream, r#"{"type":"X","tenant_id":"3","branch_id":1}"#), Err("bad_tenant"));
        assert_eq!(
            subject(Via::Stream, r#"{"type":"X","tenant_id":3,"branch_id":1,"sector_id":-2}"#),
            Err("bad_sector")
        );
        let big = format!(r#"{{"type":"X","tenant_id":3,"branch_id":1,"pad":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(subject(Via::Stream, &big), Err("too_large"));
        // The channel is checked before the body.
        assert_eq!(subject(Via::Channel("session:0"), "nope"), Err("bad_channel"));
    }

    #[test]
    fn every_reason_is_distinct() {
        let names: std::collections::HashSet<_> = DlqReason::all().map(DlqReason::as_str).collect();
        assert_eq!(names.len(), DlqReason::all().count());
    }

    #[test]
    fn msg_id_is_the_payload_digest() {
        assert_eq!(Digest::of(b"abc").msg_id(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(Digest::of(EVENT.as_bytes()), Digest::of(format!("{EVENT} ").as_bytes()));
        assert_eq!(dlq_msg_id(DlqReason::NoData, &Digest::of(b"abc")).split_once(':').unwrap().0, "no_data");
    }
}
