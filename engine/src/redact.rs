//! Keeps the server's storage location out of answers: EXPLAIN output names the files a plan
//! reads by their full URL or path, and a client of the API must see them relative to the
//! storage root (`tables/link_clicks/event_date=.../part-....parquet`), never `file:///...`,
//! `/root/...` or a bucket.

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use url::Url;

use crate::Result;

/// Strips every spelling of the storage root from text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so that a URL goes before the path inside it.
    prefixes: Vec<String>,
}

impl Redactor {
    pub fn for_root(root: &Url) -> Self {
        let url = format!("{}/", root.as_str().trim_end_matches('/'));
        let path = format!("{}/", root.path().trim_end_matches('/'));
        let mut prefixes = vec![url, path.clone()];
        let relative = path.trim_start_matches('/');
        // An object-store path is the URL's path without its leading slash (for a bucket, the
        // prefix under it); the host (the bucket) goes too.
        if relative.len() > 1 {
            prefixes.push(relative.to_string());
        }
        if let Some(host) = root.host_str().filter(|h| !h.is_empty()) {
            prefixes.push(format!("{host}/"));
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        prefixes.dedup();
        prefixes.retain(|p| p.len() > 1);
        Self { prefixes }
    }

    pub fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for p in &self.prefixes {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), "");
            }
        }
        out
    }

    /// The batch with every string column redacted.
    pub fn batch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if self.prefixes.is_empty() {
            return Ok(batch.clone());
        }
        let columns = batch
            .columns()
            .iter()
            .map(|c| -> Result<ArrayRef> {
                let kind = c.data_type();
                if !matches!(
                    kind,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    return Ok(c.clone());
                }
                let utf8 = arrow::compute::cast(c, &DataType::Utf8)?;
                let redacted: StringArray = utf8
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(|v| self.text(v)))
                    .collect();
                Ok(arrow::compute::cast(&redacted, kind)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_root_goes() {
        let r = Redactor::for_root(&Url::parse("file:///srv/strata/data/").unwrap());
        let text = "DeltaScan file:///srv/strata/data/tables/a/x.parquet, /srv/strata/data/tables/b, [srv/strata/data/tables/c/p.parquet]";
        let out = r.text(text);
        assert!(!out.contains("srv/strata"), "{out}");
        assert!(
            out.contains("tables/a/x.parquet") && out.contains("[tables/c/p.parquet]"),
            "{out}"
        );
        let s3 = Redactor::for_root(&Url::parse("s3://bucket/pre/fix").unwrap());
        let out = s3.text("s3://bucket/pre/fix/tables/a and pre/fix/tables/b");
        assert_eq!(out, "tables/a and tables/b");
    }
}
