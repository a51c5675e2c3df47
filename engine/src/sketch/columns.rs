//! Reading sketch function arguments out of Arrow arrays (any string or binary layout, without
//! a copy), and building the per-row partial states of a skipped partial aggregation: shared by
//! the sketch aggregates and `distinct_sketch`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::utils::format_state_name;

use super::DfResult;

/// A `Float64` array as such (what a cast to `Float64` returns).
pub(super) fn as_float64(arr: &ArrayRef) -> DfResult<&Float64Array> {
    arr.as_primitive_opt::<Float64Type>().ok_or_else(|| {
        DataFusionError::Internal(format!("expected a Float64 array, got {}", arr.data_type()))
    })
}

/// Calls `f(row, bytes)` for every non-null value of a string or binary array, whatever its
/// offset or view layout (no copy into a plain `Utf8` array first); other types are cast to
/// `fallback` first.
pub(crate) fn for_each_bytes(
    arr: &ArrayRef,
    fallback: &DataType,
    mut f: impl FnMut(usize, &[u8]) -> DfResult<()>,
) -> DfResult<()> {
    fn each<'a>(
        it: impl Iterator<Item = Option<&'a [u8]>>,
        f: &mut impl FnMut(usize, &[u8]) -> DfResult<()>,
    ) -> DfResult<()> {
        for (row, v) in it.enumerate() {
            if let Some(v) = v {
                f(row, v)?;
            }
        }
        Ok(())
    }
    match arr.data_type() {
        DataType::Utf8 => each(
            arr.as_string::<i32>().iter().map(|v| v.map(str::as_bytes)),
            &mut f,
        ),
        DataType::LargeUtf8 => each(
            arr.as_string::<i64>().iter().map(|v| v.map(str::as_bytes)),
            &mut f,
        ),
        DataType::Utf8View => each(
            arr.as_string_view().iter().map(|v| v.map(str::as_bytes)),
            &mut f,
        ),
        DataType::Binary => each(arr.as_binary::<i32>().iter(), &mut f),
        DataType::LargeBinary => each(arr.as_binary::<i64>().iter(), &mut f),
        DataType::BinaryView => each(arr.as_binary_view().iter(), &mut f),
        _ => {
            let cast = arrow::compute::cast(arr, fallback)?;
            for_each_bytes(&cast, fallback, f)
        }
    }
}

/// True when a FILTER clause leaves `row` out (false or null).
pub(crate) fn filtered_out(filter: Option<&arrow::array::BooleanArray>, row: usize) -> bool {
    filter.is_some_and(|f| !f.is_valid(row) || !f.value(row))
}

/// The per-row states of `convert_to_state`: rows are pushed in increasing order; rows never
/// pushed (null values) and rows a FILTER leaves out get a null state.
pub(crate) struct RowStates<'a> {
    out: BinaryBuilder,
    next: usize,
    filter: Option<&'a arrow::array::BooleanArray>,
}

impl<'a> RowStates<'a> {
    pub(crate) fn new(
        rows: usize,
        bytes_per_row: usize,
        filter: Option<&'a arrow::array::BooleanArray>,
    ) -> Self {
        Self {
            out: BinaryBuilder::with_capacity(rows, rows * bytes_per_row),
            next: 0,
            filter,
        }
    }

    fn fill_to(&mut self, row: usize) {
        while self.next < row {
            self.out.append_null();
            self.next += 1;
        }
    }

    pub(crate) fn push(&mut self, row: usize, state: &[u8]) {
        self.fill_to(row);
        if filtered_out(self.filter, row) {
            self.out.append_null();
        } else {
            self.out.append_value(state);
        }
        self.next = row + 1;
    }

    pub(crate) fn finish(mut self, rows: usize) -> ArrayRef {
        self.fill_to(rows);
        Arc::new(self.out.finish())
    }
}

/// The partial state of a sketch aggregate: one nullable `Binary` field, named after the
/// aggregate call and what the bytes hold (`state`).
pub(crate) fn binary_state_fields(aggregate: &str, state: &str) -> Vec<FieldRef> {
    vec![Arc::new(Field::new(
        format_state_name(aggregate, state),
        DataType::Binary,
        true,
    ))]
}

/// Input types a sketch function takes: the plain, large and view forms of its type.
pub(crate) fn inputs(kind: &DataType) -> Vec<DataType> {
    match kind {
        DataType::Utf8 => vec![DataType::Utf8, DataType::Utf8View, DataType::LargeUtf8],
        DataType::Binary => vec![
            DataType::Binary,
            DataType::BinaryView,
            DataType::LargeBinary,
        ],
        other => vec![other.clone()],
    }
}

/// Rows an accumulator keeps unfolded at most (their group and value, 12-16 bytes each):
/// past this they are folded into the groups.
pub(crate) const PENDING_MAX: usize = 1 << 20;

/// A counting sort: the `value`s of `items` ordered by their `key` (each below `keys`), in
/// their order within a key, into `out`; returns where each key's run starts (`keys + 1`
/// offsets).
pub(crate) fn counting_sort<I, T: Copy + Default>(
    items: &[I],
    keys: usize,
    key: impl Fn(&I) -> usize,
    value: impl Fn(&I) -> T,
    out: &mut Vec<T>,
) -> Vec<usize> {
    let mut starts = vec![0usize; keys + 1];
    for item in items {
        starts[key(item) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    out.clear();
    out.resize(items.len(), T::default());
    for item in items {
        let slot = &mut next[key(item)];
        out[*slot] = value(item);
        *slot += 1;
    }
    starts
}

/// `pending`'s values (each with its group, of `groups`) ordered by group, in their order
/// within one ([`counting_sort`]), and where each group's run starts (`groups + 1` offsets).
/// Folding a batch of rows group by group keeps one group's state in the cache at a time: a
/// row at a time into random groups cost a cache miss each once a day's groups outgrew it.
pub(crate) fn by_group<T: Copy + Default>(
    pending: &[(u32, T)],
    groups: usize,
) -> (Vec<usize>, Vec<T>) {
    let mut sorted = Vec::new();
    let starts = counting_sort(
        pending,
        groups,
        |&(g, _)| g as usize,
        |&(_, v)| v,
        &mut sorted,
    );
    (starts, sorted)
}

/// `group_indices[row]` as the `u32` the pending rows keep.
pub(crate) fn group_u32(group_indices: &[usize], row: usize, function: &str) -> DfResult<u32> {
    u32::try_from(group_indices[row]).map_err(|_| {
        datafusion::common::DataFusionError::Execution(format!("{function}: more than 2^32 groups"))
    })
}
