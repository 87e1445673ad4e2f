//! Secrets: which keys and values hold them, how they are compared, and how
//! a password written inside a URL is masked before it is stored or shown.

use std::borrow::Cow;

/// What replaces a password in a masked URL.
pub const MASK: &str = "***";

/// Whether a configuration key holds a secret (passwords, tokens): such values
/// are never logged, stored in job history, written to disk or put on a command line.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "credential"].iter().any(|w| k.contains(w))
}

/// Whether a configuration entry must be treated as a secret: its key names a
/// secret ([`is_secret_key`]) or its value is a URL that carries a password
/// (`jdbc.url = postgresql://u:pw@host/db`, `...?password=pw`). Such entries go
/// to an engine only through its secret conf, never its command line or files.
pub fn is_secret_value(key: &str, value: &str) -> bool {
    is_secret_key(key) || has_url_credentials(value)
}

/// Whether `s` holds a URL with a password in its user info or its parameters.
pub fn has_url_credentials(s: &str) -> bool {
    matches!(mask_url_credentials(s), Cow::Owned(_))
}

/// `s` with the password of every URL in it replaced by `***`: the one in the
/// user info (`scheme://user:pw@host`) and the values of secret parameters
/// (`?password=`, `&pwd=`, `;passwd=`, `sslpassword=`, `...token=`). Text
/// without such a URL comes back borrowed and unchanged.
pub fn mask_url_credentials(s: &str) -> Cow<'_, str> {
    if !s.contains("://") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, after) = rest.split_at(i + 3);
        out.push_str(head);
        let end =
            after.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        let masked = mask_one(url);
        changed |= masked != url;
        out.push_str(&masked);
        rest = tail;
    }
    out.push_str(rest);
    if changed { Cow::Owned(out) } else { Cow::Borrowed(s) }
}

/// One URL after its `://`, up to the first blank.
fn mask_one(url: &str) -> String {
    let auth_end = url.find(['/', '?', '#', ';']).unwrap_or(url.len());
    let (authority, rest) = url.split_at(auth_end);
    let mut out = String::with_capacity(url.len());
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, pw)) if !pw.is_empty() => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
                out.push('@');
                out.push_str(host);
            }
            _ => out.push_str(authority),
        },
        None => out.push_str(authority),
    }
    // The path, then parameters after '?', '&' or ';' (JDBC drivers use both).
    let mut first = true;
    let mut pending = rest;
    loop {
        let (seg, delim, next) = match pending.find(['?', '&', ';', '#']) {
            Some(d) => (&pending[..d], Some(&pending[d..=d]), &pending[d + 1..]),
            None => (pending, None, ""),
        };
        match seg.split_once('=') {
            Some((k, v)) if !first && !v.is_empty() && secret_param(k) => {
                out.push_str(k);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(seg),
        }
        first = false;
        match delim {
            Some("#") => {
                out.push('#');
                out.push_str(next);
                return out;
            }
            Some(d) => out.push_str(d),
            None => return out,
        }
        pending = next;
    }
}

fn secret_param(k: &str) -> bool {
    is_secret_key(k) || k.eq_ignore_ascii_case("pwd")
}

/// Equality of two secrets in time independent of where they differ (only of
/// their lengths), so a wrong token does not tell how much of it was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys() {
        assert!(is_secret_key("jdbc.password"));
        assert!(is_secret_key("API_TOKEN"));
        assert!(!is_secret_key("jdbc.url"));
    }

    #[test]
    fn user_info_passwords_are_masked() {
        for (given, want) in [
            ("postgresql://u:s3cret@host/db", "postgresql://u:***@host/db"),
            ("postgres://bob:p@ss@h:5432/db", "postgres://bob:***@h:5432/db"),
            ("jdbc:postgresql://u:s3cret@host:5432/db?ssl=true", "jdbc:postgresql://u:***@host:5432/db?ssl=true"),
            ("mysql://root:pw@h", "mysql://root:***@h"),
            ("a postgresql://u:x@h/db and http://v:y@k/", "a postgresql://u:***@h/db and http://v:***@k/"),
        ] {
            assert_eq!(mask_url_credentials(given), want, "{given}");
            assert!(has_url_credentials(given), "{given}");
        }
    }

    #[test]
    fn parameter_passwords_are_masked() {
        for (given, want) in [
            ("jdbc:postgresql://host/db?user=u&password=s3cret", "jdbc:postgresql://host/db?user=u&password=***"),
            ("jdbc:mysql://h/db?PWD=x&useSSL=true", "jdbc:mysql://h/db?PWD=***&useSSL=true"),
            ("jdbc:sqlserver://h:1433;user=u;password=pw;db=x", "jdbc:sqlserver://h:1433;user=u;password=***;db=x"),
            ("postgres://h/db?sslpassword=k#frag", "postgres://h/db?sslpassword=***#frag"),
            ("https://h/api?access_token=abc&x=1", "https://h/api?access_token=***&x=1"),
        ] {
            assert_eq!(mask_url_credentials(given), want, "{given}");
            assert!(has_url_credentials(given), "{given}");
        }
    }

    #[test]
    fn urls_without_credentials_are_left_alone() {
        for s in [
            "jdbc:postgresql://host:5432/db?user=u&ssl=true",
            "postgresql://u@host/db",
            "postgresql://u:@host/db",
            "http://h/path/password=x",
            "password=x and no url",
            "user:pw@host without a scheme",
            "http://h/?password=",
            "postgresql://u:***@host/db?password=***",
            "",
        ] {
            assert!(matches!(mask_url_credentials(s), Cow::Borrowed(_)), "{s}");
            assert!(!has_url_credentials(s), "{s}");
        }
    }

    #[test]
    fn secret_values_by_key_or_url() {
        assert!(is_secret_value("jdbc.password", "x"));
        assert!(is_secret_value("jdbc.url", "postgresql://u:pw@h/db"));
        assert!(is_secret_value("hangar.jdbc.datasource.main.url", "jdbc:postgresql://h/db?password=pw"));
        assert!(!is_secret_value("jdbc.url", "jdbc:postgresql://h/db?user=u"));
        assert!(!is_secret_value("wds.linkis.rm.instance", "3"));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"HANGAR-LOCAL-AUTH", b"HANGAR-LOCAL-AUTH"));
        assert!(!constant_time_eq(b"HANGAR-LOCAL-AUTH", b"HANGAR-LOCAL-AUTh"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
