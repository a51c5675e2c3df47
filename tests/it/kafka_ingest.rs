//! Exactly-once ingest from a real Kafka broker (tansu): crashes, rebalances, other readers.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use strata_fixtures::{GenOptions, Generator};

use crate::support::*;

pub fn ingest(brokers: &str, root: &Path, group: &str, flush_rows: usize) -> std::process::Command {
    let mut cmd = strata();
    cmd.args([
        "ingest",
        "--brokers",
        brokers,
        "--group",
        group,
        "--storage-url",
    ])
    .arg(root)
    .args([
        "--flush-rows",
        &flush_rows.to_string(),
        "--flush-age-ms",
        "1000",
    ]);
    cmd
}

/// Waits until the tables hold every distinct good event and every malformed message.
pub fn wait_complete(storage: &[String], summary: &Value) {
    let want = int(summary, "link_clicks") + int(summary, "ai_usage") + int(summary, "malformed");
    wait_for("all events committed", Duration::from_secs(240), || {
        let n = |t: &str| {
            sql(storage, &format!("SELECT count(*) AS n FROM {t}"))
                .first()
                .map(|r| int(r, "n"))
                .unwrap_or(0)
        };
        let have = n("link_clicks") + n("ai_usage") + n("dead_letters");
        assert!(
            have <= want,
            "more rows ({have}) than events ({want}): duplicates"
        );
        have == want
    });
}

