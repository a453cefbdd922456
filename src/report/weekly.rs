//! The weekly compliance summary: one row per ISO week (Monday 00:00 in the
//! report's zone) with per-termination outcome counts and the SLA figures. Computes
//! from [`AuditStore::terminations`]; renders in `render` and `chart`.

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::ReportError;
use crate::audit::{AuditStore, TerminationSummary};
use crate::domain::Outcome;

/// The SLA: access must be gone within this many hours of the effective time.
pub const SLA_HOURS: f64 = 24.0;

/// One ISO week. `week`, `total`, `successful` and `failed` are the seed's fields
/// and keep their meaning; `total` counts terminations first seen that week
/// (identical to `received`), each under its latest outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeekRow {
    /// ISO 8601 week, e.g. `2026-W10`.
    pub week: String,
    /// Its Monday (a date in the report's zone).
    pub week_start: NaiveDate,
    /// Terminations first seen this week (the seed's name).
    pub total: u64,
    /// `deactivated` + `already_inactive`.
    pub successful: u64,
    /// Dead-lettered: `ambiguous`, `identity_mismatch`, `invalid`, `forbidden`,
    /// `failed`.
    pub failed: u64,
    /// Same as `total`, under the name the compliance summary uses.
    pub received: u64,
    /// Deactivated by this service.
    pub deactivated: u64,
    /// Found already inactive.
    pub already_inactive: u64,
    /// No such user (listed for review).
    pub not_found: u64,
    /// Refused: on the protected list.
    pub protected: u64,
    /// Not yet due, or held by a safety rail.
    pub scheduled_held: u64,
    /// Still being retried.
    pub retrying: u64,
    /// Dry runs only.
    pub dry_run: u64,
    /// Successful terminations with a known effective time (the SLA sample).
    pub sla_measured: u64,
    /// Median hours from effective time to confirmed deactivation (2 decimals).
    pub sla_median_hours: Option<f64>,
    /// 95th percentile of the same (linear interpolation, as PostgreSQL's
    /// `percentile_cont`), 2 decimals.
    pub sla_p95_hours: Option<f64>,
    /// How many took longer than 24 hours.
    pub sla_over_24h: u64,
}

/// The weekly report: `weeks` rows, oldest first, ending with the week of `now`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeeklyReport {
    /// The zone weeks are cut in.
    #[serde(serialize_with = "tz_name")]
    pub tz: Tz,
    /// The instant the report is as of.
    pub as_of: DateTime<Utc>,
    /// One row per week, oldest first.
    pub weeks: Vec<WeekRow>,
}

fn tz_name<S: serde::Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

