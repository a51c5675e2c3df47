use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::*;
use crate::budget::config::{Action, Scope, Threshold};
use crate::budget::period::{Period, PeriodWindow};
use crate::budget::state::BudgetState;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn now() -> DateTime<Utc> {
    utc("2026-09-20T00:00:00Z")
}

fn at(secs: i64) -> DateTime<Utc> {
    now() + TimeDelta::seconds(secs)
}

/// September 2026 in UTC.
fn window() -> PeriodWindow {
    Period::default().window(now())
}

fn dollars(s: &str) -> Money {
    Money::parse(s).unwrap()
}

fn budget(name: &str, amount: &str, scope: Scope) -> Budget {
    Budget {
        scope,
        ..Budget::new(name, dollars(amount))
    }
}

fn feature(f: &str) -> Scope {
    Scope {
        feature: Some(f.into()),
        ..Scope::default()
    }
}

fn standing(b: Budget, spend: &str) -> BudgetStanding {
    let state = BudgetState::compute(&b, window(), dollars(spend), now());
    BudgetStanding {
        budget: b,
        total: Some(state),
        per_user: BTreeMap::new(),
    }
}

fn board(standings: Vec<BudgetStanding>) -> Board {
    Board {
        standings,
        as_of: now(),
    }
}

fn call(feature: &str, user: Option<&str>) -> Call {
    Call {
        feature: Some(feature.into()),
        user_id: user.map(String::from),
        ..Call::default()
    }
}

/// A request for five minutes.
fn request(
    call: Call,
    estimate: &str,
    batch: Option<&str>,
    job: Option<&str>,
) -> ReservationRequest {
    ReservationRequest {
        call,
        estimate: dollars(estimate),
        ttl: Duration::from_secs(300),
        job_id: job.map(String::from),
        batch_id: batch.map(String::from),
    }
}

fn ids(rs: &[Reservation]) -> BTreeSet<String> {
    rs.iter().map(|r| r.id.clone()).collect()
}

