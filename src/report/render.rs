//! Renders the reports as text: an aligned table for people, CSV (RFC 4180, with a
//! header row) and JSON for tools. Formatting only: no I/O, no store access.
//! Text that came from outside never reaches a terminal or a spreadsheet raw:
//! CSV cells are neutralised against formula injection and control characters
//! are escaped ([`csv_safe_cell`], [`escape_control`]); JSON escapes them itself.

use chrono::{DateTime, SecondsFormat, Utc};

use super::{EvidenceRow, ReportError, WeekRow, WeeklyReport};
use crate::audit::ChainHead;

const WEEK_HEADERS: [&str; 18] = [
    "week",
    "week_start",
    "total",
    "successful",
    "failed",
    "received",
    "deactivated",
    "already_inactive",
    "not_found",
    "protected",
    "scheduled_held",
    "retrying",
    "dry_run",
    "rescinded",
    "sla_measured",
    "sla_median_hours",
    "sla_p95_hours",
    "sla_over_24h",
];

fn hours(v: Option<f64>) -> String {
    v.map(|h| format!("{h:.2}")).unwrap_or_default()
}

fn week_cells(w: &WeekRow) -> Vec<String> {
    vec![
        w.week.clone(),
        w.week_start.to_string(),
        w.total.to_string(),
        w.successful.to_string(),
        w.failed.to_string(),
        w.received.to_string(),
        w.deactivated.to_string(),
        w.already_inactive.to_string(),
        w.not_found.to_string(),
        w.protected.to_string(),
        w.scheduled_held.to_string(),
        w.retrying.to_string(),
        w.dry_run.to_string(),
        w.rescinded.to_string(),
        w.sla_measured.to_string(),
        hours(w.sla_median_hours),
        hours(w.sla_p95_hours),
        w.sla_over_24h.to_string(),
    ]
}

