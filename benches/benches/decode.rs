//! Decode + validate throughput of a flush-sized batch of generated messages.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_fixtures::{GenOptions, Generator, Kind};
use strata_schemas::{EventDecoder, EventKind, RawMessage};

fn messages(kind: Kind, n: u64, malformed_rate: f64) -> Vec<String> {
    Generator::new(GenOptions {
        events: n * 2,
        malformed_rate,
        ..GenOptions::default()
    })
    .filter(|m| m.kind == kind)
    .take(n as usize)
    .map(|m| m.payload)
    .collect()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_validate");
    for (name, kind, rate) in [
        ("link_clicks", Kind::LinkClick, 0.0),
        ("link_clicks_0.5pct_bad", Kind::LinkClick, 0.005),
        ("ai_usage", Kind::AiUsage, 0.0),
    ] {
        let payloads = messages(kind, 20_000, rate);
        let raw = RawMessage::sequence(&payloads, 0, 0);
        let decoder = EventDecoder::new(EventKind::from(kind));
        group.throughput(Throughput::Elements(raw.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &raw, |b, raw| {
            b.iter(|| decoder.decode(raw, 1_900_000_000_000_000).expect("decode"))
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
