//! A Parquet file rewritten without some of its rows, touching only the row groups that held
//! them.
//!
//! ```text
//! file bytes --row groups that may hold the rows (the caller's bloom filters, id columns)-->
//!   decoded, matched: none matched -> copied as they are (encoded column chunks, statistics,
//!                                     page indexes, bloom filters)
//!                     some matched -> the other rows encoded again as one row group
//!   --> new file bytes (same schema, same key-value metadata, row groups in the same order)
//! ```
//!
//! A purge removes a subject's few rows from a file of tens of thousands: decoding and encoding
//! every row group was most of its time. A copied row group is byte for byte what it was, so it
//! holds nothing the old file did not (the rows removed were in the row groups encoded again,
//! their dictionaries and bloom filters rebuilt from the rows kept).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Date32Array, RecordBatch};
use bytes::Bytes;
use deltalake::kernel::Add;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::compute_leaves;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::bloom_filter::Sbbf;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::WriterProperties;

use crate::delta::layout;
use crate::registry::TableSpec;
use crate::{EngineError, Result};

/// A file without the rows a matcher selected.
pub(crate) struct Spliced {
    /// The rows removed, in the file's schema.
    pub removed: Vec<RecordBatch>,
    /// The new file and its metadata; None when no row is left (or none was removed: see
    /// [`Spliced::removed_rows`]).
    pub file: Option<(Bytes, ParquetMetaData)>,
    /// Rows of the new file.
    pub rows: usize,
    /// Row groups encoded again (the others were copied).
    pub row_groups_encoded: usize,
}

impl Spliced {
    pub fn removed_rows(&self) -> usize {
        self.removed.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Parquet file `bytes` without the rows `matches` selects, looked for only in row groups
/// `candidates` (every other row group is copied). When nothing matches, `file` is None and
/// nothing was encoded. `props` encode the row groups that lost rows (the table's writer
/// properties: compression, dictionaries, bloom filters); the copied ones keep their own.
pub(crate) fn without_rows(
    bytes: &Bytes,
    candidates: &[usize],
    props: WriterProperties,
    matches: impl Fn(&RecordBatch) -> Result<BooleanArray>,
) -> Result<Spliced> {
    let failed = |e: parquet::errors::ParquetError| EngineError::Internal(e.to_string());
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let meta = ArrowReaderMetadata::load(bytes, options).map_err(failed)?;
    let groups = meta.metadata().num_row_groups();
    // Per row group: None to copy it, Some(rows kept) to encode them again.
    let mut plan: Vec<Option<Vec<RecordBatch>>> = vec![None; groups];
    let mut removed = Vec::new();
    for &rg in candidates.iter().filter(|rg| **rg < groups) {
        let mut kept = Vec::new();
        let mut hit = false;
        for batch in read_row_group(bytes, &meta, rg)? {
            let mask = matches(&batch)?;
            if mask.true_count() == 0 {
                kept.push(batch);
                continue;
            }
            hit = true;
            removed.push(arrow::compute::filter_record_batch(&batch, &mask)?);
            let rest = arrow::compute::filter_record_batch(&batch, &arrow::compute::not(&mask)?)?;
            if rest.num_rows() > 0 {
                kept.push(rest);
            }
        }
        if hit {
            plan[rg] = Some(kept);
        }
    }
    if removed.is_empty() {
        return Ok(Spliced {
            removed,
            file: None,
            rows: 0,
            row_groups_encoded: 0,
        });
    }
    let rows: usize = (0..groups)
        .map(|rg| match &plan[rg] {
            None => usize::try_from(meta.metadata().row_group(rg).num_rows()).unwrap_or(0),
            Some(kept) => kept.iter().map(RecordBatch::num_rows).sum(),
        })
        .sum();
    let row_groups_encoded = plan.iter().flatten().count();
    let file = if rows == 0 {
        None
    } else {
        match write(bytes, &meta, plan.clone(), props.clone()) {
            Ok(file) => Some(file),
            // A file whose column chunks cannot be copied into the Arrow writer's layout (one
            // written by another writer, with another Parquet schema for the same Arrow
            // schema): every row group is encoded again.
            Err(e) => {
                tracing::debug!(error = %e, "row groups not copied; encoding the whole file");
                for (rg, kept) in plan.iter_mut().enumerate() {
                    if kept.is_none() {
                        *kept = Some(read_row_group(bytes, &meta, rg)?);
                    }
                }
                Some(write(bytes, &meta, plan, props)?)
            }
        }
    };
    Ok(Spliced {
        removed,
        file,
        rows,
        row_groups_encoded,
    })
}

/// The row groups of Parquet file `bytes` where `matches` selects a row, reading only
/// `columns` (the batches `matches` sees hold just those): what [`without_rows`] then decodes
/// whole.
pub(crate) fn row_groups_with(
    bytes: &Bytes,
    columns: &[&str],
    matches: impl Fn(&RecordBatch) -> Result<BooleanArray>,
) -> Result<Vec<usize>> {
    let failed = |e: parquet::errors::ParquetError| EngineError::Internal(e.to_string());
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Skip);
    let meta = ArrowReaderMetadata::load(bytes, options).map_err(failed)?;
    let mask = ProjectionMask::columns(meta.parquet_schema(), columns.iter().copied());
    let mut holding = Vec::new();
    for rg in 0..meta.metadata().num_row_groups() {
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone())
                .with_row_groups(vec![rg])
                .with_projection(mask.clone())
                .build()
                .map_err(failed)?;
        for batch in reader {
            if matches(&batch?)?.true_count() > 0 {
                holding.push(rg);
                break;
            }
        }
    }
    Ok(holding)
}

