//! `strata demo`: a fresh root, events ingested within seconds, the dashboard rendered by a
//! real headless chromium, and a clean stop on SIGINT.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::server::{client, get_as, json};
use super::support::{run_ok, spawn, strata, test_dir, wait_for};

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("STRATA_CHROMIUM_BIN") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("chromium not found: run the suite with `bash scripts/test.sh`, which installs it (or set STRATA_CHROMIUM_BIN)");
}

fn headless(profile: &std::path::Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--virtual-time-budget=20000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The budget `strata demo` configures; its spend comes from the demo's live producer.
const DEMO_BUDGET: &str = "demo-assistant";

/// The spend of a budget view (of its largest user for a per-user budget), 0 without a state.
fn spend_of(view: &serde_json::Value) -> f64 {
    let state = if view["state"].is_null() {
        &view["users"][0]
    } else {
        &view["state"]
    };
    state["spend"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_ingests_serves_the_dashboard_and_stops_cleanly() {
    let dir = test_dir();
    let root = dir.path().join("data");
    let log = dir.path().join("demo.log");
    let demo = spawn(
        strata().args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--storage-url",
            root.to_str().unwrap(),
            "--rate",
            "400",
            "--rollup-interval-secs",
            "2",
        ]),
        "strata demo",
        &log,
    );
    let mut url = String::new();
    wait_for(
        "the demo to print its dashboard URL",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("dashboard at ").nth(1) {
                url = rest.split_whitespace().next().unwrap_or("").to_string();
            }
            !url.is_empty()
        },
    );
    let (base, token) = url.split_once("/#token=").expect("URL carries the token");
    let (base, token) = (base.to_string(), token.to_string());
    let c = client();
    let overview = || async {
        let r = get_as(&c, format!("{base}/v1/panels/overview"), &token).await;
        let (s, v) = json(r).await;
        assert_eq!(s, 200, "{v}");
        v["rows"][0]["clicks"].as_i64().unwrap_or(0)
    };
    // Events arrive within seconds, and keep arriving.
    let mut first = 0;
    for _ in 0..600 {
        first = overview().await;
        if first > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first > 0, "no clicks in the overview after a minute");
    let mut grown = first;
    for _ in 0..600 {
        grown = overview().await;
        if grown > first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(grown > first, "the click count did not grow");
    // Every panel has data before the browser looks (dead letters and job runs come too).
    for name in ["dead_letters_daily", "rollup_runs", "ai_usage"] {
        let mut rows = 0;
        for _ in 0..600 {
            let r = get_as(&c, format!("{base}/v1/panels/{name}"), &token).await;
            rows = json(r).await.1["rows"].as_array().map_or(0, |r| r.len());
            if rows > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(rows > 0, "{name} stayed empty");
    }
    // The demo budget has spend from the live producer before the browser looks.
    let mut budget = serde_json::Value::Null;
    for _ in 0..600 {
        let (s, v) = json(get_as(&c, format!("{base}/v1/ai/budgets"), &token).await).await;
        assert_eq!(s, 200, "{v}");
        budget = v["budgets"]
            .as_array()
            .and_then(|list| list.iter().find(|b| b["name"] == DEMO_BUDGET))
            .cloned()
            .unwrap_or_default();
        if spend_of(&budget) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spend_of(&budget) > 0.0,
        "the demo budget `{DEMO_BUDGET}` has no spend after a minute: {budget}"
    );

    // The real browser: log in with the token (from the URL fragment), render every panel.
    let profile = dir.path().join("chromium");
    let out = headless(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("data-panel=\"overview\""),
        "the page did not render panels:\n{}\n{}",
        dom,
        String::from_utf8_lossy(&out.stderr)
    );
    let sections: Vec<&str> = dom
        .split("<section")
        .skip(1)
        .filter(|s| s.contains("data-panel=\""))
        .collect();
    assert!(sections.len() >= 12, "{} panels rendered", sections.len());
    for s in &sections {
        let name = s
            .split("data-panel=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        assert!(
            s.contains("data-state=\"ok\""),
            "panel {name} did not render data: {}",
            &s[..s.len().min(400)]
        );
        let rows: usize = s
            .split("data-rows=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(rows > 0, "panel {name} has no rows");
    }
    // The budget panel: the demo budget with its spend bar, threshold ticks and figures.
    let budgets = dom
        .split("<section")
        .find(|s| s.contains("id=\"budgets\""))
        .unwrap_or_else(|| panic!("no budget section in the page:\n{dom}"));
    assert!(
        budgets.contains("data-state=\"ok\""),
        "the budget section did not render: {}",
        budgets.chars().take(600).collect::<String>()
    );
    let card = budgets
        .split("<div class=\"budget\"")
        .find(|c| c.contains(&format!("data-budget=\"{DEMO_BUDGET}\"")))
        .unwrap_or_else(|| panic!("no card for `{DEMO_BUDGET}`: {budgets}"));
    for part in [
        "class=\"spend\"",
        "class=\"threshold\"",
        "75% ",
        " USD · ",
        "resets ",
    ] {
        assert!(
            card.contains(part),
            "the `{DEMO_BUDGET}` card lacks `{part}`: {card}"
        );
    }
    // A wrong token gets a clear message, not an empty page.
    let out = headless(&profile)
        .arg("--dump-dom")
        .arg(format!("{base}/#token=wrong"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("token was refused"),
        "no message for a wrong token"
    );
    // A screenshot for the docs.
    let shot = dir.path().join("dashboard.png");
    let out = headless(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1400,2000")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.is_file() && std::fs::metadata(&shot).unwrap().len() > 10_000,
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(dest) = std::env::var("STRATA_SCREENSHOT_OUT") {
        std::fs::copy(&shot, dest).unwrap();
    }

    // SIGINT: exit 0, with what was buffered committed.
    demo.signal(Signal::SIGINT);
    let (status, _) = demo.stop();
    assert!(status.success(), "demo exited with {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    let report: serde_json::Value = serde_json::from_str(
        text.split("ingest {")
            .nth(1)
            .map(|r| format!("{{{}", r.lines().next().unwrap()))
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let committed = report["rows_committed"].as_u64().unwrap();
    let out = run_ok(strata().args([
        "sql",
        "--storage-url",
        root.to_str().unwrap(),
        "--format",
        "json",
        "SELECT (SELECT count(*) FROM link_clicks) + (SELECT count(*) FROM ai_usage) AS n",
    ]));
    let n: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        n["n"].as_u64().unwrap(),
        committed,
        "rows in the tables vs the ingest report"
    );
    assert_eq!(
        report["consumed"].as_u64().unwrap(),
        committed + report["rejected"].as_u64().unwrap() + report["duplicates"].as_u64().unwrap()
    );
}
