//! The termination message: one SQS body per termination, versioned JSON
//! (design.md, "Termination message"). Owns its encoding and the checks a receiver
//! makes before trusting a body (known version, well-formed record, idempotency
//! key matching the record). Knows nothing about how messages travel.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::audit::ManifestOrigin;
use crate::domain::{EffectiveAt, IdempotencyKey, SameManifestRehire, TerminationRecord};

/// The message format version this build writes and understands.
pub const MESSAGE_VERSION: u32 = 1;

/// One termination to carry out, as sent to the terminations queue:
/// `{"v":1,"record":{…},"origin":{…},"idempotency_key":"…","effective_at":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminationMessage {
    /// Format version; always [`MESSAGE_VERSION`] when written by this build.
    pub v: u32,
    /// The validated manifest record (`externalId`, `userId`, `terminationDate`).
    pub record: TerminationRecord,
    /// Which manifest object and record it came from.
    pub origin: ManifestOrigin,
    /// `record.idempotency_key()`, carried so receivers and the audit agree on it.
    pub idempotency_key: IdempotencyKey,
    /// The instant access must be gone (UTC): a date-only record resolved in the
    /// HR time zone when the manifest was dispatched.
    pub effective_at: DateTime<Utc>,
    /// A rehire of the same person in the same manifest that withdraws this
    /// termination (found by the dispatcher; `rehired_in_manifest`, absent when
    /// none): the consumer rescinds it whatever it handles first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rehired_in_manifest: Option<SameManifestRehire>,
}

/// Why a body cannot be acted on. Every variant is permanent: the message goes
/// to the dead-letter queue with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON, or JSON without a numeric `v`.
    #[error("message body is not a versioned termination message: {0}")]
    Malformed(String),
    /// A version this build does not understand.
    #[error(
        "message version {found} is not supported (this build reads version {MESSAGE_VERSION})"
    )]
    UnknownVersion {
        /// The `v` found.
        found: u64,
    },
    /// Version 1, but the fields do not validate (the reason names the field).
    #[error("version 1 message is invalid: {0}")]
    Invalid(String),
    /// The carried idempotency key is not the one the record derives.
    #[error("idempotency key {found} does not match the record (expected {expected})")]
    KeyMismatch {
        /// The key in the message.
        found: String,
        /// The key derived from the record.
        expected: String,
    },
}

impl TerminationMessage {
    /// Builds the message for one record, resolving its effective instant in the HR
    /// time zone (design.md: a date means that day in the configured zone).
    pub fn new(record: TerminationRecord, origin: ManifestOrigin, tz: Tz, at: EffectiveAt) -> Self {
        let effective_at = record.termination_date.effective_at(tz, at);
        Self {
            v: MESSAGE_VERSION,
            idempotency_key: record.idempotency_key(),
            record,
            origin,
            effective_at,
            rehired_in_manifest: None,
        }
    }

    /// The record's place and effective time, as the rehire rules judge it
    /// ([`crate::audit::ManifestRecord`]).
    pub fn record_at(&self) -> crate::audit::ManifestRecord<'_> {
        crate::audit::ManifestRecord {
            origin: &self.origin,
            effective_at: self.effective_at,
        }
    }

    /// The JSON body. Serialising these types cannot fail (no maps with non-string
    /// keys, no floats); an empty object is returned rather than a panic if it
    /// ever did, and a receiver would dead-letter it as malformed.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Parses and checks a body. Errors: [`MessageError`]; the version is checked
    /// before anything else so that a newer producer's message is reported as
    /// such, not as invalid.
    pub fn decode(body: &str) -> Result<Self, MessageError> {
        #[derive(Deserialize)]
        struct Version {
            v: Option<serde_json::Value>,
        }
        let version: Version =
            serde_json::from_str(body).map_err(|e| MessageError::Malformed(e.to_string()))?;
        let v = version
            .v
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| MessageError::Malformed("missing numeric \"v\"".into()))?;
        if v != u64::from(MESSAGE_VERSION) {
            return Err(MessageError::UnknownVersion { found: v });
        }
        let message: Self =
            serde_json::from_str(body).map_err(|e| MessageError::Invalid(e.to_string()))?;
        let expected = message.record.idempotency_key();
        if expected != message.idempotency_key {
            return Err(MessageError::KeyMismatch {
                found: message.idempotency_key.to_string(),
                expected: expected.to_string(),
            });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExternalId, TerminationDate};

    fn sample() -> TerminationMessage {
        TerminationMessage::new(
            TerminationRecord {
                external_id: ExternalId::parse("E1").unwrap(),
                user_id: None,
                termination_date: TerminationDate::parse("2026-03-02").unwrap(),
                action: crate::domain::RecordAction::Terminate,
            },
            ManifestOrigin {
                bucket: "hr".into(),
                key: "manifests/a b.json".into(),
                version: Some("v1".into()),
                index: Some(3),
            },
            "America/New_York".parse().unwrap(),
            EffectiveAt::StartOfDay,
        )
    }

    #[test]
    fn round_trips_and_resolves_effective_time() {
        let m = sample();
        let body = m.encode();
        assert!(body.starts_with("{\"v\":1,"), "{body}");
        assert_eq!(TerminationMessage::decode(&body), Ok(m.clone()));
        assert_eq!(m.effective_at.to_rfc3339(), "2026-03-02T05:00:00+00:00");
    }

    #[test]
    fn unknown_versions_and_tampering_are_refused() {
        let mut body: serde_json::Value = serde_json::from_str(&sample().encode()).unwrap();
        body["v"] = 2.into();
        assert_eq!(
            TerminationMessage::decode(&body.to_string()),
            Err(MessageError::UnknownVersion { found: 2 })
        );
        body["v"] = 1.into();
        body["record"]["externalId"] = "E2".into();
        assert!(matches!(
            TerminationMessage::decode(&body.to_string()),
            Err(MessageError::KeyMismatch { .. })
        ));
        body["record"]["externalId"] = "".into();
        assert!(matches!(
            TerminationMessage::decode(&body.to_string()),
            Err(MessageError::Invalid(_))
        ));
        assert!(matches!(
            TerminationMessage::decode("not json"),
            Err(MessageError::Malformed(_))
        ));
        assert!(matches!(
            TerminationMessage::decode("{}"),
            Err(MessageError::Malformed(_))
        ));
    }
}
