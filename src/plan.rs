//! What each person came to, as the consumer pool reports it ([`Decision`]),
//! collected for the closing summary of `run` ([`Journal`]), and a dry run's plan
//! as one document a reviewer can approve ([`PlanDocument`]): per person the
//! externalId, the resolved userId, the planned action, the groups to remove,
//! the roles and the reason, plus the manifest's digest, the settings that shape
//! the plan and the rejected records.
//!
//! Pure data and wording: no I/O, no SCIM, no queue. It never decides an
//! outcome; it records and describes the ones `engine` and `consume` decided.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::dispatch::{DispatchReport, RejectedRecord};
use crate::domain::{EffectiveAt, Outcome};
use crate::engine::{GroupRef, Report};

/// One person's end in a run, reported by the consumer pool once the audit row
/// is written (never for an attempt that will be retried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// HR's identifier (the raw text when the message could not be decoded).
    pub external_id: Option<String>,
    /// Zero-based index of the record in its manifest.
    pub index: Option<u64>,
    /// The resolved SCIM user id (else the manifest's, when it gave one).
    pub user_id: Option<String>,
    /// What was recorded: a terminal outcome, `scheduled`, or `dry_run`.
    pub outcome: Outcome,
    /// In a dry run: what a real run would come to now — `deactivated`,
    /// `already_inactive`, `not_found`, `ambiguous`, `protected`, … — or
    /// `scheduled` when the termination is not yet due. `None` otherwise.
    pub planned: Option<Outcome>,
    /// For a not-yet-due termination in a dry run: what a real run would do
    /// once it is due, judged from the directory today.
    pub when_due: Option<Outcome>,
    /// Groups removed (dry run: that would be removed).
    pub groups: Vec<GroupRef>,
    /// Roles removed (dry run: that would be), when `REMOVE_ROLES` is on.
    pub roles: Vec<String>,
    /// When the termination takes effect.
    pub effective_at: Option<DateTime<Utc>>,
    /// Why, for anything but plain success.
    pub reason: Option<String>,
    /// True when the audit already held a terminal outcome from an earlier run
    /// (`outcome` is that one); nothing was done now.
    pub earlier: bool,
}

impl Decision {
    /// The outcome that describes this person in a summary: the planned one in
    /// a dry run, else the recorded one.
    pub fn shown(&self) -> Outcome {
        self.planned.unwrap_or(self.outcome)
    }
}

/// What a real run would come to now, from a dry run's engine report: the
/// engine's plan for a user it found (`deactivated`, `already_inactive`), else
/// its outcome (`not_found`, `ambiguous`, …); a transient failure counts as
/// `failed` (the plan could not be made).
pub fn planned_now(report: &Report) -> Outcome {
    match report.outcome {
        Outcome::DryRun => report.planned.unwrap_or(Outcome::Deactivated),
        Outcome::Retrying => Outcome::Failed,
        other => other,
    }
}

/// The action name a plan uses for an outcome: `deactivate` for an active user,
/// `already_inactive` for one with only leftover groups or roles, `scheduled`,
/// and otherwise the outcome's own name (`not_found`, `ambiguous`, …).
pub fn action_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Deactivated => "deactivate",
        other => other.as_str(),
    }
}

