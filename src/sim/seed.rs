//! The simulator's initial directory: generated deterministically
//! (`--users N --groups G`), read from a JSON seed file (`--seed FILE`), or built
//! from manifest records for `run --sandbox`. Only describes data; the store in
//! `state` turns it into resources and checks it.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SimError;
use crate::domain::{ExternalId, ScimUserId};

/// One user to seed. JSON field names follow SCIM (`userName`, `externalId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedUser {
    /// The SCIM id (a Genesys user UUID). Must be unique in the seed.
    pub id: String,
    /// The login (Genesys: the user's email address).
    pub user_name: String,
    /// HR's identifier. Duplicates are allowed, to rehearse ambiguity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// `displayName`; defaults to the userName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Whether the account is active (default true).
    #[serde(default = "default_true")]
    pub active: bool,
    /// Groups the user belongs to, by group id or displayName. A name not among
    /// [`Seed::groups`] creates that group.
    #[serde(default)]
    pub groups: Vec<SeedGroupRef>,
    /// Role names (Genesys `roles[].value`).
    #[serde(default)]
    pub roles: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// A user's group membership in a seed file: `"Sales"` or `{"value": "<id>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SeedGroupRef {
    /// A group id or displayName.
    Name(String),
    /// A SCIM-style reference (`value` is the group id or displayName).
    Ref {
        /// The group id or displayName.
        value: String,
    },
}

impl SeedGroupRef {
    /// The id or displayName referred to.
    pub fn key(&self) -> &str {
        match self {
            Self::Name(s) | Self::Ref { value: s } => s,
        }
    }
}

/// One group to seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedGroup {
    /// The SCIM id. Must be unique in the seed.
    pub id: String,
    /// `displayName`.
    pub display_name: String,
    /// `externalId`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// The initial directory. Seed file format (JSON): either
/// `{"users": [SeedUser…], "groups": [SeedGroup…]}` or a bare array of users,
/// e.g. `[{"id":"u1","userName":"a@example.com","externalId":"E1","active":true,
/// "groups":["Sales"],"roles":["employee"]}]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// Users, in listing order.
    #[serde(default)]
    pub users: Vec<SeedUser>,
    /// Groups, in listing order (groups named only by users are appended).
    #[serde(default)]
    pub groups: Vec<SeedGroup>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SeedFile {
    Full(Seed),
    Users(Vec<SeedUser>),
}

/// The deterministic id of generated user `n` (1-based): UUID-shaped, so it passes
/// every id check a Genesys id passes.
pub(crate) fn generated_user_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The deterministic id of generated group `n` (1-based).
pub(crate) fn generated_group_id(n: usize) -> String {
    format!("00000000-0000-4000-9000-{n:012}")
}

impl Seed {
    /// `users` active users and `groups` groups with deterministic ids
    /// (`00000000-0000-4000-8000-000000000001`…), userNames
    /// (`user00001@example.com`), externalIds (`EMP00001`) and role `employee`.
    /// User `n` is in group `(n-1) mod G`; every fourth user is also in the next
    /// group, so some users have two memberships. With zero groups nobody has
    /// any.
    pub fn generate(users: usize, groups: usize) -> Self {
        let groups_v: Vec<SeedGroup> = (1..=groups)
            .map(|g| SeedGroup {
                id: generated_group_id(g),
                display_name: format!("Group {g}"),
                external_id: None,
            })
            .collect();
        let users_v = (1..=users)
            .map(|n| {
                let mut member_of = Vec::new();
                if groups > 0 {
                    member_of.push(SeedGroupRef::Name(generated_group_id((n - 1) % groups + 1)));
                    if groups > 1 && n % 4 == 0 {
                        member_of.push(SeedGroupRef::Name(generated_group_id(n % groups + 1)));
                    }
                }
                SeedUser {
                    id: generated_user_id(n),
                    user_name: format!("user{n:05}@example.com"),
                    external_id: Some(format!("EMP{n:05}")),
                    display_name: Some(format!("User {n}")),
                    active: true,
                    groups: member_of,
                    roles: vec!["employee".to_owned()],
                }
            })
            .collect();
        Self {
            users: users_v,
            groups: groups_v,
        }
    }

    /// One active user per distinct externalId, for rehearsing a manifest
    /// (`run --sandbox`): the user gets the record's userId when given (else a
    /// generated one), a userName derived from its position, role `employee`, and
    /// one or two of three groups (`Sandbox Group 1..3`). A repeated externalId
    /// seeds no second user: a manifest naming the same person twice must not turn
    /// into an ambiguity that production does not have. A userId already taken
    /// is not reused; that record's user gets a generated id.
    pub fn from_records<I>(records: I) -> Self
    where
        I: IntoIterator<Item = (ExternalId, Option<ScimUserId>)>,
    {
        let groups: Vec<SeedGroup> = (1..=3)
            .map(|g| SeedGroup {
                id: generated_group_id(g),
                display_name: format!("Sandbox Group {g}"),
                external_id: None,
            })
            .collect();
        let mut seen_ext = HashSet::new();
        let mut seen_ids = HashSet::new();
        let mut users = Vec::new();
        for (external_id, user_id) in records {
            if !seen_ext.insert(external_id.as_str().to_owned()) {
                continue;
            }
            let n = users.len() + 1;
            let id = match user_id {
                Some(id) if !seen_ids.contains(id.as_str()) => id.as_str().to_owned(),
                _ => {
                    // A manifest may already use a generated-looking id; step past it.
                    let mut k = n;
                    while seen_ids.contains(&generated_user_id(k)) {
                        k += 1;
                    }
                    generated_user_id(k)
                }
            };
            seen_ids.insert(id.clone());
            let mut member_of = vec![SeedGroupRef::Name(generated_group_id((n - 1) % 3 + 1))];
            if n % 2 == 0 {
                member_of.push(SeedGroupRef::Name(generated_group_id(n % 3 + 1)));
            }
            users.push(SeedUser {
                id,
                user_name: format!("sandbox{n:05}@example.com"),
                external_id: Some(external_id.as_str().to_owned()),
                display_name: Some(format!("Sandbox User {n}")),
                active: true,
                groups: member_of,
                roles: vec!["employee".to_owned()],
            });
        }
        Self { users, groups }
    }

