//! Cross-process claims on a person while a termination runs: a lease row in
//! `termination_claims`, keyed by externalId, so that two service instances (or a
//! service and `deprovision user`) never deprovision the same person at once —
//! not even for two different termination dates, which have different
//! idempotency keys. Taken with one `INSERT … ON CONFLICT DO UPDATE … WHERE the
//! lease lapsed` (atomic on both backends), released with a `DELETE` by the
//! owner; a holder that dies loses its claim when the lease lapses.
//!
//! The table lives in the audit database so that every worker able to audit can
//! claim, but it is coordination state, not evidence: it is the one table here
//! whose rows are updated and deleted, and it never touches `scim_audit_log`.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{AuditError, AuditStore, Backend};

/// What an attempt to claim a person came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    /// The caller holds the claim until its lease lapses or it releases it.
    Taken,
    /// Someone else holds a live claim on this person.
    HeldElsewhere {
        /// The holder's owner string (process, pool and message), when the row
        /// could still be read.
        owner: Option<String>,
        /// When the holder's lease lapses, when known.
        expires_at: Option<DateTime<Utc>>,
    },
}

impl ClaimState {
    /// True when the caller now holds the claim.
    pub fn is_taken(&self) -> bool {
        matches!(self, Self::Taken)
    }
}

impl std::fmt::Display for ClaimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Taken => f.write_str("claimed"),
            Self::HeldElsewhere { owner, expires_at } => {
                f.write_str("being worked on elsewhere")?;
                if let Some(owner) = owner {
                    write!(f, " by {owner}")?;
                }
                if let Some(at) = expires_at {
                    write!(
                        f,
                        " (lease until {})",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )?;
                }
                Ok(())
            }
        }
    }
}

fn claim_error(person: &str, source: sqlx::Error) -> AuditError {
    AuditError::Claim {
        person: person.to_owned(),
        source,
    }
}

