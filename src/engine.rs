//! Deprovisions one person in the SCIM service: resolve, deactivate, strip every
//! group membership, verify the end state, and classify what happened into an
//! [`Outcome`] with its evidence. Owns the per-person decisions of design.md's
//! error table: the identity cross-check, the 404 fallback to the externalId
//! lookup, ambiguity, the one re-read after a version conflict, and the mapping
//! of every error to an outcome. The per-request half (401 replay, 403
//! escalation once per termination, 429 and 5xx backoff within the deadline)
//! lives in [`crate::scim::Session`], which this module drives.
//!
//! Knows nothing about queues or the audit store: it returns a [`Report`] and the
//! caller records it. Never panics and never fails: every error becomes an
//! outcome.

use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::config::{ConfigError, ScimArgs};
use crate::domain::{Credential, ExternalId, Outcome, ScimUserId};
use crate::limit::RateLimiter;
use crate::protect::Protection;
use crate::scim::{
    ClientOptions, Reference, ScimClient, ScimError, ScimUser, Session, patch::deactivate_user,
};

/// One deprovisioning request.
#[derive(Debug, Clone)]
pub struct Request {
    /// HR's identifier; always checked against the user found.
    pub external_id: ExternalId,
    /// The Genesys user id from the manifest, if HR gave one.
    pub user_id: Option<ScimUserId>,
    /// Resolve and plan only; send no mutating request.
    pub dry_run: bool,
    /// No retry or backoff may run past this instant (e.g. the end of the
    /// message's visibility window). A termination that cannot finish by then is
    /// reported as [`Outcome::Retrying`].
    pub deadline: tokio::time::Instant,
}

/// A group the user was (or, in a dry run, would be) removed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupRef {
    /// The SCIM group id.
    pub id: String,
    /// Its `displayName`, when the server gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl From<Reference> for GroupRef {
    fn from(r: Reference) -> Self {
        Self {
            id: r.value,
            display: r.display,
        }
    }
}

/// What happened, with the evidence an auditor samples.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The classification (terminal, or `retrying` / `dry_run`).
    pub outcome: Outcome,
    /// The resolved SCIM user id, when one was found.
    pub user_id: Option<ScimUserId>,
    /// The credential that made (or would make) the change.
    pub credential: Option<Credential>,
    /// Groups left (dry run: groups that would be left).
    pub groups_removed: Vec<GroupRef>,
    /// Roles removed (dry run: that would be removed), when `REMOVE_ROLES` is on.
    pub roles_removed: Vec<String>,
    /// The HTTP status of the last SCIM response that decided the outcome.
    pub status_code: Option<u16>,
    /// `ININ-Correlation-Id` of every SCIM response, in order.
    pub correlation_ids: Vec<String>,
    /// SCIM HTTP requests sent for this termination (token requests excluded).
    pub requests: u32,
    /// The reason for any outcome but success, with the server's detail.
    pub detail: Option<String>,
    /// For `retrying`: how long the caller should wait before the next attempt.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// In a dry run (`outcome` = `dry_run`): what a real run would come to,
    /// `deactivated` (the user is active) or `already_inactive` (only leftover
    /// groups or roles to remove). `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<Outcome>,
    /// Wall time spent.
    #[serde(with = "duration_ms")]
    pub elapsed: Duration,
}

mod duration_ms {
    use serde::Serializer;
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
}

/// Anything that can deprovision one person: the real [`Engine`], or a fake in
/// the consumer's unit tests.
pub trait Deprovision: Send + Sync {
    /// Deprovisions one person. Never fails: every error is classified into the
    /// report's outcome.
    fn deprovision(&self, request: &Request) -> impl Future<Output = Report> + Send;
}

