//! `POST /user/login` and `/user/logout`: password logins (credentials only in
//! the JSON body, the same PBKDF2 work for unknown users, backoff per user
//! name and per client address) and the session cookie.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hangar_protocol::{Envelope, ErrorCode, ErrorData, HangarError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Entrance;
use crate::api::method_of;
use crate::wire::Empty;
use crate::wire::jobs::{LoginData, LoginRequest};

/// Login answers carry no `method`, as Linkis's do.
fn refuse(uri: &Uri, http: StatusCode, err: &HangarError) -> Response {
    (http, Json(Envelope { method: None, ..Envelope::error(method_of(uri), err) })).into_response()
}

/// The backoff keys of an attempt: the user name, and the client address
/// (IPv6 by its /64, which one client usually holds whole).
fn throttle_keys(user: &str, peer: Option<SocketAddr>) -> Vec<String> {
    let mut keys = vec![format!("user:{user}")];
    if let Some(addr) = peer {
        let ip = match addr.ip().to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            v4 => v4.to_string(),
        };
        keys.push(format!("addr:{ip}"));
    }
    keys
}

fn cookie_attrs(secure: bool) -> &'static str {
    if secure { "; Secure" } else { "" }
}

pub(crate) fn routes(r: OpenApiRouter<Arc<Entrance>>) -> OpenApiRouter<Arc<Entrance>> {
    r.routes(routes!(login)).routes(routes!(logout))
}

/// Log in with a password; the answer sets the session cookie.
#[utoipa::path(post, path = "/api/rest_j/v1/user/login", tag = "user", request_body = LoginRequest, security(()),
    responses(
        (status = 200, description = "Logged in (`Set-Cookie` carries the session)", body = Envelope<LoginData>),
        (status = 400, description = "Credentials sent in the URL", body = Envelope<ErrorData>),
        (status = 401, description = "Wrong user name or password", body = Envelope<ErrorData>),
        (status = 429, description = "Too many failed logins; see `Retry-After`", body = Envelope<ErrorData>),
        (status = 500, description = "The session store failed", body = Envelope<ErrorData>),
    ))]
async fn login(
    State(e): State<Arc<Entrance>>,
    uri: Uri,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    // Query strings end up in access logs, proxies and browser history.
    let in_url = uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, _)| k.eq_ignore_ascii_case("userName") || k.eq_ignore_ascii_case("password"))
    });
    if in_url {
        let err = HangarError::invalid(
            "Login refused: userName and password are accepted only in the JSON request body, never in the URL",
        );
        return refuse(&uri, StatusCode::BAD_REQUEST, &err);
    }
    let LoginRequest { user_name: user, password } = match crate::wire::body(&body) {
        Ok(req) => req,
        Err(err) => {
            let hint = "send {\"userName\": \"...\", \"password\": \"...\"} as the JSON body";
            let err = HangarError::invalid(format!("{}; {hint}", err.message));
            return crate::api::error_reply(method_of(&uri), &err);
        }
    };
    let peer = peer.map(|Extension(ConnectInfo(a))| a);
    let keys = throttle_keys(&user, peer);
    if let Some(wait) = e.login_throttle.wait(&keys) {
        let secs = wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0)).max(1);
        tracing::warn!(%user, addr = ?peer, retry_in_s = secs, "login refused: too many failed attempts");
        let err = HangarError::new(
            ErrorCode::Unauthenticated,
            format!(
                "Login refused: too many failed logins for user '{user}' or from this address; try again in {secs} s"
            ),
        );
        let mut resp = refuse(&uri, StatusCode::TOO_MANY_REQUESTS, &err);
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    if let Some(ticket) = crate::auth::session_ticket(&headers) {
        let current = match e.sessions.user(&ticket).await {
            Ok(u) => u,
            Err(err) => return refuse(&uri, StatusCode::INTERNAL_SERVER_ERROR, &err),
        };
        if current.as_deref() == Some(user.as_str()) {
            let msg =
                format!("{user} already logged in, please log out before signing in(已经登录，请先退出再进行登录)！");
            return Json(Envelope { method: None, status: 0, message: msg, data: e.login_data(user) }).into_response();
        }
    }
    // PBKDF2 is deliberately slow: keep it off the async workers.
    let ok = {
        let (e, user) = (e.clone(), user.clone());
        tokio::task::spawn_blocking(move || crate::session::check_credentials(&e.cfg.users, &user, &password))
            .await
            .unwrap_or(false)
    };
    if !ok {
        e.login_throttle.failure(&keys);
        tracing::warn!(%user, addr = ?peer, "failed login");
        let err = HangarError::new(ErrorCode::Unauthenticated, "Login failed: wrong user name or password");
        return refuse(&uri, StatusCode::UNAUTHORIZED, &err);
    }
    e.login_throttle.success(&keys);
    let ticket = match e.sessions.open(&user).await {
        Ok(t) => t,
        Err(err) => {
            tracing::error!(%user, error = %err.message, "login: the session could not be stored");
            return refuse(&uri, StatusCode::INTERNAL_SERVER_ERROR, &err);
        }
    };
    let body =
        Envelope {
            method: None, status: 0, message: "login successful(登录成功)！".into(), data: e.login_data(user)
        };
    let cookie = format!(
        "{}={ticket}; Path=/; HttpOnly; SameSite=Lax{}",
        crate::session::COOKIE,
        cookie_attrs(e.cfg.secure_cookie)
    );
    ([(header::SET_COOKIE, cookie)], Json(body)).into_response()
}

impl Entrance {
    fn login_data(&self, user: String) -> LoginData {
        let timeout_ms = u64::try_from(self.sessions.timeout().as_millis()).unwrap_or(u64::MAX);
        LoginData {
            is_admin: self.cfg.admins.contains(&user),
            user_name: user,
            session_time_out: timeout_ms,
            enable_watermark: false,
        }
    }
}

/// End the caller's session, on every instance sharing the store.
///
/// When the store cannot end it, the answer says so and the cookie is kept.
#[utoipa::path(method(get, post), path = "/api/rest_j/v1/user/logout", tag = "user", security(()),
    responses(
        (status = 200, description = "Logged out (the cookie is cleared)", body = Envelope<Empty>),
        (status = 500, description = "The session store failed; the session stands", body = Envelope<ErrorData>),
    ))]
async fn logout(State(e): State<Arc<Entrance>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(t) = crate::auth::session_ticket(&headers)
        && let Err(err) = e.sessions.close(&t).await
    {
        return crate::api::error_reply(method_of(&uri), &err);
    }
    let cookie =
        format!("{}=; Path=/; Max-Age=0; HttpOnly{}", crate::session::COOKIE, cookie_attrs(e.cfg.secure_cookie));
    let body = Envelope::ok_msg(method_of(&uri), "Logout successful(退出登录成功)！", Empty {});
    ([(header::SET_COOKIE, cookie)], Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_user_and_the_address() {
        let v4: SocketAddr = "10.1.2.3:5555".parse().expect("addr");
        assert_eq!(throttle_keys("alice", Some(v4)), ["user:alice", "addr:10.1.2.3"]);
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().expect("addr");
        assert_eq!(throttle_keys("alice", Some(mapped))[1], "addr:10.1.2.3");
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().expect("addr");
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:1".parse().expect("addr");
        assert_eq!(throttle_keys("x", Some(a))[1], throttle_keys("x", Some(b))[1]);
        assert_eq!(throttle_keys("alice", None), ["user:alice"]);
    }
}
