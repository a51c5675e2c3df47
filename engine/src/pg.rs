//! What Postgres clients expect of a database, in every query session: the `pg_catalog` schema
//! (`pg_class`, `pg_namespace`, `pg_attribute`, `pg_type`, ...) over Strata's tables, the
//! functions psql, DBeaver and Grafana call at connect and for their table trees
//! (`pg_table_is_visible`, `format_type`, `current_schema`, ...), and Postgres' `version()`
//! and `current_setting(name)`.
//!
//! The schema comes from `datafusion-pg-catalog`; one provider serves the whole process, so a
//! table's OID stays the same from one query to the next (psql's `\d t` finds the OID in one
//! query and reads the columns by it in the next).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::{exec_err, Result as DfResult, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as pgc, array_bounds_udf, format_type, generate_series_arg_coercion, has_privilege_udf,
    oid_type_planner, pg_get_expr_udf, quote_ident_udf, PgCatalogSchemaProvider,
    PgCatalogStaticTables,
};
use parking_lot::RwLock;

use crate::catalog::Snapshot;
use crate::{EngineError, Result};

/// The catalog and schema Strata's tables live in (`strata.public`).
pub const CATALOG: &str = "strata";
pub const SCHEMA: &str = "public";

/// The Postgres version Strata answers as: clients pick their dialect from it.
pub const SERVER_VERSION: &str = "16.6";
pub const SERVER_VERSION_NUM: &str = "160006";

/// The settings `current_setting(name)` and `SHOW name` answer; any other name is an error,
/// as in Postgres.
pub const SETTINGS: &[(&str, &str)] = &[
    ("server_version", SERVER_VERSION),
    ("server_version_num", SERVER_VERSION_NUM),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("timezone", "UTC"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("integer_datetimes", "on"),
    ("default_transaction_read_only", "on"),
    ("transaction_read_only", "on"),
    ("transaction_isolation", "read committed"),
    ("is_superuser", "off"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("application_name", ""),
    ("statement_timeout", "0"),
];

/// The value of setting `name` (case-insensitive), if Strata knows it.
pub fn setting(name: &str) -> Option<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    let name = match name.as_str() {
        "time zone" => "timezone",
        "transaction isolation level" => "transaction_isolation",
        other => other,
    };
    SETTINGS.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// `version()`'s answer.
pub fn version_text() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (Strata {}, Apache DataFusion {}) on {}-{}",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS,
    )
}

/// One listed table: its name, schema and kind.
type Listed = (String, SchemaRef, TableType);

/// The tables `pg_class` and `pg_attribute` list: those of the snapshot the last session was
/// built over (with `strata_tables` as a view).
#[derive(Clone, Debug, Default)]
struct Listing {
    tables: Arc<RwLock<Arc<Vec<Listed>>>>,
}

impl Listing {
    fn observe(&self, snapshot: &Snapshot, views: &[(&str, SchemaRef)]) {
        let mut next: Vec<Listed> = snapshot
            .tables
            .iter()
            .map(|(name, t)| (name.clone(), t.provider.schema(), TableType::Base))
            .collect();
        for (name, schema) in views {
            next.push((name.to_string(), schema.clone(), TableType::View));
        }
        next.sort_by(|a, b| a.0.cmp(&b.0));
        let same = {
            let cur = self.tables.read();
            cur.len() == next.len() && cur.iter().zip(&next).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
        };
        if !same {
            *self.tables.write() = Arc::new(next);
        }
    }

    fn find(&self, catalog: &str, schema: &str, table: &str) -> Option<(SchemaRef, TableType)> {
        if catalog != CATALOG || schema != SCHEMA {
            return None;
        }
        self.tables
            .read()
            .iter()
            .find(|(n, _, _)| n == table)
            .map(|(_, s, t)| (s.clone(), *t))
    }
}

#[async_trait]
impl CatalogInfo for Listing {
    async fn catalog_names(&self) -> std::result::Result<Vec<String>, DataFusionError> {
        Ok(vec![CATALOG.to_string()])
    }

    async fn schema_names(
        &self,
        catalog_name: &str,
    ) -> std::result::Result<Option<Vec<String>>, DataFusionError> {
        Ok((catalog_name == CATALOG).then(|| {
            vec![
                SCHEMA.to_string(),
                "information_schema".to_string(),
                "pg_catalog".to_string(),
            ]
        }))
    }

    async fn table_names(
        &self,
        catalog_name: &str,
        schema_name: &str,
    ) -> std::result::Result<Option<Vec<String>>, DataFusionError> {
        if catalog_name != CATALOG {
            return Ok(None);
        }
        Ok(match schema_name {
            SCHEMA => Some(self.tables.read().iter().map(|t| t.0.clone()).collect()),
            "information_schema" | "pg_catalog" => Some(vec![]),
            _ => None,
        })
    }

