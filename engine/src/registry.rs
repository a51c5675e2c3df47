//! Every table Strata owns, declared once: its role, schema, partitioning, how its files are
//! written, which of its columns identify a person and how long it keeps its rows.
//!
//! ```text
//! TABLES (raw events, dead letters, system)  +  ROLLUPS (derived, schema from their SQL)
//!    |-> ensure_tables: the tables created at start
//!    |-> subject_bearing(): what a GDPR purge rewrites, an export writes and verification counts
//!    |-> identifier_columns(): what a request matches in each table
//!    |-> retention_days: the default retention policy (maintenance::RetentionPolicy)
//!    +-> person_id_columns(): what the ingest tombstone filter hashes
//! ```
//!
//! Adding a table is one declaration: a [`TableDecl`] in [`TABLES`], or a [`RollupSpec`] in
//! [`ROLLUPS`].

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use strata_schemas::{
    dead_letter_schema, EventKind, PersonId, DEAD_LETTERS_TABLE, PARTITION_COLUMN,
};

/// What a table looks like and how its files are written: a declaration with its schema
/// resolved (a rollup's comes from its SQL).
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: &'static str,
    pub schema: SchemaRef,
    pub partition_column: &'static str,
    /// Rows are ordered by this column within each file.
    pub sort_column: &'static str,
    /// Columns that get Delta data-skipping statistics. Identifiers and free text are left
    /// out so that no personal data reaches the transaction log.
    pub stats_columns: &'static [&'static str],
    pub bloom_columns: &'static [&'static str],
    /// Columns where a dictionary would only cost time.
    pub high_cardinality: &'static [&'static str],
    /// Every column LZ4 instead of zstd: for small tables that cold panels read whole, where
    /// the decoder parquet-rs creates per zstd page costs more than the page.
    pub lz4: bool,
}

impl TableSpec {
    pub fn for_events(kind: EventKind) -> Self {
        events(kind).spec()
    }

    pub fn dead_letters() -> Self {
        DEAD_LETTERS.spec()
    }

    pub(crate) fn sort_column_index(&self) -> Option<usize> {
        self.schema.index_of(self.sort_column).ok()
    }
}

/// What a table is for.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Events of one kind as ingest lands them: subject-bearing (the kind's identifier columns).
    Events(EventKind),
    /// Messages that could not become events: subject-bearing (a key or payload may name anyone).
    DeadLetters,
    /// Computed from another table by SQL: holds no per-subject rows.
    Rollup(&'static RollupSpec),
    /// Strata's own bookkeeping (job runs, GDPR audit and tombstones): keyed hashes at most,
    /// never an id.
    System,
}

/// When a table is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// By [`crate::ensure_tables`], so that panels and SQL find it from the first request.
    AtStart,
    /// By its first write: the GDPR tables appear with the first request.
    OnFirstWrite,
}

/// How a column names a data subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// It equals one kind of the subject's ids.
    Id(PersonId),
    /// It equals any of the subject's ids (a dead letter's key).
    AnyId,
    /// It is text holding any of the subject's ids as a whole token (a dead letter's payload).
    AnyIdInText,
}

/// A column that identifies a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifierColumn {
    pub column: &'static str,
    pub names: Names,
}

/// One table Strata owns.
#[derive(Debug, Clone, Copy)]
pub struct TableDecl {
    pub name: &'static str,
    pub role: Role,
    pub creation: Creation,
    /// None for a rollup: its schema is its SQL's output.
    schema: Option<fn() -> SchemaRef>,
    pub partition_column: &'static str,
    pub sort_column: &'static str,
    pub stats_columns: &'static [&'static str],
    pub bloom_columns: &'static [&'static str],
    pub high_cardinality: &'static [&'static str],
    pub lz4: bool,
    /// How many days of partitions the table keeps by default (None: kept for ever); what
    /// the default [`crate::maintenance::RetentionPolicy`] holds, and configuration can change.
    pub retention_days: Option<u32>,
}

impl TableDecl {
    /// The declared schema (None for a rollup).
    pub fn schema(&self) -> Option<SchemaRef> {
        self.schema.map(|f| f())
    }

