//! Whether the REST API is reachable beyond this host, and what that demands
//! of the configuration before the server binds.

use std::net::IpAddr;

use anyhow::bail;

use crate::config::Config;

/// Whether `bind` (an IP or a host name) may be reached from other hosts:
/// `0.0.0.0`, `::`, a non-loopback IP, or any host name but `localhost`.
pub fn beyond_loopback(bind: &str) -> bool {
    let host = bind.trim().trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => !ip.to_canonical().is_loopback(),
        Err(_) => {
            let h = host.trim_end_matches('.').to_ascii_lowercase();
            h != "localhost" && !h.ends_with(".localhost")
        }
    }
}

/// Refuse to serve the client API beyond loopback with the well-known default token.
pub fn check_client_token(cfg: &Config) -> anyhow::Result<()> {
    if beyond_loopback(&cfg.server.bind) && cfg.auth.token == hangar_cli::DEFAULT_TOKEN {
        bail!(
            "refusing to listen on {}: auth.token is still the default '{}', which anyone can send. \
             Set auth.token in the config file (or HANGAR_TOKEN / HANGAR_AUTH_TOKEN in the environment) \
             to a secret of your own, or bind to 127.0.0.1 (server.bind, --bind)",
            cfg.server.bind,
            hangar_cli::DEFAULT_TOKEN
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_beyond() {
        for b in
            ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "app.localhost", "::ffff:127.0.0.1"]
        {
            assert!(!beyond_loopback(b), "{b}");
        }
        for b in ["0.0.0.0", "::", "[::]", "10.0.0.5", "192.168.1.1", "fe80::1", "example.com", "myhost", ""] {
            assert!(beyond_loopback(b), "{b}");
        }
    }

    #[test]
    fn the_default_token_is_refused_beyond_loopback_only() {
        let mut cfg = Config::default();
        assert!(check_client_token(&cfg).is_ok(), "loopback with the default token is fine");
        cfg.server.bind = "0.0.0.0".into();
        let err = format!("{:#}", check_client_token(&cfg).expect_err("refused"));
        assert!(err.contains("auth.token") && err.contains("HANGAR_TOKEN"), "{err}");
        cfg.auth.token = "a-real-secret".into();
        assert!(check_client_token(&cfg).is_ok());
    }
}
