//! `/v1/ai/budgets`: the AI budgets' states, the decision the AI job runner must follow,
//! reservations of spend in flight, and audited overrides. Every answer comes from the
//! [`BudgetService`] in memory; only an override and a reservation write to storage.
//!
//! ```text
//! GET  /v1/ai/budgets                      (panels) every budget: state, users, held, overrides, alerts
//! GET  /v1/ai/budgets/{name}               (panels) one of them
//! GET  /v1/ai/budgets/decision?feature=..  (ai)     the action to take now, from memory
//! POST /v1/ai/budgets/reservations         (ai)     hold an estimate against the hard budgets
//! DELETE /v1/ai/budgets/reservations/{id}  (ai)     release it early
//! POST /v1/ai/budgets/{name}/overrides     (admin)  new amount or suspension, with reason, approver, expiry
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use strata_engine::budget::{
    BudgetReport, BudgetService, BudgetState, Call, Money, OverrideRequest, ReservationRequest,
    Reserved,
};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

/// Per-user states shown per budget, largest spend first.
const USERS_SHOWN: usize = 20;
/// A reservation lasts this long unless the request says otherwise.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(300);
/// The longest a reservation may last.
pub const MAX_RESERVATION_TTL: Duration = Duration::from_secs(3600);
/// The longest text of a scope field or id a request may carry.
const MAX_FIELD: usize = 256;

fn service(state: &AppState) -> Result<&Arc<BudgetService>, ApiError> {
    state.budgets.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "no AI budgets are configured on this server ([[budgets]] in strata.toml, or --budgets)"
                .into(),
        )
    })
}

/// `{as_of, lag_ms, budgets: [..]}`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(service) = state.budgets.as_ref() else {
        return Ok(Json(json!({ "as_of": null, "lag_ms": null, "budgets": [] })).into_response());
    };
    let now = Utc::now();
    let reports = service.reports(now).await;
    let as_of = service.view().board.as_ref().map(|b| b.as_of);
    Ok(Json(json!({
        "as_of": as_of,
        "lag_ms": as_of.map(|t| lag_ms(t, now)),
        "budgets": reports.iter().map(|r| report_json(r, now)).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// One budget, or 404.
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let service = service(&state)?;
    let now = Utc::now();
    let report = service
        .report(&name, now)
        .await
        .ok_or_else(|| ApiError::NotFound(format!("no budget is named `{}`", shown(&name))))?;
    Ok(Json(report_json(&report, now)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    feature: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    user_id: Option<String>,
}

impl CallQuery {
    fn into_call(self) -> Result<Call, ApiError> {
        let field = |name: &str, v: Option<String>| -> Result<Option<String>, ApiError> {
            match v {
                Some(v) if v.is_empty() => Ok(None),
                Some(v) if v.len() > MAX_FIELD => Err(ApiError::bad_request(
                    "bad_parameter",
                    format!("`{name}` may be at most {MAX_FIELD} bytes"),
                )),
                other => Ok(other),
            }
        };
        Ok(Call {
            feature: field("feature", self.feature)?,
            provider: field("provider", self.provider)?,
            model: field("model", self.model)?,
            user_id: field("user_id", self.user_id)?,
        })
    }
}

/// The action the caller must take now, from the states in memory.
pub async fn decision(
    State(state): State<AppState>,
    query: Result<Query<CallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(
            "bad_parameter",
            format!(
                "{}; parameters are feature, provider, model and user_id",
                e.body_text()
            ),
        )
    })?;
    let call = query.into_call()?;
    let service = service(&state)?;
    let now = Utc::now();
    let Some(d) = service.decide(&call, now) else {
        return Err(not_ready());
    };
    Ok(Json(json!({
        "action": d.action,
        "allow": d.allows(),
        "batch_percent": d.batch_percent(),
        "budget": d.budget,
        "reason": d.reason,
        "as_of": d.as_of,
        "lag_ms": u64::try_from(d.lag.as_millis()).unwrap_or(u64::MAX),
    }))
    .into_response())
}

fn not_ready() -> ApiError {
    ApiError::Overloaded {
        retry_after_secs: 1,
        message: "the budgets are being read for the first time; retry in a second".into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationBody {
    estimated_cost: String,
    feature: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    user_id: Option<String>,
    job_id: Option<String>,
    batch_id: Option<String>,
    ttl_secs: Option<u64>,
}

/// Holds the estimate against every hard budget covering the call: 201, or 409 naming the
/// budget without room.
pub async fn reserve(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body: ReservationBody = json_body(&body)?;
    let service = service(&state)?;
    let req = reservation_request(body)?;
    match service.reserve(req, Utc::now()).await? {
        Reserved::Held(r) => Ok((StatusCode::CREATED, Json(json!(r))).into_response()),
        Reserved::Refused(refusal) => Err(ApiError::Conflict {
            code: "budget_exhausted",
            message: refusal.message,
        }),
        Reserved::NotReady => Err(not_ready()),
    }
}

fn reservation_request(body: ReservationBody) -> Result<ReservationRequest, ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_request", m);
    let estimate = Money::parse(body.estimated_cost.trim())
        .map_err(|e| bad(format!("`estimated_cost`: {e}")))?;
    if !estimate.is_positive() {
        return Err(bad("`estimated_cost` must be more than zero".into()));
    }
    let ttl = match body.ttl_secs {
        None => DEFAULT_RESERVATION_TTL,
        Some(secs) if (1..=MAX_RESERVATION_TTL.as_secs()).contains(&secs) => {
            Duration::from_secs(secs)
        }
        Some(_) => {
            return Err(bad(format!(
                "`ttl_secs` must be 1 to {}",
                MAX_RESERVATION_TTL.as_secs()
            )))
        }
    };
    let call = CallQuery {
        feature: body.feature,
        provider: body.provider,
        model: body.model,
        user_id: body.user_id,
    }
    .into_call()?;
    let id = |name: &str, v: Option<String>| -> Result<Option<String>, ApiError> {
        match v {
            Some(v) if v.is_empty() || v.len() > MAX_FIELD => {
                Err(bad(format!("`{name}` must be 1 to {MAX_FIELD} bytes")))
            }
            other => Ok(other),
        }
    };
    let (job_id, batch_id) = (id("job_id", body.job_id)?, id("batch_id", body.batch_id)?);
    if job_id.is_none() && batch_id.is_none() {
        return Err(bad(
            "give the `batch_id` (or `job_id`) the batch's ai_usage events will carry: the reservation ends when they arrive"
                .into(),
        ));
    }
    Ok(ReservationRequest {
        call,
        estimate,
        ttl,
        job_id,
        batch_id,
    })
}

/// Releases a reservation before its events or its ttl: 204, or 404.
pub async fn release(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let service = service(&state)?;
    if service.release(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!(
            "no open reservation `{}` on this server",
            shown(&id)
        )))
    }
}

/// Records an override (scope admin): 201 with the override, reflected in decisions at once.
pub async fn add_override(
    State(state): State<AppState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let service = service(&state)?;
    if !service.budgets().iter().any(|b| b.name == name) {
        return Err(ApiError::NotFound(format!(
            "no budget is named `{}`",
            shown(&name)
        )));
    }
    let req: OverrideRequest = json_body(&body)?;
    let by = caller.map_or_else(|| "unknown".to_string(), |Extension(c)| c.name);
    match service.add_override(&name, req, &by).await? {
        Ok(o) => Ok((StatusCode::CREATED, Json(json!(o))).into_response()),
        Err(why) => Err(ApiError::bad_request("bad_request", why)),
    }
}

/// A JSON body, whatever its declared content type (clients of a budget API are scripts and
/// job runners that do not always set one), or a 400 saying what is wrong with it.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_request", format!("the JSON body: {e}")))
}

/// A client's text in a message: at most 64 characters, no control characters.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn lag_ms(as_of: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - as_of).num_milliseconds().max(0)).unwrap_or(0)
}

