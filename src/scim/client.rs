//! The SCIM 2.0 HTTP client (RFC 7644) for Genesys Cloud and any other SCIM
//! service: the few requests deprovisioning needs, each sent through the shared
//! rate limiter with a bearer token, and the per-request half of design.md's
//! error table — 401 (drop that token, refetch, replay once), 403 (switch this
//! termination to the elevated credential once), 429 (wait as told, pause every
//! worker), 5xx/timeouts/connection errors (bounded jittered backoff) — all
//! within the caller's deadline. What a response *means* for a person (404,
//! conflicts, identity) is the engine's decision, not this module's.
//!
//! A [`Session`] is one termination's view of the client: it holds the
//! credential in use (so escalation happens once per termination, not once per
//! request), the deadline, and the evidence (request count, status codes,
//! `ININ-Correlation-Id`s).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use url::Url;

use super::auth::{TokenOptions, TokenProvider, TokenSource, describe_reqwest};
use super::error::{ScimError, ServerDetail};
use super::filter;
use super::model::{ListResponse, Reference, ScimGroup, ScimUser};
use super::patch::{self, PatchOp, RemoveForm};
use super::retry::{RateHeaders, server_wait};
use crate::config::{ScimArgs, ScimTarget};
use crate::domain::{Credential, ExternalId, ScimUserId};
use crate::limit::{LimitError, RateLimiter};
use crate::telemetry::ScimResource;
use tracing::Instrument as _;

/// The SCIM media type (RFC 7644 §3.1); Genesys accepts it and `application/json`.
const SCIM_JSON: &str = "application/scim+json";
/// `ININ-Correlation-Id`: Genesys's request id, kept as evidence.
const CORRELATION_ID: &str = "inin-correlation-id";

/// Tuning of the client's timeouts and retry budgets.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per HTTP request (also clipped to the caller's deadline). Default 30 s.
    pub timeout: Duration,
    /// Attempts per request, first included, for 5xx, 408, timeouts and
    /// connection errors. Default 4.
    pub transient_attempts: u32,
    /// 429 responses accepted per request before giving up. Default 6.
    pub rate_limit_attempts: u32,
    /// First delay of the jittered exponential backoff. Default 250 ms.
    pub min_backoff: Duration,
    /// Longest backoff delay. Default 20 s.
    pub max_backoff: Duration,
    /// Shortest wait after a 429, whatever the server says (also the wait for a
    /// `Retry-After` date in the past). Default 1 s.
    pub rate_limit_floor: Duration,
    /// Largest response body read, bytes. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Page size of list queries; Genesys answers more than 25 with 429.
    /// Default 25.
    pub page_size: u32,
    /// The OAuth token provider's retry settings.
    pub token: TokenOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            transient_attempts: 4,
            rate_limit_attempts: 6,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(20),
            rate_limit_floor: Duration::from_secs(1),
            max_body_bytes: 8 * 1024 * 1024,
            page_size: 25,
            token: TokenOptions::default(),
        }
    }
}

impl ClientOptions {
    /// Defaults with the request timeout of `SCIM_TIMEOUT_SECS`.
    pub fn from_args(args: &ScimArgs) -> Self {
        Self {
            timeout: args.timeout(),
            ..Self::default()
        }
    }
}

/// Which resource names the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Genesys Cloud: lowercase `users`/`groups` under `/api/v2/scim/v2/`, and
    /// inactive users hidden from list queries unless asked for.
    Genesys,
    /// RFC 7644 naming (`Users`, `Groups`) under the configured base.
    Generic,
}

const FORM_UNKNOWN: u8 = 0;
const FORM_FILTER: u8 = 1;
const FORM_VALUE_ARRAY: u8 = 2;

/// The SCIM client. Cheap to clone (an `Arc` inside): clones share the HTTP
/// connection pool, the rate limiter and the token caches, so one client serves
/// every worker of a process.
#[derive(Clone)]
pub struct ScimClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    flavor: Flavor,
    users: Url,
    groups: Url,
    primary: TokenSource,
    primary_credential: Credential,
    elevated: Option<TokenSource>,
    limiter: RateLimiter,
    options: ClientOptions,
    /// The member-removal form this server last accepted.
    remove_form: AtomicU8,
}

