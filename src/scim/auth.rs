//! Bearer tokens for SCIM requests: the OAuth 2.0 client-credentials provider for
//! Genesys Cloud (RFC 6749 §4.4; genesys.md, "OAuth client credentials"), and the
//! static token of a generic SCIM service.
//!
//! One provider per OAuth client (primary, elevated) with its own cache. However
//! many workers ask at once, one token request is in flight (single flight: the
//! fetch runs under an async mutex that waiters queue on); a fetch that fails is
//! retried with backoff by its one fetcher and its error is shared with everyone
//! who queued behind it. Each token carries a generation number so that a 401
//! drops only the token that was rejected, never a newer one.
//!
//! This module never logs, formats or returns a token or a secret: tokens are
//! [`SecretString`]s, exposed only to set the `Authorization` header.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::Instrument as _;
use url::Url;

use super::error::AuthError;
use crate::config::OAuthClient;

/// An access token and what the cache knows about it.
pub struct Token {
    value: SecretString,
    generation: u64,
    fresh_until: Option<Instant>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("fresh_until", &self.fresh_until)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The cache generation this token belongs to (0 for a static token).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The token value, for the `Authorization: Bearer` header only.
    pub(crate) fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    fn is_fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_none_or(|until| now < until)
    }
}

/// How the token provider retries the login server.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// Attempts per fetch (first try included) for 5xx, 429, timeouts and
    /// connection errors. Default 4.
    pub attempts: usize,
    /// First backoff delay (jittered, doubling). Default 200 ms.
    pub min_backoff: Duration,
    /// Longest backoff delay. Default 5 s.
    pub max_backoff: Duration,
    /// Lifetime assumed when a token response has no `expires_in`: Genesys's
    /// shortest configurable lifetime, 300 s (a 401 corrects anything shorter).
    pub default_lifetime: Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            attempts: 4,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            default_lifetime: Duration::from_secs(300),
        }
    }
}

/// The longest safety margin taken off a token's lifetime, so a token is not
/// used in the last moments of its life (clock skew, long requests).
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// The client-credentials token provider of one OAuth client. Cheap to clone
/// (an `Arc` inside); clones share the cache.
#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<ProviderInner>,
}

struct ProviderInner {
    http: reqwest::Client,
    token_url: Url,
    client: OAuthClient,
    options: TokenOptions,
    state: Mutex<CacheState>,
    /// Completed fetches (success or failure), to tell a waiter whether a fetch
    /// finished while it queued.
    completed: AtomicU64,
    /// Token requests sent (every HTTP attempt), for tests and metrics.
    requests: AtomicU64,
}

