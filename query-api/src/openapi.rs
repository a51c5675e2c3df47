//! The OpenAPI 3.1 document served at `/v1/openapi.json`. The panel routes are documented
//! from the panel specs themselves: the names from [`Panels::list`], and each query parameter
//! (type, bounds, default) from its [`ParamSpec`].

use serde_json::{json, Value};
use strata_engine::{Panels, ParamRule, ParamSpec};

fn error_responses() -> Value {
    json!({
        "400": { "description": "Bad request: bad SQL, a refused statement, a bad parameter", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "401": { "description": "Missing or unknown bearer token" },
        "403": { "description": "The token lacks the scope this route needs" },
        "429": { "description": "Rate limited; see Retry-After" }
    })
}

/// A query parameter of `/v1/panels/{name}`, with the panels that take it.
fn panel_parameter(spec: &ParamSpec, panels: &Panels) -> Value {
    let schema = match spec.rule {
        ParamRule::PeriodStart | ParamRule::PeriodEnd => {
            json!({ "type": "string", "format": "date" })
        }
        ParamRule::Text { max_bytes } => json!({ "type": "string", "maxLength": max_bytes }),
        ParamRule::Integer { min, max, default } => {
            json!({ "type": "integer", "minimum": min, "maximum": max, "default": default })
        }
    };
    let takers: Vec<&str> = panels
        .list()
        .filter(|p| p.params.iter().any(|q| q.name == spec.name))
        .map(|p| p.name)
        .collect();
    let default = spec
        .default_text()
        .map(|d| format!(" (default: {d})"))
        .unwrap_or_default();
    json!({
        "name": spec.name, "in": "query", "required": false, "schema": schema,
        "description": format!("{}{default}; panels: {}", spec.description, takers.join(", "))
    })
}

/// One table's entry of `/v1/tables` (`strata_engine::delta::stats::TableHealth`).
fn table_health_schema() -> Value {
    let int =
        |description: &str| json!({ "type": "integer", "minimum": 0, "description": description });
    json!({ "type": "object", "properties": {
        "table": { "type": "string" },
        "version": int("the table version checked"),
        "files": int("data files of that version"),
        "bytes": int("their bytes"),
        "small_files": int("files under small_file_bytes_threshold"),
        "small_file_bytes_threshold": int("bytes"),
        "largest_partition": { "type": ["object", "null"], "description": "the partition with the most files",
            "properties": { "partition": { "type": "string", "description": "column=value" }, "files": { "type": "integer" } } },
        "checkpoint_version": { "type": ["integer", "null"], "description": "the latest checkpoint (null: none yet)" },
        "commits_since_checkpoint": int("commits a reader replays after the checkpoint"),
        "vacuum_files": int("data files in storage no longer referenced: removed and not deleted yet, or left by a killed writer"),
        "vacuum_bytes": int("their bytes"),
        "computed_at": { "type": "string", "format": "date-time" } } })
}

pub fn document(panels: &Panels) -> Value {
    let mut sql_responses = error_responses();
    sql_responses["200"] = json!({
        "description": "The result, streamed. Headers: x-strata-query-id, x-strata-cache (hit|miss), x-strata-row-cap, x-strata-table-versions.",
        "content": {
            "application/json": {}, "application/x-ndjson": {}, "text/csv": {},
            "application/vnd.apache.arrow.stream": {}, "application/vnd.apache.parquet": {}
        }
    });
    sql_responses["408"] = json!({ "description": "The query ran past its time limit" });
    sql_responses["422"] = json!({ "description": "The query hit its memory limit" });
    let format = json!({ "name": "format", "in": "query", "schema": { "type": "string", "enum": ["json", "jsonl", "csv", "arrow", "parquet"] }, "description": "Result format; otherwise from Accept; default json." });
    let mut panel_responses = error_responses();
    panel_responses["200"] = json!({ "description": "The panel: columns, rows (objects) and meta (table_versions, cached, fallback, elapsed_ms, row_count). ETag header." });
    panel_responses["304"] =
        json!({ "description": "Not modified (If-None-Match matched the ETag)" });
    panel_responses["404"] = json!({ "description": "No such panel" });
    let mut tables_responses = error_responses();
    tables_responses["200"] = json!({ "description": "{small_file_bytes, tables}", "content": { "application/json": { "schema": {
        "type": "object", "properties": {
            "small_file_bytes": { "type": "integer", "description": "a data file under this size counts as small" },
            "tables": { "type": "array", "items": { "$ref": "#/components/schemas/TableHealth" } } } } } } });
    tables_responses["408"] = json!({ "description": "The check ran past the query time limit" });
    let names: Vec<&str> = panels.list().map(|p| p.name).collect();
    let mut panel_params = vec![
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string", "enum": names } }),
    ];
    panel_params.extend(panels.params().map(|spec| panel_parameter(spec, panels)));
    panel_params.push(
        json!({ "name": "If-None-Match", "in": "header", "required": false, "schema": { "type": "string" } }),
    );
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": { "title": "Strata API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Panels, SQL over HTTP, health and metrics. Bearer tokens with scopes panels, sql, gdpr, ai, admin." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Subject": { "type": "object", "required": ["subject"], "properties": {
                    "subject": { "type": "string", "description": "the user id" },
                    "anonymous_ids": { "type": "array", "items": { "type": "string" } },
                    "session_ids": { "type": "array", "items": { "type": "string" } } } },
                "TableHealth": table_health_schema(),
                "Error": { "type": "object", "required": ["error", "code"],
                "properties": { "error": { "type": "string" }, "code": { "type": "string" } } } }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/healthz": { "get": { "summary": "Liveness", "security": [], "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "Readiness: storage reachable, tables loaded", "security": [], "responses": { "200": { "description": "ready" }, "503": { "description": "not ready" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [], "responses": { "200": { "description": "text exposition" } } } },
            "/v1/sql": {
                "get": { "summary": "Run one read-only statement (scope sql)", "parameters": [
                    { "name": "q", "in": "query", "required": true, "schema": { "type": "string" } }, format.clone() ],
                    "responses": sql_responses.clone() },
                "post": { "summary": "Run one read-only statement (scope sql): body is the SQL text, or JSON {\"sql\": ...}",
                    "parameters": [format], "requestBody": { "content": { "text/plain": {}, "application/json": { "schema": { "type": "object", "properties": { "sql": { "type": "string" }, "format": { "type": "string" } } } } } },
                    "responses": sql_responses }
            },
            "/v1/queries/{id}": { "delete": { "summary": "Cancel a running query (scope sql)",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "204": { "description": "cancelled" }, "404": { "description": "no such running query" } } } },
            "/v1/gdpr/exports": { "post": { "summary": "Export everything about a data subject (scope gdpr); 202 with a request id",
                "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Subject" } } } },
                "responses": { "202": { "description": "{request_id, status, status_url}; Location header" }, "400": { "description": "bad body" } } } },
            "/v1/gdpr/purges": { "post": { "summary": "Erase a data subject everywhere (scope gdpr); 202 with a request id",
                "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Subject" } } } },
                "responses": { "202": { "description": "{request_id, status, status_url}; Location header" }, "400": { "description": "bad body" } } } },
            "/v1/gdpr/requests/{id}": { "get": { "summary": "Status and receipt of a GDPR request (scope gdpr)",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "{id, kind, status (accepted|running|done|failed), requested_by, requested_at, finished_at, subject_hash, receipt, error}" }, "404": { "description": "no such request" } } } },
            "/v1/gdpr/exports/{id}/files/{name}": { "get": { "summary": "Download a file of a finished export (scope gdpr)",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }, { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "the file" }, "404": { "description": "no such export or file" } } } },
            "/v1/panels": { "get": { "summary": "Panels and their parameter schemas (scope panels)", "responses": { "200": { "description": "{panels: [...]}" } } } },
            "/v1/tables": { "get": { "summary": "Health of every table, checked now (scope panels)",
                "responses": tables_responses } },
            "/v1/panels/{name}": { "get": { "summary": "One panel (scope panels)",
                "parameters": panel_params,
                "responses": panel_responses } }
        }
    });
    if let (Some(paths), Value::Object(budgets)) = (doc["paths"].as_object_mut(), budget_paths()) {
        paths.extend(budgets);
    }
    doc
}

