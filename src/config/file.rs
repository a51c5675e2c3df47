//! The configuration file: the lowest layer under the `STRATA_*` variables and the flags.
//!
//! ```text
//! --config PATH | STRATA_CONFIG | ./strata.toml (if present)
//!   -> parse (TOML) -> validate every key against keys::KEYS (unknown key, wrong type: error)
//!   -> each value becomes its key's STRATA_* variable, unless that variable is already set
//!   -> clap parses: flag > variable (from the environment, else from the file) > default
//! ```
//!
//! Feeding the file through the variables keeps one precedence rule (clap's) and works for
//! every subcommand's flags without knowing which subcommand runs.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context};
use toml_edit::{Item, TableLike};

use super::keys::{self, Key, Kind};

/// The file looked for in the working directory when none is named.
pub const DEFAULT_FILE: &str = "strata.toml";

/// One key the file set, as the text its variable carries.
#[derive(Debug, Clone, PartialEq)]
pub struct FileValue {
    pub key: &'static Key,
    pub value: String,
}

/// What the file layer of this process is: which file, which variables it set.
#[derive(Debug, Default, Clone)]
pub struct FileLayer {
    pub path: Option<PathBuf>,
    /// The variables this process took from the file (those the environment did not set).
    pub exported: BTreeSet<&'static str>,
}

static LAYER: OnceLock<FileLayer> = OnceLock::new();

/// The file layer [`export_to_env`] applied (empty before it ran, or without a file).
pub fn layer() -> &'static FileLayer {
    LAYER.get_or_init(FileLayer::default)
}

/// Finds, reads and validates the configuration file and exports its values as `STRATA_*`
/// variables of this process, each only where the environment does not set it already.
///
/// Call it first thing in `main`, before clap parses and before any thread starts: setting
/// the environment is only sound while the process has one thread (`std::env::set_var` is
/// safe to call in edition 2021 but documents that rule).
pub fn export_to_env() -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let from_env = |name: &str| std::env::var_os(name);
    let Some(path) = locate(&args, &from_env, Path::new(DEFAULT_FILE).is_file()) else {
        let _ = LAYER.set(FileLayer::default());
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let values = parse(&text, &path.display().to_string())?;
    let exports = exports(&values, &from_env);
    for (name, value) in &exports {
        std::env::set_var(name, value);
    }
    let _ = LAYER.set(FileLayer {
        path: Some(path),
        exported: exports.iter().map(|(name, _)| *name).collect(),
    });
    Ok(())
}

/// The file to load: `--config PATH` (or `--config=PATH`) anywhere before a bare `--`, else
/// `STRATA_CONFIG`, else `./strata.toml` when `default_exists`.
pub fn locate(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
    default_exists: bool,
) -> Option<PathBuf> {
    let mut named = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            named = it.next().map(PathBuf::from);
        } else if let Some(path) = arg.strip_prefix("--config=") {
            named = Some(PathBuf::from(path));
        }
    }
    named
        .or_else(|| {
            env("STRATA_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| default_exists.then(|| PathBuf::from(DEFAULT_FILE)))
}

/// The values of a configuration file, each checked against its key; `origin` (the file's
/// name) starts every error.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<FileValue>> {
    let doc = toml_edit::Document::parse(text).map_err(|e| anyhow!("{origin}: {e}"))?;
    let sections = keys::sections();
    let mut values = Vec::new();
    for (section, item) in doc.iter() {
        if section == keys::BUDGETS.section {
            let value = budgets_json(item).map_err(|e| anyhow!("{origin}: {e}"))?;
            values.push(FileValue {
                key: &keys::BUDGETS,
                value,
            });
            continue;
        }
        if !sections.contains(&section) {
            bail!(
                "{origin}: {}",
                unknown(section, "", sections.iter().copied())
            );
        }
        let Some(table) = item.as_table_like() else {
            bail!(
                "{origin}: {section} must be a table ([{section}]), not {}",
                describe(item)
            );
        };
        for (name, item) in table.iter() {
            let Some(key) = keys::find(section, name) else {
                let names = keys::KEYS.iter().filter(|k| k.section == section);
                let prefix = format!("{section}.");
                bail!(
                    "{origin}: {}",
                    unknown(name, &prefix, names.map(|k| k.name))
                );
            };
            let value = render(key, item).map_err(|e| anyhow!("{origin}: {}{e}", key.path()))?;
            values.push(FileValue { key, value });
        }
    }
    Ok(values)
}

/// The `[[budgets]]` array of tables as the JSON array `STRATA_BUDGETS` carries, checked the
/// way the server will read it (every field, time zone and threshold), so that a bad budget
/// stops the process at start with the budget's name in the message.
fn budgets_json(item: &Item) -> anyhow::Result<String> {
    let Some(tables) = item.as_array_of_tables() else {
        bail!(
            "budgets must be an array of tables ([[budgets]] sections), not {}",
            describe(item)
        );
    };
    let list: Vec<serde_json::Value> = tables
        .iter()
        .map(|t| table_json(t))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("budgets: {e}"))?;
    let text = serde_json::Value::Array(list).to_string();
    crate::config::parse_budgets(&text)?;
    Ok(text)
}

