//! The budgets of a running server: their states kept in memory, current after every
//! `ai_usage` commit and every override, so that decisions and reservations are answered
//! without touching storage; alerts claimed and sent from the same loop.
//!
//! ```text
//! refresh loop (every POLL_INTERVAL):
//!   catalog snapshot -> changed? (ai_usage / budget_overrides version, a period or an override ended)
//!     -> overrides::read_active -> apply -> read_spend -> Board (states with overrides applied)
//!     -> ledger: settle (the matching ai_usage events are in) / expire / merge other servers'
//!     -> alerts::due_alerts -> claim (create-only file) -> deliver in the background
//! decide(call)   -> the Board in memory (RwLock read, no I/O)
//! reserve(req)   -> the ledger checks and holds under one lock, then the reservation's file
//! add_override   -> budget_overrides commit -> refresh now
//! ```

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::alerts::{self, AlertRecord, Sender};
use super::config::Budget;
use super::decision::{Board, BudgetStanding, Call, Decision};
use super::money::Money;
use super::overrides::{self, Override, OverrideRequest};
use super::reservations::{self, Ledger, Refusal, Reservation, ReservationRequest, Seen};
use super::spend::{read_spend, SpendRequest, EVENTS_TABLE};
use super::state::BudgetState;
use crate::catalog::Snapshot;
use crate::jobs::JobRuns;
use crate::{Catalog, QueryLimits, Result};

/// How often the server looks for new `ai_usage` commits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// States are recomputed at least this often even when no data changed (burn rates and
/// forecasts move with the clock).
pub const MAX_STATE_AGE: Duration = Duration::from_secs(60);
/// Reservations stored by other servers are read this often.
pub const RESERVATION_SYNC: Duration = Duration::from_secs(1);
/// A pending alert not touched for this long lost its sender (a crash): it is resumed.
pub const ALERT_RESUME_AFTER: Duration = Duration::from_secs(120);

/// What a server counts about its budgets (metrics live in the API crate).
pub trait BudgetObserver: Send + Sync {
    fn states(&self, _board: &Board, _held: &dyn Fn(&BudgetStanding) -> Money) {}
    fn decision(&self, _decision: &Decision) {}
    fn reservation(&self, _outcome: &'static str, _count: u64) {}
    fn alert(&self, _budget: &str, _kind: &str, _delivered: bool, _attempts: u32, _failed: u32) {}
}

struct NoObserver;
impl BudgetObserver for NoObserver {}

/// The budgets' standing as of one refresh.
#[derive(Debug, Clone)]
pub struct BudgetsView {
    /// None until the first read of the spend succeeded.
    pub board: Option<Board>,
    /// The overrides active at the refresh, oldest first.
    pub overrides: Vec<Override>,
    events_version: Option<u64>,
    overrides_version: Option<u64>,
    refreshed_at: DateTime<Utc>,
}

/// One budget for the API: as configured, as overrides make it, its states, what reservations
/// hold and the alerts of its period.
#[derive(Debug, Clone)]
pub struct BudgetReport {
    pub configured: Budget,
    pub standing: Option<BudgetStanding>,
    pub overrides: Vec<Override>,
    pub held: Money,
    pub alerts: Vec<AlertRecord>,
}

/// The answer to a reservation.
#[derive(Debug)]
pub enum Reserved {
    Held(Reservation),
    /// A hard budget covering the call has no room.
    Refused(Refusal),
    /// The budgets have not been read yet (just after start).
    NotReady,
}

/// The budgets of a server (see the module's diagram).
pub struct BudgetService {
    catalog: Arc<Catalog>,
    budgets: Vec<Budget>,
    limits: QueryLimits,
    view: RwLock<Arc<BudgetsView>>,
    ledger: Ledger,
    sender: Sender,
    observer: Arc<dyn BudgetObserver>,
    /// False for a reader (`strata budgets`): it claims and sends no alert.
    sends_alerts: bool,
    /// One refresh at a time (the loop and an override's).
    refreshing: tokio::sync::Mutex<RefreshMemo>,
}

#[derive(Default)]
struct RefreshMemo {
    reservations_synced: Option<std::time::Instant>,
    /// The alerts this server tried to claim (won or lost): each is claimed at most once per
    /// process, so a due alert costs one conditional put, not one per refresh.
    claimed: HashSet<String>,
}

impl BudgetService {
    /// A service for `budgets` (validated by the caller), with nothing read yet.
    pub fn new(
        catalog: Arc<Catalog>,
        budgets: Vec<Budget>,
        limits: QueryLimits,
        holder: impl Into<String>,
    ) -> Result<Arc<Self>> {
        super::config::validate_budgets(&budgets)?;
        Ok(Arc::new(Self {
            catalog,
            budgets,
            limits,
            view: RwLock::new(Arc::new(BudgetsView {
                board: None,
                overrides: Vec::new(),
                events_version: None,
                overrides_version: None,
                refreshed_at: DateTime::<Utc>::MIN_UTC,
            })),
            ledger: Ledger::new(holder),
            sender: Sender::new(alerts::DEFAULT_BACKOFF.to_vec(), Duration::from_secs(10))?,
            observer: Arc::new(NoObserver),
            sends_alerts: true,
            refreshing: tokio::sync::Mutex::new(RefreshMemo::default()),
        }))
    }

