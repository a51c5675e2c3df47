use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use sha2::{Digest, Sha256};

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

impl Subject {
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

    /// Which columns of `table` identify the subject, with the ids to look for in each.
    /// `payload` is matched by containment (a dead letter's raw text naming any id).
    pub(crate) fn columns(&self, table: &str) -> Vec<(&'static str, Vec<&str>)> {
        let user = vec![self.user_id.as_str()];
        let anon: Vec<&str> = self.anonymous_ids.iter().map(String::as_str).collect();
        let sess: Vec<&str> = self.session_ids.iter().map(String::as_str).collect();
        let mut out = match table {
            "link_clicks" => vec![
                ("user_id", user),
                ("anonymous_id", anon),
                ("session_id", sess),
            ],
            "ai_usage" => vec![("user_id", user), ("session_id", sess)],
            "dead_letters" => vec![("key", self.ids()), ("payload", self.ids())],
            _ => vec![],
        };
        out.retain(|(_, ids)| !ids.is_empty());
        out
    }

    /// Rows of `batch` (of `table`) that are about the subject.
    pub(crate) fn matches(&self, table: &str, batch: &RecordBatch) -> Result<BooleanArray> {
        let mut mask = vec![false; batch.num_rows()];
        for (col, ids) in self.columns(table) {
            let Some(values) = batch.column_by_name(col) else {
                continue;
            };
            let values: ArrayRef = arrow::compute::cast(values, &DataType::Utf8)?;
            let values = values
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("cast to Utf8");
            if col == "payload" {
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
}

/// True when `text` holds `id` as a whole token (not inside a longer id: `u-0` is not in
/// `u-012`).
pub(crate) fn names(text: &str, id: &str) -> bool {
    let is_id_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(id).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + id.len()..].chars().next();
        !before.is_some_and(is_id_char) && !after.is_some_and(is_id_char)
    })
}

/// The SQL predicate selecting the subject's rows of `table` (ids as escaped literals; the
/// dead-letter payload by a whole-token regular expression).
pub(crate) fn sql_predicate(subject: &Subject, table: &str) -> String {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    subject
        .columns(table)
        .iter()
        .map(|(col, ids)| {
            if *col == "payload" {
                ids.iter()
                    .map(|id| {
                        let re =
                            format!("(^|[^A-Za-z0-9_-]){}([^A-Za-z0-9_-]|$)", regex_escape(id));
                        format!("regexp_like(payload, {})", lit(&re))
                    })
                    .collect::<Vec<_>>()
                    .join(" OR ")
            } else {
                format!(
                    "{col} IN ({})",
                    ids.iter().map(|i| lit(i)).collect::<Vec<_>>().join(", ")
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
        let path = Path::from("_strata/gdpr.key");
        let store = storage.store();
        match store.get(&path).await {
            Ok(r) => {
                let b = r
                    .bytes()
                    .await
                    .map_err(|e| EngineError::Internal(format!("reading the GDPR key: {e}")))?;
                return Ok(Self::from_bytes(&b));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(EngineError::Internal(format!("reading the GDPR key: {e}"))),
        }
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        let put = store
            .put_opts(
                &path,
                Bytes::from(key.clone()).into(),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
            .await;
        match put {
            Ok(_) => Ok(Self::from_bytes(&key)),
            // Another process made it first: use theirs.
            Err(object_store::Error::AlreadyExists { .. }) => {
                Box::pin(Self::load_or_create(storage)).await
            }
            Err(e) => Err(EngineError::Internal(format!("writing the GDPR key: {e}"))),
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
    fn hmac_matches_rfc4231_case_2() {
        let key = GdprKey::from_bytes(b"Jefe");
        assert_eq!(
            key.hash("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
