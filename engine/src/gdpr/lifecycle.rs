//! The life of a GDPR request, the one path the HTTP API and the CLI both take:
//!
//! ```text
//! submit / run_now -> RequestStore.create (accepted, ids kept)
//!                  -> one request at a time (the lock):
//!                     mark running -> PurgeBuilder / ExportBuilder (verifies, rounds)
//!                     -> done (receipt, ids dropped) | failed (error, ids kept to retry)
//!                     -> after a purge: drop cached results, refresh the catalog
//! resume (server start) -> every unfinished request, run again in the background
//! ```

use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use super::{
    ExportBuilder, ExportManifest, GdprReceipt, GdprRequest, PurgeBuilder, PurgeReceipt,
    RequestKind, RequestStatus, RequestStore, Subject,
};
use crate::{layout, Catalog, EngineError, Result, Storage};

/// What runs after every purge so that no cached answer holding the subject is served again
/// (the server drops its result cache).
pub type PurgeHook = Arc<dyn Fn() + Send + Sync>;

/// Owns the GDPR request lifecycle of one storage root: the durable store, the lock that runs
/// requests one at a time, and what must follow a purge (cache invalidation, catalog refresh).
/// Cheap to clone: clones share the lock.
#[derive(Clone)]
pub struct GdprService {
    storage: Storage,
    store: RequestStore,
    /// Refreshed after a purge, so that the next query reads the rewritten tables.
    catalog: Option<Arc<Catalog>>,
    on_purge: Option<PurgeHook>,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// A request run in the foreground: the document as stored, and what the run produced (its
/// error as the builder returned it, for a caller that reports it as is).
pub struct RequestRun {
    pub request: GdprRequest,
    pub outcome: Result<GdprReceipt>,
}

/// What `GET /v1/gdpr/exports/{id}/files/{name}` finds.
#[derive(Debug)]
pub enum ExportFileLookup {
    Found(Bytes),
    /// No export request has this id.
    NoExport,
    /// The export is not done; its status.
    NotReady(RequestStatus),
    /// The export's manifest lists no file of this name.
    NotListed,
    /// Listed, but no longer stored (the subject may have been purged since).
    Gone,
}

impl GdprService {
    /// A service without a catalog or cache to keep fresh (the CLI).
    pub fn new(storage: &Storage) -> Self {
        Self {
            storage: storage.clone(),
            store: RequestStore::new(storage),
            catalog: None,
            on_purge: None,
            one_at_a_time: Arc::default(),
        }
    }

    /// A service on the catalog's storage that refreshes the catalog after each purge (the
    /// server).
    pub fn for_catalog(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog: Some(catalog.clone()),
            ..Self::new(catalog.storage())
        }
    }

    /// Runs `hook` after every purge, before the catalog refresh.
    pub fn on_purge(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_purge = Some(Arc::new(hook));
        self
    }

    pub fn store(&self) -> &RequestStore {
        &self.store
    }

    /// Records a request and runs it in the background; returns it as accepted.
    pub async fn submit(
        &self,
        kind: RequestKind,
        subject: Subject,
        requested_by: &str,
    ) -> Result<GdprRequest> {
        let req = self.store.create(kind, subject, requested_by).await?;
        info!(
            request_id = %req.id, kind = ?kind, requested_by = %requested_by,
            "GDPR request accepted"
        );
        self.spawn(req.clone());
        Ok(req)
    }

    /// Picks up the requests a previous process left unfinished, each in the background;
    /// returns how many. A server calls it once at start-up.
    pub async fn resume(&self) -> Result<usize> {
        let pending = self.store.unfinished().await?;
        let n = pending.len();
        for req in pending {
            info!(request_id = %req.id, "resuming GDPR request");
            self.spawn(req);
        }
        Ok(n)
    }

    /// Runs a request in the background (see [`GdprService::run`]).
    pub fn spawn(&self, req: GdprRequest) {
        let service = self.clone();
        tokio::spawn(async move {
            let id = req.id.clone();
            match service.run(req).await {
                Ok(done) => info!(request_id = %id, status = ?done.status, "GDPR request finished"),
                Err(e) => warn!(request_id = %id, error = %e, "GDPR request could not be stored"),
            }
        });
    }

    /// Runs a stored request to its end and stores the outcome; a request without ids is done
    /// already and returned as it is. Running one again is harmless. The error is the store's
    /// (the request's own failure is in the returned document).
    pub async fn run(&self, req: GdprRequest) -> Result<GdprRequest> {
        let Some(subject) = req.subject.clone() else {
            return Ok(req); // already done
        };
        Ok(self.run_exclusive(req, subject).await?.request)
    }

