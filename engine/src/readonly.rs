//! Read-only SQL: what an analyst or a dashboard may run over HTTP.
//!
//! Four gates, each enough on its own for the cases it covers:
//! 0. before parsing, the statement's size is bounded: its length, its tokens, its operators
//!    (a chain of 60,000 `OR`s or 200,000 `+`s builds an expression tree so deep that
//!    recursing over it, or dropping it, overflows a thread's stack) and its nesting;
//! 1. the statement is parsed and must be exactly one SELECT / WITH / EXPLAIN / SHOW / DESCRIBE;
//! 2. it is planned with DDL, DML and statements (SET, ...) disabled;
//! 3. every relation the plan scans must be a table of the catalog, `strata_tables`,
//!    `information_schema`, or a generator (`generate_series`, `range`): no table function or
//!    URL table can reach the filesystem or another location.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::{EngineError, Result};

const GENERATORS: &[&str] = &["generate_series", "range"];

/// The longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;
/// The most tokens a statement may hold (a 10,000-value IN list is about 20,000).
pub const MAX_TOKENS: usize = 100_000;
/// The most binary operators (`AND`, `OR`, `+`, `=`, `||`, `UNION`, `JOIN`, ...) a statement may
/// hold: a bound on how deep a left-leaning expression or plan tree can get.
pub const MAX_OPERATORS: usize = 2_000;
/// The deepest nesting of parentheses.
pub const MAX_NESTING: usize = 64;

/// Bounds a statement's size before anything recursive touches it: parsing, planning,
/// optimising, executing and even dropping a syntax tree recurse once per level.
pub fn check_size(sql: &str) -> Result<()> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(too_big(format!(
            "the statement is {} bytes, more than the {MAX_STATEMENT_BYTES} allowed",
            sql.len()
        )));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| EngineError::Sql(e.to_string()))?;
    let (mut significant, mut operators, mut depth, mut deepest) = (0usize, 0usize, 0usize, 0);
    for t in &tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Word(w)
                if matches!(
                    w.keyword,
                    Keyword::AND
                        | Keyword::OR
                        | Keyword::XOR
                        | Keyword::UNION
                        | Keyword::INTERSECT
                        | Keyword::EXCEPT
                        | Keyword::JOIN
                        | Keyword::LIKE
                        | Keyword::ILIKE
                        | Keyword::IS
                        | Keyword::BETWEEN
                        | Keyword::WHEN
                ) =>
            {
                operators += 1
            }
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::DuckIntDiv
            | Token::Mod
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Caret
            | Token::Ampersand
            | Token::Pipe
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::Arrow
            | Token::LongArrow
            | Token::DoubleColon
            | Token::Tilde
            | Token::TildeAsterisk
            | Token::ExclamationMarkTilde
            | Token::ExclamationMarkTildeAsterisk => operators += 1,
            _ => {}
        }
        significant += 1;
    }
    if significant > MAX_TOKENS {
        return Err(too_big(format!(
            "the statement holds {significant} tokens, more than the {MAX_TOKENS} allowed"
        )));
    }
    if operators > MAX_OPERATORS {
        return Err(too_big(format!(
            "the statement holds {operators} operators, more than the {MAX_OPERATORS} allowed; use IN (...) instead of a chain of OR, or aggregate in steps"
        )));
    }
    if deepest > MAX_NESTING {
        return Err(too_big(format!(
            "the statement nests parentheses {deepest} deep, more than the {MAX_NESTING} allowed"
        )));
    }
    Ok(())
}

fn too_big(why: String) -> EngineError {
    EngineError::Limit(format!("{why}: the statement is too large to run"))
}

/// Refuses anything but one read-only statement; the message says what is allowed.
pub fn check_statement(sql: &str) -> Result<()> {
    check_size(sql)?;
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
            || t.starts_with("pg_catalog.")
            || t == "pg_get_keywords"
            || GENERATORS.contains(&t.as_str());
        if !allowed {
            return Err(refused(format!("`{t}` is not a Strata table")));
        }
    }
    Ok((df, read))
}

/// True when every function the plan calls is immutable: the same inputs give the same
/// answer, so a result keyed by the versions of the tables it read may be served again.
/// `now()`, `random()`, `uuid()` and the like make it false.
pub fn is_deterministic(plan: &LogicalPlan) -> bool {
    let mut pure = true;
    let _ = plan.apply_with_subqueries(|node| {
        let _ = node.apply_expressions(|e| {
            e.apply(|e| {
                let volatility = match e {
                    Expr::ScalarFunction(f) => Some(f.func.signature().volatility),
                    Expr::AggregateFunction(f) => Some(f.func.signature().volatility),
                    Expr::WindowFunction(_) => None,
                    _ => None,
                };
                if volatility.is_some_and(|v| v != Volatility::Immutable) {
                    pure = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if pure {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    pure
}

/// True for EXPLAIN statements (their output names files: see [`crate::Redactor`]).
pub fn is_explain(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_))
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

    #[test]
    fn huge_statements_are_refused_before_parsing() {
        let chain = |op: &str, n: usize| {
            let mut s = String::from("SELECT 1 WHERE ");
            for i in 0..n {
                if i > 0 {
                    s.push_str(op);
                }
                s.push('1');
            }
            s
        };
        for sql in [
            chain(" OR 1 = ", 60_000),
            chain("+", 200_000),
            format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200)),
            format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES)),
        ] {
            let e = check_statement(&sql).expect_err("refused");
            assert!(matches!(e, EngineError::Limit(_)), "{e}");
        }
        // A long IN list is flat: it passes.
        let ids: Vec<String> = (0..10_000).map(|i| format!("'u-{i}'")).collect();
        check_statement(&format!("SELECT 1 WHERE 'a' IN ({})", ids.join(","))).unwrap();
        check_statement(&chain(" + ", MAX_OPERATORS)).unwrap();
    }
}
