//! Cross-cutting behaviour, as two axum middlewares. `observe` wraps every
//! request: `ININ-Correlation-Id`, `--latency-ms`, response media type, and the
//! counters. `gate` wraps SCIM routes only, in the order Genesys's gateway
//! applies them: bearer token (401 platform body), per-client rate limit (429 with
//! `Retry-After` and `inin-ratelimit-*`), then `--error-rate` (500/503). Neither
//! touches the directory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::config::RetryAfterShape;
use super::errors::{CORRELATION_ID, Fault, JSON_MEDIA, SCIM_MEDIA};
use super::server::{App, Caller, lock, read};
use super::stats::ResourceKind;

/// `ININ-Correlation-Id` (genesys.md: on every response).
pub(crate) const CORRELATION_HEADER: HeaderName = HeaderName::from_static("inin-correlation-id");
const RL_COUNT: HeaderName = HeaderName::from_static("inin-ratelimit-count");
const RL_ALLOWED: HeaderName = HeaderName::from_static("inin-ratelimit-allowed");
const RL_RESET: HeaderName = HeaderName::from_static("inin-ratelimit-reset");

/// An issued token.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub client_id: Arc<str>,
    pub elevated: bool,
    pub expires_at: Instant,
}

/// One client's fixed rate-limit window. A fixed window (rather than governor's
/// GCRA) because Genesys reports exactly this: a count within a window, the
/// allowance, and seconds until the window resets.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    started: Instant,
    count: u32,
}

struct RateDecision {
    count: u32,
    allowed: u32,
    reset: Duration,
    limited: bool,
}

impl RateDecision {
    fn reset_secs(&self) -> u64 {
        // Round up: a client that waits the advertised seconds must find the
        // window reset.
        let ms = self.reset.as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
    }

    fn apply(&self, resp: &mut Response) {
        let h = resp.headers_mut();
        h.insert(RL_COUNT, HeaderValue::from(self.count));
        h.insert(RL_ALLOWED, HeaderValue::from(self.allowed));
        h.insert(RL_RESET, HeaderValue::from(self.reset_secs()));
    }
}

fn rate_check(app: &App, client: &str) -> Option<RateDecision> {
    let allowed = app.config.rate_limit_per_minute?.get();
    let window = app.config.rate_limit_window.max(Duration::from_millis(1));
    let now = Instant::now();
    let mut map = lock(&app.limiter);
    let w = map.entry(client.to_owned()).or_insert(Window {
        started: now,
        count: 0,
    });
    if now.duration_since(w.started) >= window {
        w.started = now;
        w.count = 0;
    }
    let reset = window.saturating_sub(now.duration_since(w.started));
    let limited = w.count >= allowed;
    if !limited {
        w.count += 1;
    }
    Some(RateDecision {
        count: w.count,
        allowed,
        reset,
        limited,
    })
}

fn too_many(app: &App, d: &RateDecision) -> Response {
    let secs = d.reset_secs();
    // httpdate cannot format dates past year 9999; a day is far enough to
    // express any wait a test needs.
    let date_secs = secs.min(86_400);
    let retry_after = match app.config.retry_after {
        RetryAfterShape::Seconds => Some(secs.to_string()),
        RetryAfterShape::HttpDate => Some(httpdate::fmt_http_date(
            SystemTime::now() + Duration::from_secs(date_secs),
        )),
        RetryAfterShape::PastDate => Some(httpdate::fmt_http_date(
            SystemTime::now() - Duration::from_secs(3600),
        )),
        RetryAfterShape::Missing => None,
        RetryAfterShape::Garbage => Some("soon-ish".to_owned()),
    };
    // Without Retry-After the body is the other documented 429 code, which names
    // the limit instead of a wait.
    let fault = if retry_after.is_some() {
        Fault::platform(
            StatusCode::TOO_MANY_REQUESTS,
            "too.many.requests.retry.after",
            format!("Rate limit exceeded the maximum. Retry the request in [{secs}] seconds"),
        )
    } else {
        Fault::platform(
            StatusCode::TOO_MANY_REQUESTS,
            "too.many.requests",
            format!(
                "Rate limit exceeded the maximum [{}] requests within [{}] seconds",
                d.allowed,
                app.config.rate_limit_window.as_secs()
            ),
        )
    };
    let mut resp = fault.into_response();
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(code: &'static str, message: &str) -> Response {
    let mut r = Fault::platform(StatusCode::UNAUTHORIZED, code, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Auth → rate limit → injected errors → handler, for SCIM routes.
pub(crate) async fn gate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let caller = match bearer(&req) {
        None => {
            return unauthorized(
                "authentication.required",
                "No authentication bearer token specified in authorization header.",
            );
        }
        Some(token) => match read(&app.tokens).get(token) {
            Some(g) if g.expires_at > Instant::now() => Caller {
                client_id: g.client_id.clone(),
                elevated: g.elevated,
            },
            _ => return unauthorized("bad.credentials", "Invalid login credentials."),
        },
    };
    let decision = rate_check(&app, &caller.client_id);
    let mut resp = match &decision {
        Some(d) if d.limited => {
            lock(&app.counters).snapshot.rate_limited += 1;
            too_many(&app, d)
        }
        _ if app.config.error_rate > 0.0
            && rand::random_bool(app.config.error_rate.clamp(0.0, 1.0)) =>
        {
            lock(&app.counters).snapshot.injected_errors += 1;
            if rand::random_bool(0.5) {
                Fault::platform(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal.server.error",
                    "The server encountered an unexpected condition which prevented it from fulfilling the request.",
                )
            } else {
                Fault::platform(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service.unavailable",
                    "Service Unavailable - The server is currently unavailable (because it is overloaded or down for maintenance).",
                )
            }
            .into_response()
        }
        _ => {
            req.extensions_mut().insert(caller.clone());
            next.run(req).await
        }
    };
    if let Some(d) = &decision {
        d.apply(&mut resp);
    }
    resp.extensions_mut().insert(caller);
    resp
}

/// Correlation id, latency, media type and counting, for every request.
pub(crate) async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    // A v4 UUID from the thread-local CSPRNG: no system call per request.
    let id = uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string();
    let path = req.uri().path();
    let control = path.starts_with("/_sim/");
    let kind = ResourceKind::of_path(path);
    let method = req.method().as_str().to_owned();
    // Answer application/json to a client that asks only for it; scim+json
    // otherwise (RFC 7644 §3.1).
    let json_only = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("application/scim+json"));
    if !control {
        let delay = app.config.draw_latency();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let mut resp = CORRELATION_ID.scope(id.clone(), next.run(req)).await;
    if json_only
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == SCIM_MEDIA)
    {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_MEDIA));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(CORRELATION_HEADER, v);
    }
    if !control {
        let client = resp
            .extensions()
            .get::<Caller>()
            .map(|c| c.client_id.clone());
        lock(&app.counters).record(&method, kind, resp.status().as_u16(), client.as_deref());
    }
    resp
}
