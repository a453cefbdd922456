//! `/api/v2/scim/v2/users` and `/users/{id}` (API description getScimV2Users,
//! postScimV2Users, getScimV2User, putScimV2User, patchScimV2User,
//! deleteScimV2User): listing with the inactive-user rule, create, read (with
//! `If-None-Match`), replace, PatchOp modify, soft delete; `groups` rendered from
//! memberships held on groups and never writable here. Does not check tokens or
//! rate limits (the gate did).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::config::PatchReturns;
use super::errors::{Fault, SCIM_MEDIA, json_response};
use super::filter::{Literal, normalize_attr, parse_value_path};
use super::listing::{ListRequest, Projection};
use super::patch::{self, OpKind, Operation, expect_bool, expect_string, expect_value_list};
use super::server::{App, Caller, check_media, etag, lock, query_pairs};
use super::state::{Store, User};

/// The core User schema URN (RFC 7643 §4.1).
pub(crate) const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const GENESYS_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:genesys:purecloud:2.0:User";

/// Returned whatever `attributes` asks (API description: "Returns these
/// attributes and the id, userName, active, and meta attributes").
const ALWAYS: &[&str] = &["schemas", "id", "username", "active", "meta"];

/// Filterable attributes and whether each compares to a boolean.
const FILTERABLE: &[(&str, bool)] = &[
    ("id", false),
    ("username", false),
    ("externalid", false),
    ("displayname", false),
    ("active", true),
];

fn timestamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The SCIM representation of a user.
pub(crate) fn render(app: &App, store: &Store, u: &User, proj: &Projection) -> Value {
    let mut m = Map::new();
    m.insert(
        "schemas".into(),
        json!([USER_SCHEMA, ENTERPRISE_SCHEMA, GENESYS_SCHEMA]),
    );
    m.insert("id".into(), json!(u.id));
    m.insert("userName".into(), json!(u.user_name));
    m.insert("displayName".into(), json!(u.display_name));
    m.insert("active".into(), json!(u.active));
    if let Some(e) = &u.external_id {
        m.insert("externalId".into(), json!(e));
    }
    if let Some(t) = &u.title {
        m.insert("title".into(), json!(t));
    }
    m.insert(
        "emails".into(),
        json!([{ "value": u.user_name, "type": "work", "primary": true }]),
    );
    if !app.config.omit_user_groups {
        let groups: Vec<Value> = store
            .groups_of(&u.id)
            .iter()
            .map(|g| json!({ "value": g.id, "$ref": app.location("groups", &g.id), "type": "Group" }))
            .collect();
        m.insert("groups".into(), Value::Array(groups));
    }
    let roles: Vec<Value> = u.roles.iter().map(|r| json!({ "value": r })).collect();
    m.insert("roles".into(), Value::Array(roles));
    m.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": timestamp(u.created),
            "lastModified": timestamp(u.last_modified),
            "location": app.location("users", &u.id),
            "version": etag(u.version),
        }),
    );
    proj.apply(Value::Object(m), ALWAYS)
}

