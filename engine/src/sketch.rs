//! Mergeable sketches kept in the rollups, so that ranges of days can be answered from daily
//! rows: distinct counts (HyperLogLog) and latency quantiles (a log-bucket histogram).
//!
//! ```text
//! raw events --hll_sketch(visitor)--> daily rollup row (BINARY) --hll_merge--> hll_count -> users over 7/30 days
//! raw events --latency_sketch(ms)---> daily rollup row (BINARY) --latency_merge--> latency_quantile(s, 0.95)
//! ```
//!
//! Both are registered as SQL functions on every session ([`register`]).
//!
//! * HLL: precision 12 (4,096 registers), 64-bit hash; standard error 1.04/sqrt(4096) = 1.6%,
//!   exact-ish (linear counting) for small sets. Small sketches are stored sparse (a sorted list
//!   of non-zero registers), so a rollup row of a rarely clicked item costs a few bytes.
//! * Latency: buckets grow by 2% (relative error of any quantile under 1%), counts kept per
//!   non-empty bucket.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array};
use arrow::datatypes::DataType;
use arrow::datatypes::Field;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Signature, SimpleAggregateUDF,
    SimpleScalarUDF, Volatility,
};
use datafusion::prelude::SessionContext;

type DfResult<T> = std::result::Result<T, DataFusionError>;

const P: u32 = 12;
/// Sketches written before precision 12 (tags 0 and 1) are folded down when read.
const OLD_P: u32 = 14;
const TAG_DENSE: u8 = 2;
const TAG_SPARSE: u8 = 3;
const M: usize = 1 << P;
/// Past this many non-zero registers a sketch goes dense: merging into a dense sketch is a
/// plain max per register, which is what makes range queries over many daily sketches fast.
const SPARSE_MAX: usize = M / 16;

/// A HyperLogLog sketch (precision 12), sparse until it fills up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hll {
    sparse: BTreeMap<u16, u8>,
    dense: Option<Box<[u8]>>,
}

