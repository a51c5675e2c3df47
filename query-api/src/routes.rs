//! Every route path, and who may call it, in one place.

use crate::auth::Scope;

pub const DASHBOARD: &str = "/";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/v1/openapi.json";
pub const SQL: &str = "/v1/sql";
pub const QUERY: &str = "/v1/queries/{id}";
pub const PANELS: &str = "/v1/panels";
pub const PANEL: &str = "/v1/panels/{name}";
pub const TABLES: &str = "/v1/tables";
pub const GDPR_EXPORTS: &str = "/v1/gdpr/exports";
pub const GDPR_PURGES: &str = "/v1/gdpr/purges";
pub const GDPR_REQUEST: &str = "/v1/gdpr/requests/{id}";
pub const GDPR_EXPORT_FILE: &str = "/v1/gdpr/exports/{id}/files/{name}";
pub const AI_BUDGETS: &str = "/v1/ai/budgets";
pub const AI_BUDGET: &str = "/v1/ai/budgets/{name}";
pub const AI_DECISION: &str = "/v1/ai/budgets/decision";
pub const AI_RESERVATIONS: &str = "/v1/ai/budgets/reservations";
pub const AI_RESERVATION: &str = "/v1/ai/budgets/reservations/{id}";
pub const AI_OVERRIDES: &str = "/v1/ai/budgets/{name}/overrides";

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; limited per client address.
    Public,
    /// A bearer token with this scope (or `admin`).
    Token(Scope),
}

/// The scope each route needs; `auth::authorize` enforces it before any handler runs.
pub const ACCESS: &[(&str, Access)] = &[
    (DASHBOARD, Access::Public),
    (HEALTHZ, Access::Public),
    (READYZ, Access::Public),
    (METRICS, Access::Public),
    (OPENAPI, Access::Public),
    (SQL, Access::Token(Scope::Sql)),
    (QUERY, Access::Token(Scope::Sql)),
    (PANELS, Access::Token(Scope::Panels)),
    (PANEL, Access::Token(Scope::Panels)),
    // Table health is metadata the dashboard shows (file counts and sizes, partition dates),
    // never a row: the dashboard's token reads it, as it reads `strata_tables` in a panel.
    (TABLES, Access::Token(Scope::Panels)),
    (GDPR_EXPORTS, Access::Token(Scope::Gdpr)),
    (GDPR_PURGES, Access::Token(Scope::Gdpr)),
    (GDPR_REQUEST, Access::Token(Scope::Gdpr)),
    (GDPR_EXPORT_FILE, Access::Token(Scope::Gdpr)),
    // Budget states are what the dashboard shows; decisions and reservations are the AI job
    // runner's; an override changes policy and is audited.
    (AI_BUDGETS, Access::Token(Scope::Panels)),
    (AI_BUDGET, Access::Token(Scope::Panels)),
    (AI_DECISION, Access::Token(Scope::Ai)),
    (AI_RESERVATIONS, Access::Token(Scope::Ai)),
    (AI_RESERVATION, Access::Token(Scope::Ai)),
    (AI_OVERRIDES, Access::Token(Scope::Admin)),
];

/// The access of a matched route (`None`: no route matched, the answer is a 404). A route
/// missing from [`ACCESS`] needs `admin`, so that forgetting it fails closed.
pub fn access(route: Option<&str>) -> Access {
    match route {
        None => Access::Public,
        Some(route) => ACCESS
            .iter()
            .find(|(path, _)| *path == route)
            .map_or(Access::Token(Scope::Admin), |(_, access)| *access),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `pub const X: &str = "..."` of this file, read from the source so that a route
    /// added later is covered without editing this test.
    fn declared_routes() -> Vec<&'static str> {
        include_str!("routes.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect()
    }

    #[test]
    fn every_route_has_its_access_in_the_table() {
        let routes = declared_routes();
        assert_eq!(routes.len(), 20, "{routes:?}");
        for route in &routes {
            assert!(
                ACCESS.iter().any(|(path, _)| path == route),
                "{route} is missing from routes::ACCESS"
            );
        }
        assert_eq!(ACCESS.len(), routes.len());
    }

    #[test]
    fn scopes_of_the_routes() {
        assert_eq!(access(Some(SQL)), Access::Token(Scope::Sql));
        assert_eq!(access(Some(QUERY)), Access::Token(Scope::Sql));
        assert_eq!(access(Some(PANEL)), Access::Token(Scope::Panels));
        assert_eq!(access(Some(TABLES)), Access::Token(Scope::Panels));
        assert_eq!(access(Some(GDPR_EXPORT_FILE)), Access::Token(Scope::Gdpr));
        assert_eq!(access(Some(AI_BUDGET)), Access::Token(Scope::Panels));
        assert_eq!(access(Some(AI_DECISION)), Access::Token(Scope::Ai));
        assert_eq!(access(Some(AI_RESERVATIONS)), Access::Token(Scope::Ai));
        assert_eq!(access(Some(AI_OVERRIDES)), Access::Token(Scope::Admin));
        assert_eq!(access(Some(HEALTHZ)), Access::Public);
        assert_eq!(access(Some(METRICS)), Access::Public);
        assert_eq!(access(None), Access::Public);
        assert_eq!(access(Some("/v1/new")), Access::Token(Scope::Admin));
    }
}
