//! Publishing events the way the backend does: the same text PUBLISHed on each of the event's
//! Redis channels and, for critical events, XADDed to `events:critical` (field `data`), pipelined
//! per batch; or, with `--direct-nats`, straight to the gateway's `live.<tenant>.<branch>.<role>`
//! subjects (one copy per channel, so the gateway's de-duplication is exercised too); or, for
//! `loadtest bridge --path direct`, stored straight into JetStream as the bridge would
//! ([`JetStreamSink`]). Paced by [`Pacer`]; every event carries its publish time. It owns no
//! accounting.

mod jetstream_sink;

use crate::events::{render, EventSpec, Generator};
use crate::pacing::Pacer;
use anyhow::Context;
use jetstream_sink::JetStreamSink;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wire::clock::now_micros;
use wire::subject::{EventSubject, Role};

/// Redis streams are trimmed (approximately) to this length so long runs stay bounded.
pub const STREAM_MAXLEN: u64 = 1_000_000;

pub enum Target {
    Redis {
        conn: redis::aio::MultiplexedConnection,
        stream_key: String,
    },
    Nats {
        client: async_nats::Client,
    },
    /// The EVENTS stream itself, with the bridge's subjects and headers.
    JetStream(Box<JetStreamSink>),
}

impl Target {
    pub async fn redis(url: &str, stream_key: &str) -> anyhow::Result<Target> {
        let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| anyhow::anyhow!("connect to Redis at {url}: timed out"))?
            .with_context(|| format!("connect to Redis at {url}"))?;
        Ok(Target::Redis { conn, stream_key: stream_key.to_string() })
    }

    pub async fn nats(url: &str) -> anyhow::Result<Target> {
        let client = crate::nats::connect(url, async_nats::ConnectOptions::new()).await?;
        Ok(Target::Nats { client })
    }

    /// JetStream at `url`; `stream_key` names the Redis stream the bridge would have read.
    pub async fn jetstream(url: &str, stream_key: &str) -> anyhow::Result<Target> {
        Ok(Target::JetStream(Box::new(JetStreamSink::connect(url, stream_key).await?)))
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Target::Redis { .. } => "redis",
            Target::Nats { .. } => "direct-nats",
            Target::JetStream(_) => "jetstream",
        }
    }

    async fn send(&mut self, batch: &[(EventSpec, String)]) -> anyhow::Result<()> {
        match self {
            Target::Redis { conn, stream_key } => {
                let mut pipe = redis::pipe();
                for (event, text) in batch {
                    for channel in &event.channels {
                        pipe.cmd("PUBLISH").arg(channel.name()).arg(text).ignore();
                    }
                    if event.stream {
                        pipe.cmd("XADD")
                            .arg(&*stream_key)
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(STREAM_MAXLEN)
                            .arg("*")
                            .arg("data")
                            .arg(text)
                            .ignore();
                    }
                }
                pipe.query_async::<()>(conn).await.context("Redis pipeline")?;
            }
            Target::Nats { client } => {
                for (event, text) in batch {
                    let subject = EventSubject {
                        tenant_id: event.tenant_id,
                        branch_id: event.branch_id,
                        role: Role::of(event.class(), event.branch_id),
                    }
                    .live();
                    let payload = bytes::Bytes::copy_from_slice(text.as_bytes());
                    for _ in 0..event.copies() {
                        client.publish(subject.clone(), payload.clone()).await.context("NATS publish")?;
                    }
                }
                client.flush().await.context("NATS flush")?;
            }
            Target::JetStream(sink) => sink.send(batch).await,
        }
        Ok(())
    }

    /// Waits for what is still in flight (JetStream acknowledgements) and counts the events
    /// that were not stored as failed to publish.
    async fn finish(&mut self, log: &mut PublishLog) {
        let Target::JetStream(sink) = self else { return };
        for (id, error) in sink.finish().await {
            if let Some(sent_us) = log.sent_us.get_mut(id as usize).filter(|t| **t != 0) {
                *sent_us = 0;
                log.errors += 1;
                log.first_error.get_or_insert(error);
            }
        }
    }
}

/// How a publish run went.
#[derive(Debug, Clone, Default)]
pub struct PublishLog {
    /// Publish time of each event id; 0 when its batch failed (or, below the plan's
    /// `first_id`, when an earlier phase published it).
    pub sent_us: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Copies sent (channels plus stream entries), counting failed batches too.
    pub copies: u64,
    pub max_lag: Duration,
    pub started_us: u64,
    pub finished_us: u64,
}

pub struct Plan<'a> {
    pub generator: &'a Generator,
    pub run: u64,
    /// Id of the first event: a scenario that publishes in phases continues the ids.
    pub first_id: u64,
    pub count: u64,
    pub rate: f64,
    pub max_batch: u64,
    pub pad_to: usize,
    /// Rewrites each event before it is sent (the bridge scenario picks the path).
    pub shape: fn(EventSpec) -> EventSpec,
}

/// Publishes `plan.count` events; `sent` counts them live for the progress line.
pub async fn run(target: &mut Target, plan: Plan<'_>, sent: &AtomicU64, stop: &CancellationToken) -> PublishLog {
    let mut log = PublishLog {
        sent_us: vec![0; (plan.first_id + plan.count) as usize],
        started_us: now_micros(),
        ..PublishLog::default()
    };
    let mut pacer = Pacer::new(plan.rate, plan.max_batch, plan.count);
    let start = Instant::now();
    let mut batch = Vec::with_capacity(plan.max_batch as usize);
    while !pacer.done() && !stop.is_cancelled() {
        log.max_lag = log.max_lag.max(pacer.lag(start.elapsed()));
        let first = plan.first_id + pacer.released();
        let n = pacer.take(start.elapsed());
        if n == 0 {
            let wait = pacer.next_due().saturating_sub(start.elapsed());
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        batch.clear();
        for id in first..first + n {
            let event = (plan.shape)(plan.generator.event(id as u32));
            let sent_us = now_micros();
            log.sent_us[id as usize] = sent_us;
            log.copies += event.copies() as u64;
            let text = render(&event, plan.run, sent_us, plan.pad_to);
            batch.push((event, text));
        }
        if let Err(error) = target.send(&batch).await {
            log.errors += n;
            log.first_error.get_or_insert_with(|| format!("{error:#}"));
            for id in first..first + n {
                log.sent_us[id as usize] = 0;
            }
        }
        sent.fetch_add(n, Relaxed);
    }
    log.sent_us.truncate((plan.first_id + pacer.released()) as usize);
    target.finish(&mut log).await;
    log.finished_us = now_micros();
    log
}
