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

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator,
    ScalarUDF, Signature, SimpleScalarUDF, Volatility,
};
use datafusion::prelude::SessionContext;

pub(crate) type DfResult<T> = std::result::Result<T, DataFusionError>;

/// Bytes that do not decode as a sketch: a rollup column written by something else, or any
/// binary value a query passes. The SQL function that read them names itself in the error
/// ([`NotASketch::in_function`]); the bytes are never quoted (user data, and possibly large).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotASketch {
    /// "HLL" or "latency".
    kind: &'static str,
    reason: String,
}

impl NotASketch {
    fn hll(reason: impl Into<String>) -> Self {
        Self {
            kind: "HLL",
            reason: reason.into(),
        }
    }

    fn latency(reason: impl Into<String>) -> Self {
        Self {
            kind: "latency",
            reason: reason.into(),
        }
    }

    /// The user's mistake, as `function` reports it.
    pub fn in_function(&self, function: &str) -> DataFusionError {
        DataFusionError::Execution(format!("{function}: the argument is {self}"))
    }
}

impl std::fmt::Display for NotASketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a Strata {} sketch ({})", self.kind, self.reason)
    }
}

impl std::error::Error for NotASketch {}

impl From<NotASketch> for DataFusionError {
    fn from(e: NotASketch) -> Self {
        DataFusionError::Execution(e.to_string())
    }
}

const P: u32 = 12;
/// Sketches written before precision 12 (tags 0 and 1) are folded down when read.
const OLD_P: u32 = 14;
const TAG_OLD_DENSE: u8 = 0;
const TAG_OLD_SPARSE: u8 = 1;
const TAG_DENSE: u8 = 2;
const TAG_SPARSE: u8 = 3;
const M: usize = 1 << P;
const OLD_M: usize = 1 << OLD_P;
/// The highest rank a 64-bit hash gives at precision 12 (and at 14): a register read from bytes
/// above it means the bytes are not a sketch we wrote.
const MAX_RANK: u8 = (64 - P + 1) as u8;
const OLD_MAX_RANK: u8 = (64 - OLD_P + 1) as u8;
/// Past this many non-zero registers a sketch goes dense: merging into a dense sketch is a
/// plain max per register, which is what makes range queries over many daily sketches fast.
const SPARSE_MAX: usize = M / 16;

/// A HyperLogLog sketch (precision 12), sparse until it fills up.
///
/// Sparse registers are kept as a sorted `Vec` of `index << 8 | rank`: a rollup row of a rarely
/// clicked item costs a few bytes and no tree nodes, which matters when a rollup holds millions
/// of them (one per day x item).
#[derive(Debug, Clone, PartialEq)]
pub enum Hll {
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(Vec::new())
    }
}

impl Hll {
    pub fn insert(&mut self, value: &[u8]) {
        self.insert_hash(hash64(value));
    }