/// A short phrase for people: "would deactivate", "already inactive",
/// "scheduled (not due)", "not found", "identity mismatch", ….
pub fn would_label(outcome: Outcome) -> String {
    match outcome {
        Outcome::Deactivated => "would deactivate".into(),
        Outcome::AlreadyInactive => "already inactive".into(),
        Outcome::Scheduled => "scheduled (not due)".into(),
        other => other.as_str().replace('_', " "),
    }
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The audit text of a dry-run row: what would have happened, in words, e.g.
/// `dry run: would deactivate user u-1 and remove it from 2 group(s): g1, g2`,
/// `dry run: scheduled for 2026-12-07T00:00:00Z (not due); when due, would
/// deactivate user u-1 …`, `dry run: would be not_found: no user …`.
pub fn describe(
    planned: Outcome,
    when_due: Option<Outcome>,
    user_id: Option<&str>,
    groups: &[GroupRef],
    roles: &[String],
    effective_at: Option<DateTime<Utc>>,
    detail: Option<&str>,
) -> String {
    let action = |o: Outcome| -> String {
        let user = user_id
            .map(|u| format!("user {u}"))
            .unwrap_or_else(|| "the user".into());
        let mut text = match o {
            Outcome::Deactivated => format!("would deactivate {user}"),
            Outcome::AlreadyInactive => format!("{user} is already inactive"),
            other => format!("would be {other}"),
        };
        if o.is_success() {
            if groups.is_empty() {
                text.push_str("; no group to remove");
            } else {
                let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
                text.push_str(&format!(
                    "; would remove it from {} group(s): {}",
                    ids.len(),
                    ids.join(", ")
                ));
            }
            if !roles.is_empty() {
                text.push_str(&format!("; would remove role(s): {}", roles.join(", ")));
            }
        }
        if let Some(d) = detail {
            text.push_str(&format!(": {d}"));
        }
        text
    };
    match (planned, when_due) {
        (Outcome::Scheduled, Some(then)) => format!(
            "dry run: scheduled for {} (not due); when due, {}",
            effective_at.map_or_else(|| "later".to_owned(), instant),
            action(then)
        ),
        (Outcome::Scheduled, None) => format!(
            "dry run: scheduled for {} (not due)",
            effective_at.map_or_else(|| "later".to_owned(), instant)
        ),
        (o, _) => format!("dry run: {}", action(o)),
    }
}

/// Collects [`Decision`]s while a run goes on: every one (a dry run's plan), or
/// only those that need review — not deprovisioned now (`not_found`,
/// `protected`, dead-lettered, `scheduled`) — up to a limit, with a count of the
/// rest so memory stays bounded.
#[derive(Debug)]
pub struct Journal {
    keep_all: bool,
    limit: usize,
    inner: Mutex<(Vec<Decision>, u64)>,
}

impl Journal {
    /// Keeps every decision (memory grows with the manifest: one small record
    /// per person).
    pub fn everyone() -> Self {
        Self {
            keep_all: true,
            limit: usize::MAX,
            inner: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Keeps the first `limit` decisions that need review and counts the rest.
    pub fn needing_review(limit: usize) -> Self {
        Self {
            keep_all: false,
            limit,
            inner: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Takes one decision.
    pub fn record(&self, d: &Decision) {
        // A person finished by an earlier run as not_found, protected, rescinded
        // or dead-lettered still has no access removed: a rerun lists them again
        // rather than hiding them behind "already done".
        if !self.keep_all && d.shown().is_success() {
            return;
        }
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.0.len() < self.limit {
            inner.0.push(d.clone());
        } else {
            inner.1 += 1;
        }
    }

    /// The kept decisions in manifest order (those without an index last), and
    /// how many more were not kept.
    pub fn finish(&self) -> (Vec<Decision>, u64) {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kept = inner.0.clone();
        kept.sort_by_key(|d| (d.index.is_none(), d.index, d.external_id.clone()));
        (kept, inner.1)
    }
}

/// The manifest a plan is about.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanManifest {
    /// `s3://bucket/key` or the local path.
    pub source: String,
    /// The S3 version id or ETag, when the manifest is in S3.
    pub version: Option<String>,
    /// SHA-256 of the bytes the plan was made from.
    pub sha256: Option<String>,
    /// `json`, `ndjson` or `csv`.
    pub format: Option<String>,
    /// Records in the file.
    pub records: u64,
    /// Distinct valid terminations (each planned below).
    pub valid: u64,
    /// Records rejected on their own.
    pub rejected: u64,
    /// Repeats collapsed into an earlier record.
    pub duplicates: u64,
    /// Why the file was rejected whole, when it was (then nothing is planned).
    pub rejected_file: Option<String>,
}

impl PlanManifest {
    /// The manifest part of a plan, from the dispatcher's report.
    pub fn from_report(report: &DispatchReport) -> Self {
        let o = &report.origin;
        let s = &report.summary;
        Self {
            source: if o.bucket == "local" {
                o.key.clone()
            } else {
                format!("s3://{}/{}", o.bucket, o.key)
            },
            version: o.version.clone(),
            sha256: report.sha256.clone(),
            format: s.format.map(|f| f.as_str().to_owned()),
            records: s.records,
            valid: s.valid,
            rejected: s.rejected,
            duplicates: s.duplicates,
            rejected_file: report.rejected_file.clone(),
        }
    }
}

/// The settings that change what a plan does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSettings {
    /// The SCIM service planned against (a URL without credentials), or the
    /// sandbox simulator.
    pub scim_target: String,
    /// Whether a sandbox simulator was used instead of a real org.
    pub sandbox: bool,
    /// `REMOVE_ROLES`: roles are removed with the deactivation.
    pub remove_roles: bool,
    /// `HR_TIMEZONE`, in which date-only terminations are read.
    pub hr_timezone: String,
    /// `TERMINATION_EFFECTIVE_AT`.
    pub termination_effective_at: EffectiveAt,
    /// The audit database the plan's `dry_run` rows went to (no password).
    pub audit: String,
}

/// One person in a plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedPerson {
    /// Zero-based record index in the manifest.
    pub index: Option<u64>,
    /// HR's identifier.
    pub external_id: Option<String>,
    /// The SCIM user id the plan resolved (or the manifest's).
    pub user_id: Option<String>,
    /// `deactivate`, `already_inactive`, `scheduled`, `not_found`,
    /// `ambiguous`, `identity_mismatch`, `protected`, `already_done`, ….
    pub action: &'static str,
    /// For `scheduled`: what would be done once due, judged today.
    pub when_due: Option<&'static str>,
    /// When the termination takes effect.
    pub effective_at: Option<DateTime<Utc>>,
    /// Ids of the groups the user would be removed from.
    pub groups: Vec<String>,
    /// Roles that would be removed (with `REMOVE_ROLES`).
    pub roles: Vec<String>,
    /// Why, for anything but a plain deactivation.
    pub reason: Option<String>,
}

impl PlannedPerson {
    /// The plan entry of one decision.
    pub fn from_decision(d: &Decision) -> Self {
        let action = if d.earlier {
            "already_done"
        } else {
            action_name(d.shown())
        };
        let reason = if d.earlier {
            Some(format!("finished by an earlier run as {}", d.outcome))
        } else {
            d.reason.clone()
        };
        Self {
            index: d.index,
            external_id: d.external_id.clone(),
            user_id: d.user_id.clone(),
            action,
            when_due: d.when_due.map(action_name),
            effective_at: d.effective_at,
            groups: d.groups.iter().map(|g| g.id.clone()).collect(),
            roles: d.roles.clone(),
            reason,
        }
    }
}

/// A dry run's plan as one JSON document (`run --dry-run --format json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDocument {
    /// Always `deprovision-plan`.
    pub kind: &'static str,
    /// The document's format version (1).
    pub version: u32,
    /// When the plan was made.
    pub generated_at: DateTime<Utc>,
    /// The manifest, with its digest and counts.
    pub manifest: PlanManifest,
    /// The settings that shape the plan.
    pub settings: PlanSettings,
    /// People by planned action.
    pub counts: BTreeMap<&'static str, u64>,
    /// Every valid termination, in manifest order.
    pub people: Vec<PlannedPerson>,
    /// Records rejected on their own (the first 1,000; `manifest.rejected`
    /// counts all).
    pub rejected: Vec<RejectedRecord>,
    /// What the mass-deactivation breaker would do with this manifest in a
    /// real run.
    pub breaker: PlanBreaker,
    /// True when every valid termination is in `people` exactly once.
    pub reconciled: bool,
}

/// The mass-deactivation breaker's verdict on a planned manifest, judged as a
/// real run would judge it (rehires excluded), with nothing recorded. A
/// reviewer reads `wouldHold` to know whether the real run needs `--approve`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanBreaker {
    /// The terminations the breaker counts.
    pub terminations: u64,
    /// `true` when a real run without `--approve` would be held; `null` when
    /// the breaker could not judge (see `reason`).
    pub would_hold: Option<bool>,
    /// Which limit it trips (e.g. `… MAX_TERMINATIONS_PER_MANIFEST=500`), or
    /// why it could not judge; `null` when it would not hold.
    pub reason: Option<String>,
    /// The org's active users, when the share limit needed them counted.
    pub active_users: Option<u64>,
    /// Whether this run was given `--approve`.
    pub approved: bool,
    /// Set when an operator rejected this content (`deprovision reject`): a real
    /// run refuses it, even with `--approve`. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<PlanRejection>,
}