/// 8 threads reserving `estimate` 125 times each on one ledger: the ledger and how many
/// reservations were granted.
fn reserve_from_threads(board: Board, estimate: &str) -> (Arc<Ledger>, usize) {
    let ledger = Arc::new(Ledger::new("server-a"));
    let board = Arc::new(board);
    let estimate = dollars(estimate);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (ledger, board) = (ledger.clone(), board.clone());
            std::thread::spawn(move || {
                (0..125)
                    .filter(|i| {
                        let req = ReservationRequest {
                            call: call("search_answer", None),
                            estimate,
                            ttl: Duration::from_secs(300),
                            job_id: None,
                            batch_id: Some(format!("batch-{t}-{i}")),
                        };
                        ledger.reserve(&board, req, now()).is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let granted: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    (ledger, granted)
}

#[test]
fn concurrent_callers_never_overshoot_a_hard_budget() {
    let search = budget("search", "10.00", feature("search_answer"));
    // 10.00 / 0.05 = 200 fit, exactly.
    let (ledger, granted) =
        reserve_from_threads(board(vec![standing(search.clone(), "0")]), "0.05");
    assert_eq!(granted, 200);
    assert_eq!(ledger.list().len(), 200);
    assert_eq!(ledger.held(&search, None, now()), dollars("10.00"));
    let refused = ledger
        .reserve(
            &board(vec![standing(search.clone(), "0")]),
            request(
                call("search_answer", None),
                "0.000000001",
                Some("late"),
                None,
            ),
            now(),
        )
        .unwrap_err();
    assert_eq!(refused.budget, "search");
    assert_eq!(
        refused.message,
        "budget `search` is a hard budget of 10.00 USD this month with 0.00 spent and 10.00 held: 0.000000001 more does not fit"
    );

    // With 9.00 spent, 1.00 / 0.05 = 20 fit.
    let (ledger, granted) =
        reserve_from_threads(board(vec![standing(search.clone(), "9.00")]), "0.05");
    assert_eq!(granted, 20);
    assert_eq!(ledger.held(&search, None, now()), dollars("1.00"));
}

#[test]
fn a_blocking_state_refuses_until_the_period_resets() {
    let mut paused = budget("paused", "10.00", Scope::default());
    paused.thresholds = vec![Threshold {
        percent: 50,
        action: Action::PauseQueue,
    }];
    let b = board(vec![standing(paused, "6.00")]);
    let ledger = Ledger::new("server-a");
    let req = || request(call("search_answer", None), "1.00", Some("b1"), None);
    // 6.00 + 1.00 fits in 10.00, but the budget asks callers to pause.
    let refused = ledger.reserve(&b, req(), now()).unwrap_err();
    assert_eq!(
        refused.message,
        "budget `paused` asks callers to pause the queue this month (at 60.00% of 10.00 USD): no spend can be reserved"
    );
    assert!(ledger
        .reserve(&b, req(), utc("2026-10-01T00:00:00Z"))
        .is_ok());
    let zero = ledger.reserve(&b, request(Call::default(), "0", Some("b2"), None), now());
    assert_eq!(zero.unwrap_err().budget, "");
}

#[test]
fn a_soft_budget_never_refuses() {
    let mut soft = budget("soft", "1.00", Scope::default());
    soft.hard = false;
    let b = board(vec![standing(soft.clone(), "5.00")]);
    let ledger = Ledger::new("server-a");
    for batch in ["b1", "b2", "b3"] {
        ledger
            .reserve(
                &b,
                request(call("x", None), "100.00", Some(batch), None),
                now(),
            )
            .unwrap();
    }
    assert_eq!(ledger.held(&soft, None, now()), dollars("300.00"));
}

#[test]
fn only_budgets_covering_the_call_count() {
    let writer = budget("writer", "1.00", feature("listing_writer"));
    let all = budget("all-ai", "10.00", Scope::default());
    let b = board(vec![
        standing(writer.clone(), "1.00"),
        standing(all.clone(), "0"),
    ]);
    let ledger = Ledger::new("server-a");
    // The writer budget is stopped, but a search call is none of its business.
    ledger
        .reserve(
            &b,
            request(call("search_answer", None), "4.00", Some("b1"), None),
            now(),
        )
        .unwrap();
    assert_eq!(ledger.held(&writer, None, now()), Money::ZERO);
    assert_eq!(ledger.held(&all, None, now()), dollars("4.00"));
    // A call that does not name its feature is covered by the writer budget too.
    let refused = ledger
        .reserve(
            &b,
            request(Call::default(), "0.01", Some("b2"), None),
            now(),
        )
        .unwrap_err();
    assert_eq!(refused.budget, "writer");
    ledger
        .reserve(
            &b,
            request(call("search_answer", None), "6.00", Some("b3"), None),
            now(),
        )
        .unwrap();
    let refused = ledger
        .reserve(
            &b,
            request(call("tagging", None), "0.01", Some("b4"), None),
            now(),
        )
        .unwrap_err();
    assert_eq!(
        refused.message,
        "budget `all-ai` is a hard budget of 10.00 USD this month with 0.00 spent and 10.00 held: 0.01 more does not fit"
    );
}

#[test]
fn each_user_has_room_of_their_own() {
    let per_user = budget(
        "per-user",
        "1.00",
        Scope {
            per_user: true,
            ..Scope::default()
        },
    );
    let u1 = BudgetState::for_user(&per_user, "u1", window(), dollars("0.50"), now());
    let b = board(vec![BudgetStanding {
        budget: per_user.clone(),
        total: None,
        per_user: BTreeMap::from([("u1".to_string(), u1)]),
    }]);
    let ledger = Ledger::new("server-a");
    let reserve = |user: Option<&str>, estimate: &str, batch: &str| {
        ledger.reserve(
            &b,
            request(call("search_answer", user), estimate, Some(batch), None),
            now(),
        )
    };
    reserve(Some("u1"), "0.50", "b1").unwrap();
    assert_eq!(
        reserve(Some("u1"), "0.01", "b2").unwrap_err().message,
        "budget `per-user` (this user's share) is a hard budget of 1.00 USD this month with 0.50 spent and 0.50 held: 0.01 more does not fit"
    );
    // A user without spend this period has the whole amount.
    reserve(Some("u2"), "1.00", "b3").unwrap();
    assert!(reserve(Some("u2"), "0.01", "b4").is_err());
    // A call without a user is not covered by a per-user budget.
    reserve(None, "3.00", "b5").unwrap();
    assert_eq!(ledger.held(&per_user, Some("u1"), now()), dollars("0.50"));
    assert_eq!(ledger.held(&per_user, Some("u2"), now()), dollars("1.00"));
    assert_eq!(ledger.held(&per_user, None, now()), dollars("1.50"));
}

#[test]
fn an_expired_reservation_frees_its_room() {
    let ai = budget("ai", "1.00", Scope::default());
    let b = board(vec![standing(ai.clone(), "0")]);
    let ledger = Ledger::new("server-a");
    let mut req = request(call("x", None), "1.00", Some("b1"), None);
    req.ttl = Duration::from_secs(60);
    let first = ledger.reserve(&b, req, now()).unwrap();
    assert_eq!(first.expires_at, utc("2026-09-20T00:01:00Z"));
    let small = |batch: &str| request(call("x", None), "0.01", Some(batch), None);
    assert!(ledger.reserve(&b, small("b2"), at(59)).is_err());
    let second = ledger.reserve(&b, small("b3"), at(60)).unwrap();
    assert_eq!(ledger.held(&ai, None, at(60)), dollars("0.01"));
    assert!(ledger.expire(at(59)).is_empty());
    assert_eq!(ledger.expire(at(60)), vec![first]);
    assert_eq!(ledger.list(), vec![second]);
}

#[test]
fn events_settle_by_batch_id_else_job_id() {
    let b = board(vec![]);
    let ledger = Ledger::new("server-a");
    let reserve = |batch: Option<&str>, job: Option<&str>, secs: i64| {
        ledger
            .reserve(&b, request(call("x", None), "1", batch, job), at(secs))
            .unwrap()
    };
    let r1 = reserve(Some("b1"), Some("j1"), 0);
    let r2 = reserve(None, Some("j1"), 1);
    let r3 = reserve(None, Some("j2"), 2);
    let r4 = reserve(None, Some("j1"), 3);
    let r5 = reserve(Some("b2"), None, 4);
    assert_eq!(
        ledger.open_keys(),
        (
            vec!["j1".to_string(), "j2".to_string()],
            vec!["b1".to_string(), "b2".to_string()]
        )
    );
    assert_eq!(ledger.oldest(), Some(at(0)));
    // Events of job j1: r1 waits for its batch b1.
    let by_job = ledger.settle(&Seen {
        job_ids: HashSet::from(["j1".to_string()]),
        batch_ids: HashSet::new(),
    });
    assert_eq!(ids(&by_job), ids(&[r2, r4]));
    let by_batch = ledger.settle(&Seen {
        job_ids: HashSet::new(),
        batch_ids: HashSet::from(["b1".to_string()]),
    });
    assert_eq!(by_batch, vec![r1]);
    assert_eq!(ledger.list(), vec![r3, r5]);
    assert_eq!(ledger.oldest(), Some(at(2)));
}

#[test]
fn merging_follows_the_files_of_every_server() {
    let b = board(vec![]);
    let all = budget("all", "100", Scope::default());
    let a = Ledger::new("server-a");
    let req = |estimate: &str, batch: &str| request(call("x", None), estimate, Some(batch), None);
    let own = a.reserve(&b, req("1", "b1"), now()).unwrap();
    let other = Ledger::new("server-b")
        .reserve(&b, req("2", "b2"), now())
        .unwrap();
    assert_eq!(
        (own.holder.as_str(), other.holder.as_str()),
        ("server-a", "server-b")
    );

    a.merge(vec![other.clone()], now());
    assert_eq!(a.held(&all, None, now()), dollars("3"));
    // server-b ended its reservation; this server's own, not listed yet, stays.
    a.merge(vec![], now());
    assert_eq!(a.list(), vec![own.clone()]);
    // Once listed, a missing file means another server ended it.
    a.merge(vec![own.clone()], now());
    assert_eq!(a.list(), vec![own.clone()]);
    a.merge(vec![], now());
    assert!(a.list().is_empty());

    // A listing taken before a released reservation's file was deleted does not revive it.
    let released = a.reserve(&b, req("4", "b3"), now()).unwrap();
    assert_eq!(a.release(&released.id), Some(released.clone()));
    assert_eq!(a.release(&released.id), None);
    a.merge(vec![released], now());
    assert!(a.list().is_empty());

    // The file of a stopped server's expired reservation is taken up, holds nothing, and
    // goes at the next expiry.
    let mut short = req("5", "b4");
    short.ttl = Duration::from_secs(60);
    let orphan = Ledger::new("server-c").reserve(&b, short, now()).unwrap();
    let later = now() + TimeDelta::hours(2);
    a.merge(vec![orphan.clone()], later);
    assert_eq!(a.held(&all, None, later), Money::ZERO);
    assert_eq!(a.expire(later), vec![orphan]);
}

#[tokio::test]
async fn reservations_round_trip_through_their_files() {
    assert_eq!(reservations_dir().as_ref(), "_strata/budgets/reservations");
    assert_eq!(
        reservation_file("r1").as_ref(),
        "_strata/budgets/reservations/r1.json"
    );
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_dir(dir.path()).await.unwrap();
    assert!(load(&storage).await.unwrap().is_empty());

    let r = Ledger::new("server-a")
        .reserve(
            &board(vec![]),
            request(
                call("search_answer", Some("u1")),
                "1.25",
                Some("b1"),
                Some("j1"),
            ),
            now(),
        )
        .unwrap();
    store(&storage, &r).await.unwrap();
    assert!(store(&storage, &r).await.is_err(), "a file is created once");
    let files = dir.path().join("_strata/budgets/reservations");
    let file = files.join(format!("{}.json", r.id));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json["estimated_cost"], "1.25");
    assert_eq!(json["expires_at"], "2026-09-20T00:05:00Z");
    assert_eq!(json["holder"], "server-a");

    // A broken file and one whose name is not its id are skipped.
    std::fs::write(files.join("broken.json"), b"{\"id\": ").unwrap();
    let renamed = Reservation {
        id: "other".into(),
        ..r.clone()
    };
    std::fs::write(
        files.join("mismatch.json"),
        serde_json::to_vec(&renamed).unwrap(),
    )
    .unwrap();
    assert_eq!(load(&storage).await.unwrap(), vec![r.clone()]);

    // After a restart the reservation holds again.
    let restarted = Ledger::new("server-a-restarted");
    restarted.merge(load(&storage).await.unwrap(), now());
    assert_eq!(restarted.list(), vec![r.clone()]);

    remove(&storage, &r.id).await.unwrap();
    remove(&storage, &r.id).await.unwrap();
    assert!(!file.exists());
    assert!(load(&storage).await.unwrap().is_empty());
}

#[test]
fn settled_sql_asks_for_the_open_ids_as_hex_literals() {
    // Ten minutes of clock skew before 00:05 is the day before.
    let since = utc("2026-09-20T00:05:00Z");
    let sql = settled_sql(&["j1".into()], &["b'1".into()], since).unwrap();
    assert_eq!(
        sql,
        "SELECT DISTINCT job_id, batch_id FROM ai_usage\n\
         WHERE occurred_at >= TIMESTAMP '2026-09-19 23:55:00' AND event_date >= DATE '2026-09-19'\n  \
         AND (job_id IN (CAST(X'6a31' AS VARCHAR)) OR batch_id IN (CAST(X'622731' AS VARCHAR)))"
    );
    let only_batches = settled_sql(&[], &["b1".into()], since).unwrap();
    assert!(
        only_batches.ends_with("AND (batch_id IN (CAST(X'6231' AS VARCHAR)))"),
        "{only_batches}"
    );
    assert_eq!(settled_sql(&[], &[], since), None);

    let many: Vec<String> = (0..1500).map(|i| format!("j{i}")).collect();
    let sql = settled_sql(&many, &[], since).unwrap();
    assert_eq!(sql.matches("CAST(").count(), 1_000);
    // "j999" is the last value kept, "j1000" the first cut.
    assert!(sql.contains("X'6a393939'"));
    assert!(!sql.contains("X'6a31303030'"));
}
