//! The simulated directory: users, groups, and memberships held on the groups
//! (RFC 7643 §4.1.2: a user's `groups` is read-only and derived). Keeps the
//! lookup indexes (id, externalId, userName, member → groups) consistent with the
//! records. Knows nothing about HTTP, tokens or switches.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::SimError;
use super::seed::Seed;

/// One user record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct User {
    pub id: String,
    pub user_name: String,
    pub display_name: String,
    pub external_id: Option<String>,
    pub title: Option<String>,
    pub active: bool,
    /// Soft-deleted (DELETE): invisible to every request, id kept reserved.
    pub deleted: bool,
    pub roles: Vec<String>,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
}

/// One group record; `members` holds user ids in the order they were added.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: Vec<String>,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
}

/// The directory with its indexes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Store {
    users: Vec<User>,
    user_index: HashMap<String, usize>,
    by_external_id: HashMap<String, Vec<usize>>,
    /// Keyed by lowercase userName: userName is not case-exact (RFC 7643 §4.1.1).
    by_user_name: HashMap<String, Vec<usize>>,
    groups: Vec<Group>,
    group_index: HashMap<String, usize>,
    /// user id → indexes of the groups holding it.
    member_of: HashMap<String, BTreeSet<usize>>,
}

impl Store {
    /// Builds the directory from a seed. Group references that name no seeded
    /// group (by id or displayName) create that group.
    pub fn from_seed(seed: &Seed) -> Result<Self, SimError> {
        seed.validate()?;
        let now = Utc::now();
        let mut store = Store::default();
        for g in &seed.groups {
            store.insert_group(Group {
                id: g.id.clone(),
                display_name: g.display_name.clone(),
                external_id: g.external_id.clone(),
                members: Vec::new(),
                version: 1,
                created: now,
                last_modified: now,
            });
        }
        for u in &seed.users {
            store.insert_user(User {
                id: u.id.clone(),
                user_name: u.user_name.clone(),
                display_name: u
                    .display_name
                    .clone()
                    .unwrap_or_else(|| u.user_name.clone()),
                external_id: u.external_id.clone(),
                title: None,
                active: u.active,
                deleted: false,
                roles: u.roles.clone(),
                version: 1,
                created: now,
                last_modified: now,
            });
            for r in &u.groups {
                let key = r.key();
                let gi = match store
                    .group_index
                    .get(key)
                    .copied()
                    .or_else(|| store.groups.iter().position(|g| g.display_name == key))
                {
                    Some(gi) => gi,
                    None => {
                        let id = format!("seed-group-{}", store.groups.len() + 1);
                        if store.group_index.contains_key(&id) {
                            return Err(SimError::SeedInvalid {
                                reason: format!("generated group id {id:?} is already used"),
                            });
                        }
                        store.insert_group(Group {
                            id,
                            display_name: key.to_owned(),
                            external_id: None,
                            members: Vec::new(),
                            version: 1,
                            created: now,
                            last_modified: now,
                        })
                    }
                };
                // member_of answers in O(1); scanning `members` made seeding
                // quadratic in the number of users (a 200,000-record sandbox run).
                if !store
                    .member_of
                    .get(&u.id)
                    .is_some_and(|gs| gs.contains(&gi))
                {
                    store.groups[gi].members.push(u.id.clone());
                    store.member_of.entry(u.id.clone()).or_default().insert(gi);
                }
            }
        }
        Ok(store)
    }

    fn insert_group(&mut self, g: Group) -> usize {
        let i = self.groups.len();
        self.group_index.insert(g.id.clone(), i);
        self.groups.push(g);
        i
    }

    /// Adds a user (ids must be unique: the caller checks [`Self::user_id_taken`]).
    pub fn insert_user(&mut self, u: User) -> usize {
        let i = self.users.len();
        self.user_index.insert(u.id.clone(), i);
        if let Some(e) = &u.external_id {
            self.by_external_id.entry(e.clone()).or_default().push(i);
        }
        self.by_user_name
            .entry(u.user_name.to_lowercase())
            .or_default()
            .push(i);
        self.users.push(u);
        i
    }