impl std::fmt::Debug for ScimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScimClient")
            .field("users", &self.inner.users.as_str())
            .field("groups", &self.inner.groups.as_str())
            .field("elevated", &self.inner.elevated.is_some())
            .finish_non_exhaustive()
    }
}

/// A PATCH answer: its status and, for a 200 with a body, the resource.
#[derive(Debug, Clone)]
pub struct Patched<T> {
    /// 200 or 204 (any 2xx).
    pub status: u16,
    /// The resource as the server returned it; `None` for 204 or an empty body.
    pub resource: Option<T>,
}

/// What one termination's requests left as evidence.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// SCIM HTTP requests sent (token requests excluded).
    pub requests: u32,
    /// `ININ-Correlation-Id` of every response that had one, in order.
    pub correlation_ids: Vec<String>,
    /// The status of the last response received.
    pub last_status: Option<u16>,
}

fn url_with_dir(base: &Url) -> Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base
}

impl ScimClient {
    /// Builds the client for `target`: a Genesys Cloud org (OAuth client
    /// credentials against `login_base`, SCIM under
    /// `{api_base}/api/v2/scim/v2/users|groups`), or any SCIM 2.0 service with a
    /// static bearer token (`{base}Users`, `{base}Groups`, RFC 7644 §3.2). Every
    /// request of every clone goes through `limiter`. Errors:
    /// [`ScimError::Config`] when a URL cannot be built or the TLS stack cannot
    /// start.
    pub fn new(
        target: &ScimTarget,
        limiter: RateLimiter,
        options: ClientOptions,
    ) -> Result<Self, ScimError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("deprovision/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ScimError::Config(format!("HTTP client: {}", describe_reqwest(&e))))?;
        let config = |what: &str, e: url::ParseError| ScimError::Config(format!("{what}: {e}"));
        let (flavor, users, groups, primary, primary_credential, elevated) = match target {
            ScimTarget::Genesys {
                api_base,
                login_base,
                primary,
                elevated,
            } => {
                let scim = url_with_dir(api_base)
                    .join("api/v2/scim/v2/")
                    .map_err(|e| config("GENESYS_API_URL", e))?;
                let provider = |client: &crate::config::OAuthClient| {
                    TokenProvider::new(
                        http.clone(),
                        login_base,
                        client.clone(),
                        options.token.clone(),
                    )
                    .map(TokenSource::OAuth)
                    .map_err(|e| config("GENESYS_LOGIN_URL", e))
                };
                (
                    Flavor::Genesys,
                    scim.join("users").map_err(|e| config("users", e))?,
                    scim.join("groups").map_err(|e| config("groups", e))?,
                    provider(primary)?,
                    Credential::Primary,
                    elevated.as_ref().map(provider).transpose()?,
                )
            }
            ScimTarget::Static { base, token } => {
                let base = url_with_dir(base);
                (
                    Flavor::Generic,
                    base.join("Users").map_err(|e| config("SCIM_BASE_URL", e))?,
                    base.join("Groups")
                        .map_err(|e| config("SCIM_BASE_URL", e))?,
                    TokenSource::fixed(token.clone()),
                    Credential::Static,
                    None,
                )
            }
        };
        for url in [&users, &groups] {
            if url.cannot_be_a_base() {
                return Err(ScimError::Config(format!("{url} cannot take a path")));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                flavor,
                users,
                groups,
                primary,
                primary_credential,
                elevated,
                limiter,
                options,
                remove_form: AtomicU8::new(FORM_UNKNOWN),
            }),
        })
    }

    /// Starts one termination's session with the primary (or static) credential.
    /// No request of the session is sent or retried past `deadline`.
    pub fn session(&self, deadline: Instant) -> Session<'_> {
        Session {
            client: self,
            credential: self.inner.primary_credential,
            deadline,
            evidence: Evidence::default(),
        }
    }

    /// Gets the primary credential's token now (it is cached for the
    /// terminations that follow), so that a command can refuse to start on
    /// credentials the login server refuses instead of failing every
    /// termination. A static bearer token is not checked. Errors: the
    /// [`crate::scim::AuthError`] of the token request.
    pub async fn login(&self, deadline: Instant) -> Result<(), crate::scim::AuthError> {
        self.inner.primary.token(deadline).await.map(|_| ())
    }

    /// The shared rate limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// True when an elevated OAuth client is configured.
    pub fn has_elevated(&self) -> bool {
        self.inner.elevated.is_some()
    }

    /// True for a Genesys Cloud target (OAuth, lowercase resources).
    pub fn is_genesys(&self) -> bool {
        self.inner.flavor == Flavor::Genesys
    }

    fn resource_name(&self, url: &Url) -> String {
        url.path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default()
            .to_owned()
    }

    /// The resource and route template of a request URL, for spans and metrics:
    /// `/Users`, `/Users/{id}`, `/Groups` or `/Groups/{id}` (RFC 7644 §3.2
    /// names, whatever the server's case), never the ids or the filter.
    fn route(&self, url: &Url) -> (ScimResource, &'static str) {
        let users = self.inner.users.path();
        let with_id = |base: &str| url.path().len() > base.trim_end_matches('/').len();
        if url.path().starts_with(users) {
            let route = if with_id(users) {
                "/Users/{id}"
            } else {
                "/Users"
            };
            (ScimResource::Users, route)
        } else {
            let groups = self.inner.groups.path();
            let route = if with_id(groups) {
                "/Groups/{id}"
            } else {
                "/Groups"
            };
            (ScimResource::Groups, route)
        }
    }

    fn remove_form(&self) -> RemoveForm {
        match self.inner.remove_form.load(Ordering::Relaxed) {
            FORM_VALUE_ARRAY => RemoveForm::ValueArray,
            _ => RemoveForm::Filter,
        }
    }

    fn remember_form(&self, form: RemoveForm) {
        let v = match form {
            RemoveForm::Filter => FORM_FILTER,
            RemoveForm::ValueArray => FORM_VALUE_ARRAY,
        };
        self.inner.remove_form.store(v, Ordering::Relaxed);
    }
}

