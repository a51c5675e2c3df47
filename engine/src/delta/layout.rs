//! Where everything lives under a storage root: the one place that spells a path.
//!
//! ```text
//! <root>/tables/<name>/                  a Delta table (data files + _delta_log/)
//! <root>/tables/<name>/_delta_log/<v>.json   one commit
//! <root>/tables/<name>/_delta_log/_last_checkpoint   the newest checkpoint's version
//! <root>/tables/<name>/<column>=<value>/*.parquet     data files (hidden: a segment starting `_` or `.`)
//! <root>/exports/<request id>/           a GDPR export (data files + manifest.json)
//! <root>/_strata/gdpr/requests/<id>.json a durable GDPR request
//! <root>/_strata/gdpr.key                the key that hashes subject ids in the audit log
//! <root>/_strata/leases/<job>/<slot>.json  a scheduled job's lease of one slot (see `lease`)
//! ```
//!
//! Paths are relative to the root (object-store paths); API answers and receipts name them this
//! way so that no server path leaves the server.

use deltalake::Path;
use url::Url;

/// The directory holding every table.
pub const TABLES_DIR: &str = "tables";
/// The directory holding every GDPR export.
pub const EXPORTS_DIR: &str = "exports";
/// The directory holding durable GDPR requests.
pub const GDPR_REQUESTS_DIR: &str = "_strata/gdpr/requests";
/// The records of purge commits whose removed files may not be deleted yet.
pub const GDPR_PENDING_DIR: &str = "_strata/gdpr/pending";
/// The marks of tables whose whole log was searched for older purges' removed files.
pub const GDPR_LOG_SCANNED_DIR: &str = "_strata/gdpr/log-scanned";
/// The audit-hash key.
pub const GDPR_KEY: &str = "_strata/gdpr.key";
/// The directory holding every scheduled job's leases.
pub const LEASES_DIR: &str = "_strata/leases";
/// The file of an export that lists what it holds (and whose subject hash a purge looks for).
pub const EXPORT_MANIFEST: &str = "manifest.json";

/// `tables` (the directory listed to find the tables).
pub fn tables_dir() -> Path {
    Path::from(TABLES_DIR)
}

/// `<root>/tables/<name>/` as a URL (what the Delta table builder opens).
pub fn table_url(root: &Url, name: &str) -> Url {
    let mut url = root.clone();
    let path = format!("{}/{TABLES_DIR}/{name}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// `tables/<name>` (a table's directory).
pub fn table_dir(name: &str) -> Path {
    Path::from(format!("{TABLES_DIR}/{name}"))
}

/// `tables/<name>/<file>` (a file of a table, `file` relative to the table as in the log).
pub fn table_file(name: &str, file: &str) -> Path {
    Path::from(format!("{TABLES_DIR}/{name}/{file}"))
}

/// `tables/<name>/_delta_log`
pub fn delta_log_dir(name: &str) -> Path {
    Path::from(format!("{TABLES_DIR}/{name}/_delta_log"))
}

/// `tables/<name>/_delta_log/<version, 20 digits>.json`
pub fn commit_file(name: &str, version: u64) -> Path {
    Path::from(format!("{TABLES_DIR}/{name}/_delta_log/{version:020}.json"))
}

/// `tables/<name>/_delta_log/_last_checkpoint` (which version the newest checkpoint holds).
pub fn last_checkpoint_file(name: &str) -> Path {
    Path::from(format!("{TABLES_DIR}/{name}/_delta_log/_last_checkpoint"))
}

/// The path of `location` relative to table `name`'s directory, as the log names its files
/// (None when it lies outside the table).
pub fn relative_to_table<'a>(name: &str, location: &'a Path) -> Option<&'a str> {
    location
        .as_ref()
        .strip_prefix(TABLES_DIR)?
        .strip_prefix('/')?
        .strip_prefix(name)?
        .strip_prefix('/')
}

/// Whether `rel` (relative to its table) names a data file rather than the log or another
/// hidden directory: Delta's convention is that a segment starting with `_` or `.` is hidden.
pub fn is_data_file(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('_') && !seg.starts_with('.'))
}

/// `<column>=<value>`: how a partition is named in its directory and in job reports.
pub fn partition_name(column: &str, value: &str) -> String {
    format!("{column}={value}")
}

/// `exports` (the directory listed to find earlier exports).
pub fn exports_dir() -> Path {
    Path::from(EXPORTS_DIR)
}

/// `exports/<request id>` (as API answers name it, with a trailing slash: [`export_location`]).
pub fn export_dir(request_id: &str) -> Path {
    Path::from(format!("{EXPORTS_DIR}/{request_id}"))
}

/// `exports/<request id>/<file>`
pub fn export_file(request_id: &str, file: &str) -> Path {
    Path::from(format!("{EXPORTS_DIR}/{request_id}/{file}"))
}

/// `exports/<request id>/manifest.json`
pub fn export_manifest(request_id: &str) -> Path {
    export_file(request_id, EXPORT_MANIFEST)
}

/// `exports/<request id>/`: how manifests and receipts name an export (relative to the root).
pub fn export_location(request_id: &str) -> String {
    format!("{EXPORTS_DIR}/{request_id}/")
}

/// `_strata/gdpr/requests/<id>.json`
pub fn gdpr_request(id: &str) -> Path {
    Path::from(format!("{GDPR_REQUESTS_DIR}/{id}.json"))
}

