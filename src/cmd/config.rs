//! `strata config check`: validates the configuration the way the subcommands will read it
//! (file, `STRATA_*` variables, flags) and prints the effective value of every key, where it
//! came from and with its secrets hidden. A bad file never gets here: `main` loads it first
//! and stops with the error (exit code 2).

use std::fmt::Write as _;

use anyhow::anyhow;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, Subcommand};
use strata_engine::maintenance::RetentionPolicy;

use crate::config::file::{self, FileLayer, RETENTION_FOREVER};
use crate::config::keys::{self, Key, Kind, KEYS};
use crate::config::logging::DEFAULT_LOG_FILTER;
use crate::config::{
    ingest_options, ApiConfig, BudgetsConfig, FlushConfig, KafkaConfig, MetricsConfig,
    RetentionConfig, StorageConfig,
};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective value of every key, where it came
    /// from (default, file, env, flag), secrets hidden.
    Check(CheckArgs),
}

/// Every flag a key of the file feeds, so that `config check` sees what each subcommand
/// would (and takes the same flags, to preview an override).
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub flush: FlushConfig,
    #[command(flatten)]
    pub metrics: MetricsConfig,
    #[command(flatten)]
    pub api: ApiConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
    #[command(flatten)]
    pub budgets: BudgetsConfig,
}

pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check(args) => check(&args),
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    // What a subcommand would refuse at start is refused here too.
    args.storage.options()?;
    ingest_options(&args.kafka, &args.flush)?;
    args.api.auth()?;
    args.retention.policy()?;
    args.budgets.budgets()?;
    // The parsed struct has the values; the matches also know where each came from.
    let top = crate::Cli::command().try_get_matches_from(std::env::args_os())?;
    let check = top
        .subcommand_matches("config")
        .and_then(|m| m.subcommand_matches("check"))
        .ok_or_else(|| anyhow!("`strata config check` was not what ran"))?;
    let env = |name: &str| std::env::var(name).ok();
    let layer = file::layer();
    print!("{}", render(&effective(&top, check, layer, &env), layer));
    Ok(())
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
    /// No default and nobody set it.
    Unset,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
            Source::Unset => "unset",
        }
    }

    /// A flag's source from clap's, knowing whether its variable came from the file.
    fn of(clap_source: Option<ValueSource>, exported_from_file: bool) -> Self {
        match clap_source {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) if exported_from_file => Source::File,
            Some(ValueSource::EnvVariable) => Source::Env,
            Some(ValueSource::DefaultValue) => Source::Default,
            Some(_) | None => Source::Unset,
        }
    }
}

/// The effective value of one key: its items (one for a scalar) and their source.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: &'static Key,
    pub items: Vec<String>,
    pub source: Source,
}

