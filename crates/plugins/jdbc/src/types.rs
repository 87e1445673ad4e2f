//! PostgreSQL column types as Linkis result-set type names, and cells as text.

use std::borrow::Cow;

use sqlx::postgres::{PgRow, PgTypeInfo, PgTypeKind, PgValueFormat};
use sqlx::{Row, TypeInfo, ValueRef};

/// What a cell shows when its value cannot be rendered as text.
pub const UNREADABLE: &str = "<unreadable value>";

const BOOL_OID: u32 = 16;

/// Linkis type names of the built-in scalar types (`pg_type.oid`).
fn builtin(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "boolean",
        17 => "binary",
        18 | 1042 => "char",
        19 | 25 | 114 | 3802 => "string",
        20 => "bigint",
        21 => "short",
        23 => "int",
        700 => "float",
        701 => "double",
        1043 => "varchar",
        1082 => "date",
        1114 | 1184 => "timestamp",
        1700 => "decimal",
        // Arrays of the types above, and of json, jsonb, uuid.
        199 | 1000 | 1001 | 1002 | 1003 | 1005 | 1007 | 1009 | 1014 | 1015 | 1016 | 1021 | 1022 | 1115 | 1182
        | 1185 | 1231 | 2951 | 3807 => "array",
        _ => return None,
    })
}

/// The Linkis type name of a column type; unknown types are `string`.
pub fn linkis_type(ty: &PgTypeInfo) -> &'static str {
    linkis_type_at(ty, 0)
}

fn linkis_type_at(ty: &PgTypeInfo, depth: u8) -> &'static str {
    let oid = ty.oid();
    if let Some(t) = oid.and_then(|o| builtin(o.0)) {
        return t;
    }
    let name = ty.name();
    if name.ends_with("[]") {
        return "array";
    }
    // Only a resolved type may be asked for its kind: sqlx panics on a bare
    // declaration (no oid, or an oid it shows as "?").
    if oid.is_some() && name != "?" && depth < 8 {
        match ty.kind() {
            PgTypeKind::Domain(base) => return linkis_type_at(base, depth + 1),
            PgTypeKind::Array(_) => return "array",
            _ => {}
        }
    }
    "string"
}

/// Whether cells of this type are PostgreSQL's `t`/`f`, shown as `true`/`false`.
pub fn is_bool(ty: &PgTypeInfo) -> bool {
    ty.oid().is_some_and(|o| o.0 == BOOL_OID)
}

/// Cell `i` of a row as text: `None` for NULL, a placeholder for a value that
/// is not text.
pub fn cell(row: &PgRow, i: usize, boolean: bool) -> Option<Cow<'_, str>> {
    let Ok(v) = row.try_get_raw(i) else { return Some(Cow::Borrowed(UNREADABLE)) };
    if v.is_null() {
        return None;
    }
    if v.format() != PgValueFormat::Text {
        return Some(Cow::Borrowed(UNREADABLE));
    }
    match v.as_str() {
        Ok("t") if boolean => Some(Cow::Borrowed("true")),
        Ok("f") if boolean => Some(Cow::Borrowed("false")),
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => match v.as_bytes() {
            Ok(b) => Some(Cow::Owned(String::from_utf8_lossy(b).into_owned())),
            Err(_) => Some(Cow::Borrowed(UNREADABLE)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Postgres;
    use sqlx::postgres::types::Oid;

    fn of<T: sqlx::Type<Postgres>>() -> &'static str {
        linkis_type(&T::type_info())
    }

    #[test]
    fn postgres_types_map_to_linkis_names() {
        assert_eq!(of::<i16>(), "short");
        assert_eq!(of::<i32>(), "int");
        assert_eq!(of::<i64>(), "bigint");
        assert_eq!(of::<f32>(), "float");
        assert_eq!(of::<f64>(), "double");
        assert_eq!(of::<bool>(), "boolean");
        assert_eq!(of::<String>(), "string");
        assert_eq!(of::<Vec<u8>>(), "binary");
        assert_eq!(of::<Vec<i32>>(), "array");
        assert_eq!(of::<Vec<String>>(), "array");
        let by_oid = |o: u32| linkis_type(&PgTypeInfo::with_oid(Oid(o)));
        let expect = [
            (21, "short"),
            (23, "int"),
            (20, "bigint"),
            (700, "float"),
            (701, "double"),
            (1700, "decimal"),
            (16, "boolean"),
            (25, "string"),
            (1043, "varchar"),
            (1042, "char"),
            (19, "string"),
            (1082, "date"),
            (1114, "timestamp"),
            (1184, "timestamp"),
            (17, "binary"),
            (114, "string"),
            (3802, "string"),
            (1007, "array"),
            (1009, "array"),
            // uuid, interval, inet: no Linkis type of their own.
            (2950, "string"),
            (1186, "string"),
            (869, "string"),
        ];
        for (oid, name) in expect {
            assert_eq!(by_oid(oid), name, "oid {oid}");
        }
        // Unresolved and unknown types never panic.
        assert_eq!(by_oid(987_654), "string");
        assert_eq!(linkis_type(&PgTypeInfo::with_name("mood")), "string");
        assert_eq!(linkis_type(&PgTypeInfo::array_of("mood")), "array");
        assert!(is_bool(&<bool as sqlx::Type<Postgres>>::type_info()));
        assert!(!is_bool(&<String as sqlx::Type<Postgres>>::type_info()));
    }
}
