//! A query result's text column as one array type.
//!
//! DataFusion may hand back `Utf8`, `Utf8View` or `LargeUtf8` for the same declared column
//! (Parquet reads default to views). Code that reads values out of a result casts once here
//! rather than downcasting to one of them and failing on the others.

use arrow::array::{ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;

use crate::error::{EngineError, Result};

/// `column` as a `Utf8` array; `what` names it in the error when it is not text at all.
pub(crate) fn utf8(column: &ArrayRef, what: &str) -> Result<StringArray> {
    match column.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
            let cast = arrow::compute::cast(column, &DataType::Utf8)?;
            Ok(cast.as_string::<i32>().clone())
        }
        other => Err(EngineError::Internal(format!(
            "{what} is {other}, not text"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int32Array, LargeStringArray, StringViewArray};
    use std::sync::Arc;

    #[test]
    fn every_text_layout_reads_the_same_and_numbers_are_refused() {
        let plain: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        let view: ArrayRef = Arc::new(StringViewArray::from(vec![Some("a"), None]));
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("a"), None]));
        for a in [plain, view, large] {
            let s = utf8(&a, "x").unwrap();
            assert_eq!(s.value(0), "a");
            assert!(s.is_null(1));
        }
        let n: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        let err = utf8(&n, "budget").unwrap_err().to_string();
        assert!(err.contains("budget is Int32, not text"), "{err}");
    }
}
