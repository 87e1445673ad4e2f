//! Who is calling: `Token-Code` + `Token-User` headers (Linkis token auth).

use axum::http::HeaderMap;
use hangar_protocol::{ErrorCode, HangarError, constant_time_eq};

use crate::config::EntranceConfig;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
}

/// The session ticket in the request's cookies, if any.
pub fn session_ticket(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == crate::session::COOKIE && !v.is_empty()).then(|| v.to_string())
        })
}

/// The token headers, else a login session cookie. A request the token
/// headers authenticate never reaches the session store; a store failure
/// while checking a session is an internal error, never a pass.
pub(crate) async fn authenticate_with(
    cfg: &EntranceConfig,
    sessions: &crate::session::Sessions,
    headers: &HeaderMap,
) -> Result<Caller, HangarError> {
    let by_token = authenticate(cfg, headers);
    if by_token.is_ok() {
        return by_token;
    }
    if let Some(ticket) = session_ticket(headers)
        && let Some(user) = sessions.user(&ticket).await?
    {
        return Ok(Caller { admin: cfg.admins.contains(&user), user });
    }
    by_token
}

pub fn authenticate(cfg: &EntranceConfig, headers: &HeaderMap) -> Result<Caller, HangarError> {
    let header = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()))
    };
    let fail = |why: &str| HangarError::new(ErrorCode::Unauthenticated, format!("Token Authentication Failed: {why}"));
    let code = header(&["Token-Code", "token-code"])
        .ok_or_else(|| fail("no Token-Code header; send Token-Code and Token-User"))?;
    let user = header(&["Token-User", "token-user"]).ok_or_else(|| fail("no Token-User header"))?;
    if !valid_user_name(user) {
        return Err(fail("Token-User is not a valid user name"));
    }
    let token = cfg
        .tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), code.as_bytes()))
        .ok_or_else(|| fail("unknown token"))?;
    if !token.users.iter().any(|u| u == "*" || u == user) {
        return Err(fail(&format!("this token may not act as user '{user}'")));
    }
    Ok(Caller { user: user.to_string(), admin: cfg.admins.iter().any(|a| a == user) })
}

/// Users become path segments and label parts: keep them plain.
pub fn valid_user_name(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && !u.starts_with('.')
        && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderValue;
    use hangar_protocol::ErrorCode;

    use super::*;
    use crate::config::TokenConfig;

    fn cfg() -> EntranceConfig {
        EntranceConfig {
            instance: "127.0.0.1:1".into(),
            callback_url: String::new(),
            logs_dir: "/nonexistent".into(),
            results_dir: "/nonexistent".into(),
            max_running_per_group: 1,
            max_queued_per_group: 1,
            ask_timeout: Duration::from_secs(1),
            ask_retries: 0,
            max_code_bytes: 1,
            max_result_set_bytes: 1,
            tokens: vec![TokenConfig { token: "tok".into(), users: vec!["*".into()] }],
            admins: vec!["admin".into()],
            users: Vec::new(),
            session_timeout: Duration::from_secs(60),
            default_creator: "IDE".into(),
            reattach_timeout: Duration::from_secs(1),
            secure_cookie: false,
            metrics_token: String::new(),
            loopback_only: true,
            owner_id: "o".into(),
            job_lease: Duration::from_secs(1),
        }
    }

    /// With the store gone, token headers still authenticate (they never
    /// reach it) and a session cookie is an internal error naming the store.
    #[tokio::test]
    async fn tokens_skip_the_store_and_a_store_failure_is_an_internal_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            hangar_store::Store::open(&format!("sqlite://{}", dir.path().join("a.db").display())).await.expect("store");
        let sessions = crate::session::Sessions::new(store.clone(), Duration::from_secs(60));
        let ticket = sessions.open("alice").await.expect("open");
        let cookie = HeaderValue::from_str(&format!("{}={ticket}", crate::session::COOKIE)).expect("cookie");
        let mut with_cookie = HeaderMap::new();
        with_cookie.insert(axum::http::header::COOKIE, cookie);
        let c = authenticate_with(&cfg(), &sessions, &with_cookie).await.expect("session");
        assert_eq!((c.user.as_str(), c.admin), ("alice", false));
        store.close().await;

        let mut with_token = with_cookie.clone();
        with_token.insert("Token-Code", HeaderValue::from_static("tok"));
        with_token.insert("Token-User", HeaderValue::from_static("admin"));
        let c = authenticate_with(&cfg(), &sessions, &with_token).await.expect("token");
        assert_eq!((c.user.as_str(), c.admin), ("admin", true));

        let err = authenticate_with(&cfg(), &sessions, &with_cookie).await.expect_err("store closed");
        assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
        assert!(err.message.contains("session store"), "{}", err.message);
        // No cookie, no token: the token error, as before.
        let err = authenticate_with(&cfg(), &sessions, &HeaderMap::new()).await.expect_err("nothing");
        assert_eq!(err.code, ErrorCode::Unauthenticated);
    }
}
