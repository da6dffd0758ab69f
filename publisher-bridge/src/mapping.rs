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
    Branch(u64, BranchRole),
    Sector(u64),
    Session(u64),
    TenantAdmin(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchRole {
    Waiters,
    Kitchen,
    Admin,
}

/// The longest id segment: `i64::MAX` has 19 digits.
const MAX_ID_DIGITS: usize = 19;

impl Channel {
    /// Parses a channel name as Redis sent it: exactly one of the six contract patterns with a
    /// positive id in canonical decimal (no sign, no leading zero, at most `i64::MAX`). `None`
    /// for anything else a pattern matched (extra segments, another id form, CR/LF or any byte
    /// outside the pattern, any length beyond the longest valid name).
    pub fn parse(name: &[u8]) -> Option<Channel> {
        let mut parts = name.split(|b| *b == b':');
        let parts = (parts.next(), parts.next(), parts.next(), parts.next());
        match parts {
            (Some(b"branch"), Some(id), Some(role), None) => {
                let role = match role {
                    b"waiters" => BranchRole::Waiters,
                    b"kitchen" => BranchRole::Kitchen,
                    b"admin" => BranchRole::Admin,
                    _ => return None,
                };
                channel_id(id).map(|id| Channel::Branch(id, role))
            }
            (Some(b"sector"), Some(id), Some(b"waiters"), None) => channel_id(id).map(Channel::Sector),
            (Some(b"session"), Some(id), None, None) => channel_id(id).map(Channel::Session),
            (Some(b"tenant"), Some(id), Some(b"admin"), None) => channel_id(id).map(Channel::TenantAdmin),
            _ => None,
        }
    }
}

/// The channel's name; `Channel::parse` of it gives the channel back.
impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Branch(id, BranchRole::Waiters) => write!(f, "branch:{id}:waiters"),
            Channel::Branch(id, BranchRole::Kitchen) => write!(f, "branch:{id}:kitchen"),
            Channel::Branch(id, BranchRole::Admin) => write!(f, "branch:{id}:admin"),
            Channel::Sector(id) => write!(f, "sector:{id}:waiters"),
            Channel::Session(id) => write!(f, "session:{id}"),
            Channel::TenantAdmin(id) => write!(f, "tenant:{id}:admin"),
        }
    }
}

fn channel_id(text: &[u8]) -> Option<u64> {
    if text.len() > MAX_ID_DIGITS || text.first() == Some(&b'0') {
        return None;
    }
    envelope::positive_id(std::str::from_utf8(text).ok()?)
}

/// Why an event went to the dead-letter stream. [`DlqReason::as_str`] is the `Dlq-Reason` header,
/// the `dlq.<reason>` subject token and the `reason` metric label (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    Invalid(Reject),
    /// A pattern matched a channel outside the contract's six (see [`Channel::parse`]).
    BadChannel,
    /// `tenant:{t}:admin` carried an event of another tenant.
    TenantMismatch,
    /// A stream entry without a `data` or `payload` field.
    NoData,
    /// JetStream refused the publish for a reason a retry cannot change (see
    /// [`crate::sink::ack::Refused::permanent`]).
    PublishRefused,
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
            DlqReason::PublishRefused,
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
            DlqReason::PublishRefused => "publish_refused",
            DlqReason::MaxDeliveries => "max_deliveries",
            DlqReason::Terminated => "terminated",
        }
    }
}

/// Where a Redis event came from, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A pub/sub channel of the contract.
    Channel(Channel),
    /// A stream entry: no channel, so the body must carry everything.
    Stream,
}