    /// True when any user, deleted ones included, has this id.
    pub fn user_id_taken(&self, id: &str) -> bool {
        self.user_index.contains_key(id)
    }

    /// A live (not deleted) user by id.
    pub fn user(&self, id: &str) -> Option<&User> {
        self.user_index
            .get(id)
            .map(|&i| &self.users[i])
            .filter(|u| !u.deleted)
    }

    /// A live user whose userName equals `name` ignoring case, other than `except`.
    pub fn user_name_in_use(&self, name: &str, except: Option<&str>) -> bool {
        self.by_user_name
            .get(&name.to_lowercase())
            .is_some_and(|v| {
                v.iter()
                    .any(|&i| !self.users[i].deleted && Some(self.users[i].id.as_str()) != except)
            })
    }

    /// Every live user, in insertion order.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.iter().filter(|u| !u.deleted)
    }

    /// Live users with this exact externalId (case-exact, RFC 7643 §3.1).
    pub fn users_by_external_id(&self, external_id: &str) -> Vec<&User> {
        self.by_external_id
            .get(external_id)
            .map(|v| {
                v.iter()
                    .map(|&i| &self.users[i])
                    .filter(|u| !u.deleted)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Live users whose userName equals `name` ignoring case.
    pub fn users_by_user_name(&self, name: &str) -> Vec<&User> {
        self.by_user_name
            .get(&name.to_lowercase())
            .map(|v| {
                v.iter()
                    .map(|&i| &self.users[i])
                    .filter(|u| !u.deleted)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replaces a live user's record with `new` (same id), keeping the indexes in
    /// step. Returns false when no such user exists.
    pub fn replace_user(&mut self, new: User) -> bool {
        let Some(&i) = self.user_index.get(&new.id) else {
            return false;
        };
        let old_ext = self.users[i].external_id.clone();
        let old_name = self.users[i].user_name.to_lowercase();
        if old_ext != new.external_id {
            if let Some(e) = &old_ext
                && let Some(v) = self.by_external_id.get_mut(e)
            {
                v.retain(|&j| j != i);
            }
            if let Some(e) = &new.external_id {
                self.by_external_id.entry(e.clone()).or_default().push(i);
            }
        }
        let new_name = new.user_name.to_lowercase();
        if old_name != new_name {
            if let Some(v) = self.by_user_name.get_mut(&old_name) {
                v.retain(|&j| j != i);
            }
            self.by_user_name.entry(new_name).or_default().push(i);
        }
        self.users[i] = new;
        true
    }

    /// Soft-deletes a user: marks it deleted, clears its roles (Genesys: a deleted
    /// user loses them) and removes it from every group.
    pub fn delete_user(&mut self, id: &str, now: DateTime<Utc>) -> bool {
        let Some(&i) = self.user_index.get(id) else {
            return false;
        };
        if self.users[i].deleted {
            return false;
        }
        let u = &mut self.users[i];
        u.deleted = true;
        u.active = false;
        u.roles.clear();
        u.version += 1;
        u.last_modified = now;
        for gi in self.member_of.remove(id).unwrap_or_default() {
            let g = &mut self.groups[gi];
            g.members.retain(|m| m != id);
            g.version += 1;
            g.last_modified = now;
        }
        true
    }

    /// The groups holding a user, in group order.
    pub fn groups_of(&self, user_id: &str) -> Vec<&Group> {
        self.member_of
            .get(user_id)
            .map(|s| s.iter().map(|&gi| &self.groups[gi]).collect())
            .unwrap_or_default()
    }

    /// A group by id.
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.group_index.get(id).map(|&i| &self.groups[i])
    }

    /// Every group, in insertion order.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter()
    }

    /// Replaces a group's record (same id), updating the member → group index for
    /// members added or removed. Returns false when no such group exists.
    pub fn replace_group(&mut self, new: Group) -> bool {
        let Some(&gi) = self.group_index.get(&new.id) else {
            return false;
        };
        let old: BTreeSet<&String> = self.groups[gi].members.iter().collect();
        let next: BTreeSet<&String> = new.members.iter().collect();
        let removed: Vec<String> = old.difference(&next).map(|s| (*s).clone()).collect();
        let added: Vec<String> = next.difference(&old).map(|s| (*s).clone()).collect();
        for id in removed {
            if let Some(set) = self.member_of.get_mut(&id) {
                set.remove(&gi);
                if set.is_empty() {
                    self.member_of.remove(&id);
                }
            }
        }
        for id in added {
            self.member_of.entry(id).or_default().insert(gi);
        }
        self.groups[gi] = new;
        true
    }

    /// Counts for `/_sim/stats`: (live users, active, inactive, deleted, groups,
    /// memberships).
    pub fn summary(&self) -> (u64, u64, u64, u64, u64, u64) {
        let mut live = 0;
        let mut active = 0;
        let mut deleted = 0;
        for u in &self.users {
            if u.deleted {
                deleted += 1;
            } else {
                live += 1;
                if u.active {
                    active += 1;
                }
            }
        }
        let memberships = self.groups.iter().map(|g| g.members.len() as u64).sum();
        (
            live,
            active,
            live - active,
            deleted,
            self.groups.len() as u64,
            memberships,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::seed::{SeedGroupRef, SeedUser};

    fn seed() -> Seed {
        let user = |id: &str, ext: &str, groups: &[&str]| SeedUser {
            id: id.into(),
            user_name: format!("{id}@x"),
            external_id: Some(ext.into()),
            display_name: None,
            active: true,
            groups: groups
                .iter()
                .map(|g| SeedGroupRef::Name((*g).into()))
                .collect(),
            roles: vec![],
        };
        Seed {
            users: vec![
                user("u1", "E1", &["Sales", "Ops"]),
                user("u2", "E1", &["Sales"]),
            ],
            groups: vec![],
        }
    }

    #[test]
    fn memberships_live_on_groups_and_index_both_ways() {
        let store = Store::from_seed(&seed()).unwrap();
        assert_eq!(store.groups().count(), 2);
        let names: Vec<_> = store
            .groups_of("u1")
            .iter()
            .map(|g| g.display_name.clone())
            .collect();
        assert_eq!(names, ["Sales", "Ops"]);
        assert_eq!(store.users_by_external_id("E1").len(), 2);
        assert_eq!(store.users_by_user_name("U1@X").len(), 1);
    }

    #[test]
    fn replace_and_delete_keep_indexes_consistent() {
        let mut store = Store::from_seed(&seed()).unwrap();
        let mut u = store.user("u1").unwrap().clone();
        u.external_id = Some("E9".into());
        u.user_name = "new@x".into();
        assert!(store.replace_user(u));
        assert_eq!(store.users_by_external_id("E1").len(), 1);
        assert_eq!(store.users_by_external_id("E9").len(), 1);
        assert!(store.user_name_in_use("NEW@x", None));
        assert!(!store.user_name_in_use("u1@x", None));

        let mut g = store.groups().next().unwrap().clone();
        g.members.retain(|m| m != "u2");
        assert!(store.replace_group(g));
        assert!(store.groups_of("u2").is_empty());

        assert!(store.delete_user("u1", Utc::now()));
        assert!(store.user("u1").is_none());
        assert!(store.user_id_taken("u1"));
        assert!(store.groups_of("u1").is_empty());
        assert!(
            store
                .groups()
                .all(|g| !g.members.contains(&"u1".to_owned()))
        );
        assert_eq!(store.summary(), (1, 1, 0, 1, 2, 0));
    }
}
