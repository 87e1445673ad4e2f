//! Linkis custom variables: `${name}` in the code is replaced by the value of
//! `params.variable.name`, or by a built-in date variable. Date variables take
//! a day offset: `${run_date-1}`, `${run_today_std+7}`.
//!
//! `run_date` is yesterday (T-1) as `yyyyMMdd` unless the submit sets it;
//! every other date variable derives from it. An undefined variable is an
//! error, except in shell code, where `${HOME}` and friends are the shell's own.

use std::collections::BTreeMap;

use chrono::{Datelike, Days, Local, NaiveDate};
use hangar_protocol::HangarError;

/// Substitute every `${...}` in `code`.
pub fn substitute(code: &str, user_vars: &BTreeMap<String, String>, shell: bool) -> Result<String, HangarError> {
    substitute_at(code, user_vars, shell, Local::now().date_naive())
}

pub(crate) fn substitute_at(
    code: &str,
    user_vars: &BTreeMap<String, String>,
    shell: bool,
    today: NaiveDate,
) -> Result<String, HangarError> {
    let run_date = match user_vars.get("run_date") {
        Some(v) => NaiveDate::parse_from_str(v, "%Y%m%d")
            .map_err(|_| HangarError::invalid(format!("variable run_date must be yyyyMMdd, got '{v}'")))?,
        None => today.checked_sub_days(Days::new(1)).unwrap_or(today),
    };
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let expr = &after[..end];
        match resolve(expr.trim(), user_vars, run_date)? {
            Some(v) => out.push_str(&v),
            // Shell parameter expansion, or not a variable's name at all: the code's own.
            None if shell || !is_name(expr.trim()) => out.push_str(&rest[start..start + 2 + end + 1]),
            None => {
                return Err(HangarError::invalid(format!(
                    "variable ${{{expr}}} is not defined: pass it in params.variable or use a built-in date variable such as ${{run_date}}"
                )));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn out_of_range(expr: &str) -> HangarError {
    HangarError::invalid(format!("variable ${{{expr}}}: the day offset is out of range"))
}

/// A user variable, or a date variable with an optional `+N` / `-N` day
/// offset (Linkis's grammar); anything else (`${X:-default}`, `${X//a/b}`,
/// `${#X}`) is not a Linkis variable and is left alone (None).
fn resolve(expr: &str, user: &BTreeMap<String, String>, run_date: NaiveDate) -> Result<Option<String>, HangarError> {
    if let Some(v) = user.get(expr) {
        return Ok(Some(v.clone()));
    }
    let name_end = expr.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expr.len());
    let (name, rest) = expr.split_at(name_end);
    let rest = rest.trim();
    let offset: i64 = if rest.is_empty() {
        0
    } else {
        let sign = rest.chars().next().unwrap_or(' ');
        let digits = rest[sign.len_utf8()..].trim();
        if !matches!(sign, '+' | '-') || digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Ok(None);
        }
        let n: i64 = digits.parse().map_err(|_| out_of_range(expr))?;
        if sign == '-' { -n } else { n }
    };
    let shift = |d: NaiveDate, days: i64| {
        chrono::TimeDelta::try_days(days).and_then(|t| d.checked_add_signed(t)).ok_or_else(|| out_of_range(expr))
    };
    let month_begin = |d: NaiveDate| d.with_day(1).unwrap_or(d);
    let month_end = |d: NaiveDate| {
        let next = if d.month() == 12 {
            NaiveDate::from_ymd_opt(d.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)
        };
        next.and_then(|n| n.pred_opt()).unwrap_or(d)
    };
    let is_date = matches!(
        name,
        "run_date"
            | "run_date_std"
            | "run_today"
            | "run_today_std"
            | "run_month_begin"
            | "run_month_begin_std"
            | "run_month_end"
            | "run_month_end_std"
            | "run_mon"
            | "run_mon_std"
    );
    if !is_date {
        return Ok(None);
    }
    let base = shift(run_date, offset)?;
    let today = shift(base, 1)?;
    let (date, fmt) = match name {
        "run_date" => (base, "%Y%m%d"),
        "run_date_std" => (base, "%Y-%m-%d"),
        "run_today" => (today, "%Y%m%d"),
        "run_today_std" => (today, "%Y-%m-%d"),
        "run_month_begin" => (month_begin(base), "%Y%m%d"),
        "run_month_begin_std" => (month_begin(base), "%Y-%m-%d"),
        "run_month_end" => (month_end(base), "%Y%m%d"),
        "run_month_end_std" => (month_end(base), "%Y-%m-%d"),
        "run_mon" => (base, "%Y%m"),
        _ => (base, "%Y-%m"),
    };
    Ok(Some(date.format(fmt).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("date")
    }

    #[test]
    fn user_and_date_variables() {
        let mut vars = BTreeMap::new();
        vars.insert("table".to_string(), "t1".to_string());
        let today = day(2026, 3, 1);
        let out = substitute_at(
            "select * from ${table} where d='${run_date}' and s='${run_date_std}' and t=${run_today} and p=${run_date-1} m=${run_month_begin} e=${run_month_end_std} mon=${run_mon}",
            &vars,
            false,
            today,
        )
        .expect("ok");
        assert_eq!(
            out,
            "select * from t1 where d='20260228' and s='2026-02-28' and t=20260301 and p=20260227 m=20260201 e=2026-02-28 mon=202602"
        );
    }

    #[test]
    fn shell_expansion_is_left_alone_and_offsets_are_checked() {
        let none = BTreeMap::new();
        let d = day(2026, 1, 2);
        for code in ["echo ${NAME:-world}", "${X//-/_}", "${#arr[@]}", "${run_date:-x}", "${HOME}"] {
            assert_eq!(substitute_at(code, &none, true, d).expect(code), code);
        }
        // Not a variable name in non-shell code either: left alone.
        assert_eq!(substitute_at("x = '${a b}'", &none, false, d).expect("ok"), "x = '${a b}'");
        for big in ["${run_date+999999999}", "${run_date-99999999999999999999}", "${run_today+9223372036854775807}"] {
            let e = substitute_at(big, &none, true, d).expect_err(big);
            assert!(e.message.contains("out of range"), "{big}: {}", e.message);
        }
        assert_eq!(substitute_at("${run_date + 2}", &none, false, d).expect("spaces"), "20260103");
        // Found by fuzzing: a multi-byte character right after a date variable's name.
        assert_eq!(substitute_at("${run_date\u{fffd}}", &none, true, d).expect("left alone"), "${run_date\u{fffd}}");
    }

    #[test]
    fn run_date_can_be_set_and_undefined_is_an_error() {
        let mut vars = BTreeMap::new();
        vars.insert("run_date".to_string(), "20241231".to_string());
        assert_eq!(substitute_at("${run_today_std}", &vars, false, day(2026, 1, 1)).expect("ok"), "2025-01-01");
        let err = substitute_at("echo ${nope}", &BTreeMap::new(), false, day(2026, 1, 1)).expect_err("undefined");
        assert!(err.message.contains("${nope} is not defined"), "{}", err.message);
        assert_eq!(
            substitute_at("echo ${HOME} ${run_date}", &BTreeMap::new(), true, day(2026, 1, 2)).expect("shell"),
            "echo ${HOME} 20260101"
        );
        vars.insert("run_date".to_string(), "yesterday".to_string());
        assert!(substitute_at("x", &vars, false, day(2026, 1, 1)).is_err());
        assert_eq!(
            substitute_at("unclosed ${run_date", &BTreeMap::new(), false, day(2026, 1, 1)).expect("ok"),
            "unclosed ${run_date"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(code in "(\\$\\{[a-z_+\\-0-9 :#/@]{0,24}\\}|[a-z ${}]{0,8}){0,6}", shell: bool) {
            let _ = substitute_at(&code, &BTreeMap::new(), shell, day(2026, 1, 2));
        }
    }
}
