//! The parts of SCIM resources (RFC 7643) that deprovisioning reads: a user's
//! id, externalId, active flag, groups, roles and version; a group's id, name
//! and members; list responses (RFC 7644 §3.4.2). Unknown attributes are
//! ignored, so the same types read Genesys Cloud and any other SCIM server.
//! Pure data; no I/O.

use serde::{Deserialize, Deserializer};

/// A reference to another resource (`groups` of a user, `members` of a group),
/// RFC 7643 §4.1.2 / §4.2.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reference {
    /// The referenced resource's id.
    #[serde(default)]
    pub value: String,
    /// Its display name, when the server gives one.
    #[serde(default)]
    pub display: Option<String>,
}

/// A role of a user (RFC 7643 §4.1.2 `roles`; Genesys: the role's name in
/// `value`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Role {
    /// The role (Genesys: its name).
    #[serde(default)]
    pub value: Option<String>,
    /// A display name, when given.
    #[serde(default)]
    pub display: Option<String>,
}

impl Role {
    /// The role's name as recorded in evidence: `value`, else `display`.
    pub fn name(&self) -> Option<&str> {
        self.value.as_deref().or(self.display.as_deref())
    }
}

/// RFC 7643 §3.1 `meta`, only its version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Meta {
    /// The resource version (an entity tag such as `W/"3"`); Genesys keeps it
    /// equal to the `ETag` header.
    #[serde(default)]
    pub version: Option<String>,
}

/// A SCIM user, as far as deprovisioning needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScimUser {
    /// The server's id.
    pub id: String,
    /// HR's identifier; case-exact (RFC 7643 §3.1).
    #[serde(rename = "externalId", default)]
    pub external_id: Option<String>,
    /// `userName`, for messages.
    #[serde(rename = "userName", default)]
    pub user_name: Option<String>,
    /// `active`; `None` when the server left it out. Accepts a JSON boolean or
    /// the strings `"true"`/`"false"`.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub active: Option<bool>,
    /// The read-only `groups` attribute; `None` when the server left it out
    /// (ask the Groups resource instead), `Some([])` when it says none.
    #[serde(default)]
    pub groups: Option<Vec<Reference>>,
    /// `roles`, when present.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
    /// `meta`.
    #[serde(default)]
    pub meta: Option<Meta>,
}

impl ScimUser {
    /// `meta.version`, for `If-Match`.
    pub fn version(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.version.as_deref())
    }

    /// The names of the user's roles.
    pub fn role_names(&self) -> Vec<String> {
        self.roles
            .iter()
            .flatten()
            .filter_map(|r| r.name().map(str::to_owned))
            .collect()
    }
}

/// A SCIM group, as far as deprovisioning needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScimGroup {
    /// The server's id.
    pub id: String,
    /// `displayName`.
    #[serde(rename = "displayName", default)]
    pub display_name: Option<String>,
    /// `members`; `None` when the server left it out.
    #[serde(default)]
    pub members: Option<Vec<Reference>>,
}

impl ScimGroup {
    /// True when `members` was returned and lists `user_id`.
    pub fn lists(&self, user_id: &str) -> bool {
        self.members.iter().flatten().any(|m| m.value == user_id)
    }
}

/// RFC 7644 §3.4.2 `ListResponse`.
#[derive(Debug, Clone, Deserialize)]
pub struct ListResponse<T> {
    /// `totalResults`.
    #[serde(rename = "totalResults", default)]
    pub total_results: u64,
    /// `Resources` (some servers write `resources`).
    #[serde(rename = "Resources", alias = "resources", default = "Vec::new")]
    pub resources: Vec<T>,
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Text(String),
    }
    Ok(match Option::<B>::deserialize(d)? {
        None => None,
        Some(B::Bool(b)) => Some(b),
        Some(B::Text(t)) if t.eq_ignore_ascii_case("true") => Some(true),
        Some(B::Text(t)) if t.eq_ignore_ascii_case("false") => Some(false),
        Some(B::Text(t)) => {
            return Err(serde::de::Error::custom(format!(
                "active {t:?} is not a boolean"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_genesys_user() {
        let u: ScimUser = serde_json::from_str(
            r#"{"id":"u1","externalId":"E1","active":true,"userName":"a@b",
                "groups":[{"value":"g1","display":"Sales","$ref":"x"}],
                "roles":[{"value":"employee"}],"meta":{"version":"\"42\""},
                "urn:ietf:params:scim:schemas:extension:genesys:purecloud:2.0:User":{}}"#,
        )
        .unwrap();
        assert_eq!(u.active, Some(true));
        assert_eq!(u.version(), Some("\"42\""));
        assert_eq!(u.role_names(), vec!["employee".to_owned()]);
        assert_eq!(u.groups.unwrap()[0].display.as_deref(), Some("Sales"));
    }

    #[test]
    fn absent_groups_differ_from_no_groups() {
        let u: ScimUser = serde_json::from_str(r#"{"id":"u1","active":"False"}"#).unwrap();
        assert_eq!(u.groups, None);
        assert_eq!(u.active, Some(false));
        let u: ScimUser = serde_json::from_str(r#"{"id":"u1","groups":[]}"#).unwrap();
        assert_eq!(u.groups, Some(vec![]));
        assert!(serde_json::from_str::<ScimUser>(r#"{"id":"u1","active":"maybe"}"#).is_err());
    }

    #[test]
    fn reads_list_responses() {
        let l: ListResponse<ScimGroup> = serde_json::from_str(
            r#"{"totalResults":1,"Resources":[{"id":"g","displayName":"G","members":[{"value":"u"}]}]}"#,
        )
        .unwrap();
        assert!(l.resources[0].lists("u"));
        let l: ListResponse<ScimGroup> = serde_json::from_str(r#"{"totalResults":0}"#).unwrap();
        assert!(l.resources.is_empty());
    }
}
