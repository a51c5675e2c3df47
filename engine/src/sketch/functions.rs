//! The SQL surface of the sketches: [`register`] puts the aggregates (`hll_sketch`,
//! `hll_merge`, `distinct_sketch`, `latency_sketch`, `latency_merge`) and the scalar functions
//! that read a sketch (`hll_count`, `latency_quantile`) on a session.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, GroupsAccumulator, ScalarUDF,
    Signature, SimpleScalarUDF, Volatility,
};
use datafusion::prelude::SessionContext;

use super::accumulator::{Sketch, SketchAccumulator, SketchGroups};
use super::columns::{as_float64, binary_state_fields};
use super::distinct::DistinctSketchUdaf;
use super::{inputs, DfResult, Hll, LatencySketch};

/// A sketch aggregate: `hll_sketch(text)` and `latency_sketch(number)` build from values,
/// `hll_merge(sketch)` and `latency_merge(sketch)` from sketches; a [`GroupsAccumulator`] for
/// GROUP BY and a plain [`Accumulator`] otherwise.
#[derive(Debug)]
struct SketchUdaf<S> {
    name: &'static str,
    signature: Signature,
    from_values: bool,
    _sketch: std::marker::PhantomData<fn() -> S>,
}

// By hand: a derive would ask the sketch type for Eq and Hash; the name says which it is.
impl<S> PartialEq for SketchUdaf<S> {
    fn eq(&self, other: &Self) -> bool {
        (self.name, &self.signature, self.from_values)
            == (other.name, &other.signature, other.from_values)
    }
}

impl<S> Eq for SketchUdaf<S> {}

impl<S> std::hash::Hash for SketchUdaf<S> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.name, &self.signature, self.from_values).hash(state);
    }
}

impl<S: Sketch> SketchUdaf<S> {
    fn new(name: &'static str, from_values: bool) -> Self {
        let signature = match (from_values, S::INPUT) {
            (true, DataType::Float64) => Signature::numeric(1, Volatility::Immutable),
            (true, input) => Signature::uniform(1, inputs(&input), Volatility::Immutable),
            (false, _) => Signature::uniform(1, inputs(&DataType::Binary), Volatility::Immutable),
        };
        Self {
            name,
            signature,
            from_values,
            _sketch: std::marker::PhantomData,
        }
    }
}

impl<S: Sketch> AggregateUDFImpl for SketchUdaf<S> {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(SketchAccumulator::<S>::new(
            self.name,
            self.from_values,
        )))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(binary_state_fields(args.name, "sketch"))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SketchGroups::<S>::new(
            self.name,
            self.from_values,
        )))
    }
}

/// Registers `hll_sketch(text)`, `hll_merge(sketch)`, `hll_count(sketch)`,
/// `distinct_sketch(text)`, `latency_sketch(number)`, `latency_merge(sketch)` and
/// `latency_quantile(sketch, q)`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(SketchUdaf::<Hll>::new(
        "hll_sketch",
        true,
    )));
    ctx.register_udaf(AggregateUDF::from(SketchUdaf::<Hll>::new(
        "hll_merge",
        false,
    )));
    ctx.register_udaf(AggregateUDF::from(DistinctSketchUdaf::new()));
    ctx.register_udaf(AggregateUDF::from(SketchUdaf::<LatencySketch>::new(
        "latency_sketch",
        true,
    )));
    ctx.register_udaf(AggregateUDF::from(SketchUdaf::<LatencySketch>::new(
        "latency_merge",
        false,
    )));
    ctx.register_udf(ScalarUDF::from(SimpleScalarUDF::new_with_signature(
        "hll_count",
        Signature::uniform(1, inputs(&DataType::Binary), Volatility::Immutable),
        DataType::Int64,
        Arc::new(hll_count),
    )));
    ctx.register_udf(ScalarUDF::from(SimpleScalarUDF::new_with_signature(
        "latency_quantile",
        Signature::one_of(
            inputs(&DataType::Binary)
                .into_iter()
                .map(|t| datafusion::logical_expr::TypeSignature::Exact(vec![t, DataType::Float64]))
                .collect(),
            Volatility::Immutable,
        ),
        DataType::Float64,
        Arc::new(latency_quantile),
    )));
}

/// `hll_count(sketch)`: the estimated number of distinct values.
pub(super) fn hll_count(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    const NAME: &str = "hll_count";
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let [sketches] = arrays.as_slice() else {
        return Err(wrong_arity(NAME, 1, arrays.len()));
    };
    let sketches = arrow::compute::cast(sketches, &DataType::Binary)?;
    let out: Int64Array = as_binary(&sketches)?
        .iter()
        .map(|b| {
            b.map(|b| {
                Hll::from_bytes(b)
                    // Far past any real count, but a sketch of all-high ranks estimates more
                    // than an i64 holds.
                    .map(|h| i64::try_from(h.estimate()).unwrap_or(i64::MAX))
                    .map_err(|e| e.in_function(NAME))
            })
            .transpose()
        })
        .collect::<DfResult<_>>()?;
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// `latency_quantile(sketch, q)`: the value at quantile `q` (0..=1), NULL for an empty sketch.
pub(super) fn latency_quantile(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    const NAME: &str = "latency_quantile";
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let [sketches, qs] = arrays.as_slice() else {
        return Err(wrong_arity(NAME, 2, arrays.len()));
    };
    let sketches = arrow::compute::cast(sketches, &DataType::Binary)?;
    let qs = arrow::compute::cast(qs, &DataType::Float64)?;
    let out: Float64Array = as_binary(&sketches)?
        .iter()
        .zip(as_float64(&qs)?.iter())
        .map(|(b, q)| {
            let Some(q) = q else { return Ok(None) };
            // Also refuses NaN, which no range contains.
            if !(0.0..=1.0).contains(&q) {
                return Err(DataFusionError::Execution(format!(
                    "{NAME}: the quantile must be between 0 and 1, got {q}"
                )));
            }
            b.map(|b| {
                LatencySketch::from_bytes(b)
                    .map(|s| s.quantile(q))
                    .map_err(|e| e.in_function(NAME))
            })
            .transpose()
            .map(Option::flatten)
        })
        .collect::<DfResult<_>>()?;
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// A `Binary` array as such (what a cast to `Binary` returns).
fn as_binary(arr: &ArrayRef) -> DfResult<&arrow::array::BinaryArray> {
    arr.as_binary_opt::<i32>().ok_or_else(|| {
        DataFusionError::Internal(format!("expected a Binary array, got {}", arr.data_type()))
    })
}

/// The signature rules this out; a direct call could still get it wrong.
fn wrong_arity(function: &str, want: usize, got: usize) -> DataFusionError {
    DataFusionError::Internal(format!("{function} takes {want} argument(s), got {got}"))
}
