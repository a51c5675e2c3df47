//! Durable GDPR requests: each is a JSON document under `<root>/_strata/gdpr/requests/`, so a
//! server that dies mid-request finds it on restart and finishes it. The raw subject ids are
//! kept only until the request is done; after that the document holds the keyed hash.
//!
//! This file owns the document and its states (accepted -> running -> done | failed); running a
//! request is [`super::GdprService`]'s.

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::{ExportManifest, GdprKey, PurgeReceipt, Subject};
use crate::{layout, EngineError, Redactor, Result, Storage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Export,
    Purge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Accepted,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GdprRequest {
    pub id: String,
    pub kind: RequestKind,
    pub status: RequestStatus,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub subject_hash: String,
    /// The ids themselves, only while the request is not done (needed to resume it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    /// The purge receipt or the export manifest.
    pub receipt: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl GdprRequest {
    /// The request as a caller may see it: without the ids.
    pub fn public(&self) -> Self {
        Self {
            subject: None,
            ..self.clone()
        }
    }

    /// Whether a done export offers `name`: its manifest, or a file the manifest lists.
    pub fn lists_export_file(&self, name: &str) -> bool {
        name == "manifest.json"
            || self
                .receipt
                .as_ref()
                .and_then(|m| m["files"].as_array())
                .is_some_and(|files| files.iter().any(|f| f["name"].as_str() == Some(name)))
    }

    /// Whether a server starting up must run it again: accepted or running when the last
    /// server stopped, or a purge that failed and still holds its ids (a purge is an
    /// obligation: it is retried until it is done).
    fn is_unfinished(&self) -> bool {
        let failed_purge = self.status == RequestStatus::Failed
            && self.kind == RequestKind::Purge
            && self.subject.is_some();
        failed_purge
            || matches!(
                self.status,
                RequestStatus::Accepted | RequestStatus::Running
            )
    }
}

/// What a request ends with, typed (the document stores it as JSON, relative to the root).
#[derive(Debug, Clone)]
pub enum GdprReceipt {
    Purge(PurgeReceipt),
    Export(ExportManifest),
}

impl GdprReceipt {
    fn to_json(&self) -> Result<serde_json::Value> {
        match self {
            Self::Purge(r) => serde_json::to_value(r),
            Self::Export(m) => serde_json::to_value(m),
        }
        .map_err(|e| EngineError::Internal(e.to_string()))
    }
}

/// Where requests live.
#[derive(Clone)]
pub struct RequestStore {
    storage: Storage,
}

impl RequestStore {
    pub fn new(storage: &Storage) -> Self {
        Self {
            storage: storage.clone(),
        }
    }

    /// Records a new request (accepted, holding its ids) once the ids pass the id rule.
    pub async fn create(
        &self,
        kind: RequestKind,
        subject: Subject,
        requested_by: &str,
    ) -> Result<GdprRequest> {
        subject.validate()?;
        let key = GdprKey::load_or_create(&self.storage).await?;
        let req = GdprRequest {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            status: RequestStatus::Accepted,
            requested_by: requested_by.into(),
            requested_at: Utc::now(),
            finished_at: None,
            subject_hash: key.hash(&subject.user_id),
            subject: Some(subject),
            receipt: None,
            error: None,
        };
        self.put(&req).await?;
        Ok(req)
    }

    pub async fn put(&self, req: &GdprRequest) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(req).map_err(|e| EngineError::Internal(e.to_string()))?;
        self.storage
            .store()
            .put(&layout::gdpr_request(&req.id), bytes.into())
            .await
            .map_err(|e| EngineError::Internal(format!("storing GDPR request: {e}")))?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<GdprRequest>> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Ok(None);
        }
        let Some(b) = self
            .storage
            .read_if_exists(&layout::gdpr_request(id))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            EngineError::Internal(format!("request {id}: {e}"))
        })?))
    }

    /// Requests to run again at start: those accepted or running when the last server
    /// stopped, and purges that failed and still hold their ids (a purge is an obligation:
    /// it is retried until it is done). Oldest first.
    pub async fn unfinished(&self) -> Result<Vec<GdprRequest>> {
        use futures::TryStreamExt;
        let items: Vec<_> = self
            .storage
            .store()
            .list(Some(&layout::gdpr_requests_dir()))
            .try_collect()
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut out = Vec::new();
        for item in items {
            let Some(id) = item
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(r) = self.get(id).await? {
                if r.is_unfinished() {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| r.requested_at);
        Ok(out)
    }

    /// Stores that the request is running (a retried one loses its last error).
    pub async fn mark_running(&self, req: &mut GdprRequest) -> Result<()> {
        req.status = RequestStatus::Running;
        req.error = None;
        self.put(req).await
    }

    /// Stores how a run ended: done with its receipt (the ids dropped), or failed with its
    /// error. A failed request keeps its ids, to be run again, unless they break the id rule.
    ///
    /// What the document says is for API clients: the receipt and the error name tables
    /// and files relative to the storage root, never its location.
    pub async fn finish(&self, req: &mut GdprRequest, outcome: &Result<GdprReceipt>) -> Result<()> {
        req.finished_at = Some(Utc::now());
        let redactor = Redactor::for_root(self.storage.root());
        match outcome.as_ref().map(GdprReceipt::to_json) {
            Ok(Ok(mut receipt)) => {
                without_location(&redactor, &mut receipt);
                req.status = RequestStatus::Done;
                req.receipt = Some(receipt);
                req.subject = None;
            }
            Ok(Err(e)) => mark_failed(req, &e, &redactor),
            Err(e) => mark_failed(req, e, &redactor),
        }
        self.put(req).await
    }
}

fn mark_failed(req: &mut GdprRequest, e: &EngineError, redactor: &Redactor) {
    req.status = RequestStatus::Failed;
    req.error = Some(redactor.text(&e.to_string()));
    // The ids stay so that the request can be run again, unless they can never run (the id
    // rule refused them).
    if matches!(e, EngineError::Param(_)) {
        req.subject = None;
    }
}

/// Strips the storage root from every string of a receipt or manifest.
fn without_location(redactor: &Redactor, v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => *s = redactor.text(s),
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|i| without_location(redactor, i))
        }
        serde_json::Value::Object(fields) => fields
            .values_mut()
            .for_each(|f| without_location(redactor, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: RequestKind, status: RequestStatus, ids: bool) -> GdprRequest {
        GdprRequest {
            id: "r1".into(),
            kind,
            status,
            requested_by: "t".into(),
            requested_at: Utc::now(),
            finished_at: None,
            subject_hash: "h".into(),
            subject: ids.then(|| Subject::new("u-1")),
            receipt: None,
            error: None,
        }
    }

    #[test]
    fn unfinished_requests_are_the_ones_to_run_again() {
        use RequestKind::{Export, Purge};
        use RequestStatus::{Accepted, Done, Failed, Running};
        assert!(request(Export, Accepted, true).is_unfinished());
        assert!(request(Purge, Running, true).is_unfinished());
        assert!(request(Purge, Failed, true).is_unfinished());
        assert!(!request(Purge, Failed, false).is_unfinished());
        assert!(!request(Export, Failed, true).is_unfinished());
        assert!(!request(Purge, Done, false).is_unfinished());
    }

    #[test]
    fn a_failure_of_the_id_rule_drops_the_ids() {
        let redactor = Redactor::default();
        let mut req = request(RequestKind::Purge, RequestStatus::Running, true);
        mark_failed(&mut req, &EngineError::Internal("x".into()), &redactor);
        assert_eq!(req.status, RequestStatus::Failed);
        assert!(req.subject.is_some());
        mark_failed(&mut req, &EngineError::Param("id rule".into()), &redactor);
        assert!(req.subject.is_none());
    }

    #[test]
    fn an_export_offers_its_manifest_and_listed_files() {
        let mut req = request(RequestKind::Export, RequestStatus::Done, false);
        req.receipt = Some(serde_json::json!({ "files": [{ "name": "link_clicks.jsonl" }] }));
        assert!(req.lists_export_file("manifest.json"));
        assert!(req.lists_export_file("link_clicks.jsonl"));
        assert!(!req.lists_export_file("ai_usage.jsonl"));
    }
}
