//! The compliance reports read from the audit store: the weekly summary with its
//! SLA figures ([`weekly`]) and the per-termination evidence export
//! ([`evidence`]), the list of held future-dated terminations ([`pending`]), and
//! their renderings (table, CSV, JSON, SVG chart). Read-only:
//! this module never writes to the audit store and knows nothing about SCIM or
//! queues.
//!
//! Both reports count terminations, not attempts. A termination is every
//! termination row (not `manifest`/`replay`/`approve`/`reject`/`rehire`) sharing an
//! idempotency key, or, for rows without one, an externalId, or, for rows with
//! neither (`deprovision user --user-id`), the Genesys userId: such a termination
//! is keyed by its userId, shows an empty externalId in the evidence and counts in
//! the weekly report like any other. (Rows written before this rule carry no
//! termination id and stay out of the reports; they are still in the log.) Its
//! outcome is the latest terminal outcome recorded for it, else its latest outcome.
//! Messages the consumer rejects (bad signature: action `reject_message`) are not
//! terminations.

mod chart;
mod evidence;
mod pending;
mod render;
mod weekly;

pub use chart::{chart_svg, write_chart};
pub use evidence::{EvidenceRow, evidence};
pub use pending::{PendingReport, PendingRow, pending};
pub use render::{csv_safe_cell, escape_control, evidence_csv, evidence_json};
pub use weekly::{WeekRow, WeeklyReport, weekly};

use std::path::PathBuf;

use crate::audit::AuditError;

/// Why a report could not be produced or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the audit store failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The `--from` date is after the `--to` date.
    #[error("--from {from} is after --to {to}")]
    EmptyRange {
        /// The first day.
        from: chrono::NaiveDate,
        /// The last day.
        to: chrono::NaiveDate,
    },
    /// Serialising the report as CSV failed.
    #[error("cannot write the report as CSV: {0}")]
    Csv(#[from] csv::Error),
    /// Serialising the report as JSON failed.
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The chart file name does not end in `.svg`.
    #[error(
        "chart {path}: only SVG charts are written (name the file *.svg); PNG would need system font libraries"
    )]
    ChartFormat {
        /// The file asked for.
        path: PathBuf,
    },
    /// Drawing or writing the chart failed.
    #[error("cannot draw the chart {path}: {detail}")]
    Chart {
        /// The file asked for.
        path: PathBuf,
        /// plotters' message.
        detail: String,
    },
}