fn table_json(table: &dyn TableLike) -> Result<serde_json::Value, String> {
    let mut map = serde_json::Map::new();
    for (k, item) in table.iter() {
        map.insert(k.to_string(), item_json(item)?);
    }
    Ok(serde_json::Value::Object(map))
}

fn item_json(item: &Item) -> Result<serde_json::Value, String> {
    if let Some(v) = item.as_value() {
        return value_json(v);
    }
    if let Some(t) = item.as_table_like() {
        return table_json(t);
    }
    if let Some(a) = item.as_array_of_tables() {
        return a
            .iter()
            .map(|t| table_json(t))
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array);
    }
    Err(format!("{} is not a value", item.type_name()))
}

fn value_json(v: &toml_edit::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml_edit::Value::String(s) => J::String(s.value().clone()),
        toml_edit::Value::Integer(i) => J::from(*i.value()),
        toml_edit::Value::Float(f) => J::from(*f.value()),
        toml_edit::Value::Boolean(b) => J::Bool(*b.value()),
        toml_edit::Value::Datetime(d) => J::String(d.value().to_string()),
        toml_edit::Value::Array(a) => J::Array(a.iter().map(value_json).collect::<Result<_, _>>()?),
        toml_edit::Value::InlineTable(t) => table_json(t)?,
    })
}

/// `unknown key PREFIX+NAME`, with the closest known name when there is one.
fn unknown<'a>(name: &str, prefix: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match keys::closest(name, known) {
        Some(close) => format!("unknown key {prefix}{name} (did you mean {prefix}{close}?)"),
        None => format!("unknown key {prefix}{name}"),
    }
}

/// The variables to set for `values`: those the environment does not set already.
pub fn exports(
    values: &[FileValue],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<(&'static str, String)> {
    values
        .iter()
        .filter(|v| env(v.key.env).is_none())
        .map(|v| (v.key.env, v.value.clone()))
        .collect()
}

/// A file value as the text of its variable, or why it is not one of `key`'s values (the
/// error reads after the key's path: " must be ..., not ...").
fn render(key: &Key, item: &Item) -> Result<String, String> {
    let shown = if key.secret == keys::Secret::No {
        describe(item)
    } else {
        item.type_name().to_string()
    };
    let wrong = || format!(" must be {}, not {shown}", key.kind.expected());
    match key.kind {
        Kind::Text => item.as_str().map(str::to_string).ok_or_else(wrong),
        Kind::Addr => {
            let s = item.as_str().ok_or_else(wrong)?;
            s.parse::<std::net::SocketAddr>()
                .map(|_| s.to_string())
                .map_err(|_| wrong())
        }
        Kind::Uint => item
            .as_integer()
            .filter(|n| *n >= 0)
            .map(|n| n.to_string())
            .ok_or_else(wrong),
        Kind::Number => item
            .as_float()
            .or_else(|| item.as_integer().map(|n| n as f64))
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| n.to_string())
            .ok_or_else(wrong),
        Kind::Choice(words) => item
            .as_str()
            .filter(|s| words.contains(s))
            .map(str::to_string)
            .ok_or_else(wrong),
        Kind::List => list(item)
            .ok_or_else(wrong)
            .and_then(|items| joined(key, items)),
        Kind::Pairs => pairs(item)
            .ok_or_else(wrong)
            .and_then(|items| joined(key, items)),
        Kind::RetentionDays => retention_days(item)
            .map_err(|e| e.unwrap_or_else(wrong))
            .and_then(|items| joined(key, items)),
    }
}

