//! Reads an HR termination manifest — a JSON array, NDJSON, or CSV with a header
//! row (design.md, "Manifest record") — as a stream of validated
//! [`TerminationRecord`]s, one [`Entry`] at a time, so memory does not grow with the
//! file: only the current record and one 24-byte fingerprint per distinct
//! termination (for collapsing duplicates) are held.
//!
//! The format is detected from the content (the first byte after an optional UTF-8
//! BOM and whitespace), with the file extension as a hint. A bad record is rejected
//! on its own with its index, line and reason; a file that cannot be parsed as a
//! whole (broken JSON syntax, a CSV without the required columns) is a
//! [`ManifestError`] with line and column. Callers that must enqueue nothing from
//! such a file run [`validate`] first and [`read`] second (two passes).
//!
//! This module does no network I/O, knows nothing about queues or the audit store,
//! and never decides anything about a person beyond "this record is well formed".

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize as _;
use serde::de::{DeserializeSeed, Deserializer as _, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::{
    DomainError, EffectiveAt, ExternalId, IdempotencyKey, RecordAction, SameManifestRehire,
    ScimUserId, TerminationDate, TerminationRecord,
};

/// Largest single record accepted, in bytes. A termination record is three short
/// fields; anything this large is a producer bug, and refusing it keeps memory
/// bounded whatever the file holds.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Most distinct terminations a manifest's duplicate check remembers (16 bytes
/// each, about 6 MiB in all), so that reading stays in bounded memory whatever
/// the file's size. Repeats among the first this many are collapsed here; a
/// repeat of a later one is enqueued and recognised by the consumer's
/// idempotency check against the audit (never a second deactivation or count).
pub const MAX_DEDUP_ENTRIES: usize = 1 << 18;

/// Most people with a rehire record that one manifest's [`RehireIndex`]
/// remembers (about 100 bytes each). Beyond it a rehire is still recorded when
/// handled, and withdraws what the consumer's audit checks can see; only the
/// guarantee that handling order does not matter is lost, and a warning says so.
pub const MAX_REHIRED_PEOPLE: usize = 1 << 16;

/// The rehire records of one manifest by externalId, gathered while the
/// dispatcher's first pass reads the whole file, so that the second pass can
/// tell each termination whether the file withdraws it (README, "Rehires"): a
/// rehire of the same person later in the file, or one effective at or after
/// the termination. Memory: at most [`MAX_REHIRED_PEOPLE`] people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RehireIndex {
    /// Per person: each rehire record's index and date (`None`: the record was
    /// rejected, so its date is unknown).
    by_person: HashMap<ExternalId, Vec<(u64, Option<TerminationDate>)>>,
    /// Rehire records of people not remembered (over the cap).
    pub overflow: u64,
}

impl RehireIndex {
    /// Notes `record` (record `index` of the file) if it is a rehire.
    pub fn note(&mut self, index: u64, record: &TerminationRecord) {
        if record.action == RecordAction::Rehire {
            self.insert(
                record.external_id.clone(),
                (index, Some(record.termination_date)),
            );
        }
    }

    /// Notes a rejected record (record `index`) that says `"action":
    /// "rehire"` for the raw externalId `external_id`: HR meant to rehire this
    /// person, so every termination of them in the file is withdrawn (fail
    /// closed) until a corrected file comes. An externalId that is itself
    /// invalid identifies nobody and is ignored.
    pub fn note_rejected(&mut self, index: u64, external_id: &str) {
        if let Ok(id) = ExternalId::parse(external_id) {
            self.insert(id, (index, None));
        }
    }

    fn insert(&mut self, id: ExternalId, rehire: (u64, Option<TerminationDate>)) {
        let known = self.by_person.len();
        match self.by_person.get_mut(&id) {
            Some(v) => v.push(rehire),
            None if known < MAX_REHIRED_PEOPLE => {
                self.by_person.insert(id, vec![rehire]);
            }
            None => self.overflow += 1,
        }
    }

    /// How many people have a rehire record remembered.
    pub fn people(&self) -> usize {
        self.by_person.len()
    }

    /// The rehire of this file that withdraws the termination `record` (record
    /// `index`, effective at `effective_at`), if any: a rejected rehire record
    /// of the person, else the latest in the file of those later in the file or
    /// effective at or after it. Dates resolve as the termination's do (`tz`,
    /// `at`). `None` for a rehire record itself.
    pub fn withdrawing(
        &self,
        index: u64,
        record: &TerminationRecord,
        effective_at: chrono::DateTime<chrono::Utc>,
        tz: chrono_tz::Tz,
        at: EffectiveAt,
    ) -> Option<SameManifestRehire> {
        if record.action != RecordAction::Terminate {
            return None;
        }
        let rehires = self.by_person.get(&record.external_id)?;
        let as_sent = |(i, date): &(u64, Option<TerminationDate>)| SameManifestRehire {
            index: *i,
            effective_at: date.map(|d| d.effective_at(tz, at)),
        };
        if let Some(rejected) = rehires.iter().find(|(_, date)| date.is_none()) {
            return Some(as_sent(rejected));
        }
        rehires
            .iter()
            .map(as_sent)
            .filter(|r| {
                r.effective_at.is_some_and(|rehire_at| {
                    !crate::domain::stands_after_rehire(index, effective_at, r.index, rehire_at)
                })
            })
            .max_by_key(|r| r.index)
    }
}

/// How much of the file start is examined to detect the format (bytes).
const SNIFF_BYTES: usize = 64 * 1024;

/// The three manifest layouts (design.md, "Manifest record").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON array of record objects (the seed's format).
    JsonArray,
    /// One JSON object per line (NDJSON / JSON Lines).
    Ndjson,
    /// Comma-separated values with a header row naming `externalId`,
    /// `terminationDate` and optionally `userId`.
    Csv,
}

impl Format {
    /// The format a file name's extension suggests (`.json`, `.ndjson`/`.jsonl`,
    /// `.csv`, case-insensitive), if any. Only a hint: the content decides.
    pub fn from_extension(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Self::JsonArray),
            "ndjson" | "jsonl" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    /// The lowercase name used in logs and the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JsonArray => "json",
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a record sits in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    /// Zero-based record index (array element, non-blank line, or data row).
    pub index: u64,
    /// One-based line on which the record starts.
    pub line: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {} (line {})", self.index, self.line)
    }
}

