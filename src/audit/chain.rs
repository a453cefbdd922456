//! The tamper-evident hash chain over `scim_audit_log`: the canonical content of a
//! row, its SHA-256, and the walk that checks a sequence of stored rows. Pure
//! functions only: this file does no I/O and knows neither backend; the backends
//! hand it [`RowContent`] values and write what it computes.
//!
//! ```text
//! row_hash = lowercase_hex(sha256(prev_hash_hex || canonical_json(content)))
//! ```
//!
//! `prev_hash_hex` is the previous row's `row_hash` as its 64 ASCII hex digits (the
//! first row uses [`GENESIS_HASH`], 64 zeros); `canonical_json` is the compact JSON of
//! [`RowContent`]: keys in lexicographic order, every key present (`null` when
//! absent), no insignificant whitespace, integers only, timestamps as RFC 3339 UTC
//! with exactly three fractional digits and `Z`. An auditor can recompute one row
//! with `printf '%s%s' "$prev" "$json" | sha256sum`.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::AuditEntry;

/// The `prev_hash` of the first row: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Everything a row stores except its two hashes, exactly as stored, in the order
/// the canonical JSON lists it (lexicographic by key). Both backends bind these
/// values on insert and rebuild them on read, so the hash covers what the database
/// holds, not what the caller passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowContent {
    /// `action`.
    pub action: String,
    /// `actor`.
    pub actor: Option<String>,
    /// `attempt` (the delivery attempt).
    pub attempt: i64,
    /// `correlation_ids`, in response order.
    pub correlation_ids: Vec<String>,
    /// `created_at`, RFC 3339 UTC, milliseconds.
    pub created_at: String,
    /// `credential`.
    pub credential: Option<String>,
    /// `duration_ms`.
    pub duration_ms: Option<i64>,
    /// `effective_at`, RFC 3339 UTC, milliseconds.
    pub effective_at: Option<String>,
    /// `error_message`.
    pub error_message: Option<String>,
    /// `external_id`.
    pub external_id: Option<String>,
    /// `groups_removed`, in removal order.
    pub groups_removed: Vec<String>,
    /// The row id: part of the content so that renumbering rows breaks the chain.
    pub id: i64,
    /// `idempotency_key`.
    pub idempotency_key: Option<String>,
    /// `manifest_bucket`.
    pub manifest_bucket: Option<String>,
    /// `manifest_index`.
    pub manifest_index: Option<i64>,
    /// `manifest_key`.
    pub manifest_key: Option<String>,
    /// `manifest_version`.
    pub manifest_version: Option<String>,
    /// `outcome`.
    pub outcome: String,
    /// `sqs_message_id`.
    pub sqs_message_id: Option<String>,
    /// `status_code`.
    pub status_code: Option<i64>,
    /// `success`.
    pub success: bool,
    /// `termination_first_at`: `created_at` of the first row of this row's
    /// termination (its own for a first row); `None` for manifest and operator rows.
    pub termination_first_at: Option<String>,
    /// `termination_first_id`: the id of that first row; the reports group by it.
    pub termination_first_id: Option<i64>,
    /// `user_id`.
    pub user_id: Option<String>,
}

/// Truncates an instant to the millisecond, the precision both backends store
/// (PostgreSQL keeps microseconds, the SQLite text form keeps milliseconds); the
/// store applies it before hashing so a read-back row hashes the same.
pub fn to_stored_instant(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(3)
}

