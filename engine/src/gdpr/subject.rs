use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use strata_schemas::PersonId;

use crate::delta::layout;
use crate::registry::{self, Names};
use crate::{EngineError, Result, Storage};

/// Who a request is about: a user id, and optionally the anonymous and session ids the
/// request names as theirs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    #[serde(rename = "subject")]
    pub user_id: String,
    #[serde(default)]
    pub anonymous_ids: Vec<String>,
    #[serde(default)]
    pub session_ids: Vec<String>,
}

/// Most ids one request may name: the subject, its anonymous ids and its session ids together.
/// Every id is matched against every dead-letter payload, so the predicate a purge builds
/// stays small; a longer list is refused, never turned into a giant OR.
pub const MAX_IDS_PER_REQUEST: usize = 100;
/// Lengths of an id, in characters (ASCII only, so bytes too).
const ID_LEN: std::ops::RangeInclusive<usize> = 3..=256;
/// A number shorter than this would match counts, offsets and prices in payloads.
const MIN_NUMERIC_ID_LEN: usize = 6;
/// Values producers send in the enum-like fields of events (docs/events.md), and the JSON
/// literals: an id equal to one of them would match most dead-letter payloads.
const PAYLOAD_VALUES: &[&str] = &[
    "true",
    "false",
    "null",
    "marketplace_listing",
    "directory_site",
    "profile",
    "homepage_module",
    "article",
    "homepage",
    "search",
    "directory",
    "marketplace",
    "email",
    "external",
    "desktop",
    "mobile",
    "tablet",
    "site_summary",
    "listing_writer",
    "search_answer",
    "profile_bio",
    "moderation",
    "error",
    "timeout",
    "rate_limited",
];

/// Lower-cased words an id may not be: every field and column name of the event and
/// dead-letter schemas, the tables and default topics, and [`PAYLOAD_VALUES`].
fn payload_vocabulary() -> &'static HashSet<String> {
    static WORDS: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let mut words: HashSet<String> = PAYLOAD_VALUES.iter().map(|w| w.to_string()).collect();
        for kind in strata_schemas::EventKind::ALL {
            words.insert(kind.table().to_string());
            words.insert(kind.default_topic().to_string());
            for schema in [kind.wire_schema(), kind.table_schema()] {
                words.extend(
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().to_ascii_lowercase()),
                );
            }
        }
        words.insert(strata_schemas::DEAD_LETTERS_TABLE.to_string());
        words.extend(
            strata_schemas::dead_letter_schema()
                .fields()
                .iter()
                .map(|f| f.name().to_ascii_lowercase()),
        );
        words
    })
}

/// The characters of an id, and of the tokens [`names`] and [`id_tokens`] match.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The id-like tokens of a text: its maximal runs of ASCII letters, digits, '-' and '_'. A
/// valid id (made of these characters only) is named by a text, as [`names`] decides it,
/// exactly when it is one of these tokens; ingest hashes them to find tombstoned subjects in
/// dead letters.
pub fn id_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !is_id_char(c))
        .filter(|t| !t.is_empty())
}

/// Checks one id against the id rule (see [`Subject::validate`]). The message names the
/// field, never the id.
fn check_id(field: &str, id: &str) -> Result<()> {
    let refuse = |why: &str| -> Result<()> {
        Err(EngineError::Param(format!(
            "`{field}` {why} (see the id rule in docs/operations/gdpr.md)"
        )))
    };
    if id.is_empty() {
        return refuse("is empty");
    }
    if !ID_LEN.contains(&id.len()) {
        return refuse("must be 3 to 256 characters long");
    }
    if !id.chars().all(is_id_char) {
        return refuse("may only hold ASCII letters, digits, '-' and '_'");
    }
    if id.len() < MIN_NUMERIC_ID_LEN && id.chars().all(|c| c.is_ascii_digit()) {
        return refuse(
            "is a number of fewer than 6 digits, which dead-letter payloads are full of",
        );
    }
    if payload_vocabulary().contains(&id.to_ascii_lowercase()) {
        return refuse(
            "is a JSON literal, or a field name or value of the event payloads, which most dead letters hold",
        );
    }
    Ok(())
}

