//! Request statistics (`GET /_sim/stats`, [`RunningSim::stats`](super::RunningSim::stats)):
//! counts by method, resource kind and status, per client, token grants, 429s
//! served, injected errors, and a summary of the directory. Counting only: no
//! decision depends on these numbers, and `/_sim/*` requests are not counted so a
//! test's observation does not change what it observes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a request was addressed to, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// `POST /oauth/token`.
    Token,
    /// `/api/v2/scim/v2/users` (list, create).
    Users,
    /// `/api/v2/scim/v2/users/{id}`.
    User,
    /// `/api/v2/scim/v2/groups` (list).
    Groups,
    /// `/api/v2/scim/v2/groups/{id}`.
    Group,
    /// `serviceproviderconfig`, `schemas`, `resourcetypes` (and their `{id}`).
    Discovery,
    /// Anything else (answered 404 or 405).
    Other,
}

impl ResourceKind {
    /// Classifies a request path.
    pub fn of_path(path: &str) -> Self {
        if path == "/oauth/token" {
            return Self::Token;
        }
        let Some(rest) = path.strip_prefix(super::SCIM_BASE_PATH) else {
            return Self::Other;
        };
        let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["users"] => Self::Users,
            ["users", id] if !id.is_empty() => Self::User,
            ["groups"] => Self::Groups,
            ["groups", id] if !id.is_empty() => Self::Group,
            ["serviceproviderconfig"] | ["schemas"] | ["resourcetypes"] => Self::Discovery,
            ["schemas", _] | ["resourcetypes", _] => Self::Discovery,
            _ => Self::Other,
        }
    }
}

/// Counts for one resource kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindStats {
    /// Requests of this kind.
    pub requests: u64,
    /// By HTTP method (`GET`, `PATCH`, …).
    pub by_method: BTreeMap<String, u64>,
    /// By response status.
    pub by_status: BTreeMap<u16, u64>,
    /// By method and status, keyed `"PATCH 200"`.
    pub by_method_status: BTreeMap<String, u64>,
}

/// Counts for the requests one authenticated client made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    /// SCIM requests that carried this client's valid token.
    pub requests: u64,
    /// Keyed `"PATCH user"`, `"GET users"`, …
    pub by_method_kind: BTreeMap<String, u64>,
    /// By response status.
    pub by_status: BTreeMap<u16, u64>,
}

/// The directory at the moment of the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    /// Users not deleted.
    pub users: u64,
    /// Of those, active.
    pub active_users: u64,
    /// Of those, inactive.
    pub inactive_users: u64,
    /// Soft-deleted users.
    pub deleted_users: u64,
    /// Groups.
    pub groups: u64,
    /// Group memberships (sum of members over groups).
    pub memberships: u64,
}

/// A snapshot of the simulator's counters (same JSON as `GET /_sim/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Requests counted (everything but `/_sim/*`).
    pub requests: u64,
    /// By HTTP method.
    pub by_method: BTreeMap<String, u64>,
    /// By response status.
    pub by_status: BTreeMap<u16, u64>,
    /// By resource kind.
    pub by_kind: BTreeMap<ResourceKind, KindStats>,
    /// Tokens issued, by client id.
    pub token_grants: BTreeMap<String, u64>,
    /// Token requests refused (bad client, secret or grant), by client id as
    /// sent (`""` when none was).
    pub token_refusals: BTreeMap<String, u64>,
    /// SCIM requests by the client whose token they carried.
    pub by_client: BTreeMap<String, ClientStats>,
    /// 429s served by the rate limiter (not those for oversized pages).
    pub rate_limited: u64,
    /// 500/503 answered by `--error-rate`.
    pub injected_errors: u64,
    /// The directory now.
    pub state: StateSummary,
}

impl SimStats {
    /// Requests of `kind` with `method` (e.g. `(ResourceKind::User, "PATCH")`).
    pub fn count(&self, kind: ResourceKind, method: &str) -> u64 {
        self.by_kind
            .get(&kind)
            .and_then(|k| k.by_method.get(method))
            .copied()
            .unwrap_or(0)
    }