impl Hll {
    pub fn insert(&mut self, value: &[u8]) {
        let h = hash64(value);
        let idx = (h >> (64 - P)) as u16;
        let rank = ((h << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
        self.set(idx, rank);
    }

    fn set(&mut self, idx: u16, rank: u8) {
        if let Some(d) = &mut self.dense {
            let r = &mut d[idx as usize];
            *r = (*r).max(rank);
            return;
        }
        let r = self.sparse.entry(idx).or_insert(0);
        *r = (*r).max(rank);
        if self.sparse.len() > SPARSE_MAX {
            self.make_dense();
        }
    }

    fn make_dense(&mut self) -> &mut [u8] {
        if self.dense.is_none() {
            let mut d = vec![0u8; M].into_boxed_slice();
            for (i, r) in std::mem::take(&mut self.sparse) {
                d[i as usize] = r;
            }
            self.dense = Some(d);
        }
        self.dense.as_deref_mut().expect("made dense above")
    }

    pub fn merge(&mut self, other: &Hll) {
        match &other.dense {
            Some(d) => {
                for (i, &r) in d.iter().enumerate() {
                    if r > 0 {
                        self.set(i as u16, r);
                    }
                }
            }
            None => {
                for (&i, &r) in &other.sparse {
                    self.set(i, r);
                }
            }
        }
    }

    pub fn estimate(&self) -> u64 {
        let (zeros, sum) = match &self.dense {
            Some(d) => d.iter().fold((0usize, 0f64), |(z, s), &r| {
                (
                    z + usize::from(r == 0),
                    s + f64::from_bits((1023 - u64::from(r)) << 52),
                )
            }),
            None => {
                let nz = self.sparse.len();
                let s: f64 = self
                    .sparse
                    .values()
                    .map(|&r| 2f64.powi(-i32::from(r)))
                    .sum();
                (M - nz, s + (M - nz) as f64)
            }
        };
        let m = M as f64;
        if zeros == M {
            return 0;
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }

    /// `0x03` + (u16 index, u8 rank)* when sparse, `0x02` + 4,096 registers when dense.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.dense {
            Some(d) => {
                let mut out = Vec::with_capacity(M + 1);
                out.push(TAG_DENSE);
                out.extend_from_slice(d);
                out
            }
            None => {
                let mut out = Vec::with_capacity(1 + 3 * self.sparse.len());
                out.push(TAG_SPARSE);
                for (&i, &r) in &self.sparse {
                    out.extend_from_slice(&i.to_le_bytes());
                    out.push(r);
                }
                out
            }
        }
    }

    pub fn from_bytes(b: &[u8]) -> DfResult<Self> {
        let mut h = Self::default();
        h.merge_serialized(b)?;
        Ok(h)
    }

    /// Merges a serialized sketch straight into this one (no intermediate sketch): the hot
    /// path of `hll_merge` over many daily rows.
    pub fn merge_serialized(&mut self, b: &[u8]) -> DfResult<()> {
        let old_m = 1usize << OLD_P;
        match b.split_first() {
            Some((&TAG_DENSE, regs)) if regs.len() == M => {
                let d = self.make_dense();
                for (r, &o) in d.iter_mut().zip(regs) {
                    *r = (*r).max(o);
                }
            }
            Some((&TAG_SPARSE, pairs)) if pairs.len().is_multiple_of(3) => {
                for c in pairs.chunks_exact(3) {
                    self.set(u16::from_le_bytes([c[0], c[1]]) & (M as u16 - 1), c[2]);
                }
            }
            // Precision 14 sketches: fold each register into precision 12.
            Some((0, regs)) if regs.len() == old_m => {
                for (i, &r) in regs.iter().enumerate() {
                    if r > 0 {
                        let (idx, rank) = fold(i as u16, r);
                        self.set(idx, rank);
                    }
                }
            }
            Some((1, pairs)) if pairs.len().is_multiple_of(3) => {
                for c in pairs.chunks_exact(3) {
                    let (idx, rank) =
                        fold(u16::from_le_bytes([c[0], c[1]]) & (old_m as u16 - 1), c[2]);
                    self.set(idx, rank);
                }
            }
            _ => {
                return Err(DataFusionError::Execution(
                    "not a Strata HLL sketch (bad header or length)".into(),
                ))
            }
        }
        Ok(())
    }
}

/// FNV-1a then the murmur3 finaliser: stable across runs and versions, which a sketch stored
/// in a table needs (std's hashers are seeded per process).
fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A precision-14 register as precision 12: the two dropped index bits become the first bits
/// of the rest of the hash.
fn fold(idx14: u16, rank14: u8) -> (u16, u8) {
    let shift = OLD_P - P;
    let dropped = idx14 & ((1 << shift) - 1);
    let rank = if dropped != 0 {
        (dropped.leading_zeros() - (16 - shift)) as u8 + 1
    } else {
        rank14 + shift as u8
    };
    (idx14 >> shift, rank)
}

const GAMMA: f64 = 1.02;

/// Counts of values per log bucket (bucket i holds values in (GAMMA^(i-1), GAMMA^i]); zero and
/// negatives go to bucket `i16::MIN`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySketch {
    buckets: BTreeMap<i16, u64>,
}

impl LatencySketch {
    pub fn insert(&mut self, v: f64) {
        let idx = if v <= 0.0 {
            i16::MIN
        } else {
            (v.ln() / GAMMA.ln()).ceil().clamp(-30_000.0, 30_000.0) as i16
        };
        *self.buckets.entry(idx).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        for (&i, &c) in &other.buckets {
            *self.buckets.entry(i).or_insert(0) += c;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The value at quantile `q` (0..=1), within 1% relative error; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&i, &c) in &self.buckets {
            seen += c;
            if seen >= rank {
                if i == i16::MIN {
                    return Some(0.0);
                }
                // Midpoint of the bucket in relative terms.
                return Some(2.0 * GAMMA.powi(i32::from(i)) / (1.0 + GAMMA));
            }
        }
        None
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 * self.buckets.len());
        for (&i, &c) in &self.buckets {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> DfResult<Self> {
        if !b.len().is_multiple_of(10) {
            return Err(DataFusionError::Execution(
                "not a Strata latency sketch (bad length)".into(),
            ));
        }
        let mut s = Self::default();
        for c in b.chunks_exact(10) {
            let i = i16::from_le_bytes([c[0], c[1]]);
            let n = u64::from_le_bytes(c[2..10].try_into().expect("8 bytes"));
            *s.buckets.entry(i).or_insert(0) += n;
        }
        Ok(s)
    }
}

/// What an aggregate builds from its input: raw values or serialized sketches.
trait Sketch: Default + Send + Sync + std::fmt::Debug + 'static {
    fn add_values(&mut self, values: &ArrayRef) -> DfResult<()>;
    fn merge_bytes(&mut self, b: &[u8]) -> DfResult<()>;
    fn bytes(&self) -> Vec<u8>;
    fn heap_size(&self) -> usize;
}

