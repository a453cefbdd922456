//! The two error bodies Genesys Cloud answers with, and JSON responses in
//! general: SCIM `ScimError` (RFC 7644 §3.12; `status` as a string) for SCIM-level
//! faults, and the platform `ErrorBody` (API description `definitions.ErrorBody`;
//! numeric `status`, `code`, `message`, `contextId`) for gateway-level ones (401,
//! 403, 429, 5xx, 415). Owns no decision about *when* each is sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `application/scim+json` (RFC 7644 §3.1).
pub(crate) const SCIM_MEDIA: &str = "application/scim+json";
/// `application/json`.
pub(crate) const JSON_MEDIA: &str = "application/json";
/// The ScimError schema URN (RFC 7644 §3.12).
pub(crate) const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

tokio::task_local! {
    /// The `ININ-Correlation-Id` of the request being served, for `contextId`.
    pub(crate) static CORRELATION_ID: String;
}

/// The current request's correlation id, or empty outside a request.
pub(crate) fn correlation_id() -> String {
    CORRELATION_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A JSON response with the given media type.
pub(crate) fn json_response(status: StatusCode, media: &'static str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = (status, bytes).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    r
}

/// A fault a handler answers with instead of the resource.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fault {
    /// ScimError body.
    Scim {
        status: StatusCode,
        scim_type: Option<&'static str>,
        detail: String,
    },
    /// Platform ErrorBody.
    Platform {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

impl Fault {
    /// 400 ScimError with a `scimType` (RFC 7644 §3.12 table 9).
    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::Scim {
            status: StatusCode::BAD_REQUEST,
            scim_type: Some(scim_type),
            detail: detail.into(),
        }
    }

    /// A ScimError with any status and no `scimType`.
    pub fn scim(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::Scim {
            status,
            scim_type: None,
            detail: detail.into(),
        }
    }

    /// A platform ErrorBody.
    pub fn platform(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Platform {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        match self {
            Fault::Scim {
                status,
                scim_type,
                detail,
            } => {
                let mut body = json!({
                    "schemas": [ERROR_SCHEMA],
                    "status": status.as_u16().to_string(),
                    "detail": detail,
                });
                if let (Some(t), Some(map)) = (scim_type, body.as_object_mut()) {
                    map.insert("scimType".into(), Value::from(t));
                }
                json_response(status, SCIM_MEDIA, &body)
            }
            Fault::Platform {
                status,
                code,
                message,
            } => json_response(
                status,
                JSON_MEDIA,
                &json!({
                    "message": message,
                    "code": code,
                    "status": status.as_u16(),
                    "contextId": correlation_id(),
                    "details": [],
                    "errors": [],
                }),
            ),
        }
    }
}
