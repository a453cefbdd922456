//! `/_sim/*`: the test harness's back door, not part of Genesys Cloud. Stats,
//! reset, token revocation (to test one refetch and one replay after a 401), and
//! lifting or adding `--denied` users at run time (to rehearse fixing a cause and
//! replaying). Unauthenticated by design: the simulator binds to loopback by
//! default and holds no real data. Not counted in the stats.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::errors::{Fault, JSON_MEDIA, json_response};
use super::server::{App, write};

/// `GET /_sim/stats`: [`SimStats`](super::SimStats) as JSON.
pub(crate) async fn stats(State(app): State<Arc<App>>) -> Response {
    match serde_json::to_value(app.stats()) {
        Ok(v) => json_response(StatusCode::OK, JSON_MEDIA, &v),
        Err(e) => Fault::platform(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal.server.error",
            format!("stats could not be serialised: {e}"),
        )
        .into_response(),
    }
}

/// `POST /_sim/reset`: seeded directory, zero counters; tokens stay valid.
pub(crate) async fn reset(State(app): State<Arc<App>>) -> Response {
    match app.reset() {
        Ok(()) => json_response(StatusCode::OK, JSON_MEDIA, &json!({ "reset": true })),
        Err(e) => Fault::platform(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal.server.error",
            e.to_string(),
        )
        .into_response(),
    }
}

/// `POST /_sim/revoke-tokens`: every issued token becomes invalid (401).
pub(crate) async fn revoke_tokens(State(app): State<Arc<App>>) -> Response {
    let mut t = write(&app.tokens);
    let n = t.len();
    t.clear();
    drop(t);
    json_response(StatusCode::OK, JSON_MEDIA, &json!({ "revoked": n }))
}

/// `POST /_sim/allow/{id}`: lifts `--denied` for that user.
pub(crate) async fn allow(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let was = write(&app.denied).remove(&id);
    json_response(
        StatusCode::OK,
        JSON_MEDIA,
        &json!({ "allowed": id, "wasDenied": was }),
    )
}

/// `POST /_sim/deny/{id}`: refuses every change to that user from now on.
pub(crate) async fn deny(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    write(&app.denied).insert(id.clone());
    json_response(StatusCode::OK, JSON_MEDIA, &json!({ "denied": id }))
}
