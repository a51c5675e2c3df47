//! A rollup's source as the live files of one version, scanned by DataFusion's own Parquet
//! scan: each day's statement reads the files of its days and nothing else.
//!
//! ```text
//! catalog snapshot: source at version v, loaded (its live files listed once per run)
//!   --a rollup run--> SourceFiles { schema of the Delta provider, files by day }
//!   --a day's statement, WHERE event_date IN (d)--> the files of d --> Parquet scan
//! ```
//!
//! Through delta-rs' provider every statement of a run replayed the source's log to find its
//! files (the add actions and their statistics JSON, once per day) and moved every batch
//! through a channel between threads: about a sixth of a rollup's CPU time, for files the run
//! already knew (docs/benchmarks.md, "2026-12-03"). The result is the same: the same files,
//! the same columns and types (the provider's schema), the same filter pushdown into the scan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Date32Array, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectMeta;

use crate::delta::layout;
use crate::delta::log::LiveFile;
use crate::{EngineError, Result, Storage};

/// The live files of a table at one version, by day, as a table DataFusion scans.
#[derive(Debug)]
pub(crate) struct SourceFiles {
    name: String,
    /// File columns, then the partition column.
    schema: SchemaRef,
    /// The columns the files hold.
    file_schema: SchemaRef,
    partition: FieldRef,
    store: Arc<dyn object_store::ObjectStore>,
    store_url: ObjectStoreUrl,
    /// Per day (days since the epoch), its files.
    days: BTreeMap<i32, Vec<ObjectMeta>>,
}

impl SourceFiles {
    /// Table `name` with the columns of `schema` (its Delta provider's: the types every other
    /// statement sees) and the files `files`, partitioned by `partition_column` (a date).
    pub fn new(
        storage: &Storage,
        name: &str,
        schema: &SchemaRef,
        partition_column: &str,
        files: &[LiveFile],
    ) -> Result<Self> {
        let partition = schema
            .field_with_name(partition_column)
            .map_err(|e| EngineError::Internal(format!("{name}: {e}")))?;
        if partition.data_type() != &DataType::Date32 {
            return Err(EngineError::Internal(format!(
                "{name}: partition column {partition_column} is {}, not a date",
                partition.data_type()
            )));
        }
        let partition: FieldRef = Arc::new(Field::new(partition_column, DataType::Date32, false));
        let file_fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != partition_column)
            .cloned()
            .collect();
        let file_schema = Arc::new(Schema::new(file_fields.clone()));
        let mut all = file_fields;
        all.push(partition.clone());
        let mut days: BTreeMap<i32, Vec<ObjectMeta>> = BTreeMap::new();
        for f in files {
            let day = f.day().ok_or_else(|| {
                EngineError::Internal(format!("{name}: file {} has no day", f.path))
            })?;
            days.entry(Date32Type::from_naive_date(day))
                .or_default()
                .push(ObjectMeta {
                    location: layout::table_file(name, &f.path),
                    last_modified: chrono::DateTime::from_timestamp_millis(f.modified_ms)
                        .unwrap_or_default(),
                    size: f.size,
                    e_tag: None,
                    version: None,
                });
        }
        // One URL per storage root: the scan looks its store up in the runtime's registry,
        // which every context of a catalog shares.
        let root = storage.root().as_str();
        let host = root.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let store_url = ObjectStoreUrl::parse(format!("strata-root://{host:016x}"))?;
        Ok(Self {
            name: name.to_string(),
            schema: Arc::new(Schema::new(all)),
            file_schema,
            partition,
            store: storage.store().clone(),
            store_url,
            days,
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The days that have files.
    pub fn days(&self) -> BTreeSet<NaiveDate> {
        self.days
            .keys()
            .filter_map(|d| Date32Type::to_naive_date_opt(*d))
            .collect()
    }

    /// The days `filters` keep: each filter on the partition column alone, evaluated on every
    /// day; the others are for the scan.
    fn days_kept(&self, state: &dyn Session, filters: &[Expr]) -> DfResult<Vec<i32>> {
        let days: Vec<i32> = self.days.keys().copied().collect();
        let schema = Arc::new(Schema::new(vec![self.partition.clone()]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Date32Array::from(days.clone()))],
        )?;
        let df_schema = DFSchema::try_from(schema)?;
        let mut keep = vec![true; days.len()];
        for filter in filters.iter().filter(|f| self.on_partition_only(f)) {
            let unqualified = filter
                .clone()
                .transform(|e| {
                    Ok(match e {
                        Expr::Column(c) => {
                            Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                        }
                        other => Transformed::no(other),
                    })
                })?
                .data;
            let predicate = state.create_physical_expr(unqualified, &df_schema)?;
            let values = predicate.evaluate(&batch)?.into_array(days.len())?;
            let values = values.as_boolean();
            for (i, k) in keep.iter_mut().enumerate() {
                *k &= values.is_valid(i) && values.value(i);
            }
        }
        Ok(days
            .into_iter()
            .zip(keep)
            .filter_map(|(d, k)| k.then_some(d))
            .collect())
    }

    fn on_partition_only(&self, filter: &Expr) -> bool {
        let columns = filter.column_refs();
        !columns.is_empty() && columns.iter().all(|c| c.name == *self.partition.name())
    }
}

#[async_trait]
impl TableProvider for SourceFiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Exact on the partition column (a file's rows all have its day); the rest is checked
    /// above the scan and pushed into it by DataFusion's optimizer.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.on_partition_only(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut files: Vec<PartitionedFile> = Vec::new();
        for day in self.days_kept(state, filters)? {
            for meta in &self.days[&day] {
                let mut file = PartitionedFile::new_from_meta(meta.clone());
                file.partition_values = vec![ScalarValue::Date32(Some(day))];
                files.push(file);
            }
        }
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        // The files dealt out to the partitions, largest first, each to the least loaded.
        files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
        let partitions = state.config().target_partitions().clamp(1, files.len());
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); partitions];
        for file in files {
            let lightest = groups
                .iter_mut()
                .min_by_key(|(bytes, _)| *bytes)
                .expect("at least one partition");
            lightest.0 += file.object_meta.size;
            lightest.1.push(file);
        }
        let groups = groups
            .into_iter()
            .map(|(_, files)| FileGroup::new(files))
            .collect();

        let runtime = state.runtime_env();
        runtime.register_object_store(self.store_url.as_ref(), self.store.clone());
        let reader = CachedParquetFileReaderFactory::new(
            self.store.clone(),
            runtime.cache_manager.get_file_metadata_cache(),
        );
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(vec![self.partition.clone()])
            .build();
        let source = ParquetSource::new(table_schema)
            .with_table_parquet_options(state.table_options().parquet.clone())
            .with_pushdown_filters(true)
            .with_reorder_filters(true)
            .with_parquet_file_reader_factory(Arc::new(reader));
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
