use std::path::Path;
use std::sync::Arc;

use strata_engine::{Catalog, EventTable, RollupBuilder, Storage, TableSpec};
use strata_schemas::{EventDecoder, EventKind, RawMessage};

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub storage: Storage,
    pub catalog: Arc<Catalog>,
}

pub fn data(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Appends JSON lines of one kind as one commit; offsets continue from `first_offset`.
pub async fn append(storage: &Storage, kind: EventKind, jsonl: &str, first_offset: i64) {
    let lines: Vec<&str> = jsonl.lines().filter(|l| !l.trim().is_empty()).collect();
    let raw = RawMessage::sequence(&lines, 0, first_offset);
    let decoded = EventDecoder::new(kind)
        .decode(&raw, 1_800_000_000_000_000)
        .unwrap();
    assert!(
        decoded.rejects.is_empty(),
        "fixture rejects: {:?}",
        decoded.rejects
    );
    let mut table = EventTable::open_or_create(storage, TableSpec::for_events(kind))
        .await
        .unwrap();
    table.append(&[decoded.batch], &[]).await.unwrap();
}

/// These events in a fresh root (one commit per kind, offsets from 0), with the rollups run.
pub async fn root_with(events: &[(EventKind, &str)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_dir(dir.path()).await.unwrap();
    for (kind, jsonl) in events {
        append(&storage, *kind, jsonl, 0).await;
    }
    strata_engine::ensure_tables(&storage).await.unwrap();
    let catalog = Catalog::open(&storage).await.unwrap();
    RollupBuilder::new(catalog.clone()).run().await.unwrap();
    Fixture {
        _dir: dir,
        storage,
        catalog,
    }
}

/// The fixture events in a fresh root, with the rollups run.
pub async fn fixture() -> Fixture {
    root_with(&[
        (EventKind::LinkClick, &data("link_clicks.jsonl")),
        (EventKind::AiUsage, &data("ai_usage.jsonl")),
    ])
    .await
}
