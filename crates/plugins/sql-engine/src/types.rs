//! Arrow column types as Linkis result-set type names, and cells as text.

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use hangar_protocol::dolphin::Column;

/// The Linkis type name of an Arrow type; types without one of their own are `string`.
pub fn linkis_type(ty: &DataType) -> &'static str {
    match ty {
        DataType::Boolean => "boolean",
        DataType::Int8 => "tinyint",
        // Unsigned types take the smallest signed type that holds all their values
        // (UInt64 as bigint: values over i64::MAX are rare and still shown exactly).
        DataType::Int16 | DataType::UInt8 => "short",
        DataType::Int32 | DataType::UInt16 => "int",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint",
        DataType::Float16 | DataType::Float32 => "float",
        DataType::Float64 => "double",
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            "decimal"
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Timestamp(..) => "timestamp",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => "binary",
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..) => "array",
        DataType::Struct(_) => "struct",
        DataType::Map(..) => "map",
        DataType::Dictionary(_, value) => linkis_type(value),
        DataType::RunEndEncoded(_, values) => linkis_type(values.data_type()),
        // Null, Time32/64, Duration, Interval, Union.
        _ => "string",
    }
}

/// The result-set columns of a schema.
pub fn columns(schema: &Schema) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: linkis_type(f.data_type()).into(),
            comment: "NULL".into(),
        })
        .collect()
}

/// The rows of a batch as text, Arrow's display format; NULL cells are `None`
/// (and `NULL` inside nested values).
pub fn rows(batch: &RecordBatch) -> Result<Vec<Vec<Option<String>>>, ArrowError> {
    let options = FormatOptions::new().with_null("NULL");
    let cols = batch.columns();
    let formatters =
        cols.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<Vec<_>, _>>()?;
    // Logical nulls: a NullArray or a dictionary has NULLs without a null buffer of its own.
    let nulls: Vec<_> = cols.iter().map(|c| c.logical_nulls()).collect();
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut row = Vec::with_capacity(cols.len());
        for (f, n) in formatters.iter().zip(&nulls) {
            if n.as_ref().is_some_and(|n| n.is_null(i)) {
                row.push(None);
            } else {
                row.push(Some(f.value(i).try_to_string()?));
            }
        }
        out.push(row);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::array::{
        ArrayRef, BooleanArray, Date32Array, DictionaryArray, Float64Array, Int32Array, ListArray, NullArray,
        StringArray,
    };
    use datafusion::arrow::datatypes::{Field, Fields, Int32Type, TimeUnit};

    #[test]
    fn arrow_types_map_to_linkis_names() {
        let item = Arc::new(Field::new("item", DataType::Int32, true));
        let expect = [
            (DataType::Int8, "tinyint"),
            (DataType::Int16, "short"),
            (DataType::Int32, "int"),
            (DataType::Int64, "bigint"),
            (DataType::UInt8, "short"),
            (DataType::UInt16, "int"),
            (DataType::UInt32, "bigint"),
            (DataType::UInt64, "bigint"),
            (DataType::Float16, "float"),
            (DataType::Float32, "float"),
            (DataType::Float64, "double"),
            (DataType::Decimal128(10, 2), "decimal"),
            (DataType::Decimal256(40, 2), "decimal"),
            (DataType::Boolean, "boolean"),
            (DataType::Utf8, "string"),
            (DataType::LargeUtf8, "string"),
            (DataType::Utf8View, "string"),
            (DataType::Date32, "date"),
            (DataType::Date64, "date"),
            (DataType::Timestamp(TimeUnit::Nanosecond, None), "timestamp"),
            (DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), "timestamp"),
            (DataType::Binary, "binary"),
            (DataType::LargeBinary, "binary"),
            (DataType::FixedSizeBinary(16), "binary"),
            (DataType::List(item.clone()), "array"),
            (DataType::LargeList(item.clone()), "array"),
            (DataType::FixedSizeList(item.clone(), 3), "array"),
            (DataType::Struct(Fields::from(vec![Field::new("a", DataType::Int32, true)])), "struct"),
            (
                DataType::Map(
                    Arc::new(Field::new(
                        "entries",
                        DataType::Struct(Fields::from(vec![
                            Field::new("key", DataType::Utf8, false),
                            Field::new("value", DataType::Int32, true),
                        ])),
                        false,
                    )),
                    false,
                ),
                "map",
            ),
            (DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), "string"),
            (DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Int64)), "bigint"),
            (DataType::Null, "string"),
            (DataType::Time64(TimeUnit::Microsecond), "string"),
            (DataType::Duration(TimeUnit::Second), "string"),
        ];
        for (ty, name) in expect {
            assert_eq!(linkis_type(&ty), name, "{ty:?}");
        }
    }

    #[test]
    fn cells_are_text_and_nulls_none() {
        let list =
            ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), None]), None, Some(vec![])]);
        let dict: DictionaryArray<Int32Type> = vec![Some("x"), None, Some("x")].into_iter().collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![Some(1), None, Some(-3)])),
            Arc::new(StringArray::from(vec![Some("a"), Some(""), None])),
            Arc::new(Float64Array::from(vec![Some(1.5), None, Some(2.0)])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(Date32Array::from(vec![Some(19724), None, Some(0)])),
            Arc::new(list),
            Arc::new(dict),
            Arc::new(NullArray::new(3)),
        ];
        let batch = RecordBatch::try_from_iter(
            ["i", "s", "d", "b", "dt", "l", "dict", "n"].into_iter().zip(cols).collect::<Vec<_>>(),
        )
        .expect("batch");
        let names: Vec<(String, String)> =
            columns(&batch.schema()).into_iter().map(|c| (c.name, c.data_type)).collect();
        assert_eq!(
            names.iter().map(|(n, t)| format!("{n}:{t}")).collect::<Vec<_>>(),
            ["i:int", "s:string", "d:double", "b:boolean", "dt:date", "l:array", "dict:string", "n:string"]
        );
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows(&batch).expect("rows"),
            vec![
                vec![s("1"), s("a"), s("1.5"), s("true"), s("2024-01-02"), s("[1, NULL]"), s("x"), None],
                vec![None, s(""), None, s("false"), None, None, None, None],
                vec![s("-3"), None, s("2.0"), None, s("1970-01-01"), s("[]"), s("x"), None],
            ]
        );
    }
}
