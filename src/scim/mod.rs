//! The SCIM 2.0 client (RFC 7643, RFC 7644) and the OAuth token provider: how to
//! ask a SCIM server — Genesys Cloud, its simulator, or any other — to read,
//! deactivate and ungroup one user, and how to survive its refusals (401, 403,
//! 429, 5xx) within a deadline.
//!
//! Knows nothing about queues, manifests or the audit store, and makes no
//! decision about a person (identity checks, outcomes): that is the engine's.
//!
//! - [`client`]: [`ScimClient`] and the per-termination [`Session`].
//! - [`auth`]: OAuth client-credentials tokens (single flight, generations).
//! - [`model`]: the SCIM resource fields read.
//! - [`filter`]: filter expressions and their encoding.
//! - [`patch`]: the PATCH bodies sent.
//! - [`retry`]: `Retry-After` and `inin-ratelimit-*` parsing.
//! - [`error`]: [`ScimError`], [`AuthError`], server error bodies.

pub mod auth;
pub mod client;
pub mod error;
pub mod filter;
pub mod model;
pub mod patch;
pub mod retry;

pub use auth::{TokenOptions, TokenProvider};
pub use client::{ClientOptions, Evidence, Patched, ScimClient, Session};
pub use error::{AuthError, ScimError, ServerDetail};
pub use model::{Reference, ScimGroup, ScimUser};
pub use patch::{PatchOp, RemoveForm};
