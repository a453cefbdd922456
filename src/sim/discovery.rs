//! The SCIM discovery resources (RFC 7644 §4; API description
//! getScimV2Serviceproviderconfig, getScimV2Schemas, getScimV2Resourcetypes):
//! static descriptions of what this simulator implements, so a client that reads
//! them learns the truth (PATCH and ETags supported, no bulk, no sort, filter
//! results capped at 25 untrimmed). Reads no state.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::SCIM_BASE_PATH;
use super::errors::{SCIM_MEDIA, json_response};
use super::groups::GROUP_SCHEMA;
use super::listing::LIST_SCHEMA;
use super::server::App;
use super::users::USER_SCHEMA;

fn attr(name: &str, ty: &str, multi: bool, mutability: &str, case_exact: bool) -> Value {
    json!({
        "name": name, "type": ty, "multiValued": multi, "required": name == "userName",
        "caseExact": case_exact, "mutability": mutability, "returned": "default",
        "uniqueness": if name == "userName" { "server" } else { "none" },
    })
}

fn user_schema(app: &App) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA, "name": "User", "description": "Genesys Cloud user (simulated)",
        "attributes": [
            attr("userName", "string", false, "readWrite", false),
            attr("displayName", "string", false, "readWrite", false),
            attr("active", "boolean", false, "readWrite", false),
            attr("externalId", "string", false, "readWrite", true),
            attr("title", "string", false, "readWrite", false),
            attr("emails", "complex", true, "readWrite", false),
            attr("groups", "complex", true, "readOnly", false),
            attr("roles", "complex", true, "readWrite", false),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{}{SCIM_BASE_PATH}/schemas/{USER_SCHEMA}", app.origin) },
    })
}

fn group_schema(app: &App) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA, "name": "Group", "description": "Genesys Cloud group (simulated)",
        "attributes": [
            attr("displayName", "string", false, "readOnly", false),
            attr("externalId", "string", false, "readWrite", true),
            attr("members", "complex", true, "readWrite", false),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{}{SCIM_BASE_PATH}/schemas/{GROUP_SCHEMA}", app.origin) },
    })
}

fn resource_type(app: &App, name: &str) -> Option<Value> {
    let (endpoint, schema) = match name {
        "User" => ("/users", USER_SCHEMA),
        "Group" => ("/groups", GROUP_SCHEMA),
        _ => return None,
    };
    Some(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": name, "name": name, "endpoint": endpoint, "schema": schema,
        "schemaExtensions": if name == "User" { json!([
            { "schema": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", "required": false },
            { "schema": "urn:ietf:params:scim:schemas:extension:genesys:purecloud:2.0:User", "required": false },
        ]) } else { json!([]) },
        "meta": { "resourceType": "ResourceType", "location": format!("{}{SCIM_BASE_PATH}/resourcetypes/{name}", app.origin) },
    }))
}

fn list(items: Vec<Value>) -> Value {
    json!({ "schemas": [LIST_SCHEMA], "totalResults": items.len(), "startIndex": 1,
            "itemsPerPage": items.len(), "Resources": items })
}

/// `GET /serviceproviderconfig`.
pub(crate) async fn service_provider_config(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        SCIM_MEDIA,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://developer.genesys.cloud/",
            "patch": { "supported": true },
            "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
            "filter": { "supported": true, "maxResults": 25 },
            "changePassword": { "supported": false },
            "sort": { "supported": false },
            "etag": { "supported": true },
            "authenticationSchemes": [{
                "name": "OAuth Bearer Token",
                "description": "OAuth 2.0 client credentials from /oauth/token",
                "specUri": "https://www.rfc-editor.org/info/rfc6750",
                "type": "oauthbearertoken",
                "primary": true,
            }],
            "meta": { "resourceType": "ServiceProviderConfig",
                      "location": format!("{}{SCIM_BASE_PATH}/serviceproviderconfig", app.origin) },
        }),
    )
}

/// `GET /schemas`.
pub(crate) async fn schemas(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        SCIM_MEDIA,
        &list(vec![user_schema(&app), group_schema(&app)]),
    )
}

/// `GET /schemas/{id}`.
pub(crate) async fn schema(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match id.as_str() {
        USER_SCHEMA => json_response(StatusCode::OK, SCIM_MEDIA, &user_schema(&app)),
        GROUP_SCHEMA => json_response(StatusCode::OK, SCIM_MEDIA, &group_schema(&app)),
        _ => app.not_found("Schema", &id).into_response(),
    }
}

/// `GET /resourcetypes`.
pub(crate) async fn resource_types(State(app): State<Arc<App>>) -> Response {
    let items = ["User", "Group"]
        .iter()
        .filter_map(|n| resource_type(&app, n))
        .collect();
    json_response(StatusCode::OK, SCIM_MEDIA, &list(items))
}

/// `GET /resourcetypes/{id}`.
pub(crate) async fn resource_type_one(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    match resource_type(&app, &id) {
        Some(v) => json_response(StatusCode::OK, SCIM_MEDIA, &v),
        None => app.not_found("ResourceType", &id).into_response(),
    }
}
