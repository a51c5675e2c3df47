//! Read-only SQL: what an analyst or a dashboard may run over HTTP.
//!
//! Three gates, each enough on its own for the cases it covers:
//! 1. the statement is parsed and must be exactly one SELECT / WITH / EXPLAIN / SHOW / DESCRIBE;
//! 2. it is planned with DDL, DML and statements (SET, ...) disabled;
//! 3. every relation the plan scans must be a table of the catalog, `strata_tables`,
//!    `information_schema`, or a generator (`generate_series`, `range`): no table function or
//!    URL table can reach the filesystem or another location.

use std::collections::BTreeSet;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;

use crate::{EngineError, Result};

const GENERATORS: &[&str] = &["generate_series", "range"];

/// Refuses anything but one read-only statement; the message says what is allowed.
pub fn check_statement(sql: &str) -> Result<()> {
    let statements = DFParser::parse_sql(sql).map_err(|e| EngineError::Sql(e.to_string()))?;
    match statements.len() {
        0 => return Err(refused("the request holds no SQL statement")),
        1 => {}
        n => {
            return Err(refused(format!(
                "send one statement per request, this one holds {n}"
            )))
        }
    }
    check_df_statement(&statements[0])
}

fn check_df_statement(s: &DfStatement) -> Result<()> {
    match s {
        DfStatement::Statement(s) => check_sql_statement(s),
        DfStatement::Explain(e) => check_df_statement(&e.statement),
        DfStatement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE is not allowed")),
        DfStatement::CopyTo(_) => Err(refused("COPY is not allowed")),
        DfStatement::Reset(_) => Err(refused("RESET is not allowed")),
    }
}

fn check_sql_statement(s: &Statement) -> Result<()> {
    match s {
        Statement::Query(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ExplainTable { .. } => Ok(()),
        Statement::Explain { statement, .. } => check_sql_statement(statement),
        other => {
            let text = other.to_string();
            let head: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Err(refused(format!("`{head}` is not allowed")))
        }
    }
}

fn refused(why: impl Into<String>) -> EngineError {
    EngineError::Refused(format!(
        "{}: only one read-only statement (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE) over Strata's tables may run here",
        why.into()
    ))
}

/// Plans a checked statement read-only and returns the frame with the tables it reads.
pub async fn plan_read_only(
    ctx: &SessionContext,
    sql: &str,
    known_tables: &BTreeSet<String>,
) -> Result<(DataFrame, BTreeSet<String>)> {
    check_statement(sql)?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| EngineError::Sql(e.to_string()))?;
    let read = tables_read(df.logical_plan());
    for t in &read {
        let allowed = known_tables.contains(t)
            || t == "strata_tables"
            || t.starts_with("information_schema.")
            || GENERATORS.contains(&t.as_str());
        if !allowed {
            return Err(refused(format!("`{t}` is not a Strata table")));
        }
    }
    Ok((df, read))
}

/// Names of the relations a plan scans (subqueries included). Tables of the default schema
/// appear by their bare name, others qualified.
pub fn tables_read(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = match scan.table_name.schema() {
                Some("public") | None => scan.table_name.table().to_string(),
                Some(schema) => format!("{schema}.{}", scan.table_name.table()),
            };
            // Table functions appear as `name()`.
            out.insert(name.trim_end_matches("()").to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_pass_the_parser_gate() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE link_clicks",
        ] {
            check_statement(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
            "COPY (SELECT 1) TO '/tmp/x.parquet'",
            "INSERT INTO link_clicks VALUES (1)",
            "DELETE FROM link_clicks",
            "UPDATE link_clicks SET category = 'x'",
            "DROP TABLE link_clicks",
            "CREATE TABLE x AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/x'",
            "SELECT 1; SELECT 2",
            "",
        ] {
            let e = check_statement(bad).expect_err(bad);
            assert!(matches!(e, EngineError::Refused(_)), "{bad}: {e}");
        }
    }
}
