//! Protected accounts: people the engine never deactivates, whatever a manifest,
//! a message or an operator says — e.g. break-glass administrators. Owns the lists
//! from `PROTECTED_USERS` (userIds and/or externalIds) and `PROTECTED_GROUPS`
//! (Genesys group ids and/or display names; members are protected), and the
//! decision "is this resolved user protected?".
//!
//! Group membership is checked per termination, from the resolved user's own
//! groups (the engine reads them anyway): a group matches by id, or by display
//! name when the reference carries one. Genesys user references carry no display
//! name, so configured names are also resolved to ids with a `displayName eq`
//! group query (Genesys API description, getScimV2Groups), cached for
//! [`Protection::refresh`]. An entry that is not a UUID (Genesys group ids are)
//! and matches no group by name or id fails closed: every termination fails
//! with a reason naming it rather than protecting nobody, and
//! [`Protection::verify`] lets commands refuse to start. A lookup that fails
//! fails the termination (it is retried), never lets it through.
//!
//! Does not send mutating requests and does not audit (the engine returns the
//! `protected` outcome; its caller records it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::scim::{Reference, ScimError, ScimUser, Session};

/// How long resolved group names are trusted before they are looked up again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// The protected lists. Cheap to share behind an `Arc`; the name cache is
/// internally synchronised.
#[derive(Debug, Default)]
pub struct Protection {
    users: HashSet<String>,
    groups: HashSet<String>,
    groups_folded: HashSet<String>,
    refresh: Duration,
    resolved: Mutex<Option<(Instant, Arc<Resolved>)>>,
}

/// Resolved group names: group id → its display name (else the configured entry).
type Resolved = HashMap<String, String>;

/// Why a user is protected, for the audit row's `error_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The user's id is listed in `PROTECTED_USERS`.
    UserId(String),
    /// The user's externalId is listed in `PROTECTED_USERS`.
    ExternalId(String),
    /// The user is a member of a group listed in `PROTECTED_GROUPS`.
    Group {
        /// The group's id.
        id: String,
        /// How it was listed (its id or its display name).
        listed_as: String,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserId(id) => write!(f, "userId {id} is listed in PROTECTED_USERS"),
            Self::ExternalId(e) => write!(f, "externalId {e:?} is listed in PROTECTED_USERS"),
            Self::Group { id, listed_as } if id == listed_as => {
                write!(f, "member of group {id}, listed in PROTECTED_GROUPS")
            }
            Self::Group { id, listed_as } => write!(
                f,
                "member of group {listed_as:?} ({id}), listed in PROTECTED_GROUPS"
            ),
        }
    }
}