/// `_strata/gdpr/requests`
pub fn gdpr_requests_dir() -> Path {
    Path::from(GDPR_REQUESTS_DIR)
}

/// `_strata/gdpr/pending/<table>`: the records of purges of that table between their commit and
/// their deletes.
pub fn purge_pending_dir(table: &str) -> Path {
    Path::from(format!("{GDPR_PENDING_DIR}/{table}"))
}

/// `_strata/gdpr/pending/<table>/<request id>.json`
pub fn purge_pending(table: &str, request_id: &str) -> Path {
    Path::from(format!("{GDPR_PENDING_DIR}/{table}/{request_id}.json"))
}

/// `_strata/gdpr/log-scanned/<table>`: present once the table's whole log was searched for the
/// files of purges committed before pending records existed.
pub fn purge_log_scanned(table: &str) -> Path {
    Path::from(format!("{GDPR_LOG_SCANNED_DIR}/{table}"))
}

/// `_strata/gdpr.key`
pub fn gdpr_key() -> Path {
    Path::from(GDPR_KEY)
}

/// `_strata/leases/<job>` (the directory listed to find a job's old leases).
pub fn leases_dir(job: &str) -> Path {
    Path::from(format!("{LEASES_DIR}/{job}"))
}

/// `_strata/leases/<job>/<slot>.json` (the lease of slot number `slot` of `job`).
pub fn lease_file(job: &str, slot: u64) -> Path {
    Path::from(format!("{LEASES_DIR}/{job}/{slot}.json"))
}

/// `.strata-probe-<token>`: the file written and deleted to prove the root is writable.
pub fn probe_file(token: &str) -> Path {
    Path::from(format!(".strata-probe-{token}"))
}

/// The directory holding every budget alert's record (see `budget::alerts`).
pub const BUDGET_ALERTS_DIR: &str = "_strata/budgets/alerts";

/// `_strata/budgets/alerts` (the directory listed to find alerts a stopped server left pending).
pub fn budget_alerts_dir() -> Path {
    Path::from(BUDGET_ALERTS_DIR)
}

/// `_strata/budgets/alerts/<budget>/<period start, %Y%m%dT%H%M%SZ>/<kind>.json`: the record of
/// one alert (`kind` such as `threshold-75`) of one period of `budget`.
pub fn budget_alert_file(
    budget: &str,
    period_start: chrono::DateTime<chrono::Utc>,
    kind: &str,
) -> Path {
    Path::from(format!(
        "{BUDGET_ALERTS_DIR}/{budget}/{}/{kind}.json",
        period_start.format("%Y%m%dT%H%M%SZ")
    ))
}

/// The directory holding every open budget reservation (see `budget::reservations`).
pub const RESERVATIONS_DIR: &str = "_strata/budgets/reservations";

/// `_strata/budgets/reservations` (the directory listed to find every server's reservations).
pub fn reservations_dir() -> Path {
    Path::from(RESERVATIONS_DIR)
}

/// `_strata/budgets/reservations/<id>.json`: one open reservation of spend in flight.
pub fn reservation_file(id: &str) -> Path {
    Path::from(format!("{RESERVATIONS_DIR}/{id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(table_dir("link_clicks").as_ref(), "tables/link_clicks");
        assert_eq!(
            commit_file("link_clicks", 12).as_ref(),
            "tables/link_clicks/_delta_log/00000000000000000012.json"
        );
        assert_eq!(
            table_file("t", "day=2026-11-01/part-0.parquet").as_ref(),
            "tables/t/day=2026-11-01/part-0.parquet"
        );
        assert_eq!(
            export_file("r1", "manifest.json").as_ref(),
            "exports/r1/manifest.json"
        );
        assert_eq!(export_location("r1"), "exports/r1/");
        assert_eq!(export_manifest("r1").as_ref(), "exports/r1/manifest.json");
        assert_eq!(delta_log_dir("t").as_ref(), "tables/t/_delta_log");
        let root = Url::parse("s3://b/root/").unwrap();
        assert_eq!(table_url(&root, "t").as_str(), "s3://b/root/tables/t/");
        assert_eq!(gdpr_request("r1").as_ref(), "_strata/gdpr/requests/r1.json");
        assert_eq!(gdpr_key().as_ref(), "_strata/gdpr.key");
        assert_eq!(leases_dir("compact").as_ref(), "_strata/leases/compact");
        assert_eq!(
            lease_file("compact", 12).as_ref(),
            "_strata/leases/compact/12.json"
        );
        assert_eq!(
            last_checkpoint_file("t").as_ref(),
            "tables/t/_delta_log/_last_checkpoint"
        );
        assert_eq!(
            partition_name("event_date", "2026-10-01"),
            "event_date=2026-10-01"
        );
    }

    #[test]
    fn data_files_of_a_table() {
        let file = table_file("t", "day=2026-11-01/part-0.parquet");
        assert_eq!(
            relative_to_table("t", &file),
            Some("day=2026-11-01/part-0.parquet")
        );
        assert_eq!(relative_to_table("t2", &file), None);
        assert_eq!(relative_to_table("t", &table_file("tx", "a.parquet")), None);
        assert!(is_data_file("day=2026-11-01/part-0.parquet"));
        assert!(!is_data_file("_delta_log/00000000000000000000.json"));
        assert!(!is_data_file("day=2026-11-01/.part-0.parquet.crc"));
        assert!(!is_data_file(""));
    }
}