#[derive(Default)]
struct CacheState {
    token: Option<Arc<Token>>,
    generation: u64,
    failure: Option<(u64, AuthError)>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.inner.token_url.as_str())
            .field("client_id", &self.inner.client.id)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// A provider that asks `POST {login_base}/oauth/token` with HTTP Basic
    /// authentication and the form body `grant_type=client_credentials`
    /// (genesys.md, "OAuth client credentials"). Errors when `login_base` cannot
    /// take a path.
    pub fn new(
        http: reqwest::Client,
        login_base: &Url,
        client: OAuthClient,
        options: TokenOptions,
    ) -> Result<Self, url::ParseError> {
        let mut base = login_base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let token_url = base.join("oauth/token")?;
        Ok(Self {
            inner: Arc::new(ProviderInner {
                http,
                token_url,
                client,
                options,
                state: Mutex::new(CacheState::default()),
                completed: AtomicU64::new(0),
                requests: AtomicU64::new(0),
            }),
        })
    }

    /// The OAuth client id (not a secret).
    pub fn client_id(&self) -> &str {
        &self.inner.client.id
    }

    /// Token requests sent so far (each HTTP attempt counts).
    pub fn requests_sent(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// A fresh token: the cached one, or one fetched now (single flight).
    /// Retries stop at `deadline`. Errors: [`AuthError::Rejected`] when the login
    /// server refuses the client, [`AuthError::Unavailable`] when it could not be
    /// reached in time (shared with every caller that waited on the same fetch),
    /// [`AuthError::BadResponse`] for an unusable answer.
    pub async fn token(&self, deadline: Instant) -> Result<Arc<Token>, AuthError> {
        let seen = self.inner.completed.load(Ordering::Acquire);
        let mut state = self.inner.state.lock().await;
        if let Some(token) = &state.token
            && token.is_fresh(Instant::now())
        {
            return Ok(Arc::clone(token));
        }
        if let Some((at, error)) = &state.failure
            && *at > seen
        {
            // The fetch we queued behind failed after its own retries: asking
            // again at once would only multiply the load on a failing server.
            return Err(error.clone());
        }
        let result = self.fetch(deadline).await;
        let done = self.inner.completed.fetch_add(1, Ordering::AcqRel) + 1;
        match result {
            Ok((value, lifetime)) => {
                state.generation += 1;
                let token = Arc::new(Token {
                    value,
                    generation: state.generation,
                    fresh_until: Some(fresh_until(Instant::now(), lifetime)),
                });
                state.token = Some(Arc::clone(&token));
                state.failure = None;
                Ok(token)
            }
            Err(error) => {
                state.token = None;
                state.failure = Some((done, error.clone()));
                Err(error)
            }
        }
    }

    /// Drops the cached token if it is the one of `generation` (the one a server
    /// just rejected with 401); a newer token is kept.
    pub async fn invalidate(&self, generation: u64) {
        let mut state = self.inner.state.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            state.token = None;
        }
    }

    async fn fetch(&self, deadline: Instant) -> Result<(SecretString, Duration), AuthError> {
        let o = &self.inner.options;
        let mut backoff = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(o.min_backoff)
            .with_max_delay(o.max_backoff)
            .with_max_times(o.attempts.saturating_sub(1))
            .build();
        loop {
            let reason = match self.fetch_once().await {
                Ok(done) => return Ok(done),
                Err(Attempt::Permanent(error)) => return Err(error),
                Err(Attempt::Transient(reason)) => reason,
            };
            let unavailable = || AuthError::Unavailable {
                client_id: self.inner.client.id.clone(),
                reason: reason.clone(),
            };
            let Some(delay) = backoff.next() else {
                return Err(unavailable());
            };
            if Instant::now() + delay > deadline {
                return Err(unavailable());
            }
            tracing::warn!(client_id = %self.inner.client.id, %reason, ?delay, "token request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn fetch_once(&self) -> Result<(SecretString, Duration), Attempt> {
        let inner = &self.inner;
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let span = crate::telemetry::token_request_span(&inner.client.id);
        let sent = inner
            .http
            .post(inner.token_url.clone())
            .basic_auth(&inner.client.id, Some(inner.client.secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("grant_type", "client_credentials")])
            .send()
            .instrument(span.clone())
            .await;
        crate::telemetry::finish_token_request(
            &span,
            sent.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let response = sent.map_err(|e| Attempt::Transient(describe_reqwest(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Attempt::Transient(describe_reqwest(&e)))?;
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(Attempt::Transient(format!(
                "HTTP {}: {}",
                status.as_u16(),
                oauth_error(&body, &inner.client)
            )));
        }
        if !status.is_success() {
            return Err(Attempt::Permanent(AuthError::Rejected {
                client_id: inner.client.id.clone(),
                status: status.as_u16(),
                error: oauth_error(&body, &inner.client),
            }));
        }
        let bad = |reason: &str| {
            Attempt::Permanent(AuthError::BadResponse {
                client_id: inner.client.id.clone(),
                reason: reason.to_owned(),
            })
        };
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| bad("not a JSON token response"))?;
        let token = parsed
            .access_token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| bad("no access_token"))?;
        let lifetime = match parsed.expires_in {
            None | Some(serde_json::Value::Null) => inner.options.default_lifetime,
            Some(v) => parse_expires_in(&v).ok_or_else(|| bad("expires_in is not a number"))?,
        };
        Ok((SecretString::from(token), lifetime))
    }
}

enum Attempt {
    Transient(String),
    Permanent(AuthError),
}

/// `expires_in` as a number of seconds, or a string holding one (some servers
/// quote it).
fn parse_expires_in(v: &serde_json::Value) -> Option<Duration> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// When a token obtained at `now` with `lifetime` stops being handed out: its
/// expiry minus a tenth of its lifetime, at most a minute.
fn fresh_until(now: Instant, lifetime: Duration) -> Instant {
    let margin = (lifetime / 10).min(MAX_MARGIN);
    now + lifetime.saturating_sub(margin)
}

fn oauth_error(body: &[u8], client: &OAuthClient) -> String {
    let detail = if let Ok(e) = serde_json::from_slice::<OAuthErrorBody>(body)
        && let Some(error) = e.error
    {
        match e.error_description {
            Some(d) => format!("{error}: {d}"),
            None => error,
        }
    } else {
        let text = String::from_utf8_lossy(body);
        let text: String = text.trim().chars().take(200).collect();
        if text.is_empty() {
            "no detail".into()
        } else {
            text
        }
    };
    redact_credentials(&detail, client)
}

/// A token endpoint (or a proxy in front of it) may echo the request back in
/// its error body; the secret, raw or in its Basic-auth form, must not reach an
/// error message or a log from there.
fn redact_credentials(text: &str, client: &OAuthClient) -> String {
    use base64::Engine as _;
    let secret = client.secret.expose_secret();
    if secret.is_empty() {
        return text.to_owned();
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", client.id));
    text.replace(&basic, "[redacted]")
        .replace(secret, "[redacted]")
}

/// A reqwest error described without its URL's query (reqwest's own `Display`
/// may include the URL; ours never carry secrets, but keep messages short).
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut deepest = None;
    while let Some(s) = source {
        deepest = Some(s.to_string());
        source = s.source();
    }
    match deepest {
        Some(d) => format!("{kind}: {d}"),
        None => kind.to_owned(),
    }
}

/// Where a SCIM request's bearer token comes from.
#[derive(Clone)]
pub(crate) enum TokenSource {
    /// An OAuth client-credentials client.
    OAuth(TokenProvider),
    /// A fixed token (`SCIM_BEARER_TOKEN`): a 401 is final, nothing to refetch.
    Static(Arc<Token>),
}

impl TokenSource {
    pub(crate) fn fixed(token: SecretString) -> Self {
        Self::Static(Arc::new(Token {
            value: token,
            generation: 0,
            fresh_until: None,
        }))
    }

    pub(crate) async fn token(&self, deadline: Instant) -> Result<Arc<Token>, AuthError> {
        match self {
            Self::OAuth(p) => p.token(deadline).await,
            Self::Static(t) => Ok(Arc::clone(t)),
        }
    }

    /// Drops the rejected token; true when a fresh one can be fetched.
    pub(crate) async fn invalidate(&self, generation: u64) -> bool {
        match self {
            Self::OAuth(p) => {
                p.invalidate(generation).await;
                true
            }
            Self::Static(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;

    #[derive(Clone)]
    struct Login {
        hits: Arc<AtomicU32>,
        fail: bool,
        delay: Duration,
        expires_in: u64,
    }

    async fn token_endpoint(
        State(login): State<Login>,
        headers: HeaderMap,
        body: String,
    ) -> axum::response::Response {
        let n = login.hits.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(login.delay).await;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // base64("primary:s3cret")
        if auth != "Basic cHJpbWFyeTpzM2NyZXQ=" || body != "grant_type=client_credentials" {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error":"invalid_client"})),
            )
                .into_response();
        }
        if login.fail {
            return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
        }
        axum::Json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "bearer",
            "expires_in": login.expires_in,
        }))
        .into_response()
    }

    async fn serve(login: Login) -> Url {
        let app = axum::Router::new()
            .route("/oauth/token", post(token_endpoint))
            .with_state(login);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    #[test]
    fn an_echoed_secret_is_redacted_from_the_error() {
        use base64::Engine as _;
        let client = OAuthClient {
            id: "primary".into(),
            secret: SecretString::from("s3cr3t-value".to_owned()),
        };
        let basic = base64::engine::general_purpose::STANDARD.encode("primary:s3cr3t-value");
        let body = format!("bad request: Authorization: Basic {basic} secret=s3cr3t-value");
        let text = oauth_error(body.as_bytes(), &client);
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(!text.contains(&basic), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        let json =
            br#"{"error":"invalid_client","error_description":"client s3cr3t-value unknown"}"#;
        assert_eq!(
            oauth_error(json, &client),
            "invalid_client: client [redacted] unknown"
        );
    }

    fn provider(base: &Url, secret: &str) -> TokenProvider {
        TokenProvider::new(
            reqwest::Client::new(),
            base,
            OAuthClient {
                id: "primary".into(),
                secret: SecretString::from(secret.to_owned()),
            },
            TokenOptions {
                attempts: 3,
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                ..TokenOptions::default()
            },
        )
        .unwrap()
    }

    fn login(fail: bool) -> Login {
        Login {
            hits: Arc::new(AtomicU32::new(0)),
            fail,
            delay: Duration::from_millis(50),
            expires_in: 3600,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn fifty_concurrent_callers_cause_one_token_request() {
        let l = login(false);
        let base = serve(l.clone()).await;
        let p = provider(&base, "s3cret");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.token(far()).await.map(|t| t.generation()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        assert_eq!(l.hits.load(Ordering::SeqCst), 1);
        assert_eq!(p.token(far()).await.unwrap().expose(), "tok-1");
    }

    #[tokio::test]
    async fn a_failed_fetch_is_shared_by_its_waiters() {
        let l = login(true);
        let base = serve(l.clone()).await;
        let p = provider(&base, "s3cret");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.token(far()).await })
            })
            .collect();
        for t in tasks {
            let err = t.await.unwrap().unwrap_err();
            assert!(err.is_transient(), "{err}");
        }
        // One fetch with its 3 attempts, not one fetch per waiter.
        assert_eq!(l.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_rejected_client_is_permanent_and_not_retried() {
        let l = login(false);
        let base = serve(l.clone()).await;
        let p = provider(&base, "wrong");
        let err = p.token(far()).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Rejected { status: 401, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("invalid_client"));
        assert!(!err.to_string().contains("wrong"), "secret leaked: {err}");
        assert_eq!(l.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidating_drops_only_the_rejected_generation() {
        let l = login(false);
        let base = serve(l.clone()).await;
        let p = provider(&base, "s3cret");
        let first = p.token(far()).await.unwrap();
        p.invalidate(first.generation()).await;
        let second = p.token(far()).await.unwrap();
        assert_eq!(second.generation(), 2);
        // A late 401 on the first token must not throw away the second.
        p.invalidate(first.generation()).await;
        assert_eq!(p.token(far()).await.unwrap().generation(), 2);
        assert_eq!(l.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_token_is_refetched() {
        let l = Login {
            expires_in: 1,
            delay: Duration::ZERO,
            ..login(false)
        };
        let base = serve(l.clone()).await;
        let p = provider(&base, "s3cret");
        assert_eq!(p.token(far()).await.unwrap().generation(), 1);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(p.token(far()).await.unwrap().generation(), 2);
    }

    #[test]
    fn lifetime_margin_is_a_tenth_capped_at_a_minute() {
        let now = Instant::now();
        assert_eq!(
            fresh_until(now, Duration::from_secs(86400)) - now,
            Duration::from_secs(86340)
        );
        assert_eq!(
            fresh_until(now, Duration::from_secs(300)) - now,
            Duration::from_secs(270)
        );
        assert_eq!(
            parse_expires_in(&serde_json::json!("60")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_expires_in(&serde_json::json!(-1)), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = Token {
            value: SecretString::from("very-secret-token"),
            generation: 0,
            fresh_until: None,
        };
        assert!(!format!("{token:?}").contains("very-secret"));
    }
}