impl Sketch for Hll {
    fn add_values(&mut self, values: &ArrayRef) -> DfResult<()> {
        let values = arrow::compute::cast(values, &DataType::Utf8)?;
        for v in values.as_string::<i32>().iter().flatten() {
            self.insert(v.as_bytes());
        }
        Ok(())
    }
    fn merge_bytes(&mut self, b: &[u8]) -> DfResult<()> {
        self.merge_serialized(b)
    }
    fn bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn heap_size(&self) -> usize {
        self.dense.as_ref().map_or(self.sparse.len() * 24, |_| M)
    }
}

impl Sketch for LatencySketch {
    fn add_values(&mut self, values: &ArrayRef) -> DfResult<()> {
        let values = arrow::compute::cast(values, &DataType::Float64)?;
        let values = values
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64");
        for v in values.iter().flatten() {
            self.insert(v);
        }
        Ok(())
    }
    fn merge_bytes(&mut self, b: &[u8]) -> DfResult<()> {
        self.merge(&LatencySketch::from_bytes(b)?);
        Ok(())
    }
    fn bytes(&self) -> Vec<u8> {
        self.to_bytes()
    }
    fn heap_size(&self) -> usize {
        self.buckets.len() * 32
    }
}

/// Accumulates raw values (`from_values`) or serialized sketches into one sketch.
#[derive(Debug, Default)]
struct SketchAccumulator<S: Sketch> {
    sketch: S,
    from_values: bool,
}

impl<S: Sketch> Accumulator for SketchAccumulator<S> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if self.from_values {
            self.sketch.add_values(&values[0])
        } else {
            merge_binary(&mut self.sketch, &values[0])
        }
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.sketch.bytes())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_size()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        merge_binary(&mut self.sketch, &states[0])
    }
}

fn merge_binary<S: Sketch>(sketch: &mut S, arr: &ArrayRef) -> DfResult<()> {
    let arr = arrow::compute::cast(arr, &DataType::Binary)?;
    let arr = arr
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("cast to Binary");
    for b in arr.iter().flatten() {
        sketch.merge_bytes(b)?;
    }
    Ok(())
}