/// Why one record was rejected (the rest of the manifest is unaffected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record is not a JSON object (e.g. a number or an array).
    #[error("record is not an object but {found}")]
    NotAnObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// A required field is absent or null.
    #[error("{field} is missing")]
    Missing {
        /// The field name as the manifest spells it.
        field: &'static str,
    },
    /// A field has the wrong JSON type (identifiers and dates must be strings).
    #[error("{field} must be a string, found {found}")]
    NotAString {
        /// The field name.
        field: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// A CSV field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    NotUtf8 {
        /// The field name.
        field: &'static str,
    },
    /// `action` is neither `terminate` nor `rehire`.
    #[error("action {value:?} is not terminate or rehire")]
    UnknownAction {
        /// The value found (trimmed).
        value: String,
    },
    /// A field failed domain validation (the reason names the field and value).
    #[error(transparent)]
    Field(#[from] DomainError),
    /// A field appears twice in one record (e.g. two `terminationDate` keys, or
    /// `externalId` and `ExternalID`): which one HR meant cannot be known, and
    /// JSON parsers disagree on which wins, so the record is not acted on.
    #[error("{field} appears more than once in the record")]
    DuplicateField {
        /// The field name.
        field: &'static str,
    },
    /// The same externalId and terminationDate appeared earlier with a different
    /// userId: one of the two is wrong, so the later one is not acted on.
    #[error(
        "conflicts with an earlier record for the same externalId and terminationDate with a different userId"
    )]
    ConflictingDuplicate,
}

/// One item read from the manifest, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A well-formed record seen for the first time.
    Valid {
        /// Where it is.
        position: Position,
        /// The parsed record.
        record: TerminationRecord,
        /// Its idempotency key.
        key: IdempotencyKey,
    },
    /// A record rejected on its own.
    Rejected {
        /// Where it is.
        position: Position,
        /// The raw externalId when one could be read (for the audit row), even
        /// if it is itself the invalid field.
        external_id: Option<String>,
        /// Why.
        reason: RecordError,
        /// True when the record has an `action` other than a plain
        /// `terminate` (`rehire`, a misspelling, a non-string): HR may have meant
        /// to rehire this person, so the file's terminations of them are not
        /// acted on (fail closed).
        rehire: bool,
    },
    /// A repeat of an earlier record (same idempotency key and userId),
    /// collapsed into it.
    Duplicate {
        /// Where the repeat is.
        position: Position,
        /// The shared idempotency key.
        key: IdempotencyKey,
    },
}

/// Counts for one pass over a manifest. `records = valid + rejected + duplicates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Summary {
    /// The detected format, once known.
    pub format: Option<Format>,
    /// Records seen (array elements, non-blank lines, data rows).
    pub records: u64,
    /// Distinct well-formed terminations.
    pub valid: u64,
    /// Records rejected on their own (including conflicting duplicates).
    pub rejected: u64,
    /// Exact repeats collapsed into an earlier record.
    pub duplicates: u64,
}

impl Summary {
    /// True when every record is accounted for exactly once.
    pub fn reconciles(&self) -> bool {
        self.valid + self.rejected + self.duplicates == self.records
    }
}

/// The file as a whole cannot be used; nothing from it may be acted on.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading the bytes failed.
    #[error("cannot read the manifest: {0}")]
    Io(#[from] io::Error),
    /// The file holds no data at all (zero bytes, or only a BOM and whitespace).
    #[error("the manifest is empty (not even a JSON array or CSV header)")]
    Empty,
    /// The content is not parseable in its format.
    #[error("{format} syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// The format being parsed.
        format: Format,
        /// One-based line.
        line: u64,
        /// One-based column (bytes for JSON, field number for CSV).
        column: u64,
        /// What was wrong.
        message: String,
    },
    /// The CSV header row lacks a required column.
    #[error(
        "CSV header (line {line}) has no \"{column}\" column; found: {}",
        found.join(", ")
    )]
    MissingColumn {
        /// The header line.
        line: u64,
        /// The required column.
        column: &'static str,
        /// The columns present.
        found: Vec<String>,
    },
    /// The CSV header row names a required column twice.
    #[error(
        "CSV header (line {line}) has the \"{column}\" column more than once; found: {}",
        found.join(", ")
    )]
    DuplicateColumn {
        /// The header line.
        line: u64,
        /// The repeated column.
        column: &'static str,
        /// The columns present.
        found: Vec<String>,
    },
    /// The caller's callback asked to stop.
    #[error("reading stopped by the caller after {0} records")]
    Stopped(u64),
}

impl ManifestError {
    /// A short, single-line reason for the audit row.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Reads the whole manifest keeping nothing but counts, so that a file unusable
/// as a whole is known before anything is enqueued. Duplicates are not collapsed
/// (that needs memory per termination), so `duplicates` is 0 and repeats count as
/// `valid`; `records` equals what [`read`] will see. Same errors as [`read`].
pub fn validate<R: Read>(reader: R, hint: Option<Format>) -> Result<Summary, ManifestError> {
    let mut each = |_| ControlFlow::Continue(());
    run(reader, hint, None, &mut each)
}

/// Streams the manifest, calling `each` once per record in file order. Returns the
/// counts when the whole file was read. Errors: [`ManifestError`] when the file as
/// a whole is unusable (entries already delivered must then be disregarded:
/// run [`validate`] first when that matters), or [`ManifestError::Stopped`] when
/// `each` returned `Break`.
pub fn read<R: Read>(
    reader: R,
    hint: Option<Format>,
    each: impl FnMut(Entry) -> ControlFlow<()>,
) -> Result<Summary, ManifestError> {
    read_sized(reader, hint, 0, each)
}

/// [`read`], with room for `expected` distinct terminations reserved up front
/// (e.g. `records` from [`validate`]), so the duplicate set never grows by
/// rehashing (which briefly holds the old and the new table).
pub fn read_sized<R: Read>(
    reader: R,
    hint: Option<Format>,
    expected: usize,
    mut each: impl FnMut(Entry) -> ControlFlow<()>,
) -> Result<Summary, ManifestError> {
    run(reader, hint, Some(expected), &mut each)
}

fn run<R: Read, F: FnMut(Entry) -> ControlFlow<()>>(
    reader: R,
    hint: Option<Format>,
    dedup_capacity: Option<usize>,
    each: &mut F,
) -> Result<Summary, ManifestError> {
    let mut input = BufReader::with_capacity(SNIFF_BYTES, reader);
    skip_bom(&mut input)?;
    let format = sniff(&mut input, hint)?;
    let mut sink = Sink::new(format, each, dedup_capacity);
    match format {
        Format::JsonArray => read_json_array(input, &mut sink)?,
        Format::Ndjson => read_ndjson(input, &mut sink)?,
        Format::Csv => read_csv(input, &mut sink)?,
    }
    Ok(sink.summary)
}

fn skip_bom<R: BufRead>(input: &mut R) -> io::Result<()> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    // A BOM split across reads is impossible here: the buffer holds 64 KiB and
    // fill_buf returns at least what one read gives, which is ≥ 3 bytes for any
    // file that has a BOM, except on pathological readers; those just keep it.
    let buf = input.fill_buf()?;
    if buf.starts_with(BOM) {
        input.consume(BOM.len());
    }
    Ok(())
}

