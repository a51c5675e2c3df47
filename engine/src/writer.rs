//! How Strata's Parquet files are written, from a table's declaration in the registry.

use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::metadata::SortingColumn;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;

use crate::registry::TableSpec;

pub(crate) mod splice;

/// Rows per row group of the files Strata writes (but see [`SUBJECT_ROW_GROUP_ROWS`]).
pub const MAX_ROW_GROUP_ROWS: usize = 256 * 1024;

/// Rows per row group of the tables a purge splices: those with bloom filters on subject
/// columns, and the rollups (whose days a purge splices for the subject's groups, see
/// `rollup/purged.rs`). A purge decodes and encodes again only the row groups that held the
/// subject (or its groups) and copies the others as they are (`writer/splice.rs`), so this is
/// what one of a subject's rows costs it, whatever the size of the file (a compacted one holds
/// hundreds of thousands of rows). 16k rows keep a row group's column chunks at tens of
/// kilobytes and above, the size scans read well.
pub const SUBJECT_ROW_GROUP_ROWS: usize = 16 * 1024;

/// False-positive rate of a bloom filter holding as many distinct values as its row group has
/// rows (the worst case; visitors click more than once, so it is far lower in practice).
const BLOOM_FPP: f64 = 0.05;

/// Parquet settings of every file Strata writes: zstd (LZ4 for the rollups), dictionaries for
/// the low-cardinality strings, bloom filters on the subject columns (GDPR lookups skip files
/// without reading them), rows ordered by the table's sort column.
///
/// `rows` is how many rows the write holds: each bloom filter is sized for the row group it
/// belongs to (at most `rows`, at most a row group's distinct values), so a small
/// ingest file gets a small filter and a full row group one that still rules out a subject
/// it does not hold. A fixed size (50,000 values) let a third of the files of a 20M-event root
/// through as false positives.
pub fn writer_properties(spec: &TableSpec, rows: usize) -> WriterProperties {
    let group_rows = if spec.bloom_columns.is_empty() && !spec.lz4 {
        MAX_ROW_GROUP_ROWS
    } else {
        SUBJECT_ROW_GROUP_ROWS
    };
    let mut b = WriterProperties::builder()
        // Level 1: ingest is CPU-bound on 2 cores; compaction may recompress harder.
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("1 is a valid zstd level"),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(group_rows));
    for col in spec.high_cardinality {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), false);
    }
    // Sketch columns (`*_sketch`) are LZ4: a cold panel merges thousands of them, and zstd
    // decompression of their registers was a fifth of its time. They compress about as well.
    // Tables marked `lz4` (the rollups) are LZ4 throughout.
    if spec.lz4 {
        b = b.set_compression(Compression::LZ4_RAW);
    }
    for field in spec.schema.fields() {
        if field.name().ends_with("_sketch") {
            b = b.set_column_compression(
                ColumnPath::from(field.name().as_str()),
                Compression::LZ4_RAW,
            );
        }
    }
    for col in spec.bloom_columns {
        let path = ColumnPath::from(*col);
        b = b
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(path, rows.clamp(1, group_rows) as u64);
    }
    if let Some(idx) = spec.sort_column_index() {
        b = b.set_sorting_columns(Some(vec![SortingColumn {
            column_idx: idx as i32,
            descending: false,
            nulls_first: false,
        }]));
    }
    b.build()
}