/// Input types a sketch function takes: the plain, large and view forms of its type.
fn inputs(kind: &DataType) -> Vec<DataType> {
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

fn sketch_udaf<S: Sketch>(name: &str, input: DataType, from_values: bool) -> AggregateUDF {
    let signature = if input == DataType::Float64 {
        Signature::numeric(1, Volatility::Immutable)
    } else {
        Signature::uniform(1, inputs(&input), Volatility::Immutable)
    };
    AggregateUDF::from(SimpleAggregateUDF::new_with_signature(
        name,
        signature,
        DataType::Binary,
        Arc::new(move |_| {
            Ok(Box::new(SketchAccumulator::<S> {
                sketch: S::default(),
                from_values,
            }))
        }),
        vec![Arc::new(Field::new(
            format!("{name}_state"),
            DataType::Binary,
            true,
        ))],
    ))
}

/// Registers `hll_sketch(text)`, `hll_merge(sketch)`, `hll_count(sketch)`,
/// `latency_sketch(number)`, `latency_merge(sketch)` and `latency_quantile(sketch, q)`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(sketch_udaf::<Hll>("hll_sketch", DataType::Utf8, true));
    ctx.register_udaf(sketch_udaf::<Hll>("hll_merge", DataType::Binary, false));
    ctx.register_udaf(sketch_udaf::<LatencySketch>(
        "latency_sketch",
        DataType::Float64,
        true,
    ));
    ctx.register_udaf(sketch_udaf::<LatencySketch>(
        "latency_merge",
        DataType::Binary,
        false,
    ));
    ctx.register_udf(ScalarUDF::from(SimpleScalarUDF::new_with_signature(
        "hll_count",
        Signature::uniform(1, inputs(&DataType::Binary), Volatility::Immutable),
        DataType::Int64,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let arr = arrow::compute::cast(&arrays[0], &DataType::Binary)?;
            let arr = arr.as_binary::<i32>();
            let out: Int64Array = arr
                .iter()
                .map(|b| {
                    b.map(|b| Hll::from_bytes(b).map(|h| h.estimate() as i64))
                        .transpose()
                })
                .collect::<DfResult<_>>()?;
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
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
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let sketches = arrow::compute::cast(&arrays[0], &DataType::Binary)?;
            let sketches = sketches.as_binary::<i32>();
            let qs = arrow::compute::cast(&arrays[1], &DataType::Float64)?;
            let qs = qs
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64");
            let out: Float64Array = sketches
                .iter()
                .zip(qs.iter())
                .map(|(b, q)| match (b, q) {
                    (Some(b), Some(q)) => LatencySketch::from_bytes(b).map(|s| s.quantile(q)),
                    _ => Ok(None),
                })
                .collect::<DfResult<_>>()?;
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hll_is_close_and_merges() {
        for n in [0u64, 1, 10, 1_000, 50_000, 300_000] {
            let mut a = Hll::default();
            let mut b = Hll::default();
            for i in 0..n {
                let v = format!("user-{i}");
                if i % 2 == 0 {
                    a.insert(v.as_bytes())
                } else {
                    b.insert(v.as_bytes())
                }
                // duplicates do not count
                a.insert(v.as_bytes());
            }
            a.merge(&b);
            let est = a.estimate() as f64;
            let err = if n == 0 {
                est
            } else {
                (est - n as f64).abs() / n as f64
            };
            assert!(err < 0.03, "n={n} est={est}");
            let back = Hll::from_bytes(&a.to_bytes()).unwrap();
            assert_eq!(back.estimate(), a.estimate());
            // Merging serialized sketches (what hll_merge does) gives the same sketch.
            let mut c = Hll::default();
            c.merge_bytes(&b.to_bytes()).unwrap();
            c.merge_bytes(&a.to_bytes()).unwrap();
            assert_eq!(c.estimate(), a.estimate());
        }
    }

    #[test]
    fn precision_14_sketches_fold_into_precision_12() {
        // Old sparse form: tag 1, (u16 index, rank); index 5 = 0b101 folds to index 1 with the
        // dropped bits 01 giving rank 2.
        assert_eq!(fold(5, 3), (1, 2));
        assert_eq!(fold(4, 3), (1, 5));
        let old = [1u8, 5, 0, 3, 200, 0, 1];
        assert_eq!(Hll::from_bytes(&old).unwrap().estimate(), 2);
    }

    #[test]
    fn small_sketches_stay_small() {
        let mut h = Hll::default();
        for i in 0..5 {
            h.insert(format!("u{i}").as_bytes());
        }
        assert!(h.to_bytes().len() <= 16);
        assert_eq!(h.estimate(), 5);
    }

    #[test]
    fn latency_quantiles_within_one_percent() {
        let mut s = LatencySketch::default();
        for v in 1..=1000 {
            s.insert(f64::from(v));
        }
        let p95 = s.quantile(0.95).unwrap();
        assert!((p95 - 950.0).abs() / 950.0 < 0.01, "{p95}");
        let back = LatencySketch::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(LatencySketch::default().quantile(0.5), None);
    }
}
