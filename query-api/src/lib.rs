//! The HTTP API: SQL over HTTP, panels, health, metrics, OpenAPI and the dashboard page.
//!
//! ```text
//! client --HTTP--> [ query-api: auth (bearer, scopes, rate limit) -> route ] --> engine: Catalog / Panels / ResultCache
//!                   /v1/sql (streamed formats)   /v1/panels (JSON, ETag)   /v1/gdpr (durable requests)
//!                   /metrics /healthz /readyz /v1/openapi.json   / (dashboard)
//! ```

pub mod auth;
mod encode;
mod error;
pub mod gdpr;
mod metrics;
mod openapi;
mod panels;
pub mod routes;
mod sql;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::json;
use strata_engine::{Catalog, Panels, QueryLimits, ResultCache};
use tracing::info;

pub use auth::{new_token, Auth, Scope, TokenEntry};
pub use encode::Format;
pub use error::ApiError;
pub use metrics::ApiMetrics;

/// Limits every query served over HTTP runs under.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub timeout: Duration,
    pub row_cap: usize,
    /// How old a catalog snapshot may be before a request refreshes it.
    pub max_age: Duration,
    pub query: QueryLimits,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            row_cap: 1_000_000,
            max_age: Duration::from_millis(500),
            query: QueryLimits {
                memory_bytes: Some(1 << 30),
                ..QueryLimits::default()
            },
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
    /// GDPR requests run one at a time.
    gdpr_lock: Arc<tokio::sync::Mutex<()>>,
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
        Ok(Self {
            panels: Arc::new(Panels::new(cache.clone())?),
            catalog,
            cache,
            auth: Arc::new(auth),
            limits: Arc::new(limits),
            metrics: Arc::new(metrics),
            registry,
            running: Arc::default(),
            gdpr_lock: Arc::default(),
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
        .route(routes::GDPR_EXPORTS, axum::routing::post(gdpr::post_export))
        .route(routes::GDPR_PURGES, axum::routing::post(gdpr::post_purge))
        .route(routes::GDPR_REQUEST, get(gdpr::get_request))
        .route(routes::GDPR_EXPORT_FILE, get(gdpr::get_export_file))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Latency by route and panel, errors by code, and one log line per request (never the SQL
/// text or parameters: they can name a data subject).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let panel = if route == routes::PANEL {
        req.uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    } else {
        String::new()
    };
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), panel.as_str(), status.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Some(code) = resp.extensions().get::<error::ErrorCode>() {
        state
            .metrics
            .errors
            .with_label_values(&[route.as_str(), code.0])
            .inc();
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
    let names: Vec<&str> = state.panels.list().map(|p| p.name).collect();
    Json(openapi::document(&names)).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}
