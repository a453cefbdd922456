//! What list and read requests share: `filter`, `startIndex`, `count`,
//! `attributes` and `excludedAttributes` (RFC 7644 §3.4.2, §3.9; API description
//! getScimV2Users), the page-size rule for untrimmed pages, and the ListResponse
//! envelope. Resource-specific matching stays with the resources.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::config::LargePage;
use super::errors::Fault;
use super::filter::{self, Filter, normalize_attr};

/// Largest page served for untrimmed requests (API description: "A page size over
/// 25 may … return a 429 error").
pub(crate) const UNTRIMMED_MAX: usize = 25;
/// Largest page served when `attributes`/`excludedAttributes` trim it; the API
/// description names no limit, so the simulator picks one.
pub(crate) const TRIMMED_MAX: usize = 100;
/// The ListResponse schema URN (RFC 7644 §3.4.2).
pub(crate) const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Which attributes a response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Projection {
    All,
    Include(Vec<String>),
    Exclude(Vec<String>),
}

impl Projection {
    /// From the query: `attributes` wins over `excludedAttributes` (RFC 7644
    /// §3.9 allows only one); values may repeat and be comma-separated.
    pub fn from_query(pairs: &[(String, String)]) -> Self {
        let collect = |name: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(k, _)| k == name)
                .flat_map(|(_, v)| v.split(','))
                .map(|a| {
                    let n = normalize_attr(a.trim());
                    // A sub-attribute selects its parent (meta.version → meta).
                    n.split('.').next().unwrap_or("").to_owned()
                })
                .filter(|a| !a.is_empty())
                .collect()
        };
        let inc = collect("attributes");
        if !inc.is_empty() {
            return Self::Include(inc);
        }
        let exc = collect("excludedAttributes");
        if !exc.is_empty() {
            return Self::Exclude(exc);
        }
        Self::All
    }

    /// True when the response should carry `attr` (lowercase). `always` lists the
    /// attributes returned whatever is asked.
    pub fn keeps(&self, attr: &str, always: &[&str]) -> bool {
        if always.contains(&attr) {
            return true;
        }
        match self {
            Self::All => true,
            Self::Include(v) => v.iter().any(|a| a == attr),
            Self::Exclude(v) => !v.iter().any(|a| a == attr),
        }
    }

    /// True when the request trimmed the attribute set.
    pub fn trimmed(&self) -> bool {
        !matches!(self, Self::All)
    }

    /// Removes from a rendered resource every top-level key not kept.
    pub fn apply(&self, mut v: Value, always: &[&str]) -> Value {
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, _| self.keeps(&k.to_ascii_lowercase(), always));
        }
        v
    }
}

/// A parsed list request.
#[derive(Debug, Clone)]
pub(crate) struct ListRequest {
    pub filter: Option<Filter>,
    /// 1-based.
    pub start_index: usize,
    pub count: usize,
    pub projection: Projection,
}

fn int_param(pairs: &[(String, String)], name: &str) -> Result<Option<i64>, Fault> {
    match pairs.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            Fault::platform(
                StatusCode::BAD_REQUEST,
                "invalid.query.param.value",
                format!("Value [{v}] is not valid for parameter [{name}]. Allowable values are: integers"),
            )
        }),
    }
}