fn sniff<R: BufRead>(input: &mut R, hint: Option<Format>) -> Result<Format, ManifestError> {
    let buf = input.fill_buf()?;
    let Some((offset, &first)) = buf
        .iter()
        .enumerate()
        .find(|(_, b)| !b.is_ascii_whitespace())
    else {
        if buf.is_empty() {
            return Err(ManifestError::Empty);
        }
        // Whitespace only in the first buffer: empty if that is all there is.
        let len = buf.len();
        input.consume(len);
        return match input.fill_buf()?.is_empty() {
            true => Err(ManifestError::Empty),
            false => Err(ManifestError::Syntax {
                format: hint.unwrap_or(Format::Csv),
                line: 1,
                column: 1,
                message: "more than 64 KiB of leading whitespace".into(),
            }),
        };
    };
    match first {
        b'[' => Ok(Format::JsonArray),
        b'{' => Ok(Format::Ndjson),
        _ => match hint {
            Some(format @ (Format::JsonArray | Format::Ndjson)) => {
                let before = &buf[..offset];
                let line = 1 + before.iter().filter(|&&b| b == b'\n').count() as u64;
                let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count() as u64;
                Err(ManifestError::Syntax {
                    format,
                    line,
                    column,
                    message: format!(
                        "expected '[' (JSON array) or '{{' (NDJSON), found {:?}",
                        char::from(first)
                    ),
                })
            }
            _ => Ok(Format::Csv),
        },
    }
}

/// Turns raw records into entries: validation, duplicate collapsing, counting.
struct Sink<'a, F: FnMut(Entry) -> ControlFlow<()>> {
    each: &'a mut F,
    summary: Summary,
    /// Distinct terminations seen, when collapsing duplicates: 96 bits of the
    /// idempotency key → 32 bits of the userId's hash, 16 bytes an entry. An
    /// accidental 96-bit collision (which would wrongly drop a termination) is
    /// about 10^-17 likely at a million records.
    seen: Option<HashMap<Fingerprint, u32, BuildFingerprintHasher>>,
}

/// 96 bits of an idempotency key (itself a SHA-256), as three words so the
/// entry stays 4-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u32; 3]);

impl std::hash::Hash for Fingerprint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, _] = self.0;
        state.write_u64((u64::from(a) << 32) | u64::from(b));
    }
}

/// The key is already uniformly distributed: use its bits as the hash.
#[derive(Default, Clone, Copy)]
struct BuildFingerprintHasher;

#[derive(Default)]
struct FingerprintHasher(u64);

impl std::hash::BuildHasher for BuildFingerprintHasher {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher(0)
    }
}

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A record's fields as read, before validation.
#[derive(Default)]
struct RawFields {
    external_id: Option<Result<String, RecordError>>,
    user_id: Option<Result<String, RecordError>>,
    termination_date: Option<Result<String, RecordError>>,
    action: Option<Result<String, RecordError>>,
}

impl<'a, F: FnMut(Entry) -> ControlFlow<()>> Sink<'a, F> {
    fn new(format: Format, each: &'a mut F, dedup_capacity: Option<usize>) -> Self {
        Self {
            each,
            summary: Summary {
                format: Some(format),
                ..Summary::default()
            },
            seen: dedup_capacity.map(|n| {
                HashMap::with_capacity_and_hasher(n.min(MAX_DEDUP_ENTRIES), BuildFingerprintHasher)
            }),
        }
    }

    fn next_position(&self, line: u64) -> Position {
        Position {
            index: self.summary.records,
            line,
        }
    }

    fn push(&mut self, line: u64, fields: Result<RawFields, RecordError>) -> ControlFlow<()> {
        let position = self.next_position(line);
        self.summary.records += 1;
        let entry = match fields {
            Err(reason) => self.rejected(position, None, reason, false),
            Ok(fields) => self.classify(position, fields),
        };
        (self.each)(entry)
    }

    fn rejected(
        &mut self,
        position: Position,
        external_id: Option<String>,
        reason: RecordError,
        rehire: bool,
    ) -> Entry {
        self.summary.rejected += 1;
        Entry::Rejected {
            position,
            external_id,
            reason,
            rehire,
        }
    }

    fn classify(&mut self, position: Position, fields: RawFields) -> Entry {
        let raw_external_id = fields
            .external_id
            .as_ref()
            .and_then(|r| r.as_ref().ok())
            .cloned();
        // Fail closed: a rejected record whose action is there but is not a
        // plain "terminate" ("rehire", "re-hire", "rehired", an array, a repeated
        // key) may be HR's rehire of this person.
        let rehire = match &fields.action {
            Some(Ok(a)) => !a.trim().eq_ignore_ascii_case("terminate"),
            Some(Err(_)) => true,
            None => false,
        };
        match build_record(fields) {
            Err(reason) => self.rejected(position, raw_external_id, reason, rehire),
            Ok(record) => {
                let key = record.idempotency_key();
                let Some(seen) = &mut self.seen else {
                    self.summary.valid += 1;
                    return Entry::Valid {
                        position,
                        record,
                        key,
                    };
                };
                let fingerprint = fingerprint(&key);
                let user = user_hash(record.user_id.as_ref());
                match seen.get(&fingerprint) {
                    None => {
                        // Past the cap a repeat is enqueued again; the consumer's
                        // idempotency check makes it harmless (`already done`).
                        if seen.len() < MAX_DEDUP_ENTRIES {
                            seen.insert(fingerprint, user);
                        }
                        self.summary.valid += 1;
                        Entry::Valid {
                            position,
                            record,
                            key,
                        }
                    }
                    Some(&first_user) if first_user == user => {
                        self.summary.duplicates += 1;
                        Entry::Duplicate { position, key }
                    }
                    Some(_) => self.rejected(
                        position,
                        raw_external_id,
                        RecordError::ConflictingDuplicate,
                        rehire,
                    ),
                }
            }
        }
    }
}