/// The canonical text of an instant: RFC 3339 in UTC, three fractional digits, `Z`
/// (e.g. `2026-03-02T04:30:00.000Z`). Lexicographic order equals time order for
/// years 0000–9999, which is what lets SQLite compare it as text.
pub fn instant_text(at: DateTime<Utc>) -> String {
    to_stored_instant(at).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The text of an instant read back from a backend: like [`instant_text`], but an
/// instant with sub-millisecond digits (which the store never writes) keeps them, so
/// an edit below the millisecond still changes the hash.
pub fn read_back_text(at: DateTime<Utc>) -> String {
    if to_stored_instant(at) == at {
        instant_text(at)
    } else {
        at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

/// PostgreSQL text cannot hold U+0000; a NUL in a server's error detail must not
/// make the audit write fail (and the termination retry forever), so it is replaced
/// by U+FFFD on both backends before storing and hashing.
pub(crate) fn clean(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

fn clean_opt(s: Option<&str>) -> Option<String> {
    s.map(clean)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl RowContent {
    /// The content stored for `entry` as row `id` created at `created_at`, whose
    /// termination's first row is `first` (id and `created_at`; `None` when this row
    /// is the first): instants truncated to milliseconds, NULs replaced, unsigned
    /// numbers clamped to `i64`. Rows that are not about a termination (manifest,
    /// operator actions) get no termination fields.
    pub fn from_entry(
        entry: &AuditEntry,
        id: i64,
        created_at: DateTime<Utc>,
        first: Option<(i64, DateTime<Utc>)>,
    ) -> Self {
        let manifest = entry.manifest.as_ref();
        let (first_id, first_at) = match super::first_row_lookup(entry) {
            None => (None, None),
            Some(_) => {
                let (first_id, first_at) = first.unwrap_or((id, created_at));
                (Some(first_id), Some(instant_text(first_at)))
            }
        };
        Self {
            action: clean(&entry.action),
            actor: clean_opt(entry.actor.as_deref()),
            attempt: i64::from(entry.attempt),
            correlation_ids: entry.correlation_ids.iter().map(|s| clean(s)).collect(),
            created_at: instant_text(created_at),
            credential: entry.credential.map(|c| c.as_str().to_owned()),
            duration_ms: entry.duration_ms.map(clamp_i64),
            effective_at: entry.effective_at.map(instant_text),
            error_message: clean_opt(entry.error_message.as_deref()),
            external_id: clean_opt(entry.external_id.as_deref()),
            groups_removed: entry.groups_removed.iter().map(|s| clean(s)).collect(),
            id,
            idempotency_key: entry
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str().to_owned()),
            manifest_bucket: manifest.map(|m| clean(&m.bucket)),
            manifest_index: manifest.and_then(|m| m.index).map(clamp_i64),
            manifest_key: manifest.map(|m| clean(&m.key)),
            manifest_version: manifest.and_then(|m| clean_opt(m.version.as_deref())),
            outcome: entry.outcome.as_str().to_owned(),
            sqs_message_id: clean_opt(entry.sqs_message_id.as_deref()),
            status_code: entry.status_code.map(i64::from),
            success: entry.success,
            termination_first_at: first_at,
            termination_first_id: first_id,
            user_id: clean_opt(entry.user_id.as_deref()),
        }
    }

    /// The canonical JSON (see the module docs). Serialising plain strings, integers
    /// and booleans cannot fail; should it ever, the text of the error is hashed
    /// instead, which can never match a stored hash and so shows up in `verify`.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("unserialisable: {e}"))
    }

    /// `sha256(prev_hash || canonical_json)` as 64 lowercase hex digits.
    pub fn hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(self.canonical_json().as_bytes());
        hex::encode(h.finalize())
    }
}

/// One row as read back for verification: its content and the two stored hashes.
#[derive(Debug, Clone)]
pub struct StoredChainRow {
    /// The stored content.
    pub content: RowContent,
    /// The stored `prev_hash`.
    pub prev_hash: String,
    /// The stored `row_hash`.
    pub row_hash: String,
}

/// Why a row fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BreakReason {
    /// The row's `prev_hash` is not the previous row's `row_hash`: a row before it
    /// was removed or inserted, or the rows were reordered.
    PrevHashMismatch {
        /// The previous row's `row_hash` (or the genesis hash).
        expected: String,
        /// What this row stores.
        found: String,
    },
    /// The row's stored values cannot be read back into their types (e.g. a JSON
    /// column edited to hold numbers): the row was edited outside the store.
    Unreadable {
        /// The driver's message.
        detail: String,
    },
    /// The row's content does not hash to its `row_hash`: the row was edited.
    ContentHashMismatch {
        /// The hash recomputed from the stored content.
        expected: String,
        /// What this row stores.
        found: String,
    },
}

impl std::fmt::Display for BreakReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PrevHashMismatch { expected, found } => write!(
                f,
                "prev_hash {found} does not match the previous row's row_hash {expected} (a row was removed, inserted or reordered before it)"
            ),
            Self::Unreadable { detail } => {
                write!(f, "stored values cannot be read back ({detail})")
            }
            Self::ContentHashMismatch { expected, found } => write!(
                f,
                "content hashes to {expected} but row_hash is {found} (the row was edited)"
            ),
        }
    }
}

