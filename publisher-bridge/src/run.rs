//! The bridge's lifecycle: connect (failing fast on the very first connect to NATS and Redis),
//! ensure the JetStream streams, start the sources, then on stop: readiness off, stop reading
//! Redis, finish in-flight publishes and their XACKs within `BRIDGE_SHUTDOWN_TIMEOUT`, drain
//! NATS. What each part does lives in its own module.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::advisory::AdvisoryDlq;
use crate::config::Config;
use crate::health::{Dependency, Health};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::sink::deliveries::Deliveries;
use crate::sink::jetstream::Publisher;
use crate::sink::streams::{ensure_streams, StreamsError};
use crate::source::conn::Target;
use crate::source::pubsub::{self, PubSubSource};
use crate::source::stream::StreamSource;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Nats(#[from] wire::natsconn::NatsConnectError),
    #[error(transparent)]
    Streams(#[from] StreamsError),
    #[error("cannot connect to Redis ({what}): {source}")]
    Redis { what: &'static str, source: redis::RedisError },
    #[error("{0}")]
    RedisSettings(wire::redisconn::RedisConnError),
    #[error("Redis TLS: {0}")]
    RedisTls(wire::tls::TlsError),
    #[error("cannot subscribe to JetStream advisories: {0}")]
    Advisories(#[source] async_nats::SubscribeError),
    #[error("cannot subscribe to the bridge's publish acknowledgements: {0}")]
    Acknowledgements(#[source] async_nats::SubscribeError),
}

/// Runs the bridge until `stop` fires, serving HTTP on `listener`. Returns an error only when
/// starting fails; a stop always ends in `Ok` once the shutdown sequence is done.
pub async fn run(config: Config, listener: TcpListener, stop: CancellationToken) -> Result<(), BridgeError> {
    tracing::info!(config = %config.summary(), "publisher-bridge starting");
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone(), config.stall_timeout));
    let http_stop = CancellationToken::new();
    let state = AppState { health: health.clone(), metrics: metrics.clone() };
    let http_task = tokio::spawn(http::serve(listener, state, config.http, http_stop.clone()));
    let result = run_connected(&config, &metrics, &health, stop).await;
    http_stop.cancel();
    let _ = http_task.await;
    result
}

async fn run_connected(
    config: &Config,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    stop: CancellationToken,
) -> Result<(), BridgeError> {
    let nats_health = health.clone();
    let client = config
        .nats
        .connect(
            &format!("publisher-bridge {}", config.instance_id),
            config.startup_timeout,
            move |event| match event {
                async_nats::Event::Connected => nats_health.set(Dependency::Nats, true),
                async_nats::Event::Disconnected | async_nats::Event::Closed => nats_health.set(Dependency::Nats, false),
                other => tracing::info!(event = %other, "NATS event"),
            },
        )
        .await?;
    health.set(Dependency::Nats, true);
    let js = jetstream::ContextBuilder::new()
        .timeout(config.publish_timeout)
        .max_ack_inflight(config.max_in_flight + 1024)
        .build(client.clone());
    let mut backoff = wire::backoff::Backoff::reconnect();
    loop {
        match ensure_streams(&js, &config.streams).await {
            Ok(()) => break,
            Err(error) if error.is_transient() => {
                let attempt = backoff.attempts() + 1;
                tracing::warn!(%error, attempt, "JetStream is not answering yet; not ready, asking again");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    health.set(Dependency::Streams, true);

    let redis_client = config.redis.client().map_err(BridgeError::RedisSettings)?;
    let pubsub_target = Target::of(&redis_client, config.redis.tls_config().map_err(BridgeError::RedisTls)?)
        .map_err(|e| BridgeError::Redis { what: "REDIS_URL", source: e.into() })?;
    let first_pubsub = pubsub::subscribe(&pubsub_target, config.startup_timeout)
        .await
        .map_err(|e| BridgeError::Redis { what: "pub/sub", source: e.into() })?;
    let ack_conn = connection_manager(&redis_client, config.startup_timeout, Duration::from_secs(3)).await?;

    let abandon = CancellationToken::new();
    let tracker = TaskTracker::new();
    let publisher = Arc::new(Publisher::new(js, metrics.clone(), abandon.clone()));
    let dlq_limit = (config.streams.dlq_max_msg_size as usize).min(client.server_info().max_payload.max(1024));
    let deliveries = Arc::new(Deliveries::new(
        publisher.clone(),
        metrics.clone(),
        health.clone(),
        config.publish_timeout,
        tracker.clone(),
        dlq_limit,
    ));
    let pipeline = Arc::new(Pipeline::new(deliveries.clone(), metrics.clone(), health.clone(), config.max_in_flight));
    let acks = publisher.acknowledgements().await.map_err(BridgeError::Acknowledgements)?;
    let sources_stopped = CancellationToken::new();
    tracker.spawn(deliveries.confirm(acks, sources_stopped.clone(), abandon.clone()));

    let advisories = if config.advisory_dlq {
        let dlq = AdvisoryDlq { client: client.clone(), publisher: publisher.clone(), metrics: metrics.clone() };
        Some(dlq.start(stop.clone()).await.map_err(BridgeError::Advisories)?)
    } else {
        None
    };
    let pubsub = PubSubSource {
        target: pubsub_target.clone(),
        connect_timeout: Duration::from_secs(5),
        pipeline: pipeline.clone(),
        health: health.clone(),
    };
    let pubsub_task = tokio::spawn(pubsub.run(first_pubsub, stop.clone()));
    let stream =
        Arc::new(StreamSource::new(config, pipeline.clone(), health.clone(), metrics.clone(), pubsub_target, ack_conn));
    let stream_task = tokio::spawn(stream.run(stop.clone(), abandon.clone(), tracker.clone()));
    tracing::info!(instance = %config.instance_id, "publisher-bridge running");

    stop.cancelled().await;
    let deadline = Instant::now() + config.shutdown_timeout;
    health.start_draining();
    tracing::info!("draining: stopped reading Redis, finishing in-flight publishes and acknowledgements");
    let _ = tokio::time::timeout_at(deadline.into(), async {
        let _ = pubsub_task.await;
        let _ = stream_task.await;
        if let Some(task) = advisories {
            let _ = task.await;
        }
    })
    .await;
    sources_stopped.cancel();
    drop(pipeline);
    tracker.close();
    if tokio::time::timeout_at(deadline.into(), tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = metrics.in_flight.get(),
            "shutdown timeout: abandoning unconfirmed publishes (their stream entries stay pending in Redis and are re-published later)"
        );
        abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = client.flush().await;
        let _ = client.drain().await;
    })
    .await;
    tracing::info!("publisher-bridge stopped");
    Ok(())
}

async fn connection_manager(
    client: &redis::Client,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<ConnectionManager, BridgeError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let what = "stream connection";
    match tokio::time::timeout(connect_timeout, client.get_connection_manager_with_config(config)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(BridgeError::Redis { what, source }),
        Err(_) => Err(BridgeError::Redis {
            what,
            source: redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        }),
    }
}