    async fn table_schema(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> std::result::Result<Option<SchemaRef>, DataFusionError> {
        Ok(self
            .find(catalog_name, schema_name, table_name)
            .map(|(s, _)| s))
    }

    async fn table_type(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> std::result::Result<Option<TableType>, DataFusionError> {
        Ok(self
            .find(catalog_name, schema_name, table_name)
            .map(|(_, t)| t))
    }
}

/// The process' one `pg_catalog`: its static tables decoded once, its OIDs assigned once, and
/// the Postgres functions made once (each session registers clones of them).
struct PgCatalog {
    listing: Listing,
    static_tables: Arc<PgCatalogStaticTables>,
    schema: Arc<PgCatalogSchemaProvider<Listing, EmptyContextProvider>>,
    functions: Vec<ScalarUDF>,
}

static PG: LazyLock<std::result::Result<PgCatalog, String>> = LazyLock::new(|| {
    let static_tables = Arc::new(PgCatalogStaticTables::try_new().map_err(|e| e.to_string())?);
    let listing = Listing::default();
    let schema = Arc::new(
        PgCatalogSchemaProvider::try_new(
            listing.clone(),
            static_tables.clone(),
            EmptyContextProvider,
        )
        .map_err(|e| e.to_string())?,
    );
    let functions = vec![
        pgc::create_current_database_udf(CATALOG),
        pgc::create_current_schema_udf(),
        pgc::create_current_schemas_udf(),
        pgc::create_pg_get_userbyid_udf(),
        has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        pgc::create_pg_table_is_visible(),
        format_type::create_format_type_udf(),
        pgc::create_session_user_udf(),
        pg_get_expr_udf::create_pg_get_expr_udf(),
        pgc::create_pg_get_partkeydef_udf(),
        pgc::create_pg_relation_is_publishable_udf(),
        pgc::create_pg_get_statisticsobjdef_columns_udf(),
        pgc::create_pg_encoding_to_char_udf(),
        pgc::create_pg_backend_pid_udf(),
        pgc::create_pg_relation_size_udf(),
        pgc::create_pg_total_relation_size_udf(),
        pgc::create_pg_stat_get_numscans(),
        pgc::create_pg_get_constraintdef(),
        pgc::create_pg_get_partition_ancestors_udf(),
        quote_ident_udf::create_quote_ident_udf(),
        quote_ident_udf::create_parse_ident_udf(),
        array_bounds_udf::create_array_upper_udf(),
        array_bounds_udf::create_array_lower_udf(),
        ScalarUDF::new_from_impl(Version::new()),
        ScalarUDF::new_from_impl(CurrentSetting::new()),
    ];
    Ok(PgCatalog {
        listing,
        static_tables,
        schema,
        functions,
    })
});

/// The type planner of a session that carries `pg_catalog`: `::regclass`, `::regtype`, `::oid`
/// and the other OID types parse (as int4). Set when the session is built.
pub(crate) fn type_planner() -> Arc<dyn TypePlanner> {
    Arc::new(oid_type_planner::PgOidTypePlanner)
}

/// Registers `pg_catalog` and the Postgres functions in `ctx` (whose default catalog is
/// [`CATALOG`] and whose type planner is [`type_planner`]), listing the tables of `snapshot`
/// and the `views`.
pub(crate) fn register(
    ctx: &SessionContext,
    snapshot: &Snapshot,
    views: &[(&str, SchemaRef)],
) -> Result<()> {
    let pg = PG
        .as_ref()
        .map_err(|e| EngineError::Internal(format!("pg_catalog could not load: {e}")))?;
    pg.listing.observe(snapshot, views);
    ctx.catalog(CATALOG)
        .ok_or_else(|| EngineError::Internal(format!("no catalog `{CATALOG}`")))?
        .register_schema("pg_catalog", pg.schema.clone())?;
    for udf in &pg.functions {
        ctx.register_udf(udf.clone());
    }
    ctx.register_udtf("pg_get_keywords", pg.static_tables.pg_get_keywords.clone());
    generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
    Ok(())
}

/// `version()`: Postgres' form, so that clients that read the server's version from it
/// (SQLAlchemy, DBeaver) parse it; DataFusion's own version follows in parentheses.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Version {
    signature: Signature,
}

impl Version {
    fn new() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Version {
    fn name(&self) -> &str {
        "version"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            version_text(),
        ))))
    }
}

/// `current_setting(name)`: the value of one of [`SETTINGS`]; an unknown name fails the
/// query, as in Postgres.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl CurrentSetting {
    fn new() -> Self {
        Self {
            signature: Signature::string(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let lookup = |name: Option<&str>| -> DfResult<Option<String>> {
            match name {
                None => Ok(None),
                Some(n) => match setting(n) {
                    Some(v) => Ok(Some(v.to_string())),
                    None => exec_err!("unrecognized configuration parameter \"{n}\""),
                },
            }
        };
        match &args.args[0] {
            ColumnarValue::Scalar(s) => {
                let name = match s {
                    ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                        v.clone()
                    }
                    other => return exec_err!("current_setting takes a name, not {other:?}"),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(lookup(
                    name.as_deref(),
                )?)))
            }
            ColumnarValue::Array(a) => {
                let names = arrow::compute::cast(a, &DataType::Utf8)?;
                let names = names.as_string::<i32>();
                let out = names
                    .iter()
                    .map(lookup)
                    .collect::<DfResult<StringArray>>()?;
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_answer_as_postgres_does_and_unknown_names_are_none() {
        assert_eq!(setting("server_version_num"), Some("160006"));
        assert_eq!(setting("Search_Path"), Some("public"));
        assert_eq!(setting("TIME ZONE"), Some("UTC"));
        assert_eq!(setting("no_such_thing"), None);
        let v = version_text();
        assert!(v.starts_with("PostgreSQL 16.6 (Strata "), "{v}");
    }
}