    /// The table with its declared schema. Every table but a rollup declares one (the
    /// `declarations_are_complete` test proves it for [`TABLES`]).
    pub fn spec(&self) -> TableSpec {
        let schema = self.schema().unwrap_or_else(|| {
            unreachable!("{} is a rollup: use spec_with(its SQL's schema)", self.name)
        });
        self.spec_with(schema)
    }

    /// The table with `schema` (a rollup's, computed from its SQL).
    pub fn spec_with(&self, schema: SchemaRef) -> TableSpec {
        TableSpec {
            name: self.name,
            schema,
            partition_column: self.partition_column,
            sort_column: self.sort_column,
            stats_columns: self.stats_columns,
            bloom_columns: self.bloom_columns,
            high_cardinality: self.high_cardinality,
            lz4: self.lz4,
        }
    }

    /// Whether rows of the table can be about a data subject: what a GDPR request covers.
    pub fn is_subject_bearing(&self) -> bool {
        matches!(self.role, Role::Events(_) | Role::DeadLetters)
    }

    /// The columns that identify a person (none in a table that is not subject-bearing).
    pub fn identifier_columns(&self) -> Vec<IdentifierColumn> {
        match self.role {
            Role::Events(kind) => kind
                .identifier_columns()
                .iter()
                .map(|&(column, id)| IdentifierColumn {
                    column,
                    names: Names::Id(id),
                })
                .collect(),
            Role::DeadLetters => vec![
                IdentifierColumn {
                    column: "key",
                    names: Names::AnyId,
                },
                IdentifierColumn {
                    column: "payload",
                    names: Names::AnyIdInText,
                },
            ],
            Role::Rollup(_) | Role::System => Vec::new(),
        }
    }
}

pub const LINK_CLICKS: TableDecl = TableDecl {
    name: EventKind::LinkClick.table(),
    role: Role::Events(EventKind::LinkClick),
    creation: Creation::AtStart,
    schema: Some(link_clicks_schema),
    partition_column: PARTITION_COLUMN,
    sort_column: "occurred_at",
    stats_columns: &[
        "schema_version",
        "occurred_at",
        "item_type",
        "category",
        "source",
        "country",
        "device",
        "is_bot",
        "kafka_partition",
        "kafka_offset",
        "ingested_at",
    ],
    bloom_columns: &["user_id", "anonymous_id"],
    high_cardinality: &["event_id", "target_url", "session_id"],
    lz4: false,
    retention_days: Some(400),
};

pub const AI_USAGE: TableDecl = TableDecl {
    name: EventKind::AiUsage.table(),
    role: Role::Events(EventKind::AiUsage),
    creation: Creation::AtStart,
    schema: Some(ai_usage_schema),
    partition_column: PARTITION_COLUMN,
    sort_column: "occurred_at",
    stats_columns: &[
        "schema_version",
        "occurred_at",
        "feature",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "status",
        "latency_ms",
        "kafka_partition",
        "kafka_offset",
        "ingested_at",
    ],
    bloom_columns: &["user_id"],
    high_cardinality: &["event_id", "session_id"],
    lz4: false,
    // 25 months, counted as 762 days (25 x 30.44, rounded up).
    retention_days: Some(762),
};

pub const DEAD_LETTERS: TableDecl = TableDecl {
    name: DEAD_LETTERS_TABLE,
    role: Role::DeadLetters,
    creation: Creation::AtStart,
    schema: Some(dead_letter_schema),
    partition_column: "received_date",
    sort_column: "received_at",
    stats_columns: &[
        "topic",
        "partition",
        "offset",
        "payload_is_lossy",
        "received_at",
    ],
    bloom_columns: &["key"],
    high_cardinality: &["payload"],
    lz4: false,
    retention_days: Some(30),
};

/// One row per run of a background job (see `jobs.rs`).
pub const JOB_RUNS: TableDecl = TableDecl {
    name: "job_runs",
    role: Role::System,
    creation: Creation::AtStart,
    schema: Some(job_runs_schema),
    partition_column: "run_date",
    sort_column: "started_at",
    stats_columns: &["job", "started_at", "finished_at", "status", "rows"],
    bloom_columns: &[],
    high_cardinality: &["detail"],
    lz4: false,
    retention_days: Some(90),
};

