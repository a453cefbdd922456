//! `/api/v2/scim/v2/groups` and `/groups/{id}` (API description getScimV2Groups,
//! getScimV2Group, patchScimV2Group): listing (a filter is required), read, and
//! PatchOp changes to `members` (held here, RFC 7643 §4.2) and `externalId`.
//! Member removal accepts the RFC 7644 §3.5.2.2 filter form, the value-array
//! form, or both (`--group-remove-form`), and refuses removing a protected or
//! denied user to a client that may not change it. `displayName` is read-only
//! (API description `ScimV2Group`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::config::{GroupRemoveForm, PatchReturns};
use super::errors::{Fault, SCIM_MEDIA, json_response};
use super::filter::{Literal, normalize_attr, parse_value_path};
use super::listing::{ListRequest, Projection};
use super::patch::{self, OpKind, Operation, expect_string, expect_value_list};
use super::server::{App, Caller, check_media, etag, lock, query_pairs};
use super::state::{Group, Store};

/// The core Group schema URN (RFC 7643 §4.2).
pub(crate) const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

const ALWAYS: &[&str] = &["schemas", "id", "meta"];

const FILTERABLE: &[(&str, bool)] = &[
    ("id", false),
    ("displayname", false),
    ("externalid", false),
    ("members.value", false),
];

fn timestamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The SCIM representation of a group.
pub(crate) fn render(app: &App, g: &Group, proj: &Projection) -> Value {
    let mut m = Map::new();
    m.insert("schemas".into(), json!([GROUP_SCHEMA]));
    m.insert("id".into(), json!(g.id));
    m.insert("displayName".into(), json!(g.display_name));
    if let Some(e) = &g.external_id {
        m.insert("externalId".into(), json!(e));
    }
    let members: Vec<Value> = g
        .members
        .iter()
        .map(|id| json!({ "value": id, "$ref": app.location("users", id), "type": "User" }))
        .collect();
    m.insert("members".into(), Value::Array(members));
    m.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": timestamp(g.created),
            "lastModified": timestamp(g.last_modified),
            "location": app.location("groups", &g.id),
            "version": etag(g.version),
        }),
    );
    proj.apply(Value::Object(m), ALWAYS)
}

fn resource_response(app: &App, g: &Group, proj: &Projection) -> Response {
    let mut r = json_response(StatusCode::OK, SCIM_MEDIA, &render(app, g, proj));
    set_etag(&mut r, g.version);
    r
}

fn set_etag(r: &mut Response, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

fn matches(g: &Group, attr: &str, value: &Literal) -> bool {
    match (attr, value) {
        ("id", Literal::Str(v)) => &g.id == v,
        ("displayname", Literal::Str(v)) => g.display_name.to_lowercase() == v.to_lowercase(),
        ("externalid", Literal::Str(v)) => g.external_id.as_deref() == Some(v.as_str()),
        ("members.value", Literal::Str(v)) => g.members.iter().any(|m| m == v),
        _ => false,
    }
}

/// `GET /groups`: a filter is required (API description getScimV2Groups).
pub(crate) async fn list(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
    let req = match ListRequest::parse(&pairs, FILTERABLE, app.config.large_page) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let Some(filter) = &req.filter else {
        return Fault::platform(
            StatusCode::BAD_REQUEST,
            "bad.request",
            "The query parameter 'filter' is required when listing groups.",
        )
        .into_response();
    };
    let store = lock(&app.store);
    let rendered: Vec<Value> = store
        .groups()
        .filter(|g| filter.clauses.iter().all(|c| matches(g, &c.attr, &c.value)))
        .map(|g| render(&app, g, &req.projection))
        .collect();
    json_response(StatusCode::OK, SCIM_MEDIA, &req.respond(rendered))
}

/// `GET /groups/{id}`.
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let store = lock(&app.store);
    match store.group(&id) {
        Some(g) => resource_response(&app, g, &Projection::from_query(&query_pairs(q.as_deref()))),
        None => app.not_found("Group", &id).into_response(),
    }
}

fn live_members(store: &Store, ids: Vec<String>) -> Result<Vec<String>, Fault> {
    for id in &ids {
        if store.user(id).is_none() {
            return Err(Fault::bad("invalidValue", format!("no user has id {id:?}")));
        }
    }
    Ok(ids)
}