/// Local midnight of `day` in `tz` as an instant. Where a DST change skips
/// midnight (e.g. America/Santiago), the first local time after it is used; where
/// it repeats, the earlier one.
fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let local = day.and_time(NaiveTime::MIN);
    (0..=180)
        .find_map(|m| {
            tz.from_local_datetime(&(local + chrono::Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&local))
}

fn monday_of(day: NaiveDate) -> NaiveDate {
    day - Days::new(u64::from(day.weekday().num_days_from_monday()))
}

/// The weekly summary of the `weeks` ISO weeks (at least 1) ending with the week
/// that contains `now` in `tz`, counting only rows created at or before `now`
/// (so a report is reproducible for a given `now`). A termination belongs to the
/// week in which it was first seen; weeks without any are rows of zeros.
///
/// SLA: over terminations whose outcome is `deactivated` or `already_inactive`
/// and whose effective time is known, the hours from the effective time to the
/// row that confirmed it.
///
/// Errors: [`ReportError::Audit`].
pub async fn weekly(
    store: &AuditStore,
    weeks: u32,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<WeeklyReport, ReportError> {
    let weeks = weeks.max(1);
    let this_monday = monday_of(now.with_timezone(&tz).date_naive());
    let first_monday = this_monday - Days::new(7 * u64::from(weeks - 1));
    let start = local_midnight(first_monday, tz);
    let end = local_midnight(this_monday + Days::new(7), tz);
    let terminations = store.terminations(start..end, now).await?;
    Ok(summarise(&terminations, first_monday, weeks, tz, now))
}

/// The pure part of [`weekly`]: buckets and counts.
pub(super) fn summarise(
    terminations: &[TerminationSummary],
    first_monday: NaiveDate,
    weeks: u32,
    tz: Tz,
    as_of: DateTime<Utc>,
) -> WeeklyReport {
    let mut rows: Vec<(WeekRow, Vec<f64>)> = (0..weeks)
        .map(|i| {
            let monday = first_monday + Days::new(7 * u64::from(i));
            let iso = monday.iso_week();
            let row = WeekRow {
                week: format!("{}-W{:02}", iso.year(), iso.week()),
                week_start: monday,
                total: 0,
                successful: 0,
                failed: 0,
                received: 0,
                deactivated: 0,
                already_inactive: 0,
                not_found: 0,
                protected: 0,
                scheduled_held: 0,
                retrying: 0,
                dry_run: 0,
                sla_measured: 0,
                sla_median_hours: None,
                sla_p95_hours: None,
                sla_over_24h: 0,
            };
            (row, Vec::new())
        })
        .collect();
    for t in terminations {
        let monday = monday_of(t.first_seen_at.with_timezone(&tz).date_naive());
        let index = (monday - first_monday).num_days() / 7;
        let Some((row, hours)) = usize::try_from(index).ok().and_then(|i| rows.get_mut(i)) else {
            continue;
        };
        row.total += 1;
        row.received += 1;
        let counter = match t.outcome {
            Outcome::Deactivated => &mut row.deactivated,
            Outcome::AlreadyInactive => &mut row.already_inactive,
            Outcome::NotFound => &mut row.not_found,
            Outcome::Protected => &mut row.protected,
            Outcome::Ambiguous
            | Outcome::IdentityMismatch
            | Outcome::Invalid
            | Outcome::Forbidden
            | Outcome::Failed => &mut row.failed,
            Outcome::Scheduled | Outcome::Held => &mut row.scheduled_held,
            Outcome::Retrying => &mut row.retrying,
            Outcome::DryRun => &mut row.dry_run,
        };
        *counter += 1;
        if t.outcome.is_success() {
            row.successful += 1;
            if let Some(effective) = t.effective_at {
                // Milliseconds as f64 are exact far beyond any real interval.
                #[allow(clippy::cast_precision_loss)]
                let h = (t.decided_at - effective).num_milliseconds() as f64 / 3_600_000.0;
                hours.push(h);
            }
        }
    }
    let weeks = rows
        .into_iter()
        .map(|(mut row, mut hours)| {
            hours.sort_by(f64::total_cmp);
            row.sla_measured = hours.len() as u64;
            row.sla_over_24h = hours.iter().filter(|h| **h > SLA_HOURS).count() as u64;
            row.sla_median_hours = percentile(&hours, 0.5).map(round2);
            row.sla_p95_hours = percentile(&hours, 0.95).map(round2);
            row
        })
        .collect();
    WeeklyReport { tz, as_of, weeks }
}

/// The `p` quantile of sorted values by linear interpolation between closest
/// ranks (PostgreSQL `percentile_cont`); `None` when empty.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    #[allow(clippy::cast_precision_loss)]
    let rank = p.clamp(0.0, 1.0) * last as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(last);
    let (a, b) = (sorted.get(lo)?, sorted.get(hi)?);
    #[allow(clippy::cast_precision_loss)]
    Some(a + (b - a) * (rank - lo as f64))
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn percentile_interpolates_like_percentile_cont() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        let p95 = percentile(&v, 0.95).unwrap();
        assert!((p95 - 3.85).abs() < 1e-9, "{p95}");
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_monday_0430z_is_a_different_week_in_new_york() {
        let t = [TerminationSummary {
            first_seen_at: at("2026-03-02T04:30:00Z"),
            outcome: Outcome::Deactivated,
            decided_at: at("2026-03-02T04:30:00Z"),
            effective_at: Some(at("2026-03-01T05:00:00Z")),
        }];
        let first = NaiveDate::from_ymd_opt(2026, 2, 23).unwrap();
        let utc = summarise(&t, first, 2, Tz::UTC, at("2026-03-03T00:00:00Z"));
        assert_eq!(
            utc.weeks.iter().map(|w| w.total).collect::<Vec<_>>(),
            [0, 1]
        );
        let ny = summarise(
            &t,
            first,
            2,
            chrono_tz::America::New_York,
            at("2026-03-03T00:00:00Z"),
        );
        assert_eq!(ny.weeks.iter().map(|w| w.total).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(ny.weeks[0].week, "2026-W09");
        assert_eq!(ny.weeks[0].sla_median_hours, Some(23.5));
        assert_eq!(ny.weeks[0].sla_over_24h, 0);
    }

    #[test]
    fn midnight_skipped_by_dst_is_the_first_real_instant() {
        // Santiago moved clocks from 00:00 to 01:00 on 2025-09-07.
        let day = NaiveDate::from_ymd_opt(2025, 9, 7).unwrap();
        let m = local_midnight(day, chrono_tz::America::Santiago);
        assert_eq!(m, at("2025-09-07T04:00:00Z"));
    }
}
