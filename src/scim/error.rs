//! Errors of the SCIM client and its token provider, as decisions: each variant
//! says whether waiting could help ([`ScimError::is_transient`]) and carries the
//! request and the server's own words. Also parses the two error body shapes a
//! Genesys server sends (the SCIM `ScimError` of RFC 7644 §3.12 and the platform
//! `ErrorBody`). Never holds a token or a secret.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::Credential;

/// What a server said about a failed request, from either error body shape.
/// Every field is optional: servers leave any of them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerDetail {
    /// RFC 7644 §3.12 `scimType` (`invalidVers`, `invalidFilter`, `noTarget`, …).
    pub scim_type: Option<String>,
    /// Human-readable detail: SCIM `detail`, else Genesys `message`, else the
    /// start of the raw body.
    pub detail: Option<String>,
    /// Genesys `code` (e.g. `too.many.requests.retry.after`).
    pub code: Option<String>,
    /// Genesys `contextId`.
    pub context_id: Option<String>,
}

/// Longest raw body text kept when a body is not a known error shape.
const RAW_BODY_KEPT: usize = 300;

#[derive(Deserialize)]
struct AnyErrorBody {
    #[serde(rename = "scimType")]
    scim_type: Option<String>,
    detail: Option<String>,
    message: Option<String>,
    code: Option<String>,
    #[serde(rename = "contextId")]
    context_id: Option<String>,
}

impl ServerDetail {
    /// Parses an error body: RFC 7644 §3.12 (`schemas`, `status` as a string,
    /// `scimType`, `detail`) or the Genesys platform `ErrorBody` (`message`,
    /// `code`, `status` as a number, `contextId`), as genesys.md ("Rate limits and
    /// errors") lists both. A body that is neither keeps its first 300 characters
    /// as the detail; an empty body gives an empty detail.
    pub fn parse(body: &[u8]) -> Self {
        if let Ok(parsed) = serde_json::from_slice::<AnyErrorBody>(body) {
            let detail = parsed.detail.or(parsed.message);
            if detail.is_some() || parsed.scim_type.is_some() || parsed.code.is_some() {
                return Self {
                    scim_type: parsed.scim_type,
                    detail,
                    code: parsed.code,
                    context_id: parsed.context_id,
                };
            }
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        Self {
            detail: (!text.is_empty()).then(|| text.chars().take(RAW_BODY_KEPT).collect()),
            ..Self::default()
        }
    }

    /// True for RFC 7644's `invalidVers` (a stale `If-Match`), which genesys.md
    /// says Genesys may send as a 400.
    pub fn is_invalid_version(&self) -> bool {
        self.scim_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("invalidVers"))
    }
}

