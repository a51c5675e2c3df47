//! The generator file output and `strata sql` formats, without a broker.

use std::path::Path;

use crate::support::*;

/// `strata gen` of 3,000 events (seed 5) into the file `out`: the summary it prints.
fn gen_file(out: &Path) -> String {
    run_ok(
        strata()
            .args([
                "gen",
                "--seed",
                "5",
                "--events",
                "3000",
                "--end-date",
                "2026-11-01",
                "--out",
            ])
            .arg(out),
    )
}

#[test]
fn gen_file_is_reproducible_and_counts_add_up() {
    let dir = test_dir();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    let sa = gen_file(&a);
    let sb = gen_file(&b);
    assert_eq!(sa, sb);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let summary: serde_json::Value = serde_json::from_str(sa.trim()).unwrap();
    let lines = std::fs::read_to_string(&a).unwrap().lines().count() as u64;
    assert_eq!(lines, int(&summary, "messages"));
    assert_eq!(
        int(&summary, "link_clicks") + int(&summary, "ai_usage"),
        3000
    );
}

#[test]
fn sql_formats() {
    let dir = test_dir();
    let base = ["--storage-url", dir.path().to_str().unwrap()];
    let csv = run_ok(
        strata()
            .args(["sql", "SELECT 1 AS a, 'x' AS b", "--format", "csv"])
            .args(base),
    );
    assert_eq!(csv, "a,b\n1,x\n");
    let json = run_ok(
        strata()
            .args(["sql", "SELECT 1 AS a, 'x' AS b", "--format", "json"])
            .args(base),
    );
    assert_eq!(json.trim(), r#"{"a":1,"b":"x"}"#);
    let table = run_ok(strata().args(["sql", "SELECT 1 AS a"]).args(base));
    assert!(table.contains("| a |"), "{table}");
}