/// An operator's earlier rejection of the planned content (the breaker's record
/// of `deprovision reject MANIFEST_ID`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRejection {
    /// The `MANIFEST_ID` (16 hex digits) that was rejected.
    pub manifest_id: String,
    /// Who rejected it (`--by`), when recorded.
    pub by: Option<String>,
    /// When (RFC 3339, UTC), when recorded.
    pub at: Option<chrono::DateTime<chrono::Utc>>,
}

impl PlanBreaker {
    /// The verdict of [`crate::breaker::Breaker::preview`] on manifest
    /// `manifest_id` with `terminations` counted, for a run given `--approve`
    /// or not: would it hold, why, the active users counted, and who rejected
    /// it; a failed preview gives `wouldHold: null` and the error as `reason`.
    /// Shared by `run --dry-run` and `dispatch --dry-run`.
    pub fn from_preview(
        manifest_id: &str,
        terminations: u64,
        approved: bool,
        preview: &Result<crate::breaker::Preview, crate::breaker::BreakerError>,
    ) -> Self {
        match preview {
            Ok(p) => Self {
                terminations,
                would_hold: Some(p.hold.is_some()),
                reason: p.hold.clone(),
                active_users: p.active_users,
                approved,
                rejected: p.rejected().map(|r| PlanRejection {
                    manifest_id: manifest_id.to_owned(),
                    by: r.decided_by.clone(),
                    at: r.decided_at,
                }),
            },
            Err(e) => Self {
                terminations,
                reason: Some(format!("could not assess: {e}")),
                approved,
                ..Self::default()
            },
        }
    }
}

