//! RFC 7644 §3.4.2.2 filter expressions for the few lookups the engine makes, and
//! their encoding into a query string. Values are written as JSON strings (quoted,
//! with `"` and `\` escaped) and the whole expression is percent-encoded, so that
//! quotes, backslashes, spaces, `+`, `&` and non-ASCII letters reach the server
//! as they are. Builds text only; sends nothing.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986 unreserved characters is encoded. In particular a
/// space becomes `%20` and `+` becomes `%2B`: form encoding's `+` for a space would
/// be read back as a literal plus by a strict server.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A SCIM string literal: the value as a JSON string (RFC 7644 §3.4.2.2 says
/// string values are JSON strings).
pub fn quote(value: &str) -> String {
    // Serialising a &str to JSON cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| format!("\"{value}\""))
}

/// `attribute eq "value"`.
pub fn eq(attribute: &str, value: &str) -> String {
    format!("{attribute} eq {}", quote(value))
}

/// `externalId eq "…"`: the externalId lookup (RFC 7643 §3.1 `externalId`).
pub fn external_id(value: &str) -> String {
    eq("externalId", value)
}

/// `externalId eq "…" and active eq false`: the same lookup among inactive users,
/// which Genesys leaves out of user lists unless the filter asks for them
/// (Genesys API description, getScimV2Users: "To return inactive users, set the
/// filter parameter to `active eq false`").
pub fn inactive_external_id(value: &str) -> String {
    format!("{} and active eq false", external_id(value))
}

/// `members.value eq "…"`: the groups that list a user, for servers that leave
/// the read-only `groups` attribute out of the user (RFC 7643 §4.1.2).
pub fn member(user_id: &str) -> String {
    eq("members.value", user_id)
}

/// Percent-encodes a query parameter value (the whole filter expression).
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_escapes_like_json() {
        assert_eq!(external_id("a\"b\\c d+é"), r#"externalId eq "a\"b\\c d+é""#);
        assert_eq!(
            inactive_external_id("E1"),
            r#"externalId eq "E1" and active eq false"#
        );
    }

    #[test]
    fn encodes_the_whole_expression_strictly() {
        assert_eq!(
            encode(&external_id("a\"b\\ +é&x=1")),
            "externalId%20eq%20%22a%5C%22b%5C%5C%20%2B%C3%A9%26x%3D1%22"
        );
    }
}
