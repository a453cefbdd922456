//! Message authenticity: HMAC-SHA256 over the exact body bytes of each
//! termination message, with the key id and the signature carried as SQS string
//! attributes ([`crate::queue::attr::SIGNATURE_KEY_ID`],
//! [`crate::queue::attr::SIGNATURE`]). Owns the key ring parsed from
//! `MESSAGE_SIGNING_KEYS` (`keyid:key[,keyid:key]`; the first key signs, every key
//! verifies, which is how keys rotate — deploy/README.md), signing, and the
//! constant-time verification a consumer makes before it trusts a body.
//!
//! Keys are held in [`SecretString`]s: they never appear in `Debug`, logs or
//! errors (errors name key ids only). This module does no I/O and does not decide
//! what happens to a message that fails verification (`consume` dead-letters it).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::queue::attr;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes of its text: HMAC-SHA256 keys shorter than
/// the hash output (32 bytes) weaken it (RFC 2104 §3).
pub const MIN_KEY_LEN: usize = 32;

/// The reason code a consumer dead-letters an unauthentic message with (the
/// DLQ copy's `deprovision.reason` attribute).
pub const BAD_SIGNATURE: &str = "bad_signature";

/// Why `MESSAGE_SIGNING_KEYS` cannot be used. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The value has no `keyid:key` entry.
    #[error("MESSAGE_SIGNING_KEYS is empty; give keyid:key[,keyid:key]")]
    Empty,
    /// An entry is not `keyid:key` (the entry's position, 1-based).
    #[error("MESSAGE_SIGNING_KEYS entry {position} is not keyid:key")]
    Malformed {
        /// 1-based position of the entry.
        position: usize,
    },
    /// A key id with characters SQS attribute values and logs should not carry.
    #[error(
        "MESSAGE_SIGNING_KEYS key id {key_id:?} is invalid: use 1-64 letters, digits, '-', '_' or '.'"
    )]
    KeyId {
        /// The key id (not secret).
        key_id: String,
    },
    /// A key shorter than [`MIN_KEY_LEN`].
    #[error("MESSAGE_SIGNING_KEYS key {key_id:?} is shorter than {MIN_KEY_LEN} characters")]
    ShortKey {
        /// The key id.
        key_id: String,
    },
    /// The same key id twice.
    #[error("MESSAGE_SIGNING_KEYS names key id {key_id:?} twice")]
    Duplicate {
        /// The key id.
        key_id: String,
    },
}

/// Why a message is not authentic. Every variant dead-letters the message as
/// [`BAD_SIGNATURE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature or no key id attribute.
    #[error("bad_signature: the message is not signed")]
    Unsigned,
    /// Signed with a key id this consumer does not hold (e.g. a retired key).
    #[error("bad_signature: key id {key_id:?} is not among the configured verification keys")]
    UnknownKey {
        /// The key id the message named.
        key_id: String,
    },
    /// The signature is not 64 hex digits.
    #[error("bad_signature: the signature attribute is not hex-encoded HMAC-SHA256")]
    Malformed,
    /// The signature does not match the body under the named key (altered
    /// body, or forged).
    #[error("bad_signature: the signature does not match the body (key id {key_id:?})")]
    Mismatch {
        /// The key id the message named.
        key_id: String,
    },
}

struct Key {
    id: String,
    secret: SecretString,
}

/// The signing keys: the first signs, all verify. `Debug` shows key ids only.
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Keyring {
    /// Parses `keyid:key[,keyid:key]` (deploy/README.md): entries separated by
    /// commas, surrounding whitespace ignored; the key is the text after the first
    /// `:`, used as given (its UTF-8 bytes are the HMAC key, e.g. 64 hex
    /// characters from `openssl rand -hex 32`), at least [`MIN_KEY_LEN`]
    /// characters. Errors: [`KeyringError`], naming key ids, never keys.
    pub fn parse(raw: &SecretString) -> Result<Self, KeyringError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, entry) in raw.expose_secret().split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (id, key) = entry
                .split_once(':')
                .ok_or(KeyringError::Malformed { position: i + 1 })?;
            let id = id.trim();
            if !valid_key_id(id) {
                return Err(KeyringError::KeyId {
                    key_id: id.chars().take(64).collect(),
                });
            }
            if key.len() < MIN_KEY_LEN {
                return Err(KeyringError::ShortKey { key_id: id.into() });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::Duplicate { key_id: id.into() });
            }
            keys.push(Key {
                id: id.to_owned(),
                secret: SecretString::from(key.to_owned()),
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self { keys })
    }

    /// A ring of one random 256-bit key (id `ephemeral`), for the in-process
    /// queue of `deprovision run`, whose messages never leave the process.
    pub fn ephemeral() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            keys: vec![Key {
                id: "ephemeral".into(),
                secret: SecretString::from(hex::encode(bytes)),
            }],
        }
    }

    /// The key ids, signing key first (for start-up logs).
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    fn mac(key: &Key) -> HmacSha256 {
        // Keyed per message (two SHA-256 blocks) so that the key stays in its
        // zeroizing SecretString rather than in a long-lived HMAC state. HMAC
        // accepts keys of any length: this cannot fail, and a silent fallback
        // key would be worse than stopping.
        #[allow(clippy::expect_used)]
        HmacSha256::new_from_slice(key.secret.expose_secret().as_bytes())
            .expect("HMAC-SHA256 accepts keys of any length")
    }

    /// The signature attributes for `body`: the first key's id and the lowercase
    /// hex HMAC-SHA256 of the body's bytes.
    pub fn sign(&self, body: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(key) = self.keys.first() {
            let mut mac = Self::mac(key);
            mac.update(body.as_bytes());
            out.insert(attr::SIGNATURE_KEY_ID.to_owned(), key.id.clone());
            out.insert(
                attr::SIGNATURE.to_owned(),
                hex::encode(mac.finalize().into_bytes()),
            );
        }
        out
    }

    /// Checks `body` against the signature attributes, in constant time
    /// (`hmac`'s `verify_slice`). Returns the key id that verified. Errors:
    /// [`SignatureError`].
    pub fn verify(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<String, SignatureError> {
        let (Some(key_id), Some(signature)) = (
            attributes.get(attr::SIGNATURE_KEY_ID),
            attributes.get(attr::SIGNATURE),
        ) else {
            return Err(SignatureError::Unsigned);
        };
        let key = self.keys.iter().find(|k| k.id == *key_id).ok_or_else(|| {
            SignatureError::UnknownKey {
                key_id: crate::queue::truncate(key_id, 64),
            }
        })?;
        let expected = hex::decode(signature).map_err(|_| SignatureError::Malformed)?;
        if expected.len() != 32 {
            return Err(SignatureError::Malformed);
        }
        let mut mac = Self::mac(key);
        mac.update(body.as_bytes());
        mac.verify_slice(&expected)
            .map_err(|_| SignatureError::Mismatch {
                key_id: key.id.clone(),
            })?;
        Ok(key.id.clone())
    }
}

