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
