//! The `events:critical` source: a Redis consumer group of the bridge's own (so the old gateway's
//! `ws_gateway_group` can keep running beside it during a migration), read with XREADGROUP in
//! batches; every entry is acknowledged (XACK, batched) only after JetStream acknowledged its
//! publish to EVENTS or EVENTS_DLQ. At start and after every reconnect the reader first
//! re-publishes this consumer's own pending entries (ID `0`), then reads new ones (`>`); a
//! claimer takes over entries that another (dead) replica left pending longer than
//! `BRIDGE_CLAIM_IDLE` (XAUTOCLAIM). Re-publishing is safe because the `Nats-Msg-Id` is the
//! payload digest: JetStream stores an entry once however often it is re-read within the
//! duplicate window. Delivery into JetStream is at-least-once; storage is exactly-once as long
//! as a re-publish happens within `BRIDGE_DUPLICATE_WINDOW` of the first one (an entry left
//! pending while every replica was down for longer than the window may be stored twice).
//!
//! Where a new group starts: `$` by default (`BRIDGE_GROUP_START`). During a migration the old
//! gateway still handles everything written before the bridge's first start; `0` would replay the
//! stream's whole retained history into JetStream, and RePublish would push those old events to
//! clients as if they were new. When the group disappears while running (Redis restarted without
//! persistence, or someone destroyed it), it is re-created at the last entry id this process saw,
//! so nothing written after that is skipped and nothing before it is replayed.
//!
//! Memory: entries are read on connections of the bridge's own ([`crate::source::conn`]) that keep
//! at most [`crate::source::BULK_CAP`] bytes of any field (a longer `data` is dead-lettered as
//! `too_large` with its head), and every read, XAUTOCLAIM included, asks for no more entries
//! than fit the byte budget `BRIDGE_READ_MAX_BYTES` of entries read and not yet finished
//! ([`crate::budget`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{RedisError, RedisResult, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::ReadBudget;
use crate::config::Config;
use crate::health::{Dependency, Health};
use crate::mapping::DlqReason;
use crate::metrics::Metrics;
use crate::pipeline::{Incoming, Origin, Pipeline};
use crate::source::conn::{Conn, Target};
use crate::source::entries::{self, Entry};
use crate::source::BULK_CAP;
use wire::backoff::Backoff;
use wire::throttle::Throttle;

const BLOCK: Duration = Duration::from_secs(2);
/// How long a reply may take beyond the read's own BLOCK time.
const REPLY_TIMEOUT: Duration = Duration::from_secs(6);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StreamSource {
    pub key: Arc<str>,
    pub group: String,
    pub consumer: String,
    pub start: String,
    pub count: usize,
    pub claim_idle: Duration,
    pub claim_interval: Duration,
    pub ack_capacity: usize,
    pub pipeline: Arc<Pipeline>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Where the reads (XREADGROUP, XAUTOCLAIM) connect, each on a connection of its own.
    pub target: Target,
    pub budget: Arc<ReadBudget>,
    /// XGROUP, XACK, XPENDING.
    pub ack_conn: ConnectionManager,
}

impl StreamSource {
    pub fn new(
        config: &Config,
        pipeline: Arc<Pipeline>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        target: Target,
        ack_conn: ConnectionManager,
    ) -> StreamSource {
        StreamSource {
            key: config.stream_key.as_str().into(),
            group: config.consumer_group.clone(),
            consumer: config.instance_id.clone(),
            start: config.group_start.as_redis_id().to_string(),
            count: config.read_count,
            claim_idle: config.claim_idle,
            claim_interval: config.claim_interval,
            ack_capacity: config.max_in_flight * 2,
            pipeline,
            health,
            metrics,
            target,
            budget: ReadBudget::new(config.read_max_bytes),
            ack_conn,
        }
    }

