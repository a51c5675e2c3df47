use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::TryStreamExt;
use strata_engine::gdpr::{GdprService, Subject};
use strata_engine::{layout, Storage};

use crate::config::StorageConfig;

#[derive(Subcommand, Debug)]
pub enum GdprCommand {
    /// Export every row about a data subject (JSON lines + Parquet + manifest with checksums).
    Export(ExportArgs),
    /// Erase a data subject everywhere by rewriting the files that hold them; prints the receipt.
    Purge(PurgeArgs),
}

#[derive(Args, Debug)]
pub struct SubjectArgs {
    /// The subject's user id: 3 to 256 ASCII letters, digits, '-' or '_' (the id rule in
    /// docs/operations/gdpr.md; at most 100 ids with the anonymous and session ids).
    #[arg(long)]
    pub subject: String,
    /// An anonymous id the request names as the subject's (repeatable).
    #[arg(long = "anonymous-id")]
    pub anonymous_ids: Vec<String>,
    /// A session id the request names as the subject's (repeatable).
    #[arg(long = "session-id")]
    pub session_ids: Vec<String>,
    /// Who asked (kept in the audit log).
    #[arg(long, default_value = "cli")]
    pub requested_by: String,
}

impl SubjectArgs {
    /// The subject, checked against the id rule (docs/operations/gdpr.md) before anything
    /// is written.
    fn subject(&self) -> anyhow::Result<Subject> {
        let subject = Subject {
            user_id: self.subject.clone(),
            anonymous_ids: self.anonymous_ids.clone(),
            session_ids: self.session_ids.clone(),
        };
        subject.validate()?;
        Ok(subject)
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub who: SubjectArgs,
    /// Also copy the export to this local directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub storage: StorageConfig,
}

#[derive(Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub who: SubjectArgs,
    #[command(flatten)]
    pub storage: StorageConfig,
}

/// Both commands go through the same lifecycle as the HTTP API: the request is recorded in
/// the durable store first, so that a run that dies is finished by the next server.
pub async fn run(cmd: GdprCommand) -> anyhow::Result<()> {
    match cmd {
        GdprCommand::Export(a) => {
            let storage = Storage::open(&a.storage.options()?).await?;
            let progress = crate::progress::Progress::new("gdpr export", 0);
            let manifest = GdprService::new(&storage)
                .export_now(a.who.subject()?, &a.who.requested_by)
                .await?;
            if let Some(out) = &a.out {
                copy_export(&storage, &manifest.request_id, out).await?;
            }
            progress.done(&format!("{} files", manifest.files.len()));
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        GdprCommand::Purge(a) => {
            let storage = Storage::open(&a.storage.options()?).await?;
            let progress = crate::progress::Progress::new("gdpr purge", 0);
            // An incomplete purge (rows left after its rewrite rounds) is an error that says
            // which tables still hold how many rows; running it again is harmless.
            let receipt = GdprService::new(&storage)
                .purge_now(a.who.subject()?, &a.who.requested_by)
                .await?;
            progress.done(&format!(
                "{} rows removed, verified: {}",
                receipt.rows_removed, receipt.verified
            ));
            println!("{}", serde_json::to_string_pretty(&receipt)?);
            anyhow::ensure!(
                receipt.verified,
                "the verification scan found rows of the subject left"
            );
        }
    }
    Ok(())
}

/// Copies every file of export `request_id` to the local directory `out`.
async fn copy_export(storage: &Storage, request_id: &str, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files: Vec<_> = storage
        .store()
        .list(Some(&layout::export_dir(request_id)))
        .try_collect()
        .await?;
    for f in files {
        let name = f.location.filename().unwrap_or("file").to_string();
        let bytes = object_store::ObjectStoreExt::get(storage.store().as_ref(), &f.location)
            .await?
            .bytes()
            .await?;
        std::fs::write(out.join(&name), &bytes)?;
    }
    Ok(())
}