impl Subject {
    /// The id rule, for the subject, every anonymous id and every session id:
    /// - 3 to 256 characters, only ASCII letters, digits, '-' and '_' (so an id is a whole
    ///   token wherever it is named: what purge, export and the ingest tombstone filter match);
    /// - not only digits when shorter than 6 characters;
    /// - not a JSON literal (`true`, `false`, `null`), nor a field name of the event or
    ///   dead-letter schemas, nor a value of the events' enum-like fields (any case);
    /// - at most [`MAX_IDS_PER_REQUEST`] ids in all.
    ///
    /// Generated ids (`u-5`, `a-9f2`, UUIDs) pass. A refusal is [`EngineError::Param`] (400).
    pub fn validate(&self) -> Result<()> {
        let n = 1 + self.anonymous_ids.len() + self.session_ids.len();
        if n > MAX_IDS_PER_REQUEST {
            return Err(EngineError::Param(format!(
                "a request names at most {MAX_IDS_PER_REQUEST} ids (subject, anonymous_ids and \
                 session_ids together), this one names {n}: split it into several requests"
            )));
        }
        check_id("subject", &self.user_id)?;
        for (i, id) in self.anonymous_ids.iter().enumerate() {
            check_id(&format!("anonymous_ids[{i}]"), id)?;
        }
        for (i, id) in self.session_ids.iter().enumerate() {
            check_id(&format!("session_ids[{i}]"), id)?;
        }
        Ok(())
    }

    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            ..Default::default()
        }
    }

    /// Every identifier of the subject.
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(self.user_id.as_str())
            .chain(self.anonymous_ids.iter().map(String::as_str))
            .chain(self.session_ids.iter().map(String::as_str))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Which columns of `table` identify the subject (as the registry declares them), with
    /// the ids to look for in each; columns with no id to look for are left out.
    pub(crate) fn columns(&self, table: &str) -> Vec<SubjectColumn<'_>> {
        let declared = registry::get(table).map(|t| t.identifier_columns());
        let mut out: Vec<SubjectColumn<'_>> = declared
            .unwrap_or_default()
            .into_iter()
            .map(|c| SubjectColumn {
                column: c.column,
                ids: self.ids_named_by(c.names),
                in_text: c.names == Names::AnyIdInText,
            })
            .collect();
        out.retain(|c| !c.ids.is_empty());
        out
    }

    /// The ids of the subject a column that names them this way can hold.
    fn ids_named_by(&self, names: Names) -> Vec<&str> {
        match names {
            Names::Id(PersonId::User) => vec![self.user_id.as_str()],
            Names::Id(PersonId::Anonymous) => as_strs(&self.anonymous_ids),
            Names::Id(PersonId::Session) => as_strs(&self.session_ids),
            Names::AnyId | Names::AnyIdInText => self.ids(),
        }
    }

    /// Rows of `batch` (of `table`) that are about the subject.
    pub(crate) fn matches(&self, table: &str, batch: &RecordBatch) -> Result<BooleanArray> {
        matching_rows(batch, &self.columns(table))
    }
}

/// Rows of `batch` that hold one of the ids of `columns` (a column `batch` lacks holds none).
pub(crate) fn matching_rows(
    batch: &RecordBatch,
    columns: &[SubjectColumn<'_>],
) -> Result<BooleanArray> {
    let mut mask = vec![false; batch.num_rows()];
    for SubjectColumn {
        column,
        ids,
        in_text,
    } in columns
    {
        let Some(values) = batch.column_by_name(column) else {
            continue;
        };
        let values: ArrayRef = arrow::compute::cast(values, &DataType::Utf8)?;
        let values = values
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("cast to Utf8");
        if *in_text {
            for (i, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    mask[i] |= ids.iter().any(|id| names(v, id));
                }
            }
        } else {
            let set: HashSet<&str> = ids.iter().copied().collect();
            for (i, v) in values.iter().enumerate() {
                mask[i] |= v.is_some_and(|v| set.contains(v));
            }
        }
    }
    Ok(BooleanArray::from(mask))
}

fn as_strs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// A column of a table that can name the subject, with the subject's ids it may hold.
#[derive(Debug, Clone)]
pub(crate) struct SubjectColumn<'a> {
    pub column: &'static str,
    pub ids: Vec<&'a str>,
    /// Free text naming an id as a whole token (a dead letter's payload), matched by
    /// containment; every other column by equality.
    pub in_text: bool,
}

/// True when `text` holds `id` as a whole token (not inside a longer id: `u-0` is not in
/// `u-012`).
pub(crate) fn names(text: &str, id: &str) -> bool {
    text.match_indices(id).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + id.len()..].chars().next();
        !before.is_some_and(is_id_char) && !after.is_some_and(is_id_char)
    })
}