impl PlanDocument {
    /// Builds the plan from the dispatcher's report and every decision.
    pub fn new(
        report: &DispatchReport,
        settings: PlanSettings,
        breaker: PlanBreaker,
        decisions: &[Decision],
        reconciled: bool,
    ) -> Self {
        let people: Vec<PlannedPerson> =
            decisions.iter().map(PlannedPerson::from_decision).collect();
        let mut counts = BTreeMap::new();
        for p in &people {
            *counts.entry(p.action).or_insert(0) += 1;
        }
        Self {
            kind: "deprovision-plan",
            version: 1,
            generated_at: Utc::now(),
            manifest: PlanManifest::from_report(report),
            settings,
            counts,
            people,
            rejected: report.rejected_records.clone(),
            breaker,
            reconciled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(outcome: Outcome, planned: Option<Outcome>, index: u64) -> Decision {
        Decision {
            external_id: Some(format!("E{index}")),
            index: Some(index),
            user_id: Some(format!("u{index}")),
            outcome,
            planned,
            when_due: None,
            groups: vec![GroupRef {
                id: "g1".into(),
                display: None,
            }],
            roles: vec![],
            effective_at: None,
            reason: None,
            earlier: false,
        }
    }

    #[test]
    fn review_journal_keeps_only_what_needs_review_up_to_its_limit() {
        let j = Journal::needing_review(2);
        j.record(&decision(Outcome::Deactivated, None, 0));
        j.record(&decision(Outcome::NotFound, None, 5));
        j.record(&decision(Outcome::Protected, None, 3));
        j.record(&decision(Outcome::Failed, None, 1));
        let mut earlier = decision(Outcome::NotFound, None, 9);
        earlier.earlier = true;
        j.record(&earlier);
        let mut earlier_done = decision(Outcome::Deactivated, None, 10);
        earlier_done.earlier = true;
        j.record(&earlier_done);
        let (kept, more) = j.finish();
        let idx: Vec<_> = kept.iter().map(|d| d.index).collect();
        assert_eq!(
            idx,
            vec![Some(3), Some(5)],
            "sorted by index, first two kept"
        );
        assert_eq!(
            more, 2,
            "the earlier not_found counts; the earlier success does not"
        );

        let all = Journal::everyone();
        all.record(&decision(Outcome::DryRun, Some(Outcome::Deactivated), 1));
        all.record(&earlier);
        assert_eq!(all.finish().0.len(), 2);
    }

    #[test]
    fn dry_run_text_names_the_planned_action() {
        let g = [GroupRef {
            id: "g1".into(),
            display: Some("Sales".into()),
        }];
        let text = describe(
            Outcome::Deactivated,
            None,
            Some("u1"),
            &g,
            &["employee".into()],
            None,
            None,
        );
        assert_eq!(
            text,
            "dry run: would deactivate user u1; would remove it from 1 group(s): g1; would remove role(s): employee"
        );
        let at = DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = describe(
            Outcome::Scheduled,
            Some(Outcome::Deactivated),
            Some("u1"),
            &[],
            &[],
            Some(at),
            None,
        );
        assert_eq!(
            text,
            "dry run: scheduled for 2026-12-07T00:00:00Z (not due); when due, would deactivate user u1; no group to remove"
        );
        let text = describe(
            Outcome::NotFound,
            None,
            None,
            &[],
            &[],
            None,
            Some("no user has externalId \"E1\""),
        );
        assert_eq!(
            text,
            "dry run: would be not_found: no user has externalId \"E1\""
        );
        assert!(!text.contains("dry_run"));
        assert_eq!(would_label(Outcome::IdentityMismatch), "identity mismatch");
        assert_eq!(action_name(Outcome::Deactivated), "deactivate");
    }
}
