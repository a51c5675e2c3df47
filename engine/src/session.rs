use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTableBuilder;
use tracing::debug;

use crate::{EngineError, Result, Storage};

/// A DataFusion session over every Delta table under a storage root, each registered by
/// its name.
pub struct SqlSession {
    ctx: SessionContext,
    storage: Storage,
    tables: Vec<String>,
}

impl SqlSession {
    pub async fn open(storage: &Storage) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("strata", "public");
        let ctx = SessionContext::new_with_config(config);
        let mut session = Self {
            ctx,
            storage: storage.clone(),
            tables: vec![],
        };
        session.refresh().await?;
        Ok(session)
    }

    /// Registers (again) every table found under the root at its latest version.
    pub async fn refresh(&mut self) -> Result<()> {
        let names = self.storage.list_tables().await?;
        for name in &names {
            let table = DeltaTableBuilder::from_url(self.storage.table_url(name))?
                .with_storage_options(self.storage.options().clone())
                .load()
                .await?;
            table.update_datafusion_session(&self.ctx.state())?;
            let provider = table.table_provider().await?;
            self.ctx.deregister_table(name.as_str())?;
            self.ctx.register_table(name.as_str(), provider)?;
            debug!(table = %name, version = ?table.version(), "registered");
        }
        self.tables = names;
        Ok(())
    }

    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans and runs one statement, collecting the result.
    pub async fn query(
        &self,
        sql: &str,
    ) -> Result<(Arc<arrow::datatypes::Schema>, Vec<RecordBatch>)> {
        let df = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| EngineError::Sql(e.to_string()))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }
}