/// The SQL predicate selecting the subject's rows of `table` (ids as escaped literals; the
/// dead-letter payload by one whole-token regular expression with an alternative per id, at
/// most [`MAX_IDS_PER_REQUEST`] of them).
pub(crate) fn sql_predicate(subject: &Subject, table: &str) -> String {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    subject
        .columns(table)
        .iter()
        .map(|c| {
            if c.in_text {
                let alternatives = c
                    .ids
                    .iter()
                    .map(|id| regex_escape(id))
                    .collect::<Vec<_>>()
                    .join("|");
                let re = format!("(^|[^A-Za-z0-9_-])({alternatives})([^A-Za-z0-9_-]|$)");
                format!("regexp_like({}, {})", c.column, lit(&re))
            } else {
                format!(
                    "{} IN ({})",
                    c.column,
                    c.ids.iter().map(|i| lit(i)).collect::<Vec<_>>().join(", ")
                )
            }
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The key of the keyed hash (HMAC-SHA256) that stands for a subject id in tombstones and the
/// audit log. Kept at `<root>/_strata/gdpr.key` (created on first use) unless given.
///
/// The HMAC's inner and outer hash states (key xor ipad/opad absorbed) are prepared once:
/// ingest hashes every id of every event while tombstones exist.
#[derive(Clone)]
pub struct GdprKey {
    inner: Arc<Sha256>,
    outer: Arc<Sha256>,
}

impl std::fmt::Debug for GdprKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GdprKey(..)")
    }
}

impl GdprKey {
    pub fn from_bytes(key: &[u8]) -> Self {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
        Self {
            inner: Arc::new(Sha256::new().chain_update(pad(0x36))),
            outer: Arc::new(Sha256::new().chain_update(pad(0x5c))),
        }
    }

    pub async fn load_or_create(storage: &Storage) -> Result<Self> {
        let path = layout::gdpr_key();
        if let Some(b) = storage.read_if_exists(&path).await? {
            return Ok(Self::from_bytes(&b));
        }
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        let created = storage
            .create_if_absent(
                &path,
                Bytes::from(key.clone()).into(),
                "writing the GDPR key",
            )
            .await?;
        if created {
            Ok(Self::from_bytes(&key))
        } else {
            // Another process made it first: use theirs.
            Box::pin(Self::load_or_create(storage)).await
        }
    }

    /// HMAC-SHA256 of `id`, hex.
    pub fn hash(&self, id: &str) -> String {
        let inner = (*self.inner).clone().chain_update(id.as_bytes()).finalize();
        hex::encode((*self.outer).clone().chain_update(inner).finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_whole_tokens_only() {
        assert!(names(r#"{"user_id":"u-0"}"#, "u-0"));
        assert!(names("u-0", "u-0"));
        assert!(!names(r#"{"user_id":"u-012"}"#, "u-0"));
        assert!(!names("xu-0", "u-0"));
        assert_eq!(regex_escape("a.b-c"), r"a\.b-c");
    }

    #[test]
    fn tokens_are_what_names_matches() {
        let text = r#"{"user_id":"u-5","x":"u-50 xu-5","y":[u-5]}"#;
        let tokens: Vec<&str> = id_tokens(text).collect();
        assert_eq!(tokens.iter().filter(|t| **t == "u-5").count(), 2);
        assert!(names(text, "u-5") && tokens.contains(&"u-5"));
        assert!(!tokens.contains(&"u-"));
    }

    #[test]
    fn the_id_rule() {
        let ok = |s: Subject| s.validate().is_ok();
        assert!(ok(Subject::new("u-5")));
        assert!(ok(Subject::new("u-1234")));
        assert!(ok(Subject::new("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11")));
        assert!(ok(Subject::new("123456")));
        for bad in [
            "",
            "u",
            "u5",
            "12345",
            " u-5",
            "u 5",
            "u-5\n",
            "u.5",
            "true",
            "NULL",
            "user_id",
            "occurred_at",
            "schema_version",
            "item_type",
            "payload",
            "event_date",
            "profile",
            "search",
        ] {
            let err = Subject::new(bad).validate().unwrap_err();
            assert!(matches!(err, EngineError::Param(_)), "{bad:?}: {err}");
        }
        assert!(!ok(Subject::new("x".repeat(257))));
        let mut s = Subject::new("u-5");
        s.session_ids = vec!["s-1".into(), String::new()];
        assert!(!ok(s));
        let mut many = Subject::new("u-5");
        many.anonymous_ids = (0..40_000).map(|i| format!("a-{i}")).collect();
        let err = many.validate().unwrap_err().to_string();
        assert!(err.contains("at most 100 ids"), "{err}");
        many.anonymous_ids.truncate(99);
        assert!(ok(many));
    }

    #[test]
    fn one_regular_expression_for_every_payload_id() {
        let mut s = Subject::new("u-5");
        s.anonymous_ids = vec!["a-9f2".into()];
        let p = sql_predicate(&s, "dead_letters");
        assert_eq!(p.matches("regexp_like").count(), 1, "{p}");
        assert!(p.contains("(u-5|a-9f2)"), "{p}");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let key = GdprKey::from_bytes(b"Jefe");
        assert_eq!(
            key.hash("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