    /// Requests of `kind` with `method` answered `status`.
    pub fn count_status(&self, kind: ResourceKind, method: &str, status: u16) -> u64 {
        self.by_kind
            .get(&kind)
            .and_then(|k| k.by_method_status.get(&format!("{method} {status}")))
            .copied()
            .unwrap_or(0)
    }

    /// PATCH requests to `users/{id}`.
    pub fn user_patches(&self) -> u64 {
        self.count(ResourceKind::User, "PATCH")
    }

    /// PATCH requests to `groups/{id}`.
    pub fn group_patches(&self) -> u64 {
        self.count(ResourceKind::Group, "PATCH")
    }

    /// Tokens issued to `client_id`.
    pub fn grants(&self, client_id: &str) -> u64 {
        self.token_grants.get(client_id).copied().unwrap_or(0)
    }

    /// Requests by `client_id` of `method` on `kind`.
    pub fn client_count(&self, client_id: &str, method: &str, kind: ResourceKind) -> u64 {
        let key = format!("{method} {}", kind_name(kind));
        self.by_client
            .get(client_id)
            .and_then(|c| c.by_method_kind.get(&key))
            .copied()
            .unwrap_or(0)
    }
}

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Token => "token",
        ResourceKind::Users => "users",
        ResourceKind::User => "user",
        ResourceKind::Groups => "groups",
        ResourceKind::Group => "group",
        ResourceKind::Discovery => "discovery",
        ResourceKind::Other => "other",
    }
}

/// The live counters behind [`SimStats`] (the directory summary is filled in at
/// snapshot time).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub snapshot: SimStats,
}

impl Counters {
    /// Counts one answered request; `client` when it carried a valid token.
    pub fn record(&mut self, method: &str, kind: ResourceKind, status: u16, client: Option<&str>) {
        let s = &mut self.snapshot;
        s.requests += 1;
        *s.by_method.entry(method.to_owned()).or_default() += 1;
        *s.by_status.entry(status).or_default() += 1;
        let k = s.by_kind.entry(kind).or_default();
        k.requests += 1;
        *k.by_method.entry(method.to_owned()).or_default() += 1;
        *k.by_status.entry(status).or_default() += 1;
        *k.by_method_status
            .entry(format!("{method} {status}"))
            .or_default() += 1;
        if let Some(c) = client {
            let cs = s.by_client.entry(c.to_owned()).or_default();
            cs.requests += 1;
            *cs.by_method_kind
                .entry(format!("{method} {}", kind_name(kind)))
                .or_default() += 1;
            *cs.by_status.entry(status).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_classify_into_kinds() {
        let b = crate::sim::SCIM_BASE_PATH;
        assert_eq!(ResourceKind::of_path("/oauth/token"), ResourceKind::Token);
        assert_eq!(
            ResourceKind::of_path(&format!("{b}/users")),
            ResourceKind::Users
        );
        assert_eq!(
            ResourceKind::of_path(&format!("{b}/users/x")),
            ResourceKind::User
        );
        assert_eq!(
            ResourceKind::of_path(&format!("{b}/groups")),
            ResourceKind::Groups
        );
        assert_eq!(
            ResourceKind::of_path(&format!("{b}/groups/g")),
            ResourceKind::Group
        );
        assert_eq!(
            ResourceKind::of_path(&format!("{b}/schemas/x")),
            ResourceKind::Discovery
        );
        assert_eq!(
            ResourceKind::of_path(&format!("{b}/users/x/y")),
            ResourceKind::Other
        );
        assert_eq!(ResourceKind::of_path("/elsewhere"), ResourceKind::Other);
    }

    #[test]
    fn counters_round_trip_through_json() {
        let mut c = Counters::default();
        c.record("PATCH", ResourceKind::User, 200, Some("primary"));
        c.record("PATCH", ResourceKind::User, 403, Some("primary"));
        c.record("GET", ResourceKind::Users, 401, None);
        let s = c.snapshot.clone();
        assert_eq!(s.user_patches(), 2);
        assert_eq!(s.count_status(ResourceKind::User, "PATCH", 403), 1);
        assert_eq!(s.client_count("primary", "PATCH", ResourceKind::User), 2);
        let back: SimStats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