/// Whether `c` must not reach a terminal or a spreadsheet raw: C0/C1 controls
/// and DEL (`char::is_control`: ESC sequences, newlines, tabs) and the Unicode
/// bidirectional formatting characters (U+200E/F, U+202A–E, U+2066–9), which
/// reorder what a reader sees ("Trojan Source", CVE-2021-42574).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control or bidi formatting character written as a visible
/// escape: `\n`, `\r`, `\t`, and `\u{1b}`-style for the others (Rust's
/// `char::escape_default` notation); a backslash before such an escape stays as
/// is, so the result is for reading, not for reversing. Borrowed when nothing
/// needed escaping. For every text a report or summary prints that came from
/// outside (externalIds, userIds, reasons, server messages).
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(must_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `s` is a plain decimal number (`-1.5`, `42`), which a spreadsheet
/// reads as a number, not a formula, and which must stay a number.
fn is_plain_number(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// One CSV cell made safe to open in a spreadsheet: a cell starting with `=`,
/// `+`, `-`, `@`, TAB or CR (unless it is a plain number) is prefixed with `'`
/// so it is shown as text, not evaluated as a formula (OWASP "CSV Injection");
/// then control and bidi characters are escaped as [`escape_control`] does.
/// Every CSV the reports write goes through this.
pub fn csv_safe_cell(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_plain_number(s);
    let escaped = escape_control(s);
    if formula {
        format!("'{escaped}")
    } else {
        escaped.into_owned()
    }
}

/// RFC 4180 CSV with a header row (also used by `pending`); every cell passes
/// through [`csv_safe_cell`]. Errors: [`ReportError::Csv`].
pub(super) fn csv_text<I, R>(headers: &[&str], rows: I) -> Result<String, ReportError>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(headers)?;
    for row in rows {
        w.write_record(row.into_iter().map(|cell| csv_safe_cell(&cell)))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| ReportError::Csv(csv::Error::from(e.into_error())))?;
    // The writer was given only `String`s, so its output is UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn table_text(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            // Names left, numbers right: the first two columns are the week.
            if i < 2 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("{cell:>w$}"));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// The footer line of the CSV and table renderings.
fn head_line(head: Option<&ChainHead>) -> String {
    match head {
        Some(h) => format!(
            "chain_head: id={} rows={} row_hash={}",
            h.id, h.rows, h.row_hash
        ),
        None => "chain_head: none (the audit log is empty)".to_owned(),
    }
}

impl WeeklyReport {
    /// A JSON array with one object per week (the seed's shape: `week`, `total`,
    /// `successful`, `failed`, plus the fields of [`WeekRow`]) and, as its last
    /// element, the footer `{"chain_head": {"id", "rows", "row_hash"}}` (`null` for
    /// an empty log); pretty-printed, with a trailing newline. Tools summing weeks
    /// select the elements that have a `week`.
    pub fn to_json(&self) -> Result<String, ReportError> {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Item<'a> {
            Week(&'a WeekRow),
            Footer { chain_head: Option<&'a ChainHead> },
        }
        let items: Vec<Item<'_>> = self
            .weeks
            .iter()
            .map(Item::Week)
            .chain(std::iter::once(Item::Footer {
                chain_head: self.chain_head.as_ref(),
            }))
            .collect();
        Ok(serde_json::to_string_pretty(&items)? + "\n")
    }

    /// CSV with a header row; hours with two decimals, empty when there is no
    /// sample. The last line is the footer `# chain_head: id=… rows=… row_hash=…`
    /// (a comment line: readers with comment support, e.g. pandas
    /// `comment='#'`, skip it).
    pub fn to_csv(&self) -> Result<String, ReportError> {
        let mut text = csv_text(&WEEK_HEADERS, self.weeks.iter().map(week_cells))?;
        text.push_str("# ");
        text.push_str(&head_line(self.chain_head.as_ref()));
        text.push('\n');
        Ok(text)
    }

    /// An aligned text table, headed by the zone and the as-of instant, ending
    /// with the chain head.
    pub fn to_table(&self) -> String {
        let rows: Vec<Vec<String>> = self.weeks.iter().map(week_cells).collect();
        format!(
            "Weekly deprovisioning summary (weeks from Monday 00:00 {}; as of {})\n{}{}\n",
            self.tz.name(),
            self.as_of.to_rfc3339_opts(SecondsFormat::Secs, true),
            table_text(&WEEK_HEADERS, &rows),
            head_line(self.chain_head.as_ref())
        )
    }
}

const EVIDENCE_HEADERS: [&str; 18] = [
    "externalId",
    "userId",
    "idempotency_key",
    "effective_at",
    "first_seen_at",
    "confirmed_deactivated_at",
    "outcome",
    "credential",
    "groups_removed",
    "attempts",
    "sqs_message_ids",
    "manifest_bucket",
    "manifest_key",
    "manifest_version",
    "manifest_index",
    "correlation_ids",
    "error_message",
    "audit_row_ids",
];

fn instant(v: Option<DateTime<Utc>>) -> String {
    v.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The evidence as CSV with a header row. Lists are joined with `;`; instants are
/// RFC 3339 UTC with milliseconds.
pub fn evidence_csv(rows: &[EvidenceRow]) -> Result<String, ReportError> {
    csv_text(
        &EVIDENCE_HEADERS,
        rows.iter().map(|r| {
            let m = r.manifest.as_ref();
            vec![
                r.external_id.clone().unwrap_or_default(),
                r.user_id.clone().unwrap_or_default(),
                r.idempotency_key.clone().unwrap_or_default(),
                instant(r.effective_at),
                instant(Some(r.first_seen_at)),
                instant(r.confirmed_deactivated_at),
                r.outcome.as_str().to_owned(),
                r.credential
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                r.groups_removed.join(";"),
                r.attempts.to_string(),
                r.sqs_message_ids.join(";"),
                m.map(|m| m.bucket.clone()).unwrap_or_default(),
                m.map(|m| m.key.clone()).unwrap_or_default(),
                m.and_then(|m| m.version.clone()).unwrap_or_default(),
                m.and_then(|m| m.index)
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                r.correlation_ids.join(";"),
                r.error_message.clone().unwrap_or_default(),
                r.audit_row_ids
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(";"),
            ]
        }),
    )
}

/// The evidence as a pretty-printed JSON array of [`EvidenceRow`] objects, with a
/// trailing newline.
pub fn evidence_json(rows: &[EvidenceRow]) -> Result<String, ReportError> {
    Ok(serde_json::to_string_pretty(rows)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Outcome;

    #[test]
    fn formulas_are_shown_as_text() {
        for (raw, safe) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+1+2", "'+1+2"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\\t=1"),
            ("\r=1", "'\\r=1"),
            ("E123", "E123"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(csv_safe_cell(raw), safe, "{raw:?}");
        }
    }

    #[test]
    fn plain_numbers_stay_numbers() {
        for n in ["-1.50", "42", "+3", "0.25"] {
            assert_eq!(csv_safe_cell(n), n);
        }
        for not in ["-", "-.5", "-1.", "-1e5", "+1+2"] {
            assert!(csv_safe_cell(not).starts_with('\''), "{not}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(escape_control("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(escape_control("x\ny\u{7f}"), "x\\ny\\u{7f}");
        assert_eq!(escape_control("\u{202e}abc"), "\\u{202e}abc");
        assert_eq!(escape_control("\u{9b}2J"), "\\u{9b}2J");
        assert!(matches!(
            escape_control("plain café"),
            std::borrow::Cow::Borrowed("plain café")
        ));
    }

    fn row(external_id: &str, error: &str) -> EvidenceRow {
        EvidenceRow {
            external_id: Some(external_id.to_owned()),
            user_id: Some("+1+2".to_owned()),
            idempotency_key: None,
            effective_at: None,
            first_seen_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            confirmed_deactivated_at: None,
            outcome: Outcome::Failed,
            credential: None,
            groups_removed: vec!["=cmd|'/c calc'!A1".to_owned(), "sales".to_owned()],
            attempts: 1,
            sqs_message_ids: Vec::new(),
            manifest: None,
            correlation_ids: Vec::new(),
            error_message: Some(error.to_owned()),
            audit_row_ids: vec![7],
        }
    }

    #[test]
    fn evidence_csv_has_no_raw_control_characters_or_live_formulas() {
        let text = evidence_csv(&[row(
            "=HYPERLINK(\"http://x\",\"y\")",
            "bad\u{1b}]0;pwned\u{7}\nnext",
        )])
        .unwrap();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        // One header line, one record line: the newline in the message is escaped.
        assert_eq!(text.lines().count(), 2, "{text}");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "'=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(&record[1], "'+1+2");
        // A list cell starting with `=` is neutralised as a whole.
        assert_eq!(&record[8], "'=cmd|'/c calc'!A1;sales");
        assert_eq!(&record[16], "bad\\u{1b}]0;pwned\\u{7}\\nnext");
        assert_eq!(&record[17], "7");
    }
}
