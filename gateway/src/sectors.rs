//! Waiter sector assignments from the backend's PostgreSQL (protocol section 6): today's active
//! rows of `waiter_sector_assignment` for a waiter, cached briefly; `refresh_sectors` bypasses the
//! cache. Without a database, or on an error, a waiter has no sectors (logged and counted) and
//! still receives branch-wide events.

use crate::metrics::{Metrics, ResultLabel};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QUERY: &str = "SELECT DISTINCT sector_id::bigint FROM waiter_sector_assignment \
     WHERE waiter_id = $1::bigint AND tenant_id = $2::bigint \
     AND assignment_date = CURRENT_DATE AND is_active ORDER BY 1";
const TIMEOUT: Duration = Duration::from_secs(3);
/// Past this many cached waiters, expired entries are swept on insert.
const SWEEP_ABOVE: usize = 10_000;

type Cache = HashMap<(u64, u64), (Instant, Arc<[u64]>)>;

pub struct Sectors {
    pool: Option<Pool>,
    ttl: Duration,
    cache: Mutex<Cache>,
    metrics: Arc<Metrics>,
}

impl Sectors {
    /// `database_url` was validated with the configuration; connections open on first use.
    pub fn new(database_url: Option<&str>, ttl: Duration, metrics: Arc<Metrics>) -> Sectors {
        let pool = database_url.map(|url| {
            let config = tokio_postgres::Config::from_str(url).expect("DATABASE_URL validated at start");
            let manager = Manager::from_config(
                config,
                tokio_postgres::NoTls,
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(manager)
                .max_size(8)
                .wait_timeout(Some(TIMEOUT))
                .create_timeout(Some(TIMEOUT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .expect("pool settings are valid")
        });
        Sectors { pool, ttl, cache: Mutex::default(), metrics }
    }

    /// The waiter's sectors, from the cache while it is fresh.
    pub async fn get(&self, tenant_id: u64, waiter_id: u64) -> Arc<[u64]> {
        if let Some((at, sectors)) = self.cache.lock().expect("sector cache").get(&(tenant_id, waiter_id)) {
            if at.elapsed() < self.ttl {
                self.count("cached");
                return sectors.clone();
            }
        }
        self.fresh(tenant_id, waiter_id).await
    }

    /// The waiter's sectors read from the database now; the cache is updated.
    pub async fn fresh(&self, tenant_id: u64, waiter_id: u64) -> Arc<[u64]> {
        let Some(pool) = &self.pool else {
            self.count("no_database");
            return Arc::from([]);
        };
        match tokio::time::timeout(TIMEOUT, query(pool, tenant_id, waiter_id)).await {
            Ok(Ok(sectors)) => {
                self.count("ok");
                let sectors: Arc<[u64]> = sectors.into();
                let mut cache = self.cache.lock().expect("sector cache");
                if cache.len() > SWEEP_ABOVE {
                    cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
                }
                cache.insert((tenant_id, waiter_id), (Instant::now(), sectors.clone()));
                sectors
            }
            outcome => {
                self.count("error");
                let error = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {TIMEOUT:?}"),
                };
                if crate::telemetry::DB_ERRORS.allow() {
                    tracing::warn!(tenant_id, waiter_id, %error, "sector look-up failed: the waiter gets branch-wide events only");
                }
                Arc::from([])
            }
        }
    }

    /// `SELECT 1` for `/ws/health/detailed`.
    pub async fn check(&self) -> Option<Result<(), String>> {
        let pool = self.pool.as_ref()?;
        let check = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
            Ok(())
        };
        Some(tokio::time::timeout(TIMEOUT, check).await.unwrap_or_else(|_| Err("no answer".into())))
    }

    fn count(&self, result: &'static str) {
        self.metrics.sector_lookups.get_or_create(&ResultLabel { result }).inc();
    }
}

async fn query(pool: &Pool, tenant_id: u64, waiter_id: u64) -> Result<Vec<u64>, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client.query(QUERY, &[&(waiter_id as i64), &(tenant_id as i64)]).await.map_err(|e| e.to_string())?;
    Ok(rows.iter().filter_map(|row| row.get::<_, Option<i64>>(0)).filter_map(|id| u64::try_from(id).ok()).collect())
}
