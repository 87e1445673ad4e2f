//! Where a task connects to: the connection settings from the task's runtime
//! parameters or the engine's startup options, JDBC URLs turned into
//! `postgres://` URLs, and the redaction of passwords from anything shown.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

/// Runtime or startup parameter: the database URL (`jdbc:postgresql://host:port/db` or `postgres://...`).
pub const URL_KEY: &str = "jdbc.url";
/// Runtime or startup parameter: the user to connect as (overrides the URL's).
pub const USERNAME_KEY: &str = "jdbc.username";
/// Runtime or startup parameter: the password (overrides the URL's).
pub const PASSWORD_KEY: &str = "jdbc.password";
/// Runtime or startup parameter: a named data source defined in the startup options.
pub const DATASOURCE_KEY: &str = "jdbc.datasource";
/// Startup options `hangar.jdbc.datasource.<NAME>.url|username|password` define data source NAME.
pub const DATASOURCE_PREFIX: &str = "hangar.jdbc.datasource.";

/// Linkis's names for the same settings (`JDBCEngineConnConstant`), honoured too.
const LINKIS_URL_KEY: &str = "wds.linkis.jdbc.connect.url";
const LINKIS_USERNAME_KEY: &str = "wds.linkis.jdbc.username";
const LINKIS_PASSWORD_KEY: &str = "wds.linkis.jdbc.password";

/// What replaces a secret in anything shown.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets.
const SECRET_PARAMS: &[&str] = &["password", "pwd", "passwd", "sslpassword"];

/// One database to connect to, as resolved for a task.
#[derive(Clone)]
pub struct Target {
    /// `postgres://` URL; may hold credentials, never shown.
    url: String,
    username: Option<String>,
    password: Option<String>,
    /// The URL without its password, for messages and as the connection key.
    pub display: String,
    /// Where the settings came from, for messages.
    pub origin: String,
    /// JDBC URL parameters this engine does not understand and dropped.
    pub ignored: Vec<String>,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("display", &self.display)
            .field("username", &self.username)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn get<'a>(m: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| m.get(*k)).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A password is kept as given (spaces may be part of it); only an empty one counts as unset.
fn get_raw<'a>(m: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| m.get(*k)).map(String::as_str).filter(|v| !v.is_empty())
}

impl Target {
    /// The settings of a task: the first of the runtime `jdbc.datasource`, the
    /// runtime `jdbc.url` (with the runtime user and password), the startup
    /// `jdbc.datasource`, the startup `jdbc.url` (with the startup user and
    /// password). Credentials are never mixed between these sources, so a URL
    /// given at runtime never receives the startup password.
    pub fn resolve(runtime: &BTreeMap<String, String>, startup: &BTreeMap<String, String>) -> Result<Target, String> {
        for (props, level) in [(runtime, "runtime"), (startup, "startup")] {
            if let Some(name) = get(props, &[DATASOURCE_KEY]) {
                return Self::datasource(name, startup, level);
            }
            if let Some(url) = get(props, &[URL_KEY, LINKIS_URL_KEY]) {
                return Self::new(
                    url,
                    get(props, &[USERNAME_KEY, LINKIS_USERNAME_KEY]),
                    get_raw(props, &[PASSWORD_KEY, LINKIS_PASSWORD_KEY]),
                    format!("{level} parameter {URL_KEY}"),
                );
            }
        }
        Err(format!(
            "no database to connect to: set the runtime or startup parameter {URL_KEY} \
             (jdbc:postgresql://host:port/database or postgres://host:port/database, with {USERNAME_KEY} and \
             {PASSWORD_KEY}), or {DATASOURCE_KEY}=NAME with a data source defined in the engine's startup options"
        ))
    }

