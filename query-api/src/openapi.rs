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
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Strata API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Panels, SQL over HTTP, health and metrics. Bearer tokens with scopes panels, sql, gdpr, admin." },
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
