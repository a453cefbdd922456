//! The weekly compliance summary: one row per ISO week (Monday 00:00 in the
//! report's zone) with per-termination outcome counts and the SLA figures. Week
//! boundaries are computed here (chrono-tz) and handed to
//! [`AuditStore::weekly_buckets`] as instants; renders in `render` and `chart`.

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::ReportError;
use crate::audit::{AuditStore, BucketCounts, ChainHead};

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
    /// Withdrawn before being carried out (a rehire cancelled the hold, or
    /// `replay-dlq` found it superseded).
    pub rescinded: u64,
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
    /// The audit chain's head when the report was made (`None`: empty log). The
    /// renderings end with it so that an archived report pins the chain: `audit
    /// verify --expect-head` later fails if rows were removed from its end.
    pub chain_head: Option<ChainHead>,
}

/// Serializes a zone as its IANA name (also used by `pending`).
pub(super) fn tz_name<S: serde::Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
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

/// The Mondays of the `weeks` ISO weeks (at least 1) ending with the week that
/// contains `now` in `tz`, and the `weeks + 1` instants bounding them.
pub(super) fn week_bounds(
    now: DateTime<Utc>,
    weeks: u32,
    tz: Tz,
) -> (Vec<NaiveDate>, Vec<DateTime<Utc>>) {
    let weeks = weeks.max(1);
    let this_monday = monday_of(now.with_timezone(&tz).date_naive());
    let first_monday = this_monday - Days::new(7 * u64::from(weeks - 1));
    let mondays: Vec<NaiveDate> = (0..=weeks)
        .map(|i| first_monday + Days::new(7 * u64::from(i)))
        .collect();
    let bounds = mondays.iter().map(|d| local_midnight(*d, tz)).collect();
    (mondays[..mondays.len() - 1].to_vec(), bounds)
}

/// The weekly summary of the `weeks` ISO weeks (at least 1) ending with the week
/// that contains `now` in `tz`, counting only rows created at or before `now`
/// (so a report is reproducible for a given `now`), with the chain head as the
/// report is made. A termination belongs to the
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
    let (mondays, bounds) = week_bounds(now, weeks, tz);
    let buckets = store.weekly_buckets(&bounds, now).await?;
    // Read after the counts: a head at least as new as every row they include.
    let chain_head = store.head().await?;
    let weeks = mondays
        .iter()
        .zip(
            buckets
                .iter()
                .chain(std::iter::repeat(&BucketCounts::default())),
        )
        .map(|(monday, b)| week_row(*monday, b))
        .collect();
    Ok(WeeklyReport {
        tz,
        as_of: now,
        weeks,
        chain_head,
    })
}

fn week_row(monday: NaiveDate, b: &BucketCounts) -> WeekRow {
    let iso = monday.iso_week();
    // Indexes follow `Outcome::ALL`.
    let [
        deactivated,
        already_inactive,
        not_found,
        ambiguous,
        identity_mismatch,
        protected,
        invalid,
        forbidden,
        failed,
        retrying,
        scheduled,
        held,
        dry_run,
        rescinded,
    ] = b.by_outcome;
    let total = b.by_outcome.iter().sum();
    WeekRow {
        week: format!("{}-W{:02}", iso.year(), iso.week()),
        week_start: monday,
        total,
        successful: deactivated + already_inactive,
        failed: ambiguous + identity_mismatch + invalid + forbidden + failed,
        received: total,
        deactivated,
        already_inactive,
        not_found,
        protected,
        scheduled_held: scheduled + held,
        retrying,
        dry_run,
        rescinded,
        sla_measured: b.sla_measured,
        sla_median_hours: b.sla_median_hours.map(round2),
        sla_p95_hours: b.sla_p95_hours.map(round2),
        sla_over_24h: b.sla_over_24h,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Outcome;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weeks_start_on_monday_midnight_in_the_zone() {
        let now = at("2026-03-12T12:00:00Z");
        let (mondays, utc) = week_bounds(now, 2, Tz::UTC);
        assert_eq!(mondays[0].to_string(), "2026-03-02");
        assert_eq!(
            utc,
            [
                at("2026-03-02T00:00:00Z"),
                at("2026-03-09T00:00:00Z"),
                at("2026-03-16T00:00:00Z")
            ]
        );
        // New York is UTC-5 until DST starts on 2026-03-08, then UTC-4.
        let (_, ny) = week_bounds(now, 2, chrono_tz::America::New_York);
        assert_eq!(
            ny,
            [
                at("2026-03-02T05:00:00Z"),
                at("2026-03-09T04:00:00Z"),
                at("2026-03-16T04:00:00Z")
            ]
        );
        // So 2026-03-02T04:30Z is in W10 in UTC but before W10 in New York.
        let row = at("2026-03-02T04:30:00Z");
        assert!(utc[0] <= row && row < utc[1]);
        assert!(row < ny[0]);
    }

    #[test]
    fn week_rows_fold_outcomes_into_the_seed_fields() {
        let mut b = BucketCounts::default();
        for (o, n) in [
            (Outcome::Deactivated, 3),
            (Outcome::AlreadyInactive, 1),
            (Outcome::Forbidden, 1),
            (Outcome::Failed, 2),
            (Outcome::Held, 1),
            (Outcome::Scheduled, 1),
        ] {
            let i = Outcome::ALL.iter().position(|x| *x == o).unwrap();
            b.by_outcome[i] = n;
        }
        b.sla_median_hours = Some(22.875);
        let w = week_row(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(), &b);
        assert_eq!(w.week, "2026-W01");
        assert_eq!(
            (w.total, w.successful, w.failed, w.scheduled_held),
            (9, 4, 3, 2)
        );
        assert_eq!(w.sla_median_hours, Some(22.88));
    }

    #[test]
    fn midnight_skipped_by_dst_is_the_first_real_instant() {
        // Santiago moved clocks from 00:00 to 01:00 on 2025-09-07.
        let day = NaiveDate::from_ymd_opt(2025, 9, 7).unwrap();
        let m = local_midnight(day, chrono_tz::America::Santiago);
        assert_eq!(m, at("2025-09-07T04:00:00Z"));
    }
}
