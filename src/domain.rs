//! Parsed types that every stage shares: identifiers, the termination record, its
//! idempotency key, the credential that acted and the terminal outcome.
//!
//! Everything here is built by `parse`/`TryFrom` at an edge (manifest, message,
//! command line) so that inner stages never see a raw string where an id belongs.
//! This module does no I/O.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a raw value could not become a domain type. Each variant names the field and
/// carries the offending value (never a secret: these are identifiers and dates).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// `externalId` was missing, empty or contained control characters.
    #[error("externalId {value:?} is invalid: {reason}")]
    ExternalId { value: String, reason: &'static str },
    /// `userId` cannot be a single SCIM path segment.
    #[error("userId {value:?} is invalid: {reason}")]
    UserId { value: String, reason: &'static str },
    /// `terminationDate` is neither `YYYY-MM-DD` nor an RFC 3339 date-time.
    #[error("terminationDate {value:?} is invalid: {reason}")]
    TerminationDate { value: String, reason: &'static str },
}

/// Longest identifier accepted (characters). Genesys ids are 36-character UUIDs;
/// HR externalIds are short. A longer value is a producer bug, not a person.
const MAX_ID_LEN: usize = 256;

/// The HR system's stable identifier for a person, matched against the SCIM
/// `externalId` attribute (RFC 7643 §3.1). Trimmed; non-empty; no control characters;
/// at most 256 characters. Case is preserved: SCIM says `externalId` is
/// case-exact.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExternalId(String);

impl ExternalId {
    /// Parses a raw externalId. Errors: [`DomainError::ExternalId`] when empty after
    /// trimming, longer than 256 characters, or containing control characters.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let value = raw.trim();
        let err = |reason| DomainError::ExternalId {
            value: raw.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(err("empty"));
        }
        if value.chars().count() > MAX_ID_LEN {
            return Err(err("longer than 256 characters"));
        }
        if value.chars().any(char::is_control) {
            return Err(err("contains a control character"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The identifier as sent to the SCIM server.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ExternalId {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ExternalId> for String {
    fn from(value: ExternalId) -> Self {
        value.0
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExternalId({:?})", self.0)
    }
}

/// A SCIM resource id (RFC 7643 §3.1 `id`), for Genesys a user's UUID. It travels
/// as one percent-encoded path segment, so anything that could change the path is
/// refused here, before any request exists: empty, `.`/`..`, `/`, `\`, `?`, `#`,
/// `%`, whitespace and control characters, more than 256 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScimUserId(String);

impl ScimUserId {
    /// Parses a raw id. Errors: [`DomainError::UserId`] with the reason.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let err = |reason| DomainError::UserId {
            value: raw.to_owned(),
            reason,
        };
        if raw.is_empty() {
            return Err(err("empty"));
        }
        if raw == "." || raw == ".." || raw.contains("..") {
            return Err(err("contains a dot segment"));
        }
        if raw.chars().count() > MAX_ID_LEN {
            return Err(err("longer than 256 characters"));
        }
        if raw.chars().any(|c| {
            c.is_control() || c.is_whitespace() || matches!(c, '/' | '\\' | '?' | '#' | '%')
        }) {
            return Err(err("contains a character that cannot be in a path segment"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as the server knows it (not yet percent-encoded).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ScimUserId {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ScimUserId> for String {
    fn from(value: ScimUserId) -> Self {
        value.0
    }
}

impl fmt::Display for ScimUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ScimUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScimUserId({:?})", self.0)
    }
}

/// When a date-only termination takes effect within its day
/// (`TERMINATION_EFFECTIVE_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EffectiveAt {
    /// 00:00:00 in the HR time zone on that date (the default).
    #[default]
    StartOfDay,
    /// 23:59:59 in the HR time zone on that date.
    EndOfDay,
}

/// The earliest year a `terminationDate` may name: earlier dates are refused as
/// placeholders (`0000-01-01`, `1900-01-01`), not taken as long past.
pub const MIN_TERMINATION_YEAR: i32 = 1970;

/// The manifest's `terminationDate`: a calendar date in the HR time zone, or an
/// RFC 3339 date-time with its own offset, taken as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TerminationDate {
    /// `YYYY-MM-DD`.
    Date(NaiveDate),
    /// RFC 3339, e.g. `2026-03-02T17:00:00-05:00`.
    DateTime(DateTime<FixedOffset>),
}

impl TerminationDate {
    /// Parses `YYYY-MM-DD` or an RFC 3339 date-time (a `Z` or numeric offset is
    /// required: a date-time without one is ambiguous). Anything else, including
    /// `03/02/2026` (month or day first?), is refused with
    /// [`DomainError::TerminationDate`].
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let value = raw.trim();
        let err = |reason| DomainError::TerminationDate {
            value: raw.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(err("empty"));
        }
        if value.contains('/') {
            // 03/02/2026 is 2 March in most of the world and 3 February in the US.
            return Err(err("ambiguous date format; use YYYY-MM-DD or RFC 3339"));
        }
        // An export that renders a missing date as 0000-01-01 or 1900-01-01 would
        // otherwise deactivate at once: nobody left before the epoch.
        let plausible = |year: i32| {
            if year < MIN_TERMINATION_YEAR {
                Err(err(
                    "implausible date (before 1970): a placeholder for a missing date?",
                ))
            } else {
                Ok(())
            }
        };
        if value.len() == 10 {
            let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map_err(|_| err("not a valid YYYY-MM-DD date"))?;
            plausible(date.year())?;
            return Ok(Self::Date(date));
        }
        if let Ok(dt) = DateTime::parse_from_rfc3339(value) {
            plausible(dt.year())?;
            return Ok(Self::DateTime(dt));
        }
        if value.contains('T') || value.contains(' ') {
            return Err(err(
                "not a valid RFC 3339 date-time such as 2026-03-02T17:00:00-05:00 \
                 (the time needs a Z or a numeric offset of at most ±23:59)",
            ));
        }
        Err(err("use YYYY-MM-DD or an RFC 3339 date-time"))
    }

    /// The instant this termination takes effect. A date means the start (or end) of
    /// that day in `tz`; where a DST gap removes that local time, the earliest valid
    /// instant after it is used.
    pub fn effective_at(&self, tz: Tz, at: EffectiveAt) -> DateTime<Utc> {
        match self {
            Self::DateTime(dt) => dt.with_timezone(&Utc),
            Self::Date(d) => {
                let time = match at {
                    EffectiveAt::StartOfDay => NaiveTime::MIN,
                    EffectiveAt::EndOfDay => {
                        NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(NaiveTime::MIN)
                    }
                };
                let local = d.and_time(time);
                match tz.from_local_datetime(&local) {
                    chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
                    chrono::LocalResult::Ambiguous(early, _) => early.with_timezone(&Utc),
                    // A DST gap: step forward minute by minute until the clock exists.
                    chrono::LocalResult::None => (1..=180)
                        .find_map(|m| {
                            tz.from_local_datetime(&(local + chrono::Duration::minutes(m)))
                                .earliest()
                        })
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_else(|| Utc.from_utc_datetime(&local)),
                }
            }
        }
    }

    /// The canonical text: `YYYY-MM-DD` or RFC 3339 with seconds.
    pub fn canonical(&self) -> String {
        match self {
            Self::Date(d) => d.format("%Y-%m-%d").to_string(),
            Self::DateTime(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }
    }
}

impl TryFrom<String> for TerminationDate {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TerminationDate> for String {
    fn from(value: TerminationDate) -> Self {
        value.canonical()
    }
}

impl fmt::Display for TerminationDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// What a manifest record asks for (manifest field / CSV column `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordAction {
    /// Deprovision the person at the effective time (the default).
    #[default]
    Terminate,
    /// The person was rehired (or the termination was withdrawn): any pending
    /// hold for this externalId is cancelled and no replay may act on an earlier
    /// termination. Never touches Genesys.
    Rehire,
}

impl RecordAction {
    /// Parses `terminate` or `rehire` (case-insensitive, trimmed; empty means
    /// `terminate`). Errors: the trimmed value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "terminate" | "termination" => Ok(Self::Terminate),
            "rehire" => Ok(Self::Rehire),
            other => Err(other.to_owned()),
        }
    }

    /// The lowercase name (also the audit `action` of a rehire row: `rehire`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminate => "terminate",
            Self::Rehire => "rehire",
        }
    }

    /// True for the default, so that messages of terminations keep their
    /// original shape (no `action` member).
    pub fn is_terminate(&self) -> bool {
        *self == Self::Terminate
    }
}

/// One validated manifest record (design.md, "Manifest record").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TerminationRecord {
    /// HR's identifier, matched against SCIM `externalId`.
    #[serde(rename = "externalId")]
    pub external_id: ExternalId,
    /// The Genesys user id, when HR knows it; cross-checked against `externalId`.
    #[serde(rename = "userId", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<ScimUserId>,
    /// When access must be gone.
    #[serde(rename = "terminationDate")]
    pub termination_date: TerminationDate,
    /// `terminate` (default, omitted from JSON) or `rehire`.
    #[serde(default, skip_serializing_if = "RecordAction::is_terminate")]
    pub action: RecordAction,
}

impl TerminationRecord {
    /// The idempotency key of this termination: the same person terminated on the
    /// same date is one termination, however often it is delivered or re-uploaded.
    /// A rehire has its own key ([`IdempotencyKey::derive_rehire`]), so that it
    /// never collides with the termination it reverses.
    pub fn idempotency_key(&self) -> IdempotencyKey {
        match self.action {
            RecordAction::Terminate => {
                IdempotencyKey::derive(&self.external_id, &self.termination_date)
            }
            RecordAction::Rehire => {
                IdempotencyKey::derive_rehire(&self.external_id, &self.termination_date)
            }
        }
    }
}

/// `sha256("v1\n" + externalId + "\n" + canonical terminationDate)` as 64 lowercase
/// hex digits. The version prefix lets the derivation change without colliding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Derives the key from the two fields that identify a termination.
    pub fn derive(external_id: &ExternalId, date: &TerminationDate) -> Self {
        let mut h = Sha256::new();
        h.update(b"v1\n");
        h.update(external_id.as_str().as_bytes());
        h.update(b"\n");
        h.update(date.canonical().as_bytes());
        Self(hex::encode(h.finalize()))
    }

    /// The key of a rehire record: `sha256("v1\nrehire\n" + externalId + "\n" +
    /// canonical date)`, distinct from every termination key.
    pub fn derive_rehire(external_id: &ExternalId, date: &TerminationDate) -> Self {
        let mut h = Sha256::new();
        h.update(b"v1\nrehire\n");
        h.update(external_id.as_str().as_bytes());
        h.update(b"\n");
        h.update(date.canonical().as_bytes());
        Self(hex::encode(h.finalize()))
    }

    /// Rebuilds a key read back from a message or the audit store. Errors when the
    /// text is not 64 lowercase hex digits (the value is returned as the error).
    pub fn from_hex(raw: &str) -> Result<Self, String> {
        if raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(raw.to_owned())
        }
    }

    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which OAuth client (or static token) made a change; recorded as evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// `PRIMARY_CLIENT_ID`.
    Primary,
    /// `ELEVATED_CLIENT_ID`, used only after a 403 to the primary client.
    Elevated,
    /// `SCIM_BEARER_TOKEN` against a generic SCIM 2.0 service.
    Static,
}