/// `base/segment`, the segment percent-encoded as one path segment. The value
/// was checked by [`check_segment`] or [`ScimUserId::parse`] first.
fn resource_url(base: &Url, segment: &str) -> Result<Url, ScimError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| ScimError::Config(format!("{base} cannot take a path")))?
        .push(segment);
    Ok(url)
}

/// Refuses a server-supplied id (e.g. a group id) that cannot travel as one
/// path segment, with the same rules as [`ScimUserId::parse`].
fn check_segment(what: &'static str, value: &str) -> Result<(), ScimError> {
    ScimUserId::parse(value)
        .map(|_| ())
        .map_err(|e| ScimError::InvalidId {
            what,
            value: value.to_owned(),
            reason: match e {
                crate::domain::DomainError::UserId { reason, .. } => reason.to_owned(),
                other => other.to_string(),
            },
        })
}

/// One request's shape, replayable.
struct Call<'a> {
    op: String,
    method: Method,
    url: Url,
    body: Option<&'a PatchOp>,
    if_match: Option<&'a str>,
}

struct Reply {
    status: u16,
    body: Bytes,
}

/// One termination's use of the client: credential, deadline and evidence.
/// Not shared between terminations.
pub struct Session<'c> {
    client: &'c ScimClient,
    credential: Credential,
    deadline: Instant,
    evidence: Evidence,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("credential", &self.credential)
            .field("evidence", &self.evidence)
            .finish_non_exhaustive()
    }
}

fn backoff(min: Duration, max: Duration, times: u32) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_max_times(times as usize)
        .build()
}

