//! The latency sketch (counts per 2%-wide log bucket) and its byte format: what
//! `latency_sketch`, `latency_merge` and `latency_quantile` read and write.

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;

use super::accumulator::Sketch;
use super::columns::as_float64;
use super::{DfResult, NotASketch};

const GAMMA: f64 = 1.02;
const INV_LN_GAMMA: f64 = 50.498_349_791_843_9; // 1 / ln(1.02)
/// Buckets beyond ±2,000 (values under 1e-17 or over 1e17) are counted in the last one: the
/// dense counts of a sketch stay under 32 KiB whatever a producer sends.
pub(super) const MAX_BUCKET: i16 = 2_000;

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
    /// `pub(super)` for the malformed-bytes tests, which bound its length.
    pub(super) counts: Vec<u64>,
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
    pub(super) fn add(&mut self, idx: i16, n: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
