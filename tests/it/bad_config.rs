//! Bad settings fail with a message that says what to fix, never a panic.

use crate::support::*;

fn assert_clear(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr should mention `{needle}`: {err}"
    );
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code 2 for a setting error"
    );
}

#[test]
fn unreachable_broker() {
    let dir = test_dir();
    let port = free_port();
    let out = run_err(
        strata()
            .args([
                "ingest",
                "--brokers",
                &format!("127.0.0.1:{port}"),
                "--storage-url",
            ])
            .arg(dir.path())
            .env("STRATA_LOG", "error"),
    );
    assert_clear(&out, "cannot reach Kafka");
    assert_clear(&out, "--brokers");
}

#[test]
fn unwritable_storage() {
    let dir = test_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = run_err(
        strata()
            .args(["ingest", "--brokers", "127.0.0.1:1", "--storage-url"])
            .arg(file.join("root")),
    );
    assert_clear(&out, "storage");
    let out = run_err(strata().args(["sql", "SELECT 1", "--storage-url", "ftp://nowhere/x"]));
    assert_clear(&out, "storage URL");
}

#[test]
fn unknown_topic() {
    let dir = test_dir();
    let kafka = Tansu::start(dir.path());
    produce(&kafka.brokers, 1, 10, 1);
    let out = run_err(
        strata()
            .args([
                "ingest",
                "--brokers",
                &kafka.brokers,
                "--click-topic",
                "no_such_topic",
                "--storage-url",
            ])
            .arg(dir.path().join("d")),
    );
    assert_clear(&out, "topic `no_such_topic` does not exist");
}

#[test]
fn bad_sql_and_bad_flags() {
    let dir = test_dir();
    let out = run_err(
        strata()
            .args(["sql", "SELEC nonsense", "--storage-url"])
            .arg(dir.path()),
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let out = run_err(
        strata()
            .args(["sql", "SELECT 1", "--format", "xml", "--storage-url"])
            .arg(dir.path()),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format"));
}