    fn datasource(name: &str, startup: &BTreeMap<String, String>, level: &str) -> Result<Target, String> {
        let key = |k: &str| format!("{DATASOURCE_PREFIX}{name}.{k}");
        let (url_key, user_key, pw_key) = (key("url"), key("username"), key("password"));
        let url = get(startup, &[&url_key]).ok_or_else(|| {
            format!(
                "data source '{name}' ({level} parameter {DATASOURCE_KEY}) is not defined: \
                 the engine's startup options have no {url_key}"
            )
        })?;
        Self::new(url, get(startup, &[&user_key]), get_raw(startup, &[&pw_key]), format!("data source '{name}'"))
    }

    /// Settings from a URL and optional credentials that override the URL's.
    pub fn new(url: &str, username: Option<&str>, password: Option<&str>, origin: String) -> Result<Target, String> {
        let mut secrets: Vec<String> = password.map(str::to_string).into_iter().collect();
        secrets.extend(url_secrets(url));
        let scrub = |s: String| scrub_secrets(&s, &secrets);
        let (pg_url, ignored) = to_postgres_url(url).map_err(|e| scrub(format!("{origin}: {e}")))?;
        let target = Target {
            display: scrub(redact_url(&pg_url)),
            url: pg_url,
            username: username.map(str::to_string),
            password: password.map(str::to_string),
            origin,
            ignored,
            secrets,
        };
        // A URL that cannot be parsed fails here, before any connection attempt.
        target.connect_options()?;
        Ok(target)
    }

    /// The connection options: the URL, then the explicit user and password.
    pub fn connect_options(&self) -> Result<PgConnectOptions, String> {
        let mut opts = PgConnectOptions::from_str(&self.url)
            .map_err(|e| self.scrub(&format!("{}: invalid URL {}: {e}", self.origin, self.display)))?;
        if let Some(u) = &self.username {
            opts = opts.username(u);
        }
        if let Some(p) = &self.password {
            opts = opts.password(p);
        }
        if opts.get_application_name().is_none() {
            opts = opts.application_name("hangar-jdbc");
        }
        Ok(opts.disable_statement_logging())
    }

    /// The user the connection logs in as.
    pub fn user(&self) -> String {
        match self.connect_options() {
            Ok(o) => o.get_username().to_string(),
            Err(_) => self.username.clone().unwrap_or_default(),
        }
    }

    /// Identifies the credentials without showing them: a cached connection is
    /// reused only by a task that gives the same URL and password.
    pub fn credentials_match(&self, other: &Target) -> bool {
        self.url == other.url && self.username == other.username && self.password == other.password
    }

    /// `msg` with every secret of these settings masked.
    pub fn scrub(&self, msg: &str) -> String {
        scrub_secrets(msg, &self.secrets)
    }
}

fn scrub_secrets(msg: &str, secrets: &[String]) -> String {
    let mut out = msg.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    match s.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => s.get(prefix.len()..),
        _ => None,
    }
}

/// A JDBC or libpq URL as a `postgres://` URL, with the JDBC parameters that
/// were dropped. `jdbc:postgresql://host:port/db?params`,
/// `jdbc:postgresql:db` (localhost), `postgres://` and `postgresql://` are
/// accepted; of several JDBC hosts the first is used.
pub fn to_postgres_url(url: &str) -> Result<(String, Vec<String>), String> {
    let s = url.trim();
    if let Some(rest) = strip_prefix_ci(s, "postgres://").or_else(|| strip_prefix_ci(s, "postgresql://")) {
        return Ok((format!("postgres://{rest}"), Vec::new()));
    }
    let Some(rest) = strip_prefix_ci(s, "jdbc:postgresql:") else {
        return Err(format!(
            "{URL_KEY} '{}' is not a PostgreSQL URL; this engine accepts jdbc:postgresql://host:port/database \
             and postgres://host:port/database",
            redact_url(s)
        ));
    };
    let rest = match rest.strip_prefix("//") {
        Some(r) => r.to_string(),
        // `jdbc:postgresql:database` and `jdbc:postgresql:/` mean the local server.
        None => format!("localhost/{}", rest.trim_start_matches('/')),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest.as_str(), None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => format!("{userinfo}@{}", first_host(hosts)),
        None => first_host(authority).to_string(),
    };
    let mut params = Vec::new();
    let mut ignored = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "user" | "password" | "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "application_name" | "options" => {
                params.push(pair.to_string())
            }
            "ApplicationName" => params.push(format!("application_name={v}")),
            "ssl" if v.eq_ignore_ascii_case("true") => params.push("sslmode=require".into()),
            "ssl" if v.eq_ignore_ascii_case("false") => params.push("sslmode=disable".into()),
            "currentSchema" if !v.is_empty() => params.push(format!("options=-c%20search_path%3D{v}")),
            _ => ignored.push(k.to_string()),
        }
    }
    let mut out = format!("postgres://{authority}{path}");
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    Ok((out, ignored))
}