fn state_json(s: &BudgetState) -> Value {
    let mut v = json!(s);
    v["share"] = json!(s.share_text());
    v
}

/// One budget as the API and the dashboard show it.
pub fn report_json(r: &BudgetReport, now: DateTime<Utc>) -> Value {
    let b = &r.configured;
    let effective = r.standing.as_ref().map_or(b, |s| &s.budget);
    let (state, users) = match &r.standing {
        Some(s) => {
            let mut users: Vec<&BudgetState> = s.per_user.values().collect();
            users.sort_by(|a, b| b.spend.cmp(&a.spend).then(a.user_id.cmp(&b.user_id)));
            (
                s.total
                    .as_ref()
                    .filter(|t| t.is_current(now))
                    .map(state_json),
                users
                    .into_iter()
                    .filter(|u| u.is_current(now))
                    .take(USERS_SHOWN)
                    .map(state_json)
                    .collect::<Vec<_>>(),
            )
        }
        None => (None, Vec::new()),
    };
    json!({
        "name": b.name,
        "hard": effective.hard,
        "configured_hard": b.hard,
        "scope": {
            "feature": b.scope.feature, "provider": b.scope.provider,
            "model": b.scope.model, "per_user": b.scope.per_user,
        },
        "period": { "kind": b.period.kind, "tz": b.period.tz.name() },
        "configured_amount": b.amount,
        "amount": effective.amount,
        "thresholds": b.thresholds,
        "state": state,
        "users": users,
        "held": r.held,
        "overrides": r.overrides,
        "alerts": r.alerts,
        "webhooks": b.webhooks.len(),
    })
}