    /// Counts what happens in `observer` (set once, before the service is shared).
    pub fn with_observer(self: Arc<Self>, observer: Arc<dyn BudgetObserver>) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut s) => {
                s.observer = observer;
                Arc::new(s)
            }
            Err(shared) => shared,
        }
    }

    /// A service that only reads the states: no alerts are claimed or sent.
    pub fn without_alerts(self: Arc<Self>) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut s) => {
                s.sends_alerts = false;
                Arc::new(s)
            }
            Err(shared) => shared,
        }
    }

    /// Replaces the alert sender (tests use short backoffs).
    pub fn with_sender(self: Arc<Self>, sender: Sender) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut s) => {
                s.sender = sender;
                Arc::new(s)
            }
            Err(shared) => shared,
        }
    }

    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    pub fn view(&self) -> Arc<BudgetsView> {
        self.view
            .read()
            .map_or_else(|poisoned| poisoned.into_inner().clone(), |v| v.clone())
    }

    /// The action `call` must take now; None before the first read.
    pub fn decide(&self, call: &Call, now: DateTime<Utc>) -> Option<Decision> {
        let view = self.view();
        let decision = view.board.as_ref()?.decide(call, now);
        self.observer.decision(&decision);
        Some(decision)
    }

    /// Holds `req.estimate` against every hard budget covering the call, or says which has
    /// no room. The reservation is stored before it is granted, so a restart reloads it.
    pub async fn reserve(&self, req: ReservationRequest, now: DateTime<Utc>) -> Result<Reserved> {
        let view = self.view();
        let Some(board) = view.board.as_ref() else {
            return Ok(Reserved::NotReady);
        };
        let reservation = match self.ledger.reserve(board, req, now) {
            Ok(r) => r,
            Err(refusal) => {
                self.observer.reservation("refused", 1);
                return Ok(Reserved::Refused(refusal));
            }
        };
        if let Err(e) = reservations::store(self.catalog.storage(), &reservation).await {
            self.ledger.release(&reservation.id);
            return Err(e);
        }
        self.observer.reservation("held", 1);
        Ok(Reserved::Held(reservation))
    }

    /// Ends a reservation before its event or ttl; false when there is none of that id.
    pub async fn release(&self, id: &str) -> Result<bool> {
        let Some(r) = self.ledger.release(id) else {
            return Ok(false);
        };
        reservations::remove(self.catalog.storage(), &r.id).await?;
        self.observer.reservation("released", 1);
        Ok(true)
    }

    /// Records an override of `budget` (one commit to `budget_overrides`) and refreshes the
    /// states at once. `Ok(Err)` is a request to fix (unknown budget, bad fields).
    pub async fn add_override(
        &self,
        budget: &str,
        req: OverrideRequest,
        created_by: &str,
    ) -> Result<std::result::Result<Override, String>> {
        if !self.budgets.iter().any(|b| b.name == budget) {
            return Ok(Err(format!("no budget is named `{budget}`")));
        }
        let o = match req.check(budget, created_by, Utc::now()) {
            Ok(o) => o,
            Err(why) => return Ok(Err(why)),
        };
        overrides::append(self.catalog.storage(), &o).await?;
        info!(budget, override_id = %o.id, expires_at = %o.expires_at, "budget override recorded");
        self.refresh(true).await?;
        Ok(Ok(o))
    }

    /// Every budget as the API shows it.
    pub async fn reports(&self, now: DateTime<Utc>) -> Vec<BudgetReport> {
        let mut out = Vec::with_capacity(self.budgets.len());
        for b in &self.budgets {
            out.push(self.report_of(b, now).await);
        }
        out
    }

    /// One budget as the API shows it; None for an unknown name.
    pub async fn report(&self, name: &str, now: DateTime<Utc>) -> Option<BudgetReport> {
        let b = self.budgets.iter().find(|b| b.name == name)?;
        Some(self.report_of(b, now).await)
    }

    async fn report_of(&self, budget: &Budget, now: DateTime<Utc>) -> BudgetReport {
        let view = self.view();
        let standing = view
            .board
            .as_ref()
            .and_then(|board| {
                board
                    .standings
                    .iter()
                    .find(|s| s.budget.name == budget.name)
            })
            .cloned();
        let effective = standing.as_ref().map_or(budget, |s| &s.budget);
        let held = self.ledger.held(effective, None, now);
        let alerts = match standing
            .as_ref()
            .and_then(|s| s.total.as_ref())
            .map(|t| t.period_start)
        {
            Some(start) => alerts::records_since(self.catalog.storage(), &budget.name, start)
                .await
                .unwrap_or_else(|e| {
                    warn!(budget = %budget.name, error = %e, "reading alert records failed");
                    Vec::new()
                }),
            None => Vec::new(),
        };
        let mut active: Vec<Override> = view
            .overrides
            .iter()
            .filter(|o| o.budget == budget.name && o.is_active(now))
            .cloned()
            .collect();
        active.reverse();
        BudgetReport {
            configured: budget.clone(),
            standing,
            overrides: active,
            held,
            alerts,
        }
    }

    /// Resumes the alerts a crashed sender left pending, then refreshes every
    /// [`POLL_INTERVAL`] until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        if self.budgets.is_empty() {
            return;
        }
        self.resume_alerts().await;
        loop {
            if let Err(e) = self.refresh(false).await {
                warn!(error = %e, "refreshing the budget states failed; keeping the last ones");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Recomputes the states when the data, the overrides or a period changed (or `force`),
    /// then settles reservations and sends the alerts that are due.
    pub async fn refresh(&self, force: bool) -> Result<()> {
        let mut memo = self.refreshing.lock().await;
        let now = Utc::now();
        // A forced refresh follows a commit of this process (an override): it must see it.
        let snapshot = if force {
            self.catalog.refresh().await?
        } else {
            self.catalog.fresh_snapshot(POLL_INTERVAL / 2).await?
        };
        let old = self.view();
        if !force && !self.is_stale(&old, &snapshot, now) {
            self.sync_reservations(&mut memo, now).await;
            return Ok(());
        }
        let active =
            overrides::read_active(&self.catalog, snapshot.clone(), &self.limits, now).await?;
        let effective: Vec<Budget> = self
            .budgets
            .iter()
            .map(|b| overrides::apply(b, &active, now).0)
            .collect();
        let requests: Vec<SpendRequest<'_>> = effective
            .iter()
            .map(|b| SpendRequest {
                budget: b,
                window: b.period.window(now),
            })
            .collect();
        let report = read_spend(&self.catalog, snapshot.clone(), &self.limits, &requests).await?;
        let as_of = report.as_of.unwrap_or(now);
        let standings = effective
            .iter()
            .zip(&report.spends)
            .map(|(b, spend)| standing(b, spend, as_of))
            .collect();
        let board = Board { standings, as_of };
        self.settle(&snapshot, now).await;
        self.observer
            .states(&board, &|s| self.ledger.held(&s.budget, None, now));
        let due = if self.sends_alerts {
            alerts::due_alerts(&board, now)
        } else {
            Vec::new()
        };
        let view = Arc::new(BudgetsView {
            board: Some(board),
            overrides: active,
            events_version: snapshot.version(EVENTS_TABLE),
            overrides_version: snapshot.version(overrides::OVERRIDES_TABLE),
            refreshed_at: now,
        });
        match self.view.write() {
            Ok(mut v) => *v = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
        self.sync_reservations(&mut memo, now).await;
        self.send_due(due, now, &mut memo.claimed).await;
        Ok(())
    }

    /// Whether the view no longer holds for `snapshot` at `now`.
    fn is_stale(&self, view: &BudgetsView, snapshot: &Snapshot, now: DateTime<Utc>) -> bool {
        let Some(board) = &view.board else {
            return true;
        };
        let age = (now - view.refreshed_at).to_std().unwrap_or(Duration::ZERO);
        view.events_version != snapshot.version(EVENTS_TABLE)
            || view.overrides_version != snapshot.version(overrides::OVERRIDES_TABLE)
            || age >= MAX_STATE_AGE
            || view.overrides.iter().any(|o| o.expires_at <= now)
            || board
                .standings
                .iter()
                .filter_map(|s| s.total.as_ref().or_else(|| s.per_user.values().next()))
                .any(|state| !state.is_current(now))
    }

    /// Releases the reservations whose events are in `snapshot`, and those past their ttl.
    async fn settle(&self, snapshot: &Arc<Snapshot>, now: DateTime<Utc>) {
        let expired = self.ledger.expire(now);
        self.forget(&expired, "expired").await;
        let (job_ids, batch_ids) = self.ledger.open_keys();
        let Some(since) = self.ledger.oldest() else {
            return;
        };
        let Some(sql) = reservations::settled_sql(&job_ids, &batch_ids, since) else {
            return;
        };
        if snapshot.version(EVENTS_TABLE).is_none() {
            return;
        }
        let seen = match super::spend::run(&self.catalog, snapshot, &self.limits, &sql).await {
            Ok(batches) => seen_ids(&batches),
            Err(e) => {
                warn!(error = %e, "looking for the events of open reservations failed");
                return;
            }
        };
        let settled = self.ledger.settle(&seen);
        self.forget(&settled, "settled").await;
    }

    async fn forget(&self, done: &[Reservation], outcome: &'static str) {
        if done.is_empty() {
            return;
        }
        for r in done {
            if let Err(e) = reservations::remove(self.catalog.storage(), &r.id).await {
                warn!(error = %e, "deleting a finished reservation failed; the next server to see it expire retries");
            }
        }
        self.observer.reservation(outcome, done.len() as u64);
    }

    /// Reads the reservations stored by every server (after a restart: this server's own).
    async fn sync_reservations(&self, memo: &mut RefreshMemo, now: DateTime<Utc>) {
        if memo
            .reservations_synced
            .is_some_and(|t| t.elapsed() < RESERVATION_SYNC)
        {
            return;
        }
        match reservations::load(self.catalog.storage()).await {
            Ok(stored) => {
                self.ledger.merge(stored, now);
                memo.reservations_synced = Some(std::time::Instant::now());
            }
            Err(e) => warn!(error = %e, "reading stored reservations failed"),
        }
    }

    /// Claims each due alert not tried yet and sends the claimed ones in the background. A
    /// claim that failed (storage unreachable) is tried again at the next refresh.
    async fn send_due(
        &self,
        due: Vec<alerts::Alert>,
        now: DateTime<Utc>,
        tried: &mut HashSet<String>,
    ) {
        let storage = self.catalog.storage();
        for alert in due {
            let key = format!(
                "{}/{}/{}",
                alert.budget,
                alert.period_start.timestamp(),
                alert.kind
            );
            if !tried.insert(key.clone()) {
                continue;
            }
            match alerts::claim(storage, &alert, self.ledger.holder(), now).await {
                Ok(Some(record)) => self.spawn_delivery(record),
                Ok(None) => {
                    debug!(budget = %alert.budget, kind = %alert.kind, "alert already claimed")
                }
                Err(e) => {
                    tried.remove(&key);
                    warn!(budget = %alert.budget, error = %e, "claiming an alert failed; the next refresh tries again");
                }
            }
        }
    }

    async fn resume_alerts(&self) {
        match alerts::unfinished(self.catalog.storage(), ALERT_RESUME_AFTER, Utc::now()).await {
            Ok(records) => {
                for mut record in records {
                    record.claimed_by = self.ledger.holder().to_string();
                    info!(budget = %record.budget, kind = %record.kind, "resuming an alert a stopped server left pending");
                    self.spawn_delivery(record);
                }
            }
            Err(e) => warn!(error = %e, "looking for pending alerts failed"),
        }
    }

    fn spawn_delivery(&self, mut record: AlertRecord) {
        let Some(budget) = self.budgets.iter().find(|b| b.name == record.budget) else {
            return;
        };
        let webhooks = budget.webhooks.clone();
        let storage = self.catalog.storage().clone();
        let sender = self.sender.clone();
        let observer = self.observer.clone();
        tokio::spawn(async move {
            let started = Utc::now();
            let outcome = sender
                .deliver(&storage, &webhooks, &mut record, Utc::now)
                .await;
            observer.alert(
                &record.budget,
                &record.kind.to_string(),
                outcome.delivered,
                outcome.attempts,
                outcome.failed_attempts,
            );
            let run = alerts::job_run(&record, started, Utc::now());
            if let Err(e) = JobRuns::append(&storage, &[run]).await {
                warn!(budget = %record.budget, error = %e, "recording an alert in job_runs failed");
            }
        });
    }
}

/// A budget's standing from its spend.
fn standing(b: &Budget, spend: &super::spend::BudgetSpend, as_of: DateTime<Utc>) -> BudgetStanding {
    if b.scope.per_user {
        BudgetStanding {
            budget: b.clone(),
            total: None,
            per_user: spend
                .per_user
                .iter()
                .map(|(user, amount)| {
                    (
                        user.clone(),
                        BudgetState::for_user(b, user, spend.window, *amount, as_of),
                    )
                })
                .collect(),
        }
    } else {
        BudgetStanding {
            budget: b.clone(),
            total: Some(BudgetState::compute(b, spend.window, spend.total, as_of)),
            per_user: Default::default(),
        }
    }
}

/// The job and batch ids of a [`reservations::settled_sql`] result.
fn seen_ids(batches: &[arrow::array::RecordBatch]) -> Seen {
    let mut seen = Seen {
        job_ids: HashSet::new(),
        batch_ids: HashSet::new(),
    };
    for b in batches {
        for (col, into) in [(0, &mut seen.job_ids), (1, &mut seen.batch_ids)] {
            let Ok(values) = crate::text::utf8(b.column(col), "ai_usage id") else {
                continue;
            };
            into.extend(values.iter().flatten().map(str::to_string));
        }
    }
    seen
}
