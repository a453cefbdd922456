//! The running simulator: shared application state, the axum router (which
//! layers apply to which routes), start-up on a socket and shutdown. Also the
//! helpers every resource handler shares (query parsing, media types, `If-Match`,
//! authorisation of a change, resource locations). Holds no resource logic.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::config::{NotFoundBody, SimConfig, VersionMismatch};
use super::errors::Fault;
use super::state::Store;
use super::stats::{Counters, SimStats, StateSummary};
use super::switches::{Grant, Window};
use super::{SCIM_BASE_PATH, SimError};
use super::{control, discovery, groups, oauth, switches, users};

/// Locks a mutex, recovering the data if a handler panicked while holding it: the
/// simulator keeps serving rather than failing every later request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the handlers share.
pub(crate) struct App {
    pub config: SimConfig,
    pub store: Mutex<Store>,
    pub tokens: RwLock<HashMap<String, Grant>>,
    pub denied: RwLock<BTreeSet<String>>,
    pub limiter: Mutex<HashMap<String, Window>>,
    pub counters: Mutex<Counters>,
    /// `http://host:port` without a trailing slash, for `meta.location`.
    pub origin: String,
}

/// Who made an authenticated SCIM request (set by the auth gate).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub client_id: Arc<str>,
    pub elevated: bool,
}

impl App {
    /// A snapshot of the counters with the directory summary filled in.
    pub fn stats(&self) -> SimStats {
        let mut s = lock(&self.counters).snapshot.clone();
        let (users, active, inactive, deleted, groups, memberships) = lock(&self.store).summary();
        s.state = StateSummary {
            users,
            active_users: active,
            inactive_users: inactive,
            deleted_users: deleted,
            groups,
            memberships,
        };
        s
    }

    /// Back to the seeded directory, zero counters, an empty rate-limit window
    /// and the configured denied list. Issued tokens stay valid.
    pub fn reset(&self) -> Result<(), SimError> {
        let fresh = Store::from_seed(&self.config.seed)?;
        *lock(&self.store) = fresh;
        *lock(&self.counters) = Counters::default();
        lock(&self.limiter).clear();
        *write(&self.denied) = self.config.denied.clone();
        Ok(())
    }

    /// `{origin}/api/v2/scim/v2/{kind}/{id}`.
    pub fn location(&self, kind: &str, id: &str) -> String {
        format!("{}{SCIM_BASE_PATH}/{kind}/{id}", self.origin)
    }

    /// The 404 for an unknown `kind` id, in the configured shape.
    pub fn not_found(&self, kind: &str, id: &str) -> Fault {
        match self.config.not_found_body {
            NotFoundBody::Platform => Fault::platform(
                StatusCode::NOT_FOUND,
                "not.found",
                "The requested resource was not found.",
            ),
            NotFoundBody::Scim => {
                Fault::scim(StatusCode::NOT_FOUND, format!("{kind} {id:?} not found"))
            }
        }
    }

    /// Checks `If-Match` against the current version (RFC 7232 §3.1: `*` or any
    /// listed tag matches; weak and strong tags compare by their opaque part).
    /// A mismatch is answered in the configured shape.
    pub fn check_if_match(&self, headers: &HeaderMap, version: u64) -> Result<(), Fault> {
        let Some(raw) = headers.get(header::IF_MATCH) else {
            return Ok(());
        };
        let raw = raw.to_str().unwrap_or("");
        if etag_matches(raw, version) {
            return Ok(());
        }
        let detail = format!(
            "If-Match {raw:?} does not match the current version {}",
            etag(version)
        );
        Err(match self.config.version_mismatch {
            VersionMismatch::Conflict => Fault::scim(StatusCode::CONFLICT, detail),
            VersionMismatch::InvalidVers => Fault::bad("invalidVers", detail),
            VersionMismatch::Precondition => Fault::scim(StatusCode::PRECONDITION_FAILED, detail),
        })
    }

