//! The simulator's switches: one typed field per behaviour of issue 3 and the
//! engine's extra needs, each defaulting to what Genesys Cloud's API description
//! says (or, where it is silent, to the stricter answer). Holds no state and does
//! no I/O beyond reading a seed file.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use super::SimError;
use super::seed::Seed;

/// One OAuth client-credentials client the token endpoint accepts. `Debug` shows
/// the id only (the secret is a [`SecretString`]).
#[derive(Debug, Clone)]
pub struct SimClient {
    /// `client_id`.
    pub id: String,
    /// `client_secret`.
    pub secret: SecretString,
    /// Elevated clients may change users listed in
    /// [`SimConfig::requires_elevated`].
    pub elevated: bool,
}

/// The shape of `Retry-After` on a 429 (genesys.md: "Verify: whether every 429
/// carries it"), so the engine's parser meets every form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RetryAfterShape {
    /// Delta-seconds until the window resets (RFC 9110 §10.2.3), at least 1.
    #[default]
    Seconds,
    /// An IMF-fixdate at the window reset.
    HttpDate,
    /// An IMF-fixdate one hour in the past (a clock-skewed server).
    PastDate,
    /// No `Retry-After`; `inin-ratelimit-reset` is still sent.
    Missing,
    /// A value that is neither seconds nor a date.
    Garbage,
}

/// Which form of group member removal PATCH accepts (genesys.md: unverified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GroupRemoveForm {
    /// Only `{"op":"remove","path":"members[value eq \"id\"]"}` (RFC 7644
    /// §3.5.2.2); the value-array form gets 400 `invalidValue`.
    Filter,
    /// Only `{"op":"remove","path":"members","value":[{"value":"id"}]}` (the form
    /// Entra sends); the filter form gets 400 `invalidPath`.
    ValueArray,
    /// Both forms.
    #[default]
    Both,
}

/// What a successful PATCH answers (Genesys API description, patchScimV2User:
/// 200 with the resource; scim2-server and RFC 7644 §3.5.2 also allow 204).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PatchReturns {
    /// 200 with the changed resource.
    #[default]
    #[value(name = "200")]
    Ok200,
    /// 204 without a body (ETag header still sent).
    #[value(name = "204")]
    NoContent204,
}

/// How an `If-Match` mismatch is answered (the API description names both 409
/// and 400 `invalidVers`; RFC 7644 §3.14 says 412).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum VersionMismatch {
    /// 409 with a ScimError (the API description's responses list).
    #[default]
    Conflict,
    /// 400 ScimError with `scimType: invalidVers` (the API description's
    /// parameter text).
    InvalidVers,
    /// 412 ScimError (RFC 7644 §3.14; scim2-server).
    Precondition,
}

/// The body of a 404 for an unknown user or group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NotFoundBody {
    /// Platform ErrorBody, `code: not.found` (the API description).
    #[default]
    Platform,
    /// ScimError with `status: "404"` (RFC 7644 §3.12).
    Scim,
}

/// What a list request with `count` over 25 and neither `attributes` nor
/// `excludedAttributes` gets (API description, getScimV2Users `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LargePage {
    /// 429 with a platform ErrorBody (`too.many.requests`) and no `Retry-After`:
    /// retrying the same request cannot help.
    #[default]
    Reject,
    /// Serve at most 25 (RFC 7644 §3.4.2.4 lets a server return fewer).
    Clamp,
}