/// A row that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenRow {
    /// The row id.
    pub id: i64,
    /// What is wrong with it.
    pub reason: BreakReason,
}

/// The result of walking the whole chain in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct VerifyReport {
    /// Rows walked.
    pub rows: u64,
    /// The last row's id and `row_hash`: record it elsewhere (a ticket, a signed
    /// e-mail) to detect later removal of rows from the end, which a hash chain alone
    /// cannot see.
    pub head: Option<(i64, String)>,
    /// Broken rows in id order, at most [`MAX_BROKEN_LISTED`] of them.
    pub broken: Vec<BrokenRow>,
    /// How many rows are broken in all (may exceed `broken.len()`).
    pub broken_total: u64,
    /// Guards the database must have but lacks: append-only triggers (and, on
    /// PostgreSQL, the weekly report summary's trigger, functions and table)
    /// missing, disabled or altered, e.g. `scim_audit_log_no_delete (missing)`.
    /// Filled by the store, not by the walk; `deprovision migrate` restores them.
    pub guards_missing: Vec<String>,
    /// PostgreSQL: terminations whose weekly-report summary row disagrees with
    /// their audit rows (always 0 on SQLite, which has no summary).
    pub summary_mismatches: u64,
    /// The smallest termination id among those.
    pub summary_first_mismatch: Option<i64>,
}

/// How many broken rows a [`VerifyReport`] lists by id.
pub const MAX_BROKEN_LISTED: usize = 100;

impl VerifyReport {
    /// True when every row links to its predecessor and hashes to its `row_hash`.
    pub fn is_intact(&self) -> bool {
        self.broken_total == 0
    }

    /// True when the chain is intact, every guard is in place and the report
    /// summary agrees with the log: what `audit verify` exits 0 for.
    pub fn passes(&self) -> bool {
        self.is_intact() && self.guards_missing.is_empty() && self.summary_mismatches == 0
    }

    /// The first broken row, if any.
    pub fn first_broken(&self) -> Option<&BrokenRow> {
        self.broken.first()
    }
}

/// Walks rows given in id order. After a broken row the walk continues from that
/// row's stored `row_hash`, so one edited row is reported once rather than breaking
/// every row after it.
#[derive(Debug)]
pub struct ChainWalker {
    expected_prev: String,
    report: VerifyReport,
}

impl Default for ChainWalker {
    fn default() -> Self {
        Self {
            expected_prev: GENESIS_HASH.to_owned(),
            report: VerifyReport::default(),
        }
    }
}

impl ChainWalker {
    /// Checks the next row.
    pub fn push(&mut self, row: &StoredChainRow) {
        self.report.rows += 1;
        let reason = if row.prev_hash != self.expected_prev {
            Some(BreakReason::PrevHashMismatch {
                expected: self.expected_prev.clone(),
                found: row.prev_hash.clone(),
            })
        } else {
            let recomputed = row.content.hash(&row.prev_hash);
            (recomputed != row.row_hash).then(|| BreakReason::ContentHashMismatch {
                expected: recomputed,
                found: row.row_hash.clone(),
            })
        };
        if let Some(reason) = reason {
            self.broken(row.content.id, reason);
        }
        self.expected_prev = row.row_hash.clone();
        self.report.head = Some((row.content.id, row.row_hash.clone()));
    }

