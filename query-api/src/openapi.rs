//! The OpenAPI 3.1 document served at `/v1/openapi.json`.

use serde_json::{json, Value};

fn error_responses() -> Value {
    json!({
        "400": { "description": "Bad request: bad SQL, a refused statement, a bad parameter", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "401": { "description": "Missing or unknown bearer token" },
        "403": { "description": "The token lacks the scope this route needs" },
        "429": { "description": "Rate limited; see Retry-After" }
    })
}

pub fn document(panels: &[&str]) -> Value {
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
    let panel_param = |name: &str, ty: &str, desc: &str| json!({ "name": name, "in": "query", "required": false, "schema": { "type": "string", "format": ty }, "description": desc });
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
            "/v1/panels/{name}": { "get": { "summary": "One panel (scope panels)",
                "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string", "enum": panels } },
                    panel_param("from", "date", "first day, inclusive (default: to - 29 days)"),
                    panel_param("to", "date", "last day, inclusive (default: today UTC)"),
                    panel_param("category", "text", "filter"),
                    panel_param("item_type", "text", "filter"),
                    panel_param("source", "text", "filter"),
                    panel_param("feature", "text", "filter (AI panels)"),
                    panel_param("model", "text", "filter (AI panels)"),
                    panel_param("limit", "integer", "rows, 1-1000 (default 10)"),
                    { "name": "If-None-Match", "in": "header", "required": false, "schema": { "type": "string" } }
                ],
                "responses": panel_responses } }
        }
    })
}
