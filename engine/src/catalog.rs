//! The tables of a storage root as DataFusion sees them: found and refreshed as they change,
//! without a restart, and handed out as immutable snapshots.
//!
//! ```text
//! <root>/tables/*  --refresh (incremental log replay)-->  Catalog  --snapshot()-->  Snapshot
//!                                                                     |  versions (cache keys, ETags)
//!                                                                     +-> context(limits) per query
//! ```
//!
//! A query runs on one [`Snapshot`]: every table at one version, so a result and the versions
//! it is labelled with always agree.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use tracing::{debug, warn};

use crate::delta::log;
use crate::delta::stats::{self, TableHealth};
use crate::memory::QueryShare;
use crate::{bounded, registry, sketch, Result, Storage};

/// Limits of one query's execution.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory the query may reserve; past it the query fails with a clear error. None: unbounded.
    pub memory_bytes: Option<usize>,
    pub target_partitions: usize,
    /// The pool every query of a server shares ([`crate::memory`]); with it, `memory_bytes`
    /// is each query's share of it.
    pub server_pool: Option<Arc<dyn MemoryPool>>,
    /// Whether sessions carry `pg_catalog` and the Postgres functions clients call
    /// ([`crate::pg`]): on for the server's query surfaces, off for jobs.
    pub pg_catalog: bool,
    /// Rows per batch that scans and operators produce. None: DataFusion's default (queries);
    /// the rollups' days ask for more (see `rollup::ROLLUP_BATCH_ROWS`).
    pub batch_rows: Option<usize>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_bytes: None,
            // Read once per process: `available_parallelism` reads the cgroup files on every
            // call, and every statement's context starts from these limits.
            target_partitions: strata_schemas::cores(),
            server_pool: None,
            pg_catalog: false,
            batch_rows: None,
        }
    }
}

/// One table at one version.
#[derive(Clone)]
pub struct TableEntry {
    pub version: u64,
    /// When that version was committed (the commit file's modification time).
    pub committed_at_ms: Option<i64>,
    pub provider: Arc<dyn TableProvider>,
    /// For a rollup: the version of its source it was computed from (its `txn`).
    pub consumed: Option<u64>,
    /// The loaded state of this version: its data files are what a rollup over the table
    /// reads (listed when a rollup asks, not at each refresh).
    pub(crate) delta: DeltaTable,
}

/// Every table of the root, each at one version.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub tables: BTreeMap<String, TableEntry>,
    /// The last health check of each table ([`Catalog::table_health`]), possibly of an older
    /// version: the `strata_tables` view shows it with the time it was computed.
    pub health: BTreeMap<String, TableHealth>,
}

impl Snapshot {
    pub fn version(&self, table: &str) -> Option<u64> {
        self.tables.get(table).map(|t| t.version)
    }

    /// Whether a rollup in this snapshot was computed from the version of its source that is
    /// in this snapshot too (false for an unknown table, or one not computed yet).
    pub fn is_current(&self, rollup: &str) -> bool {
        let Some(spec) = registry::rollup(rollup) else {
            return false;
        };
        let consumed = self.tables.get(rollup).and_then(|t| t.consumed);
        consumed.is_some() && consumed == self.version(spec.source)
    }

    /// `name@version` for each of `names` (unknown tables as `name@-`), sorted: the part of a
    /// cache key or ETag that a commit changes.
    pub fn versions_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out: Vec<String> = names
            .into_iter()
            .map(|n| match self.version(n) {
                Some(v) => format!("{n}@{v}"),
                None => format!("{n}@-"),
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A fresh session over this snapshot, with the sketch functions and the `strata_tables`
    /// view (name, version, last commit, last health check) registered. SQL options (read-only)
    /// are the caller's.
    pub fn context(&self, base: &RuntimeEnv, limits: &QueryLimits) -> Result<SessionContext> {
        let pool: Arc<dyn MemoryPool> = match (&limits.server_pool, limits.memory_bytes) {
            (Some(server), Some(b)) => Arc::new(QueryShare::new(server.clone(), b)),
            (Some(server), None) => server.clone(),
            (None, Some(b)) => Arc::new(GreedyMemoryPool::new(b)),
            // A job's statements: the pool of the catalog's runtime, which is the jobs' pool of
            // its storage when one is set (`Catalog::open`).
            (None, None) => base.memory_pool.clone(),
        };
        // No spill files: a query over HTTP must not touch the local filesystem.
        // Parquet footers are cached across queries (the catalog's runtime holds the cache,
        // bounded by DataFusion's metadata cache limit): data files never change in place, so
        // a footer read once is valid until its file is removed.
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(base.object_store_registry.clone())
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(base.cache_manager.get_file_metadata_cache())),
            )
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(crate::pg::CATALOG, crate::pg::SCHEMA)
            .with_target_partitions(limits.target_partitions.max(1));
        if let Some(rows) = limits.batch_rows {
            config = config.with_batch_size(rows.max(1));
        }
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features();
        if limits.pg_catalog {
            // `::regclass` and the other OID types parse as int4.
            state = state.with_type_planner(crate::pg::type_planner());
        }
        let ctx = SessionContext::new_with_state(state.build());
        sketch::register(&ctx);
        bounded::register(&ctx);
        for (name, t) in &self.tables {
            ctx.register_table(name.as_str(), t.provider.clone())?;
        }
        let view = Arc::new(self.tables_view()?);
        let view_schema = view.schema();
        ctx.register_table("strata_tables", view)?;
        if limits.pg_catalog {
            crate::pg::register(&ctx, self, &[("strata_tables", view_schema)])?;
        }
        Ok(ctx)
    }

