//! Statement splitting for PostgreSQL: [`split_sql`] with dollar-quoted
//! strings (`$$ ... $$`, `$tag$ ... $tag$`, as in function bodies and `DO`
//! blocks) kept whole, since their `;`, quotes and comment markers are text.

use hangar_engineconn_plugin::code::split_sql;

/// Stands in for a dollar-quoted body while [`split_sql`] runs: private-use
/// characters, which SQL text does not contain.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Split `code` into statements.
pub fn split_statements(code: &str) -> Vec<String> {
    let (masked, bodies) = mask_dollar_quotes(code);
    if bodies.is_empty() {
        return split_sql(code);
    }
    split_sql(&masked)
        .into_iter()
        .map(|stmt| {
            let mut out = stmt;
            for (i, body) in bodies.iter().enumerate() {
                let token = placeholder(i);
                if out.contains(&token) {
                    out = out.replace(&token, body);
                }
            }
            out
        })
        .collect()
}

fn placeholder(i: usize) -> String {
    format!("{OPEN}{i}{CLOSE}")
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The tag of a dollar quote opening at `chars[i]` (`$`), with its length
/// including both `$`, if one opens there.
fn dollar_tag(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while let Some(&c) = chars.get(j) {
        if c == '$' {
            return Some(j - i + 1);
        }
        let ok = if j == i + 1 { c.is_alphabetic() || c == '_' } else { c.is_alphanumeric() || c == '_' };
        if !ok {
            return None;
        }
        j += 1;
    }
    None
}

/// `code` with the body of every dollar-quoted string replaced by a
/// placeholder, and the bodies. Quotes and comments are followed as
/// [`split_sql`] follows them, so a `$` inside them opens nothing.
fn mask_dollar_quotes(code: &str) -> (String, Vec<String>) {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut bodies = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\'' | '"' | '`' => {
                // Copy the quoted string as is.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    out.push(d);
                    i += 1;
                    if d == '\\' && i < chars.len() {
                        out.push(chars[i]);
                        i += 1;
                    } else if d == c {
                        if chars.get(i) == Some(&c) {
                            out.push(c);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            '-' if next == Some('-') => {
                while i < chars.len() && chars[i] != '\n' {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                out.push_str("/*");
                i += 2;
                while i < chars.len() {
                    if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        out.push_str("*/");
                        i += 2;
                        break;
                    }
                    out.push(chars[i]);
                    i += 1;
                }
            }
            '$' if i == 0 || !is_ident_char(chars[i - 1]) => {
                let Some(len) = dollar_tag(&chars, i) else {
                    out.push(c);
                    i += 1;
                    continue;
                };
                let tag = &chars[i..i + len];
                let start = i + len;
                let end = (start..chars.len()).find(|&k| chars[k..].starts_with(tag));
                match end {
                    Some(end) => {
                        out.extend(tag);
                        out.push_str(&placeholder(bodies.len()));
                        out.extend(tag);
                        bodies.push(chars[start..end].iter().collect());
                        i = end + len;
                    }
                    // Unterminated: left to the server to report.
                    None => {
                        out.extend(&chars[i..]);
                        i = chars.len();
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    (out, bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_quoted_bodies_stay_whole() {
        let code = "create function f() returns int language plpgsql as $$\n\
                    begin -- it's here; really\n  perform 1; return 2;\nend $$;\n\
                    do $body$ begin raise notice 'a;b'; end $body$;\n\
                    select $1, a$b$c, '$$;' as q; select 'x'";
        let stmts = split_statements(code);
        assert_eq!(
            stmts,
            vec![
                "create function f() returns int language plpgsql as $$\nbegin -- it's here; really\n  perform 1; return 2;\nend $$",
                "do $body$ begin raise notice 'a;b'; end $body$",
                "select $1, a$b$c, '$$;' as q",
                "select 'x'",
            ]
        );
        // Nested tags, and code without dollar quotes split as before.
        assert_eq!(
            split_statements("select $a$ $$;$$ $a$; select 2"),
            vec!["select $a$ $$;$$ $a$".to_string(), "select 2".to_string()]
        );
        let plain = "select 1; select ';' -- x;\n; /* $$; */ select 3";
        assert_eq!(split_statements(plain), split_sql(plain));
        // An unterminated dollar quote changes nothing; the server rejects it.
        assert_eq!(split_statements("select $$abc; select 1"), split_sql("select $$abc; select 1"));
    }
}
