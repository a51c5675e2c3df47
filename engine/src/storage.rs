use std::collections::HashMap;
use std::sync::{Arc, Once};

use datafusion::execution::memory_pool::MemoryPool;
use deltalake::{DeltaTableBuilder, ObjectStore};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use url::Url;

use crate::delta::layout;
use crate::{EngineError, Result};

/// Where tables live and how to reach them.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// A local directory (created if missing) or an `s3://`, `gs://`, `az://` URL.
    pub url: String,
    /// Object-store options (`aws_endpoint`, `aws_allow_http`, ...). The usual environment
    /// variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) are read as well.
    pub options: HashMap<String, String>,
    /// Memory the jobs of this process share (rollups, a purge's rollups and verification,
    /// exports; see [`crate::memory::jobs_pool`]). None: unbounded.
    pub jobs_memory_bytes: Option<usize>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            url: "./data".into(),
            options: HashMap::new(),
            jobs_memory_bytes: None,
        }
    }
}

/// An opened storage root.
#[derive(Debug, Clone)]
pub struct Storage {
    root: Url,
    options: HashMap<String, String>,
    store: Arc<dyn ObjectStore>,
    /// The pool every job's query on this root shares in this process (None: unbounded).
    jobs_pool: Option<Arc<dyn MemoryPool>>,
}

static REGISTER: Once = Once::new();

fn register_cloud_handlers() {
    REGISTER.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::gcp::register_handlers(None);
        deltalake::azure::register_handlers(None);
    });
}

impl Storage {
    /// Opens the root and proves it is writable, so a bad setting fails here with a message
    /// naming the setting instead of deep inside the first commit.
    pub async fn open(opts: &StorageOptions) -> Result<Self> {
        register_cloud_handlers();
        let root = root_url(&opts.url)?;
        // On S3, Delta commits are conditional puts (If-None-Match: *), which S3 and
        // compatible stores honour: no lock service and no unsafe renames are needed.
        let options = opts.options.clone();
        let store = DeltaTableBuilder::from_url(root.clone())
            .map_err(|e| EngineError::config(format!("storage URL `{}`: {e}", opts.url)))?
            .with_storage_options(options.clone())
            .build_storage()
            .map_err(|e| EngineError::config(format!("storage URL `{}`: {e}", opts.url)))?
            .object_store(None);
        let storage = Self {
            root,
            options,
            store,
            jobs_pool: opts.jobs_memory_bytes.map(crate::memory::jobs_pool),
        };
        storage.probe().await?;
        Ok(storage)
    }