impl ListRequest {
    /// Parses the query. `allowed` lists the filterable attributes (lowercase)
    /// with whether each compares to a boolean. Errors: 400 `invalidFilter`
    /// (ScimError) for filters; 400 platform body for non-integer paging; the
    /// large-page rule (429 or clamp).
    pub fn parse(
        pairs: &[(String, String)],
        allowed: &[(&str, bool)],
        large_page: LargePage,
    ) -> Result<Self, Fault> {
        let filter = match pairs.iter().find(|(k, _)| k == "filter") {
            None => None,
            Some((_, raw)) => {
                let f = filter::parse(raw).map_err(|why| Fault::bad("invalidFilter", why))?;
                for c in &f.clauses {
                    let Some(&(_, is_bool)) = allowed.iter().find(|(a, _)| *a == c.attr) else {
                        return Err(Fault::bad(
                            "invalidFilter",
                            format!("filtering on {:?} is not supported", c.attr),
                        ));
                    };
                    let got_bool = matches!(c.value, filter::Literal::Bool(_));
                    if is_bool != got_bool {
                        return Err(Fault::bad(
                            "invalidFilter",
                            format!(
                                "{:?} compares to {}",
                                c.attr,
                                if is_bool {
                                    "true or false"
                                } else {
                                    "a quoted string"
                                }
                            ),
                        ));
                    }
                }
                Some(f)
            }
        };
        let start_index = int_param(pairs, "startIndex")?.unwrap_or(1).max(1);
        let count = int_param(pairs, "count")?
            .unwrap_or(UNTRIMMED_MAX as i64)
            .max(0);
        let projection = Projection::from_query(pairs);
        let mut count = usize::try_from(count).unwrap_or(usize::MAX);
        if projection.trimmed() {
            count = count.min(TRIMMED_MAX);
        } else if count > UNTRIMMED_MAX {
            match large_page {
                LargePage::Reject => {
                    return Err(Fault::platform(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too.many.requests",
                        format!(
                            "A page size of {count} exceeds internal resource limits; use count <= 25 or trim the response with attributes or excludedAttributes"
                        ),
                    ));
                }
                LargePage::Clamp => count = UNTRIMMED_MAX,
            }
        }
        Ok(Self {
            filter,
            start_index: usize::try_from(start_index).unwrap_or(usize::MAX),
            count,
            projection,
        })
    }

    /// The ListResponse for `matches` (all matching resources, rendered): the page
    /// from `startIndex`, with `totalResults` over all of them.
    pub fn respond(&self, matches: Vec<Value>) -> Value {
        let total = matches.len();
        let page: Vec<Value> = matches
            .into_iter()
            .skip(self.start_index.saturating_sub(1))
            .take(self.count)
            .collect();
        let mut m = Map::new();
        m.insert("schemas".into(), json!([LIST_SCHEMA]));
        m.insert("totalResults".into(), json!(total));
        m.insert("startIndex".into(), json!(self.start_index));
        m.insert("itemsPerPage".into(), json!(page.len()));
        m.insert("Resources".into(), Value::Array(page));
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        super::super::server::query_pairs(Some(s))
    }

    #[test]
    fn projection_reads_repeated_and_comma_lists() {
        let p = Projection::from_query(&q("attributes=id,externalId&attributes=meta.version"));
        assert_eq!(
            p,
            Projection::Include(vec!["id".into(), "externalid".into(), "meta".into()])
        );
        assert!(p.keeps("username", &["username"]));
        assert!(!p.keeps("roles", &[]));
        let p = Projection::from_query(&q(
            "excludedAttributes=urn:ietf:params:scim:schemas:core:2.0:User:roles",
        ));
        assert!(!p.keeps("roles", &[]));
        assert!(p.keeps("groups", &[]));
    }

    #[test]
    fn page_size_rule() {
        let allowed = [("externalid", false)];
        assert!(ListRequest::parse(&q("count=26"), &allowed, LargePage::Reject).is_err());
        assert_eq!(
            ListRequest::parse(&q("count=26"), &allowed, LargePage::Clamp)
                .unwrap()
                .count,
            25
        );
        assert_eq!(
            ListRequest::parse(&q("count=500&attributes=id"), &allowed, LargePage::Reject)
                .unwrap()
                .count,
            100
        );
        assert!(ListRequest::parse(&q("count=x"), &allowed, LargePage::Reject).is_err());
        assert!(
            ListRequest::parse(&q("filter=active%20eq%20true"), &allowed, LargePage::Reject)
                .is_err()
        );
    }
}