fn fingerprint(key: &IdempotencyKey) -> Fingerprint {
    // The key is SHA-256 hex; its first 24 hex digits are 96 bits of it.
    let word = |i: usize| {
        key.as_str()
            .get(i * 8..i * 8 + 8)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    match (word(0), word(1), word(2)) {
        (Some(a), Some(b), Some(c)) => Fingerprint([a, b, c]),
        // Unreachable for derived keys; hash again rather than panic.
        _ => {
            let d = Sha256::digest(key.as_str().as_bytes());
            let w = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
            Fingerprint([w(0), w(4), w(8)])
        }
    }
}

fn user_hash(user: Option<&ScimUserId>) -> u32 {
    match user {
        None => 0,
        Some(u) => {
            let d = Sha256::digest(u.as_str().as_bytes());
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) | 1
        }
    }
}

fn build_record(fields: RawFields) -> Result<TerminationRecord, RecordError> {
    let external_id = fields.external_id.ok_or(RecordError::Missing {
        field: "externalId",
    })??;
    let external_id = ExternalId::parse(&external_id)?;
    let termination_date = fields.termination_date.ok_or(RecordError::Missing {
        field: "terminationDate",
    })??;
    let termination_date = TerminationDate::parse(&termination_date)?;
    let user_id = match fields.user_id.transpose()? {
        // An empty cell or string is how producers write "unknown".
        Some(raw) if raw.trim().is_empty() => None,
        Some(raw) => Some(ScimUserId::parse(raw.trim())?),
        None => None,
    };
    let action = match fields.action.transpose()? {
        Some(raw) => {
            RecordAction::parse(&raw).map_err(|value| RecordError::UnknownAction { value })?
        }
        None => RecordAction::Terminate,
    };
    Ok(TerminationRecord {
        external_id,
        user_id,
        termination_date,
        action,
    })
}

/// Which record field a column or JSON member name means. Names are compared
/// ignoring case, `_`, `-` and spaces, so `externalId`, `external_id` and
/// `External ID` all match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ExternalId,
    UserId,
    TerminationDate,
    Action,
}