    /// `strata_tables`: per table its name, version and last commit, and the figures of its
    /// last health check (null until one ran).
    fn tables_view(&self) -> Result<MemTable> {
        let ms = |name: &str| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            )
        };
        let int = |name: &str| Field::new(name, DataType::Int64, true);
        let schema = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("version", DataType::Int64, false),
            ms("last_commit_at"),
            int("files"),
            int("bytes"),
            int("small_files"),
            Field::new("largest_partition", DataType::Utf8, true),
            int("largest_partition_files"),
            int("commits_since_checkpoint"),
            int("vacuum_bytes"),
            ms("health_at"),
        ]));
        let names: StringArray = self.tables.keys().map(|k| Some(k.as_str())).collect();
        let versions: Int64Array = self
            .tables
            .values()
            .map(|t| Some(t.version as i64))
            .collect();
        let commits: TimestampMillisecondArray = self
            .tables
            .values()
            .map(|t| t.committed_at_ms)
            .collect::<TimestampMillisecondArray>()
            .with_timezone("UTC");
        let health: Vec<Option<&TableHealth>> =
            self.tables.keys().map(|k| self.health.get(k)).collect();
        let count = |f: &dyn Fn(&TableHealth) -> u64| -> ArrayRef {
            Arc::new(
                health
                    .iter()
                    .map(|h| h.map(|h| i64::try_from(f(h)).unwrap_or(i64::MAX)))
                    .collect::<Int64Array>(),
            )
        };
        let partitions: StringArray = health
            .iter()
            .map(|h| {
                h.and_then(|h| h.largest_partition.as_ref())
                    .map(|p| p.partition.as_str())
            })
            .collect();
        let health_at: TimestampMillisecondArray = health
            .iter()
            .map(|h| h.map(|h| h.computed_at.timestamp_millis()))
            .collect::<TimestampMillisecondArray>()
            .with_timezone("UTC");
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(names),
                Arc::new(versions),
                Arc::new(commits),
                count(&|h| h.files),
                count(&|h| h.bytes),
                count(&|h| h.small_files),
                Arc::new(partitions),
                count(&|h| h.largest_partition.as_ref().map_or(0, |p| p.files)),
                count(&|h| h.commits_since_checkpoint),
                count(&|h| h.vacuum_bytes),
                Arc::new(health_at),
            ],
        )?;
        Ok(MemTable::try_new(schema, vec![vec![batch]])?)
    }
}

/// The live set of tables under a root.
pub struct Catalog {
    storage: Storage,
    runtime: Arc<RuntimeEnv>,
    loaded: tokio::sync::Mutex<Loaded>,
    current: parking_lot::RwLock<Arc<Snapshot>>,
    /// The last health check of each table, copied into every new snapshot.
    health: parking_lot::RwLock<BTreeMap<String, TableHealth>>,
}

#[derive(Default)]
struct Loaded {
    tables: BTreeMap<String, DeltaTable>,
    refreshed: Option<Instant>,
}