    /// Records a row whose values could not be decoded. The walk goes on from its
    /// stored `row_hash` when that could be read, else the next row is also
    /// reported (its predecessor's hash is unknown).
    pub fn push_unreadable(&mut self, id: i64, row_hash: Option<String>, detail: String) {
        self.report.rows += 1;
        self.broken(id, BreakReason::Unreadable { detail });
        self.expected_prev = row_hash.clone().unwrap_or_default();
        self.report.head = Some((id, row_hash.unwrap_or_default()));
    }

    fn broken(&mut self, id: i64, reason: BreakReason) {
        self.report.broken_total += 1;
        if self.report.broken.len() < MAX_BROKEN_LISTED {
            self.report.broken.push(BrokenRow { id, reason });
        }
    }

    /// The finished report.
    pub fn finish(self) -> VerifyReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Outcome;
    use chrono::TimeZone;

    fn entry() -> AuditEntry {
        AuditEntry {
            external_id: Some("E1\0x".into()),
            user_id: None,
            action: "deactivate".into(),
            status_code: Some(204),
            success: true,
            error_message: None,
            outcome: Outcome::Deactivated,
            credential: None,
            groups_removed: vec!["g1".into(), "g2".into()],
            attempt: 1,
            sqs_message_id: None,
            manifest: None,
            effective_at: None,
            correlation_ids: vec![],
            duration_ms: Some(u64::MAX),
            idempotency_key: None,
            actor: None,
        }
    }

    fn chain(n: i64) -> Vec<StoredChainRow> {
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 4, 30, 0).unwrap();
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|id| {
                let content = RowContent::from_entry(&entry(), id, at, None);
                let row_hash = content.hash(&prev);
                let row = StoredChainRow {
                    content,
                    prev_hash: prev.clone(),
                    row_hash: row_hash.clone(),
                };
                prev = row_hash;
                row
            })
            .collect()
    }

    fn walk(rows: &[StoredChainRow]) -> VerifyReport {
        let mut w = ChainWalker::default();
        rows.iter().for_each(|r| w.push(r));
        w.finish()
    }

    #[test]
    fn canonical_json_is_sorted_complete_and_normalised() {
        let at = Utc.timestamp_nanos(1_772_425_800_123_456_789);
        let c = RowContent::from_entry(&entry(), 7, at, Some((3, at)));
        let json = c.canonical_json();
        assert!(
            json.starts_with(r#"{"action":"deactivate","actor":null,"attempt":1,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""created_at":"2026-03-02T04:30:00.123Z""#),
            "{json}"
        );
        assert!(json.contains("\"external_id\":\"E1\u{FFFD}x\""), "{json}");
        assert!(
            json.contains(&format!(r#""duration_ms":{}"#, i64::MAX)),
            "{json}"
        );
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 24);
    }

    #[test]
    fn hash_matches_the_documented_formula() {
        let c = RowContent::from_entry(&entry(), 1, Utc.timestamp_opt(0, 0).unwrap(), None);
        let mut h = Sha256::new();
        h.update(format!("{GENESIS_HASH}{}", c.canonical_json()).as_bytes());
        assert_eq!(c.hash(GENESIS_HASH), hex::encode(h.finalize()));
    }

    #[test]
    fn intact_chain_verifies() {
        let r = walk(&chain(5));
        assert!(r.is_intact());
        assert_eq!(r.rows, 5);
        assert_eq!(r.head.as_ref().map(|h| h.0), Some(5));
    }

    #[test]
    fn an_edited_row_is_named_once() {
        let mut rows = chain(5);
        rows[2].content.success = false;
        let r = walk(&rows);
        assert_eq!(r.broken_total, 1);
        let first = r.first_broken().unwrap();
        assert_eq!(first.id, 3);
        assert!(matches!(
            first.reason,
            BreakReason::ContentHashMismatch { .. }
        ));
    }

    #[test]
    fn a_removed_row_breaks_its_successor() {
        let mut rows = chain(5);
        rows.remove(1);
        let r = walk(&rows);
        assert_eq!(r.first_broken().map(|b| b.id), Some(3));
        assert!(matches!(
            r.first_broken().unwrap().reason,
            BreakReason::PrevHashMismatch { .. }
        ));
    }
}
