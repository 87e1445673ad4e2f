//! `/metrics`: the Prometheus text exposition, and who may read it.
//!
//! On a server bound to loopback only it is open (local scrapers, the bench);
//! with `server.metrics_token` it needs `Authorization: Bearer <token>`;
//! otherwise (bound beyond loopback, no token) it needs an admin's
//! credentials, so it is never open to the network by default.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hangar_protocol::constant_time_eq;

use crate::Entrance;

/// Whether the request may read the metrics; the HTTP status and plain message otherwise.
async fn allowed(e: &Entrance, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let refuse = |status: StatusCode, msg: &str| Err((status, format!("{msg}\n")));
    if !e.cfg.metrics_token.is_empty() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, t)| t.trim());
        return match bearer {
            Some(t) if constant_time_eq(t.as_bytes(), e.cfg.metrics_token.as_bytes()) => Ok(()),
            Some(_) => refuse(StatusCode::UNAUTHORIZED, "/metrics: wrong bearer token"),
            None => refuse(StatusCode::UNAUTHORIZED, "/metrics needs Authorization: Bearer <server.metrics_token>"),
        };
    }
    if e.cfg.loopback_only {
        return Ok(());
    }
    match e.caller(headers).await {
        Ok(c) if c.admin => Ok(()),
        Ok(c) => refuse(
            StatusCode::FORBIDDEN,
            &format!("/metrics: user '{}' is not an admin; set server.metrics_token for scrapers", c.user),
        ),
        Err(err) if err.code == hangar_protocol::ErrorCode::Internal => {
            refuse(StatusCode::INTERNAL_SERVER_ERROR, &format!("/metrics: {}", err.message))
        }
        Err(err) => refuse(
            StatusCode::UNAUTHORIZED,
            &format!(
                "/metrics needs an admin's Token-Code/Token-User or session (or set server.metrics_token): {}",
                err.message
            ),
        ),
    }
}

/// Prometheus text exposition.
pub(crate) async fn metrics(State(e): State<Arc<Entrance>>, headers: HeaderMap) -> Response {
    if let Err((status, msg)) = allowed(&e, &headers).await {
        tracing::debug!(%status, "/metrics refused");
        return (status, [(header::WWW_AUTHENTICATE, "Bearer")], msg).into_response();
    }
    let m = &e.operator;
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(
        &mut out,
        "hangar_engine_asks_total",
        "Engine asks received by the manager.",
        m.stats.asks.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "hangar_engine_reuse_hits_total",
        "Asks served by reusing an engine.",
        m.stats.reuse_hits.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "hangar_engine_creations_total",
        "Engine creations started.",
        m.stats.creations.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "hangar_engine_creation_failures_total",
        "Engine creations that failed.",
        m.stats.creation_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "hangar_engines_lost_total",
        "Engines stopped for missed heartbeats or start deadlines, or written off with their host.",
        m.stats.engines_lost.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "hangar_ecms_lost_total",
        "ECM hosts written off after 3 missed heartbeats.",
        m.stats.ecms_lost.load(Ordering::Relaxed),
    );
    let pool = m.pool_snapshot();
    for (name, help, v) in [
        (
            "hangar_pool_hits_total",
            "Asks served by a pooled engine on its first use (found free or waited for).",
            pool.hits,
        ),
        ("hangar_pool_waits_total", "Of those, asks that waited for a pooled engine being created.", pool.waits),
        ("hangar_pool_creations_total", "Engines the warm pools created ahead of demand.", pool.creations),
        (
            "hangar_pool_creation_failures_total",
            "Pooled creations refused (owner's limit, no ECM room) or failed; each backs off.",
            pool.creation_failures,
        ),
        ("hangar_pool_releases_total", "Idle pooled engines given back when demand dropped.", pool.releases),
    ] {
        counter(&mut out, name, help, v);
    }
    for (name, help, v) in [
        ("hangar_pool_idle_engines", "Idle engines the warm pools hold.", pool.idle),
        ("hangar_pool_starting_engines", "Pooled engines being created.", pool.starting),
        ("hangar_pool_idle_memory_bytes", "Memory accounted to the idle pooled engines.", pool.idle_memory),
        (
            "hangar_pool_idle_rss_bytes",
            "RSS of the idle pooled engines (their last heartbeat).",
            pool.idle_rss_kb * 1024,
        ),
        ("hangar_pool_label_sets", "Label sets the pools track.", pool.label_sets),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for eng in m.list_engines() {
        *by.entry((eng.status.to_string(), eng.labels.get("engineType").unwrap_or("").to_string())).or_default() += 1;
    }
    let _ = writeln!(out, "# HELP hangar_engines Engines by status and engine type.\n# TYPE hangar_engines gauge");
    for ((status, et), n) in by {
        let _ = writeln!(out, "hangar_engines{{status=\"{status}\",engine_type=\"{et}\"}} {n}");
    }
    let h = m.start_histogram();
    let _ = writeln!(
        out,
        "# HELP hangar_engine_start_seconds Time from launch to ready.\n# TYPE hangar_engine_start_seconds histogram"
    );
    let mut cum = 0;
    for (le, n) in h.buckets {
        cum += n;
        let _ = writeln!(out, "hangar_engine_start_seconds_bucket{{le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(
        out,
        "hangar_engine_start_seconds_bucket{{le=\"+Inf\"}} {}\nhangar_engine_start_seconds_sum {}\nhangar_engine_start_seconds_count {}",
        h.count, h.sum_seconds, h.count
    );
    let _ = writeln!(
        out,
        "# HELP hangar_ecm_resource ECM resources by state (memory in bytes).\n# TYPE hangar_ecm_resource gauge"
    );
    for ecm in m.list_ecms() {
        for (state, r) in [("max", ecm.resource.max), ("used", ecm.resource.used), ("locked", ecm.resource.locked)] {
            for (kind, v) in [("memory", r.memory), ("cores", r.cores as u64), ("instances", r.instances as u64)] {
                let _ = writeln!(
                    out,
                    "hangar_ecm_resource{{ecm=\"{}\",state=\"{state}\",kind=\"{kind}\"}} {v}",
                    ecm.instance
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP hangar_ecm_material_fetches_total Materials an ECM fetched into its cache (refetch: the cached copy was corrupt).\n# TYPE hangar_ecm_material_fetches_total counter"
    );
    for ecm in m.list_ecms() {
        let Some(h) = ecm.health else { continue };
        let _ = writeln!(
            out,
            "hangar_ecm_material_fetches_total{{ecm=\"{0}\",kind=\"all\"}} {1}\nhangar_ecm_material_fetches_total{{ecm=\"{0}\",kind=\"refetch\"}} {2}",
            ecm.instance, h.material_fetches, h.material_refetches
        );
    }
    let (running, queued) = e.job_counts();
    let _ = writeln!(
        out,
        "# HELP hangar_jobs_live Jobs in this Entrance.\n# TYPE hangar_jobs_live gauge\nhangar_jobs_live{{state=\"queued\"}} {queued}\nhangar_jobs_live{{state=\"in_process\"}} {running}"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
