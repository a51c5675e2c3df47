use std::sync::Arc;
use std::time::Duration;

use arrow::util::pretty::pretty_format_batches;
use strata_engine::{Panels, QueryLimits, ResultCache, RollupBuilder, SqlSession};
use strata_schemas::EventKind;

use crate::support::{append, root_with};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Clicks over five days in three groups that exercise every case of the proof:
/// - category `a` (marketplace listings): 120 items with a steep head and a long tail, so
///   the daily lists (at most 50 items) leave items out;
/// - category `b` (directory sites): 80 items with exactly one click a day, all tied, so
///   no item of `b` is ever listed;
/// - no category (articles): 30 items, all listed, nothing left out;
/// - `shared` is one id in both `a` and `b`: an item is its id, type and category.
fn clicks() -> String {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut lines = Vec::new();
    let mut n = 0u64;
    let mut click = |day: u32,
                     item: &str,
                     item_type: &str,
                     category: Option<&str>,
                     rng: &mut Rng| {
        n += 1;
        let user = rng.below(60);
        let v = serde_json::json!({
            "schema_version": 1,
            "event_id": format!("00000000-0000-4000-8000-{n:012}"),
            "occurred_at": format!("2026-09-0{day}T{:02}:00:00Z", rng.below(24)),
            "user_id": if user < 50 { serde_json::json!(format!("u{user}")) } else { serde_json::Value::Null },
            "anonymous_id": format!("anon{}", rng.below(500)),
            "session_id": format!("s{}", rng.below(1000)),
            "item_id": item,
            "item_type": item_type,
            "category": category,
            "source": "homepage",
            "target_url": "https://example.invalid/",
            "is_bot": rng.below(10) == 0,
        });
        lines.push(v.to_string());
    };
    for day in 1..=5u32 {
        for i in 0..120u64 {
            let count = 150 / (i + 1) + rng.below(3);
            for _ in 0..count {
                click(
                    day,
                    &format!("a-{i}"),
                    "marketplace_listing",
                    Some("a"),
                    &mut rng,
                );
            }
        }
        for i in 0..80u64 {
            click(
                day,
                &format!("b-{i}"),
                "directory_site",
                Some("b"),
                &mut rng,
            );
        }
        for i in 0..30u64 {
            for _ in 0..(1 + i % 7 + rng.below(2)) {
                click(day, &format!("n-{i}"), "article", None, &mut rng);
            }
        }
        for _ in 0..(20 + rng.below(5)) {
            click(day, "shared", "marketplace_listing", Some("a"), &mut rng);
        }
        click(day, "shared", "directory_site", Some("b"), &mut rng);
    }
    lines.join("\n")
}