/// Whole milliseconds of a lease, at least one (a zero lease would never hold).
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl AuditStore {
    /// Claims `person` (an externalId) for `owner` for `lease`: taken when nobody
    /// holds it, when the holder's lease has lapsed, or when `owner` already
    /// holds it (a renewal). PostgreSQL measures the lease on the database clock,
    /// so instances with skewed clocks agree; SQLite on the process clock (one
    /// file, one machine).
    ///
    /// Errors: [`AuditError::Claim`] (e.g. the table is missing: run
    /// `deprovision migrate`; or the role may not write it).
    pub async fn claim(
        &self,
        person: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<ClaimState, AuditError> {
        let ms = lease_ms(lease);
        match &self.backend {
            Backend::Postgres(s) => {
                let pool = s.pool();
                let taken: Option<(String,)> = sqlx::query_as(
                    "INSERT INTO termination_claims (external_id, owner, claimed_at, expires_at) \
                     VALUES ($1, $2, now(), now() + make_interval(secs => $3::double precision / 1000)) \
                     ON CONFLICT (external_id) DO UPDATE \
                       SET owner = EXCLUDED.owner, claimed_at = EXCLUDED.claimed_at, \
                           expires_at = EXCLUDED.expires_at \
                       WHERE termination_claims.expires_at <= now() \
                          OR termination_claims.owner = EXCLUDED.owner \
                     RETURNING owner",
                )
                .bind(person)
                .bind(owner)
                .bind(ms)
                .fetch_optional(pool)
                .await
                .map_err(|e| claim_error(person, e))?;
                if taken.is_some() {
                    return Ok(ClaimState::Taken);
                }
                let holder: Option<(String, DateTime<Utc>)> = sqlx::query_as(
                    "SELECT owner, expires_at FROM termination_claims WHERE external_id = $1",
                )
                .bind(person)
                .fetch_optional(pool)
                .await
                .map_err(|e| claim_error(person, e))?;
                Ok(ClaimState::HeldElsewhere {
                    owner: holder.as_ref().map(|(o, _)| o.clone()),
                    expires_at: holder.map(|(_, at)| at),
                })
            }
            Backend::Sqlite(s) => {
                let pool = s.pool();
                let now = Utc::now().timestamp_millis();
                let taken: Option<(String,)> = sqlx::query_as(
                    "INSERT INTO termination_claims (external_id, owner, claimed_at, expires_at) \
                     VALUES (?1, ?2, ?3, ?3 + ?4) \
                     ON CONFLICT (external_id) DO UPDATE \
                       SET owner = excluded.owner, claimed_at = excluded.claimed_at, \
                           expires_at = excluded.expires_at \
                       WHERE termination_claims.expires_at <= ?3 \
                          OR termination_claims.owner = excluded.owner \
                     RETURNING owner",
                )
                .bind(person)
                .bind(owner)
                .bind(now)
                .bind(ms)
                .fetch_optional(pool)
                .await
                .map_err(|e| claim_error(person, e))?;
                if taken.is_some() {
                    return Ok(ClaimState::Taken);
                }
                let holder: Option<(String, i64)> = sqlx::query_as(
                    "SELECT owner, expires_at FROM termination_claims WHERE external_id = ?1",
                )
                .bind(person)
                .fetch_optional(pool)
                .await
                .map_err(|e| claim_error(person, e))?;
                Ok(ClaimState::HeldElsewhere {
                    owner: holder.as_ref().map(|(o, _)| o.clone()),
                    expires_at: holder.and_then(|(_, ms)| Utc.timestamp_millis_opt(ms).single()),
                })
            }
        }
    }

    /// Releases `owner`'s claim on `person`; a claim that lapsed and was taken
    /// over by someone else is left alone. Releasing nothing is not an error.
    ///
    /// Errors: [`AuditError::Claim`].
    pub async fn release_claim(&self, person: &str, owner: &str) -> Result<(), AuditError> {
        match &self.backend {
            Backend::Postgres(s) => {
                sqlx::query("DELETE FROM termination_claims WHERE external_id = $1 AND owner = $2")
                    .bind(person)
                    .bind(owner)
                    .execute(s.pool())
                    .await
                    .map(|_| ())
            }
            Backend::Sqlite(s) => {
                sqlx::query("DELETE FROM termination_claims WHERE external_id = ?1 AND owner = ?2")
                    .bind(person)
                    .bind(owner)
                    .execute(s.pool())
                    .await
                    .map(|_| ())
            }
        }
        .map_err(|e| claim_error(person, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (AuditStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("claims.db").display());
        let store = AuditStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn a_claim_excludes_others_until_released() {
        let (store, _dir) = store().await;
        let lease = Duration::from_secs(60);
        assert_eq!(
            store.claim("E1", "a", lease).await.unwrap(),
            ClaimState::Taken
        );
        let other = store.claim("E1", "b", lease).await.unwrap();
        match &other {
            ClaimState::HeldElsewhere { owner, expires_at } => {
                assert_eq!(owner.as_deref(), Some("a"));
                assert!(expires_at.is_some_and(|t| t > Utc::now()));
            }
            ClaimState::Taken => panic!("two owners hold E1"),
        }
        assert!(other.to_string().contains("by a"), "{other}");
        // Another person is unaffected; the owner may renew.
        assert!(store.claim("E2", "b", lease).await.unwrap().is_taken());
        assert!(store.claim("E1", "a", lease).await.unwrap().is_taken());
        // Only the owner's release counts.
        store.release_claim("E1", "b").await.unwrap();
        assert!(!store.claim("E1", "b", lease).await.unwrap().is_taken());
        store.release_claim("E1", "a").await.unwrap();
        assert!(store.claim("E1", "b", lease).await.unwrap().is_taken());
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_taken_over() {
        let (store, _dir) = store().await;
        assert!(
            store
                .claim("E1", "crashed", Duration::from_millis(1))
                .await
                .unwrap()
                .is_taken()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            store
                .claim("E1", "next", Duration::from_secs(60))
                .await
                .unwrap()
                .is_taken()
        );
        // The crashed holder's late release does not free the new claim.
        store.release_claim("E1", "crashed").await.unwrap();
        assert!(
            !store
                .claim("E1", "third", Duration::from_secs(60))
                .await
                .unwrap()
                .is_taken()
        );
    }
}