fn resource_response(
    status: StatusCode,
    app: &App,
    store: &Store,
    u: &User,
    proj: &Projection,
) -> Response {
    let mut r = json_response(status, SCIM_MEDIA, &render(app, store, u, proj));
    set_etag(&mut r, u.version);
    if status == StatusCode::CREATED
        && let Ok(v) = HeaderValue::from_str(&app.location("users", &u.id))
    {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn set_etag(r: &mut Response, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

fn matches(u: &User, clause_attr: &str, value: &Literal) -> bool {
    match (clause_attr, value) {
        ("id", Literal::Str(v)) => &u.id == v,
        ("username", Literal::Str(v)) => u.user_name.to_lowercase() == v.to_lowercase(),
        ("externalid", Literal::Str(v)) => u.external_id.as_deref() == Some(v.as_str()),
        ("displayname", Literal::Str(v)) => u.display_name.to_lowercase() == v.to_lowercase(),
        ("active", Literal::Bool(b)) => u.active == *b,
        _ => false,
    }
}

/// `GET /users`.
pub(crate) async fn list(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
    let req = match ListRequest::parse(&pairs, FILTERABLE, app.config.large_page) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let store = lock(&app.store);
    // Genesys leaves inactive users out of lists unless the filter asks for them
    // (API description getScimV2Users; genesys.md).
    let want_inactive = req
        .filter
        .as_ref()
        .and_then(|f| f.value_of("active"))
        .is_some_and(|v| *v == Literal::Bool(false));
    let candidates: Vec<&User> = match req.filter.as_ref() {
        Some(f) => match (
            f.value_of("id"),
            f.value_of("externalid"),
            f.value_of("username"),
        ) {
            (Some(Literal::Str(id)), _, _) => store.user(id).into_iter().collect(),
            (_, Some(Literal::Str(e)), _) => store.users_by_external_id(e),
            (_, _, Some(Literal::Str(n))) => store.users_by_user_name(n),
            _ => store.users().collect(),
        },
        None => store.users().collect(),
    };
    let rendered: Vec<Value> = candidates
        .into_iter()
        .filter(|u| u.active || want_inactive)
        .filter(|u| {
            req.filter
                .as_ref()
                .is_none_or(|f| f.clauses.iter().all(|c| matches(u, &c.attr, &c.value)))
        })
        .map(|u| render(&app, &store, u, &req.projection))
        .collect();
    json_response(StatusCode::OK, SCIM_MEDIA, &req.respond(rendered))
}

/// `GET /users/{id}` (inactive users included; `If-None-Match` → 304).
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let store = lock(&app.store);
    let Some(u) = store.user(&id) else {
        return app.not_found("User", &id).into_response();
    };
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag(u.version)
        })
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        set_etag(&mut r, u.version);
        return r;
    }
    let proj = Projection::from_query(&query_pairs(q.as_deref()));
    resource_response(StatusCode::OK, &app, &store, u, &proj)
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Fault> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Fault::bad(
            "invalidSyntax",
            "the body must be a JSON object",
        )),
        Err(e) => Err(Fault::bad(
            "invalidSyntax",
            format!("the body is not JSON: {e}"),
        )),
    }
}

/// Reads `key` case-insensitively (attribute names are, RFC 7643 §2.1).
fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| normalize_attr(k) == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn optional_string(m: &Map<String, Value>, key: &str, name: &str) -> Result<Option<String>, Fault> {
    field(m, key).map(|v| expect_string(name, v)).transpose()
}

/// `POST /users`: 201 with the user; 409 `uniqueness` when the userName is taken
/// by a live user (API description postScimV2Users).
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create_inner(&app, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

fn create_inner(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<Response, Fault> {
    check_media(headers)?;
    let m = parse_object(body)?;
    let user_name = optional_string(&m, "username", "userName")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Fault::bad("invalidValue", "userName is required"))?;
    let display_name = optional_string(&m, "displayname", "displayName")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Fault::bad("invalidValue", "displayName is required"))?;
    let active = field(&m, "active")
        .map(|v| expect_bool("active", v))
        .transpose()?
        .unwrap_or(true);
    let external_id = optional_string(&m, "externalid", "externalId")?;
    let title = optional_string(&m, "title", "title")?;
    let roles = field(&m, "roles")
        .map(|v| expect_value_list("roles", v))
        .transpose()?
        .unwrap_or_default();
    let mut store = lock(&app.store);
    if store.user_name_in_use(&user_name, None) {
        return Err(Fault::Scim {
            status: StatusCode::CONFLICT,
            scim_type: Some("uniqueness"),
            detail: format!("userName {user_name:?} is already in use"),
        });
    }
    let mut id = uuid::Uuid::new_v4().to_string();
    while store.user_id_taken(&id) {
        id = uuid::Uuid::new_v4().to_string();
    }
    let now = Utc::now();
    let user = User {
        id,
        user_name,
        display_name,
        external_id,
        title,
        active,
        deleted: false,
        roles,
        version: 1,
        created: now,
        last_modified: now,
    };
    store.insert_user(user.clone());
    Ok(resource_response(
        StatusCode::CREATED,
        app,
        &store,
        &user,
        &Projection::All,
    ))
}