/// Every key's effective value. `top` holds the global flags, `check` the others; `env`
/// reads the environment (for the log filter, which is no flag).
pub fn effective(
    top: &ArgMatches,
    check: &ArgMatches,
    layer: &FileLayer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Entry> {
    KEYS.iter()
        .map(|key| match key.arg {
            Some(id) => flag_entry(key, id, [check, top], layer),
            None => filter_entry(key, layer, env),
        })
        .collect()
}

fn flag_entry(key: &'static Key, id: &str, matches: [&ArgMatches; 2], layer: &FileLayer) -> Entry {
    for m in matches {
        let Ok(raw) = m.try_get_raw(id) else {
            continue; // not an argument of this command
        };
        let items = raw
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let source = Source::of(m.value_source(id), layer.exported.contains(key.env));
        return Entry { key, items, source };
    }
    Entry {
        key,
        items: vec![],
        source: Source::Unset,
    }
}

/// The log filter: `STRATA_LOG` (from the environment or the file), `RUST_LOG`, the default.
fn filter_entry(
    key: &'static Key,
    layer: &FileLayer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Entry {
    let (value, source) = match (env(key.env), env("RUST_LOG")) {
        (Some(v), _) if layer.exported.contains(key.env) => (v, Source::File),
        (Some(v), _) | (None, Some(v)) => (v, Source::Env),
        (None, None) => (DEFAULT_LOG_FILTER.to_string(), Source::Default),
    };
    Entry {
        key,
        items: vec![value],
        source,
    }
}

/// The entries as TOML with a comment naming each value's source; secrets hidden.
pub fn render(entries: &[Entry], layer: &FileLayer) -> String {
    let mut out = String::new();
    let file = layer
        .path
        .as_ref()
        .map_or_else(|| "none".to_string(), |p| p.display().to_string());
    let _ = writeln!(
        out,
        "# The effective configuration; configuration file: {file}. Secrets are hidden.\n\
         # After each value: where it came from (default, file, env, flag)."
    );
    let mut section = "";
    for e in entries {
        if e.key.kind == Kind::RetentionDays {
            render_retention(&mut out, e);
            continue;
        }
        if e.key.section != section {
            section = e.key.section;
            let _ = writeln!(out, "\n[{section}]");
        }
        match value(e) {
            Some(v) => {
                let _ = writeln!(out, "{} = {v}  # {}", e.key.name, e.source.as_str());
            }
            None => {
                let _ = writeln!(out, "# {} is unset", e.key.name);
            }
        }
    }
    out
}

/// A value in TOML syntax, its secrets hidden; None when it has no items.
fn value(e: &Entry) -> Option<String> {
    let items: Vec<String> = split_items(e)
        .into_iter()
        .map(|i| keys::redact_item(e.key, &i))
        .collect();
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    match e.key.kind {
        _ if items.is_empty() => None,
        Kind::Uint | Kind::Number => Some(items.join(",")),
        Kind::Text | Kind::Addr | Kind::Choice(_) => Some(quote(&items.join(","))),
        Kind::List | Kind::RetentionDays => {
            let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
            Some(format!("[{}]", quoted.join(", ")))
        }
        Kind::Pairs => {
            let members: Vec<String> = items
                .iter()
                .map(|i| {
                    let (k, v) = i.split_once('=').unwrap_or((i.as_str(), ""));
                    format!("{} = {}", quote(k), quote(v))
                })
                .collect();
            Some(format!("{{ {} }}", members.join(", ")))
        }
    }
}

/// The items of a list-like value (clap may hold `a,b` from a variable as one value or two).
fn split_items(e: &Entry) -> Vec<String> {
    match e.key.kind {
        Kind::List | Kind::Pairs | Kind::RetentionDays => e
            .items
            .iter()
            .flat_map(|v| v.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().to_string())
            .collect(),
        _ => e.items.clone(),
    }
}

/// `[maintenance.retention_days]`: every table's window, the configured ones from the
/// entry, the others the defaults.
fn render_retention(out: &mut String, e: &Entry) {
    let configured: Vec<(String, String)> = split_items(e)
        .iter()
        .filter_map(|i| i.split_once('='))
        .map(|(t, d)| (t.trim().to_string(), d.trim().to_string()))
        .collect();
    let _ = writeln!(out, "\n[{}.{}]", e.key.section, e.key.name);
    for (table, days) in RetentionPolicy::default().days {
        let set = configured.iter().rev().find(|(t, _)| *t == table);
        let (days, source) = match set {
            Some((_, d)) => (d.clone(), e.source),
            None => (
                days.map_or_else(|| RETENTION_FOREVER.to_string(), |d| d.to_string()),
                Source::Default,
            ),
        };
        let days = if days == RETENTION_FOREVER {
            format!("\"{days}\"")
        } else {
            days
        };
        let _ = writeln!(out, "{table} = {days}  # {}", source.as_str());
    }
}

#[cfg(test)]
mod tests {
    use clap::Command;

    use super::*;
    use crate::config::GlobalConfig;

    fn global() -> Command {
        GlobalConfig::augment_args(Command::new("strata"))
    }

    fn check_command() -> Command {
        CheckArgs::augment_args(Command::new("check"))
    }

    /// The effective configuration of `strata check ARGS` with no file and an empty
    /// environment for the log filter, rendered.
    fn rendered(args: &[&str]) -> String {
        let mut argv = vec!["strata", "check"];
        argv.extend_from_slice(args);
        let top = global()
            .subcommand(check_command())
            .try_get_matches_from(argv)
            .unwrap();
        let check = top.subcommand_matches("check").unwrap();
        let layer = FileLayer::default();
        render(&effective(&top, check, &layer, &|_| None), &layer)
    }

    #[test]
    fn flags_and_defaults_are_shown_with_secrets_hidden() {
        let text = rendered(&[
            "--listen",
            "0.0.0.0:9",
            "--token",
            "me:sql:abcdef",
            "--storage-option",
            "aws_secret_access_key=s3cr3t",
            "--storage-option",
            "aws_region=eu",
            "--kafka-option",
            "sasl.password=pw123",
        ]);
        assert!(text.contains("listen = \"0.0.0.0:9\"  # flag"), "{text}");
        assert!(text.contains("tokens = [\"<hidden>\"]  # flag"), "{text}");
        assert!(
            text.contains(
                "options = { \"aws_secret_access_key\" = \"<hidden>\", \"aws_region\" = \"eu\" }  # flag"
            ),
            "{text}"
        );
        assert!(
            text.contains("options = { \"sasl.password\" = \"<hidden>\" }  # flag"),
            "{text}"
        );
        for secret in ["abcdef", "s3cr3t", "pw123"] {
            assert!(!text.contains(secret), "{secret} shown:\n{text}");
        }
        assert!(text.contains("cache_mb = 256  # default"), "{text}");
        assert!(text.contains("format = \"text\"  # default"), "{text}");
        assert!(
            text.contains(&format!("filter = \"{DEFAULT_LOG_FILTER}\"  # default")),
            "{text}"
        );
        assert!(text.contains("# group_instance_id is unset"), "{text}");
        assert!(text.contains("link_clicks = 400  # default"), "{text}");
    }

    #[test]
    fn configured_retention_is_merged_with_the_defaults() {
        let text = rendered(&["--retention-days", "link_clicks=30,gdpr_audit=forever"]);
        assert!(text.contains("[maintenance.retention_days]"), "{text}");
        assert!(text.contains("link_clicks = 30  # flag"), "{text}");
        assert!(text.contains("gdpr_audit = \"forever\"  # flag"), "{text}");
        assert!(text.contains("ai_usage = 762  # default"), "{text}");
    }

    #[test]
    fn sources_from_clap_and_the_file_layer() {
        assert_eq!(
            Source::of(Some(ValueSource::CommandLine), true),
            Source::Flag
        );
        assert_eq!(
            Source::of(Some(ValueSource::EnvVariable), true),
            Source::File
        );
        assert_eq!(
            Source::of(Some(ValueSource::EnvVariable), false),
            Source::Env
        );
        assert_eq!(
            Source::of(Some(ValueSource::DefaultValue), false),
            Source::Default
        );
        assert_eq!(Source::of(None, false), Source::Unset);
        let layer = FileLayer {
            exported: [keys::LOG_FILTER_ENV].into_iter().collect(),
            ..FileLayer::default()
        };
        let key = keys::find("log", "filter").unwrap();
        let from_file = filter_entry(key, &layer, &|n| {
            (n == "STRATA_LOG").then(|| "debug".into())
        });
        assert_eq!(
            (from_file.items[0].as_str(), from_file.source),
            ("debug", Source::File)
        );
        let rust_log = filter_entry(key, &FileLayer::default(), &|n| {
            (n == "RUST_LOG").then(|| "trace".into())
        });
        assert_eq!(
            (rust_log.items[0].as_str(), rust_log.source),
            ("trace", Source::Env)
        );
    }

    #[test]
    fn every_flag_has_a_key_read_from_its_variable() {
        let (global, check) = (global(), check_command());
        let args: Vec<&clap::Arg> = check
            .get_arguments()
            .chain(global.get_arguments())
            .collect();
        for arg in &args {
            let id = arg.get_id().as_str();
            if id == "config" {
                continue; // names the file; not a key in it
            }
            let key = KEYS
                .iter()
                .chain([&keys::BUDGETS])
                .find(|k| k.arg == Some(id))
                .unwrap_or_else(|| panic!("--{id} has no key in config/keys.rs"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(key.env),
                "{id}"
            );
        }
        for key in KEYS {
            if let Some(id) = key.arg {
                assert!(
                    args.iter().any(|a| a.get_id().as_str() == id),
                    "{} names no flag",
                    key.path()
                );
            }
        }
    }

    /// strata.example.toml lists every key with its default (the flags' defaults), so it
    /// cannot drift from them; keys without a default appear commented out.
    #[test]
    fn the_example_file_holds_every_default() {
        let text = include_str!("../../strata.example.toml");
        let values = file::parse(text, "strata.example.toml").unwrap();
        let (global, check) = (global(), check_command());
        let args: Vec<&clap::Arg> = check
            .get_arguments()
            .chain(global.get_arguments())
            .collect();
        for key in KEYS {
            let in_file = values
                .iter()
                .find(|v| v.key.path() == key.path())
                .map(|v| v.value.clone());
            let default = match key.arg {
                Some(id) => {
                    let arg = args.iter().find(|a| a.get_id().as_str() == id).unwrap();
                    let d: Vec<String> = arg
                        .get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect();
                    (!d.is_empty()).then(|| d.join(","))
                }
                None => Some(DEFAULT_LOG_FILTER.to_string()),
            };
            if key.kind == Kind::RetentionDays {
                let listed = in_file.unwrap_or_default();
                let retention = RetentionConfig {
                    retention_days: listed.split(',').map(str::to_string).collect(),
                };
                let defaults = RetentionPolicy::default().days;
                assert_eq!(retention.policy().unwrap().days, defaults);
                assert_eq!(
                    listed.split(',').count(),
                    defaults.len(),
                    "every table listed"
                );
                continue;
            }
            match default {
                Some(d) => assert_eq!(in_file, Some(d), "{}", key.path()),
                None => {
                    assert_eq!(in_file, None, "{} has no default", key.path());
                    assert!(
                        text.contains(&format!("\n# {} = ", key.name)),
                        "{} is missing (commented out)",
                        key.path()
                    );
                }
            }
        }
    }
}
