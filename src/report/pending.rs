//! `deprovision report pending`: what is held (future-dated terminations in the
//! holds table) and when each falls due, in UTC and in a chosen zone, as a table,
//! CSV or JSON. Read-only: never releases, cancels or writes anything.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::ReportError;
use crate::audit::{AuditStore, Hold};

/// One pending hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRow {
    /// HR's identifier.
    #[serde(rename = "externalId")]
    pub external_id: String,
    /// The Genesys user id, when the record gave one.
    #[serde(rename = "userId")]
    pub user_id: Option<String>,
    /// When it falls due, RFC 3339 UTC (`…Z`).
    pub due_at_utc: String,
    /// The same instant in the report's zone, RFC 3339 with its offset.
    pub due_at_local: String,
    /// The manifest (`bucket/key`, and `#index` when known).
    pub manifest: Option<String>,
    /// When the hold was placed, RFC 3339 UTC.
    pub held_since: String,
    /// The termination's idempotency key.
    pub idempotency_key: String,
}

/// The pending report: every pending hold, soonest due first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingReport {
    /// The zone of `due_at_local`.
    #[serde(serialize_with = "super::weekly::tz_name")]
    pub tz: Tz,
    /// The holds.
    pub holds: Vec<PendingRow>,
}

const HEADERS: [&str; 7] = [
    "externalId",
    "userId",
    "due_at_utc",
    "due_at_local",
    "manifest",
    "held_since",
    "idempotency_key",
];

fn utc_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn row(hold: &Hold, tz: Tz) -> PendingRow {
    PendingRow {
        external_id: hold.external_id.clone(),
        user_id: hold.user_id.clone(),
        due_at_utc: utc_text(hold.due_at),
        due_at_local: hold
            .due_at
            .with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Secs, false),
        manifest: hold.manifest.as_ref().map(|m| match m.index {
            Some(i) => format!("{}/{}#{i}", m.bucket, m.key),
            None => format!("{}/{}", m.bucket, m.key),
        }),
        held_since: utc_text(hold.created_at),
        idempotency_key: hold.idempotency_key.to_string(),
    }
}

/// Reads the pending holds. Errors: [`ReportError::Audit`].
pub async fn pending(store: &AuditStore, tz: Tz) -> Result<PendingReport, ReportError> {
    let holds = store.pending_holds().await?;
    Ok(PendingReport {
        tz,
        holds: holds.iter().map(|h| row(h, tz)).collect(),
    })
}

impl PendingReport {
    fn cells(r: &PendingRow) -> [String; 7] {
        [
            r.external_id.clone(),
            r.user_id.clone().unwrap_or_default(),
            r.due_at_utc.clone(),
            r.due_at_local.clone(),
            r.manifest.clone().unwrap_or_default(),
            r.held_since.clone(),
            r.idempotency_key.clone(),
        ]
    }

    /// `{"tz": …, "holds": [ … ]}`, pretty-printed, with a trailing newline.
    /// Errors: [`ReportError::Json`].
    pub fn to_json(&self) -> Result<String, ReportError> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// CSV (RFC 4180) with a header row. Errors: [`ReportError::Csv`].
    pub fn to_csv(&self) -> Result<String, ReportError> {
        super::render::csv_text(&HEADERS, self.holds.iter().map(Self::cells))
    }

    /// An aligned table, headed by the count and zone; the key is left out
    /// (use CSV or JSON for it).
    pub fn to_table(&self) -> String {
        // Control characters from the manifest never reach the terminal raw.
        let rows: Vec<[String; 7]> = self
            .holds
            .iter()
            .map(|h| Self::cells(h).map(|c| super::escape_control(&c).into_owned()))
            .collect();
        let mut widths = [0usize; 6];
        for (i, h) in HEADERS.iter().take(6).enumerate() {
            widths[i] = h.chars().count();
        }
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[&str]| {
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                out.push_str(&format!("{c:<w$}"));
            }
            out.trim_end().to_owned() + "\n"
        };
        let zones = if self.tz == chrono_tz::UTC {
            "UTC".to_owned()
        } else {
            format!("UTC and {}", self.tz.name())
        };
        let mut out = format!(
            "Pending terminations: {} held (due times in {zones})\n",
            self.holds.len()
        );
        out.push_str(&line(&HEADERS[..6]));
        for r in &rows {
            let cells: Vec<&str> = r.iter().take(6).map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        out
    }
}