fn field_for(name: &str) -> Option<Field> {
    let norm: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    match norm.as_str() {
        "externalid" => Some(Field::ExternalId),
        "userid" => Some(Field::UserId),
        "terminationdate" => Some(Field::TerminationDate),
        "action" => Some(Field::Action),
        _ => None,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON record as written: its members in order, duplicates kept (a
/// `serde_json::Map` would silently keep only the last of two equal keys), or the
/// JSON type of a record that is not an object.
enum RawRecord {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for RawRecord {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawRecord;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a termination record")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawRecord, A::Error> {
                let mut members = Vec::with_capacity(3);
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(RawRecord::Object(members))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRecord, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RawRecord::Other("an array"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawRecord, E> {
                Ok(RawRecord::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawRecord, E> {
                Ok(RawRecord::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawRecord, E> {
                Ok(RawRecord::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawRecord, E> {
                Ok(RawRecord::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<RawRecord, E> {
                Ok(RawRecord::Other("a string"))
            }
            fn visit_unit<E>(self) -> Result<RawRecord, E> {
                Ok(RawRecord::Other("null"))
            }
        }
        de.deserialize_any(RawVisitor)
    }
}

fn fields_from_json(record: RawRecord) -> Result<RawFields, RecordError> {
    let map = match record {
        RawRecord::Object(members) => members,
        RawRecord::Other(found) => return Err(RecordError::NotAnObject { found }),
    };
    let mut fields = RawFields::default();
    for (name, v) in map {
        let Some(field) = field_for(&name) else {
            continue;
        };
        let label = match field {
            Field::ExternalId => "externalId",
            Field::UserId => "userId",
            Field::TerminationDate => "terminationDate",
            Field::Action => "action",
        };
        let slot = match field {
            Field::ExternalId => &fields.external_id,
            Field::UserId => &fields.user_id,
            Field::TerminationDate => &fields.termination_date,
            Field::Action => &fields.action,
        };
        if slot.is_some() {
            return Err(RecordError::DuplicateField { field: label });
        }
        let parsed = match v {
            Value::Null => continue,
            Value::String(s) => Ok(s),
            other => Err(RecordError::NotAString {
                field: label,
                found: json_type(&other),
            }),
        };
        let slot = match field {
            Field::ExternalId => &mut fields.external_id,
            Field::UserId => &mut fields.user_id,
            Field::TerminationDate => &mut fields.termination_date,
            Field::Action => &mut fields.action,
        };
        *slot = Some(parsed);
    }
    Ok(fields)
}

/// Counts lines and bytes as serde_json pulls them (it reads one byte at a time
/// and peeks one ahead), and refuses a record that grows past
/// [`MAX_RECORD_BYTES`].
struct Counting<R> {
    inner: R,
    state: Arc<CountState>,
}

#[derive(Default)]
struct CountState {
    /// Newlines consumed so far.
    newlines: AtomicU64,
    /// Bytes consumed so far.
    bytes: AtomicU64,
    /// Byte offset just after the last newline (for columns).
    line_start: AtomicU64,
    /// Byte offset where the current record started (u64::MAX: none).
    record_start: AtomicU64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let total = before + n as u64;
        let chunk = &buf[..n];
        let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        if lines > 0 {
            self.state.newlines.fetch_add(lines, Ordering::Relaxed);
            let last = chunk.iter().rposition(|&b| b == b'\n').unwrap_or(0) as u64;
            self.state
                .line_start
                .store(before + last + 1, Ordering::Relaxed);
        }
        let start = self.state.record_start.load(Ordering::Relaxed);
        if start != u64::MAX && total.saturating_sub(start) > MAX_RECORD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a record is longer than {MAX_RECORD_BYTES} bytes"),
            ));
        }
        Ok(n)
    }
}

fn read_json_array<R: Read, F: FnMut(Entry) -> ControlFlow<()>>(
    input: R,
    sink: &mut Sink<'_, F>,
) -> Result<(), ManifestError> {
    let state = Arc::new(CountState {
        record_start: AtomicU64::new(u64::MAX),
        ..CountState::default()
    });
    let counting = Counting {
        inner: input,
        state: state.clone(),
    };
    let mut de = serde_json::Deserializer::from_reader(counting);
    let mut stopped = false;
    let visitor = ArrayVisitor {
        sink,
        state: &state,
        stopped: &mut stopped,
    };
    let result = (&mut de).deserialize_seq(visitor).and_then(|()| de.end());
    match result {
        Ok(()) => Ok(()),
        Err(_) if stopped => Err(ManifestError::Stopped(sink.summary.records)),
        // serde_json gives I/O errors no position; ours are the size limit.
        Err(e) if e.is_io() => Err(match e.io_error_kind() {
            Some(io::ErrorKind::InvalidData) => ManifestError::Syntax {
                format: Format::JsonArray,
                line: 1 + state.newlines.load(Ordering::Relaxed),
                column: state.bytes.load(Ordering::Relaxed)
                    - state.line_start.load(Ordering::Relaxed),
                message: e.to_string(),
            },
            _ => ManifestError::Io(io::Error::other(e)),
        }),
        Err(e) => Err(ManifestError::Syntax {
            format: Format::JsonArray,
            line: e.line() as u64,
            column: e.column() as u64,
            message: strip_position(&e.to_string()),
        }),
    }
}

/// serde_json appends " at line L column C"; the error carries them as fields.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

struct ArrayVisitor<'s, 'a, F: FnMut(Entry) -> ControlFlow<()>> {
    sink: &'s mut Sink<'a, F>,
    state: &'s CountState,
    stopped: &'s mut bool,
}

impl<'de, F: FnMut(Entry) -> ControlFlow<()>> Visitor<'de> for ArrayVisitor<'_, '_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of termination records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let seed = ElementSeed { state: self.state };
            let Some((line, value)) = seq.next_element_seed(seed)? else {
                return Ok(());
            };
            self.state.record_start.store(u64::MAX, Ordering::Relaxed);
            if self.sink.push(line, fields_from_json(value)).is_break() {
                *self.stopped = true;
                return Err(serde::de::Error::custom("stopped by the caller"));
            }
        }
    }
}

/// Deserializes one array element as a JSON value, noting the line it starts on:
/// when serde_json hands over to the seed it has consumed exactly the element's
/// first byte, so the newline count at that moment is the element's start line.
struct ElementSeed<'s> {
    state: &'s CountState,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = (u64, RawRecord);

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let line = 1 + self.state.newlines.load(Ordering::Relaxed);
        let start = self.state.bytes.load(Ordering::Relaxed).saturating_sub(1);
        self.state.record_start.store(start, Ordering::Relaxed);
        let value = RawRecord::deserialize(de)?;
        Ok((line, value))
    }
}

fn read_ndjson<R: BufRead, F: FnMut(Entry) -> ControlFlow<()>>(
    mut input: R,
    sink: &mut Sink<'_, F>,
) -> Result<(), ManifestError> {
    let mut line_no = 0u64;
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        line_no += 1;
        let n = (&mut input)
            .take(MAX_RECORD_BYTES + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() as u64 > MAX_RECORD_BYTES && buf.last() != Some(&b'\n') {
            return Err(ManifestError::Syntax {
                format: Format::Ndjson,
                line: line_no,
                column: MAX_RECORD_BYTES + 1,
                message: format!("line is longer than {MAX_RECORD_BYTES} bytes"),
            });
        }
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let value: RawRecord = serde_json::from_slice(text).map_err(|e| {
            let leading = buf.len() - buf.trim_ascii_start().len();
            ManifestError::Syntax {
                format: Format::Ndjson,
                line: line_no,
                column: e.column() as u64 + leading as u64,
                message: strip_position(&e.to_string()),
            }
        })?;
        if sink.push(line_no, fields_from_json(value)).is_break() {
            return Err(ManifestError::Stopped(sink.summary.records));
        }
    }
}

/// Refuses a line longer than [`MAX_RECORD_BYTES`] while the CSV reader reads
/// it (the csv crate would hold a record of any size in memory), remembering
/// on which line it happened.
struct LineLimit<R> {
    inner: R,
    since_newline: u64,
    line: u64,
    tripped: Arc<AtomicU64>,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.since_newline = 0;
                self.line += 1;
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_RECORD_BYTES {
                    self.tripped.store(self.line, Ordering::Relaxed);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
            }
        }
        Ok(n)
    }
}