fn split(list: Option<&str>) -> impl Iterator<Item = String> + '_ {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Protection {
    /// The lists from their comma-separated settings (entries trimmed, empty
    /// entries ignored). `users`: userIds and externalIds, matched exactly and
    /// case-sensitively: externalId is `caseExact` (RFC 7643 §3.1), and so are
    /// Genesys user ids, so `e123` does not protect `E123` — list the exact
    /// spelling HR sends. `groups`: group ids (exact) or
    /// display names (case-insensitive, as Genesys compares them in filters).
    /// `refresh`: how long resolved group names are cached.
    pub fn new(users: Option<&str>, groups: Option<&str>, refresh: Duration) -> Self {
        let groups: HashSet<String> = split(groups).collect();
        Self {
            users: split(users).collect(),
            groups_folded: groups.iter().map(|g| g.to_lowercase()).collect(),
            groups,
            refresh,
            resolved: Mutex::new(None),
        }
    }

    /// True when nothing is protected (the check costs nothing).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    /// How many user entries and group entries are configured (for start-up logs).
    pub fn counts(&self) -> (usize, usize) {
        (self.users.len(), self.groups.len())
    }

    /// The cache lifetime of resolved group names.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Whether `user` (with its groups `groups`) is protected, and why. Reads
    /// group ids for configured names through `session` when the cache is stale
    /// and the user is in a group not yet matched. Errors: the SCIM error of that
    /// lookup (the caller must not deactivate then).
    pub async fn check(
        &self,
        session: &mut Session<'_>,
        user: &ScimUser,
        groups: &[Reference],
    ) -> Result<Option<Reason>, ScimError> {
        if self.users.contains(&user.id) {
            return Ok(Some(Reason::UserId(user.id.clone())));
        }
        if let Some(e) = &user.external_id
            && self.users.contains(e)
        {
            return Ok(Some(Reason::ExternalId(e.clone())));
        }
        if self.groups.is_empty() {
            return Ok(None);
        }
        for g in groups {
            if self.groups.contains(&g.value) {
                return Ok(Some(Reason::Group {
                    id: g.value.clone(),
                    listed_as: g.value.clone(),
                }));
            }
            if let Some(d) = &g.display
                && self.groups_folded.contains(&d.to_lowercase())
            {
                return Ok(Some(Reason::Group {
                    id: g.value.clone(),
                    listed_as: d.clone(),
                }));
            }
        }
        // Resolved even for a user in no group: a name that matches no group
        // must stop the termination, not protect nobody silently.
        if self.groups.iter().all(|g| is_group_id(g)) {
            return Ok(None);
        }
        let resolved = self.resolved_ids(session).await?;
        Ok(groups.iter().find_map(|g| {
            resolved.get(&g.value).map(|name| Reason::Group {
                id: g.value.clone(),
                listed_as: name.clone(),
            })
        }))
    }

    /// Resolves every configured group name now (ignoring the cache) and reads
    /// every configured group id once (`GET Groups/{id}`), for start-up checks:
    /// a mistyped UUID would otherwise protect nobody, silently. Errors:
    /// [`ScimError::Config`] naming an entry that matches no group (a name by
    /// display name or id, a UUID by id); the SCIM error of a failed lookup.
    pub async fn verify(&self, session: &mut Session<'_>) -> Result<(), ScimError> {
        *self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.resolved_ids(session).await?;
        for id in self.groups.iter().filter(|g| is_group_id(g)) {
            if session.get_group(id).await?.is_none() {
                return Err(ScimError::Config(format!(
                    "PROTECTED_GROUPS entry {id:?} is no group's id; \
                     nobody is deactivated until it is corrected or removed"
                )));
            }
        }
        Ok(())
    }

    /// Group ids of the configured names (id → name), from the cache or looked
    /// up now. A non-UUID entry matching no group is an error (never cached).
    async fn resolved_ids(&self, session: &mut Session<'_>) -> Result<Arc<Resolved>, ScimError> {
        if let Some((at, ids)) = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < self.refresh
        {
            return Ok(ids.clone());
        }
        let mut ids = HashMap::new();
        for name in self.groups.iter().filter(|g| !is_group_id(g)) {
            let found = session.find_groups_by_display_name(name).await?;
            let exact: Vec<&Reference> = found
                .iter()
                .filter(|g| {
                    g.display
                        .as_deref()
                        .is_none_or(|d| d.to_lowercase() == name.to_lowercase())
                })
                .collect();
            if exact.is_empty() && !found.iter().any(|g| g.value == *name) {
                return Err(ScimError::Config(format!(
                    "PROTECTED_GROUPS entry {name:?} matches no group (by display name or id); \
                     nobody is deactivated until it is corrected or removed"
                )));
            }
            ids.extend(exact.into_iter().map(|g| {
                let shown = g.display.clone().unwrap_or_else(|| name.clone());
                (g.value.clone(), shown)
            }));
        }
        let ids = Arc::new(ids);
        *self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), ids.clone()));
        Ok(ids)
    }
}

/// Genesys group ids are UUIDs; such entries are taken as given, not looked up.
fn is_group_id(entry: &str) -> bool {
    uuid::Uuid::try_parse(entry).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_trimmed_and_empty_entries_ignored() {
        let p = Protection::new(Some(" E1, ,u-2 "), Some("Break Glass,"), DEFAULT_REFRESH);
        assert_eq!(p.counts(), (2, 1));
        assert!(!p.is_empty());
        assert!(Protection::new(None, Some(" , "), DEFAULT_REFRESH).is_empty());
    }

    #[test]
    fn reasons_read_well() {
        let r = Reason::Group {
            id: "g1".into(),
            listed_as: "Break Glass".into(),
        };
        assert_eq!(
            r.to_string(),
            "member of group \"Break Glass\" (g1), listed in PROTECTED_GROUPS"
        );
    }
}
