//! SQL literals the engine writes into statements it builds from values (panel parameters,
//! budget filters, rollup days): one spelling of each, none of which a value can break out of.

use chrono::NaiveDate;

/// Text as its UTF-8 bytes in hex, cast to text: no quote, comment or placeholder inside the
/// value can end the literal or be read as SQL.
pub(crate) fn text_literal(s: &str) -> String {
    format!("CAST(X'{}' AS VARCHAR)", hex::encode(s.as_bytes()))
}

/// `DATE 'YYYY-MM-DD'`
pub(crate) fn date_literal(day: NaiveDate) -> String {
    format!("DATE '{day}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(text_literal("ab"), "CAST(X'6162' AS VARCHAR)");
        let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        assert_eq!(date_literal(day), "DATE '2026-11-01'");
    }
}
