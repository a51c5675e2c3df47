//! API metrics on a shared Prometheus registry: request latency by route and panel, cache hits,
//! query errors by code.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

pub struct ApiMetrics {
    pub requests: HistogramVec,
    pub errors: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub not_modified: IntCounter,
    pub running: IntGauge,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "strata_http_request_duration_seconds",
                "Time to answer a request (to the first byte of a streamed body), by route (`unmatched` for none), panel (a known panel name or `unknown`) and status.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "panel", "status"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "strata_query_errors_total",
                "Requests answered with an error, by route and code.",
            ),
            &["route", "code"],
        )?;
        let cache_hits = IntCounter::new(
            "strata_cache_hits_total",
            "Panel and SQL results served from the cache.",
        )?;
        let cache_misses = IntCounter::new(
            "strata_cache_misses_total",
            "Panel and SQL results computed.",
        )?;
        let not_modified = IntCounter::new(
            "strata_not_modified_total",
            "Panel requests answered 304 from the ETag.",
        )?;
        let running = IntGauge::new("strata_queries_running", "SQL queries running now.")?;
        registry.register(Box::new(running.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(not_modified.clone()))?;
        Ok(Self {
            requests,
            errors,
            cache_hits,
            cache_misses,
            not_modified,
            running,
        })
    }
}