/// A spliced file to store in a table's partition, in place of the file it was spliced from.
pub(crate) struct SplicedFile<'a> {
    /// The partition value as written in the path (`2026-10-01`).
    pub partition: &'a str,
    /// The Delta statistics of the file it replaces.
    pub old_stats: Option<&'a str>,
    /// Rows of the new file.
    pub rows: usize,
    pub bytes: Bytes,
    pub metadata: &'a ParquetMetaData,
}

impl SplicedFile<'_> {
    /// Stores the file next to the one it replaces; its add action. The statistics are the
    /// old file's with the new row and null counts: its minimum and maximum values still bound
    /// the rows kept (a subset), and its columns are the table's statistics columns, which
    /// never hold an identifier.
    pub async fn store(
        self,
        store: &Arc<dyn object_store::ObjectStore>,
        spec: &TableSpec,
    ) -> Result<Add> {
        let codec = if spec.lz4 { "lz4" } else { "zstd" };
        let rel = format!(
            "{}={}/part-00000-{}-c000.{codec}.parquet",
            spec.partition_column,
            self.partition,
            uuid::Uuid::new_v4()
        );
        let size = self.bytes.len() as i64;
        let path = layout::table_file(spec.name, &rel);
        store
            .put(&path, self.bytes.into())
            .await
            .map_err(|e| EngineError::Internal(format!("writing {path}: {e}")))?;
        Ok(Add {
            path: rel,
            partition_values: [(
                spec.partition_column.to_string(),
                Some(self.partition.to_string()),
            )]
            .into_iter()
            .collect(),
            size,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(kept_stats(self.old_stats, self.rows, self.metadata)),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        })
    }
}

/// Delta statistics of a file holding a subset of the rows of a file with statistics `old`:
/// `numRecords` is `rows`, `nullCount` is counted again from the new file's Parquet
/// statistics (a column they do not count is left out: unknown), the bounds stay.
fn kept_stats(old: Option<&str>, rows: usize, metadata: &ParquetMetaData) -> String {
    let mut stats: serde_json::Map<String, serde_json::Value> = old
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    stats.insert("numRecords".into(), rows.into());
    if let Some(serde_json::Value::Object(nulls)) = stats.get_mut("nullCount") {
        let schema = metadata.file_metadata().schema_descr();
        nulls.retain(|column, count| {
            let Some(idx) = (0..schema.num_columns())
                .find(|i| schema.column(*i).path().parts() == [column.as_str()])
            else {
                return false;
            };
            let counted: Option<u64> = metadata
                .row_groups()
                .iter()
                .map(|rg| rg.column(idx).statistics()?.null_count_opt())
                .sum();
            match counted {
                Some(n) => {
                    *count = n.into();
                    true
                }
                None => false,
            }
        });
    }
    serde_json::Value::Object(stats).to_string()
}

/// A batch read from a data file (which holds no partition column) in the table's schema.
pub(crate) fn with_partition(
    batch: RecordBatch,
    spec: &TableSpec,
    days: i32,
) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = spec
        .schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == spec.partition_column {
                Ok(Arc::new(Date32Array::from(vec![days; batch.num_rows()])) as ArrayRef)
            } else {
                let c = batch.column_by_name(f.name()).ok_or_else(|| {
                    EngineError::Internal(format!("file lacks column {}", f.name()))
                })?;
                Ok(arrow::compute::cast(c, f.data_type())?)
            }
        })
        .collect::<Result<_>>()?;
    Ok(RecordBatch::try_new(spec.schema.clone(), cols)?)
}

