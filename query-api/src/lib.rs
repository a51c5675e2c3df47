//! The HTTP API: SQL over HTTP, panels, health, metrics, OpenAPI and the dashboard page.
//!
//! ```text
//! client --HTTP--> [ query-api: http (connection cap, header/body deadlines) -> request_id -> observe -> json_errors
//!                    -> authorize (route scope, bearer, token and peer rate limits) -> route ] --> engine: Catalog / Panels / ResultCache
//!                   /v1/sql (streamed formats)   /v1/panels (JSON, ETag)   /v1/gdpr (durable requests)
//!                   /v1/ai/budgets (states, decisions and reservations from memory, overrides)
//!                   /metrics /healthz /readyz /v1/openapi.json   / (dashboard)
//! psql, DBeaver, Grafana --Postgres wire (--pg-listen)--> pg ----\
//! ADBC, JDBC --Arrow Flight SQL (--flight-listen)--> flight ------> query::start_query (the one query service)
//! ```

mod admission;
pub mod auth;
mod budget_metrics;
mod budgets;
mod encode;
mod error;
mod flight;
pub mod gdpr;
mod http;
mod metrics;
mod openapi;
mod panels;
mod pg;
mod query;
pub mod routes;
mod server;
mod sql;
mod tables;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::json;
use strata_engine::{Catalog, Panels, QueryLimits, ResultCache};
use tracing::{info, Instrument};

pub use auth::{new_token, Auth, Scope, TokenEntry};
pub use budgets::report_json as budget_json;
pub use encode::Format;
pub use error::ApiError;
pub use flight::FlightServer;
pub use http::HttpLimits;
pub use metrics::{ApiMetrics, Surface};
pub use pg::{PgOptions, PgServer, TlsFiles};
pub use query::{CacheUse, Described, Rows, Started, Statement};
pub use server::{Server, ServerConfig, ServerError};

/// The largest request body the API takes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Limits every query served over HTTP runs under. Each default is declared once, as a
/// `DEFAULT_*` constant below (or in [`HttpLimits::default`]), which the CLI flags read too.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub timeout: Duration,
    pub row_cap: usize,
    /// How old a catalog snapshot may be before a request refreshes it.
    pub max_age: Duration,
    pub query: QueryLimits,
    /// Queries (SQL and panel computations) running at once; the rest wait up to `queue_wait`,
    /// then get 503 with Retry-After.
    pub max_queries: usize,
    pub queue_wait: Duration,
    /// Memory all running queries of the server share; each query may take at most
    /// `query.memory_bytes` of it.
    pub server_memory_bytes: usize,
    /// Connections, header and body deadlines, and the per-address rate limit.
    pub http: HttpLimits,
}