    /// May `caller` change user `id`? `--denied` refuses everyone;
    /// `--requires-elevated` refuses non-elevated clients (403 platform bodies,
    /// API description `x-inin-error-codes`). `removal` is false for changes that
    /// only add the user somewhere (requires-elevated guards removals and user
    /// changes, not additions).
    pub fn authorize_change(&self, caller: &Caller, id: &str, removal: bool) -> Result<(), Fault> {
        if read(&self.denied).contains(id) {
            return Err(Fault::platform(
                StatusCode::FORBIDDEN,
                "not.authorized",
                "You are not authorized to perform the requested action.",
            ));
        }
        if removal && !caller.elevated && self.config.requires_elevated.contains(id) {
            return Err(Fault::platform(
                StatusCode::FORBIDDEN,
                "missing.any.permissions",
                "Unable to perform the requested action. You must have at least one of the following permissions assigned: directory:user:edit",
            ));
        }
        Ok(())
    }
}

/// The ETag and `meta.version` of a resource version: a strong tag in double
/// quotes, as the API description's example (`"42"`).
pub(crate) fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn etag_matches(header_value: &str, version: u64) -> bool {
    let want = version.to_string();
    header_value.split(',').any(|t| {
        let t = t.trim();
        if t == "*" {
            return true;
        }
        let t = t.strip_prefix("W/").unwrap_or(t);
        t.trim_matches('"') == want
    })
}

/// Query parameters in order, repeated keys kept (`attributes` is
/// `collectionFormat: multi`).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Refuses a body whose `Content-Type` is neither `application/scim+json` nor
/// `application/json` (415, API description `unsupported.media.type`).
pub(crate) fn check_media(headers: &HeaderMap) -> Result<(), Fault> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence == "application/scim+json" {
        Ok(())
    } else {
        Err(Fault::platform(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported.media.type",
            format!(
                "Unsupported Media Type - Unsupported or incorrect media type, such as an incorrect Content-Type value in the header ({ct:?})."
            ),
        ))
    }
}

async fn fallback() -> Response {
    Fault::platform(
        StatusCode::NOT_FOUND,
        "not.found",
        "The requested resource was not found.",
    )
    .into_response()
}

fn router(app: Arc<App>) -> Router {
    let b = SCIM_BASE_PATH;
    // Auth, rate limit and injected errors apply to SCIM routes only; the token
    // endpoint has its own rules and `/_sim` is the test harness's back door.
    let scim = Router::new()
        .route(&format!("{b}/users"), get(users::list).post(users::create))
        .route(
            &format!("{b}/users/{{id}}"),
            get(users::get)
                .put(users::put)
                .patch(users::patch)
                .delete(users::delete),
        )
        .route(&format!("{b}/groups"), get(groups::list))
        .route(
            &format!("{b}/groups/{{id}}"),
            get(groups::get).patch(groups::patch),
        )
        .route(
            &format!("{b}/serviceproviderconfig"),
            get(discovery::service_provider_config),
        )
        .route(&format!("{b}/schemas"), get(discovery::schemas))
        .route(&format!("{b}/schemas/{{id}}"), get(discovery::schema))
        .route(
            &format!("{b}/resourcetypes"),
            get(discovery::resource_types),
        )
        .route(
            &format!("{b}/resourcetypes/{{id}}"),
            get(discovery::resource_type_one),
        )
        .route_layer(from_fn_with_state(app.clone(), switches::gate));
    Router::new()
        .route("/oauth/token", post(oauth::token))
        .merge(scim)
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/reset", post(control::reset))
        .route("/_sim/revoke-tokens", post(control::revoke_tokens))
        .route("/_sim/allow/{id}", post(control::allow))
        .route("/_sim/deny/{id}", post(control::deny))
        .fallback(fallback)
        .layer(from_fn_with_state(app.clone(), switches::observe))
        .with_state(app)
}

/// A point-in-time copy of one simulated user, for test assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// SCIM id.
    pub id: String,
    /// userName.
    pub user_name: String,
    /// externalId.
    pub external_id: Option<String>,
    /// Whether the account is active.
    pub active: bool,
    /// Role names.
    pub roles: Vec<String>,
    /// Ids of the groups holding the user, in group order.
    pub groups: Vec<String>,
    /// The current ETag / `meta.version`.
    pub version: String,
}

/// A point-in-time copy of one simulated group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimGroup {
    /// SCIM id.
    pub id: String,
    /// displayName.
    pub display_name: String,
    /// Member user ids, in the order they were added.
    pub members: Vec<String>,
    /// The current ETag / `meta.version`.
    pub version: String,
}

