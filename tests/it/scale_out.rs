//! The scale-out path of docs/operations/scaling.md: three `strata ingest` in one consumer
//! group on one root share six partitions per topic; one is SIGKILLed mid-run and restarted
//! with its static `--group-instance-id`: it takes its own partitions back without a
//! rebalance, and every event is in the tables exactly once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::kafka_ingest::{assert_exactly_once, ingest, wait_complete};
use super::support::{
    commits, count, int, local_storage, produce, spawn, test_dir, wait_for, Proc, Tansu,
};

const GROUP: &str = "scale";
const MEMBERS: usize = 3;
const PARTITIONS: i32 = 6;
const SEED: u64 = 31;
const EVENTS: u64 = 150_000;
/// Small flushes: many commits, so that the kill lands between two of them.
const FLUSH_ROWS: usize = 2_000;
/// The member that is killed and restarted.
const VICTIM: usize = 1;
/// How long the broker keeps a member that stopped sending heartbeats. Longer than a restart
/// takes (tansu answers a static member's join and its sync after 3 s each), so that the
/// killed member, and the partitions it holds, are still there when it comes back.
const SESSION_TIMEOUT_MS: u32 = 30_000;
/// What ingest logs for each partition it is assigned, once it has read the table's offsets.
const STARTED: &str = "partition starts from the table's offsets";

/// Member `n` of the group: `strata ingest` with its own static `group.instance.id`.
fn member(brokers: &str, root: &Path, n: usize, log: &Path) -> Proc {
    let mut cmd = ingest(brokers, root, GROUP, FLUSH_ROWS);
    cmd.args(["--group-instance-id", &format!("{GROUP}-{n}")])
        .args([
            "--kafka-option",
            &format!("session.timeout.ms={SESSION_TIMEOUT_MS}"),
        ]);
    spawn(&mut cmd, &format!("ingest {n}"), log)
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The partitions of the last assignment the log shows (`Assigned([("clicks", 0), ...])`),
/// as `topic/partition`; None before the first one.
fn last_assignment(log: &Path) -> Option<BTreeSet<String>> {
    let text = log_text(log);
    let line = text.lines().rev().find(|l| l.contains("Assigned(["))?;
    let start = line.find("Assigned([")? + "Assigned([".len();
    let end = start + line[start..].find("])")?;
    Some(
        line[start..end]
            .split("), (")
            .map(|p| {
                p.trim_matches(|c| c == '(' || c == ')')
                    .replace(['"', ' '], "")
            })
            .filter(|p| !p.is_empty())
            .map(|p| p.replace(',', "/"))
            .collect(),
    )
}

/// How many times the log shows partitions taken away (a rebalance).
fn revocations(log: &Path) -> usize {
    log_text(log).matches("Revoked([").count()
}

#[test]
fn three_consumers_one_killed_and_restarted_with_its_instance_id_count_exactly_once() {
    let dir = test_dir();
    let root = dir.path().join("data");
    let kafka = Tansu::start(dir.path());
    // The topics first: ingest refuses to start without them.
    produce(&kafka.brokers, SEED, 0, PARTITIONS);
    let storage = local_storage(&root);
    let log = |n: usize, run: &str| -> PathBuf { dir.path().join(format!("ingest-{n}-{run}.log")) };
    let mut members: Vec<Option<Proc>> = (0..MEMBERS)
        .map(|n| Some(member(&kafka.brokers, &root, n, &log(n, "first"))))
        .collect();
    // The known events, produced while the group forms.
    let summary = produce(&kafka.brokers, SEED, EVENTS, PARTITIONS);

    // Each of the three holds some of the partitions and they commit.
    wait_for(
        "each member to be assigned partitions",
        Duration::from_secs(90),
        || {
            (0..MEMBERS).all(|n| {
                last_assignment(&log(n, "first")).is_some_and(|a| !a.is_empty())
                    && log_text(&log(n, "first")).contains(STARTED)
            })
        },
    );
    wait_for("the group to commit", Duration::from_secs(120), || {
        commits(&root, "link_clicks") >= 3
    });

    // SIGKILL one member mid-run: its buffered rows are lost, its partitions stall.
    let held = last_assignment(&log(VICTIM, "first")).unwrap();
    let others_revoked: Vec<usize> = (0..MEMBERS)
        .filter(|n| *n != VICTIM)
        .map(|n| revocations(&log(n, "first")))
        .collect();
    members[VICTIM].take().unwrap().kill9();
    let n = count(&storage, "SELECT count(*) AS n FROM link_clicks");
    assert!(
        n < int(&summary, "link_clicks"),
        "the kill happened mid-stream ({n} rows)"
    );

    // Restarted with the same instance id, it is the same member to the broker: it takes
    // back the partitions it held at once, without a rebalance and without the newcomer
    // restarts a dynamic member needs on tansu (see kafka_ingest.rs).
    let restarted_log = log(VICTIM, "restarted");
    let restarted = member(&kafka.brokers, &root, VICTIM, &restarted_log);
    wait_for(
        "the restarted member to take its partitions back",
        Duration::from_secs(60),
        || log_text(&restarted_log).contains(STARTED),
    );
    assert_eq!(
        last_assignment(&restarted_log),
        Some(held),
        "the restarted member holds what it held before the kill"
    );
    let still_revoked: Vec<usize> = (0..MEMBERS)
        .filter(|n| *n != VICTIM)
        .map(|n| revocations(&log(n, "first")))
        .collect();
    assert_eq!(
        still_revoked, others_revoked,
        "the other members kept their partitions (no rebalance)"
    );
    members[VICTIM] = Some(restarted);

    wait_complete(&storage, &summary);
    for (n, p) in members.into_iter().enumerate() {
        let (status, out) = p.expect("every member runs").stop();
        assert!(status.success(), "ingest {n} exits 0 on SIGTERM");
        assert!(
            out.contains("\"rows_committed\""),
            "ingest {n} prints its report: {out}"
        );
    }
    assert_exactly_once(&storage, &summary, SEED, EVENTS);
}