impl Credential {
    /// The lowercase name stored in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Elevated => "elevated",
            Self::Static => "static",
        }
    }
}

/// What happened to one termination (design.md, "Outcomes"). The first nine and
/// `Rescinded` are terminal; `Retrying`, `Scheduled`, `Held` and `DryRun` are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The account was active and is now inactive with no group memberships.
    Deactivated,
    /// The account was already inactive (any leftover groups were removed). Success.
    AlreadyInactive,
    /// No user has this id or externalId, among active or inactive users.
    NotFound,
    /// More than one user has this externalId; nothing was changed.
    Ambiguous,
    /// The given userId belongs to a user with a different externalId.
    IdentityMismatch,
    /// The user is on the protected list; nothing was changed.
    Protected,
    /// The record or message could not be parsed or validated.
    Invalid,
    /// Both the primary and the elevated credential were refused (403).
    Forbidden,
    /// A permanent failure (bad request, repeated 401, unverifiable end state, or
    /// transient failures beyond the retry budget).
    Failed,
    /// A transient failure; the message returns to the queue.
    Retrying,
    /// Not yet due; held until its effective time.
    Scheduled,
    /// Held by a safety rail (e.g. the mass-deactivation breaker) until approved.
    Held,
    /// A dry run: what would have been done, with nothing changed.
    DryRun,
    /// Withdrawn before it was carried out: a rehire record arrived for this
    /// externalId (the rehire's own row, and a row for each held termination it
    /// cancelled). Nothing was changed in Genesys. Terminal, not a success.
    Rescinded,
}