    /// Inserts a value by its [`hash64`] (what `distinct_sketch` keeps per group).
    pub(crate) fn insert_hash(&mut self, h: u64) {
        let idx = (h >> (64 - P)) as u16;
        let rank = ((h << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
        self.set(idx, rank);
    }

    fn set(&mut self, idx: u16, rank: u8) {
        match self {
            Hll::Dense(d) => {
                let r = &mut d[idx as usize];
                *r = (*r).max(rank);
            }
            Hll::Sparse(s) => {
                let packed = (u32::from(idx) << 8) | u32::from(rank);
                match s.binary_search_by_key(&idx, |e| (e >> 8) as u16) {
                    Ok(i) => s[i] = s[i].max(packed),
                    Err(i) => {
                        s.insert(i, packed);
                        if s.len() > SPARSE_MAX {
                            self.make_dense();
                        }
                    }
                }
            }
        }
    }

    fn make_dense(&mut self) -> &mut [u8] {
        if let Hll::Sparse(s) = self {
            let mut d = vec![0u8; M].into_boxed_slice();
            for &e in s.iter() {
                d[(e >> 8) as usize] = e as u8;
            }
            *self = Hll::Dense(d);
        }
        match self {
            Hll::Dense(d) => d,
            Hll::Sparse(_) => unreachable!("made dense above"),
        }
    }

    pub fn merge(&mut self, other: &Hll) {
        match other {
            Hll::Dense(o) => max_registers(self.make_dense(), o),
            Hll::Sparse(o) => {
                for &e in o {
                    self.set((e >> 8) as u16, e as u8);
                }
            }
        }
    }

    pub fn estimate(&self) -> u64 {
        let (zeros, sum) = match self {
            Hll::Dense(d) => d.iter().fold((0usize, 0f64), |(z, s), &r| {
                (
                    z + usize::from(r == 0),
                    s + f64::from_bits((1023 - u64::from(r)) << 52),
                )
            }),
            Hll::Sparse(s) => {
                let nz = s.len();
                let sum: f64 = s.iter().map(|&e| 2f64.powi(-i32::from(e as u8))).sum();
                (M - nz, sum + (M - nz) as f64)
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
        let mut out = Vec::with_capacity(self.serialized_len());
        self.write_to(&mut out);
        out
    }

    fn serialized_len(&self) -> usize {
        match self {
            Hll::Dense(_) => M + 1,
            Hll::Sparse(s) => 1 + 3 * s.len(),
        }
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Hll::Dense(d) => {
                out.push(TAG_DENSE);
                out.extend_from_slice(d);
            }
            Hll::Sparse(s) => {
                out.push(TAG_SPARSE);
                for &e in s {
                    out.extend_from_slice(&((e >> 8) as u16).to_le_bytes());
                    out.push(e as u8);
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Hll::Dense(_) => M,
            Hll::Sparse(s) => s.capacity() * 4,
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, NotASketch> {
        let mut h = Self::default();
        h.merge_serialized(b)?;
        Ok(h)
    }

    /// Merges a serialized sketch straight into this one (no intermediate sketch): the hot
    /// path of `hll_merge` over many daily rows. The bytes are checked whole before any
    /// register changes, so on an error this sketch is as it was.
    pub fn merge_serialized(&mut self, b: &[u8]) -> Result<(), NotASketch> {
        let Some((&tag, body)) = b.split_first() else {
            return Err(NotASketch::hll("it is empty"));
        };
        match tag {
            TAG_DENSE => {
                check_dense(body, M, MAX_RANK)?;
                max_registers(self.make_dense(), body);
            }
            TAG_SPARSE => {
                for &[lo, hi, rank] in sparse_entries(body, M, MAX_RANK)? {
                    // Checked above: index under M, so it fits a u16 and the dense array.
                    if rank > 0 {
                        self.set(u16::from_le_bytes([lo, hi]), rank);
                    }
                }
            }
            // Precision 14 sketches: fold each register into precision 12.
            TAG_OLD_DENSE => {
                check_dense(body, OLD_M, OLD_MAX_RANK)?;
                for (i, &r) in (0..=u16::MAX).zip(body) {
                    if r > 0 {
                        let (idx, rank) = fold(i, r);
                        self.set(idx, rank);
                    }
                }
            }
            TAG_OLD_SPARSE => {
                for &[lo, hi, rank] in sparse_entries(body, OLD_M, OLD_MAX_RANK)? {
                    if rank > 0 {
                        let (idx, rank) = fold(u16::from_le_bytes([lo, hi]), rank);
                        self.set(idx, rank);
                    }
                }
            }
            _ => return Err(NotASketch::hll("unknown format tag")),
        }
        Ok(())
    }
}

/// Checks a dense body: one register per byte, none above the highest rank.
fn check_dense(body: &[u8], registers: usize, max_rank: u8) -> Result<(), NotASketch> {
    if body.len() != registers {
        return Err(NotASketch::hll(format!(
            "a dense sketch of this format has {registers} registers, not {}",
            body.len()
        )));
    }
    // A max over all, not a search for the first bad one: it vectorises, and it runs on every
    // dense row `hll_merge` reads.
    if body.iter().fold(0, |hi, &r| hi.max(r)) > max_rank {
        return Err(NotASketch::hll(format!(
            "a register holds a rank above {max_rank}"
        )));
    }
    Ok(())
}

/// The (u16 index, u8 rank) entries of a sparse body, once each index is under `registers`
/// and each rank at most `max_rank`.
fn sparse_entries(body: &[u8], registers: usize, max_rank: u8) -> Result<&[[u8; 3]], NotASketch> {
    let (entries, rest) = body.as_chunks::<3>();
    if !rest.is_empty() {
        return Err(NotASketch::hll(format!(
            "a sparse sketch is 3-byte entries, and {} bytes is not a whole number of them",
            body.len()
        )));
    }
    for &[lo, hi, rank] in entries {
        if usize::from(u16::from_le_bytes([lo, hi])) >= registers {
            return Err(NotASketch::hll(format!(
                "a register index is past the last register ({})",
                registers - 1
            )));
        }
        if rank > max_rank {
            return Err(NotASketch::hll(format!(
                "a register holds a rank above {max_rank}"
            )));
        }
    }
    Ok(entries)
}

/// `dst[i] = max(dst[i], src[i])`, eight registers at a time. Registers are under 128 (a rank
/// is at most 53, and `merge_serialized` checks that of what it reads), so per byte
/// `(a | 0x80) - b` never borrows from its neighbour and keeps its top bit exactly when
/// `a >= b`. The hot loop of `hll_merge`; written so it is fast without relying on the
/// optimiser to vectorise it.
fn max_registers(dst: &mut [u8], src: &[u8]) {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let (dst, _) = dst.as_chunks_mut::<8>();
    let (src, _) = src.as_chunks::<8>();
    for (d, s) in dst.iter_mut().zip(src) {
        let a = u64::from_le_bytes(*d);
        let b = u64::from_le_bytes(*s) & !HIGH;
        // The top byte of `a | HIGH` is at least 0x80 and that of `b` at most 0x7f: no
        // overflow, whatever the registers hold.
        let a_ge_b = ((a | HIGH) - b) & HIGH;
        let mask = (a_ge_b >> 7) * 0xff;
        *d = ((a & mask) | (b & !mask)).to_le_bytes();
    }
}

/// FNV-1a then the murmur3 finaliser: stable across runs and versions, which a sketch stored
/// in a table needs (std's hashers are seeded per process).
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
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
        // Ranks read from bytes are checked to be at most 51 first; saturating all the same.
        rank14.saturating_add(shift as u8)
    };
    (idx14 >> shift, rank)
}

const GAMMA: f64 = 1.02;
const INV_LN_GAMMA: f64 = 50.498_349_791_843_9; // 1 / ln(1.02)
/// Buckets beyond ±2,000 (values under 1e-17 or over 1e17) are counted in the last one: the
/// dense counts of a sketch stay under 32 KiB whatever a producer sends.
const MAX_BUCKET: i16 = 2_000;

/// Whole values below this have their bucket in a table.
const WHOLE_BUCKETS: usize = 1 << 16;

fn bucket_of(v: f64) -> i16 {
    (v.ln() * INV_LN_GAMMA).ceil().clamp(-30_000.0, 30_000.0) as i16
}

/// The bucket of each whole value below `WHOLE_BUCKETS` (index 0 unused: zero is not a bucket).
fn whole_buckets() -> &'static [i16] {
    static TABLE: std::sync::OnceLock<Vec<i16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..WHOLE_BUCKETS)
            .map(|v| bucket_of(v.max(1) as f64))
            .collect()
    })
}

/// Counts of values per log bucket (bucket i holds values in (GAMMA^(i-1), GAMMA^i]); zero and
/// negatives go to bucket `i16::MIN`. The counts are dense from the lowest bucket seen to the
/// highest (a day of latencies spans a few hundred buckets), so adding a value is an index, not
/// a search.
#[derive(Debug, Clone, Default)]
pub struct LatencySketch {
    /// Values at or below zero.
    zeros: u64,
    /// The bucket of `counts[0]`.
    base: i16,
    counts: Vec<u64>,
}

/// Equal when they hold the same counts (whatever the extent of their dense arrays).
impl PartialEq for LatencySketch {
    fn eq(&self, other: &Self) -> bool {
        self.buckets().eq(other.buckets())
    }
}

impl LatencySketch {
    pub fn insert(&mut self, v: f64) {
        if v <= 0.0 || v.is_nan() {
            self.zeros = self.zeros.saturating_add(1);
            return;
        }
        // Latencies are whole milliseconds: their buckets come from a table, computed once
        // with the same formula (a logarithm per value was a fifth of the ai_usage rollup).
        let idx = if v < WHOLE_BUCKETS as f64 && v.fract() == 0.0 {
            whole_buckets()[v as usize]
        } else {
            bucket_of(v)
        };
        self.add(idx, 1);
    }