fn apply_attr(
    draft: &mut User,
    op: OpKind,
    attr: &str,
    value: Option<&Value>,
) -> Result<(), Fault> {
    let need = |v: Option<&Value>| {
        v.cloned()
            .ok_or_else(|| Fault::bad("invalidValue", format!("{attr}: a value is required")))
    };
    match attr {
        "active" => {
            if op == OpKind::Remove {
                return Err(Fault::bad("invalidValue", "active cannot be removed"));
            }
            draft.active = expect_bool("active", &need(value)?)?;
        }
        "displayname" => {
            if op == OpKind::Remove {
                return Err(Fault::bad("mutability", "displayName is required"));
            }
            draft.display_name = expect_string("displayName", &need(value)?)?;
        }
        "username" => {
            if op == OpKind::Remove {
                return Err(Fault::bad("mutability", "userName is required"));
            }
            let v = expect_string("userName", &need(value)?)?;
            if v.trim().is_empty() {
                return Err(Fault::bad("invalidValue", "userName cannot be empty"));
            }
            draft.user_name = v;
        }
        "externalid" => {
            draft.external_id = match op {
                OpKind::Remove => None,
                _ => Some(expect_string("externalId", &need(value)?)?),
            };
        }
        "title" => {
            draft.title = match op {
                OpKind::Remove => None,
                _ => Some(expect_string("title", &need(value)?)?),
            };
        }
        "roles" => match (op, value) {
            (OpKind::Remove, None) => draft.roles.clear(),
            (OpKind::Remove, Some(v)) => {
                let gone = expect_value_list("roles", v)?;
                draft.roles.retain(|r| !gone.contains(r));
            }
            (OpKind::Replace, v) => draft.roles = expect_value_list("roles", &need(v)?)?,
            (OpKind::Add, v) => {
                for r in expect_value_list("roles", &need(v)?)? {
                    if !draft.roles.contains(&r) {
                        draft.roles.push(r);
                    }
                }
            }
        },
        "groups" => {
            return Err(Fault::bad(
                "mutability",
                "groups is read-only on the user; change membership through the Groups resource",
            ));
        }
        "id" | "meta" | "schemas" => {
            return Err(Fault::bad("mutability", format!("{attr} is read-only")));
        }
        other => {
            return Err(Fault::bad(
                "invalidPath",
                format!("attribute {other:?} cannot be patched here"),
            ));
        }
    }
    Ok(())
}

fn apply_op(draft: &mut User, op: &Operation) -> Result<(), Fault> {
    match &op.path {
        None => {
            let Some(Value::Object(m)) = &op.value else {
                return Err(Fault::bad(
                    "invalidValue",
                    "an operation without a path needs an object value",
                ));
            };
            for (k, v) in m {
                apply_attr(draft, op.op, &normalize_attr(k), Some(v))?;
            }
            Ok(())
        }
        Some(p) => match parse_value_path(p) {
            None => apply_attr(draft, op.op, &normalize_attr(p), op.value.as_ref()),
            Some(Err(why)) => Err(Fault::bad("invalidPath", why)),
            Some(Ok((attr, filter))) => {
                if attr != "roles" || op.op != OpKind::Remove {
                    return Err(Fault::bad(
                        "invalidPath",
                        format!(
                            "path {p:?}: only remove with a roles[value eq \"…\"] filter is supported on users"
                        ),
                    ));
                }
                let Some(Literal::Str(role)) = filter.value_of("value") else {
                    return Err(Fault::bad(
                        "invalidFilter",
                        format!("path {p:?} needs value eq \"…\""),
                    ));
                };
                if filter.clauses.len() != 1 {
                    return Err(Fault::bad(
                        "invalidFilter",
                        format!("path {p:?} may compare value only"),
                    ));
                }
                draft.roles.retain(|r| r != role);
                Ok(())
            }
        },
    }
}

