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
