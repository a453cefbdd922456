//! PatchOp request validation (RFC 7644 §3.5.2; API description
//! `ScimV2PatchRequest`, whose `schemas` is required): the body must be a JSON
//! object naming the PatchOp schema with a non-empty `Operations` array whose `op`
//! is add, replace or remove (case-insensitive, as Entra sends `Replace`).
//! Applying operations to users and groups lives with those resources; this file
//! only turns bytes into [`Operation`]s or a 400 ScimError.

use serde_json::Value;

use super::errors::Fault;

/// The PatchOp message schema URN.
pub(crate) const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Add,
    Replace,
    Remove,
}

/// One validated operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Operation {
    pub op: OpKind,
    /// As sent (case and URN prefix kept; handlers normalise).
    pub path: Option<String>,
    pub value: Option<Value>,
}

/// Parses and validates a PatchOp body. Errors are 400 ScimErrors:
/// `invalidSyntax` for a body that is not a PatchOp message, `invalidValue` for an
/// unknown `op`, `noTarget` for a `remove` without `path`.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Operation>, Fault> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Fault::bad("invalidSyntax", format!("the body is not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(Fault::bad(
            "invalidSyntax",
            "the body must be a JSON object",
        ));
    };
    match obj.get("schemas") {
        None => {
            return Err(Fault::bad(
                "invalidSyntax",
                format!("\"schemas\" is required and must contain {PATCH_OP_SCHEMA}"),
            ));
        }
        Some(Value::Array(a)) if a.iter().any(|s| s.as_str() == Some(PATCH_OP_SCHEMA)) => {}
        Some(_) => {
            return Err(Fault::bad(
                "invalidSyntax",
                format!("\"schemas\" must be an array containing {PATCH_OP_SCHEMA}"),
            ));
        }
    }
    let ops = match obj.get("Operations") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(Fault::bad("invalidSyntax", "\"Operations\" is empty"));
        }
        _ => {
            return Err(Fault::bad(
                "invalidSyntax",
                "\"Operations\" is required and must be an array",
            ));
        }
    };
    ops.iter()
        .enumerate()
        .map(|(i, raw)| {
            let Some(o) = raw.as_object() else {
                return Err(Fault::bad(
                    "invalidSyntax",
                    format!("Operations[{i}] is not an object"),
                ));
            };
            let op = match o.get("op").and_then(Value::as_str) {
                Some(s) if s.eq_ignore_ascii_case("add") => OpKind::Add,
                Some(s) if s.eq_ignore_ascii_case("replace") => OpKind::Replace,
                Some(s) if s.eq_ignore_ascii_case("remove") => OpKind::Remove,
                Some(s) => {
                    return Err(Fault::bad(
                        "invalidValue",
                        format!("Operations[{i}].op {s:?} is not add, replace or remove"),
                    ));
                }
                None => {
                    return Err(Fault::bad(
                        "invalidSyntax",
                        format!("Operations[{i}].op is required and must be a string"),
                    ));
                }
            };
            let path = match o.get("path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if !p.trim().is_empty() => Some(p.trim().to_owned()),
                Some(_) => {
                    return Err(Fault::bad(
                        "invalidPath",
                        format!("Operations[{i}].path must be a non-empty string"),
                    ));
                }
            };
            let value = o.get("value").filter(|v| !v.is_null()).cloned();
            if op == OpKind::Remove && path.is_none() {
                return Err(Fault::bad(
                    "noTarget",
                    format!("Operations[{i}]: remove needs a path"),
                ));
            }
            if op != OpKind::Remove && value.is_none() {
                return Err(Fault::bad(
                    "invalidValue",
                    format!("Operations[{i}]: {op:?} needs a value"),
                ));
            }
            Ok(Operation { op, path, value })
        })
        .collect()
}

/// `value` as a boolean, or 400 `invalidValue` naming the attribute (a string such
/// as `"false"` is refused, as the API description types `active` boolean).
pub(crate) fn expect_bool(attr: &str, value: &Value) -> Result<bool, Fault> {
    value.as_bool().ok_or_else(|| {
        Fault::bad(
            "invalidValue",
            format!("{attr} must be a JSON boolean, not {value}"),
        )
    })
}

/// `value` as a string, or 400 `invalidValue`.
pub(crate) fn expect_string(attr: &str, value: &Value) -> Result<String, Fault> {
    value.as_str().map(str::to_owned).ok_or_else(|| {
        Fault::bad(
            "invalidValue",
            format!("{attr} must be a JSON string, not {value}"),
        )
    })
}

/// `value` as an array of `{"value": "<string>"}` objects (roles, members), or
/// 400 `invalidValue`. A single object is accepted as a one-element array.
pub(crate) fn expect_value_list(attr: &str, value: &Value) -> Result<Vec<String>, Fault> {
    let items: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![value],
        _ => {
            return Err(Fault::bad(
                "invalidValue",
                format!("{attr} must be an array of {{\"value\": …}} objects"),
            ));
        }
    };
    items
        .into_iter()
        .map(|item| {
            item.get("value")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Fault::bad(
                        "invalidValue",
                        format!("every {attr} entry needs a string \"value\", got {item}"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scim_type(r: Result<Vec<Operation>, Fault>) -> Option<&'static str> {
        match r {
            Err(Fault::Scim { scim_type, .. }) => scim_type,
            _ => None,
        }
    }

    #[test]
    fn valid_patch_parses_with_case_insensitive_op() {
        let ops = parse(
            br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations":[{"op":"Replace","path":"active","value":false},
                              {"op":"remove","path":"roles"}]}"#,
        )
        .unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].op, OpKind::Replace);
        assert_eq!(ops[1].value, None);
    }

    #[test]
    fn malformed_patches_are_refused_with_their_scim_type() {
        let s = r#""schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"]"#;
        assert_eq!(scim_type(parse(b"[]")), Some("invalidSyntax"));
        assert_eq!(scim_type(parse(b"{nope")), Some("invalidSyntax"));
        assert_eq!(
            scim_type(parse(
                br#"{"Operations":[{"op":"replace","path":"active","value":false}]}"#
            )),
            Some("invalidSyntax")
        );
        assert_eq!(
            scim_type(parse(format!(r#"{{{s},"Operations":[]}}"#).as_bytes())),
            Some("invalidSyntax")
        );
        assert_eq!(
            scim_type(parse(
                format!(r#"{{{s},"Operations":[{{"op":"frob","path":"a","value":1}}]}}"#)
                    .as_bytes()
            )),
            Some("invalidValue")
        );
        assert_eq!(
            scim_type(parse(
                format!(r#"{{{s},"Operations":[{{"op":"remove"}}]}}"#).as_bytes()
            )),
            Some("noTarget")
        );
        assert_eq!(
            scim_type(parse(
                format!(r#"{{{s},"Operations":[{{"op":"add","path":"x"}}]}}"#).as_bytes()
            )),
            Some("invalidValue")
        );
    }

    #[test]
    fn typed_values_are_checked() {
        assert!(expect_bool("active", &Value::from("false")).is_err());
        assert!(!expect_bool("active", &Value::from(false)).unwrap());
        assert_eq!(
            expect_value_list("roles", &serde_json::json!([{"value":"a"},{"value":"b"}])).unwrap(),
            ["a", "b"]
        );
        assert!(expect_value_list("roles", &serde_json::json!(["a"])).is_err());
    }
}