/// Who to deprovision: the identifiers an operator or a manifest gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Find the user by `externalId` (among active and inactive users).
    ExternalId(ExternalId),
    /// The user with this id, whose `externalId` must be this one; a 404 on the
    /// id falls back to the externalId lookup (the manifest's case).
    Checked {
        /// The SCIM user id.
        user_id: ScimUserId,
        /// The externalId it must carry.
        external_id: ExternalId,
    },
    /// Exactly the user with this id, no cross-check (`deprovision user
    /// --user-id` without `--external-id`: the operator named the account).
    UserId(ScimUserId),
}

impl Subject {
    /// The subject of a manifest [`Request`].
    pub fn of(request: &Request) -> Self {
        match &request.user_id {
            Some(user_id) => Self::Checked {
                user_id: user_id.clone(),
                external_id: request.external_id.clone(),
            },
            None => Self::ExternalId(request.external_id.clone()),
        }
    }

    fn external_id(&self) -> Option<&ExternalId> {
        match self {
            Self::ExternalId(e) | Self::Checked { external_id: e, .. } => Some(e),
            Self::UserId(_) => None,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Also remove the user's roles, in the same PATCH as `active`
    /// (`REMOVE_ROLES`).
    pub remove_roles: bool,
}

/// Why an [`Engine`] could not be built from configuration.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SCIM target settings are missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SCIM client could not be built (boxed: a rare, large error).
    #[error(transparent)]
    Scim(Box<ScimError>),
}

impl From<ScimError> for EngineError {
    fn from(e: ScimError) -> Self {
        Self::Scim(Box::new(e))
    }
}

/// The deprovisioning engine: one [`ScimClient`] (shared limiter, token caches)
/// and the policy. Cheap to clone; clones share the client.
#[derive(Debug, Clone)]
pub struct Engine {
    client: ScimClient,
    options: EngineOptions,
    /// Accounts never deactivated (`PROTECTED_USERS`, `PROTECTED_GROUPS`).
    protection: std::sync::Arc<Protection>,
}

/// How a run stopped short of success.
enum Stop {
    /// The engine decided the outcome (not found, ambiguous, mismatch, an end
    /// state that does not hold).
    Decided(Outcome, String),
    /// A SCIM error, classified by [`classify`].
    Scim(ScimError),
}

impl From<ScimError> for Stop {
    fn from(e: ScimError) -> Self {
        Self::Scim(e)
    }
}

/// What a run found and did so far; kept when it stops short, as evidence.
#[derive(Default)]
struct Progress {
    user_id: Option<ScimUserId>,
    planned: Option<Outcome>,
    groups_removed: Vec<GroupRef>,
    roles_removed: Vec<String>,
    status: Option<u16>,
}

/// The outcome of a SCIM error (design.md, "Error classification"): 403 with no
/// escalation left → `forbidden`; anything that waiting may cure (429, 5xx,
/// timeouts, an unreachable login server, the deadline) → `retrying`; the rest
/// (400/413/415, repeated 401, unreadable answers) → `failed`.
fn classify(e: &ScimError) -> Outcome {
    match e {
        ScimError::Forbidden { .. } => Outcome::Forbidden,
        e if e.is_transient() => Outcome::Retrying,
        _ => Outcome::Failed,
    }
}

impl Engine {
    /// An engine over `client`.
    pub fn new(client: ScimClient, options: EngineOptions) -> Self {
        Self {
            client,
            options,
            protection: std::sync::Arc::default(),
        }
    }

    /// The same engine, refusing to touch the accounts `protection` lists: after
    /// resolving a user and reading its groups, and before any mutating request
    /// (dry runs included), a protected user ends as [`Outcome::Protected`],
    /// logged at error level.
    pub fn with_protection(mut self, protection: std::sync::Arc<Protection>) -> Self {
        self.protection = protection;
        self
    }