impl fmt::Display for ServerDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = &self.scim_type {
            parts.push(format!("scimType {t}"));
        }
        if let Some(c) = &self.code {
            parts.push(format!("code {c}"));
        }
        if let Some(d) = &self.detail {
            parts.push(d.clone());
        }
        if let Some(c) = &self.context_id {
            parts.push(format!("contextId {c}"));
        }
        if parts.is_empty() {
            f.write_str("no detail")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Why an OAuth access token could not be had (genesys.md, "OAuth client
/// credentials"). Names the client id, never the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The login server refused the client (OAuth `error`, e.g.
    /// `invalid_client`): waiting will not help.
    #[error("the login server refused OAuth client {client_id} (HTTP {status}): {error}")]
    Rejected {
        /// The OAuth client id.
        client_id: String,
        /// The HTTP status.
        status: u16,
        /// OAuth `error` and `error_description`, or the body's start.
        error: String,
    },
    /// The login server was unreachable, timed out or answered 5xx/429 until the
    /// retry budget or the deadline ran out.
    #[error("no token for OAuth client {client_id}: {reason}")]
    Unavailable {
        /// The OAuth client id.
        client_id: String,
        /// What went wrong on the last try.
        reason: String,
    },
    /// A 2xx answer without a usable `access_token`.
    #[error("the token response for OAuth client {client_id} is not usable: {reason}")]
    BadResponse {
        /// The OAuth client id.
        client_id: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl AuthError {
    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A failed SCIM operation. `op` names the request, e.g. `PATCH Users/{id}` with
/// the id filled in (ids and externalIds are identifiers, not secrets).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScimError {
    /// The client could not be built from its configuration (a bad base URL).
    #[error("SCIM client configuration: {0}")]
    Config(String),
    /// A value that must travel as one URL path segment cannot be one (slashes,
    /// dot segments, control characters, empty). Refused before any request.
    #[error("{what} {value:?} cannot be a SCIM resource id: {reason}")]
    InvalidId {
        /// Which id (`group id`, `user id`).
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why.
        reason: String,
    },
    /// No token could be had for the credential.
    #[error("{op}: {source}")]
    Auth {
        /// The request that needed the token.
        op: String,
        /// Why there is no token.
        source: AuthError,
    },
    /// The server refused the token twice (401, refetch, 401 again), or refused
    /// a static bearer token: permanent.
    #[error("{op}: HTTP 401 with the {} credential after a fresh token: {detail}", credential.as_str())]
    Unauthorized {
        /// The request.
        op: String,
        /// The credential refused.
        credential: Credential,
        /// The server's words.
        detail: ServerDetail,
    },
    /// The credential lacks the rights (403) and no escalation is left.
    #[error("{op}: HTTP 403 with the {} credential: {detail}", credential.as_str())]
    Forbidden {
        /// The request.
        op: String,
        /// The credential refused.
        credential: Credential,
        /// The server's words.
        detail: ServerDetail,
    },
    /// 429s went on past the retry budget or the deadline. Never a reason to
    /// switch credential.
    #[error(
        "{op}: rate limited (HTTP 429) {attempts} times; {}",
        wait_text(*retry_after)
    )]
    RateLimited {
        /// The request.
        op: String,
        /// 429 responses received for it.
        attempts: u32,
        /// How long the server asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// 5xx, timeouts or connection errors past the retry budget or the deadline.
    #[error("{op}: transient failure after {attempts} attempts: {reason}")]
    Transient {
        /// The request.
        op: String,
        /// Attempts made.
        attempts: u32,
        /// The last status, if a response came.
        status: Option<u16>,
        /// What went wrong last.
        reason: String,
        /// A suggested wait before the next attempt, when known.
        retry_after: Option<Duration>,
    },
    /// The deadline passed before the request could be sent or retried.
    #[error("{op}: deadline reached before the request could complete")]
    Deadline {
        /// The request.
        op: String,
        /// A suggested wait before the next attempt, when known (e.g. a pause).
        retry_after: Option<Duration>,
    },
    /// Any other non-success status (400, 404, 409, 412, 413, 415, …): the caller
    /// decides what it means.
    #[error("{op}: HTTP {status}: {detail}")]
    Status {
        /// The request.
        op: String,
        /// The HTTP status.
        status: u16,
        /// The server's words.
        detail: ServerDetail,
    },
    /// A success status whose body is not the SCIM resource expected.
    #[error("{op}: HTTP {status} with an unreadable body: {reason}")]
    Decode {
        /// The request.
        op: String,
        /// The HTTP status.
        status: u16,
        /// What could not be read.
        reason: String,
    },
}

impl ScimError {
    /// True when the same request may succeed later (rate limits, 5xx, timeouts,
    /// an unreachable login server, a deadline): the message goes back to the
    /// queue rather than to the dead-letter queue.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transient { .. } | Self::Deadline { .. } => true,
            Self::Auth { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// The wait the server or the limiter suggested before another attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. }
            | Self::Transient { retry_after, .. }
            | Self::Deadline { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status that decided this error, when a response did.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            Self::RateLimited { .. } => Some(429),
            Self::Transient { status, .. } => *status,
            Self::Status { status, .. } | Self::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a stale-version refusal: 409, 412, or 400 with `invalidVers`
    /// (design.md's error table treats them alike).
    pub fn is_version_conflict(&self) -> bool {
        match self {
            Self::Status { status, detail, .. } => {
                matches!(status, 409 | 412) || (*status == 400 && detail.is_invalid_version())
            }
            _ => false,
        }
    }
}

/// A 429's wait for people: "retry after 55 s", or that the server did not say.
fn wait_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!("retry after {} s", d.as_secs_f64().ceil()),
        None => "the server gave no retry time".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7644_error() {
        let d = ServerDetail::parse(
            br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"400","scimType":"invalidVers","detail":"stale"}"#,
        );
        assert_eq!(d.scim_type.as_deref(), Some("invalidVers"));
        assert_eq!(d.detail.as_deref(), Some("stale"));
        assert!(d.is_invalid_version());
    }

    #[test]
    fn parses_genesys_error_body() {
        let d = ServerDetail::parse(
            br#"{"message":"Rate limit exceeded","code":"too.many.requests.retry.after","status":429,"contextId":"c-1","details":[],"errors":[]}"#,
        );
        assert_eq!(d.code.as_deref(), Some("too.many.requests.retry.after"));
        assert_eq!(d.detail.as_deref(), Some("Rate limit exceeded"));
        assert_eq!(d.context_id.as_deref(), Some("c-1"));
        assert!(!d.is_invalid_version());
        assert_eq!(
            d.to_string(),
            "code too.many.requests.retry.after; Rate limit exceeded; contextId c-1"
        );
    }

    #[test]
    fn keeps_the_start_of_an_unknown_body() {
        let d = ServerDetail::parse(b"<html>Bad Gateway</html>");
        assert_eq!(d.detail.as_deref(), Some("<html>Bad Gateway</html>"));
        assert_eq!(ServerDetail::parse(b"").detail, None);
        let long = vec![b'x'; 1000];
        assert_eq!(
            ServerDetail::parse(&long).detail.map(|d| d.len()),
            Some(300)
        );
    }

    #[test]
    fn version_conflicts_are_409_412_and_400_invalid_vers() {
        let status = |status, scim_type: Option<&str>| ScimError::Status {
            op: "PATCH Users/x".into(),
            status,
            detail: ServerDetail {
                scim_type: scim_type.map(str::to_owned),
                ..ServerDetail::default()
            },
        };
        assert!(status(409, None).is_version_conflict());
        assert!(status(412, None).is_version_conflict());
        assert!(status(400, Some("invalidVers")).is_version_conflict());
        assert!(!status(400, Some("invalidPath")).is_version_conflict());
        assert!(!status(404, None).is_version_conflict());
    }
}
