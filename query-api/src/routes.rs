//! Every route path, in one place.

pub const DASHBOARD: &str = "/";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/v1/openapi.json";
pub const SQL: &str = "/v1/sql";
pub const QUERY: &str = "/v1/queries/{id}";
pub const PANELS: &str = "/v1/panels";
pub const PANEL: &str = "/v1/panels/{name}";
pub const GDPR_EXPORTS: &str = "/v1/gdpr/exports";
pub const GDPR_PURGES: &str = "/v1/gdpr/purges";
pub const GDPR_REQUEST: &str = "/v1/gdpr/requests/{id}";
pub const GDPR_EXPORT_FILE: &str = "/v1/gdpr/exports/{id}/files/{name}";