    /// Counts saturate: one sketch read from bytes never counts past `u64::MAX`
    /// (`merge_serialized` checks), but a merge of several such sketches could.
    fn add(&mut self, idx: i16, n: u64) {
        if idx == i16::MIN {
            self.zeros = self.zeros.saturating_add(n);
            return;
        }
        let idx = idx.clamp(-MAX_BUCKET, MAX_BUCKET);
        if self.counts.is_empty() {
            self.base = idx;
            self.counts.push(n);
            return;
        }
        if idx < self.base {
            let grow = (self.base - idx) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.base = idx;
        }
        let at = (idx - self.base) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] = self.counts[at].saturating_add(n);
    }

    /// Non-empty buckets in order, the zero bucket first.
    fn buckets(&self) -> impl Iterator<Item = (i16, u64)> + '_ {
        (self.zeros > 0)
            .then_some((i16::MIN, self.zeros))
            .into_iter()
            .chain(
                self.counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(i, &c)| (self.base + i as i16, c)),
            )
    }

    pub fn merge(&mut self, other: &Self) {
        for (i, c) in other.buckets() {
            self.add(i, c);
        }
    }

    /// The number of values (at most `u64::MAX`: counts saturate).
    pub fn count(&self) -> u64 {
        self.counts
            .iter()
            .fold(self.zeros, |total, &c| total.saturating_add(c))
    }

    /// The value at quantile `q` (0..=1), within 1% relative error; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // `n as f64` may round up past `n` (near 2^64): the rank never exceeds the count.
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        // Saturating in the order `count` adds: the last bucket reaches `n`, so `rank`.
        let mut seen = 0u64;
        for (i, c) in self.buckets() {
            seen = seen.saturating_add(c);
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
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for (i, c) in self.buckets() {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, NotASketch> {
        let mut s = Self::default();
        s.merge_serialized(b)?;
        Ok(s)
    }

    /// `(i16 bucket, u64 count)*`, little-endian. Buckets past ±`MAX_BUCKET` go to the last
    /// one, as when inserting. The bytes are checked whole before any count changes, so on an
    /// error this sketch is as it was.
    pub fn merge_serialized(&mut self, b: &[u8]) -> Result<(), NotASketch> {
        let (buckets, rest) = b.as_chunks::<10>();
        if !rest.is_empty() {
            return Err(NotASketch::latency(format!(
                "a sketch is 10-byte buckets, and {} bytes is not a whole number of them",
                b.len()
            )));
        }
        buckets
            .iter()
            .try_fold(0u64, |total, &[_, _, n @ ..]| {
                total.checked_add(u64::from_le_bytes(n))
            })
            .ok_or_else(|| NotASketch::latency("its counts add up past 2^64 values"))?;
        for &[lo, hi, n @ ..] in buckets {
            let n = u64::from_le_bytes(n);
            // An empty bucket is never written; reading one would only widen the dense array.
            if n > 0 {
                self.add(i16::from_le_bytes([lo, hi]), n);
            }
        }
        Ok(())
    }
}

/// What an aggregate builds from its input: raw values (each first turned into an `Item`) or
/// serialized sketches.
trait Sketch: Default + Send + Sync + std::fmt::Debug + 'static {
    type Item: Copy;
    /// The type a non-native input is cast to.
    const INPUT: DataType;
    /// Calls `f(row, item)` for each non-null value.
    fn for_each_item(
        values: &ArrayRef,
        f: impl FnMut(usize, Self::Item) -> DfResult<()>,
    ) -> DfResult<()>;
    fn add_item(&mut self, item: Self::Item);
    /// Merges a serialized sketch; on an error the sketch is as it was.
    fn merge_bytes(&mut self, b: &[u8]) -> Result<(), NotASketch>;
    fn write_bytes(&self, out: &mut Vec<u8>);
    fn heap_size(&self) -> usize;

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_bytes(&mut out);
        out
    }
}