fn first_host(hosts: &str) -> &str {
    hosts.split(',').next().unwrap_or(hosts)
}

/// `url` without its password: `scheme://user:***@host/db?password=***`.
pub fn redact_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}={MASK}"),
                    _ => pair.to_string(),
                })
                .collect();
            let mut t = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                t.push('#');
                t.push_str(f);
            }
            t
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

fn is_secret_param(k: &str) -> bool {
    SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(k))
}

/// The passwords written in a URL (user info and query), as written and decoded.
fn url_secrets(url: &str) -> Vec<String> {
    let mut raw = Vec::new();
    let rest = url.find("://").map(|i| &url[i + 3..]).unwrap_or(url);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some((userinfo, _)) = rest[..end].rsplit_once('@')
        && let Some((_, pw)) = userinfo.split_once(':')
    {
        raw.push(pw.to_string());
    }
    if let Some((_, query)) = url.split_once('?') {
        let query = query.split('#').next().unwrap_or(query);
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret_param(k)
            {
                raw.push(v.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for r in raw.into_iter().filter(|r| !r.is_empty()) {
        let decoded = percent_decode(&r);
        if decoded != r && !decoded.is_empty() {
            out.push(decoded);
        }
        out.push(r);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn jdbc_urls_become_postgres_urls() {
        let conv = |u: &str| to_postgres_url(u).expect("converts");
        assert_eq!(conv("jdbc:postgresql://db.example:5433/sales").0, "postgres://db.example:5433/sales");
        assert_eq!(conv("  JDBC:PostgreSQL://h/db  ").0, "postgres://h/db");
        assert_eq!(conv("jdbc:postgresql:sales").0, "postgres://localhost/sales");
        assert_eq!(conv("jdbc:postgresql:/").0, "postgres://localhost/");
        assert_eq!(conv("jdbc:postgresql://h1:5432,h2:5433/db").0, "postgres://h1:5432/db");
        assert_eq!(conv("jdbc:postgresql://[::1]:5432/db").0, "postgres://[::1]:5432/db");
        assert_eq!(conv("postgres://u:p@h:1/db?sslmode=disable").0, "postgres://u:p@h:1/db?sslmode=disable");
        assert_eq!(conv("postgresql://h/db").0, "postgres://h/db");
        let (url, ignored) = conv(
            "jdbc:postgresql://h/db?user=bob&password=s3&ssl=true&currentSchema=app&ApplicationName=x&connectTimeout=10&prepareThreshold=0",
        );
        assert_eq!(
            url,
            "postgres://h/db?user=bob&password=s3&sslmode=require&options=-c%20search_path%3Dapp&application_name=x"
        );
        assert_eq!(ignored, vec!["connectTimeout", "prepareThreshold"]);
        let err = to_postgres_url("jdbc:mysql://root:hunter2@h:3306/db").expect_err("not postgres");
        assert!(err.contains("jdbc.url") && err.contains("not a PostgreSQL URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        // Every converted URL parses.
        for u in ["jdbc:postgresql://h1:5432,h2:5433/db?ssl=false", "jdbc:postgresql:sales?currentSchema=a"] {
            assert!(PgConnectOptions::from_str(&conv(u).0).is_ok(), "{u}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://bob:s3cr:et@h:5432/db"), "postgres://bob:***@h:5432/db");
        assert_eq!(redact_url("postgres://bob:p@ss@h/db"), "postgres://bob:***@h/db");
        assert_eq!(redact_url("postgres://bob@h/db"), "postgres://bob@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("jdbc:postgresql://h/db?user=bob&Password=x1&ssl=true#frag"),
            "jdbc:postgresql://h/db?user=bob&Password=***&ssl=true#frag"
        );
        assert_eq!(redact_url("jdbc:postgresql:db?password=x1"), "jdbc:postgresql:db?password=***");

        let t = Target::new(
            "jdbc:postgresql://bob:url%40pw@h/db?password=qpw",
            Some("alice"),
            Some("secret-pw-123"),
            "runtime parameter jdbc.url".into(),
        )
        .expect("target");
        assert_eq!(t.display, "postgres://bob:***@h/db?password=***");
        for secret in ["secret-pw-123", "url@pw", "url%40pw", "qpw"] {
            let msg = t.scrub(&format!("failed with {secret} inside"));
            assert_eq!(msg, "failed with *** inside");
        }
        assert!(!format!("{t:?}").contains("secret-pw-123"));
        // An unparsable URL fails without showing its password.
        let err = Target::new("postgres://u:pw123@h:notaport/db", None, None, "x".into()).expect_err("bad port");
        assert!(!err.contains("pw123"), "{err}");
    }

    #[test]
    fn settings_come_from_one_source() {
        let runtime = map(&[("jdbc.url", "jdbc:postgresql://rt/db"), ("jdbc.username", "rt_user")]);
        let startup = map(&[
            ("jdbc.url", "postgres://st/db"),
            ("jdbc.username", "st_user"),
            ("jdbc.password", "st_pw"),
            ("hangar.jdbc.datasource.sales.url", "jdbc:postgresql://sales:5432/s"),
            ("hangar.jdbc.datasource.sales.username", "seller"),
            ("hangar.jdbc.datasource.sales.password", "ds_pw"),
        ]);
        let t = Target::resolve(&runtime, &startup).expect("runtime");
        assert_eq!((t.display.as_str(), t.user()), ("postgres://rt/db", "rt_user".to_string()));
        // The startup password is not sent to a URL given at runtime.
        assert_eq!(t.password, None);
        assert!(t.origin.contains("runtime"));

        let t = Target::resolve(&BTreeMap::new(), &startup).expect("startup");
        assert_eq!(
            (t.display.as_str(), t.user(), t.password.as_deref()),
            ("postgres://st/db", "st_user".into(), Some("st_pw"))
        );

        let t = Target::resolve(&map(&[("jdbc.datasource", "sales")]), &startup).expect("data source");
        assert_eq!(t.display, "postgres://sales:5432/s");
        assert_eq!((t.user(), t.password.as_deref()), ("seller".into(), Some("ds_pw")));
        assert_eq!(t.origin, "data source 'sales'");

        let linkis =
            map(&[("wds.linkis.jdbc.connect.url", "jdbc:postgresql://l/db"), ("wds.linkis.jdbc.username", "lu")]);
        assert_eq!(Target::resolve(&linkis, &BTreeMap::new()).expect("linkis keys").user(), "lu");

        let err = Target::resolve(&BTreeMap::new(), &BTreeMap::new()).expect_err("nothing");
        assert!(err.contains("jdbc.url"), "{err}");
        let err = Target::resolve(&map(&[("jdbc.datasource", "nope")]), &startup).expect_err("unknown");
        assert!(err.contains("'nope'") && err.contains("hangar.jdbc.datasource.nope.url"), "{err}");
    }
}
