use chrono::NaiveDate;
use strata_engine::{RollupBuilder, SqlSession, ROLLUPS};
use strata_schemas::EventKind;

use crate::support::{append, data, fixture};

/// Rows of a query as sorted text lines: order-independent comparison.
async fn rows(session: &SqlSession, sql: &str) -> Vec<String> {
    let (_, batches) = session.query(sql).await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

async fn assert_rollups_equal_recomputation(session: &SqlSession) {
    session.refresh().await.unwrap();
    for spec in ROLLUPS {
        let stored = rows(session, &format!("SELECT * FROM {}", spec.name)).await;
        let fresh = rows(session, &spec.sql_for(None)).await;
        assert!(!stored.is_empty(), "{} is empty", spec.name);
        assert_eq!(stored, fresh, "{} differs from a recomputation", spec.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_recompute_only_their_days_and_match_a_rebuild() {
    let fx = fixture().await;
    let session = SqlSession::open(&fx.storage).await.unwrap();
    assert_rollups_equal_recomputation(&session).await;

    // Late clicks for an old day (2026-10-01, a new visitor) and a new day (2026-10-04); a late
    // AI call for 2026-10-02. Each gets a new event id.
    let late = |line: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["event_id"] = uuid::Uuid::new_v4().to_string().into();
        edit(&mut v);
        v.to_string()
    };
    let clicks = data("link_clicks.jsonl");
    let first = clicks.lines().next().unwrap();
    let late_clicks = [
        late(first, &|v| v["user_id"] = "u9".into()),
        late(first, &|v| v["occurred_at"] = "2026-10-04T09:00:00Z".into()),
    ]
    .join("\n");
    append(&fx.storage, EventKind::LinkClick, &late_clicks, 100).await;
    let ai = data("ai_usage.jsonl");
    let late_ai = late(ai.lines().last().unwrap(), &|v| {
        v["status"] = "timeout".into()
    });
    append(&fx.storage, EventKind::AiUsage, &late_ai, 100).await;

    let reports = RollupBuilder::new(fx.catalog.clone()).run().await.unwrap();
    let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    for r in &reports {
        assert!(!r.full, "{} recomputed everything", r.rollup);
        // click_stats_daily_totals follows the days click_stats_daily replaced.
        let expected = if r.source != "ai_usage" {
            vec![d("2026-10-01"), d("2026-10-04")]
        } else {
            vec![d("2026-10-02")]
        };
        assert_eq!(r.dates, expected, "{}", r.rollup);
    }
    assert_rollups_equal_recomputation(&session).await;

    // Nothing changed: nothing recomputed, no commit.
    let again = RollupBuilder::new(fx.catalog.clone()).run().await.unwrap();
    for (a, b) in again.iter().zip(&reports) {
        assert!(a.dates.is_empty() && !a.full, "{} ran again", a.rollup);
        assert_eq!(a.version, b.version, "{} committed again", a.rollup);
    }

    // A source commit without files (ingest advancing offsets only) changes no day.
    let mut clicks = strata_engine::EventTable::open_or_create(
        &fx.storage,
        strata_engine::TableSpec::for_events(EventKind::LinkClick),
    )
    .await
    .unwrap();
    clicks
        .append(
            &[],
            &[strata_engine::TxnUpdate {
                app_id: "strata-test-clicks-0".into(),
                expected: None,
                next: 1,
            }],
        )
        .await
        .unwrap();
    let empty = RollupBuilder::new(fx.catalog.clone()).run().await.unwrap();
    for r in empty.iter().filter(|r| r.source == "link_clicks") {
        assert!(
            r.dates.is_empty() && !r.full,
            "{} recomputed {:?}",
            r.rollup,
            r.dates
        );
    }
    assert_rollups_equal_recomputation(&session).await;

    // A rebuild gives the same tables.
    let rebuilt = RollupBuilder::new(fx.catalog.clone())
        .rebuild(true)
        .run()
        .await
        .unwrap();
    assert!(rebuilt.iter().all(|r| r.full));
    assert_rollups_equal_recomputation(&session).await;

    // Every run is in job_runs.
    let runs = rows(
        &session,
        "SELECT count(*) FROM job_runs WHERE status = 'ok'",
    )
    .await;
    // Five runs of every rollup.
    assert_eq!(runs, vec![format!("| {:<8} |", 5 * ROLLUPS.len())]);
}

/// The jobs of the rollup runs in job_runs whose report says `subject_groups_only`, sorted.
async fn subject_group_runs(session: &SqlSession) -> Vec<String> {
    session.refresh().await.unwrap();
    let (_, batches) = session
        .query("SELECT job FROM job_runs WHERE detail LIKE '%\"subject_groups_only\":true%'")
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for b in &batches {
        let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let col = col
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        jobs.extend(col.iter().flatten().map(String::from));
    }
    jobs.sort();
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_recomputes_only_its_subjects_groups_and_matches_a_rebuild() {
    use strata_engine::gdpr::{PurgeBuilder, Subject};
    let fx = fixture().await;
    let session = SqlSession::open(&fx.storage).await.unwrap();
    // Two subjects (the fixture's ids are too short for the purge's id rule): clicks on
    // two days in groups other visitors share, one on an item nobody else clicked (its group
    // must go), and AI calls.
    let as_user = |line: &str, user: &str, item: Option<&str>| {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["event_id"] = uuid::Uuid::new_v4().to_string().into();
        v["user_id"] = user.into();
        if let Some(item) = item {
            v["item_id"] = item.into();
        }
        v.to_string()
    };
    let clicks = data("link_clicks.jsonl");
    let lines: Vec<&str> = clicks.lines().collect();
    let subject_clicks = [
        as_user(lines[0], "u-first", None),
        as_user(lines[5], "u-first", None),
        as_user(lines[5], "u-first", Some("m-only-first")),
        as_user(lines[2], "u-second", None),
    ]
    .join("\n");
    append(&fx.storage, EventKind::LinkClick, &subject_clicks, 100).await;
    let ai = data("ai_usage.jsonl");
    let ai_lines: Vec<&str> = ai.lines().collect();
    let subject_ai = [
        as_user(ai_lines[0], "u-first", None),
        as_user(ai_lines[1], "u-second", None),
    ]
    .join("\n");
    append(&fx.storage, EventKind::AiUsage, &subject_ai, 100).await;
    RollupBuilder::new(fx.catalog.clone()).run().await.unwrap();
    assert_rollups_equal_recomputation(&session).await;

    // The purge is the only change since the rollups ran (with its tombstone marker): each
    // rollup of a raw table recomputes u-first's groups only.
    let receipt = PurgeBuilder::new(&fx.storage, Subject::new("u-first"))
        .await
        .unwrap();
    assert!(receipt.verified);
    assert_eq!(receipt.rows_removed, 4);
    assert_rollups_equal_recomputation(&session).await;
    let gone = rows(
        &session,
        "SELECT count(*) FROM click_stats_daily_items WHERE item_id = 'm-only-first'",
    )
    .await;
    assert_eq!(
        gone,
        vec!["| 0        |"],
        "the subject's own group is gone"
    );
    // The top lists, a rollup of the per-item rollup, recompute the lists of the item groups
    // the splice changed; the totals (no group columns) their days whole.
    assert_eq!(
        subject_group_runs(&session).await,
        vec![
            "rollup:ai_usage_daily",
            "rollup:click_stats_daily",
            "rollup:click_stats_daily_items",
            "rollup:click_stats_daily_top_items",
        ],
    );

    // A click the rollups have not seen, then a purge: the click rollups' run covers more
    // than the purge's commit, so they recompute the days whole (ai_usage, untouched but by
    // the purge, still gets the subject's groups only), and the tables equal a recomputation.
    let mut late: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    late["event_id"] = uuid::Uuid::new_v4().to_string().into();
    late["user_id"] = "u9".into();
    append(&fx.storage, EventKind::LinkClick, &late.to_string(), 200).await;
    let receipt = PurgeBuilder::new(&fx.storage, Subject::new("u-second"))
        .await
        .unwrap();
    assert!(receipt.verified);
    assert_eq!(receipt.rows_removed, 2);
    assert_rollups_equal_recomputation(&session).await;
    assert_eq!(
        subject_group_runs(&session).await,
        vec![
            "rollup:ai_usage_daily",
            "rollup:ai_usage_daily",
            "rollup:click_stats_daily",
            "rollup:click_stats_daily_items",
            "rollup:click_stats_daily_top_items",
        ],
    );
}

/// A rollup table created when its statistics columns held the partition column (delta-kernel
/// warned on every scan of it) gets the registry's list on the rollup's next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollup_table_gets_the_registrys_statistics_columns() {
    use strata_engine::deltalake::{open_table, TableProperty};
    let fx = fixture().await;
    let spec = ROLLUPS
        .iter()
        .find(|r| r.name == "click_stats_daily_items")
        .unwrap();
    let key = TableProperty::DataSkippingStatsColumns.as_ref().to_string();
    let stored = |table: &strata_engine::deltalake::DeltaTable| {
        table
            .snapshot()
            .unwrap()
            .metadata()
            .configuration()
            .get(&key)
            .cloned()
    };
    let url = fx.storage.table_url(spec.name);
    let old = format!("event_date,{}", spec.stats_columns.join(","));
    let table = open_table(url.clone())
        .await
        .unwrap()
        .set_tbl_properties()
        .with_properties(std::collections::HashMap::from([(
            key.clone(),
            old.clone(),
        )]))
        .await
        .unwrap();
    assert_eq!(stored(&table).as_deref(), Some(old.as_str()));

    // A late click: the next run has a day to recompute.
    let clicks = data("link_clicks.jsonl");
    let mut late: serde_json::Value = serde_json::from_str(clicks.lines().next().unwrap()).unwrap();
    late["event_id"] = uuid::Uuid::new_v4().to_string().into();
    append(&fx.storage, EventKind::LinkClick, &late.to_string(), 100).await;
    RollupBuilder::new(fx.catalog.clone()).run().await.unwrap();

    let table = open_table(url).await.unwrap();
    let wanted = spec.stats_columns.join(",");
    assert!(!wanted.contains("event_date"));
    assert_eq!(stored(&table).as_deref(), Some(wanted.as_str()));
    let session = SqlSession::open(&fx.storage).await.unwrap();
    assert_rollups_equal_recomputation(&session).await;
}