impl Sketch for Hll {
    type Item = u64;
    const INPUT: DataType = DataType::Utf8;
    fn for_each_item(
        values: &ArrayRef,
        mut f: impl FnMut(usize, u64) -> DfResult<()>,
    ) -> DfResult<()> {
        for_each_bytes(values, &DataType::Utf8, |row, v| f(row, hash64(v)))
    }
    fn add_item(&mut self, h: u64) {
        self.insert_hash(h);
    }
    fn merge_bytes(&mut self, b: &[u8]) -> Result<(), NotASketch> {
        self.merge_serialized(b)
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        self.write_to(out)
    }
    fn heap_size(&self) -> usize {
        self.heap_bytes()
    }
}

impl Sketch for LatencySketch {
    type Item = f64;
    const INPUT: DataType = DataType::Float64;
    fn for_each_item(
        values: &ArrayRef,
        mut f: impl FnMut(usize, f64) -> DfResult<()>,
    ) -> DfResult<()> {
        let values = arrow::compute::cast(values, &DataType::Float64)?;
        let values = as_float64(&values)?;
        for (row, v) in values.iter().enumerate() {
            if let Some(v) = v {
                f(row, v)?;
            }
        }
        Ok(())
    }
    fn add_item(&mut self, v: f64) {
        self.insert(v);
    }
    fn merge_bytes(&mut self, b: &[u8]) -> Result<(), NotASketch> {
        self.merge_serialized(b)
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        self.write_to(out)
    }
    fn heap_size(&self) -> usize {
        self.counts.capacity() * 8
    }
}

/// Accumulates raw values (`from_values`) or serialized sketches into one sketch.
#[derive(Debug, Default)]
struct SketchAccumulator<S: Sketch> {
    /// The SQL function, for errors.
    name: &'static str,
    sketch: S,
    from_values: bool,
}

impl<S: Sketch> Accumulator for SketchAccumulator<S> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if self.from_values {
            let sketch = &mut self.sketch;
            S::for_each_item(&values[0], |_, item| {
                sketch.add_item(item);
                Ok(())
            })
        } else {
            merge_binary(self.name, &mut self.sketch, &values[0])
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
        merge_binary(self.name, &mut self.sketch, &states[0])
    }
}

fn merge_binary<S: Sketch>(name: &str, sketch: &mut S, arr: &ArrayRef) -> DfResult<()> {
    for_each_bytes(arr, &DataType::Binary, |_, b| {
        sketch.merge_bytes(b).map_err(|e| e.in_function(name))
    })
}

/// A `Float64` array as such (what a cast to `Float64` returns).
fn as_float64(arr: &ArrayRef) -> DfResult<&Float64Array> {
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

/// A sketch aggregate over all groups of a GROUP BY at once: one sketch per group in a `Vec`
/// indexed by group, instead of a boxed accumulator per group. This is what makes the per-day x
/// item rollup (millions of groups, most with one or two visitors) cheap.
#[derive(Debug)]
struct SketchGroups<S: Sketch> {
    /// The SQL function, for errors.
    name: &'static str,
    from_values: bool,
    groups: Vec<S>,
    /// Heap bytes held by the sketches, kept up to date per row so `size` is O(1).
    heap: usize,
}

impl<S: Sketch> SketchGroups<S> {
    fn new(name: &'static str, from_values: bool) -> Self {
        Self {
            name,
            from_values,
            groups: Vec::new(),
            heap: 0,
        }
    }

    fn apply(
        &mut self,
        values: &ArrayRef,
        group_indices: &[usize],
        filter: Option<&arrow::array::BooleanArray>,
        total_num_groups: usize,
        from_values: bool,
    ) -> DfResult<()> {
        self.groups.resize_with(total_num_groups, S::default);
        let (name, groups, heap) = (self.name, &mut self.groups, &mut self.heap);
        let keep = |row: usize| !filtered_out(filter, row);
        if from_values {
            S::for_each_item(values, |row, item| {
                if keep(row) {
                    let g = &mut groups[group_indices[row]];
                    let before = g.heap_size();
                    g.add_item(item);
                    *heap = *heap + g.heap_size() - before;
                }
                Ok(())
            })
        } else {
            for_each_bytes(values, &DataType::Binary, |row, b| {
                if keep(row) {
                    let g = &mut groups[group_indices[row]];
                    let before = g.heap_size();
                    g.merge_bytes(b).map_err(|e| e.in_function(name))?;
                    *heap = *heap + g.heap_size() - before;
                }
                Ok(())
            })
        }
    }
}

impl<S: Sketch> GroupsAccumulator for SketchGroups<S> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&arrow::array::BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let from_values = self.from_values;
        self.apply(
            &values[0],
            group_indices,
            opt_filter,
            total_num_groups,
            from_values,
        )
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.apply(&values[0], group_indices, None, total_num_groups, false)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.groups);
        let mut out = BinaryBuilder::with_capacity(taken.len(), taken.len() * 8);
        let mut buf = Vec::new();
        for s in &taken {
            self.heap -= s.heap_size();
            buf.clear();
            s.write_bytes(&mut buf);
            out.append_value(&buf);
        }
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    /// Skipping the partial aggregation (most day x item x visitor groups hold one row): each
    /// value becomes a sketch of one value, each input sketch passes through.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&arrow::array::BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        let arr = &values[0];
        let mut states = RowStates::new(arr.len(), 4, opt_filter);
        if self.from_values {
            let mut buf = Vec::new();
            S::for_each_item(arr, |row, item| {
                let mut s = S::default();
                s.add_item(item);
                buf.clear();
                s.write_bytes(&mut buf);
                states.push(row, &buf);
                Ok(())
            })?;
        } else {
            for_each_bytes(arr, &DataType::Binary, |row, b| {
                states.push(row, b);
                Ok(())
            })?;
        }
        Ok(vec![states.finish(arr.len())])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<S>() + self.heap
    }
}

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
        Ok(Box::new(SketchAccumulator::<S> {
            name: self.name,
            sketch: S::default(),
            from_values: self.from_values,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            true,
        ))])
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

