//! `POST /oauth/token`: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) as
//! Genesys Cloud's login host serves it (genesys.md, "OAuth client credentials"):
//! form-encoded body, client authentication by HTTP Basic (`client_secret_basic`)
//! or in the body (`client_secret_post`), an opaque random bearer token with
//! `expires_in`, and OAuth-style JSON errors (RFC 6749 §5.2). Issues tokens; never
//! checks them (the gate does).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde_json::json;

use super::errors::{JSON_MEDIA, json_response};
use super::server::{App, lock, write};
use super::switches::Grant;

fn oauth_error(status: StatusCode, error: &str, description: &str, basic: bool) -> Response {
    let mut r = json_response(
        status,
        JSON_MEDIA,
        &json!({ "error": error, "description": description, "error_description": description }),
    );
    if basic && status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"oauth\""),
        );
    }
    r
}

/// Decodes `Authorization: Basic base64(id:secret)`. Per RFC 6749 §2.3.1 both
/// halves are form-urlencoded first; SDKs rarely do, so the raw pair is returned
/// too and either may match.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<Vec<(String, String)>, ()>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
        return Some(Err(()));
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return Some(Err(()));
    };
    let Some((id, secret)) = text.split_once(':') else {
        return Some(Err(()));
    };
    let unform = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let mut pairs = vec![(id.to_owned(), secret.to_owned())];
    let decoded_pair = (unform(id), unform(secret));
    if decoded_pair != pairs[0] {
        pairs.push(decoded_pair);
    }
    Some(Ok(pairs))
}

/// The token endpoint.
pub(crate) async fn token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
            false,
        );
    }
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let basic = basic_credentials(&headers);
    let posted = match (field("client_id"), field("client_secret")) {
        (Some(id), Some(secret)) => Some((id.to_owned(), secret.to_owned())),
        _ => None,
    };
    let candidates: Vec<(String, String)> = match (basic, posted) {
        (Some(_), Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method, not both",
                true,
            );
        }
        (Some(Err(())), None) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "the Basic authorization header is malformed",
                true,
            );
        }
        (Some(Ok(pairs)), None) => pairs,
        (None, Some(pair)) => vec![pair],
        (None, None) => {
            record_refusal(&app, "");
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required",
                false,
            );
        }
    };
    let used_basic = headers.contains_key(header::AUTHORIZATION);
    match field("grant_type") {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
                used_basic,
            );
        }
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported for this client"),
                used_basic,
            );
        }
    }
    let client = candidates.iter().find_map(|(id, secret)| {
        app.config
            .clients
            .iter()
            .find(|c| &c.id == id && c.secret.expose_secret() == secret)
    });
    let Some(client) = client else {
        let id = candidates.first().map(|(id, _)| id.as_str()).unwrap_or("");
        record_refusal(&app, id);
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client not found or secret incorrect",
            used_basic,
        );
    };
    let token = hex::encode(rand::random::<[u8; 32]>());
    let lifetime = app.config.token_lifetime;
    write(&app.tokens).insert(
        token.clone(),
        Grant {
            client_id: Arc::from(client.id.as_str()),
            elevated: client.elevated,
            // A lifetime too long for the clock means "never expires" here.
            expires_at: Instant::now()
                .checked_add(lifetime)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(u64::from(u32::MAX))),
        },
    );
    *lock(&app.counters)
        .snapshot
        .token_grants
        .entry(client.id.clone())
        .or_default() += 1;
    let mut r = json_response(
        StatusCode::OK,
        JSON_MEDIA,
        &json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime.as_secs(),
        }),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r.into_response()
}

fn record_refusal(app: &App, client_id: &str) {
    *lock(&app.counters)
        .snapshot
        .token_refusals
        .entry(client_id.to_owned())
        .or_default() += 1;
}