/// The `top_items` panel answers from the daily top lists when it can prove the answer, and
/// from every item otherwise: either way the answer is the one the full query gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_items_from_the_lists_equals_the_full_query() {
    let fx = root_with(&[(EventKind::LinkClick, &clicks())]).await;
    let (storage, catalog) = (&fx.storage, &fx.catalog);
    let session = SqlSession::open(storage).await.unwrap();
    let panels = Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap();
    let panel = panels.get("top_items").unwrap();

    // Every group's lists hold at most 50 items (ties at the cut-off are left out together);
    // `a` leaves items out every day.
    let listed = session
        .query_i64(
            "SELECT max(n) FROM (SELECT count(item_id) AS n FROM click_stats_daily_top_items \
             GROUP BY event_date, category, item_type)",
        )
        .await
        .unwrap()
        .unwrap();
    assert!((30..=50).contains(&listed), "{listed}");
    let a = session
        .query_i64(
            "SELECT count(*) FROM click_stats_daily_top_items \
             WHERE category = 'a' AND item_id IS NULL AND clicks > 0",
        )
        .await
        .unwrap();
    assert_eq!(a, Some(5), "a leaves items out on each of the five days");
    let b = session
        .query_i64(
            "SELECT count(item_id) + 10 * max(clicks) FROM click_stats_daily_top_items \
             WHERE category = 'b'",
        )
        .await
        .unwrap();
    assert_eq!(b, Some(10), "b: nothing listed, bound 1");

    let mut answered = [0usize; 2];
    for (from, to) in [
        ("2026-09-01", "2026-09-05"),
        ("2026-09-02", "2026-09-02"),
        ("2026-09-02", "2026-09-04"),
        ("2026-08-01", "2026-08-05"),
    ] {
        for category in ["", "a", "b", "(none)"] {
            for item_type in ["", "marketplace_listing", "directory_site"] {
                for limit in ["1", "3", "10", "45", "200"] {
                    let pairs: Vec<(String, String)> = [
                        ("from", from),
                        ("to", to),
                        ("category", category),
                        ("item_type", item_type),
                        ("limit", limit),
                    ]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                    let params = panels.parse_params("top_items", &pairs).unwrap();
                    let got = panels
                        .run(
                            catalog,
                            "top_items",
                            &params,
                            &QueryLimits::default(),
                            Duration::ZERO,
                        )
                        .await
                        .unwrap();
                    answered[got.fallback as usize] += 1;
                    let full = panel.render_fallback(&params).unwrap();
                    let (schema, want) = session.query(&full).await.unwrap();
                    let what = format!("{pairs:?} (fallback: {})", got.fallback);
                    let types = |s: &arrow::datatypes::Schema| {
                        s.fields()
                            .iter()
                            .map(|f| (f.name().clone(), f.data_type().clone()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(types(&got.schema), types(&schema), "{what}");
                    assert_eq!(
                        pretty_format_batches(&got.batches).unwrap().to_string(),
                        pretty_format_batches(&want).unwrap().to_string(),
                        "{what}"
                    );
                }
            }
        }
    }
    // Both ways of answering were taken.
    assert!(answered[0] > 20 && answered[1] > 20, "{answered:?}");

    // Between the items rollup's commit and the lists' commit, the lists are behind: the panel
    // answers from the items, with the new clicks, and from the lists again once they caught up.
    // Over the five days, with these parameters besides.
    let pairs_of = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
        [("from", "2026-09-01"), ("to", "2026-09-05")]
            .iter()
            .chain(kv)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let params = panels
        .parse_params("top_items", &pairs_of(&[("limit", "1")]))
        .unwrap();
    let limits = QueryLimits::default();
    let run = || panels.run(catalog, "top_items", &params, &limits, Duration::ZERO);
    let before = run().await.unwrap();
    assert!(!before.fallback);
    assert!(catalog.snapshot().is_current("click_stats_daily_top_items"));
    let late: String = (0..3)
        .map(|i| {
            serde_json::json!({
                "schema_version": 1,
                "event_id": format!("00000000-0000-4000-9000-{i:012}"),
                "occurred_at": "2026-09-03T12:00:00Z",
                "user_id": "late",
                "session_id": "late",
                "item_id": "a-0",
                "item_type": "marketplace_listing",
                "category": "a",
                "source": "homepage",
                "target_url": "https://example.invalid/",
            })
            .to_string()
                + "\n"
        })
        .collect();
    append(storage, EventKind::LinkClick, &late, 1_000_000).await;
    for first in ["click_stats_daily", "click_stats_daily_items"] {
        RollupBuilder::new(catalog.clone())
            .only(Some(first.into()))
            .run()
            .await
            .unwrap();
    }
    assert!(!catalog.snapshot().is_current("click_stats_daily_top_items"));
    assert!(!catalog.snapshot().is_current("click_stats_daily_totals"));
    let behind = run().await.unwrap();
    assert!(behind.fallback, "the lists are behind the items");
    let clicks = |r: &strata_engine::PanelResult| {
        r.batches[0]
            .column_by_name("clicks")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!(clicks(&behind), clicks(&before) + 3);
    // The overview without filters reads the detailed rollup while the totals are behind.
    let overview = panels.parse_params("overview", &pairs_of(&[])).unwrap();
    let total = || panels.run(catalog, "overview", &overview, &limits, Duration::ZERO);
    session.refresh().await.unwrap();
    let detailed = session
        .query_i64("SELECT sum(clicks) FROM click_stats_daily WHERE event_date BETWEEN DATE '2026-09-01' AND DATE '2026-09-05'")
        .await
        .unwrap();
    assert_eq!(Some(clicks(&total().await.unwrap())), detailed);

    RollupBuilder::new(catalog.clone()).run().await.unwrap();
    let caught_up = run().await.unwrap();
    assert!(!caught_up.fallback);
    assert_eq!(clicks(&caught_up), clicks(&behind));
    assert!(catalog.snapshot().is_current("click_stats_daily_totals"));
    assert_eq!(Some(clicks(&total().await.unwrap())), detailed);
}