/// Overrides of AI budgets (`budget/overrides.rs`): who changed which budget, why, with whose
/// approval and until when. Appended only, never rewritten: the audit trail of every change.
pub const BUDGET_OVERRIDES: TableDecl = TableDecl {
    name: "budget_overrides",
    role: Role::System,
    creation: Creation::AtStart,
    schema: Some(budget_overrides_schema),
    partition_column: "created_date",
    sort_column: "created_at",
    stats_columns: &["budget", "created_at", "expires_at"],
    bloom_columns: &[],
    high_cardinality: &["override_id", "reason"],
    lz4: false,
    retention_days: None,
};

/// One row per GDPR request, the subject as its keyed hash (see `gdpr/audit.rs`).
pub const GDPR_AUDIT: TableDecl = TableDecl {
    name: "gdpr_audit",
    role: Role::System,
    creation: Creation::OnFirstWrite,
    schema: Some(gdpr_audit_schema),
    partition_column: "request_date",
    sort_column: "requested_at",
    stats_columns: &["kind", "requested_at", "finished_at", "status"],
    bloom_columns: &[],
    high_cardinality: &["request_id", "subject_hash", "receipt"],
    lz4: false,
    retention_days: None,
};

/// Keyed hashes of purged subjects (see `gdpr/tombstone.rs`).
pub const GDPR_TOMBSTONES: TableDecl = TableDecl {
    name: "gdpr_tombstones",
    role: Role::System,
    creation: Creation::OnFirstWrite,
    schema: Some(gdpr_tombstones_schema),
    partition_column: "request_date",
    sort_column: "requested_at",
    stats_columns: &["requested_at"],
    bloom_columns: &[],
    high_cardinality: &["subject_hash", "request_id"],
    lz4: false,
    retention_days: None,
};

/// Every table with a declared schema, in creation order.
pub const TABLES: &[TableDecl] = &[
    LINK_CLICKS,
    AI_USAGE,
    DEAD_LETTERS,
    JOB_RUNS,
    GDPR_AUDIT,
    GDPR_TOMBSTONES,
    BUDGET_OVERRIDES,
];

/// One rollup: its table, its source and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct RollupSpec {
    pub name: &'static str,
    pub source: &'static str,
    pub sql: &'static str,
    pub stats_columns: &'static [&'static str],
    /// The columns besides `event_date` that key a group of the rollup (the rows of one day
    /// and value of each are computed together, apart from any other): a purge recomputes only
    /// the groups its subject's rows were in (for a rollup of a rollup, the groups of the
    /// source rows the purge's splice of the source removed). Empty: a purge recomputes its
    /// days whole.
    pub group_columns: &'static [&'static str],
    /// The group columns are columns of the source as they are (no expression over them): a
    /// purge's recomputation of some groups filters the source by them too, in the SQL's
    /// `{dates}` condition, where a filter above the statement would not reach the scan (the
    /// top lists read their source twice, through a join).
    pub groups_in_source: bool,
}