impl Session<'_> {
    /// The credential the session uses now.
    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// The evidence gathered so far.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Switches to the elevated credential if there is one and it is not in use
    /// yet. True when it switched.
    fn escalate(&mut self) -> bool {
        if self.credential == Credential::Primary && self.client.inner.elevated.is_some() {
            self.credential = Credential::Elevated;
            true
        } else {
            false
        }
    }

    fn source(&self) -> &TokenSource {
        match (self.credential, &self.client.inner.elevated) {
            (Credential::Elevated, Some(elevated)) => elevated,
            _ => &self.client.inner.primary,
        }
    }

    /// Sends `call` until it gets an answer that is this module's to give back:
    /// any 2xx, or an error. Handles 401, 403, 429, 5xx and transport errors as
    /// the module doc says.
    async fn send(&mut self, call: &Call<'_>) -> Result<Reply, ScimError> {
        let o = &self.client.inner.options;
        let limiter = &self.client.inner.limiter;
        let mut transient = backoff(
            o.min_backoff,
            o.max_backoff,
            o.transient_attempts.saturating_sub(1),
        );
        let mut unhinted_429 = backoff(o.rate_limit_floor, o.max_backoff, u32::MAX);
        let mut attempts = 0u32;
        let mut rate_limited = 0u32;
        let mut replayed_401 = false;
        let deadline_error = |retry_after| ScimError::Deadline {
            op: call.op.clone(),
            retry_after,
        };
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(deadline_error(None));
            }
            limiter.acquire(self.deadline).await.map_err(|e| match e {
                LimitError::PausedPastDeadline { wait } => deadline_error(Some(wait)),
                LimitError::BudgetPastDeadline => deadline_error(None),
            })?;
            // Waiting behind another worker's token fetch must not outlast this
            // termination's deadline either.
            let token = tokio::time::timeout_at(self.deadline, self.source().token(self.deadline))
                .await
                .map_err(|_| deadline_error(None))?
                .map_err(|source| ScimError::Auth {
                    op: call.op.clone(),
                    source,
                })?;
            attempts += 1;
            self.evidence.requests += 1;
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            let mut request = self
                .client
                .inner
                .http
                .request(call.method.clone(), call.url.clone())
                .bearer_auth(token.expose())
                .header(ACCEPT, format!("{SCIM_JSON}, application/json"))
                .timeout(o.timeout.min(remaining).max(Duration::from_millis(1)));
            if let Some(body) = call.body {
                let bytes = serde_json::to_vec(body).map_err(|e| ScimError::Decode {
                    op: call.op.clone(),
                    status: 0,
                    reason: format!("cannot serialise the PATCH body: {e}"),
                })?;
                request = request.header(CONTENT_TYPE, SCIM_JSON).body(bytes);
            }
            if let Some(version) = call.if_match {
                request = request.header(IF_MATCH, version);
            }
            let (resource, route) = self.client.route(&call.url);
            let span =
                crate::telemetry::scim_request_span(&call.method, route, self.credential, attempts);
            let sent = Instant::now();
            let outcome = async {
                tracing::debug!(op = %call.op, credential = self.credential.as_str(), attempt = attempts, "SCIM request");
                match request.send().await {
                    Ok(response) => self.receive(response, o.max_body_bytes).await,
                    Err(e) => Err(describe_reqwest(&e)),
                }
            }
            .instrument(span.clone())
            .await;
            let (answered, correlation_id) = match &outcome {
                Ok((status, headers, _)) => (
                    Some(status.as_u16()),
                    headers.get(CORRELATION_ID).and_then(|v| v.to_str().ok()),
                ),
                Err(_) => (None, None),
            };
            crate::telemetry::finish_scim_request(
                &span,
                &call.method,
                resource,
                self.credential,
                answered,
                correlation_id,
                sent.elapsed(),
            );
            let (status, headers, body) = match outcome {
                Ok(parts) => parts,
                Err(reason) => {
                    self.evidence.last_status = None;
                    self.wait_transient(call, &mut transient, attempts, None, reason, None)
                        .await?;
                    continue;
                }
            };
            let rate = RateHeaders::parse(&headers);
            match status.as_u16() {
                200..=299 => {
                    if rate.any() {
                        limiter.observe(rate.allowed, rate.count, rate.reset);
                    } else {
                        limiter.on_success();
                    }
                    return Ok(Reply {
                        status: status.as_u16(),
                        body,
                    });
                }
                401 => {
                    let detail = ServerDetail::parse(&body);
                    if !replayed_401 && self.source().invalidate(token.generation()).await {
                        replayed_401 = true;
                        tracing::warn!(op = %call.op, credential = self.credential.as_str(), %detail, "token rejected (401); refetching once");
                        continue;
                    }
                    return Err(ScimError::Unauthorized {
                        op: call.op.clone(),
                        credential: self.credential,
                        detail,
                    });
                }
                403 => {
                    let detail = ServerDetail::parse(&body);
                    let refused = self.credential;
                    if self.escalate() {
                        tracing::warn!(op = %call.op, %detail, "primary credential refused (403); switching this termination to the elevated credential");
                        // The elevated client has its own token, which a 401
                        // may refresh once more.
                        replayed_401 = false;
                        continue;
                    }
                    return Err(ScimError::Forbidden {
                        op: call.op.clone(),
                        credential: refused,
                        detail,
                    });
                }
                429 => {
                    rate_limited += 1;
                    let told = server_wait(&headers, SystemTime::now(), o.rate_limit_floor);
                    let wait = told
                        .or_else(|| unhinted_429.next())
                        .unwrap_or(o.max_backoff);
                    // Everyone holds off, not only this worker.
                    limiter.on_rate_limited(wait);
                    let give_up = rate_limited >= o.rate_limit_attempts
                        || Instant::now() + wait > self.deadline;
                    tracing::warn!(op = %call.op, ?wait, told = told.is_some(), rate_limited, give_up, "rate limited (429)");
                    if give_up {
                        return Err(ScimError::RateLimited {
                            op: call.op.clone(),
                            attempts: rate_limited,
                            retry_after: Some(wait),
                        });
                    }
                    // `acquire` at the top of the loop waits out the pause.
                }
                408 | 500..=599 => {
                    let detail = ServerDetail::parse(&body);
                    let told = server_wait(&headers, SystemTime::now(), Duration::ZERO);
                    self.wait_transient(
                        call,
                        &mut transient,
                        attempts,
                        Some(status.as_u16()),
                        format!("HTTP {}: {detail}", status.as_u16()),
                        told,
                    )
                    .await?;
                }
                other => {
                    if rate.any() {
                        limiter.observe(rate.allowed, rate.count, rate.reset);
                    }
                    return Err(ScimError::Status {
                        op: call.op.clone(),
                        status: other,
                        detail: ServerDetail::parse(&body),
                    });
                }
            }
        }
    }

    /// Reads a response: records its status and correlation id, and reads the
    /// body up to `max` bytes. Errors (as a reason) when the body fails midway.
    async fn receive(
        &mut self,
        mut response: reqwest::Response,
        max: usize,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let status = response.status();
        self.evidence.last_status = Some(status.as_u16());
        let headers = std::mem::take(response.headers_mut());
        if let Some(id) = headers.get(CORRELATION_ID).and_then(|v| v.to_str().ok()) {
            self.evidence.correlation_ids.push(id.to_owned());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max {
                        // A SCIM answer this large is not one we asked for; keep
                        // the start for the error detail.
                        body.extend_from_slice(&chunk[..max.saturating_sub(body.len())]);
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(describe_reqwest(&e)),
            }
        }
        Ok((status, headers, Bytes::from(body)))
    }

    /// Sleeps the next transient backoff delay (or the server's `told` wait),
    /// or errors when the budget or the deadline is spent.
    async fn wait_transient(
        &self,
        call: &Call<'_>,
        backoff: &mut impl Iterator<Item = Duration>,
        attempts: u32,
        status: Option<u16>,
        reason: String,
        told: Option<Duration>,
    ) -> Result<(), ScimError> {
        let give_up = |retry_after| ScimError::Transient {
            op: call.op.clone(),
            attempts,
            status,
            reason: reason.clone(),
            retry_after,
        };
        let Some(delay) = backoff.next() else {
            return Err(give_up(told));
        };
        let delay = told.unwrap_or(delay);
        if Instant::now() + delay > self.deadline {
            return Err(give_up(Some(delay)));
        }
        tracing::warn!(op = %call.op, attempts, ?status, %reason, ?delay, "transient SCIM failure; backing off");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, op: &str, reply: &Reply) -> Result<T, ScimError> {
        serde_json::from_slice(&reply.body).map_err(|e| ScimError::Decode {
            op: op.to_owned(),
            status: reply.status,
            reason: e.to_string(),
        })
    }

    /// `GET Users/{id}` (RFC 7644 §3.4.1; Genesys getScimV2User). `Ok(None)` on
    /// 404. The id travels as one percent-encoded path segment.
    pub async fn get_user(&mut self, id: &ScimUserId) -> Result<Option<ScimUser>, ScimError> {
        let base = self.client.inner.users.clone();
        self.get_resource(&base, id.as_str(), None, "user", |u: &ScimUser| &u.id)
            .await
    }

    /// `GET {base}/{id}[?query]`: the resource, `Ok(None)` on 404. Errors: a
    /// reply for another id ([`ScimError::Decode`], naming it as a `kind`), and
    /// the request's own errors.
    async fn get_resource<T: DeserializeOwned>(
        &mut self,
        base: &Url,
        id: &str,
        query: Option<&str>,
        kind: &str,
        id_of: fn(&T) -> &String,
    ) -> Result<Option<T>, ScimError> {
        let mut url = resource_url(base, id)?;
        url.set_query(query);
        let call = Call {
            op: format!("GET {}/{id}", self.client.resource_name(base)),
            method: Method::GET,
            url,
            body: None,
            if_match: None,
        };
        match self.send(&call).await {
            Ok(reply) => {
                let resource: T = self.decode(&call.op, &reply)?;
                if id_of(&resource) != id {
                    return Err(ScimError::Decode {
                        op: call.op,
                        status: reply.status,
                        reason: format!("the server answered with {kind} {:?}", id_of(&resource)),
                    });
                }
                Ok(Some(resource))
            }
            Err(ScimError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list<T: DeserializeOwned>(
        &mut self,
        base: &Url,
        filter_expr: &str,
        start_index: u64,
        attributes: Option<&str>,
    ) -> Result<ListResponse<T>, ScimError> {
        let page = self.client.inner.options.page_size;
        let mut url = base.clone();
        let mut query = format!(
            "filter={}&startIndex={start_index}&count={page}",
            filter::encode(filter_expr)
        );
        if let Some(a) = attributes {
            query.push_str(&format!("&attributes={}", filter::encode(a)));
        }
        url.set_query(Some(&query));
        let call = Call {
            op: format!(
                "GET {}?filter={filter_expr}",
                self.client.resource_name(base)
            ),
            method: Method::GET,
            url,
            body: None,
            if_match: None,
        };
        let reply = self.send(&call).await?;
        self.decode(&call.op, &reply)
    }

    /// Every user whose `externalId` the server matches with `value` (RFC 7644
    /// §3.4.2.2 filter `externalId eq "…"`). On Genesys the same filter is asked
    /// again with `and active eq false`, because its user lists leave inactive
    /// users out unless the filter asks for them (genesys.md, "SCIM resources"):
    /// an inactive match must be found (already inactive, not "not found"), and
    /// an active and an inactive user sharing one externalId are two matches.
    /// One page per query: more than one match is already ambiguous. Users are
    /// returned as the server matched them; the caller compares exactly.
    pub async fn find_users_by_external_id(
        &mut self,
        value: &ExternalId,
    ) -> Result<Vec<ScimUser>, ScimError> {
        let users = self.client.inner.users.clone();
        let mut filters = vec![filter::external_id(value.as_str())];
        if self.client.inner.flavor == Flavor::Genesys {
            filters.push(filter::inactive_external_id(value.as_str()));
        }
        let mut found: Vec<ScimUser> = Vec::new();
        for f in filters {
            let page: ListResponse<ScimUser> = self.list(&users, &f, 1, None).await?;
            for user in page.resources {
                if !found.iter().any(|u| u.id == user.id) {
                    found.push(user);
                }
            }
        }
        Ok(found)
    }

    /// How many active users the organisation has: `totalResults` of a user list
    /// with `count=0` (RFC 7644 §3.4.2.4). On Genesys an unfiltered list holds
    /// only active users (API description, getScimV2Users: "To return all active
    /// users, do not use the filter parameter"; "A value of 0 returns
    /// totalResults"); elsewhere the filter `active eq true` asks for them.
    pub async fn count_active_users(&mut self) -> Result<u64, ScimError> {
        let mut url = self.client.inner.users.clone();
        let genesys = self.client.inner.flavor == Flavor::Genesys;
        let query = if genesys {
            "count=0&attributes=id".to_owned()
        } else {
            format!(
                "filter={}&count=0&attributes=id",
                filter::encode("active eq true")
            )
        };
        url.set_query(Some(&query));
        let call = Call {
            op: format!(
                "GET {}?count=0 (active users)",
                self.client.resource_name(&self.client.inner.users)
            ),
            method: Method::GET,
            url,
            body: None,
            if_match: None,
        };
        let reply = self.send(&call).await?;
        let page: ListResponse<serde_json::Value> = self.decode(&call.op, &reply)?;
        Ok(page.total_results)
    }

    /// `GET Groups/{id}?attributes=displayName` (RFC 7644 §3.4.1; Genesys API
    /// description, getScimV2Group): the group as a reference with its display
    /// name, `Ok(None)` on 404. Errors: an id that cannot be one path segment
    /// ([`ScimError::InvalidId`]), a reply for another id ([`ScimError::Decode`]),
    /// and the request's own errors.
    pub async fn get_group(&mut self, id: &str) -> Result<Option<Reference>, ScimError> {
        check_segment("group id", id)?;
        let base = self.client.inner.groups.clone();
        let group = self
            .get_resource(
                &base,
                id,
                Some("attributes=displayName"),
                "group",
                |g: &ScimGroup| &g.id,
            )
            .await?;
        Ok(group.map(|g| Reference {
            value: g.id,
            display: g.display_name,
        }))
    }

    /// Groups whose `displayName` the server matches with `name` (filter
    /// `displayName eq "…"`; Genesys API description, getScimV2Groups), first
    /// page only, as references with their display names. The caller compares
    /// names itself.
    pub async fn find_groups_by_display_name(
        &mut self,
        name: &str,
    ) -> Result<Vec<Reference>, ScimError> {
        let base = self.client.inner.groups.clone();
        let page: ListResponse<ScimGroup> = self
            .list(
                &base,
                &filter::eq("displayName", name),
                1,
                Some("displayName"),
            )
            .await?;
        Ok(page
            .resources
            .into_iter()
            .map(|g| Reference {
                value: g.id,
                display: g.display_name,
            })
            .collect())
    }

    /// The groups `user` belongs to: its read-only `groups` attribute (RFC 7643
    /// §4.1.2) when the server included it, else every group a
    /// `members.value eq "<id>"` filter finds (scim2-server leaves `groups` out),
    /// all pages.
    pub async fn groups_of(&mut self, user: &ScimUser) -> Result<Vec<Reference>, ScimError> {
        if let Some(groups) = &user.groups {
            return Ok(groups
                .iter()
                .filter(|g| !g.value.is_empty())
                .cloned()
                .collect());
        }
        let base = self.client.inner.groups.clone();
        let expr = filter::member(&user.id);
        let mut found: Vec<Reference> = Vec::new();
        let mut start = 1u64;
        // A bound on pages guards against a server whose totalResults never
        // matches what it returns.
        for _ in 0..400 {
            let page: ListResponse<ScimGroup> =
                self.list(&base, &expr, start, Some("displayName")).await?;
            let got = page.resources.len() as u64;
            for g in page.resources {
                if !found.iter().any(|f| f.value == g.id) {
                    found.push(Reference {
                        value: g.id,
                        display: g.display_name,
                    });
                }
            }
            start += got;
            if got == 0 || start > page.total_results {
                break;
            }
        }
        Ok(found)
    }

    /// `PATCH Users/{id}` with `body` (RFC 7644 §3.5.2; Genesys
    /// patchScimV2User), with `If-Match: version` when given. 200 and 204 are
    /// both success; a 200 body is returned for the caller to check.
    pub async fn patch_user(
        &mut self,
        id: &ScimUserId,
        body: &PatchOp,
        version: Option<&str>,
    ) -> Result<Patched<ScimUser>, ScimError> {
        let inner = &self.client.inner;
        let call = Call {
            op: format!("PATCH {}/{id}", self.client.resource_name(&inner.users)),
            method: Method::PATCH,
            url: resource_url(&inner.users, id.as_str())?,
            body: Some(body),
            if_match: version,
        };
        let reply = self.send(&call).await?;
        self.patched(&call.op, &reply)
    }

    fn patched<T: DeserializeOwned>(
        &self,
        op: &str,
        reply: &Reply,
    ) -> Result<Patched<T>, ScimError> {
        let resource = if reply.status == 204 || reply.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(self.decode(op, reply)?)
        };
        Ok(Patched {
            status: reply.status,
            resource,
        })
    }

    /// Removes `user_id` from group `group_id` by PATCH on the group (RFC 7644
    /// §3.5.2.2; Genesys patchScimV2Group: `User.groups` is read-only). Sends
    /// the form this server last accepted (first the filtered path
    /// `members[value eq "…"]`); a 400 that is not a version conflict makes it
    /// try the value-array form once, and remember whichever worked. No
    /// `If-Match`: many workers remove different users from one group at once,
    /// and removing a member is correct whatever the group's version.
    pub async fn remove_member(
        &mut self,
        group_id: &str,
        user_id: &ScimUserId,
    ) -> Result<Patched<ScimGroup>, ScimError> {
        check_segment("group id", group_id)?;
        let inner = &self.client.inner;
        let url = resource_url(&inner.groups, group_id)?;
        let op = format!(
            "PATCH {}/{group_id} remove member {user_id}",
            self.client.resource_name(&inner.groups)
        );
        let first = self.client.remove_form();
        let body = patch::remove_member(user_id.as_str(), first);
        let call = Call {
            op: op.clone(),
            method: Method::PATCH,
            url: url.clone(),
            body: Some(&body),
            if_match: None,
        };
        let refused = match self.send(&call).await {
            Ok(reply) => {
                self.client.remember_form(first);
                return self.patched(&call.op, &reply);
            }
            Err(e @ ScimError::Status { status: 400, .. }) if !e.is_version_conflict() => e,
            Err(e) => return Err(e),
        };
        let second = first.other();
        tracing::info!(%op, form = ?first, error = %refused, "member removal form refused; trying the other form");
        let body = patch::remove_member(user_id.as_str(), second);
        let call = Call {
            op,
            method: Method::PATCH,
            url,
            body: Some(&body),
            if_match: None,
        };
        match self.send(&call).await {
            Ok(reply) => {
                self.client.remember_form(second);
                self.patched(&call.op, &reply)
            }
            Err(e) => {
                tracing::warn!(op = %call.op, error = %e, "both member removal forms refused");
                Err(refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_as_one_encoded_segment() {
        let base = Url::parse("http://h/t/Users").unwrap();
        let url = resource_url(&base, "a b\"é").unwrap();
        assert_eq!(url.as_str(), "http://h/t/Users/a%20b%22%C3%A9");
        assert!(check_segment("group id", "../admin").is_err());
        assert!(check_segment("group id", "a/b").is_err());
        assert!(check_segment("group id", "").is_err());
        assert!(check_segment("group id", "g-1").is_ok());
    }

    #[test]
    fn resource_paths_follow_the_target() {
        let limiter = RateLimiter::per_minute(std::num::NonZeroU32::new(60).unwrap());
        let generic = ScimClient::new(
            &ScimTarget::Static {
                base: Url::parse("http://127.0.0.1:9/tenant-1/").unwrap(),
                token: secrecy::SecretString::from("t"),
            },
            limiter.clone(),
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(
            generic.inner.users.as_str(),
            "http://127.0.0.1:9/tenant-1/Users"
        );
        assert_eq!(
            generic.inner.groups.as_str(),
            "http://127.0.0.1:9/tenant-1/Groups"
        );
        let genesys = ScimClient::new(
            &ScimTarget::Genesys {
                api_base: Url::parse("https://api.mypurecloud.de").unwrap(),
                login_base: Url::parse("https://login.mypurecloud.de").unwrap(),
                primary: crate::config::OAuthClient {
                    id: "p".into(),
                    secret: secrecy::SecretString::from("s"),
                },
                elevated: None,
            },
            limiter,
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(
            genesys.inner.users.as_str(),
            "https://api.mypurecloud.de/api/v2/scim/v2/users"
        );
        assert_eq!(
            genesys.inner.groups.as_str(),
            "https://api.mypurecloud.de/api/v2/scim/v2/groups"
        );
        assert!(genesys.is_genesys() && !genesys.has_elevated());
        let url = |s: &str| Url::parse(s).unwrap();
        for (client, request, route) in [
            (
                &genesys,
                "https://api.mypurecloud.de/api/v2/scim/v2/users?filter=x",
                "/Users",
            ),
            (
                &genesys,
                "https://api.mypurecloud.de/api/v2/scim/v2/users/u-1",
                "/Users/{id}",
            ),
            (
                &genesys,
                "https://api.mypurecloud.de/api/v2/scim/v2/groups/g%201",
                "/Groups/{id}",
            ),
            (
                &generic,
                "http://127.0.0.1:9/tenant-1/Groups?filter=y",
                "/Groups",
            ),
            (
                &generic,
                "http://127.0.0.1:9/tenant-1/Users/a",
                "/Users/{id}",
            ),
        ] {
            assert_eq!(client.route(&url(request)).1, route, "{request}");
        }
    }
}
