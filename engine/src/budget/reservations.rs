//! Spend in flight: the estimated cost of AI batches that run now but whose `ai_usage` events
//! are not committed yet, held against the hard budgets so that many concurrent callers cannot
//! overshoot a budget between two ingest commits.
//!
//! ```text
//! reserve(call, estimate) --Ledger::reserve: check + insert under one lock--> Reservation
//!                         --store(): _strata/budgets/reservations/<id>.json (create-only)
//! the batch runs; its ai_usage events (same batch_id, else same job_id) are committed
//! refresh: settled_sql finds them --Ledger::settle--> remove(file) (cost now in the spend)
//!          the ttl ended          --Ledger::expire--> remove(file)
//!          DELETE (released)      --Ledger::release-> remove(file)
//! ```
//!
//! A hard budget covering the call has room when `spend + held + estimate <= amount`, where
//! `held` sums the live reservations that budget covers (the same user's, for a per-user
//! budget), and refuses anything while its state asks callers to pause or stop. The check and
//! the insert are one step under one lock, so 1,000 concurrent callers get exactly as many
//! reservations as fit. Soft budgets never refuse.
//!
//! Persistence, for restarts and for several servers on one root:
//! - A reservation is granted only once its file exists (created with a conditional put).
//! - Every server lists the files about once a second ([`load`]) and merges them into its ledger
//!   ([`Ledger::merge`]): after a restart the held spend is back within a second, and each server
//!   counts the others' holds. Between two listings, two servers may together grant what one of
//!   them would have refused; a single server never does.
//! - Whichever server sees a reservation's events, its end or its release deletes the file; the
//!   others drop it at their next merge, since a file listed once and missing later was ended.
//! - A reservation this ledger ended is remembered until its ttl is over, so that a listing
//!   taken before its file was deleted cannot bring it back. A file whose server stopped is
//!   merged even when expired, so that the next [`Ledger::expire`] deletes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use object_store::{GetOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::config::Budget;
use super::decision::{Board, BudgetStanding, Call};
use super::money::Money;
use super::spend::{timestamp_literal, EVENTS_TABLE};
use crate::delta::layout::{reservation_file, reservations_dir};
use crate::literal::{date_literal, text_literal};
use crate::{EngineError, Result, Storage};

/// The most job ids and the most batch ids one [`settled_sql`] statement asks for; the rest
/// wait for the next refresh (the caller passes the oldest first, see [`Ledger::open_keys`]).
pub const MAX_SETTLE_KEYS: usize = 1_000;
/// Events are looked for from this long before the oldest reservation: the job runner's clock,
/// which stamps `occurred_at`, may be behind the server's.
pub const SETTLE_SKEW: TimeDelta = TimeDelta::minutes(10);
/// How long past its expiry an ended reservation is still kept from coming back.
const GONE_GRACE: TimeDelta = TimeDelta::minutes(1);

/// What a caller asks to hold: the call, its estimated cost, for how long, and the ids its
/// `ai_usage` events will carry (at least one of them).
#[derive(Debug, Clone)]
pub struct ReservationRequest {
    pub call: Call,
    pub estimate: Money,
    pub ttl: Duration,
    pub job_id: Option<String>,
    pub batch_id: Option<String>,
}

/// Spend held for a batch in flight, until its events are committed or `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    /// A random UUID; also its file's name.
    pub id: String,
    pub feature: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub user_id: Option<String>,
    pub estimated_cost: Money,
    pub job_id: Option<String>,
    pub batch_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The ledger (server process) that granted it.
    pub holder: String,
}

/// Why a reservation was not granted: the budget without room, and a message naming it with
/// its amount, spend and holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Empty when the request itself is wrong (an estimate that is not positive).
    pub budget: String,
    pub message: String,
}

/// The job and batch ids found in committed `ai_usage` events (see [`settled_sql`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub job_ids: HashSet<String>,
    pub batch_ids: HashSet<String>,
}

/// The open reservations a server knows: its own and those merged from storage.
pub struct Ledger {
    holder: String,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    open: BTreeMap<String, Open>,
    /// Reservations this ledger ended, and until when a stored copy must not bring them back.
    gone: HashMap<String, DateTime<Utc>>,
}