impl ApiLimits {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_ROW_CAP: usize = 1_000_000;
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_millis(500);
    /// Memory one query may use, in MiB.
    pub const DEFAULT_QUERY_MEMORY_MB: usize = 1024;
    pub const DEFAULT_MAX_QUERIES: usize = 16;
    pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(2);
    /// Memory all running queries share, in MiB.
    pub const DEFAULT_SERVER_MEMORY_MB: usize = 4096;
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            timeout: Self::DEFAULT_TIMEOUT,
            row_cap: Self::DEFAULT_ROW_CAP,
            max_age: Self::DEFAULT_MAX_AGE,
            query: QueryLimits {
                memory_bytes: Some(Self::DEFAULT_QUERY_MEMORY_MB << 20),
                ..QueryLimits::default()
            },
            max_queries: Self::DEFAULT_MAX_QUERIES,
            queue_wait: Self::DEFAULT_QUEUE_WAIT,
            server_memory_bytes: Self::DEFAULT_SERVER_MEMORY_MB << 20,
            http: HttpLimits::default(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub panels: Arc<Panels>,
    pub cache: Arc<ResultCache>,
    pub auth: Arc<Auth>,
    pub limits: Arc<ApiLimits>,
    pub metrics: Arc<ApiMetrics>,
    pub registry: prometheus::Registry,
    running: Arc<sql::Running>,
    /// Slots of the queries that may run at once.
    admission: Arc<admission::Admission>,
    /// Buckets of the client addresses that have not shown a valid token.
    peers: Arc<auth::PeerLimiter>,
    /// GDPR requests: durable, one at a time; a purge drops the result cache and refreshes the
    /// catalog.
    gdpr: strata_engine::gdpr::GdprService,
    /// The AI budgets, when any are configured.
    pub budgets: Option<Arc<strata_engine::budget::BudgetService>>,
}

impl AppState {
    pub fn new(
        catalog: Arc<Catalog>,
        cache: Arc<ResultCache>,
        auth: Auth,
        limits: ApiLimits,
        registry: prometheus::Registry,
    ) -> Result<Self, ApiError> {
        let metrics = ApiMetrics::new(&registry).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut limits = limits;
        // One pool for every query of this server; each query's limit is its share of it.
        limits.query.server_pool = Some(strata_engine::memory::server_pool(
            limits.server_memory_bytes.max(1),
        ));
        let gdpr = strata_engine::gdpr::GdprService::for_catalog(catalog.clone()).on_purge({
            let cache = cache.clone();
            move || cache.clear()
        });
        Ok(Self {
            gdpr,
            admission: Arc::new(admission::Admission::new(
                limits.max_queries,
                limits.queue_wait,
            )),
            panels: Arc::new(Panels::new(cache.clone())?),
            catalog,
            cache,
            auth: Arc::new(auth),
            peers: Arc::new(crate::auth::PeerLimiter::new(
                limits.http.peer_rate_per_sec,
                limits.http.peer_burst,
            )),
            limits: Arc::new(limits),
            metrics: Arc::new(metrics),
            registry,
            running: Arc::default(),
            budgets: None,
        })
    }
}

pub(crate) fn caller(state: &AppState, headers: &HeaderMap) -> Result<auth::Caller, ApiError> {
    state.auth.authenticate(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(routes::DASHBOARD, get(dashboard))
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::READYZ, get(readyz))
        .route(routes::METRICS, get(metrics_text))
        .route(routes::OPENAPI, get(openapi))
        .route(routes::SQL, get(sql::get_sql).post(sql::post_sql))
        .route(routes::QUERY, delete(sql::delete_query))
        .route(routes::PANELS, get(panels::list))
        .route(routes::PANEL, get(panels::get))
        .route(routes::TABLES, get(tables::list))
        .route(routes::GDPR_EXPORTS, axum::routing::post(gdpr::post_export))
        .route(routes::GDPR_PURGES, axum::routing::post(gdpr::post_purge))
        .route(routes::GDPR_REQUEST, get(gdpr::get_request))
        .route(routes::GDPR_EXPORT_FILE, get(gdpr::get_export_file))
        .route(routes::AI_BUDGETS, get(budgets::list))
        .route(routes::AI_DECISION, get(budgets::decision))
        .route(
            routes::AI_RESERVATIONS,
            axum::routing::post(budgets::reserve),
        )
        .route(routes::AI_RESERVATION, delete(budgets::release))
        .route(routes::AI_BUDGET, get(budgets::get))
        .route(
            routes::AI_OVERRIDES,
            axum::routing::post(budgets::add_override),
        )
        .fallback(not_found)
        // Layers run bottom-up, each after routing (so they see the matched route), and all
        // before the handler's extractors read the body.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Serves until `shutdown` resolves, under `state.limits.http`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits.http.clone();
    http::serve_connections(listener, router(state), &limits, shutdown).await
}

/// A body declared bigger than [`MAX_BODY_BYTES`] is refused before a byte of it is read;
/// `DefaultBodyLimit` covers the bodies that declare no length (chunked).
async fn refuse_declared_oversize(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::PayloadTooLarge(format!(
            "the request body may be at most {MAX_BODY_BYTES} bytes"
        ))
        .into_response();
    }
    next.run(req).await
}

/// The header a request id travels in, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Runs the request inside a `request` span carrying its `request_id`, so every log line of
/// the request names it, and echoes the id in the `X-Request-Id` response header. The id is
/// the client's `X-Request-Id` when that is a short token of safe characters (it goes into
/// the logs as sent), else a new UUID.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    resp
}

/// 1 to 64 characters of `[A-Za-z0-9._-]`: nothing that could forge a log line or a header.
fn is_safe_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Latency by route and panel, errors by code, and one log line per request (never the SQL
/// text or parameters: they can name a data subject).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Only known panel names become label values: the path is the client's to choose.
    let panel = if route == routes::PANEL {
        let name = req.uri().path().rsplit('/').next().unwrap_or("");
        if state.panels.get(name).is_ok() {
            name.to_string()
        } else {
            "unknown".to_string()
        }
    } else {
        String::new()
    };
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(&route, &method, status, elapsed);
    if let Some(code) = resp.extensions().get::<error::ErrorCode>() {
        state.metrics.count_error(&route, code.0);
    }
    if route != routes::HEALTHZ && route != routes::METRICS {
        info!(
            method = %method,
            route = %route,
            panel = %panel,
            status = status.as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /v1/openapi.json".into())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.catalog.fresh_snapshot(Duration::from_secs(5)).await {
        Ok(snap) => Json(json!({ "ready": true, "tables": snap.tables.len() })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: storage unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "ready": false, "error": "storage is not reachable", "code": "not_ready" })),
            )
                .into_response()
        }
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    state.metrics.running.set(state.running.len() as i64);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&state.registry.gather())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

async fn openapi(State(state): State<AppState>) -> Response {
    Json(openapi::document(&state.panels)).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

#[cfg(test)]
mod request_id_tests {
    use super::is_safe_request_id;

    #[test]
    fn only_short_safe_tokens_are_taken_from_clients() {
        for ok in ["abc", "req-42_x.1", "0123456789abcdef0123456789abcdef"] {
            assert!(is_safe_request_id(ok), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "a b", "a\nb", "a\"b", "é", "x=1", long.as_str()] {
            assert!(!is_safe_request_id(bad), "{bad}");
        }
    }
}
