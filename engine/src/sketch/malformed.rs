//! Any bytes a query passes where a sketch goes: an error that names the function and quotes
//! nothing, never a panic, an overflow or an allocation the bytes size. These tests cross the
//! whole module (byte decoders, accumulators, scalar functions, SQL), so they sit beside it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{Accumulator, ColumnarValue, EmitTo, GroupsAccumulator};
use datafusion::prelude::SessionContext;
use proptest::collection::vec;
use proptest::prelude::*;

use super::accumulator::{Sketch, SketchAccumulator, SketchGroups};
use super::functions::{hll_count, latency_quantile};
use super::hll::{
    M, MAX_RANK, OLD_M, OLD_MAX_RANK, TAG_DENSE, TAG_OLD_DENSE, TAG_OLD_SPARSE, TAG_SPARSE,
};
use super::latency::MAX_BUCKET;
use super::{register, DfResult, Hll, LatencySketch};

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
        vec(sparse_entry(M, MAX_RANK), 0..600).prop_map(|e| with_tag(TAG_SPARSE, &e.concat())),
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
    let column: ArrayRef = Arc::new(BinaryArray::from(vec![Some(b), None, Some(valid_row)]));
    let mut groups = SketchGroups::<S>::new(name, false);
    if let Err(e) = groups.update_batch(std::slice::from_ref(&column), &[0, 1, 1], None, 2) {
        clean_error(&e, name, b)?;
    }
    prop_assert_eq!(groups.evaluate(EmitTo::All)?.len(), 2);
    prop_assert_eq!(groups.heap, 0);
    let mut one = SketchAccumulator::<S>::new(name, false);
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
                    let valid = s
                        .iter()
                        .all(|&e| (e >> 8) < M as u32 && (1..=MAX_RANK).contains(&(e as u8)));
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
