//! Every key the configuration file may hold: its `[section]` and name, the `STRATA_*`
//! variable it reaches its flag through, what a value must look like and whether it is a
//! secret. Defaults are not here: they are the flags' defaults (the `DEFAULT_*` constants of
//! the libraries), which `strata config check` and the example-file test read from clap.

/// What a key's value must be in the file, and how it becomes its variable's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any string.
    Text,
    /// A socket address, `host:port` with a numeric host (`127.0.0.1:9464`).
    Addr,
    /// A whole number, 0 or more.
    Uint,
    /// A number (whole or not), 0 or more.
    Number,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// An array of strings; the variable holds them joined with commas.
    List,
    /// A table of string values (`{ aws_region = "eu-west-1" }`) or an array of `"KEY=VALUE"`
    /// strings; the variable holds `KEY=VALUE` items joined with commas.
    Pairs,
    /// A table of table names to days (a whole number, 1 or more) or `"forever"`; the
    /// variable holds `TABLE=DAYS` items joined with commas.
    RetentionDays,
}

impl Kind {
    /// What a value of this kind is, for error messages.
    pub fn expected(self) -> String {
        match self {
            Kind::Text => "a string".into(),
            Kind::Addr => "a socket address string such as \"127.0.0.1:9464\"".into(),
            Kind::Uint => "a whole number (0 or more)".into(),
            Kind::Number => "a number (0 or more)".into(),
            Kind::Choice(words) => format!("one of the strings {}", quoted(words)),
            Kind::List => "an array of strings".into(),
            Kind::Pairs => {
                "a table of strings ({ key = \"value\" }) or an array of \"KEY=VALUE\" strings"
                    .into()
            }
            Kind::RetentionDays => {
                "a table of table names to days (1 or more) or \"forever\"".into()
            }
        }
    }
}

/// Which part of a value `strata config check` must not print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// Nothing: print it.
    No,
    /// Every item (API token lines).
    Whole,
    /// The value of each `KEY=VALUE` item whose key names a secret (password, secret, key,
    /// token, credential).
    PairValues,
}