/// Row group `rg` of the file, decoded.
fn read_row_group(
    bytes: &Bytes,
    meta: &ArrowReaderMetadata,
    rg: usize,
) -> Result<Vec<RecordBatch>> {
    let rows = meta.metadata().row_group(rg).num_rows();
    ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone())
        .with_row_groups(vec![rg])
        .with_batch_size(usize::try_from(rows).unwrap_or(8192).max(1))
        .build()
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map(|b| Ok(b?))
        .collect()
}

/// The new file: row group by row group, copied or encoded as `plan` says.
fn write(
    bytes: &Bytes,
    meta: &ArrowReaderMetadata,
    plan: Vec<Option<Vec<RecordBatch>>>,
    props: WriterProperties,
) -> Result<(Bytes, ParquetMetaData)> {
    let failed = |e: parquet::errors::ParquetError| EngineError::Internal(e.to_string());
    let source = meta.metadata();
    let schema = meta.schema().clone();
    let mut out = Vec::with_capacity(bytes.len());
    // The Arrow writer's own set-up (the Parquet schema of `schema`, ARROW:schema in the
    // footer), then row group by row group on the file writer underneath.
    let (mut file, factory) = ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
        .and_then(ArrowWriter::into_serialized_writer)
        .map_err(failed)?;
    for (rg, kept) in plan.into_iter().enumerate() {
        match kept {
            None => {
                let mut group = file.next_row_group().map_err(failed)?;
                for close in copied_columns(bytes, source, rg)? {
                    group.append_column(bytes, close).map_err(failed)?;
                }
                group.close().map_err(failed)?;
            }
            Some(kept) if kept.iter().all(|b| b.num_rows() == 0) => {}
            Some(kept) => {
                let mut writers = factory
                    .create_column_writers(file.flushed_row_groups().len())
                    .map_err(failed)?;
                for batch in &kept {
                    let mut leaves_of = writers.iter_mut();
                    for (field, column) in schema.fields().iter().zip(batch.columns()) {
                        for leaf in compute_leaves(field, column).map_err(failed)? {
                            let writer = leaves_of.next().ok_or_else(|| {
                                EngineError::Internal("more Parquet leaves than writers".into())
                            })?;
                            writer.write(&leaf).map_err(failed)?;
                        }
                    }
                }
                let mut group = file.next_row_group().map_err(failed)?;
                for writer in writers {
                    writer
                        .close()
                        .map_err(failed)?
                        .append_to_row_group(&mut group)
                        .map_err(failed)?;
                }
                group.close().map_err(failed)?;
            }
        }
    }
    // The source's key-value metadata the Arrow writer does not write itself.
    if let Some(kv) = source.file_metadata().key_value_metadata() {
        for entry in kv.iter().filter(|e| e.key != "ARROW:schema") {
            file.append_key_value_metadata(entry.clone());
        }
    }
    let written = file.close().map_err(failed)?;
    Ok((Bytes::from(out), written))
}

