//! Scalar functions whose output size a caller controls (`repeat('x', 1e9)`, `lpad(s, 1e9)`,
//! `range(1e12)`, ...) allocate before any memory pool sees it. Each is replaced in every
//! query session by a wrapper that bounds the output from its arguments first and fails the
//! query with a clear message (a 400) instead of taking the server's memory.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use datafusion::common::{exec_err, Result as DfResult, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

/// The largest value one call may make, in bytes.
pub const MAX_VALUE_BYTES: u128 = 8 << 20;
/// The most a call may make over all the rows of one batch, in bytes.
pub const MAX_CALL_BYTES: u128 = 256 << 20;
/// The most elements one list value may hold.
pub const MAX_LIST_ELEMENTS: u128 = 1 << 20;
/// The most list elements a call may make over one batch.
pub const MAX_CALL_ELEMENTS: u128 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(s, n)`: |s| x n bytes.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: n characters (at most 4 bytes each).
    Pad,
    /// `replace(s, from, to)`, `regexp_replace(s, pattern, to, ...)`: at most (|s| + 1) x |to|
    /// + |s| bytes; the replacement is argument `to`.
    Replace { to: usize },
    /// `array_repeat(e, n)`, `array_resize(a, n, ...)`: n elements.
    ListOf { count: usize },
    /// `range(stop)`, `range(start, stop [, step])`, `generate_series`: (stop - start) / step
    /// elements.
    Series,
}

const BOUNDED: &[(&str, Bound)] = &[
    ("repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("replace", Bound::Replace { to: 2 }),
    ("regexp_replace", Bound::Replace { to: 2 }),
    ("array_repeat", Bound::ListOf { count: 1 }),
    ("array_resize", Bound::ListOf { count: 1 }),
    ("range", Bound::Series),
    ("generate_series", Bound::Series),
];

/// Replaces the functions of [`BOUNDED`] in `ctx` with their bounded wrappers.
pub fn register(ctx: &SessionContext) {
    for (name, bound) in BOUNDED {
        // A function this build does not have needs no bound.
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(BoundedUdf {
                inner,
                bound: *bound,
            }));
        }
    }
}

#[derive(Debug)]
struct BoundedUdf {
    inner: Arc<ScalarUDF>,
    bound: Bound,
}

impl PartialEq for BoundedUdf {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name() && self.bound == other.bound
    }
}

impl Eq for BoundedUdf {}

impl std::hash::Hash for BoundedUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.bound.hash(state);
    }
}

impl ScalarUDFImpl for BoundedUdf {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        check(self.name(), self.bound, &args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }
}

/// Fails when the call could make more than the limits allow. Estimates are upper bounds from
/// the largest argument values of the batch.
fn check(name: &str, bound: Bound, args: &[ColumnarValue], rows: usize) -> DfResult<()> {
    let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        1
    } else {
        rows.max(1)
    } as u128;
    let arg = |i: usize| args.get(i);
    let (bytes, elements) = match bound {
        Bound::Repeat => {
            let n = arg(1).and_then(max_int).unwrap_or(0).max(0) as u128;
            (arg(0).map_or(0, max_len) * n, 0)
        }
        Bound::Pad => {
            let n = arg(1).and_then(max_int).unwrap_or(0).max(0) as u128;
            (4 * n, 0)
        }
        Bound::Replace { to } => {
            let s = arg(0).map_or(0, max_len);
            let to = arg(to).map_or(0, max_len);
            ((s + 1) * to + s, 0)
        }
        Bound::ListOf { count } => {
            let n = arg(count).and_then(max_int).unwrap_or(0).max(0) as u128;
            (0, n)
        }
        Bound::Series => (0, series_len(args)),
    };
    if bytes > MAX_VALUE_BYTES || bytes * rows > MAX_CALL_BYTES {
        return exec_err!(
            "{name} would make values of up to {bytes} bytes ({} in this batch), more than the {MAX_VALUE_BYTES} bytes per value and {MAX_CALL_BYTES} per batch allowed",
            bytes * rows
        );
    }
    if elements > MAX_LIST_ELEMENTS || elements * rows > MAX_CALL_ELEMENTS {
        return exec_err!(
            "{name} would make lists of up to {elements} elements, more than the {MAX_LIST_ELEMENTS} per list and {MAX_CALL_ELEMENTS} per batch allowed"
        );
    }
    Ok(())
}

/// The largest integer among an argument's values (None: not an integer, or all null).
fn max_int(v: &ColumnarValue) -> Option<i64> {
    match v {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(v) => v,
            _ => None,
        },
        ColumnarValue::Array(a) => {
            let a = arrow::compute::cast(a, &DataType::Int64).ok()?;
            arrow::compute::max(a.as_primitive::<arrow::datatypes::Int64Type>())
        }
    }
}

/// The longest string (in bytes) among an argument's values; 16 for other types.
fn max_len(v: &ColumnarValue) -> u128 {
    let is_text =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    match v {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(Some(t))
            | ScalarValue::LargeUtf8(Some(t))
            | ScalarValue::Utf8View(Some(t)) => t.len() as u128,
            s if is_text(&s.data_type()) => 0,
            _ => 16,
        },
        ColumnarValue::Array(a) if is_text(a.data_type()) => {
            let Ok(a) = arrow::compute::cast(a, &DataType::Utf8) else {
                return u128::MAX >> 8;
            };
            let a = a.as_string::<i32>();
            let offsets = a.value_offsets();
            offsets
                .windows(2)
                .map(|w| (w[1] - w[0]) as u128)
                .max()
                .unwrap_or(0)
        }
        ColumnarValue::Array(a) => (a.get_array_memory_size() / a.len().max(1)).max(16) as u128,
    }
}

/// How many elements `range`/`generate_series` would make, at most (0 when not computable).
fn series_len(args: &[ColumnarValue]) -> u128 {
    let (start, stop, step) = match args {
        [stop] => (None, Some(stop), None),
        [start, stop] => (Some(start), Some(stop), None),
        [start, stop, step, ..] => (Some(start), Some(stop), Some(step)),
        [] => return 0,
    };
    let temporal = stop.is_some_and(|s| {
        matches!(
            s.data_type(),
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
        )
    });
    let as_i64 = |v: &ColumnarValue, pick_max: bool| -> Option<i64> {
        let v = if temporal {
            v.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None), None)
                .ok()?
        } else {
            v.clone()
        };
        let arr: ArrayRef = v.into_array(1).ok()?;
        let ints = arrow::compute::cast(&arr, &DataType::Int64).ok()?;
        let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
        if pick_max {
            arrow::compute::max(ints)
        } else {
            arrow::compute::min(ints)
        }
    };
    let lo = start.map_or(Some(0), |s| as_i64(s, false));
    let hi = stop.and_then(|s| as_i64(s, true));
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return 0;
    };
    let step = match step {
        None => 1i128,
        Some(s) if temporal => interval_nanos(s).unwrap_or(1),
        Some(s) => max_abs_step(s).unwrap_or(1),
    }
    .max(1);
    ((hi as i128 - lo as i128).unsigned_abs() / step as u128) + 1
}

/// The smallest absolute integer step (the largest series it can make).
fn max_abs_step(v: &ColumnarValue) -> Option<i128> {
    let arr = v.clone().into_array(1).ok()?;
    let ints = arrow::compute::cast(&arr, &DataType::Int64).ok()?;
    let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
    ints.iter()
        .flatten()
        .map(|s| (s as i128).abs())
        .filter(|s| *s > 0)
        .min()
}

/// An interval step in nanoseconds, months counted as 28 days (the shortest: an upper bound
/// on the count).
fn interval_nanos(v: &ColumnarValue) -> Option<i128> {
    const DAY: i128 = 86_400_000_000_000;
    let ColumnarValue::Scalar(s) = v else {
        return None;
    };
    let n = match s {
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            i.months as i128 * 28 * DAY + i.days as i128 * DAY + i.nanoseconds as i128
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i.days as i128 * DAY + i.milliseconds as i128 * 1_000_000
        }
        ScalarValue::IntervalYearMonth(Some(m)) => *m as i128 * 28 * DAY,
        _ => return None,
    };
    Some(n.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn output_sizes_are_bounded() {
        let ctx = SessionContext::new();
        register(&ctx);
        for ok in [
            "SELECT repeat('ab', 1000)",
            "SELECT lpad('x', 100, '-')",
            "SELECT replace('abc', 'b', 'xyz')",
            "SELECT range(1000)",
            "SELECT generate_series(1, 10, 2)",
            "SELECT array_repeat(1, 10)",
            "SELECT repeat(column1, 3) FROM (VALUES ('a'), ('bc'))",
        ] {
            assert!(run(&ctx, ok).await.is_ok(), "{ok}");
        }
        for bad in [
            "SELECT repeat('ab', 1000000000)",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad('x', 100000000, 'y')",
            "SELECT replace(repeat('a', 100000), 'a', repeat('b', 100000))",
            "SELECT range(10000000000)",
            "SELECT generate_series(1, 10000000000, 1)",
            "SELECT range(TIMESTAMP '1970-01-01 00:00:00', TIMESTAMP '2200-01-01 00:00:00', INTERVAL '1 second')",
            "SELECT array_repeat('x', 1000000000)",
            "SELECT repeat(column1, 100000000) FROM (VALUES ('a'), ('bc'))",
        ] {
            let e = run(&ctx, bad).await.expect_err(bad);
            assert!(e.to_string().contains("allowed"), "{bad}: {e}");
        }
    }
}