/// The rollups, a rollup after the rollup it reads.
pub const ROLLUPS: &[RollupSpec] = &[
    RollupSpec {
        name: "click_stats_daily",
        source: "link_clicks",
        sql: include_str!("../sql/rollups/click_stats_daily.sql"),
        group_columns: &["category", "item_type", "source"],
        groups_in_source: false,
        stats_columns: &[
            "category",
            "item_type",
            "source",
            "clicks",
            "human_clicks",
            "unique_users",
            "unique_sessions",
        ],
    },
    // After click_stats_daily, which is its source: the days that run replaced are the days
    // this one recomputes.
    RollupSpec {
        name: "click_stats_daily_totals",
        source: "click_stats_daily",
        sql: include_str!("../sql/rollups/click_stats_daily_totals.sql"),
        group_columns: &[],
        groups_in_source: false,
        stats_columns: &["clicks", "human_clicks", "unique_users", "unique_sessions"],
    },
    RollupSpec {
        name: "click_stats_daily_items",
        source: "link_clicks",
        sql: include_str!("../sql/rollups/click_stats_daily_items.sql"),
        group_columns: &["item_id", "item_type", "category"],
        groups_in_source: false,
        stats_columns: &["item_type", "category", "clicks", "unique_users"],
    },
    // After click_stats_daily_items, which is its source.
    RollupSpec {
        name: "click_stats_daily_top_items",
        source: "click_stats_daily_items",
        sql: include_str!("../sql/rollups/click_stats_daily_top_items.sql"),
        // A list is one day x category x item type, computed from that group's items alone.
        group_columns: &["category", "item_type"],
        groups_in_source: true,
        stats_columns: &["item_type", "category", "clicks"],
    },
    RollupSpec {
        name: "ai_usage_daily",
        source: "ai_usage",
        sql: include_str!("../sql/rollups/ai_usage_daily.sql"),
        group_columns: &["feature", "provider", "model"],
        groups_in_source: true,
        stats_columns: &[
            "feature", "provider", "model", "calls", "errors", "cost_usd",
        ],
    },
];

impl RollupSpec {
    pub fn get(name: &str) -> Option<&'static RollupSpec> {
        ROLLUPS.iter().find(|r| r.name == name)
    }

    /// The `txn` app id under which each commit records the source version it consumed.
    pub fn app_id(&self) -> String {
        format!("strata-rollup-{}", self.name)
    }

    /// The rollup's table: one partition per day, LZ4 throughout (cold panels read it whole).
    pub fn table(&'static self) -> TableDecl {
        TableDecl {
            name: self.name,
            role: Role::Rollup(self),
            creation: Creation::AtStart,
            schema: None,
            partition_column: "event_date",
            sort_column: "event_date",
            stats_columns: self.stats_columns,
            bloom_columns: &[],
            high_cardinality: &[
                "users_sketch",
                "sessions_sketch",
                "items_sketch",
                "latency_sketch",
                "item_id",
            ],
            lz4: true,
            // Kept: a rollup holds no personal data, and its days outlive their source days.
            retention_days: None,
        }
    }
}

/// Every table Strata owns: [`TABLES`], then the rollups.
pub fn tables() -> impl Iterator<Item = TableDecl> {
    TABLES
        .iter()
        .copied()
        .chain(ROLLUPS.iter().map(RollupSpec::table))
}

/// The table called `name`, if Strata owns one.
pub fn get(name: &str) -> Option<TableDecl> {
    tables().find(|t| t.name == name)
}

/// The raw table of one kind of event.
pub fn events(kind: EventKind) -> TableDecl {
    match kind {
        EventKind::LinkClick => LINK_CLICKS,
        EventKind::AiUsage => AI_USAGE,
    }
}

/// The tables whose rows can be about a data subject, in declaration order: what a purge
/// rewrites, an export writes and a purge's verification counts.
pub fn subject_bearing() -> impl Iterator<Item = TableDecl> {
    tables().filter(TableDecl::is_subject_bearing)
}

/// The rollup whose table is `name`.
pub fn rollup(name: &str) -> Option<&'static RollupSpec> {
    RollupSpec::get(name)
}

/// The columns of the event tables that hold one kind of person id, each once: what the
/// ingest tombstone filter hashes in an event batch.
pub fn person_id_columns() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for table in tables().filter(|t| matches!(t.role, Role::Events(_))) {
        for id in table.identifier_columns() {
            if matches!(id.names, Names::Id(_)) && !out.contains(&id.column) {
                out.push(id.column);
            }
        }
    }
    out
}

fn link_clicks_schema() -> SchemaRef {
    EventKind::LinkClick.table_schema()
}

fn ai_usage_schema() -> SchemaRef {
    EventKind::AiUsage.table_schema()
}

pub(crate) fn job_runs_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("started_at", ts.clone(), false),
        Field::new("finished_at", ts, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("detail", DataType::Utf8, true),
        Field::new("run_date", DataType::Date32, false),
    ]))
}

