//! A small RFC 7644 §3.4.2.2 filter grammar: `attrPath SP "eq" SP compValue`
//! clauses joined by `and`, where compValue is a JSON string (RFC 8259 escapes,
//! any Unicode) or `true`/`false`. That is all Genesys Cloud documents (API
//! description, getScimV2Users `filter`); anything else — `or`, `not`, brackets,
//! other operators, bare words, numbers, `null` — is refused with a reason, which
//! the resource handlers answer as 400 `invalidFilter`. Also parses the
//! `members[value eq "…"]` value path of a group PATCH. Evaluation lives with the
//! resources.

/// A comparison value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Literal {
    Str(String),
    Bool(bool),
}

/// One `attr eq value` clause. `attr` is lowercased with any
/// `urn:ietf:params:scim:schemas:core:2.0:User:`/`Group:` prefix removed
/// (attribute names are case-insensitive, RFC 7643 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clause {
    pub attr: String,
    pub value: Literal,
}

/// Clauses that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    pub clauses: Vec<Clause>,
}

impl Filter {
    /// The value compared with `attr` (already normalised), if any clause does.
    pub fn value_of(&self, attr: &str) -> Option<&Literal> {
        self.clauses
            .iter()
            .find(|c| c.attr == attr)
            .map(|c| &c.value)
    }
}

/// Lowercases an attribute path and drops the core schema URN prefix.
pub(crate) fn normalize_attr(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    for prefix in [
        "urn:ietf:params:scim:schemas:core:2.0:user:",
        "urn:ietf:params:scim:schemas:core:2.0:group:",
    ] {
        if let Some(rest) = lower.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
    lower
}

struct Lexer<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn skip_ws(&mut self) {
        while let Some(c) = self.s[self.pos..].chars().next() {
            if c == ' ' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.s.len()
    }

    /// A run of characters up to a space (or the end); refuses grouping
    /// characters, which this grammar does not support.
    fn word(&mut self) -> Result<&'a str, String> {
        self.skip_ws();
        let start = self.pos;
        for (i, c) in self.s[start..].char_indices() {
            match c {
                ' ' => {
                    self.pos = start + i;
                    return Ok(&self.s[start..self.pos]);
                }
                '(' | ')' | '[' | ']' => {
                    return Err(format!(
                        "grouping with {c:?} at column {} is not supported",
                        start + i + 1
                    ));
                }
                '"' => {
                    return Err(format!("unexpected '\"' at column {}", start + i + 1));
                }
                _ => {}
            }
        }
        self.pos = self.s.len();
        Ok(&self.s[start..])
    }

    /// A JSON string starting at the current position, decoded.
    fn json_string(&mut self) -> Result<String, String> {
        let start = self.pos;
        let bytes = self.s.as_bytes();
        let mut i = start + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    let raw = &self.s[start..=i];
                    self.pos = i + 1;
                    return serde_json::from_str::<String>(raw)
                        .map_err(|e| format!("invalid JSON string {raw}: {e}"));
                }
                _ => i += 1,
            }
        }
        Err(format!(
            "unterminated string starting at column {}",
            start + 1
        ))
    }

    fn value(&mut self) -> Result<Literal, String> {
        self.skip_ws();
        if self.s[self.pos..].starts_with('"') {
            return self.json_string().map(Literal::Str);
        }
        let w = self.word()?;
        match w.to_ascii_lowercase().as_str() {
            "" => Err("a comparison value is missing".into()),
            "true" => Ok(Literal::Bool(true)),
            "false" => Ok(Literal::Bool(false)),
            "null" => Err("null comparisons are not supported".into()),
            _ => Err(format!(
                "value {w:?} must be a quoted JSON string, true or false"
            )),
        }
    }
}

/// Parses a filter. Errors carry a human reason for the `detail` of the 400.
pub(crate) fn parse(input: &str) -> Result<Filter, String> {
    let mut lx = Lexer { s: input, pos: 0 };
    let mut clauses = Vec::new();
    if lx.at_end() {
        return Err("the filter is empty".into());
    }
    loop {
        let attr = lx.word()?;
        if attr.eq_ignore_ascii_case("not") {
            return Err("'not' is not supported".into());
        }
        let op = lx.word()?;
        if !op.eq_ignore_ascii_case("eq") {
            if op.is_empty() {
                return Err(format!("attribute {attr:?} has no operator"));
            }
            return Err(format!("operator {op:?} is not supported; only 'eq' is"));
        }
        let value = lx.value()?;
        clauses.push(Clause {
            attr: normalize_attr(attr),
            value,
        });
        if lx.at_end() {
            break;
        }
        let join = lx.word()?;
        if !join.eq_ignore_ascii_case("and") {
            return Err(format!(
                "{join:?} is not supported between comparisons; only 'and' is"
            ));
        }
        if lx.at_end() {
            return Err("'and' needs a comparison after it".into());
        }
    }
    Ok(Filter { clauses })
}

/// Splits a value path `attr[filter]` (RFC 7644 §3.5.2, `valuePath`) into the
/// normalised attribute and its parsed filter. `None` when `path` has no bracket;
/// `Some(Err)` when it has one but is malformed.
pub(crate) fn parse_value_path(path: &str) -> Option<Result<(String, Filter), String>> {
    let open = path.find('[')?;
    let Some(inner) = path[open + 1..].strip_suffix(']') else {
        return Some(Err(format!("value path {path:?} does not end with ']'")));
    };
    Some(parse(inner).map(|f| (normalize_attr(&path[..open]), f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_decode_json_escapes_and_unicode() {
        let f = parse(r#"externalId eq "E\"1\\ é" and active eq false"#).unwrap();
        assert_eq!(
            f.clauses,
            vec![
                Clause {
                    attr: "externalid".into(),
                    value: Literal::Str("E\"1\\ é".into())
                },
                Clause {
                    attr: "active".into(),
                    value: Literal::Bool(false)
                },
            ]
        );
        let f = parse(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName EQ "a b""#).unwrap();
        assert_eq!(f.clauses[0].attr, "username");
        assert_eq!(f.value_of("username"), Some(&Literal::Str("a b".into())));
    }

    #[test]
    fn unsupported_syntax_is_refused() {
        for bad in [
            "",
            "userName co \"x\"",
            "userName eq \"a\" or userName eq \"b\"",
            "not (userName eq \"a\")",
            "(userName eq \"a\")",
            "userName eq bare",
            "userName eq 42",
            "userName eq null",
            "userName eq \"open",
            "userName eq \"a\" and",
            "userName",
            "emails[type eq \"work\"]",
            "userName eq \"bad \\q escape\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn value_paths_split_attribute_and_filter() {
        let (attr, f) = parse_value_path(r#"members[value eq "u-1"]"#)
            .unwrap()
            .unwrap();
        assert_eq!(attr, "members");
        assert_eq!(f.value_of("value"), Some(&Literal::Str("u-1".into())));
        assert!(parse_value_path("members").is_none());
        assert!(
            parse_value_path(r#"members[value eq "x""#)
                .unwrap()
                .is_err()
        );
        assert!(
            parse_value_path(r#"members[value co "x"]"#)
                .unwrap()
                .is_err()
        );
    }
}
