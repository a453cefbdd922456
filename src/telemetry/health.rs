//! The health port's router: `/healthz` (the process is up and serving) and
//! `/metrics` (the metrics facade in Prometheus text format), which
//! `deprovision serve` mounts on `HEALTH_ADDR`; and the probe that
//! `deprovision healthcheck` runs inside a container without curl. Readiness
//! (queues, database, token endpoint) belongs to `serve`, not here.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::metrics::{Metrics, metrics};

/// A failed health probe, naming the URL and why.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// No HTTP answer (refused, timed out, not HTTP).
    #[error("no answer from {url}: {source}")]
    Unreachable {
        /// The probed URL.
        url: String,
        /// The client's reason.
        source: reqwest::Error,
    },
    /// An answer other than 2xx.
    #[error("{url} answered {status}")]
    Unhealthy {
        /// The probed URL.
        url: String,
        /// The status received.
        status: u16,
    },
}

/// `GET /healthz` → 200 `ok`; `GET /metrics` → 200, [`metrics()`] in Prometheus
/// text format 0.0.4.
pub fn health_router() -> Router {
    health_router_with(metrics().clone())
}

/// [`health_router`] rendering the given metrics instead of the process-wide ones.
pub fn health_router_with(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn render(State(metrics): State<Metrics>) -> Response {
    match metrics.render_prometheus() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Asks `http://127.0.0.1:<port>/healthz` once, waiting at most `timeout`:
/// `Ok` on a 2xx answer. For the container health check (Dockerfile `HEALTHCHECK`,
/// ECS `healthCheck`), where the image has no shell or curl.
///
/// Errors: [`HealthError::Unreachable`] or [`HealthError::Unhealthy`].
pub async fn probe_health(port: u16, timeout: Duration) -> Result<(), HealthError> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let unreachable = |source| HealthError::Unreachable {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(HealthError::Unhealthy {
            url,
            status: response.status().as_u16(),
        })
    }
}