/// Every switch of the simulator. `Default` is a faithful, fault-free Genesys
/// Cloud with an empty directory and no clients.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The initial directory.
    pub seed: Seed,
    /// Clients the token endpoint accepts.
    pub clients: Vec<SimClient>,
    /// `expires_in` of issued tokens (Genesys: per OAuth client, default 86400 s).
    /// Zero issues tokens that are already expired.
    pub token_lifetime: Duration,
    /// Users whose change (PATCH/PUT/DELETE, or removal from a group) needs an
    /// elevated client; others get 403 `missing.any.permissions`.
    pub requires_elevated: BTreeSet<String>,
    /// Users whose change gets 403 `not.authorized` for every client until
    /// `POST /_sim/allow/{id}`.
    pub denied: BTreeSet<String>,
    /// SCIM requests allowed per OAuth client per fixed window; `None` for no
    /// limit. When set, every SCIM response to an authenticated client carries
    /// `inin-ratelimit-count|allowed|reset`; requests without a valid token (401)
    /// and token requests are neither limited nor counted against it.
    pub rate_limit_per_minute: Option<NonZeroU32>,
    /// Length of the fixed rate-limit window (Genesys: one minute). Shorter in
    /// tests so a 429's `Retry-After` is short.
    pub rate_limit_window: Duration,
    /// Shape of `Retry-After` on a 429.
    pub retry_after: RetryAfterShape,
    /// Mean added latency per request (token and SCIM; not `/_sim/*`); each
    /// request sleeps uniformly between half and one and a half times this.
    pub latency: Duration,
    /// Share (0.0–1.0) of authenticated SCIM requests answered 500 or 503 (half
    /// each) instead of being served; the token endpoint is not affected. An
    /// injected error changes no state.
    pub error_rate: f64,
    /// 200 with the resource, or 204, after a successful PATCH (users and groups).
    pub patch_returns: PatchReturns,
    /// Answer a PATCH of `active` as if it worked but leave the user as it was.
    pub ignore_active_patch: bool,
    /// Which member removal form group PATCH accepts.
    pub group_remove_form: GroupRemoveForm,
    /// Leave `groups` out of user resources (as scim2-server does).
    pub omit_user_groups: bool,
    /// How an `If-Match` mismatch is answered.
    pub version_mismatch: VersionMismatch,
    /// Body shape of a 404 for an unknown resource id.
    pub not_found_body: NotFoundBody,
    /// What `count` > 25 without attribute trimming gets.
    pub large_page: LargePage,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: Seed::default(),
            clients: Vec::new(),
            token_lifetime: Duration::from_secs(86_400),
            requires_elevated: BTreeSet::new(),
            denied: BTreeSet::new(),
            rate_limit_per_minute: None,
            rate_limit_window: Duration::from_secs(60),
            retry_after: RetryAfterShape::default(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            patch_returns: PatchReturns::default(),
            ignore_active_patch: false,
            group_remove_form: GroupRemoveForm::default(),
            omit_user_groups: false,
            version_mismatch: VersionMismatch::default(),
            not_found_body: NotFoundBody::default(),
            large_page: LargePage::default(),
        }
    }
}

impl SimConfig {
    /// The default configuration seeded from a JSON seed file (see [`Seed`] for
    /// the format). Errors: [`SimError::SeedRead`], [`SimError::SeedParse`],
    /// [`SimError::SeedInvalid`].
    pub fn from_seed_file(path: impl AsRef<Path>) -> Result<Self, SimError> {
        Ok(Self::default().with_seed(Seed::from_file(path)?))
    }

    /// Replaces the seed.
    pub fn with_seed(mut self, seed: Seed) -> Self {
        self.seed = seed;
        self
    }

    /// Adds a (non-elevated) client.
    pub fn with_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.clients.push(SimClient {
            id: id.into(),
            secret: SecretString::from(secret.into()),
            elevated: false,
        });
        self
    }

    /// Adds an elevated client.
    pub fn with_elevated_client(
        mut self,
        id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.clients.push(SimClient {
            id: id.into(),
            secret: SecretString::from(secret.into()),
            elevated: true,
        });
        self
    }

    /// Marks a user id as changeable only by an elevated client.
    pub fn with_requires_elevated(mut self, user_id: impl Into<String>) -> Self {
        self.requires_elevated.insert(user_id.into());
        self
    }

    /// Marks a user id as refused (403) to every client until allowed.
    pub fn with_denied(mut self, user_id: impl Into<String>) -> Self {
        self.denied.insert(user_id.into());
        self
    }

    /// Sets the rate limit: `per_window` SCIM requests per client per `window`.
    /// A zero `per_window` removes the limit.
    pub fn with_rate_limit(mut self, per_window: u32, window: Duration) -> Self {
        self.rate_limit_per_minute = NonZeroU32::new(per_window);
        self.rate_limit_window = window;
        self
    }

    /// The latency as a sleep drawn for one request: uniform in
    /// `[latency/2, 3·latency/2]`, so the mean is `latency`.
    pub(crate) fn draw_latency(&self) -> Duration {
        if self.latency.is_zero() {
            return Duration::ZERO;
        }
        let factor: f64 = rand::random_range(0.5..=1.5);
        self.latency.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_draws_stay_within_half_and_one_and_a_half() {
        let cfg = SimConfig {
            latency: Duration::from_millis(100),
            ..SimConfig::default()
        };
        for _ in 0..1000 {
            let d = cfg.draw_latency();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
        }
        assert_eq!(SimConfig::default().draw_latency(), Duration::ZERO);
    }

    #[test]
    fn client_debug_hides_secret() {
        let cfg = SimConfig::default().with_client("primary", "hunter2-secret");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