/// The `/v1/ai/budgets` routes (docs/operations/ai-budgets.md has the shapes in full).
fn budget_paths() -> Value {
    let name =
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let call = |field: &str| {
        json!({ "name": field, "in": "query", "required": false, "schema": { "type": "string" },
        "description": "the call's field; left out, every budget filtering on it covers the call" })
    };
    json!({
        "/v1/ai/budgets": { "get": { "summary": "Every AI budget: state in its current period, users, held reservations, overrides, alerts (scope panels)",
            "responses": { "200": { "description": "{as_of, lag_ms, budgets: [...]}" } } } },
        "/v1/ai/budgets/{name}": { "get": { "summary": "One AI budget (scope panels)", "parameters": [name.clone()],
            "responses": { "200": { "description": "the budget" }, "404": { "description": "no such budget" } } } },
        "/v1/ai/budgets/decision": { "get": { "summary": "What the AI job runner must do before its next batch, across every budget covering the call, answered from memory (scope ai)",
            "parameters": [call("feature"), call("provider"), call("model"), call("user_id")],
            "responses": { "200": { "description": "{action, allow, batch_percent, budget, reason, as_of, lag_ms}" },
                "503": { "description": "the budgets are being read for the first time" } } } },
        "/v1/ai/budgets/reservations": { "post": { "summary": "Hold a batch's estimated cost against the hard budgets covering it until its ai_usage events arrive or the ttl ends (scope ai)",
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["estimated_cost"], "properties": {
                "estimated_cost": { "type": "string", "description": "USD as a decimal string" },
                "feature": { "type": "string" }, "provider": { "type": "string" }, "model": { "type": "string" }, "user_id": { "type": "string" },
                "job_id": { "type": "string" }, "batch_id": { "type": "string" },
                "ttl_secs": { "type": "integer", "minimum": 1, "maximum": 3600, "default": 300 } } } } } },
            "responses": { "201": { "description": "the reservation" }, "400": { "description": "bad body" },
                "409": { "description": "a hard budget covering the call has no room (code budget_exhausted)" } } } },
        "/v1/ai/budgets/reservations/{id}": { "delete": { "summary": "Release a reservation early (scope ai)",
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "204": { "description": "released" }, "404": { "description": "no such open reservation" } } } },
        "/v1/ai/budgets/{name}/overrides": { "post": { "summary": "Override a budget: new amount or suspended blocking, with reason, approver and expiry; audited in budget_overrides (scope admin)",
            "parameters": [name],
            "requestBody": { "content": { "application/json": { "schema": { "type": "object", "required": ["reason", "approver"], "properties": {
                "amount": { "type": "string" }, "suspend": { "type": "boolean" }, "reason": { "type": "string" }, "approver": { "type": "string" },
                "expires_at": { "type": "string", "format": "date-time" }, "ttl_secs": { "type": "integer" } } } } } },
            "responses": { "201": { "description": "the override" }, "400": { "description": "what to fix" }, "404": { "description": "no such budget" } } } }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use strata_engine::ResultCache;

    use super::*;

    #[test]
    fn every_panel_parameter_is_documented_from_its_spec() {
        let panels = Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap();
        let doc = document(&panels);
        let params = doc["paths"]["/v1/panels/{name}"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
        for spec in strata_engine::PARAMS {
            assert!(
                names.contains(&spec.name),
                "{} is not documented",
                spec.name
            );
        }
        assert_eq!(names.first(), Some(&"name"));
        assert!(doc["paths"]["/v1/tables"]["get"]["responses"]["200"].is_object());
        assert!(
            doc["components"]["schemas"]["TableHealth"]["properties"]["vacuum_bytes"].is_object()
        );
        assert_eq!(names.last(), Some(&"If-None-Match"));
        let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["type"], "integer");
        assert_eq!(limit["schema"]["maximum"], 1000);
        assert!(limit["description"].as_str().unwrap().contains("top_items"));
        let from = params.iter().find(|p| p["name"] == "from").unwrap();
        assert_eq!(from["schema"]["format"], "date");
        assert_eq!(
            doc["paths"]["/v1/panels/{name}"]["get"]["parameters"][0]["schema"]["enum"]
                .as_array()
                .unwrap()
                .len(),
            panels.list().count()
        );
    }
}