    /// Reads until `stop` fires. The acker runs in `tracker` until every in-flight publish of a
    /// stream entry has been acknowledged (or `abandon` fires).
    pub async fn run(self: Arc<Self>, stop: CancellationToken, abandon: CancellationToken, tracker: TaskTracker) {
        let (ack_tx, ack_rx) = mpsc::channel(self.ack_capacity);
        tracker.spawn(self.clone().acker(ack_rx, abandon));
        let claimer = tokio::spawn(self.clone().claimer(stop.clone(), ack_tx.clone()));
        let mut last_seen: Option<String> = None;
        let mut backoff = Backoff::reconnect();
        let warn = Throttle::every(Duration::from_secs(5));
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = self.session(&ack_tx, &mut last_seen) => r,
            };
            let Err(error) = result else { break };
            self.health.set(Dependency::RedisStream, false);
            if let Some(held_back) = warn.allow_with_count() {
                tracing::warn!(%error, held_back, key = %self.key, "Redis stream reader failed; reconnecting");
            }
            backoff.healthy(started);
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        let _ = claimer.await;
        tracing::info!(key = %self.key, "stream reader stopped");
    }

    /// One connected period: ensure the group, re-publish own pending entries, then read new ones.
    async fn session(&self, ack: &mpsc::Sender<String>, last_seen: &mut Option<String>) -> std::io::Result<()> {
        let start = last_seen.clone().unwrap_or_else(|| self.start.clone());
        self.ensure_group(&start).await.map_err(std::io::Error::other)?;
        let mut conn = Conn::open(&self.target, BULK_CAP, CONNECT_TIMEOUT).await?;
        self.health.set(Dependency::RedisStream, true);
        let mut cursor = "0".to_string();
        loop {
            let batch = self.read(&mut conn, &cursor, None).await?;
            let Some(last) = batch.last() else { break };
            cursor = last.id.clone();
            tracing::info!(entries = batch.len(), consumer = %self.consumer, "re-publishing own pending stream entries");
            self.submit_all(batch, ack).await;
        }
        loop {
            let batch = self.read(&mut conn, ">", Some(BLOCK)).await?;
            if let Some(last) = batch.last() {
                *last_seen = Some(last.id.clone());
            }
            self.submit_all(batch, ack).await;
        }
    }

    async fn ensure_group(&self, start: &str) -> RedisResult<()> {
        let mut conn = self.ack_conn.clone();
        let created: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*self.key)
            .arg(&self.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {
                tracing::info!(key = %self.key, group = %self.group, start, "created Redis consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One XREADGROUP of as many entries as the budget allows (waiting for budget first).
    async fn read(&self, conn: &mut Conn, id: &str, block: Option<Duration>) -> std::io::Result<Vec<Entry>> {
        let count = self.budget.next_count(self.count).await.to_string();
        let block_ms = block.map(|b| b.as_millis().to_string());
        let mut args: Vec<&[u8]> =
            vec![b"XREADGROUP", b"GROUP", self.group.as_bytes(), self.consumer.as_bytes(), b"COUNT", count.as_bytes()];
        if let Some(ms) = &block_ms {
            args.extend([&b"BLOCK"[..], ms.as_bytes()]);
        }
        args.extend([&b"STREAMS"[..], self.key.as_bytes(), id.as_bytes()]);
        let reply = request(conn, &args, block.unwrap_or_default() + REPLY_TIMEOUT).await?;
        let entries = entries::from_read(reply).map_err(std::io::Error::other)?;
        let read: usize = entries.iter().map(|e| e.cost).sum();
        self.metrics.stream_read_bytes.set((self.budget.used() + read) as i64);
        Ok(entries)
    }

    async fn submit_all(&self, batch: Vec<Entry>, ack: &mpsc::Sender<String>) {
        for entry in batch {
            match self.incoming(entry) {
                Ok(event) => self.pipeline.submit(event, Some(ack.clone())).await,
                // Trimmed from the stream while pending: nothing left to publish.
                Err(id) => {
                    let _ = ack.send(id).await;
                }
            }
        }
    }

    /// The event of an entry (holding its share of the read budget), or its id when the entry
    /// no longer exists.
    fn incoming(&self, entry: Entry) -> Result<Incoming, String> {
        let Some(fields) = entry.fields else { return Err(entry.id) };
        let charge = self.budget.charge(entry.cost);
        let origin = Origin::Stream { key: self.key.clone(), id: entry.id };
        let mut event = match entries::data_field(fields) {
            Ok(data) => Incoming::read(data.head, data.len, origin),
            Err(fields_json) => {
                let mut event = Incoming::new(Bytes::from(fields_json), origin);
                event.refused = Some(DlqReason::NoData);
                event
            }
        };
        event.charge = Some(charge);
        Ok(event)
    }

    /// XACKs ids in batches as their publishes are confirmed; never before.
    async fn acker(self: Arc<Self>, mut ids: mpsc::Receiver<String>, abandon: CancellationToken) {
        let mut conn = self.ack_conn.clone();
        let mut batch = Vec::with_capacity(1024);
        let warn = Throttle::every(Duration::from_secs(5));
        while ids.recv_many(&mut batch, 1024).await > 0 {
            let mut backoff = Backoff::publish();
            loop {
                let acked: RedisResult<u64> =
                    redis::cmd("XACK").arg(&*self.key).arg(&self.group).arg(&batch).query_async(&mut conn).await;
                match acked {
                    Ok(_) => {
                        self.metrics.stream_acked.inc_by(batch.len() as u64);
                        break;
                    }
                    Err(e) if !retryable(&e) => {
                        // NOGROUP after Redis lost its data: there is nothing left to acknowledge.
                        tracing::warn!(error = %e, entries = batch.len(), "XACK refused by Redis; dropping these acknowledgements");
                        break;
                    }
                    Err(e) => {
                        if let Some(held_back) = warn.allow_with_count() {
                            tracing::warn!(error = %e, held_back, "XACK failed; retrying");
                        }
                        tokio::select! {
                            biased;
                            _ = abandon.cancelled() => return,
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            }
            batch.clear();
        }
    }

    /// Periodically takes over entries idle for longer than `claim_idle` (a dead replica's), and
    /// samples the group's pending count.
    async fn claimer(self: Arc<Self>, stop: CancellationToken, ack: mpsc::Sender<String>) {
        let mut conn: Option<Conn> = None;
        let warn = Throttle::every(Duration::from_secs(30));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.claim_interval) => {}
            }
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = self.claim_round(&mut conn, &ack) => r,
            };
            if let Err(error) = result {
                conn = None;
                if let Some(held_back) = warn.allow_with_count() {
                    tracing::warn!(%error, held_back, "XAUTOCLAIM round failed");
                }
            }
        }
    }

    async fn claim_round(&self, conn: &mut Option<Conn>, ack: &mpsc::Sender<String>) -> std::io::Result<()> {
        let raw = match conn {
            Some(c) => c,
            None => conn.insert(Conn::open(&self.target, BULK_CAP, CONNECT_TIMEOUT).await?),
        };
        let idle = self.claim_idle.as_millis().to_string();
        let mut cursor = "0-0".to_string();
        loop {
            let count = self.budget.next_count(self.count).await.to_string();
            let args: [&[u8]; 8] = [
                b"XAUTOCLAIM",
                self.key.as_bytes(),
                self.group.as_bytes(),
                self.consumer.as_bytes(),
                idle.as_bytes(),
                cursor.as_bytes(),
                b"COUNT",
                count.as_bytes(),
            ];
            let reply = request(raw, &args, REPLY_TIMEOUT).await?;
            let (next, claimed) = entries::from_autoclaim(reply).map_err(std::io::Error::other)?;
            if !claimed.is_empty() {
                tracing::info!(entries = claimed.len(), consumer = %self.consumer, "took over idle pending stream entries");
                self.metrics.stream_claimed.inc_by(claimed.len() as u64);
                self.submit_all(claimed, ack).await;
            }
            if next == "0-0" || next.is_empty() {
                break;
            }
            cursor = next;
        }
        let mut ack_conn = self.ack_conn.clone();
        let pending: Value = redis::cmd("XPENDING")
            .arg(&*self.key)
            .arg(&self.group)
            .query_async(&mut ack_conn)
            .await
            .map_err(std::io::Error::other)?;
        if let Value::Array(items) = pending {
            if let Some(Value::Int(n)) = items.first() {
                self.metrics.stream_pending.set((*n).max(0) as u64);
            }
        }
        self.metrics.stream_read_bytes.set(self.budget.used() as i64);
        Ok(())
    }
}

/// Sends one command and waits at most `timeout` for its reply.
async fn request(conn: &mut Conn, args: &[&[u8]], timeout: Duration) -> std::io::Result<crate::source::resp::Frame> {
    conn.send(args).await?;
    tokio::time::timeout(timeout, conn.next_frame())
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply from Redis in time")))
}

/// Connection trouble is retried; an error answer from Redis is not.
fn retryable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.code() == Some("LOADING")
}