/// Row group `rg` of the source as it is encoded: each column chunk with its statistics, page
/// indexes and bloom filter, for [`parquet::file::writer::SerializedRowGroupWriter::append_column`].
fn copied_columns(
    bytes: &Bytes,
    source: &Arc<ParquetMetaData>,
    rg: usize,
) -> Result<Vec<ColumnCloseResult>> {
    let group = source.row_group(rg);
    let rows = u64::try_from(group.num_rows()).unwrap_or(0);
    group
        .columns()
        .iter()
        .enumerate()
        .map(|(c, chunk)| {
            let bloom_filter = Sbbf::read_from_column_chunk(chunk, bytes)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let column_index = source
                .column_index()
                .and_then(|ci| ci.get(rg)?.get(c))
                .filter(|ci| !matches!(ci, ColumnIndexMetaData::NONE))
                .cloned();
            let offset_index = source
                .offset_index()
                .and_then(|oi| oi.get(rg)?.get(c))
                .cloned();
            Ok(ColumnCloseResult {
                bytes_written: u64::try_from(chunk.compressed_size()).unwrap_or(0),
                rows_written: rows,
                metadata: chunk.clone(),
                bloom_filter,
                column_index,
                offset_index,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;

    use super::*;

    fn props() -> WriterProperties {
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(1_000))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_column_bloom_filter_enabled(ColumnPath::from("user_id"), true)
            .build()
    }

    /// 4,000 rows in four row groups of 1,000: user `u-{i % 500}`, n = i.
    fn file() -> Bytes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..4_000).map(|i| format!("u-{}", i % 500)),
                )),
                Arc::new(Int64Array::from_iter_values(0..4_000)),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props())).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(buf)
    }

    fn user_is(id: &'static str) -> impl Fn(&RecordBatch) -> Result<BooleanArray> {
        move |b: &RecordBatch| {
            let users = b.column(0).as_string::<i32>();
            Ok(users.iter().map(|u| Some(u == Some(id))).collect())
        }
    }

    fn read_all(bytes: Bytes) -> (Vec<i64>, Vec<String>, ParquetMetaData) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let meta = builder.metadata().as_ref().clone();
        let mut ns = Vec::new();
        let mut users = Vec::new();
        for b in builder.build().unwrap() {
            let b = b.unwrap();
            ns.extend(b.column(1).as_primitive::<Int64Type>().values().iter());
            users.extend(
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|u| u.unwrap().to_string()),
            );
        }
        (ns, users, meta)
    }

    #[test]
    fn only_the_row_groups_that_held_the_rows_are_encoded_again() {
        let bytes = file();
        // u-7 is at 7, 507, 1007, ...: every row group holds it; look in groups 1 and 2 only.
        let out = without_rows(&bytes, &[1, 2], props(), user_is("u-7")).unwrap();
        assert_eq!(out.removed_rows(), 4, "two per row group looked at");
        assert_eq!(out.row_groups_encoded, 2);
        assert_eq!(out.rows, 3_996);
        let (new, meta) = out.file.unwrap();
        assert_eq!(meta.num_row_groups(), 4);
        let (ns, users, read_meta) = read_all(new.clone());
        assert_eq!(read_meta.num_row_groups(), 4);
        // Every row but the four, in the original order.
        let gone = [1_007, 1_507, 2_007, 2_507];
        let expected: Vec<i64> = (0..4_000).filter(|n| !gone.contains(n)).collect();
        assert_eq!(ns, expected);
        assert_eq!(users.len(), 3_996);
        assert_eq!(users.iter().filter(|u| *u == "u-7").count(), 4);
        // The copied row groups are the source's: same sizes and statistics.
        let (_, _, source) = read_all(bytes.clone());
        for rg in [0, 3] {
            for c in 0..2 {
                let (a, b) = (
                    source.row_group(rg).column(c),
                    read_meta.row_group(rg).column(c),
                );
                assert_eq!(a.compressed_size(), b.compressed_size());
                assert_eq!(a.statistics(), b.statistics());
            }
        }
        assert_eq!(read_meta.row_group(1).num_rows(), 998);
        // Bloom filters in every row group: kept where copied (u-7 still there), rebuilt where
        // encoded (u-7 gone, u-8 kept).
        let bloom = |rg: usize| {
            Sbbf::read_from_column_chunk(read_meta.row_group(rg).column(0), &new)
                .unwrap()
                .expect("a bloom filter")
        };
        for rg in [0, 3] {
            assert!(bloom(rg).check("u-7"));
        }
        for rg in [1, 2] {
            assert!(bloom(rg).check("u-8"));
        }
        // The page indexes were written for every row group.
        let with_index = ParquetRecordBatchReaderBuilder::try_new_with_options(
            new,
            ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
        )
        .unwrap();
        let offsets = with_index.metadata().offset_index().expect("offset index");
        assert_eq!(offsets.len(), 4);
    }

    #[test]
    fn nothing_matched_writes_nothing_and_everything_matched_leaves_no_file() {
        let bytes = file();
        let none = without_rows(&bytes, &[0, 1, 2, 3], props(), user_is("u-9999")).unwrap();
        assert_eq!(none.removed_rows(), 0);
        assert!(none.file.is_none());
        let all = without_rows(&bytes, &[0, 1, 2, 3], props(), |b: &RecordBatch| {
            Ok(BooleanArray::from(vec![true; b.num_rows()]))
        })
        .unwrap();
        assert_eq!(all.removed_rows(), 4_000);
        assert_eq!(all.rows, 0);
        assert!(all.file.is_none());
    }
}