fn apply_members(
    store: &Store,
    draft: &mut Group,
    op: OpKind,
    value: Option<&Value>,
    form: GroupRemoveForm,
) -> Result<(), Fault> {
    match (op, value) {
        (OpKind::Remove, None) => draft.members.clear(),
        (OpKind::Remove, Some(v)) => {
            if form == GroupRemoveForm::Filter {
                return Err(Fault::bad(
                    "invalidValue",
                    "a remove operation carries no value; select members with a path filter, members[value eq \"…\"]",
                ));
            }
            let gone = expect_value_list("members", v)?;
            draft.members.retain(|m| !gone.contains(m));
        }
        (OpKind::Add, Some(v)) => {
            for id in live_members(store, expect_value_list("members", v)?)? {
                if !draft.members.contains(&id) {
                    draft.members.push(id);
                }
            }
        }
        (OpKind::Replace, Some(v)) => {
            let mut next = Vec::new();
            for id in live_members(store, expect_value_list("members", v)?)? {
                if !next.contains(&id) {
                    next.push(id);
                }
            }
            draft.members = next;
        }
        (_, None) => return Err(Fault::bad("invalidValue", "members: a value is required")),
    }
    Ok(())
}

fn apply_attr(
    store: &Store,
    draft: &mut Group,
    op: OpKind,
    attr: &str,
    value: Option<&Value>,
    form: GroupRemoveForm,
) -> Result<(), Fault> {
    match attr {
        "members" => apply_members(store, draft, op, value, form),
        "externalid" => {
            draft.external_id = match (op, value) {
                (OpKind::Remove, _) => None,
                (_, Some(v)) => Some(expect_string("externalId", v)?),
                (_, None) => {
                    return Err(Fault::bad(
                        "invalidValue",
                        "externalId: a value is required",
                    ));
                }
            };
            Ok(())
        }
        "displayname" | "id" | "meta" | "schemas" => {
            Err(Fault::bad("mutability", format!("{attr} is read-only")))
        }
        other => Err(Fault::bad(
            "invalidPath",
            format!("attribute {other:?} cannot be patched on a group"),
        )),
    }
}

fn apply_op(
    store: &Store,
    draft: &mut Group,
    op: &Operation,
    form: GroupRemoveForm,
) -> Result<(), Fault> {
    match &op.path {
        None => {
            let Some(Value::Object(m)) = &op.value else {
                return Err(Fault::bad(
                    "invalidValue",
                    "an operation without a path needs an object value",
                ));
            };
            for (k, v) in m {
                apply_attr(store, draft, op.op, &normalize_attr(k), Some(v), form)?;
            }
            Ok(())
        }
        Some(p) => match parse_value_path(p) {
            None => apply_attr(
                store,
                draft,
                op.op,
                &normalize_attr(p),
                op.value.as_ref(),
                form,
            ),
            Some(Err(why)) => Err(Fault::bad("invalidPath", why)),
            Some(Ok((attr, filter))) => {
                if attr != "members" || op.op != OpKind::Remove {
                    return Err(Fault::bad(
                        "invalidPath",
                        format!(
                            "path {p:?}: only remove with a members[value eq \"…\"] filter is supported"
                        ),
                    ));
                }
                if form == GroupRemoveForm::ValueArray {
                    return Err(Fault::bad(
                        "invalidPath",
                        format!(
                            "path {p:?}: member filters are not accepted; send path \"members\" with a value array"
                        ),
                    ));
                }
                let (Some(Literal::Str(member)), 1) =
                    (filter.value_of("value"), filter.clauses.len())
                else {
                    return Err(Fault::bad(
                        "invalidFilter",
                        format!(
                            "path {p:?} must compare value only: members[value eq \"<userId>\"]"
                        ),
                    ));
                };
                // A filter matching no member removes nothing and succeeds (RFC
                // 7644 §3.5.2.2; scim2-server does the same).
                draft.members.retain(|m| m != member);
                Ok(())
            }
        },
    }
}

/// `PATCH /groups/{id}`: 200 with the group (or 204).
pub(crate) async fn patch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| -> Result<Response, Fault> {
        check_media(&headers)?;
        let ops = patch::parse(&body)?;
        let mut store = lock(&app.store);
        let old = store
            .group(&id)
            .cloned()
            .ok_or_else(|| app.not_found("Group", &id))?;
        app.check_if_match(&headers, old.version)?;
        let mut draft = old.clone();
        for op in &ops {
            apply_op(&store, &mut draft, op, app.config.group_remove_form)?;
        }
        let before: BTreeSet<&String> = old.members.iter().collect();
        let after: BTreeSet<&String> = draft.members.iter().collect();
        for removed in before.difference(&after) {
            app.authorize_change(&caller, removed, true)?;
        }
        for added in after.difference(&before) {
            app.authorize_change(&caller, added, false)?;
        }
        let changed = old.members != draft.members || old.external_id != draft.external_id;
        if changed {
            draft.version = old.version + 1;
            draft.last_modified = Utc::now();
            store.replace_group(draft.clone());
        }
        Ok(match app.config.patch_returns {
            PatchReturns::Ok200 => resource_response(&app, &draft, &Projection::All),
            PatchReturns::NoContent204 => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                set_etag(&mut r, draft.version);
                r
            }
        })
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}
