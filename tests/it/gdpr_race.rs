//! A purge while ingest runs at full speed: flushes filtered before the purge's tombstones
//! and committed after its rewrite must not bring the subject back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use super::gdpr_support::{click, dead_letters_of, purge_cli};
use super::support::{
    count, int, local_storage, produce, spawn, strata, test_dir, wait_for, Tansu,
};

const SUBJECT: &str = "u-gdpr-race";
const SENTINEL: &str = "u-race-sentinel";
/// The session of every event the race sends.
const SESSION: &str = "s-race";

pub fn ai_call(user: &str, occurred_at: chrono::DateTime<chrono::Utc>) -> String {
    json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": occurred_at.to_rfc3339(), "user_id": user, "session_id": SESSION,
        "feature": "search_answer", "provider": "openai", "model": "gpt-4.1-mini",
        "input_tokens": 120, "output_tokens": 30, "cost_usd": "0.000096000", "status": "ok",
        "latency_ms": 350
    })
    .to_string()
}

/// Sends, retrying while the client's queue is full (it drains as the broker acknowledges).
pub fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &str) {
    loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return,
            Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => panic!("producing: {e}"),
        }
    }
}

/// One round of traffic: the subject's events (valid ones, and malformed ones keyed by them or
/// naming them), all of which occurred an hour before they are sent (so before the purge
/// request), among other users' events.
fn subject_round(producer: &BaseProducer, i: u64) {
    let before = chrono::Utc::now() - chrono::Duration::hours(1);
    send(
        producer,
        "clicks",
        SUBJECT,
        &click(SUBJECT, SESSION, before),
    );
    send(producer, "ai_usage", SUBJECT, &ai_call(SUBJECT, before));
    let malformed = match i % 3 {
        // Valid JSON without an event id, with a valid occurred_at.
        0 => json!({ "schema_version": 1, "occurred_at": before.to_rfc3339(), "user_id": SUBJECT })
            .to_string(),
        // Not JSON: no occurred_at at all.
        1 => format!("user={SUBJECT};broken"),
        // An event id that is not a UUID, the subject named in the payload only.
        _ => json!({ "schema_version": 1, "event_id": "not-a-uuid",
                     "occurred_at": before.to_rfc3339(), "user_id": SUBJECT })
        .to_string(),
    };
    let key = if i % 3 == 2 { "u-race-other" } else { SUBJECT };
    send(producer, "clicks", key, &malformed);
    for n in 0..5 {
        let user = format!("u-race-{}", (i * 5 + n) % 50);
        send(producer, "clicks", &user, &click(&user, SESSION, before));
    }
}

#[test]
fn a_purge_during_full_speed_ingest_leaves_nothing_of_the_subject() {
    let dir = test_dir();
    let root = dir.path().join("data");
    let kafka = Tansu::start(dir.path());
    // Background traffic and the topics, one partition each: a sentinel sent last proves that
    // ingest has committed everything before it.
    produce(&kafka.brokers, 21, 20_000, 1);
    let storage = local_storage(&root);
    let ingest = spawn(
        strata()
            .args([
                "ingest",
                "--brokers",
                &kafka.brokers,
                "--group",
                "race",
                "--flush-rows",
                "200",
                "--flush-age-ms",
                "200",
            ])
            .args(&storage),
        "strata ingest",
        &dir.path().join("ingest.log"),
    );

    // A producer that keeps sending until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, rounds, brokers) = (stop.clone(), rounds.clone(), kafka.brokers.clone());
        std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                subject_round(&producer, i);
                i += 1;
                rounds.store(i, Ordering::SeqCst);
                // Serves delivery reports; paces the producer at a few hundred messages a
                // second: below what ingest takes, so that it stays caught up (a backlog on
                // `clicks` starves `ai_usage` of fetches on tansu), and still flushes every
                // 200 ms, straddling the purge.
                producer.poll(Duration::from_millis(20));
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };

    // The subject is in every raw table before the purge starts (ingest creates them first).
    wait_for(
        "ingest to create its tables",
        Duration::from_secs(120),
        || {
            ["link_clicks", "ai_usage", "dead_letters"]
                .iter()
                .all(|t| root.join("tables").join(t).join("_delta_log").exists())
        },
    );
    wait_for(
        "the subject's events and dead letters to be ingested",
        Duration::from_secs(180),
        || {
            count(
                &storage,
                &format!("SELECT count(*) AS n FROM link_clicks WHERE user_id = '{SUBJECT}'"),
            ) > 0
                && count(
                    &storage,
                    &format!("SELECT count(*) AS n FROM ai_usage WHERE user_id = '{SUBJECT}'"),
                ) > 0
                && count(&storage, &dead_letters_of(SUBJECT)) > 0
        },
    );

    // The purge, while the producer and ingest keep going.
    let receipt = purge_cli(&storage, SUBJECT, "race");
    assert_eq!(receipt["verified"], true, "{receipt}");
    assert!(int(&receipt, "rows_removed") > 0, "{receipt}");

    // More of the subject's late events after the purge, then stop.
    let after = rounds.load(Ordering::SeqCst);
    wait_for(
        "more traffic after the purge",
        Duration::from_secs(60),
        || rounds.load(Ordering::SeqCst) >= after + 100,
    );
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();

    // Sentinels last on each topic: once both are in, ingest has caught up.
    let sentinels: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let now = chrono::Utc::now();
    send(
        &sentinels,
        "clicks",
        SENTINEL,
        &click(SENTINEL, SESSION, now),
    );
    send(&sentinels, "ai_usage", SENTINEL, &ai_call(SENTINEL, now));
    sentinels.flush(Duration::from_secs(10)).unwrap();
    wait_for("ingest to catch up", Duration::from_secs(180), || {
        ["link_clicks", "ai_usage"].iter().all(|t| {
            count(
                &storage,
                &format!("SELECT count(*) AS n FROM {t} WHERE user_id = '{SENTINEL}'"),
            ) > 0
        })
    });

    for t in ["link_clicks", "ai_usage"] {
        assert_eq!(
            count(
                &storage,
                &format!("SELECT count(*) AS n FROM {t} WHERE user_id = '{SUBJECT}'"),
            ),
            0,
            "{t} holds the purged subject again"
        );
    }
    assert_eq!(
        count(&storage, &dead_letters_of(SUBJECT)),
        0,
        "dead_letters hold the purged subject again"
    );
    // Other users' events kept flowing.
    assert!(
        count(
            &storage,
            "SELECT count(*) AS n FROM link_clicks WHERE user_id LIKE 'u-race-%'"
        ) > 0
    );

    let (status, report) = ingest.stop();
    assert!(status.success());
    let report: Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    assert!(int(&report, "tombstoned") > 0, "{report}");
    let log = std::fs::read_to_string(dir.path().join("ingest.log")).unwrap();
    assert!(!log.contains(SUBJECT), "the ingest log names the subject");
}