    /// Builds the client (target, `RATE_LIMIT_PER_MINUTE` limiter, timeout) and
    /// the engine from the SCIM settings. Errors name the missing or invalid
    /// setting.
    pub fn from_args(args: &ScimArgs) -> Result<Self, EngineError> {
        let target = args.target()?;
        let limiter = RateLimiter::per_minute(args.rate_limit_per_minute);
        let client = ScimClient::new(&target, limiter, ClientOptions::from_args(args))?;
        Ok(Self::new(
            client,
            EngineOptions {
                remove_roles: args.remove_roles,
            },
        ))
    }

    /// The SCIM client (and through it the shared limiter).
    pub fn client(&self) -> &ScimClient {
        &self.client
    }

    /// Deprovisions `subject`; with `dry_run`, resolves and plans only (GETs,
    /// no PATCH). Never fails: errors become the report's outcome. No request is
    /// sent or retried past `deadline`.
    pub async fn deprovision_subject(
        &self,
        subject: &Subject,
        dry_run: bool,
        deadline: tokio::time::Instant,
    ) -> Report {
        let span = tracing::info_span!(
            "deprovision",
            external_id = subject.external_id().map(ExternalId::as_str),
            user_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
            dry_run,
        );
        self.run(subject, dry_run, deadline)
            .instrument(span.clone())
            .await
    }

    async fn run(
        &self,
        subject: &Subject,
        dry_run: bool,
        deadline: tokio::time::Instant,
    ) -> Report {
        let started = std::time::Instant::now();
        let mut session = self.client.session(deadline);
        let mut progress = Progress::default();
        let result = self
            .steps(&mut session, subject, dry_run, &mut progress)
            .await;
        let evidence = session.evidence().clone();
        let (outcome, detail, status, retry_after) = match result {
            Ok(outcome) => (
                outcome,
                None,
                progress.status.or(evidence.last_status),
                None,
            ),
            Err(Stop::Decided(outcome, detail)) => {
                (outcome, Some(detail), evidence.last_status, None)
            }
            Err(Stop::Scim(e)) => (
                classify(&e),
                Some(e.to_string()),
                e.status().or(evidence.last_status),
                e.retry_after(),
            ),
        };
        let span = tracing::Span::current();
        span.record("outcome", outcome.as_str());
        if let Some(id) = &progress.user_id {
            span.record("user_id", id.as_str());
        }
        match &detail {
            Some(d) if !outcome.is_success() => {
                tracing::warn!(outcome = outcome.as_str(), detail = %d, requests = evidence.requests, "termination not completed")
            }
            _ => tracing::info!(
                outcome = outcome.as_str(),
                groups = progress.groups_removed.len(),
                requests = evidence.requests,
                "termination processed"
            ),
        }
        Report {
            outcome,
            user_id: progress.user_id,
            credential: (evidence.requests > 0).then(|| session.credential()),
            groups_removed: progress.groups_removed,
            roles_removed: progress.roles_removed,
            status_code: status,
            correlation_ids: evidence.correlation_ids,
            requests: evidence.requests,
            detail,
            retry_after,
            planned: progress.planned.filter(|_| outcome == Outcome::DryRun),
            elapsed: started.elapsed(),
        }
    }

    /// The exact-match lookup by externalId: servers may match case-insensitively
    /// or loosely, so only users whose `externalId` equals the value exactly
    /// count (RFC 7643 §3.1: `externalId` is case-exact).
    async fn find_one(
        &self,
        s: &mut Session<'_>,
        external_id: &ExternalId,
    ) -> Result<ScimUser, Stop> {
        let found = s.find_users_by_external_id(external_id).await?;
        let mut exact: Vec<ScimUser> = found
            .into_iter()
            .filter(|u| u.external_id.as_deref() == Some(external_id.as_str()))
            .collect();
        match exact.len() {
            0 => Err(Stop::Decided(
                Outcome::NotFound,
                format!("no user, active or inactive, has externalId \"{external_id}\""),
            )),
            1 => Ok(exact.remove(0)),
            n => {
                let ids: Vec<&str> = exact.iter().map(|u| u.id.as_str()).collect();
                Err(Stop::Decided(
                    Outcome::Ambiguous,
                    format!(
                        "{n} users have externalId \"{external_id}\" ({}); nothing was changed",
                        ids.join(", ")
                    ),
                ))
            }
        }
    }