/// Same content apart from version bookkeeping.
fn same_content(a: &User, b: &User) -> bool {
    a.user_name == b.user_name
        && a.display_name == b.display_name
        && a.external_id == b.external_id
        && a.title == b.title
        && a.active == b.active
        && a.roles == b.roles
}

fn commit(store: &mut Store, old: &User, mut draft: User) -> Result<User, Fault> {
    if draft.user_name.to_lowercase() != old.user_name.to_lowercase()
        && store.user_name_in_use(&draft.user_name, Some(&old.id))
    {
        return Err(Fault::Scim {
            status: StatusCode::CONFLICT,
            scim_type: Some("uniqueness"),
            detail: format!("userName {:?} is already in use", draft.user_name),
        });
    }
    if !same_content(old, &draft) {
        draft.version = old.version + 1;
        draft.last_modified = Utc::now();
        store.replace_user(draft.clone());
    }
    Ok(draft)
}

/// `PATCH /users/{id}`: 200 with the user (or 204, `--patch-returns 204`).
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
            .user(&id)
            .cloned()
            .ok_or_else(|| app.not_found("User", &id))?;
        app.authorize_change(&caller, &id, true)?;
        app.check_if_match(&headers, old.version)?;
        let mut draft = old.clone();
        for op in &ops {
            apply_op(&mut draft, op)?;
        }
        if app.config.ignore_active_patch {
            draft.active = old.active;
        }
        let new = commit(&mut store, &old, draft)?;
        Ok(match app.config.patch_returns {
            PatchReturns::Ok200 => {
                resource_response(StatusCode::OK, &app, &store, &new, &Projection::All)
            }
            PatchReturns::NoContent204 => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                set_etag(&mut r, new.version);
                r
            }
        })
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `PUT /users/{id}`: replaces the writable attributes (RFC 7644 §3.5.1: absent
/// optional attributes are cleared; `active`, `userName` and `displayName` keep
/// their value when absent). `groups` in the body is ignored (read-only).
pub(crate) async fn put(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = (|| -> Result<Response, Fault> {
        check_media(&headers)?;
        let m = parse_object(&body)?;
        let mut store = lock(&app.store);
        let old = store
            .user(&id)
            .cloned()
            .ok_or_else(|| app.not_found("User", &id))?;
        app.authorize_change(&caller, &id, true)?;
        app.check_if_match(&headers, old.version)?;
        let mut draft = old.clone();
        if let Some(v) = optional_string(&m, "username", "userName")? {
            draft.user_name = v;
        }
        if let Some(v) = optional_string(&m, "displayname", "displayName")? {
            draft.display_name = v;
        }
        if let Some(v) = field(&m, "active") {
            draft.active = expect_bool("active", v)?;
        }
        draft.external_id = optional_string(&m, "externalid", "externalId")?;
        draft.title = optional_string(&m, "title", "title")?;
        draft.roles = field(&m, "roles")
            .map(|v| expect_value_list("roles", v))
            .transpose()?
            .unwrap_or_default();
        let new = commit(&mut store, &old, draft)?;
        Ok(resource_response(
            StatusCode::OK,
            &app,
            &store,
            &new,
            &Projection::All,
        ))
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /users/{id}`: soft delete (the user disappears from every request and
/// from its groups; its id stays reserved). 204.
pub(crate) async fn delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = (|| -> Result<Response, Fault> {
        let mut store = lock(&app.store);
        let old = store
            .user(&id)
            .cloned()
            .ok_or_else(|| app.not_found("User", &id))?;
        app.authorize_change(&caller, &id, true)?;
        app.check_if_match(&headers, old.version)?;
        store.delete_user(&id, Utc::now());
        Ok(StatusCode::NO_CONTENT.into_response())
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}