/// Exactly-once: per table count(*) = count(DISTINCT event_id) = distinct good events, and
/// every malformed message is a dead letter, once, with its offset.
pub fn assert_exactly_once(storage: &[String], summary: &Value, seed: u64, events: u64) {
    for (table, key) in [("link_clicks", "link_clicks"), ("ai_usage", "ai_usage")] {
        let r = &sql(
            storage,
            &format!("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM {table}"),
        )[0];
        assert_eq!(int(r, "n"), int(summary, key), "{table} rows");
        assert_eq!(int(r, "d"), int(summary, key), "{table} distinct event ids");
    }
    let r = &sql(storage, "SELECT count(*) AS n, count(DISTINCT concat(topic, '/', CAST(\"partition\" AS VARCHAR), '/', CAST(\"offset\" AS VARCHAR))) AS d, count(\"offset\") AS o FROM dead_letters")[0];
    assert_eq!(int(r, "n"), int(summary, "malformed"), "dead letters");
    assert_eq!(
        int(r, "d"),
        int(summary, "malformed"),
        "dead letters are distinct by position"
    );
    assert_eq!(
        int(r, "o"),
        int(summary, "malformed"),
        "every dead letter has its offset"
    );

    // The dead letters are exactly the malformed messages the generator made.
    let expected: HashSet<String> = Generator::new(GenOptions {
        seed,
        events,
        end_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        ..GenOptions::default()
    })
    .filter(|m| m.malformed)
    .map(|m| m.payload)
    .collect();
    let got: HashSet<String> = sql(storage, "SELECT payload, reason FROM dead_letters")
        .into_iter()
        .map(|r| {
            assert!(!r["reason"].as_str().unwrap().is_empty());
            r["payload"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(got, expected, "dead-letter payloads");
}

#[test]
fn survives_sigkill_twice_and_counts_exactly_once() {
    let dir = test_dir();
    let root = dir.path().join("data");
    let kafka = Tansu::start(dir.path());
    let (seed, events) = (11, 200_000);
    let summary = produce(&kafka.brokers, seed, events, 4);
    assert!(
        int(&summary, "malformed") > 0 && int(&summary, "retries") > 0,
        "{summary}"
    );
    let storage = local_storage(&root);

    // Kill it twice while it is committing, each time after it made progress.
    for round in 0..2 {
        let before = commits(&root, "link_clicks");
        let p = spawn(
            &mut ingest(&kafka.brokers, &root, "crash", 12_000),
            "ingest",
            &dir.path().join(format!("ingest-{round}.log")),
        );
        wait_for("ingest to commit twice", Duration::from_secs(120), || {
            commits(&root, "link_clicks") >= before + 2
        });
        p.kill9();
    }
    let n = sql(&storage, "SELECT count(*) AS n FROM link_clicks")[0]["n"]
        .as_u64()
        .unwrap();
    assert!(
        n > 0 && n < int(&summary, "link_clicks"),
        "the kills happened mid-stream ({n} rows)"
    );

    // tansu keeps SIGKILLed members in the group; when it picks a dead one as the group's
    // leader, nobody hands out the assignment and the newcomer gets none. A real broker
    // expires them after session.timeout.ms. Restart the newcomer until it is assigned work
    // (its log says which partitions it took).
    let mut attempt = 0;
    let p = loop {
        let log = dir.path().join(format!("ingest-final-{attempt}.log"));
        let p = spawn(
            &mut ingest(&kafka.brokers, &root, "crash", 12_000),
            "ingest",
            &log,
        );
        let mut assigned = false;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("partition starts from the table's offsets") {
                assigned = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if assigned {
            break p;
        }
        attempt += 1;
        assert!(
            attempt < 5,
            "the restarted ingest was never assigned a partition"
        );
        p.stop();
    };
    wait_complete(&storage, &summary);
    let (status, out) = p.stop();
    assert!(status.success(), "ingest exits 0 on SIGTERM");
    assert!(
        out.contains("\"rows_committed\""),
        "prints its report: {out}"
    );
    assert_exactly_once(&storage, &summary, seed, events);

    // Another Delta reader (the Python deltalake package) sees the same tables.
    for (table, key) in [("link_clicks", "link_clicks"), ("ai_usage", "ai_usage")] {
        let out = python_ok(
            python_script("delta_read_check.py").arg(root.join("tables").join(table)),
            "python reader",
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            int(&r, "rows"),
            int(&summary, key),
            "python reader rows of {table}"
        );
        assert_eq!(int(&r, "distinct_event_ids"), int(&summary, key));
    }

    // No identifier reaches the Delta log (data-skipping stats exclude them).
    let logs = root.join("tables/link_clicks/_delta_log");
    for e in std::fs::read_dir(logs).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            for prefix in ["\\\"u-", "\\\"a-", "\\\"s-"] {
                assert!(
                    !text.contains(prefix),
                    "identifier value ({prefix}) in {}",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn rebalance_between_two_consumers_loses_and_duplicates_nothing() {
    let dir = test_dir();
    let root = dir.path().join("data");
    let kafka = Tansu::start(dir.path());
    let (seed, events) = (12, 150_000);
    let summary = produce(&kafka.brokers, seed, events, 4);
    let storage = local_storage(&root);

    let a = spawn(
        &mut ingest(&kafka.brokers, &root, "pair", 4_000),
        "ingest-a",
        &dir.path().join("a.log"),
    );
    let b = spawn(
        &mut ingest(&kafka.brokers, &root, "pair", 4_000),
        "ingest-b",
        &dir.path().join("b.log"),
    );
    wait_for("both consumers to commit", Duration::from_secs(120), || {
        commits(&root, "link_clicks") >= 4
    });
    // Stopped mid-stream: it commits what it holds and leaves the group; its partitions
    // move to `a`, which must continue exactly where the table says. (A SIGKILLed member is
    // covered by the crash test: tansu does not expire dead group members, so a killed
    // member's partitions would never move here.)
    let (status, _) = b.stop();
    assert!(status.success());
    let n = sql(&storage, "SELECT count(*) AS n FROM link_clicks")[0]["n"]
        .as_u64()
        .unwrap();
    assert!(
        n < int(&summary, "link_clicks"),
        "b stopped mid-stream ({n} rows)"
    );
    wait_complete(&storage, &summary);
    let (status, _) = a.stop();
    assert!(status.success());
    assert_exactly_once(&storage, &summary, seed, events);
}
