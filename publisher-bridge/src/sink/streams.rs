//! The JetStream layout the bridge owns: the `EVENTS` stream (subjects `events.>`, RePublish to
//! `live.>` so every *stored*, de-duplicated event is re-emitted for the gateways) and the
//! `EVENTS_DLQ` stream (subjects `dlq.>`). [`ensure_streams`] creates them or brings the settings
//! the bridge manages back to the configured values; fields it does not manage (an operator's
//! placement, metadata, ...) are left as they are. It does not publish.

use async_nats::jetstream::stream::{Config, DiscardPolicy, Republish, StorageType};
use async_nats::jetstream::Context;
use wire::subject::{self, DLQ_PREFIX, DLQ_STREAM, EVENTS_STREAM, LIVE_PREFIX};

use crate::config::{Storage, StreamSettings};

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("cannot create or read JetStream stream {0}: {1}")]
    Create(&'static str, async_nats::jetstream::context::CreateStreamError),
    #[error("cannot update JetStream stream {0}: {1}")]
    Update(&'static str, async_nats::jetstream::context::UpdateStreamError),
}

fn storage(s: Storage) -> StorageType {
    match s {
        Storage::File => StorageType::File,
        Storage::Memory => StorageType::Memory,
    }
}

/// The desired configuration of the events stream.
pub fn events_config(s: &StreamSettings) -> Config {
    Config {
        name: EVENTS_STREAM.to_string(),
        description: Some("Backend events bridged from Redis (publisher-bridge)".into()),
        subjects: vec![subject::events_stream_subjects()],
        storage: storage(s.storage),
        num_replicas: s.replicas,
        max_age: s.events_max_age,
        max_bytes: s.events_max_bytes,
        max_message_size: s.events_max_msg_size,
        duplicate_window: s.duplicate_window,
        discard: DiscardPolicy::Old,
        allow_direct: true,
        republish: Some(Republish {
            source: subject::events_stream_subjects(),
            destination: format!("{LIVE_PREFIX}.>"),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// The desired configuration of the dead-letter stream.
pub fn dlq_config(s: &StreamSettings) -> Config {
    Config {
        name: DLQ_STREAM.to_string(),
        description: Some("Events refused by publisher-bridge or given up on by durable consumers".into()),
        subjects: vec![format!("{DLQ_PREFIX}.>")],
        storage: storage(s.storage),
        num_replicas: s.replicas,
        max_age: s.dlq_max_age,
        max_bytes: s.dlq_max_bytes,
        max_message_size: s.dlq_max_msg_size,
        duplicate_window: s.duplicate_window,
        discard: DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates or updates both streams. Safe to call from several replicas at once.
impl StreamsError {
    /// Whether JetStream may answer later: no answer in time, no JetStream yet (a cluster still
    /// electing its meta leader), a 503 ("temporarily unavailable"), or no peers to place the
    /// stream on yet (a cluster still forming). Anything else (a name, settings the server
    /// refuses) stays wrong however long the bridge waits.
    pub fn is_transient(&self) -> bool {
        use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
        let kind = match self {
            StreamsError::Create(_, e) | StreamsError::Update(_, e) => e.kind(),
        };
        match kind {
            Kind::TimedOut | Kind::JetStreamUnavailable => true,
            Kind::JetStream(e) => {
                use async_nats::jetstream::ErrorCode;
                e.code() == 503
                    || [ErrorCode::CLUSTER_NOT_AVAILABLE, ErrorCode::CLUSTER_NO_PEERS].contains(&e.error_code())
            }
            _ => false,
        }
    }
}

pub async fn ensure_streams(js: &Context, s: &StreamSettings) -> Result<(), StreamsError> {
    ensure(js, EVENTS_STREAM, events_config(s)).await?;
    ensure(js, DLQ_STREAM, dlq_config(s)).await
}

async fn ensure(js: &Context, name: &'static str, desired: Config) -> Result<(), StreamsError> {
    let stream = js.get_or_create_stream(desired.clone()).await.map_err(|e| StreamsError::Create(name, e))?;
    let current = stream.cached_info().config.clone();
    let merged = merge(&current, &desired);
    if merged != current {
        tracing::info!(stream = name, "updating JetStream stream settings to the configured values");
        js.update_stream(merged).await.map_err(|e| StreamsError::Update(name, e))?;
    }
    Ok(())
}

/// `current` with the fields the bridge manages set to `desired`. Storage cannot change in place:
/// a different storage type is kept and reported.
pub fn merge(current: &Config, desired: &Config) -> Config {
    let mut merged = current.clone();
    merged.subjects = desired.subjects.clone();
    merged.num_replicas = desired.num_replicas;
    merged.max_age = desired.max_age;
    merged.max_bytes = desired.max_bytes;
    merged.max_message_size = desired.max_message_size;
    merged.duplicate_window = desired.duplicate_window;
    merged.discard = desired.discard;
    merged.allow_direct = desired.allow_direct;
    merged.republish = desired.republish.clone();
    if current.storage != desired.storage {
        tracing::warn!(
            stream = %current.name, current = ?current.storage, configured = ?desired.storage,
            "JetStream cannot change a stream's storage in place; keeping the current one (recreate the stream to change it)"
        );
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_stream_republishes_stored_events_to_live() {
        let c = events_config(&StreamSettings::default());
        assert_eq!(c.subjects, vec!["events.>"]);
        let r = c.republish.unwrap();
        assert_eq!((r.source.as_str(), r.destination.as_str(), r.headers_only), ("events.>", "live.>", false));
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(dlq_config(&StreamSettings::default()).subjects, vec!["dlq.>"]);
    }

    #[test]
    fn merge_touches_managed_fields_only() {
        let s = StreamSettings { replicas: 3, storage: Storage::Memory, ..Default::default() };
        let mut current = events_config(&StreamSettings::default());
        current.max_messages = 42;
        current.description = Some("operator's".into());
        let merged = merge(&current, &events_config(&s));
        assert_eq!(merged.num_replicas, 3);
        assert_eq!(merged.max_messages, 42);
        assert_eq!(merged.description.as_deref(), Some("operator's"));
        assert_eq!(merged.storage, StorageType::File, "storage is kept");
        assert_eq!(merge(&merged, &events_config(&s)), merged, "idempotent");
    }
}
