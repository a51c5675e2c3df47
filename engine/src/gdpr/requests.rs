//! Durable GDPR requests: each is a JSON document under `<root>/_strata/gdpr/requests/`, so a
//! server that dies mid-request finds it on restart and finishes it. The raw subject ids are
//! kept only until the request is done; after that the document holds the keyed hash.

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::{ExportBuilder, GdprKey, PurgeBuilder, Subject};
use crate::{EngineError, Result, Storage};

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

    fn path(id: &str) -> Path {
        Path::from(format!("_strata/gdpr/requests/{id}.json"))
    }

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
            .put(&Self::path(&req.id), bytes.into())
            .await
            .map_err(|e| EngineError::Internal(format!("storing GDPR request: {e}")))?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<GdprRequest>> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Ok(None);
        }
        match self.storage.store().get(&Self::path(id)).await {
            Ok(r) => {
                let b = r
                    .bytes()
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                    EngineError::Internal(format!("request {id}: {e}"))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(EngineError::Internal(e.to_string())),
        }
    }

    /// Requests to run again at start: those accepted or running when the last server
    /// stopped, and purges that failed and still hold their ids (a purge is an obligation:
    /// it is retried until it is done).
    pub async fn unfinished(&self) -> Result<Vec<GdprRequest>> {
        use futures::TryStreamExt;
        let dir = Path::from("_strata/gdpr/requests");
        let items: Vec<_> = self
            .storage
            .store()
            .list(Some(&dir))
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
                let failed_purge = r.status == RequestStatus::Failed
                    && r.kind == RequestKind::Purge
                    && r.subject.is_some();
                if failed_purge
                    || matches!(r.status, RequestStatus::Accepted | RequestStatus::Running)
                {
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| r.requested_at);
        Ok(out)
    }

    /// Runs a request to its end and stores the outcome. Running it again is harmless; a
    /// failed request keeps its ids (to be run again) unless they break the id rule.
    ///
    /// What the document says is for API clients: the receipt and the error name tables
    /// and files relative to the storage root, never its location.
    pub async fn run(&self, mut req: GdprRequest) -> Result<GdprRequest> {
        let Some(subject) = req.subject.clone() else {
            return Ok(req); // already done
        };
        req.status = RequestStatus::Running;
        req.error = None;
        self.put(&req).await?;
        let outcome = match req.kind {
            RequestKind::Purge => PurgeBuilder::new(&self.storage, subject)
                .request_id(&req.id)
                .requested_at(req.requested_at)
                .requested_by(&req.requested_by)
                .await
                .and_then(|r| {
                    serde_json::to_value(r).map_err(|e| EngineError::Internal(e.to_string()))
                }),
            RequestKind::Export => ExportBuilder::new(&self.storage, subject)
                .request_id(&req.id)
                .requested_by(&req.requested_by)
                .await
                .and_then(|r| {
                    serde_json::to_value(r).map_err(|e| EngineError::Internal(e.to_string()))
                }),
        };
        req.finished_at = Some(Utc::now());
        let redactor = crate::Redactor::for_root(self.storage.root());
        match outcome {
            Ok(mut receipt) => {
                without_location(&redactor, &mut receipt);
                req.status = RequestStatus::Done;
                req.receipt = Some(receipt);
                req.subject = None;
            }
            Err(e) => {
                req.status = RequestStatus::Failed;
                req.error = Some(redactor.text(&e.to_string()));
                // A failed request keeps the ids so that it can be run again, unless they
                // can never run (the id rule refused them).
                if matches!(e, EngineError::Param(_)) {
                    req.subject = None;
                }
            }
        }
        self.put(&req).await?;
        Ok(req)
    }
}

/// Strips the storage root from every string of a receipt or manifest.
fn without_location(redactor: &crate::Redactor, v: &mut serde_json::Value) {
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
