//! `deprovision`: removes terminated employees' access to Genesys Cloud through
//! SCIM 2.0, fast, safely, and with an append-only audit.
//!
//! The modules follow one termination's path, in reading order:
//!
//! - [`config`]: typed settings from flags, environment and `.env`; the only reader
//!   of the environment.
//! - [`telemetry`]: logs (text or JSON lines), OpenTelemetry traces and metrics
//!   over OTLP, `/metrics`, and the pipeline's spans.
//! - [`domain`]: parsed types every stage shares (ids, record, idempotency key,
//!   outcome).
//! - [`manifest`]: streams an HR manifest (JSON array, NDJSON, CSV) into validated
//!   records.
//! - [`dispatch`]: turns S3 event notifications into one queue message per
//!   termination.
//! - [`breaker`]: the mass-deactivation breaker: holds an over-limit manifest
//!   whole until `approve` or `reject`.
//! - [`signing`]: HMAC-SHA256 signatures on termination messages (key rotation).
//! - [`queue`]: the message source/sink abstraction: SQS, and an in-process queue
//!   for the embedded `run`.
//! - [`consume`]: the worker loop: receive, deprovision, audit, then delete or
//!   dead-letter.
//! - [`release`]: moves durable holds (future-dated terminations) back onto the
//!   terminations queue when they fall due.
//! - [`clock`]: the injectable wall clock behind every "is it due yet" decision.
//! - [`engine`]: deprovisions one person: resolve, deactivate, strip groups,
//!   verify, classify.
//! - [`protect`]: protected accounts (`PROTECTED_USERS`, `PROTECTED_GROUPS`) the
//!   engine never deactivates.
//! - [`scim`]: the SCIM 2.0 client and the OAuth token provider.
//! - [`limit`]: the shared, adaptive request-rate limiter.
//! - [`audit`]: the append-only, hash-chained audit store (PostgreSQL, SQLite),
//!   and the cross-process claims on a person.
//! - [`plan`]: per-person results of a run and a dry run's reviewable plan.
//! - [`report`]: the weekly compliance summary, the evidence export and the list
//!   of pending holds.
//! - [`sim`]: the Genesys Cloud SCIM simulator (`deprovision simulate`).

pub mod audit;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod consume;
pub mod dispatch;
pub mod domain;
pub mod engine;
pub mod limit;
pub mod manifest;
pub mod plan;
pub mod protect;
pub mod queue;
pub mod release;
pub mod report;
pub mod scim;
pub mod signing;
pub mod sim;
pub mod telemetry;