    async fn resolve(&self, s: &mut Session<'_>, subject: &Subject) -> Result<ScimUser, Stop> {
        match subject {
            Subject::ExternalId(e) => self.find_one(s, e).await,
            Subject::UserId(id) => s.get_user(id).await?.ok_or_else(|| {
                Stop::Decided(Outcome::NotFound, format!("no user has id \"{id}\""))
            }),
            Subject::Checked {
                user_id,
                external_id,
            } => match s.get_user(user_id).await? {
                Some(user) => {
                    if user.external_id.as_deref() != Some(external_id.as_str()) {
                        return Err(Stop::Decided(
                            Outcome::IdentityMismatch,
                            format!(
                                "userId {user_id} has externalId {:?}, the request says {:?}; nothing was changed",
                                user.external_id.as_deref().unwrap_or(""),
                                external_id.as_str()
                            ),
                        ));
                    }
                    Ok(user)
                }
                None => {
                    tracing::info!(%user_id, "userId not found (404); looking up the externalId");
                    self.find_one(s, external_id).await
                }
            },
        }
    }

    async fn steps(
        &self,
        s: &mut Session<'_>,
        subject: &Subject,
        dry_run: bool,
        p: &mut Progress,
    ) -> Result<Outcome, Stop> {
        let user = self.resolve(s, subject).await?;
        let user_id = ScimUserId::parse(&user.id).map_err(|e| {
            Stop::Decided(
                Outcome::Failed,
                format!("the server returned an unusable user id: {e}"),
            )
        })?;
        p.user_id = Some(user_id.clone());
        let was_active = user.active != Some(false);
        let references = s.groups_of(&user).await?;
        if !self.protection.is_empty()
            && let Some(reason) = self.protection.check(s, &user, &references).await?
        {
            tracing::error!(%user_id, %reason, "protected account in a termination; nothing was changed");
            return Err(Stop::Decided(
                Outcome::Protected,
                format!("protected account: {reason}; nothing was changed"),
            ));
        }
        let groups: Vec<GroupRef> = references.into_iter().map(GroupRef::from).collect();
        let roles = if self.options.remove_roles {
            user.role_names()
        } else {
            Vec::new()
        };
        if dry_run {
            p.groups_removed = groups;
            p.roles_removed = roles;
            p.planned = Some(if was_active {
                Outcome::Deactivated
            } else {
                Outcome::AlreadyInactive
            });
            return Ok(Outcome::DryRun);
        }

        // Access is cut first: deactivation before anything else, so a failure
        // later leaves an inactive account, never an active one without groups.
        let mut inactive_confirmed = !was_active;
        if was_active || !roles.is_empty() {
            let patched = self.deactivate(s, &user, &user_id).await?;
            p.status = Some(patched.status);
            p.roles_removed = roles;
            match patched.resource.and_then(|u| u.active) {
                Some(true) => {
                    return Err(Stop::Decided(
                        Outcome::Failed,
                        format!(
                            "the server answered HTTP {} to the deactivation but the user is still active",
                            patched.status
                        ),
                    ));
                }
                Some(false) => inactive_confirmed = true,
                None => inactive_confirmed = false,
            }
        } else {
            p.status = s.evidence().last_status;
        }

        let mut groups_confirmed = true;
        for group in &groups {
            match s.remove_member(&group.id, &user_id).await {
                Ok(patched) => {
                    match patched.resource {
                        Some(g) if g.members.is_some() => {
                            if g.lists(user_id.as_str()) {
                                return Err(Stop::Decided(
                                    Outcome::Failed,
                                    format!(
                                        "group {} still lists the user after HTTP {} to the removal",
                                        group.id, patched.status
                                    ),
                                ));
                            }
                        }
                        _ => groups_confirmed = false,
                    }
                    p.groups_removed.push(group.clone());
                }
                // The group is gone, and with it the membership; the read-back
                // confirms.
                Err(ScimError::Status { status: 404, .. }) => groups_confirmed = false,
                Err(e) => return Err(e.into()),
            }
        }

        if !(inactive_confirmed && groups_confirmed) {
            self.verify(s, &user_id).await?;
        }
        Ok(if was_active {
            Outcome::Deactivated
        } else {
            Outcome::AlreadyInactive
        })
    }

