//! The address other hosts reach this server at (`server.advertise_host`).
//!
//! An ECM registers as `<host>:<port>` and its engines listen on and
//! advertise that host; the control plane gives engines its own URL to call
//! back. Nothing here assumes 127.0.0.1 unless the server binds there.

use std::net::{IpAddr, SocketAddr};

use crate::config::Config;

/// The host part other hosts use to reach this server.
pub async fn advertise_host(cfg: &Config, bound: &SocketAddr) -> anyhow::Result<String> {
    let configured = cfg.server.advertise_host.trim();
    if !configured.is_empty() {
        return Ok(bracketed(configured));
    }
    if !bound.ip().is_unspecified() {
        return Ok(host_of(bound.ip()));
    }
    // Bound to every interface: the one the manager is reached through, else
    // the first that is not loopback.
    // (Any of the control-plane URLs: the first one with a route.)
    if let Ok(urls) = hangar_protocol::endpoints::Endpoints::parse(&cfg.server.manager_url) {
        for url in urls.urls() {
            if let Some(ip) = route_to(url).await
                && !ip.is_loopback()
            {
                return Ok(host_of(ip));
            }
        }
    }
    Ok(first_interface().map_or_else(|| "127.0.0.1".to_string(), host_of))
}

fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn bracketed(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => host_of(ip),
        Err(_) => host.to_string(),
    }
}

/// The local address of the route to `url`'s host (no packet is sent).
async fn route_to(url: &str) -> Option<IpAddr> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.trim_matches(|c| c == '[' || c == ']').to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let target = tokio::net::lookup_host((host.as_str(), port)).await.ok()?.next()?;
    let any: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = tokio::net::UdpSocket::bind(any).await.ok()?;
    sock.connect(target).await.ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

/// The first IPv4 address of an interface that is up and not loopback.
fn first_interface() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .find(|ip| !ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn configured_then_bound_then_derived() {
        let mut cfg = Config::default();
        let bound: SocketAddr = "10.1.2.3:9001".parse().expect("addr");
        assert_eq!(advertise_host(&cfg, &bound).await.expect("host"), "10.1.2.3");
        cfg.server.advertise_host = "ecm-7.example".into();
        assert_eq!(advertise_host(&cfg, &bound).await.expect("host"), "ecm-7.example");
        cfg.server.advertise_host = "fd00::5".into();
        assert_eq!(advertise_host(&cfg, &bound).await.expect("host"), "[fd00::5]");
        cfg.server.advertise_host.clear();
        let any: SocketAddr = "0.0.0.0:9001".parse().expect("addr");
        cfg.server.manager_url = "http://127.0.0.1:9001".into();
        let derived = advertise_host(&cfg, &any).await.expect("host");
        assert!(!derived.is_empty() && derived != "0.0.0.0", "{derived}");
    }
}
