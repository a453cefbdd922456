//! The PATCH bodies the engine sends (RFC 7644 §3.5.2): deactivation of a user,
//! optionally with its roles, and removal of one member from a group in either of
//! the two forms servers accept. Genesys requires the PatchOp `schemas` member
//! (Genesys API description, ScimV2PatchRequest: `schemas` required); `op` is
//! lowercase and `active` a JSON boolean. Builds bodies only; sends nothing.

use serde::Serialize;
use serde_json::{Value, json};

/// RFC 7644 §3.5.2's PatchOp message schema.
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// A PatchOp request body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchOp {
    /// Always `[PATCH_OP_SCHEMA]`.
    pub schemas: Vec<&'static str>,
    /// The operations, applied in order.
    #[serde(rename = "Operations")]
    pub operations: Vec<Operation>,
}

/// One PATCH operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operation {
    /// `add`, `replace` or `remove`, lowercase as RFC 7644 writes them.
    pub op: &'static str,
    /// The attribute path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The value, for `replace`/`add`, and for the value-array removal form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl PatchOp {
    fn new(operations: Vec<Operation>) -> Self {
        Self {
            schemas: vec![PATCH_OP_SCHEMA],
            operations,
        }
    }
}

/// `active` → `false`, and with `remove_roles` a `remove` of `roles` in the same
/// request, so the user is never left active without roles nor inactive with a
/// half-applied change.
pub fn deactivate_user(remove_roles: bool) -> PatchOp {
    let mut ops = vec![Operation {
        op: "replace",
        path: Some("active".into()),
        value: Some(Value::Bool(false)),
    }];
    if remove_roles {
        ops.push(Operation {
            op: "remove",
            path: Some("roles".into()),
            value: None,
        });
    }
    PatchOp::new(ops)
}

/// How a server wants a member removed from a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveForm {
    /// `{"op":"remove","path":"members[value eq \"<id>\"]"}` (RFC 7644 §3.5.2.2).
    Filter,
    /// `{"op":"remove","path":"members","value":[{"value":"<id>"}]}` (the form
    /// Microsoft Entra sends; some servers accept only this one).
    ValueArray,
}

impl RemoveForm {
    /// The other form, tried when a server refuses this one with 400.
    pub fn other(self) -> Self {
        match self {
            Self::Filter => Self::ValueArray,
            Self::ValueArray => Self::Filter,
        }
    }
}

/// Removes the member `user_id` from a group, in the given form.
pub fn remove_member(user_id: &str, form: RemoveForm) -> PatchOp {
    let op = match form {
        RemoveForm::Filter => Operation {
            op: "remove",
            path: Some(format!("members[{}]", super::filter::eq("value", user_id))),
            value: None,
        },
        RemoveForm::ValueArray => Operation {
            op: "remove",
            path: Some("members".into()),
            value: Some(json!([{ "value": user_id }])),
        },
    };
    PatchOp::new(vec![op])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body exactly as the client sends it.
    fn wire(body: &PatchOp) -> serde_json::Result<String> {
        serde_json::to_vec(body).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    #[test]
    fn deactivation_body() {
        insta::assert_snapshot!("deactivate_user", wire(&deactivate_user(false)).unwrap());
    }

    #[test]
    fn deactivation_with_roles_body() {
        insta::assert_snapshot!(
            "deactivate_user_and_roles",
            wire(&deactivate_user(true)).unwrap()
        );
    }

    #[test]
    fn member_removal_filter_body() {
        insta::assert_snapshot!(
            "remove_member_filter",
            wire(&remove_member(
                "8a4b1c2d-0000-4000-8000-000000000001",
                RemoveForm::Filter
            ))
            .unwrap()
        );
    }

    #[test]
    fn member_removal_value_array_body() {
        insta::assert_snapshot!(
            "remove_member_value_array",
            wire(&remove_member(
                "8a4b1c2d-0000-4000-8000-000000000001",
                RemoveForm::ValueArray
            ))
            .unwrap()
        );
    }

    #[test]
    fn a_quote_in_an_id_stays_inside_the_filter_string() {
        let body = remove_member("a\"b", RemoveForm::Filter);
        assert_eq!(
            body.operations[0].path.as_deref(),
            Some(r#"members[value eq "a\"b"]"#)
        );
    }
}