    /// The deactivating PATCH, with `If-Match` from the read when the server
    /// versions users. A version conflict (409, 412, 400 `invalidVers`) re-reads
    /// the user once, checks it is still the same person, and retries once.
    async fn deactivate(
        &self,
        s: &mut Session<'_>,
        user: &ScimUser,
        user_id: &ScimUserId,
    ) -> Result<crate::scim::Patched<ScimUser>, Stop> {
        let body = deactivate_user(self.options.remove_roles);
        match s.patch_user(user_id, &body, user.version()).await {
            Err(e) if e.is_version_conflict() => {
                tracing::info!(%user_id, error = %e, "version conflict; re-reading once");
                let fresh = s.get_user(user_id).await?.ok_or_else(|| {
                    Stop::Decided(
                        Outcome::Failed,
                        format!("user {user_id} disappeared during deactivation"),
                    )
                })?;
                if fresh.external_id != user.external_id {
                    return Err(Stop::Decided(
                        Outcome::IdentityMismatch,
                        format!(
                            "user {user_id} changed externalId from {:?} to {:?} during deactivation; nothing was changed",
                            user.external_id.as_deref().unwrap_or(""),
                            fresh.external_id.as_deref().unwrap_or("")
                        ),
                    ));
                }
                Ok(s.patch_user(user_id, &body, fresh.version()).await?)
            }
            other => Ok(other?),
        }
    }