    /// Records a request and runs it to its end in the foreground, like a request over HTTP.
    pub async fn run_now(
        &self,
        kind: RequestKind,
        subject: Subject,
        requested_by: &str,
    ) -> Result<RequestRun> {
        let req = self
            .store
            .create(kind, subject.clone(), requested_by)
            .await?;
        self.run_exclusive(req, subject).await
    }

    /// [`GdprService::run_now`] for an export: its manifest, or why it failed.
    pub async fn export_now(&self, subject: Subject, requested_by: &str) -> Result<ExportManifest> {
        match self
            .run_now(RequestKind::Export, subject, requested_by)
            .await?
            .outcome?
        {
            GdprReceipt::Export(manifest) => Ok(manifest),
            GdprReceipt::Purge(_) => Err(kind_mismatch(RequestKind::Export)),
        }
    }

    /// [`GdprService::run_now`] for a purge: its receipt, or why it failed (an incomplete
    /// purge, rows left after its rewrite rounds, is an error that names the tables).
    pub async fn purge_now(&self, subject: Subject, requested_by: &str) -> Result<PurgeReceipt> {
        match self
            .run_now(RequestKind::Purge, subject, requested_by)
            .await?
            .outcome?
        {
            GdprReceipt::Purge(receipt) => Ok(receipt),
            GdprReceipt::Export(_) => Err(kind_mismatch(RequestKind::Purge)),
        }
    }

    /// A request by id (`None`: no such request, or an id that cannot be one).
    pub async fn request(&self, id: &str) -> Result<Option<GdprRequest>> {
        self.store.get(id).await
    }

    /// A file of a done export: its manifest or a file the manifest lists.
    pub async fn export_file(&self, id: &str, name: &str) -> Result<ExportFileLookup> {
        let Some(req) = self
            .store
            .get(id)
            .await?
            .filter(|r| r.kind == RequestKind::Export)
        else {
            return Ok(ExportFileLookup::NoExport);
        };
        if req.status != RequestStatus::Done {
            return Ok(ExportFileLookup::NotReady(req.status));
        }
        if !req.lists_export_file(name) {
            return Ok(ExportFileLookup::NotListed);
        }
        let path = layout::export_file(id, name);
        match self.storage.store().get(&path).await {
            Err(_) => Ok(ExportFileLookup::Gone),
            Ok(r) => r
                .bytes()
                .await
                .map(ExportFileLookup::Found)
                .map_err(|e| EngineError::Internal(e.to_string())),
        }
    }

    /// One request at a time: record it running, run it, store the outcome; after a purge
    /// (whatever its outcome) drop cached answers and refresh the catalog, still holding the
    /// lock so that the next request starts from fresh state.
    async fn run_exclusive(&self, req: GdprRequest, subject: Subject) -> Result<RequestRun> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        let kind = req.kind;
        let ran = self.record_and_run(req, subject).await;
        if kind == RequestKind::Purge {
            self.after_purge().await;
        }
        ran
    }

    async fn record_and_run(&self, mut req: GdprRequest, subject: Subject) -> Result<RequestRun> {
        self.store.mark_running(&mut req).await?;
        let outcome = execute(&self.storage, &req, subject).await;
        self.store.finish(&mut req, &outcome).await?;
        Ok(RequestRun {
            request: req,
            outcome,
        })
    }

    async fn after_purge(&self) {
        if let Some(hook) = &self.on_purge {
            hook();
        }
        if let Some(catalog) = &self.catalog {
            if let Err(e) = catalog.refresh().await {
                warn!(error = %e, "refreshing the catalog after a purge failed");
            }
        }
    }
}

/// Runs the request's builder under the request's id, requester and (for a purge, whose
/// tombstone compares late events with it) time.
async fn execute(storage: &Storage, req: &GdprRequest, subject: Subject) -> Result<GdprReceipt> {
    match req.kind {
        RequestKind::Purge => PurgeBuilder::new(storage, subject)
            .request_id(&req.id)
            .requested_at(req.requested_at)
            .requested_by(&req.requested_by)
            .await
            .map(GdprReceipt::Purge),
        RequestKind::Export => ExportBuilder::new(storage, subject)
            .request_id(&req.id)
            .requested_by(&req.requested_by)
            .await
            .map(GdprReceipt::Export),
    }
}

/// [`execute`] answers each kind with its own receipt; this is the error if it ever did not.
fn kind_mismatch(kind: RequestKind) -> EngineError {
    EngineError::Internal(format!(
        "a {kind:?} request ended with another kind's receipt"
    ))
}
