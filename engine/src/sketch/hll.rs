//! The HyperLogLog sketch (precision 12) and its byte format: what `hll_sketch`, `hll_merge`,
//! `hll_count` and `distinct_sketch` read and write. Sketches of the older precision-14 format
//! are still read, folded down.

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;

use super::accumulator::Sketch;
use super::{for_each_bytes, DfResult, NotASketch};

const P: u32 = 12;
/// Sketches written before precision 12 (tags 0 and 1) are folded down when read.
const OLD_P: u32 = 14;
pub(super) const TAG_OLD_DENSE: u8 = 0;
pub(super) const TAG_OLD_SPARSE: u8 = 1;
pub(super) const TAG_DENSE: u8 = 2;
pub(super) const TAG_SPARSE: u8 = 3;
pub(super) const M: usize = 1 << P;
pub(super) const OLD_M: usize = 1 << OLD_P;
/// The highest rank a 64-bit hash gives at precision 12 (and at 14): a register read from bytes
/// above it means the bytes are not a sketch we wrote.
pub(super) const MAX_RANK: u8 = (64 - P + 1) as u8;
pub(super) const OLD_MAX_RANK: u8 = (64 - OLD_P + 1) as u8;
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

impl Sketch for Hll {
    type Item = u64;
    // A register keeps the highest rank it saw: any order gives the same sketch.
    const BUFFERED: bool = true;
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
    fn register_max_eight_at_a_time() {
        let a: Vec<u8> = (0..4096).map(|i| ((i * 7) % 54) as u8).collect();
        let b: Vec<u8> = (0..4096).map(|i| ((i * 13 + 5) % 54) as u8).collect();
        let mut d = a.clone();
        max_registers(&mut d, &b);
        let want: Vec<u8> = a.iter().zip(&b).map(|(x, y)| *x.max(y)).collect();
        assert_eq!(d, want);
    }
}