/// Maps one payload to the subject it is stored under, or the reason it is refused.
pub fn route(via: Via, payload: &[u8]) -> Result<EventSubject, DlqReason> {
    let channel = match via {
        Via::Channel(channel) => Some(channel),
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
        (None, Some(Channel::Branch(branch, _))) => branch,
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

    /// What the pipeline does with a channel name: a bad one is refused before the body is read.
    fn subject(via: impl Into<Name>, payload: &str) -> Result<String, &'static str> {
        let via = match via.into() {
            Name::Stream => Via::Stream,
            Name::Channel(name) => Via::Channel(Channel::parse(name.as_bytes()).ok_or("bad_channel")?),
        };
        route(via, payload.as_bytes()).map(|s| s.events()).map_err(DlqReason::as_str)
    }

    enum Name {
        Stream,
        Channel(&'static str),
    }

    impl From<&'static str> for Name {
        fn from(name: &'static str) -> Name {
            Name::Channel(name)
        }
    }

    const STREAM: Name = Name::Stream;

    #[test]
    fn parses_contract_channels_only() {
        let parse = |name: &str| Channel::parse(name.as_bytes());
        assert_eq!(parse("branch:7:waiters"), Some(Channel::Branch(7, BranchRole::Waiters)));
        assert_eq!(parse("branch:7:kitchen"), Some(Channel::Branch(7, BranchRole::Kitchen)));
        assert_eq!(parse("branch:7:admin"), Some(Channel::Branch(7, BranchRole::Admin)));
        assert_eq!(parse("sector:4:waiters"), Some(Channel::Sector(4)));
        assert_eq!(parse("session:99"), Some(Channel::Session(99)));
        assert_eq!(parse("tenant:3:admin"), Some(Channel::TenantAdmin(3)));
        assert_eq!(parse("session:9223372036854775807"), Some(Channel::Session(i64::MAX as u64)));
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
            "session:9223372036854775808",
            "session:07",
            "session:00000000000000000000007",
            "branch:1:waiters\r\nX-Injected: yes",
            "branch:1:waiters\n",
            " session:1",
            "session:1 ",
            "session:１",
            "Branch:1:waiters",
            "branch:1:Waiters",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let long = format!("branch:{}:waiters", "1".repeat(65_536));
        assert_eq!(parse(&long), None);
    }

    #[test]
    fn subject_follows_the_body_not_the_channel() {
        for channel in ["branch:7:waiters", "branch:7:kitchen", "branch:7:admin", "sector:4:waiters", "session:9"] {
            assert_eq!(subject(channel, EVENT), Ok("events.3.7.kitchen".into()), "{channel}");
        }
        assert_eq!(subject(STREAM, EVENT), Ok("events.3.7.kitchen".into()));
        assert_eq!(subject("tenant:3:admin", EVENT), Ok("events.3.7.kitchen".into()));
    }

    #[test]
    fn branch_resolution() {
        let no_branch = r#"{"type":"SERVICE_CALL_CREATED","tenant_id":3}"#;
        assert_eq!(subject("branch:5:waiters", no_branch), Ok("events.3.5.waiters".into()));
        assert_eq!(subject("tenant:3:admin", no_branch), Ok("events.3.0.admin".into()));
        assert_eq!(subject("sector:4:waiters", no_branch), Err("bad_branch"));
        assert_eq!(subject("session:9", no_branch), Err("bad_branch"));
        assert_eq!(subject(STREAM, no_branch), Err("bad_branch"));
        let tenant_wide = r#"{"type":"ENTITY_UPDATED","tenant_id":3,"branch_id":0}"#;
        assert_eq!(subject(STREAM, tenant_wide), Ok("events.3.0.admin".into()));
    }

    #[test]
    fn dead_letter_reasons() {
        assert_eq!(subject("branch:x:waiters", EVENT), Err("bad_channel"));
        assert_eq!(subject("tenant:4:admin", EVENT), Err("tenant_mismatch"));
        assert_eq!(subject(STREAM, "nope"), Err("not_json"));
        assert_eq!(subject(STREAM, "[1]"), Err("not_object"));
        assert_eq!(subject(STREAM, r#"{"type":"X","tenant_id":"3","branch_id":1}"#), Err("bad_tenant"));
        assert_eq!(subject(STREAM, r#"{"type":"X","tenant_id":3,"branch_id":1,"sector_id":-2}"#), Err("bad_sector"));
        let big = format!(r#"{{"type":"X","tenant_id":3,"branch_id":1,"pad":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(subject(STREAM, &big), Err("too_large"));
        // The channel is checked before the body.
        assert_eq!(subject("session:0", "nope"), Err("bad_channel"));
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "branch:7:waiters",
            "branch:1:kitchen",
            "branch:12:admin",
            "sector:4:waiters",
            "session:99",
            "tenant:3:admin",
        ] {
            assert_eq!(Channel::parse(name.as_bytes()).unwrap().to_string(), name);
        }
    }

    proptest::proptest! {
        /// Whatever bytes Redis hands over as a channel name, what goes into `Bridge-Source` is a
        /// bounded header value without CR, LF, controls or non-ASCII.
        #[test]
        fn any_channel_name_gives_a_safe_source(name in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let origin = crate::pipeline::Origin::pubsub(&name, name.len());
            let header = origin.header();
            proptest::prop_assert!(header.len() <= "pubsub:".len() + crate::header::MAX_VALUE, "{}", header.len());
            proptest::prop_assert!(crate::header::is_escaped(&header), "{header:?}");
            proptest::prop_assert!(async_nats::HeaderValue::from(header.as_str()).as_str() == header);
            match Channel::parse(&name) {
                Some(channel) => proptest::prop_assert_eq!(channel.to_string().into_bytes(), name),
                None => proptest::prop_assert!(!matches!(origin, crate::pipeline::Origin::PubSub(_))),
            }
        }

        /// Every valid channel name round-trips through the parser and the header unchanged.
        #[test]
        fn valid_names_round_trip(kind in 0usize..6, id in 1u64..=i64::MAX as u64) {
            let name = match kind {
                0 => format!("branch:{id}:waiters"),
                1 => format!("branch:{id}:kitchen"),
                2 => format!("branch:{id}:admin"),
                3 => format!("sector:{id}:waiters"),
                4 => format!("session:{id}"),
                _ => format!("tenant:{id}:admin"),
            };
            let channel = Channel::parse(name.as_bytes());
            proptest::prop_assert!(channel.is_some(), "{}", name);
            proptest::prop_assert_eq!(channel.unwrap().to_string(), name.clone());
            let origin = crate::pipeline::Origin::pubsub(name.as_bytes(), name.len());
            proptest::prop_assert_eq!(origin.header(), format!("pubsub:{name}"));
        }

        /// Names that nearly match (one byte changed, added or removed) parse only to what they spell.
        #[test]
        fn near_misses_never_parse_to_another_channel(id in 1u64..1_000_000, at in 0usize..40, byte in proptest::num::u8::ANY) {
            let name = format!("branch:{id}:kitchen").into_bytes();
            let mut changed = name.clone();
            let at = at % changed.len();
            changed[at] = byte;
            if let Some(channel) = Channel::parse(&changed) {
                proptest::prop_assert_eq!(channel.to_string().into_bytes(), changed);
            }
        }
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