struct Open {
    reservation: Reservation,
    /// `reservation.call()`, built once: every reservation checks every open one's.
    call: Call,
    /// Whether a listing of storage showed its file: only then does a later listing without
    /// it mean that another server ended it.
    listed: bool,
}

impl Reservation {
    /// The call it holds spend for.
    pub fn call(&self) -> Call {
        Call {
            feature: self.feature.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            user_id: self.user_id.clone(),
        }
    }

    /// Whether it still holds spend at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    /// A batch id settles only on its batch's events; a bare job id on its job's.
    fn is_settled_by(&self, seen: &Seen) -> bool {
        match (&self.batch_id, &self.job_id) {
            (Some(batch), _) => seen.batch_ids.contains(batch),
            (None, Some(job)) => seen.job_ids.contains(job),
            (None, None) => false,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Ledger {
    /// An empty ledger whose reservations name `holder` (unique per server process).
    pub fn new(holder: impl Into<String>) -> Self {
        Self {
            holder: holder.into(),
            entries: Mutex::new(Entries::default()),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Every change under the lock is a whole map operation: a panic elsewhere leaves the
        // maps consistent, so a poisoned lock is still good to use.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `req.estimate` when every hard budget of `board` covering the call has room for
    /// it at `now`, or names the first that has not (see the module doc).
    pub fn reserve(
        &self,
        board: &Board,
        req: ReservationRequest,
        now: DateTime<Utc>,
    ) -> std::result::Result<Reservation, Refusal> {
        if !req.estimate.is_positive() {
            return Err(Refusal {
                budget: String::new(),
                message: format!(
                    "the estimated cost must be more than zero, not {}",
                    req.estimate
                ),
            });
        }
        let mut entries = self.lock();
        if let Some(refusal) = board
            .standings
            .iter()
            .find_map(|s| no_room(s, &req.call, req.estimate, &entries.open, now))
        {
            return Err(refusal);
        }
        let reservation = Reservation {
            id: uuid::Uuid::new_v4().to_string(),
            feature: req.call.feature,
            provider: req.call.provider,
            model: req.call.model,
            user_id: req.call.user_id,
            estimated_cost: req.estimate,
            job_id: req.job_id,
            batch_id: req.batch_id,
            created_at: now,
            expires_at: TimeDelta::from_std(req.ttl)
                .ok()
                .and_then(|ttl| now.checked_add_signed(ttl))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            holder: self.holder.clone(),
        };
        entries.open.insert(
            reservation.id.clone(),
            Open::new(reservation.clone(), false),
        );
        Ok(reservation)
    }

    /// What live reservations hold of `budget` at `now`. For a per-user budget, `user_id`
    /// narrows it to that user's holds; None sums every user's.
    pub fn held(&self, budget: &Budget, user_id: Option<&str>, now: DateTime<Utc>) -> Money {
        held_in(&self.lock().open, budget, user_id, now)
    }

    /// Ends a reservation early; None when this ledger has none of that id.
    pub fn release(&self, id: &str) -> Option<Reservation> {
        self.lock().take(&[id.to_string()]).pop()
    }

    /// Removes and returns the reservations past their ttl at `now` (their files are the
    /// caller's to delete).
    pub fn expire(&self, now: DateTime<Utc>) -> Vec<Reservation> {
        let mut entries = self.lock();
        let ids: Vec<String> = entries
            .open
            .values()
            .filter(|o| !o.reservation.is_live(now))
            .map(|o| o.reservation.id.clone())
            .collect();
        let expired = entries.take(&ids);
        entries.gone.retain(|_, until| *until > now);
        expired
    }

    /// Removes and returns the reservations whose events are in `seen`.
    pub fn settle(&self, seen: &Seen) -> Vec<Reservation> {
        let mut entries = self.lock();
        let ids: Vec<String> = entries
            .open
            .values()
            .filter(|o| o.reservation.is_settled_by(seen))
            .map(|o| o.reservation.id.clone())
            .collect();
        entries.take(&ids)
    }

    /// What to look for in `ai_usage`, oldest reservation first, without repeats: the job ids
    /// of reservations without a batch id, and the batch ids.
    pub fn open_keys(&self) -> (Vec<String>, Vec<String>) {
        let (mut jobs, mut batches) = (Vec::new(), Vec::new());
        let (mut seen_jobs, mut seen_batches) = (HashSet::new(), HashSet::new());
        for r in self.list() {
            match (r.batch_id, r.job_id) {
                (Some(batch), _) => {
                    if seen_batches.insert(batch.clone()) {
                        batches.push(batch);
                    }
                }
                (None, Some(job)) => {
                    if seen_jobs.insert(job.clone()) {
                        jobs.push(job);
                    }
                }
                (None, None) => {}
            }
        }
        (jobs, batches)
    }

    /// Every reservation of the ledger, oldest first (expired ones until [`Ledger::expire`]).
    pub fn list(&self) -> Vec<Reservation> {
        let mut all: Vec<Reservation> = self
            .lock()
            .open
            .values()
            .map(|o| o.reservation.clone())
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    /// When the oldest reservation was made (where to start looking for events).
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.lock()
            .open
            .values()
            .map(|o| o.reservation.created_at)
            .min()
    }

    /// Merges the reservations listed in storage at `now` (after a restart; other servers'):
    /// adds those not known and not ended here, and drops known ones whose file was listed
    /// before and is missing now (another server settled, released or expired them). This
    /// server's reservations not listed yet (their file is being written) are kept.
    pub fn merge(&self, stored: Vec<Reservation>, now: DateTime<Utc>) {
        let mut guard = self.lock();
        let entries = &mut *guard;
        entries.gone.retain(|_, until| *until > now);
        let listed: HashSet<String> = stored.iter().map(|r| r.id.clone()).collect();
        entries
            .open
            .retain(|id, o| !o.listed || listed.contains(id));
        for reservation in stored {
            if entries.gone.contains_key(&reservation.id) {
                continue;
            }
            match entries.open.get_mut(&reservation.id) {
                Some(known) => known.listed = true,
                None => {
                    entries
                        .open
                        .insert(reservation.id.clone(), Open::new(reservation, true));
                }
            }
        }
    }
}

impl Open {
    fn new(reservation: Reservation, listed: bool) -> Self {
        Self {
            call: reservation.call(),
            reservation,
            listed,
        }
    }

    /// Whether it holds spend of `budget` at `now`; `user_id` narrows a per-user budget to
    /// one user's holds.
    fn holds(&self, budget: &Budget, user_id: Option<&str>, now: DateTime<Utc>) -> bool {
        self.reservation.is_live(now)
            && budget.scope.covers(&self.call)
            && (!budget.scope.per_user
                || user_id.is_none()
                || self.reservation.user_id.as_deref() == user_id)
    }
}

impl Entries {
    /// Removes the reservations of `ids` (those it has) and remembers them as ended.
    fn take(&mut self, ids: &[String]) -> Vec<Reservation> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(o) = self.open.remove(id) {
                let until = o
                    .reservation
                    .expires_at
                    .checked_add_signed(GONE_GRACE)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                self.gone.insert(id.clone(), until);
                out.push(o.reservation);
            }
        }
        out
    }
}

/// What live reservations hold of `budget` (see [`Ledger::held`]).
fn held_in(
    open: &BTreeMap<String, Open>,
    budget: &Budget,
    user_id: Option<&str>,
    now: DateTime<Utc>,
) -> Money {
    open.values()
        .filter(|o| o.holds(budget, user_id, now))
        .fold(Money::ZERO, |sum, o| {
            sum.checked_add(o.reservation.estimated_cost)
                .unwrap_or(Money::MAX)
        })
}

/// Why `standing` cannot take `estimate` more for `call`, if it cannot: a hard budget covering
/// the call whose state blocks, or whose spend and holds leave too little room.
fn no_room(
    standing: &BudgetStanding,
    call: &Call,
    estimate: Money,
    open: &BTreeMap<String, Open>,
    now: DateTime<Utc>,
) -> Option<Refusal> {
    let budget = &standing.budget;
    if !budget.hard || !budget.scope.covers(call) {
        return None;
    }
    // `covers` proved a per-user budget's call names its user.
    let user = call.user_id.as_deref().filter(|_| budget.scope.per_user);
    let state = match user {
        Some(u) => standing.per_user.get(u),
        None => standing.total.as_ref(),
    }
    .filter(|s| s.is_current(now));
    let whose = if user.is_some() {
        " (this user's share)"
    } else {
        ""
    };
    let refuse = |message: String| {
        Some(Refusal {
            budget: budget.name.clone(),
            message,
        })
    };
    if let Some(s) = state {
        if let Some(action) = s.action.filter(|a| a.blocks()) {
            return refuse(format!(
                "budget `{}`{whose} asks callers to {action} this {} (at {} of {} USD): no spend can be reserved",
                budget.name,
                budget.period.kind,
                s.share_text(),
                budget.amount,
            ));
        }
    }
    let spend = state.map_or(Money::ZERO, |s| s.spend);
    let held = held_in(open, budget, user, now);
    let needed = spend
        .checked_add(held)
        .and_then(|m| m.checked_add(estimate))
        .unwrap_or(Money::MAX);
    if needed <= budget.amount {
        return None;
    }
    refuse(format!(
        "budget `{}`{whose} is a hard budget of {} USD this {} with {spend} spent and {held} held: {estimate} more does not fit",
        budget.name, budget.amount, budget.period.kind,
    ))
}

/// Stores `r` as `_strata/budgets/reservations/<id>.json`, created only if absent.
pub async fn store(storage: &Storage, r: &Reservation) -> Result<()> {
    let path = reservation_file(&r.id);
    let body = serde_json::to_vec_pretty(r)
        .map_err(|e| EngineError::Internal(format!("encoding reservation {}: {e}", r.id)))?;
    let what = format!("storing reservation {path}");
    if storage
        .create_if_absent(&path, PutPayload::from(body), &what)
        .await?
    {
        Ok(())
    } else {
        Err(EngineError::Internal(format!(
            "reservation file {path} exists already (ids are random UUIDs: this is a bug)"
        )))
    }
}

/// Deletes the file of reservation `id`; a file already gone is fine.
pub async fn remove(storage: &Storage, id: &str) -> Result<()> {
    storage.delete_if_present(&reservation_file(id)).await
}

/// Every stored reservation, oldest first. A file that is no reservation, or not the one its
/// name says, is skipped with a warning: one bad file must not hide the others.
pub async fn load(storage: &Storage) -> Result<Vec<Reservation>> {
    let store = storage.store();
    let dir = reservations_dir();
    let listed: std::result::Result<Vec<_>, _> = store.list(Some(&dir)).try_collect().await;
    let entries = match listed {
        Ok(entries) => entries,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => {
            return Err(EngineError::Internal(format!(
                "listing reservations under {dir}: {e}"
            )))
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(id) = entry
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        let read = match store.get_opts(&entry.location, GetOptions::default()).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match read {
            Ok(bytes) => bytes,
            // Settled or released between the listing and the read.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => {
                return Err(EngineError::Internal(format!(
                    "reading reservation {}: {e}",
                    entry.location
                )))
            }
        };
        // The parse error is not logged: it may quote the file's values (user ids).
        match serde_json::from_slice::<Reservation>(&bytes) {
            Ok(r) if r.id == id => out.push(r),
            _ => warn!(path = %entry.location, "skipping an unreadable reservation file"),
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

/// The statement that finds which of `job_ids` and `batch_ids` have committed `ai_usage` events
/// since `since` (less [`SETTLE_SKEW`]); None when both are empty. Each list is cut to its first
/// [`MAX_SETTLE_KEYS`] values; every value goes in as a hex text literal.
pub fn settled_sql(
    job_ids: &[String],
    batch_ids: &[String],
    since: DateTime<Utc>,
) -> Option<String> {
    let within = |column: &str, values: &[String]| {
        (!values.is_empty()).then(|| {
            let items: Vec<String> = values
                .iter()
                .take(MAX_SETTLE_KEYS)
                .map(|v| text_literal(v.as_str()))
                .collect();
            format!("{column} IN ({})", items.join(", "))
        })
    };
    let keys: Vec<String> = [within("job_id", job_ids), within("batch_id", batch_ids)]
        .into_iter()
        .flatten()
        .collect();
    if keys.is_empty() {
        return None;
    }
    let from = since.checked_sub_signed(SETTLE_SKEW).unwrap_or(since);
    Some(format!(
        "SELECT DISTINCT job_id, batch_id FROM {EVENTS_TABLE}\nWHERE occurred_at >= {} AND event_date >= {}\n  AND ({})",
        timestamp_literal(from),
        date_literal(from.date_naive()),
        keys.join(" OR ")
    ))
}

// The tests are in reservations/tests.rs: together they pass the length of one file.
#[cfg(test)]
mod tests;
