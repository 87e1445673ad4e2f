//! Splitting code into statements (Linkis CodeParser).

/// Split SQL on `;` outside single/double/back quotes and `--` / `/* */`
/// comments; blank statements are dropped. A quote doubled (`''`) or escaped
/// with a backslash stays inside its string.
pub fn split_sql(code: &str) -> Vec<String> {
    #[derive(PartialEq, Clone, Copy)]
    enum St {
        Code,
        Quote(char),
        LineComment,
        BlockComment,
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut st = St::Code;
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match st {
            St::Code => match c {
                ';' => {
                    push_stmt(&mut out, &cur);
                    cur.clear();
                    i += 1;
                    continue;
                }
                '\'' | '"' | '`' => st = St::Quote(c),
                '-' if next == Some('-') => st = St::LineComment,
                '/' if next == Some('*') => {
                    cur.push_str("/*");
                    i += 2;
                    st = St::BlockComment;
                    continue;
                }
                _ => {}
            },
            St::Quote(q) => {
                if c == '\\' && next.is_some() {
                    cur.push(c);
                    cur.push(chars[i + 1]);
                    i += 2;
                    continue;
                }
                if c == q {
                    if next == Some(q) {
                        cur.push(c);
                        cur.push(q);
                        i += 2;
                        continue;
                    }
                    st = St::Code;
                }
            }
            St::LineComment => {
                if c == '\n' {
                    st = St::Code;
                }
            }
            St::BlockComment => {
                if c == '*' && next == Some('/') {
                    cur.push_str("*/");
                    i += 2;
                    st = St::Code;
                    continue;
                }
            }
        }
        cur.push(c);
        i += 1;
    }
    push_stmt(&mut out, &cur);
    out
}

fn push_stmt(out: &mut Vec<String>, s: &str) {
    let t = s.trim();
    // A statement that is only comments is dropped too.
    if !t.is_empty() && !only_comments(t) {
        out.push(t.to_string());
    }
}

fn only_comments(s: &str) -> bool {
    let mut rest = s.trim();
    loop {
        if rest.is_empty() {
            return true;
        }
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map(|(_, b)| b).unwrap_or("").trim();
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.split_once("*/") {
                Some((_, b)) => rest = b.trim(),
                None => return true,
            }
        } else {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let sql =
            "select 1; select ';' as a, \"x;y\" -- c;omment\n from t;\n\n/* a;b */ select 'it''s;'; ;  -- only;\n";
        assert_eq!(
            split_sql(sql),
            vec!["select 1", "select ';' as a, \"x;y\" -- c;omment\n from t", "/* a;b */ select 'it''s;'"]
        );
        assert_eq!(split_sql("select 'a\\';b'"), vec!["select 'a\\';b'"]);
        assert!(split_sql(" ; -- x\n ; /* y */").is_empty());
        assert_eq!(split_sql("select `a;b` from t"), vec!["select `a;b` from t"]);
    }
}