    /// Reads a seed file (format above). Errors: [`SimError::SeedRead`],
    /// [`SimError::SeedParse`], [`SimError::SeedInvalid`] (duplicate user or
    /// group ids, empty ids or userNames).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SimError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|source| SimError::SeedRead {
            path: path.to_owned(),
            source,
        })?;
        let parsed: SeedFile =
            serde_json::from_slice(&text).map_err(|source| SimError::SeedParse {
                path: path.to_owned(),
                source,
            })?;
        let seed = match parsed {
            SeedFile::Full(s) => s,
            SeedFile::Users(users) => Seed {
                users,
                groups: Vec::new(),
            },
        };
        seed.validate()?;
        Ok(seed)
    }

    /// Checks what the store relies on: unique, non-empty user and group ids and
    /// non-empty userNames. Duplicate externalIds are allowed on purpose.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut ids = HashSet::new();
        for u in &self.users {
            if u.id.is_empty() || u.user_name.is_empty() {
                return Err(SimError::SeedInvalid {
                    reason: format!("user {:?} needs a non-empty id and userName", u.id),
                });
            }
            if !ids.insert(u.id.as_str()) {
                return Err(SimError::SeedInvalid {
                    reason: format!("two users have id {:?}", u.id),
                });
            }
        }
        let mut gids = HashSet::new();
        for g in &self.groups {
            if g.id.is_empty() {
                return Err(SimError::SeedInvalid {
                    reason: format!("group {:?} needs a non-empty id", g.display_name),
                });
            }
            if !gids.insert(g.id.as_str()) {
                return Err(SimError::SeedInvalid {
                    reason: format!("two groups have id {:?}", g.id),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_is_deterministic_and_spreads_memberships() {
        let a = Seed::generate(8, 3);
        assert_eq!(a, Seed::generate(8, 3));
        assert_eq!(a.users[0].id, "00000000-0000-4000-8000-000000000001");
        assert_eq!(a.users[0].external_id.as_deref(), Some("EMP00001"));
        assert_eq!(
            a.users[3].groups.len(),
            2,
            "every fourth user has two groups"
        );
        assert_eq!(a.users[0].groups.len(), 1);
        let in_group3 = a
            .users
            .iter()
            .filter(|u| u.groups.iter().any(|g| g.key() == generated_group_id(3)))
            .count();
        assert!(in_group3 > 0);
        assert!(
            Seed::generate(3, 0)
                .users
                .iter()
                .all(|u| u.groups.is_empty())
        );
    }

    #[test]
    fn from_records_dedupes_external_ids_and_keeps_user_ids() {
        let e = |s: &str| ExternalId::parse(s).unwrap();
        let u = |s: &str| Some(ScimUserId::parse(s).unwrap());
        let seed = Seed::from_records([
            (e("A"), u("id-a")),
            (e("B"), None),
            (e("A"), u("id-other")),
            (e("C"), u("id-a")),
        ]);
        let clash = Seed::from_records([
            (
                e("X"),
                Some(ScimUserId::parse(&generated_user_id(2)).unwrap()),
            ),
            (e("Y"), None),
        ]);
        clash.validate().unwrap();
        assert_eq!(seed.users.len(), 3);
        assert_eq!(seed.users[0].id, "id-a");
        assert_ne!(seed.users[2].id, "id-a", "taken id is not reused");
        assert!(seed.users.iter().all(|u| (1..=2).contains(&u.groups.len())));
        seed.validate().unwrap();
    }

    #[test]
    fn seed_file_forms_parse_and_duplicate_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.json");
        std::fs::write(
            &p,
            r#"[{"id":"u1","userName":"a@x","externalId":"E1","groups":["Sales",{"value":"g2"}]},
                {"id":"u2","userName":"b@x","externalId":"E1","active":false,"roles":["admin"]}]"#,
        )
        .unwrap();
        let s = Seed::from_file(&p).unwrap();
        assert_eq!(s.users.len(), 2);
        assert!(s.users[0].active);
        assert!(!s.users[1].active);
        std::fs::write(
            &p,
            r#"{"users":[{"id":"u1","userName":"a@x"},{"id":"u1","userName":"b@x"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            Seed::from_file(&p),
            Err(SimError::SeedInvalid { .. })
        ));
        std::fs::write(&p, "{not json").unwrap();
        assert!(matches!(
            Seed::from_file(&p),
            Err(SimError::SeedParse { .. })
        ));
    }
}
