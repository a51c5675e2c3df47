//! The same ingest against S3 (moto's server), with two writers committing concurrently.

use std::time::Duration;

use crate::support::*;

#[test]
fn ingest_to_s3_with_concurrent_writers() {
    let dir = test_dir();
    let kafka = Tansu::start(dir.path());
    let s3 = Moto::start(dir.path(), "strata");
    let (seed, events) = (13, 30_000);
    let summary = produce(&kafka.brokers, seed, events, 4);
    let mut storage = vec!["--storage-url".to_string(), "s3://strata/root".to_string()];
    storage.extend(s3.storage_args());

    let ingest = |name: &str| {
        let mut cmd = strata();
        cmd.args([
            "ingest",
            "--brokers",
            &kafka.brokers,
            "--group",
            "s3",
            "--flush-rows",
            "3000",
            "--flush-age-ms",
            "1000",
        ])
        .args(&storage);
        spawn(&mut cmd, name, &dir.path().join(format!("{name}.log")))
    };
    let a = ingest("a");
    let b = ingest("b");
    let want =
        int(&summary, "link_clicks") + int(&summary, "ai_usage") + int(&summary, "malformed");
    wait_for("the tables to exist", Duration::from_secs(60), || {
        let mut cmd = strata();
        cmd.args(["sql", "SHOW TABLES", "--format", "csv"])
            .args(&storage);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        ["link_clicks", "ai_usage", "dead_letters"]
            .iter()
            .all(|t| text.contains(t))
    });
    wait_for("all events in S3", Duration::from_secs(240), || {
        let n = |t: &str| {
            sql(&storage, &format!("SELECT count(*) AS n FROM {t}"))
                .first()
                .map(|r| int(r, "n"))
                .unwrap_or(0)
        };
        n("link_clicks") + n("ai_usage") + n("dead_letters") >= want
    });
    assert!(a.stop().0.success());
    assert!(b.stop().0.success());
    crate::kafka_ingest::assert_exactly_once(&storage, &summary, seed, events);
}