/// An array of strings (or one string).
fn list(item: &Item) -> Option<Vec<String>> {
    if let Some(s) = item.as_str() {
        return Some(vec![s.to_string()]);
    }
    item.as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// `KEY=VALUE` items of a table of strings or of an array of such strings. Dotted keys
/// (`sasl.password = "..."`, which TOML reads as nested tables) are joined back with dots.
fn pairs(item: &Item) -> Option<Vec<String>> {
    if let Some(table) = item.as_table_like() {
        let mut out = Vec::new();
        flatten("", table, &mut out)?;
        return Some(out);
    }
    let items = list(item)?;
    items.iter().all(|s| s.contains('=')).then_some(items)
}

fn flatten(prefix: &str, table: &dyn TableLike, out: &mut Vec<String>) -> Option<()> {
    for (k, v) in table.iter() {
        let name = format!("{prefix}{k}");
        if let Some(inner) = v.as_table_like() {
            flatten(&format!("{name}."), inner, out)?;
        } else {
            out.push(format!("{name}={}", v.as_str()?));
        }
    }
    Some(())
}

/// `TABLE=DAYS` items of the retention table; Err(Some) names the bad entry, Err(None) means
/// the value is not a table at all.
fn retention_days(item: &Item) -> Result<Vec<String>, Option<String>> {
    let table = item.as_table_like().ok_or(None)?;
    let mut out = Vec::new();
    for (name, days) in table.iter() {
        if strata_engine::registry::get(name).is_none() {
            let tables: Vec<&str> = strata_engine::registry::tables().map(|t| t.name).collect();
            let hint = keys::closest(name, tables.iter().copied())
                .map(|c| format!(" (did you mean {c}?)"))
                .unwrap_or_default();
            return Err(Some(format!(
                " names `{name}`, which is not a table of Strata's{hint}"
            )));
        }
        let days = match (days.as_integer(), days.as_str()) {
            (Some(n), _) if (1..=i64::from(u32::MAX)).contains(&n) => n.to_string(),
            (_, Some(RETENTION_FOREVER)) => RETENTION_FOREVER.to_string(),
            _ => {
                return Err(Some(format!(
                ".{name} must be a number of days (1 or more) or \"{RETENTION_FOREVER}\", not {}",
                describe(days)
            )))
            }
        };
        out.push(format!("{name}={days}"));
    }
    Ok(out)
}

/// The word that keeps a table's rows for ever.
pub const RETENTION_FOREVER: &str = "forever";

/// Items joined with commas, the delimiter of the list flags; an item holding a comma
/// cannot travel that way.
fn joined(key: &Key, items: Vec<String>) -> Result<String, String> {
    if let Some(bad) = items.iter().find(|s| s.contains(',')) {
        return Err(format!(
            " holds `{}` with a comma, which {} cannot carry (it separates items)",
            keys::redact_item(key, bad),
            key.env
        ));
    }
    Ok(items.join(","))
}

/// A value's TOML type, with its text when it is a scalar (`string "64"`, `integer -1`).
fn describe(item: &Item) -> String {
    let kind = item.type_name();
    if let Some(s) = item.as_str() {
        format!("{kind} {s:?}")
    } else if let Some(n) = item.as_integer() {
        format!("{kind} {n}")
    } else if let Some(n) = item.as_float() {
        format!("{kind} {n}")
    } else if let Some(b) = item.as_bool() {
        format!("{kind} {b}")
    } else {
        kind.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn value_of(values: &[FileValue], path: &str) -> Option<String> {
        values
            .iter()
            .find(|v| v.key.path() == path)
            .map(|v| v.value.clone())
    }

    #[test]
    fn a_good_file_becomes_variables() {
        let text = r#"
            [storage]
            url = "s3://bucket/strata"
            options = { aws_region = "eu-west-1", aws_secret_access_key = "s3cr3t" }
            [kafka]
            brokers = "b1:9092,b2:9092"
            options = ["security.protocol=SASL_SSL"]
            [api]
            listen = "0.0.0.0:8080"
            tokens = ["a:panels:00", "b:sql:11"]
            rate_limit = 12.5
            peer_rate_limit = 20
            cache_mb = 64
            [ingest]
            metrics_listen = "127.0.0.1:9464"
            [maintenance.retention_days]
            link_clicks = 30
            gdpr_audit = "forever"
            [log]
            format = "json"
        "#;
        let values = parse(text, "strata.toml").unwrap();
        let v = |p| value_of(&values, p);
        assert_eq!(v("storage.url").as_deref(), Some("s3://bucket/strata"));
        assert_eq!(
            v("storage.options").as_deref(),
            Some("aws_region=eu-west-1,aws_secret_access_key=s3cr3t")
        );
        assert_eq!(v("kafka.brokers").as_deref(), Some("b1:9092,b2:9092"));
        assert_eq!(
            v("kafka.options").as_deref(),
            Some("security.protocol=SASL_SSL")
        );
        assert_eq!(v("api.tokens").as_deref(), Some("a:panels:00,b:sql:11"));
        assert_eq!(v("api.rate_limit").as_deref(), Some("12.5"));
        assert_eq!(v("api.peer_rate_limit").as_deref(), Some("20"));
        assert_eq!(v("api.cache_mb").as_deref(), Some("64"));
        assert_eq!(
            v("maintenance.retention_days").as_deref(),
            Some("link_clicks=30,gdpr_audit=forever")
        );
        assert_eq!(v("log.format").as_deref(), Some("json"));
        let exported = exports(&values, &no_env);
        assert!(exported.contains(&("STRATA_CACHE_MB", "64".to_string())));
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let err = parse("[api]\nlistn = \"x\"\n", "strata.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "strata.toml: unknown key api.listn (did you mean api.listen?)"
        );
        let err = parse("[storag]\nurl = \"x\"\n", "strata.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "strata.toml: unknown key storag (did you mean storage?)"
        );
        let err = parse("[api]\nzzzzzzzzzz = 1\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "a.toml: unknown key api.zzzzzzzzzz");
        let err = parse("[maintenance.retention_days]\nlink_click = 3\n", "a.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("maintenance.retention_days names `link_click`"),
            "{err}"
        );
        assert!(err.contains("did you mean link_clicks?"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key_and_the_expected_type() {
        let cases = [
            (
                "[api]\ncache_mb = \"64\"\n",
                "api.cache_mb must be a whole number (0 or more), not string",
            ),
            (
                "[api]\ncache_mb = -1\n",
                "api.cache_mb must be a whole number",
            ),
            (
                "[api]\nrate_limit = true\n",
                "api.rate_limit must be a number (0 or more), not boolean",
            ),
            (
                "[storage]\nurl = 3\n",
                "storage.url must be a string, not integer",
            ),
            (
                "[log]\nformat = \"xml\"\n",
                "log.format must be one of the strings \"text\", \"json\"",
            ),
            (
                "[ingest]\nmetrics_listen = \"nowhere\"\n",
                "ingest.metrics_listen must be a socket address",
            ),
            (
                "[api]\ntokens = [1]\n",
                "api.tokens must be an array of strings",
            ),
            (
                "[kafka]\noptions = [\"novalue\"]\n",
                "kafka.options must be a table of strings",
            ),
            (
                "[maintenance.retention_days]\nlink_clicks = 0\n",
                "link_clicks must be a number of days",
            ),
            ("api = 3\n", "api must be a table"),
        ];
        for (text, needle) in cases {
            let err = parse(text, "strata.toml").unwrap_err().to_string();
            assert!(err.starts_with("strata.toml: "), "{err}");
            assert!(err.contains(needle), "{text}: {err}");
        }
        let err = parse("[api\n", "strata.toml").unwrap_err().to_string();
        assert!(err.starts_with("strata.toml: TOML parse error"), "{err}");
    }

    #[test]
    fn commas_inside_list_items_are_refused_with_secrets_hidden() {
        let err = parse(
            "[storage.options]\naws_secret_access_key = \"a,b\"\n",
            "strata.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("STRATA_STORAGE_OPTIONS cannot carry"), "{err}");
        assert!(!err.contains("a,b"), "{err}");
    }

    #[test]
    fn dotted_option_keys_are_joined_back() {
        let text = "[kafka.options]\nsasl.password = \"x\"\nsecurity.protocol = \"SSL\"\n";
        let values = parse(text, "f").unwrap();
        assert_eq!(
            value_of(&values, "kafka.options").as_deref(),
            Some("sasl.password=x,security.protocol=SSL")
        );
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let values = parse("[api]\ncache_mb = 64\nrow_cap = 5\n", "f").unwrap();
        let env = |name: &str| (name == "STRATA_CACHE_MB").then(|| OsString::from("7"));
        assert_eq!(
            exports(&values, &env),
            vec![("STRATA_ROW_CAP", "5".to_string())]
        );
    }

    #[test]
    fn the_file_is_found_by_flag_then_variable_then_working_directory() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let env = |name: &str| (name == "STRATA_CONFIG").then(|| OsString::from("env.toml"));
        let flag = locate(
            &args(&["strata", "serve", "--config", "a.toml"]),
            &env,
            true,
        );
        assert_eq!(flag, Some(PathBuf::from("a.toml")));
        let eq = locate(&args(&["strata", "--config=b.toml", "sql"]), &env, true);
        assert_eq!(eq, Some(PathBuf::from("b.toml")));
        let after_dashes = locate(
            &args(&["strata", "sql", "--", "--config", "c"]),
            &no_env,
            false,
        );
        assert_eq!(after_dashes, None);
        assert_eq!(
            locate(&args(&["strata"]), &env, true),
            Some(PathBuf::from("env.toml"))
        );
        assert_eq!(
            locate(&args(&["strata"]), &no_env, true),
            Some(PathBuf::from(DEFAULT_FILE))
        );
        assert_eq!(locate(&args(&["strata"]), &no_env, false), None);
    }
}