    /// Opens `url` (a local directory or an object-store URL) with default object-store
    /// options: the root the tools and benches name by a single URL.
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::open(&StorageOptions {
            url: url.to_string(),
            ..Default::default()
        })
        .await
    }

    /// Opens a local directory (created if missing) with default options: the root a test
    /// keeps in a temporary directory.
    pub async fn open_dir(path: &std::path::Path) -> Result<Self> {
        let url = path.to_str().ok_or_else(|| {
            EngineError::config(format!(
                "storage directory `{}` is not valid UTF-8",
                path.display()
            ))
        })?;
        Self::open_url(url).await
    }

    async fn probe(&self) -> Result<()> {
        let path = layout::probe_file(&uuid::Uuid::new_v4().to_string());
        self.store
            .put(&path, object_store::PutPayload::from_static(b"probe"))
            .await
            .map_err(|e| {
                EngineError::config(format!(
                    "storage root {} is not writable ({e}); check STRATA_STORAGE_URL and the credentials",
                    self.root
                ))
            })?;
        let _ = self.store.delete(&path).await;
        Ok(())
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    pub fn options(&self) -> &HashMap<String, String> {
        &self.options
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The memory pool the jobs on this root share in this process: every catalog opened on
    /// this storage runs its jobs' queries under it (None: unbounded).
    pub fn jobs_pool(&self) -> Option<&Arc<dyn MemoryPool>> {
        self.jobs_pool.as_ref()
    }

    /// Writes `body` at `path` only when nothing is there yet (a conditional put, the one way
    /// two processes on a root agree who was first: leases, alert claims, reservations, the
    /// GDPR key). True when this call created it, false when it existed; another failure is
    /// an error reading `<what>: <cause>`.
    pub async fn create_if_absent(
        &self,
        path: &object_store::path::Path,
        body: object_store::PutPayload,
        what: &str,
    ) -> Result<bool> {
        let mode = object_store::PutOptions::from(object_store::PutMode::Create);
        match self.store.put_opts(path, body, mode).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(EngineError::Internal(format!("{what}: {e}"))),
        }
    }

    /// The bytes of the object at `path`.
    pub async fn read(&self, path: &object_store::path::Path) -> Result<bytes::Bytes> {
        self.read_if_exists(path)
            .await?
            .ok_or_else(|| EngineError::Internal(format!("reading {path}: not found")))
    }

    /// The bytes of the object at `path`; None when there is none.
    pub async fn read_if_exists(
        &self,
        path: &object_store::path::Path,
    ) -> Result<Option<bytes::Bytes>> {
        match self.store.get(path).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| EngineError::Internal(format!("reading {path}: {e}"))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(EngineError::Internal(format!("reading {path}: {e}"))),
        }
    }

    /// Deletes `path`; one already gone is no error.
    pub async fn delete_if_present(&self, path: &object_store::path::Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(EngineError::Internal(format!("deleting {path}: {e}"))),
        }
    }

    /// `<root>/tables/<name>/`
    pub fn table_url(&self, name: &str) -> Url {
        layout::table_url(&self.root, name)
    }

    /// Names of the Delta tables under `<root>/tables/` (directories holding a `_delta_log`).
    pub async fn list_tables(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&layout::tables_dir()))
            .await;
        let listing = match listing {
            Ok(l) => l,
            Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(vec![]),
            Err(e) => return Err(EngineError::Internal(format!("listing tables: {e}"))),
        };
        let mut names = Vec::new();
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            let log = layout::delta_log_dir(name);
            let mut entries = self.store.list(Some(&log));
            if entries.try_next().await.ok().flatten().is_some() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// `./data` -> `file:///abs/data/`; URLs pass through with a trailing slash.
fn root_url(s: &str) -> Result<Url> {
    let s = s.trim();
    if s.is_empty() {
        return Err(EngineError::config(
            "storage URL is empty; set --storage-url or STRATA_STORAGE_URL",
        ));
    }
    let mut url = if s.contains("://") {
        Url::parse(s)
            .map_err(|e| EngineError::config(format!("storage URL `{s}` is not a URL: {e}")))?
    } else {
        let path = std::path::Path::new(s);
        std::fs::create_dir_all(path).map_err(|e| {
            EngineError::config(format!(
                "cannot create storage directory `{s}`: {e}; choose a writable --storage-url"
            ))
        })?;
        let abs = path
            .canonicalize()
            .map_err(|e| EngineError::config(format!("storage directory `{s}`: {e}")))?;
        Url::from_directory_path(&abs).map_err(|_| {
            EngineError::config(format!("storage directory `{s}` is not an absolute path"))
        })?
    };
    if url.scheme() == "file" {
        let p = url
            .to_file_path()
            .map_err(|_| EngineError::config(format!("bad file URL `{s}`")))?;
        std::fs::create_dir_all(&p).map_err(|e| {
            EngineError::config(format!(
                "cannot create storage directory `{}`: {e}",
                p.display()
            ))
        })?;
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let dir = tempfile::tempdir().unwrap();
        let u = root_url(dir.path().join("x").to_str().unwrap()).unwrap();
        assert_eq!(u.scheme(), "file");
        assert!(u.path().ends_with("/x/"));
        assert_eq!(root_url("s3://b/root").unwrap().as_str(), "s3://b/root/");
        assert!(matches!(root_url(""), Err(EngineError::Config(_))));
    }
}