fn read_csv<R: Read, F: FnMut(Entry) -> ControlFlow<()>>(
    input: R,
    sink: &mut Sink<'_, F>,
) -> Result<(), ManifestError> {
    // 0: not tripped; else the 1-based line that was too long.
    let tripped = Arc::new(AtomicU64::new(0));
    let input = LineLimit {
        inner: input,
        since_newline: 0,
        line: 1,
        tripped: tripped.clone(),
    };
    // Records end at LF only, so that a CRLF file's positions count lines the
    // way an editor does; the stray CR is whitespace, trimmed with the rest.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .trim(csv::Trim::All)
        .from_reader(input);
    let csv_error = |e: csv::Error| {
        let (line, column) = match e.kind() {
            csv::ErrorKind::Utf8 { pos, err } => (
                pos.as_ref().map_or(1, csv::Position::line),
                err.field() as u64 + 1,
            ),
            _ => (e.position().map_or(1, csv::Position::line), 1),
        };
        let message = e.to_string();
        let too_long = tripped.load(Ordering::Relaxed);
        if too_long > 0 {
            return ManifestError::Syntax {
                format: Format::Csv,
                line: too_long,
                column: MAX_RECORD_BYTES + 1,
                message: format!("line is longer than {MAX_RECORD_BYTES} bytes"),
            };
        }
        match e.into_kind() {
            csv::ErrorKind::Io(io) => ManifestError::Io(io),
            _ => ManifestError::Syntax {
                format: Format::Csv,
                line,
                column,
                message,
            },
        }
    };
    let headers = reader.headers().map_err(csv_error)?.clone();
    let header_line = headers.position().map_or(1, csv::Position::line);
    let mut columns: [Option<usize>; 4] = [None; 4];
    let found = || headers.iter().map(str::to_owned).collect::<Vec<_>>();
    for (i, name) in headers.iter().enumerate() {
        let (slot, column) = match field_for(name) {
            Some(Field::ExternalId) => (0, "externalId"),
            Some(Field::UserId) => (1, "userId"),
            Some(Field::TerminationDate) => (2, "terminationDate"),
            Some(Field::Action) => (3, "action"),
            None => continue,
        };
        // Two date (or id) columns: which one HR meant cannot be known.
        if columns[slot].is_some() {
            return Err(ManifestError::DuplicateColumn {
                line: header_line,
                column,
                found: found(),
            });
        }
        columns[slot] = Some(i);
    }
    let [Some(ext_col), user_col, Some(date_col), action_col] = columns else {
        let column = if columns[0].is_none() {
            "externalId"
        } else {
            "terminationDate"
        };
        return Err(ManifestError::MissingColumn {
            line: header_line,
            column,
            found: found(),
        });
    };
    let mut record = csv::ByteRecord::new();
    loop {
        if !reader.read_byte_record(&mut record).map_err(csv_error)? {
            return Ok(());
        }
        let line = record.position().map_or(0, csv::Position::line);
        // A row of empty cells (e.g. trailing ",,") is a blank line, not a record.
        if record.iter().all(|f| f.trim_ascii().is_empty()) {
            continue;
        }
        let cell = |col: usize, field: &'static str| -> Option<Result<String, RecordError>> {
            let bytes = record.get(col)?;
            if bytes.trim_ascii().is_empty() {
                return None;
            }
            Some(
                std::str::from_utf8(bytes)
                    .map(str::to_owned)
                    .map_err(|_| RecordError::NotUtf8 { field }),
            )
        };
        let fields = RawFields {
            external_id: cell(ext_col, "externalId"),
            user_id: user_col.and_then(|c| cell(c, "userId")),
            termination_date: cell(date_col, "terminationDate"),
            action: action_col.and_then(|c| cell(c, "action")),
        };
        if sink.push(line, Ok(fields)).is_break() {
            return Err(ManifestError::Stopped(sink.summary.records));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(external_id: &str, date: &str, action: RecordAction) -> TerminationRecord {
        TerminationRecord {
            external_id: ExternalId::parse(external_id).unwrap(),
            user_id: None,
            termination_date: TerminationDate::parse(date).unwrap(),
            action,
        }
    }

    /// README, "Rehires": within one file a termination is withdrawn by a rehire
    /// of the same person later in the file, or effective at or after it; one
    /// later in the file and dated after every rehire stands.
    #[test]
    fn the_rehire_index_withdraws_what_the_file_order_and_dates_say() {
        let (tz, at) = (chrono_tz::UTC, EffectiveAt::StartOfDay);
        let mut index = RehireIndex::default();
        index.note(4, &rec("E1", "2026-03-05", RecordAction::Rehire));
        index.note(5, &rec("E2", "2026-03-05", RecordAction::Terminate));
        assert_eq!(index.people(), 1, "only rehires are noted");
        let judge = |i: u64, r: &TerminationRecord| {
            index.withdrawing(i, r, r.termination_date.effective_at(tz, at), tz, at)
        };
        let earlier_in_file = rec("E1", "2026-03-10", RecordAction::Terminate);
        let withdrawn = judge(2, &earlier_in_file).expect("the rehire comes later");
        assert_eq!(withdrawn.index, 4);
        assert_eq!(
            withdrawn.effective_at,
            Some(
                TerminationDate::parse("2026-03-05")
                    .unwrap()
                    .effective_at(tz, at)
            )
        );
        assert!(
            judge(6, &rec("E1", "2026-03-05", RecordAction::Terminate)).is_some(),
            "dated on the rehire's day: withdrawn"
        );
        assert!(
            judge(6, &rec("E1", "2026-03-01", RecordAction::Terminate)).is_some(),
            "dated before the rehire: withdrawn"
        );
        assert_eq!(
            judge(6, &rec("E1", "2026-03-10", RecordAction::Terminate)),
            None,
            "later in the file and dated after the rehire: stands"
        );
        assert_eq!(
            judge(0, &rec("E2", "2026-03-01", RecordAction::Terminate)),
            None
        );
        assert_eq!(
            judge(0, &rec("E1", "2026-03-01", RecordAction::Rehire)),
            None
        );

        // A rejected rehire record withdraws every termination of the person.
        let mut index = index.clone();
        index.note_rejected(9, "E2");
        index.note_rejected(10, "");
        let late = rec("E2", "2026-04-01", RecordAction::Terminate);
        let withdrawn = index
            .withdrawing(
                12,
                &late,
                late.termination_date.effective_at(tz, at),
                tz,
                at,
            )
            .expect("a rejected rehire withdraws");
        assert_eq!((withdrawn.index, withdrawn.effective_at), (9, None));
    }

    /// The reader marks a rejected record whose action may be a rehire: any
    /// action but a plain `terminate`, misspelt or not a string.
    #[test]
    fn a_rejected_rehire_record_is_marked() {
        let input = "{\"externalId\":\"P3\",\"terminationDate\":\"11/05/2026\",\"action\":\"rehire\"}\n{\"externalId\":\"P4\",\"terminationDate\":\"11/05/2026\"}\n{\"externalId\":\"P5\",\"terminationDate\":\"2026-10-01\",\"action\":\"re-hire\"}\n{\"externalId\":\"P6\",\"terminationDate\":\"2026-10-01\",\"action\":[\"rehire\"]}\n{\"externalId\":\"P7\",\"terminationDate\":\"11/05/2026\",\"action\":\"Terminate\"}\n";
        let (_, entries) = collect(input, None).unwrap();
        let marks: Vec<(Option<String>, bool)> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Rejected {
                    external_id,
                    rehire,
                    ..
                } => Some((external_id.clone(), *rehire)),
                _ => None,
            })
            .collect();
        assert_eq!(
            marks,
            [
                (Some("P3".to_owned()), true),
                (Some("P4".to_owned()), false),
                (Some("P5".to_owned()), true),
                (Some("P6".to_owned()), true),
                (Some("P7".to_owned()), false),
            ]
        );
    }

    /// A CSV line longer than MAX_RECORD_BYTES rejects the file (as in JSON and
    /// NDJSON) instead of being read into memory whole; a long but allowed one
    /// is read.
    #[test]
    fn a_csv_line_over_the_record_limit_rejects_the_file() {
        let limit = MAX_RECORD_BYTES as usize;
        let long = format!(
            "externalId,terminationDate\nE1,2026-03-02\n{},2026-03-02\n",
            "C".repeat(limit + 10)
        );
        let err = collect(&long, Some(Format::Csv)).unwrap_err();
        assert!(
            matches!(
                &err,
                ManifestError::Syntax { format: Format::Csv, line: 3, message, .. }
                    if message.contains("longer than")
            ),
            "{err:?}"
        );
        let fits = format!(
            "externalId,terminationDate\n{},2026-03-02\n",
            "C".repeat(limit - 20)
        );
        let (summary, _) = collect(&fits, Some(Format::Csv)).unwrap();
        assert_eq!(summary.records, 1);
    }

    #[test]
    fn the_rehire_index_is_bounded() {
        let mut index = RehireIndex::default();
        for i in 0..(MAX_REHIRED_PEOPLE as u64 + 3) {
            index.note(
                i,
                &rec(&format!("P{i}"), "2026-03-05", RecordAction::Rehire),
            );
        }
        assert_eq!(index.people(), MAX_REHIRED_PEOPLE);
        assert_eq!(index.overflow, 3);
    }

    fn collect(input: &str, hint: Option<Format>) -> Result<(Summary, Vec<Entry>), ManifestError> {
        let mut entries = Vec::new();
        let summary = read(input.as_bytes(), hint, |e| {
            entries.push(e);
            ControlFlow::Continue(())
        })?;
        Ok((summary, entries))
    }

    fn valid_ids(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Valid { record, .. } => Some(record.external_id.to_string()),
                _ => None,
            })
            .collect()
    }

    fn rejected(entries: &[Entry]) -> Vec<(u64, u64, String)> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Rejected {
                    position, reason, ..
                } => Some((position.index, position.line, reason.to_string())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn json_array_with_bom_bad_records_and_duplicate() {
        let input = "\u{FEFF}[\n  {\"externalId\": \"E1\", \"terminationDate\": \"2026-03-02\"},\n  {\"externalId\": \"E2\", \"userId\": \"u-2\", \"terminationDate\": \"2026-03-02T17:00:00-05:00\"},\n  {\"externalId\": \"\", \"terminationDate\": \"2026-03-02\"},\n  {\"externalId\": \"E3\", \"terminationDate\": \"03/02/2026\"},\n  {\"externalId\": \"E1\", \"terminationDate\": \"2026-03-02\"},\n  42,\n  {\"externalId\": \"E4\", \"userId\": \"a/b\", \"terminationDate\": \"2026-03-02\"}\n]\n";
        let (summary, entries) = collect(input, None).unwrap();
        assert_eq!(summary.format, Some(Format::JsonArray));
        assert_eq!(
            (
                summary.records,
                summary.valid,
                summary.rejected,
                summary.duplicates
            ),
            (7, 2, 4, 1)
        );
        assert!(summary.reconciles());
        assert_eq!(valid_ids(&entries), ["E1", "E2"]);
        let bad = rejected(&entries);
        assert_eq!(bad.len(), 4);
        assert_eq!((bad[0].0, bad[0].1), (2, 4));
        assert!(bad[0].2.contains("externalId"), "{}", bad[0].2);
        assert_eq!((bad[1].0, bad[1].1), (3, 5));
        assert!(bad[1].2.contains("terminationDate"), "{}", bad[1].2);
        assert_eq!((bad[2].0, bad[2].1), (5, 7));
        assert!(bad[2].2.contains("not an object"), "{}", bad[2].2);
        assert!(bad[3].2.contains("userId"), "{}", bad[3].2);
        assert!(matches!(
            entries[4],
            Entry::Duplicate {
                position: Position { index: 4, line: 6 },
                ..
            }
        ));
    }

    #[test]
    fn action_column_and_member_mark_rehires_and_refuse_unknown_actions() {
        let actions = |entries: &[Entry]| -> Vec<(String, RecordAction)> {
            entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Valid { record, .. } => {
                        Some((record.external_id.to_string(), record.action))
                    }
                    _ => None,
                })
                .collect()
        };
        let csv = "externalId,terminationDate,Action\nE1,2026-03-02,\nE2,2026-03-02,REHIRE\nE3,2026-03-02,terminate\nE4,2026-03-02,fire\n";
        let (summary, entries) = collect(csv, Some(Format::Csv)).unwrap();
        assert_eq!((summary.valid, summary.rejected), (3, 1));
        assert_eq!(
            actions(&entries),
            [
                ("E1".to_owned(), RecordAction::Terminate),
                ("E2".to_owned(), RecordAction::Rehire),
                ("E3".to_owned(), RecordAction::Terminate),
            ]
        );
        assert!(rejected(&entries)[0].2.contains("\"fire\""));
        // A rehire and a termination of the same person and date are two records.
        let ndjson = "{\"externalId\":\"E1\",\"terminationDate\":\"2026-03-02\"}\n{\"externalId\":\"E1\",\"terminationDate\":\"2026-03-02\",\"action\":\"rehire\"}\n{\"externalId\":\"E2\",\"terminationDate\":\"2026-03-02\",\"action\":7}\n";
        let (summary, entries) = collect(ndjson, None).unwrap();
        assert_eq!(
            (summary.valid, summary.duplicates, summary.rejected),
            (2, 0, 1)
        );
        assert_eq!(
            actions(&entries),
            [
                ("E1".to_owned(), RecordAction::Terminate),
                ("E1".to_owned(), RecordAction::Rehire),
            ]
        );
    }

    #[test]
    fn json_array_on_one_line_reports_line_one() {
        let (_, entries) = collect(
            r#"[{"externalId":"A","terminationDate":"2026-01-01"},{"externalId":"B","terminationDate":"x"}]"#,
            None,
        )
        .unwrap();
        assert_eq!(rejected(&entries)[0].1, 1);
    }

    #[test]
    fn broken_json_is_rejected_whole_with_line_and_column() {
        let err = collect(
            "[\n {\"externalId\": \"E1\", \"terminationDate\": \"2026-03-02\"},\n {\"externalId\": \"E2\" \"terminationDate\": \"2026-03-02\"}\n]",
            None,
        )
        .unwrap_err();
        match err {
            ManifestError::Syntax {
                format: Format::JsonArray,
                line,
                column,
                ..
            } => assert_eq!((line, column), (3, 22)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            collect("[{\"externalId\": \"E1\"}", None),
            Err(ManifestError::Syntax { .. })
        ));
        assert!(matches!(
            collect("[] trailing", None),
            Err(ManifestError::Syntax { .. })
        ));
    }

    #[test]
    fn ndjson_lines_blank_lines_and_syntax_error() {
        let input = "{\"externalId\":\"E1\",\"terminationDate\":\"2026-03-02\"}\r\n\n{\"external_id\":\"E2\",\"termination_date\":\"2026-03-02\",\"userId\":\"\"}\n{\"externalId\":7,\"terminationDate\":\"2026-03-02\"}\n";
        let (summary, entries) = collect(input, None).unwrap();
        assert_eq!(summary.format, Some(Format::Ndjson));
        assert_eq!(
            (summary.records, summary.valid, summary.rejected),
            (3, 2, 1)
        );
        assert_eq!(valid_ids(&entries), ["E1", "E2"]);
        let bad = rejected(&entries);
        assert_eq!((bad[0].0, bad[0].1), (2, 4));
        assert!(bad[0].2.contains("must be a string"), "{}", bad[0].2);

        let err = collect(
            "{\"externalId\":\"E1\",\"terminationDate\":\"2026-03-02\"}\n{\"externalId\": oops}\n",
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::Syntax {
                    format: Format::Ndjson,
                    line: 2,
                    column: 16,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn csv_with_header_variants_bom_and_quoting() {
        let input = "\u{FEFF}External ID,Name,userId,terminationDate\r\nE1,\"Doe, Jane\",,2026-03-02\r\n\"E2\",Bob,u-2,2026-03-02T09:00:00Z\r\n,Nobody,,2026-03-02\r\nE1,Again,,2026-03-02\r\nE3,Conflict,,2026-13-01\r\n";
        let (summary, entries) = collect(input, Some(Format::Csv)).unwrap();
        assert_eq!(summary.format, Some(Format::Csv));
        assert_eq!(
            (
                summary.records,
                summary.valid,
                summary.rejected,
                summary.duplicates
            ),
            (5, 2, 2, 1)
        );
        let bad = rejected(&entries);
        assert_eq!((bad[0].0, bad[0].1), (2, 4));
        assert!(bad[0].2.contains("externalId is missing"), "{}", bad[0].2);
        assert_eq!(bad[1].1, 6);
    }

    #[test]
    fn csv_without_required_column_is_rejected_whole() {
        let err = collect("id,date\nE1,2026-03-02\n", None).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::MissingColumn {
                    column: "externalId",
                    line: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn duplicate_with_different_user_id_is_rejected_not_collapsed() {
        let (summary, entries) = collect(
            "externalId,userId,terminationDate\nE1,u-1,2026-03-02\nE1,u-2,2026-03-02\nE1,u-1,2026-03-02\n",
            None,
        )
        .unwrap();
        assert_eq!(
            (summary.valid, summary.rejected, summary.duplicates),
            (1, 1, 1)
        );
        assert_eq!(
            rejected(&entries)[0].2,
            RecordError::ConflictingDuplicate.to_string()
        );
    }

    #[test]
    fn empty_and_mislabelled_files() {
        assert!(matches!(collect("", None), Err(ManifestError::Empty)));
        assert!(matches!(
            collect("\u{FEFF}  \n", None),
            Err(ManifestError::Empty)
        ));
        let (summary, _) = collect("[]", None).unwrap();
        assert_eq!(summary.records, 0);
        assert!(matches!(
            collect("\n  externalId,terminationDate\n", Some(Format::JsonArray)),
            Err(ManifestError::Syntax {
                line: 2,
                column: 3,
                ..
            })
        ));
    }

    #[test]
    fn oversized_record_is_refused_not_buffered() {
        let big = "x".repeat(MAX_RECORD_BYTES as usize + 10);
        let json = format!("[{{\"externalId\":\"{big}\",\"terminationDate\":\"2026-03-02\"}}]");
        assert!(matches!(
            collect(&json, None),
            Err(ManifestError::Syntax { .. })
        ));
        let nd = format!("{{\"externalId\":\"{big}\"}}\n");
        assert!(matches!(
            collect(&nd, None),
            Err(ManifestError::Syntax { .. })
        ));
    }

    #[test]
    fn caller_can_stop() {
        let err = read(
            "[{\"externalId\":\"A\",\"terminationDate\":\"2026-01-01\"},{\"externalId\":\"B\",\"terminationDate\":\"2026-01-01\"}]".as_bytes(),
            None,
            |_| ControlFlow::Break(()),
        )
        .unwrap_err();
        assert!(matches!(err, ManifestError::Stopped(_)));
    }

    #[test]
    fn extension_hints() {
        assert_eq!(Format::from_extension("a/b.CSV"), Some(Format::Csv));
        assert_eq!(Format::from_extension("x.jsonl"), Some(Format::Ndjson));
        assert_eq!(Format::from_extension("x"), None);
    }

    #[test]
    fn a_field_given_twice_rejects_the_record_not_the_file() {
        let input = concat!(
            r#"[{"externalId":"C20","terminationDate":"2027-06-01","terminationDate":"2026-01-15"},"#,
            r#"{"externalId":"C10","ExternalID":"C11","terminationDate":"2026-01-15"},"#,
            r#"{"externalId":"OK1","terminationDate":"2026-01-15"}]"#
        );
        let mut reasons = Vec::new();
        let mut valid = Vec::new();
        let summary = read(input.as_bytes(), None, |e| {
            match e {
                Entry::Rejected { reason, .. } => reasons.push(reason.to_string()),
                Entry::Valid { record, .. } => valid.push(record.external_id.to_string()),
                Entry::Duplicate { .. } => {}
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(summary.rejected, 2, "{reasons:?}");
        assert_eq!(valid, vec!["OK1".to_owned()]);
        assert!(
            reasons[0].contains("terminationDate appears more than once"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("externalId appears more than once"),
            "{reasons:?}"
        );
        let ndjson = "{\"externalId\":\"C20\",\"terminationDate\":\"2027-06-01\",\"terminationDate\":\"2026-01-15\"}\n";
        let summary = read(ndjson.as_bytes(), None, |_| ControlFlow::Continue(())).unwrap();
        assert_eq!((summary.rejected, summary.valid), (1, 0));
    }

    #[test]
    fn a_csv_header_with_two_date_columns_is_refused_whole() {
        let csv = "externalId,terminationDate,terminationDate\nC20,2027-06-01,2026-01-15\n";
        let err = read(csv.as_bytes(), None, |_| ControlFlow::Continue(())).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::DuplicateColumn {
                    column: "terminationDate",
                    ..
                }
            ),
            "{err}"
        );
    }
}