/// A simulator serving on a socket until [`RunningSim::shutdown`] (or drop, which
/// stops it without waiting).
pub struct RunningSim {
    app: Arc<App>,
    base_url: Url,
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl RunningSim {
    /// Seeds the directory, binds `addr` (port 0 picks a free port) and serves in
    /// a background task. Errors: [`SimError::Bind`], and the seed errors of
    /// [`Seed::validate`](super::Seed::validate).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<RunningSim, SimError> {
        let store = Store::from_seed(&config.seed)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let origin = format!("http://{local_addr}");
        let base_url = Url::parse(&format!("{origin}/")).map_err(|e| SimError::Bind {
            addr,
            source: std::io::Error::other(e),
        })?;
        let denied = RwLock::new(config.denied.clone());
        let app = Arc::new(App {
            config,
            store: Mutex::new(store),
            tokens: RwLock::new(HashMap::new()),
            denied,
            limiter: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
            origin,
        });
        let cancel = CancellationToken::new();
        let serve = axum::serve(listener, router(app.clone()))
            .with_graceful_shutdown(cancel.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulator server stopped with an error");
            }
        });
        tracing::info!(url = %base_url, "Genesys Cloud SCIM simulator listening");
        Ok(RunningSim {
            app,
            base_url,
            local_addr,
            cancel,
            task: Some(task),
        })
    }

    /// `http://host:port/`: the API base and the login base at once (it serves
    /// `/oauth/token` and `/api/v2/scim/v2/...`).
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// The socket address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The same counters as `GET /_sim/stats`.
    pub fn stats(&self) -> SimStats {
        self.app.stats()
    }

    /// Lifts `--denied` for a user (as `POST /_sim/allow/{id}`); true if it was
    /// denied.
    pub fn allow(&self, user_id: &str) -> bool {
        write(&self.app.denied).remove(user_id)
    }

    /// Denies every change to a user from now on (as `POST /_sim/deny/{id}`).
    pub fn deny(&self, user_id: &str) {
        write(&self.app.denied).insert(user_id.to_owned());
    }

    /// Invalidates every issued token (as `POST /_sim/revoke-tokens`); returns how
    /// many there were.
    pub fn revoke_tokens(&self) -> usize {
        let mut t = write(&self.app.tokens);
        let n = t.len();
        t.clear();
        n
    }

    /// Restores the seeded directory and zeroes the counters (as
    /// `POST /_sim/reset`). Errors only if the seed itself is invalid.
    pub fn reset(&self) -> Result<(), SimError> {
        self.app.reset()
    }

    /// A live user by id.
    pub fn user(&self, id: &str) -> Option<SimUser> {
        let store = lock(&self.app.store);
        store.user(id).map(|u| SimUser {
            id: u.id.clone(),
            user_name: u.user_name.clone(),
            external_id: u.external_id.clone(),
            active: u.active,
            roles: u.roles.clone(),
            groups: store
                .groups_of(&u.id)
                .iter()
                .map(|g| g.id.clone())
                .collect(),
            version: etag(u.version),
        })
    }

    /// Live users with this externalId (case-exact), active or not.
    pub fn users_by_external_id(&self, external_id: &str) -> Vec<SimUser> {
        let ids: Vec<String> = lock(&self.app.store)
            .users_by_external_id(external_id)
            .iter()
            .map(|u| u.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.user(id)).collect()
    }

    /// A group by id.
    pub fn group(&self, id: &str) -> Option<SimGroup> {
        lock(&self.app.store).group(id).map(|g| SimGroup {
            id: g.id.clone(),
            display_name: g.display_name.clone(),
            members: g.members.clone(),
            version: etag(g.version),
        })
    }

    /// Stops accepting connections, lets in-flight requests finish (at most five
    /// seconds), and returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_star_weak_and_lists() {
        assert!(etag_matches("\"3\"", 3));
        assert!(etag_matches("W/\"3\"", 3));
        assert!(etag_matches("*", 9));
        assert!(etag_matches("\"1\", \"3\"", 3));
        assert!(!etag_matches("\"2\"", 3));
        assert!(!etag_matches("", 3));
    }
}