    /// One read-back of the end state: the user inactive and in no group.
    async fn verify(&self, s: &mut Session<'_>, user_id: &ScimUserId) -> Result<(), Stop> {
        let back = s.get_user(user_id).await?.ok_or_else(|| {
            Stop::Decided(
                Outcome::Failed,
                format!("user {user_id} could not be read back (404) to confirm the end state"),
            )
        })?;
        match back.active {
            Some(false) => {}
            Some(true) => {
                return Err(Stop::Decided(
                    Outcome::Failed,
                    "the server accepted the deactivation but the user is still active on read-back"
                        .into(),
                ));
            }
            None => {
                return Err(Stop::Decided(
                    Outcome::Failed,
                    "the server does not show `active`, so deactivation cannot be confirmed".into(),
                ));
            }
        }
        let left = s.groups_of(&back).await?;
        if !left.is_empty() {
            let ids: Vec<&str> = left.iter().map(|g| g.value.as_str()).collect();
            return Err(Stop::Decided(
                Outcome::Failed,
                format!(
                    "the user is still a member of {} group(s) on read-back: {}",
                    left.len(),
                    ids.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl Deprovision for Engine {
    fn deprovision(&self, request: &Request) -> impl Future<Output = Report> + Send {
        let subject = Subject::of(request);
        let dry_run = request.dry_run;
        let deadline = request.deadline;
        async move { self.deprovision_subject(&subject, dry_run, deadline).await }
    }
}

#[cfg(test)]
mod tests {
    //! The engine's decisions against a scripted fake SCIM server, for answers
    //! that real servers give only under races (version conflicts) or faults.
    //! The end-to-end tests against scim2-server and the simulator live in
    //! `tests/it/engine/`.

    use super::*;
    use std::collections::{HashMap, VecDeque};
    use std::num::NonZeroU32;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    use secrecy::SecretString;
    use serde_json::{Value, json};

    use crate::config::ScimTarget;

    type Reply = (u16, Vec<(&'static str, String)>, Value);

    /// Replies scripted per `"METHOD /path"`; the last reply of a script
    /// repeats. Every request is logged with its `If-Match` and body.
    #[derive(Default)]
    struct Fake {
        script: Mutex<HashMap<String, VecDeque<Reply>>>,
        log: Mutex<Vec<(String, Option<String>, Value)>>,
    }

    impl Fake {
        fn on(&self, key: &str, replies: Vec<Reply>) {
            self.script
                .lock()
                .unwrap()
                .insert(key.to_owned(), replies.into());
        }

        fn requests(&self, key: &str) -> Vec<(Option<String>, Value)> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _, _)| k == key)
                .map(|(_, m, b)| (m.clone(), b.clone()))
                .collect()
        }
    }

    fn ok(body: Value) -> Reply {
        (200, vec![], body)
    }

    fn list(resources: Vec<Value>) -> Reply {
        ok(json!({"totalResults": resources.len(), "Resources": resources}))
    }

    fn user(active: bool, version: &str) -> Value {
        json!({"id": "u1", "externalId": "E1", "active": active, "meta": {"version": version}})
    }

    async fn serve(fake: Arc<Fake>) -> Engine {
        let handler = {
            let fake = Arc::clone(&fake);
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let fake = Arc::clone(&fake);
                async move {
                    let key = format!("{method} {}", uri.path());
                    let if_match = headers
                        .get("if-match")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    fake.log.lock().unwrap().push((key.clone(), if_match, body));
                    let reply = {
                        let mut script = fake.script.lock().unwrap();
                        match script.get_mut(&key) {
                            Some(q) if q.len() > 1 => q.pop_front(),
                            Some(q) => q.front().cloned(),
                            None => None,
                        }
                    };
                    let (status, headers, body) =
                        reply.unwrap_or((404, vec![], json!({"status": "404", "detail": key})));
                    let mut response =
                        (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
                    for (k, v) in headers {
                        response.headers_mut().insert(k, v.parse().unwrap());
                    }
                    response
                }
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = ScimClient::new(
            &ScimTarget::Static {
                base: url::Url::parse(&format!("http://{addr}/")).unwrap(),
                token: SecretString::from("t"),
            },
            RateLimiter::per_minute(NonZeroU32::new(60_000).unwrap()),
            ClientOptions {
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        Engine::new(client, EngineOptions::default())
    }

    fn request() -> Request {
        Request {
            external_id: ExternalId::parse("E1").unwrap(),
            user_id: None,
            dry_run: false,
            deadline: tokio::time::Instant::now() + Duration::from_secs(20),
        }
    }

    /// An active user u1 (version `W/"1"`) in no group.
    fn directory(fake: &Fake) {
        fake.on("GET /Users", vec![list(vec![user(true, "W/\"1\"")])]);
        fake.on("GET /Groups", vec![list(vec![])]);
    }

    #[tokio::test]
    async fn a_version_conflict_rereads_once_and_retries_with_the_new_version() {
        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![
                (409, vec![], json!({"status": "409", "detail": "stale"})),
                ok(user(false, "W/\"3\"")),
            ],
        );
        fake.on("GET /Users/u1", vec![ok(user(true, "W/\"2\""))]);
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
        let patches = fake.requests("PATCH /Users/u1");
        let versions: Vec<_> = patches.iter().map(|(m, _)| m.as_deref()).collect();
        assert_eq!(versions, vec![Some("W/\"1\""), Some("W/\"2\"")]);
        assert_eq!(fake.requests("GET /Users/u1").len(), 1, "one re-read");
    }

    #[tokio::test]
    async fn a_second_conflict_is_a_permanent_failure() {
        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![(
                400,
                vec![],
                json!({"status": "400", "scimType": "invalidVers"}),
            )],
        );
        fake.on("GET /Users/u1", vec![ok(user(true, "W/\"2\""))]);
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
        assert_eq!(report.status_code, Some(400));
        assert_eq!(
            fake.requests("PATCH /Users/u1").len(),
            2,
            "retried once only"
        );
    }

    #[tokio::test]
    async fn an_identity_change_seen_on_the_reread_stops_everything() {
        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![(412, vec![], json!({"status": "412"}))],
        );
        fake.on(
            "GET /Users/u1",
            vec![ok(json!({"id": "u1", "externalId": "E2", "active": true}))],
        );
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::IdentityMismatch, "{report:?}");
        assert_eq!(fake.requests("PATCH /Users/u1").len(), 1);
    }

    #[tokio::test]
    async fn a_group_that_still_lists_the_user_after_200_is_not_success() {
        let fake = Arc::new(Fake::default());
        fake.on(
            "GET /Users",
            vec![list(vec![
                json!({"id": "u1", "externalId": "E1", "active": true,
                "groups": [{"value": "g1", "display": "Sales"}]}),
            ])],
        );
        fake.on("PATCH /Users/u1", vec![ok(user(false, "W/\"2\""))]);
        fake.on(
            "PATCH /Groups/g1",
            vec![ok(json!({"id": "g1", "members": [{"value": "u1"}]}))],
        );
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
        assert!(report.detail.unwrap().contains("still lists the user"));
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_bad_requests_are_not() {
        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![
                (
                    503,
                    vec![],
                    json!({"message": "busy", "code": "service.unavailable"}),
                ),
                (502, vec![], Value::Null),
                ok(user(false, "W/\"2\"")),
            ],
        );
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
        assert_eq!(fake.requests("PATCH /Users/u1").len(), 3);

        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![(
                400,
                vec![],
                json!({"message": "Value [x] is not valid", "code": "invalid.value", "status": 400}),
            )],
        );
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
        assert!(report.detail.unwrap().contains("invalid.value"));
        assert_eq!(fake.requests("PATCH /Users/u1").len(), 1);
    }

    #[tokio::test]
    async fn a_429_without_any_hint_backs_off_and_then_succeeds() {
        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![
                (
                    429,
                    vec![("retry-after", "whenever".into())],
                    json!({"message": "slow down", "code": "too.many.requests"}),
                ),
                ok(user(false, "W/\"2\"")),
            ],
        );
        let engine = serve(Arc::clone(&fake)).await;
        let report = engine.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
        assert_eq!(fake.requests("PATCH /Users/u1").len(), 2);
        assert!(
            engine.client().limiter().current_per_minute() < 60_000,
            "the shared limiter did not slow down"
        );
    }

    #[tokio::test]
    async fn a_429_past_the_deadline_asks_for_a_retry_with_the_wait() {
        let fake = Arc::new(Fake::default());
        directory(&fake);
        fake.on(
            "PATCH /Users/u1",
            vec![(429, vec![("retry-after", "3600".into())], Value::Null)],
        );
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Retrying, "{report:?}");
        assert_eq!(report.retry_after, Some(Duration::from_secs(3600)));
        assert_eq!(report.status_code, Some(429));
    }

    #[tokio::test]
    async fn a_group_gone_during_removal_is_confirmed_by_read_back() {
        let fake = Arc::new(Fake::default());
        fake.on(
            "GET /Users",
            vec![list(vec![
                json!({"id": "u1", "externalId": "E1", "active": true,
                "groups": [{"value": "g1"}]}),
            ])],
        );
        fake.on("PATCH /Users/u1", vec![ok(user(false, "W/\"2\""))]);
        // No script for PATCH /Groups/g1: the fake answers 404.
        fake.on(
            "GET /Users/u1",
            vec![ok(
                json!({"id": "u1", "externalId": "E1", "active": false, "groups": []}),
            )],
        );
        let report = serve(Arc::clone(&fake)).await.deprovision(&request()).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
        assert!(report.groups_removed.is_empty());
        assert_eq!(fake.requests("GET /Users/u1").len(), 1, "one read-back");
    }
}