impl Catalog {
    pub async fn open(storage: &Storage) -> Result<Arc<Self>> {
        let catalog = Arc::new(Self {
            storage: storage.clone(),
            // The jobs' pool of the storage: what a job's statements run under (`context`).
            runtime: match storage.jobs_pool() {
                Some(pool) => RuntimeEnvBuilder::new()
                    .with_memory_pool(pool.clone())
                    .build_arc()?,
                None => Arc::new(RuntimeEnv::default()),
            },
            loaded: tokio::sync::Mutex::new(Loaded::default()),
            current: parking_lot::RwLock::new(Arc::new(Snapshot::default())),
            health: parking_lot::RwLock::default(),
        });
        catalog.refresh().await?;
        Ok(catalog)
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn runtime(&self) -> &RuntimeEnv {
        &self.runtime
    }

    /// The snapshot of the last refresh.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().clone()
    }

    /// The current snapshot, refreshed first when the last refresh is older than `max_age`.
    /// Concurrent callers share one refresh.
    pub async fn fresh_snapshot(&self, max_age: Duration) -> Result<Arc<Snapshot>> {
        {
            let loaded = self.loaded.lock().await;
            if loaded.refreshed.is_some_and(|t| t.elapsed() <= max_age) {
                return Ok(self.snapshot());
            }
        }
        self.refresh().await
    }

    /// Finds new tables and brings every table to its latest version.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>> {
        let mut loaded = self.loaded.lock().await;
        let started = Instant::now();
        let names = self.storage.list_tables().await?;
        let old = self.snapshot();
        let mut next = Snapshot::default();
        for name in names {
            let table = match loaded.tables.get_mut(&name) {
                Some(t) => {
                    if let Err(e) = t.update_state().await {
                        // Keep serving the version we have; the next refresh tries again.
                        warn!(table = %name, error = %e, "refreshing table failed");
                    }
                    t
                }
                None => {
                    let t = log::load(&self.storage, &name).await?;
                    loaded.tables.entry(name.clone()).or_insert(t)
                }
            };
            let Some(version) = table.version() else {
                continue;
            };
            let entry = match old.tables.get(&name) {
                Some(e) if e.version == version => e.clone(),
                _ => {
                    let ctx = SessionContext::new_with_config_rt(
                        SessionConfig::new(),
                        self.runtime.clone(),
                    );
                    table.update_datafusion_session(&ctx.state())?;
                    let committed_at_ms = log::commit_time(&self.storage, &name, version).await;
                    let consumed = match registry::rollup(&name) {
                        Some(spec) => log::txn_version(table, &spec.app_id())
                            .await?
                            .map(|v| v as u64),
                        None => None,
                    };
                    debug!(table = %name, version, "table version loaded");
                    TableEntry {
                        version,
                        committed_at_ms,
                        provider: table.table_provider().await?,
                        consumed,
                        delta: table.clone(),
                    }
                }
            };
            next.tables.insert(name, entry);
        }
        next.health = self.health.read().clone();
        let next = Arc::new(next);
        *self.current.write() = next.clone();
        loaded.refreshed = Some(Instant::now());
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "catalog refreshed"
        );
        Ok(next)
    }

    /// Checks the health of every table at the versions of a fresh refresh, from the log state
    /// the catalog has loaded (no replay), each table's last checkpoint and a listing of its
    /// directory; keeps the figures for the `strata_tables` view. A table whose check fails is
    /// logged and left out.
    pub async fn table_health(&self) -> Result<Vec<TableHealth>> {
        self.refresh().await?;
        let tables: Vec<(String, DeltaTable)> = {
            let loaded = self.loaded.lock().await;
            loaded
                .tables
                .iter()
                .filter(|(_, t)| t.version().is_some())
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect()
        };
        let mut checked = Vec::with_capacity(tables.len());
        for (name, table) in &tables {
            match stats::health_of(&self.storage, name, table).await {
                Ok(h) => checked.push(h),
                Err(e) => warn!(table = %name, error = %e, "table health check failed"),
            }
        }
        // Under the refresh lock, so that a refresh neither misses nor overwrites these figures.
        let loaded = self.loaded.lock().await;
        let board = {
            let mut board = self.health.write();
            for h in &checked {
                board.insert(h.table.clone(), h.clone());
            }
            board.clone()
        };
        let mut snapshot = (*self.snapshot()).clone();
        snapshot.health = board;
        *self.current.write() = Arc::new(snapshot);
        drop(loaded);
        Ok(checked)
    }

    /// A session over the current snapshot without limits (CLI and jobs).
    pub fn context(&self) -> Result<(Arc<Snapshot>, SessionContext)> {
        let snap = self.snapshot();
        let ctx = snap.context(&self.runtime, &QueryLimits::default())?;
        Ok((snap, ctx))
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("root", &self.storage.root().as_str())
            .field("tables", &self.snapshot().tables.keys().collect::<Vec<_>>())
            .finish()
    }
}