/// Registers `hll_sketch(text)`, `hll_merge(sketch)`, `hll_count(sketch)`,
/// `latency_sketch(number)`, `latency_merge(sketch)` and `latency_quantile(sketch, q)`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(SketchUdaf::<Hll>::new(
        "hll_sketch",
        true,
    )));
    ctx.register_udaf(AggregateUDF::from(SketchUdaf::<Hll>::new(
        "hll_merge",
        false,
    )));
    ctx.register_udaf(AggregateUDF::from(
        crate::distinct::DistinctSketchUdaf::new(),
    ));
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
fn hll_count(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
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
fn latency_quantile(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
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
    fn whole_latencies_land_in_the_bucket_the_formula_gives() {
        for v in (1..70_000u32)
            .map(f64::from)
            .chain([0.5, 1.5, 65_535.5, 1e9])
        {
            let mut s = LatencySketch::default();
            s.insert(v);
            assert_eq!(s.base, bucket_of(v).clamp(-MAX_BUCKET, MAX_BUCKET), "{v}");
        }
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

    #[test]
    fn groups_accumulator_matches_one_sketch_per_group() {
        use arrow::array::{BooleanArray, StringArray, StringViewArray};
        let values: Vec<Option<String>> = (0..3000)
            .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 1000)))
            .collect();
        let groups: Vec<usize> = (0..3000).map(|i| i % 3).collect();
        let mut expected = vec![Hll::default(), Hll::default(), Hll::default()];
        for (v, &g) in values.iter().zip(&groups) {
            if let Some(v) = v {
                expected[g].insert(v.as_bytes());
            }
        }
        // Raw values, in two batches of two layouts, then emitted first 1 then the rest.
        let (a, b) = values.split_at(1500);
        let a: ArrayRef = Arc::new(StringArray::from(a.to_vec()));
        let b: ArrayRef = Arc::new(StringViewArray::from(b.to_vec()));
        let mut acc = SketchGroups::<Hll>::new("hll_sketch", true);
        acc.update_batch(std::slice::from_ref(&a), &groups[..1500], None, 3)
            .unwrap();
        acc.update_batch(std::slice::from_ref(&b), &groups[1500..], None, 3)
            .unwrap();
        assert!(acc.size() > 0);
        let first = acc.evaluate(EmitTo::First(1)).unwrap();
        let rest = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(rest.len(), 2);
        assert_eq!(acc.heap, 0);
        let got: Vec<&[u8]> = first
            .as_binary::<i32>()
            .iter()
            .chain(rest.as_binary::<i32>().iter())
            .map(Option::unwrap)
            .collect();
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(*g, e.to_bytes().as_slice());
        }

        // Skipped partial aggregation: states per row, merged by a final accumulator.
        let mut fin = SketchGroups::<Hll>::new("hll_merge", false);
        for (arr, gi) in [(&a, &groups[..1500]), (&b, &groups[1500..])] {
            let state = acc
                .convert_to_state(std::slice::from_ref(arr), None)
                .unwrap();
            assert_eq!(state[0].len(), arr.len());
            assert_eq!(state[0].null_count(), arr.null_count());
            fin.merge_batch(&state, gi, 3).unwrap();
        }
        let merged = fin.evaluate(EmitTo::All).unwrap();
        for (g, e) in merged.as_binary::<i32>().iter().zip(&expected) {
            assert_eq!(g.unwrap(), e.to_bytes().as_slice());
        }

        // A FILTER clause: rows whose filter is false or null are left out.
        let filter = BooleanArray::from(
            (0..1500)
                .map(|i| (i % 5 != 0).then_some(i % 2 == 0))
                .collect::<Vec<_>>(),
        );
        let mut filtered = SketchGroups::<Hll>::new("hll_sketch", true);
        filtered
            .update_batch(std::slice::from_ref(&a), &groups[..1500], Some(&filter), 3)
            .unwrap();
        let mut want = vec![Hll::default(), Hll::default(), Hll::default()];
        for (i, v) in values[..1500].iter().enumerate() {
            if let (Some(v), true) = (v, i % 5 != 0 && i % 2 == 0) {
                want[groups[i]].insert(v.as_bytes());
            }
        }
        let out = filtered.evaluate(EmitTo::All).unwrap();
        for (g, e) in out.as_binary::<i32>().iter().zip(&want) {
            assert_eq!(g.unwrap(), e.to_bytes().as_slice());
        }
    }

    #[test]
    fn register_max_eight_at_a_time() {
        let a: Vec<u8> = (0..4096).map(|i| ((i * 7) % 54) as u8).collect();
        let b: Vec<u8> = (0..4096).map(|i| ((i * 13 + 5) % 54) as u8).collect();
        let mut d = a.clone();
        max_registers(&mut d, &b);
        let want: Vec<u8> = a.iter().zip(&b).map(|(x, y)| *x.max(y)).collect();
        assert_eq!(d, want);
    }

    /// Any bytes a query passes where a sketch goes: an error that names the function and
    /// quotes nothing, never a panic, an overflow or an allocation the bytes size.
    mod malformed {
        use super::*;
        use arrow::array::BinaryArray;
        use arrow::datatypes::Int64Type;
        use arrow::record_batch::RecordBatch;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// An edit to a valid sketch's bytes; positions are taken modulo the length.
        #[derive(Debug, Clone)]
        enum Mutation {
            Flip { at: usize, bit: u8 },
            Set { at: usize, to: u8 },
            Truncate { at: usize },
            Extend(Vec<u8>),
            Remove { at: usize },
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
                (any::<usize>(), any::<u8>()).prop_map(|(at, to)| Mutation::Set { at, to }),
                any::<usize>().prop_map(|at| Mutation::Truncate { at }),
                vec(any::<u8>(), 1..32).prop_map(Mutation::Extend),
                any::<usize>().prop_map(|at| Mutation::Remove { at }),
            ]
        }

        fn mutate(mut b: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
            for m in mutations {
                let len = b.len();
                match m {
                    Mutation::Flip { at, bit } if len > 0 => b[at % len] ^= 1u8 << *bit,
                    Mutation::Set { at, to } if len > 0 => b[at % len] = *to,
                    Mutation::Truncate { at } => b.truncate(at % (len + 1)),
                    Mutation::Extend(more) => b.extend_from_slice(more),
                    Mutation::Remove { at } if len > 0 => {
                        b.remove(at % len);
                    }
                    _ => {}
                }
            }
            b
        }

        /// Plain noise: mostly short, sometimes up to 64 KiB.
        fn noise() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                3 => vec(any::<u8>(), 0..64),
                1 => vec(any::<u8>(), 0..65_536),
            ]
        }

        fn with_tag(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut b = Vec::with_capacity(body.len() + 1);
            b.push(tag);
            b.extend_from_slice(body);
            b
        }

        fn sparse_entry(registers: usize, max_rank: u8) -> impl Strategy<Value = [u8; 3]> {
            // `registers` is 4,096 or 16,384: it fits a u16.
            (0..registers as u16, 0..=max_rank).prop_map(|(i, rank)| {
                let [lo, hi] = i.to_le_bytes();
                [lo, hi, rank]
            })
        }

        /// Valid bytes of each HLL encoding.
        fn hll_valid() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(0..=MAX_RANK, M).prop_map(|r| with_tag(TAG_DENSE, &r)),
                vec(0..=OLD_MAX_RANK, OLD_M).prop_map(|r| with_tag(TAG_OLD_DENSE, &r)),
                vec(sparse_entry(M, MAX_RANK), 0..600)
                    .prop_map(|e| with_tag(TAG_SPARSE, &e.concat())),
                vec(sparse_entry(OLD_M, OLD_MAX_RANK), 0..600)
                    .prop_map(|e| with_tag(TAG_OLD_SPARSE, &e.concat())),
                vec(any::<u64>(), 0..600).prop_map(|hashes| {
                    let mut h = Hll::default();
                    hashes.into_iter().for_each(|x| h.insert_hash(x));
                    h.to_bytes()
                }),
            ]
        }

        /// Noise, a known tag before noise, and valid sketches with a few edits (or none).
        fn hll_like() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                1 => noise(),
                1 => (0..=4u8, vec(any::<u8>(), 0..64)).prop_map(|(t, b)| with_tag(t, &b)),
                4 => (hll_valid(), vec(mutation(), 0..4)).prop_map(|(b, m)| mutate(b, &m)),
            ]
        }

        fn latency_value() -> impl Strategy<Value = f64> {
            prop_oneof![
                0.0..1e5f64,
                (0..70_000u32).prop_map(f64::from),
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(-1.0),
            ]
        }

        /// Valid latency sketches, and `(bucket, count)` lists with buckets past the range
        /// and counts up to `u64::MAX` (which add up past it).
        fn latency_shaped() -> impl Strategy<Value = Vec<u8>> {
            let bucket = prop_oneof![-2_100..=2_100i16, Just(i16::MIN), any::<i16>()];
            let count = prop_oneof![
                8 => 1..1_000u64,
                1 => any::<u64>(),
                1 => Just(u64::MAX),
                1 => Just(0u64),
            ];
            prop_oneof![
                vec(latency_value(), 0..400).prop_map(|values| {
                    let mut s = LatencySketch::default();
                    values.into_iter().for_each(|v| s.insert(v));
                    s.to_bytes()
                }),
                vec((bucket, count), 0..400).prop_map(|buckets| {
                    buckets
                        .into_iter()
                        .flat_map(|(i, n)| i.to_le_bytes().into_iter().chain(n.to_le_bytes()))
                        .collect::<Vec<u8>>()
                }),
            ]
        }

        fn latency_like() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                1 => noise(),
                3 => (latency_shaped(), vec(mutation(), 0..4)).prop_map(|(b, m)| mutate(b, &m)),
            ]
        }

        /// The error names the function and does not quote the bytes (in any form: it is short).
        fn clean_error(e: &DataFusionError, function: &str, b: &[u8]) -> Result<(), TestCaseError> {
            let msg = e.to_string();
            prop_assert!(msg.contains(&format!("{function}: ")), "{}", msg);
            prop_assert!(msg.len() < 300, "{}", msg);
            // Long enough that its hex in the message would be no coincidence.
            if b.len() >= 8 {
                prop_assert!(
                    !msg.to_ascii_lowercase().contains(&hex::encode(b)),
                    "{}",
                    msg
                );
            }
            Ok(())
        }

        /// `hll_merge` as DataFusion runs it: with and without GROUP BY, bad rows leaving the
        /// groups as they were (so emitting them after the error is fine).
        fn merge_aggregates<S: Sketch>(
            name: &'static str,
            valid_row: &[u8],
            b: &[u8],
        ) -> Result<(), TestCaseError> {
            let column: ArrayRef =
                Arc::new(BinaryArray::from(vec![Some(b), None, Some(valid_row)]));
            let mut groups = SketchGroups::<S>::new(name, false);
            if let Err(e) = groups.update_batch(std::slice::from_ref(&column), &[0, 1, 1], None, 2)
            {
                clean_error(&e, name, b)?;
            }
            prop_assert_eq!(groups.evaluate(EmitTo::All)?.len(), 2);
            prop_assert_eq!(groups.heap, 0);
            let mut one = SketchAccumulator::<S> {
                name,
                sketch: S::default(),
                from_values: false,
            };
            if let Err(e) = one.update_batch(std::slice::from_ref(&column)) {
                clean_error(&e, name, b)?;
            }
            if let Err(e) = one.merge_batch(std::slice::from_ref(&column)) {
                clean_error(&e, name, b)?;
            }
            one.evaluate()?;
            Ok(())
        }

        fn check_hll(b: &[u8]) -> Result<(), TestCaseError> {
            match Hll::from_bytes(b) {
                Ok(h) => {
                    // What is read writes back readable, and holds only real registers.
                    prop_assert_eq!(Hll::from_bytes(&h.to_bytes()), Ok(h.clone()));
                    match &h {
                        Hll::Dense(d) => {
                            prop_assert_eq!(d.len(), M);
                            prop_assert!(d.iter().all(|&r| r <= MAX_RANK));
                        }
                        Hll::Sparse(s) => {
                            let valid = s.iter().all(|&e| {
                                (e >> 8) < M as u32 && (1..=MAX_RANK).contains(&(e as u8))
                            });
                            prop_assert!(valid)
                        }
                    }
                    h.estimate();
                }
                Err(e) => clean_error(&e.in_function("hll_merge"), "hll_merge", b)?,
            }
            // Into a sparse and a dense sketch: merged, or left as it was.
            let mut sparse = Hll::default();
            sparse.insert(b"a");
            let mut dense = Hll::default();
            (0..2_000u32).for_each(|i| dense.insert(&i.to_le_bytes()));
            for mut base in [sparse, dense] {
                let before = base.clone();
                match base.merge_serialized(b) {
                    Ok(()) => {
                        base.estimate();
                    }
                    Err(_) => prop_assert_eq!(&base, &before),
                }
            }
            let arg = ColumnarValue::Scalar(ScalarValue::Binary(Some(b.to_vec())));
            if let Err(e) = hll_count(&[arg]) {
                clean_error(&e, "hll_count", b)?;
            }
            merge_aggregates::<Hll>("hll_merge", &[TAG_SPARSE], b)
        }

        fn check_latency(b: &[u8]) -> Result<(), TestCaseError> {
            match LatencySketch::from_bytes(b) {
                Ok(s) => {
                    prop_assert_eq!(LatencySketch::from_bytes(&s.to_bytes()), Ok(s.clone()));
                    prop_assert!(s.counts.len() <= 2 * MAX_BUCKET as usize + 1);
                    s.count();
                    for q in [0.0, 0.5, 1.0] {
                        prop_assert_eq!(s.quantile(q).is_some(), s.count() > 0);
                    }
                }
                Err(e) => clean_error(&e.in_function("latency_merge"), "latency_merge", b)?,
            }
            // Into a sketch that is nearly full: merged (counts saturate), or left as it was.
            let mut full = LatencySketch::default();
            full.add(0, u64::MAX - 1);
            full.insert(0.0);
            for mut base in [LatencySketch::default(), full] {
                let before = base.clone();
                match base.merge_serialized(b) {
                    Ok(()) => {
                        base.count();
                        base.quantile(0.99);
                    }
                    Err(_) => prop_assert_eq!(&base, &before),
                }
            }
            let args = [
                ColumnarValue::Scalar(ScalarValue::Binary(Some(b.to_vec()))),
                ColumnarValue::Scalar(ScalarValue::Float64(Some(0.5))),
            ];
            if let Err(e) = latency_quantile(&args) {
                clean_error(&e, "latency_quantile", b)?;
            }
            merge_aggregates::<LatencySketch>("latency_merge", &[], b)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn hll_bytes_never_panic(b in hll_like()) {
                check_hll(&b)?;
            }

            #[test]
            fn latency_bytes_never_panic(b in latency_like()) {
                check_latency(&b)?;
            }

            #[test]
            fn quantile_must_be_between_0_and_1(
                q in prop_oneof![
                    any::<f64>(),
                    -0.5..1.5f64,
                    Just(f64::NAN),
                    Just(f64::INFINITY),
                    Just(f64::NEG_INFINITY),
                    Just(0.0),
                    Just(-0.0),
                    Just(1.0),
                    Just(1.0 + f64::EPSILON),
                ]
            ) {
                let mut s = LatencySketch::default();
                (1..=100).for_each(|v| s.insert(f64::from(v)));
                let args = [
                    ColumnarValue::Scalar(ScalarValue::Binary(Some(s.to_bytes()))),
                    ColumnarValue::Scalar(ScalarValue::Float64(Some(q))),
                ];
                match latency_quantile(&args) {
                    Ok(ColumnarValue::Array(a)) => {
                        prop_assert!((0.0..=1.0).contains(&q), "{}", q);
                        let v = a.as_primitive::<Float64Type>().value(0);
                        prop_assert!((0.9..=102.0).contains(&v), "q={} v={}", q, v);
                    }
                    Ok(ColumnarValue::Scalar(v)) => {
                        return Err(TestCaseError::fail(format!("a scalar, not an array: {v}")));
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        prop_assert!(!(0.0..=1.0).contains(&q), "{}", q);
                        prop_assert!(
                            msg.contains("latency_quantile: the quantile must be between 0 and 1"),
                            "{}",
                            msg
                        );
                    }
                }
            }
        }

        async fn run(ctx: &SessionContext, sql: &str) -> DfResult<Vec<RecordBatch>> {
            ctx.sql(sql).await?.collect().await
        }

        #[tokio::test]
        async fn corrupt_literals_in_sql_are_errors_that_do_not_quote_them() {
            let ctx = SessionContext::new();
            register(&ctx);
            // Valid sketches answer, so the errors below are about the bytes: register 1 at
            // rank 42, and one value in bucket 0 (values in (1/1.02, 1]).
            let one = "X'00000100000000000000'";
            let valid = run(
                &ctx,
                &format!("SELECT hll_count(X'0301002A'), latency_quantile({one}, 0.5)"),
            )
            .await
            .unwrap();
            assert_eq!(valid[0].column(0).as_primitive::<Int64Type>().value(0), 1);
            let median = valid[0].column(1).as_primitive::<Float64Type>().value(0);
            assert!((median - 0.99).abs() < 0.01, "{median}");

            let hll = "the argument is not a Strata HLL sketch (";
            let latency = "the argument is not a Strata latency sketch (";
            let quantile = "latency_quantile: the quantile must be between 0 and 1";
            let cases = [
                (
                    "SELECT hll_count(X'00')".to_string(),
                    "00",
                    format!("hll_count: {hll}"),
                ),
                (
                    "SELECT hll_count(X'FFFFFFFF')".to_string(),
                    "ffffffff",
                    format!("hll_count: {hll}"),
                ),
                // Tag 2 (dense) with 2 registers; tag 3 (sparse) with an index past 4,095, a
                // rank past 53, a cut entry.
                (
                    "SELECT hll_count(X'02FFFF')".to_string(),
                    "02ffff",
                    format!("hll_count: {hll}"),
                ),
                (
                    "SELECT hll_count(X'03FFFF01')".to_string(),
                    "03ffff01",
                    format!("hll_count: {hll}"),
                ),
                (
                    "SELECT hll_count(X'03010036')".to_string(),
                    "03010036",
                    format!("hll_count: {hll}"),
                ),
                (
                    "SELECT hll_count(X'0301000102')".to_string(),
                    "0301000102",
                    format!("hll_count: {hll}"),
                ),
                (
                    "SELECT latency_quantile(X'0102030405', 0.5)".to_string(),
                    "0102030405",
                    format!("latency_quantile: {latency}"),
                ),
                // Two buckets of u64::MAX values each.
                (
                    "SELECT latency_quantile(\
                     X'0000FFFFFFFFFFFFFFFF0100FFFFFFFFFFFFFFFF', 0.5)"
                        .to_string(),
                    "0000ffffffffffffffff0100ffffffffffffffff",
                    format!("latency_quantile: {latency}"),
                ),
                (
                    format!("SELECT latency_quantile({one}, 1.5)"),
                    "",
                    quantile.to_string(),
                ),
                (
                    format!("SELECT latency_quantile({one}, -0.1)"),
                    "",
                    quantile.to_string(),
                ),
                (
                    format!("SELECT latency_quantile({one}, CAST('NaN' AS DOUBLE))"),
                    "",
                    quantile.to_string(),
                ),
                (
                    "SELECT hll_count(hll_merge(s)) FROM (VALUES (X'03'), (X'03FFFF01')) AS t(s)"
                        .to_string(),
                    "03ffff01",
                    format!("hll_merge: {hll}"),
                ),
                (
                    "SELECT g, hll_count(hll_merge(s)) \
                     FROM (VALUES (1, X'03'), (2, X'02FFFF')) AS t(g, s) GROUP BY g"
                        .to_string(),
                    "02ffff",
                    format!("hll_merge: {hll}"),
                ),
                (
                    format!(
                        "SELECT latency_quantile(latency_merge(s), 0.5) \
                         FROM (VALUES ({one}), (X'0102030405')) AS t(s)"
                    ),
                    "0102030405",
                    format!("latency_merge: {latency}"),
                ),
            ];
            for (sql, input, want) in cases {
                let err = run(&ctx, &sql).await.expect_err(&sql).to_string();
                assert!(err.contains(&want), "{sql}: {err}");
                assert!(
                    input.is_empty() || !err.to_ascii_lowercase().contains(input),
                    "{sql}: {err}"
                );
            }
        }
    }
}