/// One key of the configuration file. Keys are statics of one table: two are equal when they
/// are the same entry.
#[derive(Debug)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    /// The variable the file's value is exported as; the flag reads it (`env = ...`).
    pub env: &'static str,
    /// The clap id of the flag (its field name); None for a setting only read from the
    /// environment (the log filter).
    pub arg: Option<&'static str>,
    pub kind: Kind,
    pub secret: Secret,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Key {
    /// `section.name`, as errors and `strata config check` spell it.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

const fn key(
    section: &'static str,
    name: &'static str,
    env: &'static str,
    arg: &'static str,
    kind: Kind,
) -> Key {
    Key {
        section,
        name,
        env,
        arg: Some(arg),
        kind,
        secret: Secret::No,
    }
}

const fn secret(mut k: Key, secret: Secret) -> Key {
    k.secret = secret;
    k
}

/// The words `log.format` (`--log-format`) takes.
pub const LOG_FORMATS: &[&str] = &["text", "json"];

/// The variable of the log filter, which is not a flag.
pub const LOG_FILTER_ENV: &str = "STRATA_LOG";

/// The `[[budgets]]` array of tables: not one value of a section but a list of budgets, which
/// reaches `--budgets` as one JSON array in `STRATA_BUDGETS` (webhook secrets inside: never
/// printed).
pub static BUDGETS: Key = Key {
    section: "budgets",
    name: "",
    env: "STRATA_BUDGETS",
    arg: Some("budgets"),
    kind: Kind::Text,
    secret: Secret::Whole,
};

/// Every key, in the order `strata config check` and the example file list them.
pub const KEYS: &[Key] = &[
    key(
        "storage",
        "url",
        "STRATA_STORAGE_URL",
        "storage_url",
        Kind::Text,
    ),
    secret(
        key(
            "storage",
            "options",
            "STRATA_STORAGE_OPTIONS",
            "storage_options",
            Kind::Pairs,
        ),
        Secret::PairValues,
    ),
    key(
        "storage",
        "jobs_memory_mb",
        "STRATA_JOBS_MEMORY_MB",
        "jobs_memory_mb",
        Kind::Uint,
    ),
    key("kafka", "brokers", "STRATA_BROKERS", "brokers", Kind::Text),
    key("kafka", "group", "STRATA_GROUP", "group", Kind::Text),
    key(
        "kafka",
        "group_instance_id",
        "STRATA_GROUP_INSTANCE_ID",
        "group_instance_id",
        Kind::Text,
    ),
    key(
        "kafka",
        "click_topic",
        "STRATA_CLICK_TOPIC",
        "click_topic",
        Kind::Text,
    ),
    key(
        "kafka",
        "ai_usage_topic",
        "STRATA_AI_USAGE_TOPIC",
        "ai_usage_topic",
        Kind::Text,
    ),
    secret(
        key(
            "kafka",
            "options",
            "STRATA_KAFKA_OPTIONS",
            "kafka_options",
            Kind::Pairs,
        ),
        Secret::PairValues,
    ),
    key(
        "ingest",
        "flush_rows",
        "STRATA_FLUSH_ROWS",
        "flush_rows",
        Kind::Uint,
    ),
    key(
        "ingest",
        "flush_bytes",
        "STRATA_FLUSH_BYTES",
        "flush_bytes",
        Kind::Uint,
    ),
    key(
        "ingest",
        "flush_age_ms",
        "STRATA_FLUSH_AGE_MS",
        "flush_age_ms",
        Kind::Uint,
    ),
    key(
        "ingest",
        "dedupe_window",
        "STRATA_DEDUPE_WINDOW",
        "dedupe_window",
        Kind::Uint,
    ),
    key(
        "ingest",
        "metrics_listen",
        "STRATA_METRICS_LISTEN",
        "metrics_listen",
        Kind::Addr,
    ),
    key("api", "listen", "STRATA_LISTEN", "listen", Kind::Text),
    key(
        "api",
        "pg_listen",
        "STRATA_PG_LISTEN",
        "pg_listen",
        Kind::Text,
    ),
    key(
        "api",
        "pg_tls_cert",
        "STRATA_PG_TLS_CERT",
        "pg_tls_cert",
        Kind::Text,
    ),
    key(
        "api",
        "pg_tls_key",
        "STRATA_PG_TLS_KEY",
        "pg_tls_key",
        Kind::Text,
    ),
    key(
        "api",
        "flight_listen",
        "STRATA_FLIGHT_LISTEN",
        "flight_listen",
        Kind::Text,
    ),
    secret(
        key("api", "tokens", "STRATA_TOKENS", "tokens", Kind::List),
        Secret::Whole,
    ),
    key(
        "api",
        "rate_limit",
        "STRATA_RATE_LIMIT",
        "rate_limit",
        Kind::Number,
    ),
    key(
        "api",
        "peer_rate_limit",
        "STRATA_PEER_RATE_LIMIT",
        "peer_rate_limit",
        Kind::Number,
    ),
    key(
        "api",
        "query_timeout_secs",
        "STRATA_QUERY_TIMEOUT_SECS",
        "query_timeout_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "query_memory_mb",
        "STRATA_QUERY_MEMORY_MB",
        "query_memory_mb",
        Kind::Uint,
    ),
    key(
        "api",
        "server_memory_mb",
        "STRATA_SERVER_MEMORY_MB",
        "server_memory_mb",
        Kind::Uint,
    ),
    key(
        "api",
        "max_queries",
        "STRATA_MAX_QUERIES",
        "max_queries",
        Kind::Uint,
    ),
    key(
        "api",
        "queue_wait_ms",
        "STRATA_QUEUE_WAIT_MS",
        "queue_wait_ms",
        Kind::Uint,
    ),
    key("api", "row_cap", "STRATA_ROW_CAP", "row_cap", Kind::Uint),
    key(
        "api",
        "refresh_ms",
        "STRATA_REFRESH_MS",
        "refresh_ms",
        Kind::Uint,
    ),
    key("api", "cache_mb", "STRATA_CACHE_MB", "cache_mb", Kind::Uint),
    key(
        "api",
        "max_connections",
        "STRATA_MAX_CONNECTIONS",
        "max_connections",
        Kind::Uint,
    ),
    key(
        "api",
        "header_timeout_secs",
        "STRATA_HEADER_TIMEOUT_SECS",
        "header_timeout_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "body_timeout_secs",
        "STRATA_BODY_TIMEOUT_SECS",
        "body_timeout_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "rollup_interval_secs",
        "STRATA_ROLLUP_INTERVAL_SECS",
        "rollup_interval_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "compact_interval_secs",
        "STRATA_COMPACT_INTERVAL_SECS",
        "compact_interval_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "vacuum_interval_secs",
        "STRATA_VACUUM_INTERVAL_SECS",
        "vacuum_interval_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "retention_interval_secs",
        "STRATA_RETENTION_INTERVAL_SECS",
        "retention_interval_secs",
        Kind::Uint,
    ),
    key(
        "api",
        "table_health_interval_secs",
        "STRATA_TABLE_HEALTH_INTERVAL_SECS",
        "table_health_interval_secs",
        Kind::Uint,
    ),
    key(
        "maintenance",
        "retention_days",
        "STRATA_RETENTION_DAYS",
        "retention_days",
        Kind::RetentionDays,
    ),
    key(
        "log",
        "format",
        "STRATA_LOG_FORMAT",
        "log_format",
        Kind::Choice(LOG_FORMATS),
    ),
    Key {
        section: "log",
        name: "filter",
        env: LOG_FILTER_ENV,
        arg: None,
        kind: Kind::Text,
        secret: Secret::No,
    },
];

/// The sections, in order.
pub fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        if !out.contains(&k.section) {
            out.push(k.section);
        }
    }
    out
}

pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The candidate closest to `wrong` when it is close enough to be a slip of the keyboard.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(wrong, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether a `KEY=VALUE` option's key names a secret.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "password", "key", "token", "credential"]
        .iter()
        .any(|w| key.contains(w))
}

/// What stands in for a hidden secret.
pub const HIDDEN: &str = "<hidden>";

/// One item of `key`'s value (a list item, a `KEY=VALUE` option) as it may be shown.
pub fn redact_item(key: &Key, item: &str) -> String {
    match key.secret {
        Secret::No => item.to_string(),
        Secret::Whole => HIDDEN.to_string(),
        Secret::PairValues => match item.split_once('=') {
            Some((k, _)) if is_secret_option(k) => format!("{k}={HIDDEN}"),
            Some(_) => item.to_string(),
            // Not an option at all (it will be refused): it may be a secret mistyped.
            None => HIDDEN.to_string(),
        },
    }
}

/// `"a", "b"`: the words of a choice.
fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_slips_only() {
        let names = ["listen", "cache_mb", "row_cap"];
        assert_eq!(closest("listn", names), Some("listen"));
        assert_eq!(closest("cache_mib", names), Some("cache_mb"));
        assert_eq!(closest("completely_different", names), None);
    }

    #[test]
    fn keys_are_unique() {
        for (i, a) in KEYS.iter().enumerate() {
            for b in &KEYS[i + 1..] {
                assert!(a.path() != b.path() && a.env != b.env, "{}", a.path());
            }
        }
    }

    #[test]
    fn secrets_are_hidden_item_by_item() {
        let storage = find("storage", "options").unwrap();
        assert_eq!(
            redact_item(storage, "aws_secret_access_key=abc"),
            "aws_secret_access_key=<hidden>"
        );
        assert_eq!(redact_item(storage, "aws_region=eu"), "aws_region=eu");
        let tokens = find("api", "tokens").unwrap();
        assert_eq!(redact_item(tokens, "me:sql:0123"), HIDDEN);
        let url = find("storage", "url").unwrap();
        assert_eq!(redact_item(url, "s3://b"), "s3://b");
    }

    #[test]
    fn secret_option_names() {
        for k in [
            "aws_secret_access_key",
            "sasl.password",
            "ssl.key.password",
            "AWS_SESSION_TOKEN",
        ] {
            assert!(is_secret_option(k), "{k}");
        }
        for k in ["aws_region", "security.protocol", "sasl.mechanisms"] {
            assert!(!is_secret_option(k), "{k}");
        }
    }
}