impl Outcome {
    /// Every outcome, in the order reports list them.
    pub const ALL: [Outcome; 14] = [
        Self::Deactivated,
        Self::AlreadyInactive,
        Self::NotFound,
        Self::Ambiguous,
        Self::IdentityMismatch,
        Self::Protected,
        Self::Invalid,
        Self::Forbidden,
        Self::Failed,
        Self::Retrying,
        Self::Scheduled,
        Self::Held,
        Self::DryRun,
        Self::Rescinded,
    ];

    /// The snake_case name used in the audit log, messages and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deactivated => "deactivated",
            Self::AlreadyInactive => "already_inactive",
            Self::NotFound => "not_found",
            Self::Ambiguous => "ambiguous",
            Self::IdentityMismatch => "identity_mismatch",
            Self::Protected => "protected",
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
            Self::Failed => "failed",
            Self::Retrying => "retrying",
            Self::Scheduled => "scheduled",
            Self::Held => "held",
            Self::DryRun => "dry_run",
            Self::Rescinded => "rescinded",
        }
    }

    /// Parses the snake_case name; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == raw)
    }

    /// True when no further attempt will be made for this termination.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::Retrying | Self::Scheduled | Self::Held | Self::DryRun
        )
    }

    /// True for the outcomes that mean access is gone (`deactivated`,
    /// `already_inactive`).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Deactivated | Self::AlreadyInactive)
    }

    /// True for terminal outcomes that go to the dead-letter queue with a reason.
    pub fn is_dead_lettered(self) -> bool {
        matches!(
            self,
            Self::Ambiguous
                | Self::IdentityMismatch
                | Self::Invalid
                | Self::Forbidden
                | Self::Failed
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// README, "Rehires": within one manifest, whether the termination (record
/// `termination_index`, effective `termination_at`) stands after a rehire of the
/// same person (record `rehire_index`, effective `rehire_at`): only when it comes
/// later in the file and takes effect after the rehire. The rule the dispatcher
/// (`manifest::RehireIndex`) and the audit (`audit::ManifestRecord`) share.
pub fn stands_after_rehire(
    termination_index: u64,
    termination_at: DateTime<Utc>,
    rehire_index: u64,
    rehire_at: DateTime<Utc>,
) -> bool {
    termination_index > rehire_index && termination_at > rehire_at
}

/// A rehire record later in, or dated at or after, the same manifest's
/// termination of that person: the dispatcher finds it while reading the whole
/// file, so that the termination is withdrawn whichever message a worker handles
/// first (README, "Rehires"). Carried in the termination message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SameManifestRehire {
    /// The rehire's zero-based record index in the manifest.
    pub index: u64,
    /// When the rehire takes effect (UTC); `None` when the rehire record was
    /// rejected (e.g. an unreadable date): the termination is withdrawn until
    /// HR sends a corrected file.
    pub effective_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_refuses_path_changing_values() {
        for bad in [
            "", ".", "..", "a/b", "../x", "a\\b", "a?b", "a#b", "a%2fb", "a b", "a\nb",
        ] {
            assert!(ScimUserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ScimUserId::parse("8a4b1c2d-0000-4000-8000-000000000001").is_ok());
    }

    #[test]
    fn external_id_is_trimmed_and_case_exact() {
        let id = ExternalId::parse("  Emp\"01\\ é+x ").unwrap();
        assert_eq!(id.as_str(), "Emp\"01\\ é+x");
        assert!(ExternalId::parse("   ").is_err());
        assert!(ExternalId::parse("a\u{0}b").is_err());
    }

    #[test]
    fn termination_date_forms() {
        assert!(matches!(
            TerminationDate::parse("2026-03-02"),
            Ok(TerminationDate::Date(_))
        ));
        assert!(matches!(
            TerminationDate::parse("2026-03-02T17:00:00-05:00"),
            Ok(TerminationDate::DateTime(_))
        ));
        for bad in [
            "03/02/2026",
            "2026-02-30",
            "2026-03-02T17:00:00",
            "tomorrow",
            "",
        ] {
            assert!(TerminationDate::parse(bad).is_err(), "{bad:?} accepted");
        }
        for placeholder in ["0000-01-01", "1900-01-01", "1969-12-31T23:00:00Z"] {
            let err = TerminationDate::parse(placeholder).unwrap_err().to_string();
            assert!(err.contains("placeholder"), "{placeholder:?}: {err}");
        }
        assert!(TerminationDate::parse("1970-01-01").is_ok());
        let err = TerminationDate::parse("2026-01-15T10:00:00+25:00")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid RFC 3339 date-time"), "{err}");
    }

    #[test]
    fn date_only_is_start_of_day_in_hr_zone() {
        let d = TerminationDate::parse("2026-03-02").unwrap();
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            d.effective_at(ny, EffectiveAt::StartOfDay).to_rfc3339(),
            "2026-03-02T05:00:00+00:00"
        );
        assert_eq!(
            d.effective_at(ny, EffectiveAt::EndOfDay).to_rfc3339(),
            "2026-03-03T04:59:59+00:00"
        );
    }

    #[test]
    fn idempotency_key_is_stable_and_date_sensitive() {
        let e = ExternalId::parse("E1").unwrap();
        let a = IdempotencyKey::derive(&e, &TerminationDate::parse("2026-03-02").unwrap());
        let b = IdempotencyKey::derive(&e, &TerminationDate::parse(" 2026-03-02 ").unwrap());
        let c = IdempotencyKey::derive(&e, &TerminationDate::parse("2026-03-03").unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(IdempotencyKey::from_hex(a.as_str()), Ok(a));
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}