/// Whether termination messages are signed and verified.
#[derive(Debug, Clone, Default)]
pub enum MessageAuth {
    /// No signing, no verification (`MESSAGE_SIGNING=off`, or the library
    /// default for in-process tests). The CLI refuses this unless configured
    /// explicitly, and warns at start-up.
    #[default]
    Off,
    /// Sign with the ring's first key, verify with any of its keys.
    Hmac(Arc<Keyring>),
}

impl MessageAuth {
    /// Signature attributes for `body` (empty when off).
    pub fn sign(&self, body: &str) -> BTreeMap<String, String> {
        match self {
            Self::Off => BTreeMap::new(),
            Self::Hmac(ring) => ring.sign(body),
        }
    }

    /// Verifies `body` (always `Ok(None)` when off; `Ok(Some(key id))` when
    /// verified). Errors: [`SignatureError`].
    pub fn verify(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Option<String>, SignatureError> {
        match self {
            Self::Off => Ok(None),
            Self::Hmac(ring) => ring.verify(body, attributes).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0123456789abcdef0123456789abcdef-one";
    const K2: &str = "0123456789abcdef0123456789abcdef-two";

    fn ring(raw: &str) -> Keyring {
        Keyring::parse(&SecretString::from(raw.to_owned())).unwrap()
    }

    #[test]
    fn first_key_signs_every_key_verifies() {
        let old = ring(&format!("k1:{K1}"));
        let rotating = ring(&format!("k2:{K2}, k1:{K1}"));
        let body = r#"{"v":1}"#;
        let signed_old = old.sign(body);
        assert_eq!(rotating.verify(body, &signed_old), Ok("k1".into()));
        let signed_new = rotating.sign(body);
        assert_eq!(signed_new[attr::SIGNATURE_KEY_ID], "k2");
        assert_eq!(
            old.verify(body, &signed_new),
            Err(SignatureError::UnknownKey {
                key_id: "k2".into()
            })
        );
        assert_eq!(
            rotating.verify(r#"{"v":2}"#, &signed_new),
            Err(SignatureError::Mismatch {
                key_id: "k2".into()
            })
        );
        assert_eq!(
            rotating.verify(body, &BTreeMap::new()),
            Err(SignatureError::Unsigned)
        );
        let mut bad = signed_new.clone();
        bad.insert(attr::SIGNATURE.into(), "zz".into());
        assert_eq!(rotating.verify(body, &bad), Err(SignatureError::Malformed));
    }

    #[test]
    fn signature_is_hmac_sha256_hex_of_the_body() {
        // RFC 4231 test case 2 uses a short key; compute with the same crate
        // through a different path to pin the encoding (lowercase hex, 64 digits).
        let r = ring(&format!("k1:{K1}"));
        let sig = &r.sign("abc")[attr::SIGNATURE];
        let mut mac = HmacSha256::new_from_slice(K1.as_bytes()).unwrap();
        mac.update(b"abc");
        assert_eq!(sig, &hex::encode(mac.finalize().into_bytes()));
        assert_eq!(sig.len(), 64);
    }

    #[test]
    fn bad_key_lists_are_refused_without_showing_keys() {
        let parse = |s: &str| Keyring::parse(&SecretString::from(s.to_owned()));
        assert_eq!(parse(" , ").unwrap_err(), KeyringError::Empty);
        assert_eq!(
            parse("nokey").unwrap_err(),
            KeyringError::Malformed { position: 1 }
        );
        let short = parse("k1:short-secret").unwrap_err();
        assert!(!short.to_string().contains("short-secret"), "{short}");
        assert!(matches!(
            parse(&format!("k1:{K1},k1:{K2}")).unwrap_err(),
            KeyringError::Duplicate { .. }
        ));
        assert!(matches!(
            parse(&format!("k 1:{K1}")).unwrap_err(),
            KeyringError::KeyId { .. }
        ));
        let shown = format!("{:?}", ring(&format!("k1:{K1}")));
        assert!(!shown.contains(K1), "{shown}");
        assert!(shown.contains("k1"), "{shown}");
    }

    #[test]
    fn ephemeral_keys_differ() {
        let a = Keyring::ephemeral();
        let b = Keyring::ephemeral();
        let signed = a.sign("x");
        assert!(a.verify("x", &signed).is_ok());
        assert!(b.verify("x", &signed).is_err());
    }
}