pub(crate) fn budget_overrides_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("override_id", DataType::Utf8, false),
        Field::new("budget", DataType::Utf8, false),
        Field::new(
            "amount",
            // The type of `ai_usage.cost_usd`: nano-dollars.
            DataType::Decimal128(18, 9),
            true,
        ),
        Field::new("suspend", DataType::Boolean, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("approver", DataType::Utf8, false),
        Field::new("created_by", DataType::Utf8, false),
        Field::new("created_at", ts.clone(), false),
        Field::new("expires_at", ts, false),
        Field::new("created_date", DataType::Date32, false),
    ]))
}

pub(crate) fn gdpr_audit_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("subject_hash", DataType::Utf8, false),
        Field::new("requested_by", DataType::Utf8, false),
        Field::new("requested_at", ts.clone(), false),
        Field::new("finished_at", ts, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("receipt", DataType::Utf8, false),
        Field::new("request_date", DataType::Date32, false),
    ]))
}

pub(crate) fn gdpr_tombstones_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("subject_hash", DataType::Utf8, false),
        Field::new(
            "requested_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("request_date", DataType::Date32, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdpr::{ExportBuilder, PurgeBuilder, Subject};
    use crate::Storage;

    #[test]
    fn declarations_are_complete() {
        let mut names: Vec<&str> = tables().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), tables().count(), "a table is declared twice");
        for t in TABLES {
            let schema = t
                .schema()
                .unwrap_or_else(|| panic!("{} has no schema", t.name));
            for column in [t.partition_column, t.sort_column]
                .iter()
                .chain(t.stats_columns)
                .chain(t.bloom_columns)
            {
                assert!(schema.index_of(column).is_ok(), "{}.{column}", t.name);
            }
            for id in t.identifier_columns() {
                assert!(
                    schema.index_of(id.column).is_ok(),
                    "{}.{}",
                    t.name,
                    id.column
                );
            }
        }
        for kind in EventKind::ALL {
            assert_eq!(events(kind).name, kind.table());
        }
    }

    #[test]
    fn no_identifier_reaches_the_log_statistics() {
        for t in tables() {
            for id in t.identifier_columns() {
                assert!(
                    !t.stats_columns.contains(&id.column),
                    "{}.{} is an identifier with statistics",
                    t.name,
                    id.column
                );
            }
        }
        assert_eq!(
            person_id_columns(),
            vec!["user_id", "anonymous_id", "session_id"]
        );
    }

    /// A partition column is in no file (its value is the partition's): Delta keeps no file
    /// statistics of it, and delta-kernel warns on every scan of a table that lists it.
    #[test]
    fn no_partition_column_is_a_statistics_column() {
        for t in tables() {
            assert!(
                !t.stats_columns.contains(&t.partition_column),
                "{} lists its partition column {} for statistics",
                t.name,
                t.partition_column
            );
        }
    }

    /// Every subject-bearing table of the registry is what a purge rewrites and verifies and
    /// what an export writes: a new one is covered without touching GDPR code.
    #[tokio::test]
    async fn every_subject_bearing_table_is_purged_and_exported() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        crate::ensure_tables(&storage).await.unwrap();
        let subject = Subject::new("u-registry");
        let manifest = ExportBuilder::new(&storage, subject.clone()).await.unwrap();
        let receipt = PurgeBuilder::new(&storage, subject).await.unwrap();
        let bearing: Vec<&str> = subject_bearing().map(|t| t.name).collect();
        assert_eq!(bearing, vec!["link_clicks", "ai_usage", "dead_letters"]);
        for table in &bearing {
            assert!(
                receipt.tables.iter().any(|t| t.table == *table),
                "purge skipped {table}"
            );
            assert!(
                receipt.verification.iter().any(|(t, _)| t == table),
                "purge did not verify {table}"
            );
            for file in [format!("{table}.jsonl"), format!("{table}.parquet")] {
                assert!(
                    manifest.files.iter().any(|f| f.name == file),
                    "export lacks {file}"
                );
            }
        }
        let rollups: Vec<&str> = ROLLUPS.iter().map(|r| r.name).collect();
        assert_eq!(manifest.derived_without_subject_rows, rollups);
    }
}
