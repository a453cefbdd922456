//! The Genesys Cloud SCIM simulator (`deprovision simulate`, `run --sandbox`, and
//! the integration tests): an axum server that answers `/oauth/token` and
//! `/api/v2/scim/v2/...` the way Genesys Cloud's API description
//! (`shared/reference/genesys-scim-openapi.yml`) and `shared/genesys.md` say it
//! does, with switches for every behaviour those sources leave open and for the
//! faults production shows (429 storms, 5xx, latency, 403 for protected users).
//!
//! It owns its in-memory directory (users, groups, memberships held on groups),
//! its token table and its request statistics. It must not depend on the
//! project's SCIM client, engine or queues: it is the independent party those are
//! tested against, so it shares no code with them beyond the domain id types used
//! to seed it.
//!
//! Files, in request order: [`config`](SimConfig) (switches), `seed` (initial
//! directory), `server` (router, [`RunningSim`]), `switches` (correlation id,
//! latency, auth, rate limit, injected errors), `oauth` (token endpoint), `users`
//! and `groups` (resources), `listing` (paging, attribute projection, the
//! 25-per-page rule), `filter` and `patch` (RFC 7644 filter and PatchOp),
//! `state` (the directory), `errors` (ScimError and platform ErrorBody),
//! `discovery` (serviceproviderconfig, schemas, resourcetypes), `control`
//! (`/_sim/*`), `stats` ([`SimStats`]).
//!
//! In-process use (tests, `run --sandbox`):
//!
//! ```no_run
//! # async fn demo() -> Result<(), deprovision::sim::SimError> {
//! use deprovision::sim::{RunningSim, Seed, SimConfig};
//! let config = SimConfig::default()
//!     .with_seed(Seed::generate(100, 5))
//!     .with_client("primary", "primary-secret")
//!     .with_elevated_client("elevated", "elevated-secret");
//! let sim = RunningSim::start(config, "127.0.0.1:0".parse().expect("an address")).await?;
//! let base = sim.base_url(); // both GENESYS_API_URL and GENESYS_LOGIN_URL
//! # let _ = base;
//! let user_patches = sim.stats().user_patches();
//! # let _ = user_patches;
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod control;
mod discovery;
mod errors;
mod filter;
mod groups;
mod listing;
mod oauth;
mod patch;
mod seed;
mod server;
mod state;
mod stats;
mod switches;
mod users;

pub use config::{
    GroupRemoveForm, LargePage, NotFoundBody, PatchReturns, RetryAfterShape, SimClient, SimConfig,
    VersionMismatch,
};
pub use seed::{Seed, SeedGroup, SeedGroupRef, SeedUser};
pub use server::{RunningSim, SimGroup, SimUser};
pub use stats::{ClientStats, KindStats, ResourceKind, SimStats, StateSummary};

use std::net::SocketAddr;
use std::path::PathBuf;

/// The SCIM base path under the API host (Genesys API description, `paths`).
pub const SCIM_BASE_PATH: &str = "/api/v2/scim/v2";

/// Why the simulator could not start or could not load its seed. Carries the
/// address or file concerned; never a client secret.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The seed file could not be read.
    #[error("cannot read seed file {path}: {source}")]
    SeedRead {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The seed file is not the expected JSON.
    #[error("seed file {path} is not valid seed JSON: {source}")]
    SeedParse {
        /// The file.
        path: PathBuf,
        /// serde_json's reason, with line and column.
        source: serde_json::Error,
    },
    /// The seed is well-formed JSON but cannot be loaded (e.g. two users share an
    /// id).
    #[error("seed is invalid: {reason}")]
    SeedInvalid {
        /// What is wrong, naming the user or group.
        reason: String,
    },
}
