//! The state every request and connection shares, and how it is put together at start:
//! configuration, verifiers, the Redis and NATS connections, push revocation, the sector source,
//! the registry and the tenant subscriptions. Startup fails fast when NATS or Redis cannot be
//! reached.

use crate::auth::push::Push;
use crate::auth::revocation::{Revocation, RevocationError};
use crate::auth::{Authenticator, Staff};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::metrics::{Metrics, ResultLabel};
use crate::recovery::Link;
use crate::registry::{Capacity, Registry};
use crate::sectors::Sectors;
use crate::subscriptions::Subscriptions;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Nats(#[from] wire::natsconn::NatsConnectError),
    #[error("cannot reach Redis at REDIS_URL for token revocation checks: {0}")]
    Redis(RevocationError),
    #[error("cannot serve HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("cannot listen on {0} for the admin API (is GATEWAY_ADMIN_LISTEN_ADDR free?): {1}")]
    AdminListen(std::net::SocketAddr, std::io::Error),
}

pub(crate) struct App {
    pub config: Config,
    pub auth: Authenticator,
    pub revocation: Revocation,
    /// Revocations pushed by Redis keyspace notifications; stops when the app is dropped.
    pub push: Push,
    pub sectors: Sectors,
    pub registry: Arc<Registry>,
    pub subscriptions: Arc<Subscriptions>,
    pub nats: async_nats::Client,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the drain starts: readiness off, new connections refused with 1012.
    pub draining: CancellationToken,
    /// Every running session; shutdown waits on it.
    pub sessions: TaskTracker,
    /// Catch-up requests in progress, per caller and in all.
    pub catchup: Arc<crate::catchup::limits::CatchupLimits>,
    /// `/ws/health/detailed`'s dependency checks, shared by the requests of one second.
    pub dependencies: crate::http::dependencies::DependencyCache,
}

impl App {
    pub async fn start(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::default());
        let nats_metrics = metrics.clone();
        let link = Link::default();
        let nats_link = link.clone();
        let nats = config
            .nats
            .connect(&config.instance_id, FIRST_CONNECT_TIMEOUT, move |event| match event {
                async_nats::Event::Connected => {
                    nats_metrics.nats_connected.set(1);
                    nats_link.connected();
                    tracing::info!("NATS connected");
                }
                async_nats::Event::Disconnected => {
                    nats_metrics.nats_connected.set(0);
                    nats_link.disconnected();
                    tracing::warn!("NATS disconnected: reconnecting; live events resume once connected");
                }
                async_nats::Event::SlowConsumer(_) => {
                    nats_metrics.nats_slow_consumers.inc();
                }
                other => tracing::info!(event = %other, "NATS event"),
            })
            .await?;
        metrics.nats_connected.set(1);
        tokio::spawn(link.clone().follow_leaders(nats.clone()));
        let revocation = Revocation::connect(&config.redis).await.map_err(StartError::Redis)?;
        let push = Push::start(revocation.clone(), metrics.clone());
        let limits = &config.limits;
        let capacity = Capacity {
            total: limits.max_total_connections,
            per_user: limits.max_connections_per_user,
            per_session: limits.max_connections_per_session,
        };
        let registry = Arc::new(Registry::new(capacity, limits.send_queue_size));
        let dispatcher = Arc::new(Dispatcher::new(registry.clone(), config.dedup_window, metrics.clone()));
        let subscriptions =
            Arc::new(Subscriptions::new(nats.clone(), link, dispatcher, config.unsubscribe_delay, metrics.clone()));
        let sectors =
            Sectors::new(config.database_url.as_ref().map(|u| u.expose()), config.sector_cache_ttl, metrics.clone());
        let catchup = crate::catchup::limits::CatchupLimits::new(config.catchup_per_caller, config.catchup_concurrency);
        Ok(Arc::new(App {
            auth: Authenticator::new(&config.auth),
            config,
            revocation,
            push,
            sectors,
            registry,
            subscriptions,
            nats,
            metrics,
            draining: CancellationToken::new(),
            sessions: TaskTracker::new(),
            catchup,
            dependencies: crate::http::dependencies::DependencyCache::default(),
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub fn nats_connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// Revocation with the configured failure policy: a Redis error counts as revoked unless
    /// `REVOCATION_FAIL_OPEN` is set.
    pub async fn is_revoked(&self, staff: &Staff) -> bool {
        let (revoked, result) = match self.revocation.is_revoked(staff).await {
            Ok(true) => (true, "revoked"),
            Ok(false) => (false, "ok"),
            Err(error) => {
                if crate::telemetry::REDIS_ERRORS.allow() {
                    tracing::warn!(%error, fail_open = self.config.revocation_fail_open, "revocation check failed");
                }
                (!self.config.revocation_fail_open, "error")
            }
        };
        self.metrics.revocation_checks.get_or_create(&ResultLabel { result }).inc();
        revoked
    }
}
