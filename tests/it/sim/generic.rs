//! The RFC-generic cases, run against the simulator and against scim2-server (an
//! independent SCIM 2.0 implementation, started by `scripts/test.sh`), so the
//! simulator is held to something it did not write. Only what RFC 7643/7644
//! require is asserted; where the RFC allows choices (200 or 204 after PATCH;
//! 409, 412 or 400 invalidVers for a stale version; ScimError or platform body on
//! 404) both answers are accepted and each implementation's actual choice is
//! pinned in its own tests.

use deprovision::sim::{RunningSim, Seed, SeedGroup};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use super::{PATCH_OP, SCIM_ERROR, body, config};
use crate::support::required_env;

/// One SCIM service under test.
struct Target {
    name: &'static str,
    http: Client,
    users: String,
    groups: String,
    token: String,
    _sim: Option<RunningSim>,
}

impl Target {
    /// The simulator, with two empty groups (Genesys has no group create).
    async fn sim() -> Self {
        let seed = Seed {
            users: vec![],
            groups: vec![
                SeedGroup {
                    id: "team-a".into(),
                    display_name: "Team A".into(),
                    external_id: None,
                },
                SeedGroup {
                    id: "team-b".into(),
                    display_name: "Team B".into(),
                    external_id: None,
                },
            ],
        };
        let s = super::Sim::start(config().with_seed(seed)).await;
        let token = s.primary().await;
        Self {
            name: "simulator",
            http: s.http.clone(),
            users: s.scim("users"),
            groups: s.scim("groups"),
            token,
            _sim: Some(s.sim),
        }
    }

    /// scim2-server, in a tenant of its own.
    async fn scim2() -> Self {
        let base = required_env("TEST_SCIM2_URL");
        let token = required_env("TEST_SCIM2_TOKEN");
        let tenant = format!("t{}", uuid::Uuid::new_v4().simple());
        let t = Self {
            name: "scim2-server",
            http: Client::new(),
            users: format!("{base}/{tenant}/Users"),
            groups: format!("{base}/{tenant}/Groups"),
            token,
            _sim: None,
        };
        for name in ["Team A", "Team B"] {
            let r = t
                .send(t.http.post(&t.groups).body(
                    json!({ "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name })
                        .to_string(),
                ))
                .await;
            assert_eq!(r.status(), StatusCode::CREATED, "scim2-server group create");
        }
        t
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Response {
        req.bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    async fn create_user(&self, user_name: &str, external_id: &str) -> String {
        let r = self
            .send(
                self.http.post(&self.users).body(
                    json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": user_name, "displayName": user_name,
                        "externalId": external_id, "active": true,
                    })
                    .to_string(),
                ),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}: create user",
            self.name
        );
        body(r).await["id"].as_str().unwrap().to_owned()
    }

    async fn group_id(&self, name: &str) -> String {
        let filter = format!("displayName eq {}", json!(name));
        let r = self
            .send(self.http.get(&self.groups).query(&[("filter", filter)]))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}: group lookup", self.name);
        body(r).await["Resources"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn patch(&self, url: &str, ops: Value, if_match: Option<&str>) -> Response {
        let mut req = self
            .http
            .patch(url)
            .body(json!({ "schemas": [PATCH_OP], "Operations": ops }).to_string());
        if let Some(e) = if_match {
            req = req.header("if-match", e);
        }
        self.send(req).await
    }

    async fn get_user(&self, id: &str) -> Value {
        let r = self
            .send(self.http.get(format!("{}/{id}", self.users)))
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{}: get user", self.name);
        body(r).await
    }
}

macro_rules! on_both {
    ($case:ident) => {
        mod $case {
            #[tokio::test]
            async fn simulator() {
                super::$case(super::Target::sim().await).await;
            }
            #[tokio::test]
            async fn scim2_server() {
                super::$case(super::Target::scim2().await).await;
            }
        }
    };
}

/// An externalId with a quote, a backslash, a space and non-ASCII characters is
/// found exactly by a JSON-quoted, fully percent-encoded filter.
async fn filter_by_external_id_with_quotes_and_non_ascii(t: Target) {
    let tricky = "Émp \"42\" \\ 東京";
    let id = t.create_user("tricky@example.com", tricky).await;
    t.create_user("plain@example.com", "Émp ").await;
    t.create_user("other@example.com", "Émp \"42\"").await;
    let filter = format!("externalId eq {}", serde_json::to_string(tricky).unwrap());
    let url = format!(
        "{}?filter={}",
        t.users,
        utf8_percent_encode(&filter, NON_ALPHANUMERIC)
    );
    let r = t.send(t.http.get(url)).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", t.name);
    let v = body(r).await;
    assert_eq!(v["totalResults"], 1, "{}: {v}", t.name);
    assert_eq!(v["Resources"][0]["id"], json!(id), "{}", t.name);
    assert_eq!(v["Resources"][0]["externalId"], json!(tricky), "{}", t.name);
}
on_both!(filter_by_external_id_with_quotes_and_non_ascii);

/// PATCH `active=false` deactivates (200 with the user, or 204), with an ETag.
async fn patch_active_false_deactivates(t: Target) {
    let id = t.create_user("leaver@example.com", "L-1").await;
    let r = t
        .patch(
            &format!("{}/{id}", t.users),
            json!([{ "op": "replace", "path": "active", "value": false }]),
            None,
        )
        .await;
    let status = r.status();
    assert!(r.headers().contains_key("etag"), "{}: ETag", t.name);
    match status {
        StatusCode::OK => assert_eq!(body(r).await["active"], false, "{}", t.name),
        StatusCode::NO_CONTENT => {}
        other => panic!("{}: PATCH answered {other}", t.name),
    }
    assert_eq!(t.get_user(&id).await["active"], false, "{}", t.name);
}
on_both!(patch_active_false_deactivates);

/// `remove` with `members[value eq "…"]` removes exactly that member.
async fn group_member_removal_by_filter(t: Target) {
    let a = t.create_user("a@example.com", "A").await;
    let b = t.create_user("b@example.com", "B").await;
    let g = t.group_id("Team A").await;
    let url = format!("{}/{g}", t.groups);
    let r = t
        .patch(
            &url,
            json!([{ "op": "add", "path": "members", "value": [{ "value": a }, { "value": b }] }]),
            None,
        )
        .await;
    assert!(
        r.status().is_success(),
        "{}: add members {}",
        t.name,
        r.status()
    );
    let r = t
        .patch(
            &url,
            json!([{ "op": "remove", "path": format!("members[value eq \"{a}\"]") }]),
            None,
        )
        .await;
    assert!(r.status().is_success(), "{}: remove {}", t.name, r.status());
    let r = t.send(t.http.get(&url)).await;
    let v = body(r).await;
    let members: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members, [b.as_str()], "{}", t.name);
    // Where the server renders user.groups, it agrees.
    if let Some(groups) = t.get_user(&a).await.get("groups").and_then(Value::as_array) {
        assert!(groups.iter().all(|x| x["value"] != json!(g)), "{}", t.name);
    }
}
on_both!(group_member_removal_by_filter);

/// A stale `If-Match` is refused with a ScimError and changes nothing.
async fn if_match_mismatch_is_refused(t: Target) {
    let id = t.create_user("v@example.com", "V-1").await;
    let r = t
        .patch(
            &format!("{}/{id}", t.users),
            json!([{ "op": "replace", "path": "active", "value": false }]),
            Some("W/\"not-the-version\""),
        )
        .await;
    let status = r.status().as_u16();
    let v = body(r).await;
    assert!(
        status == 409 || status == 412 || (status == 400 && v["scimType"] == "invalidVers"),
        "{}: {status} {v}",
        t.name
    );
    assert_eq!(v["schemas"], json!([SCIM_ERROR]), "{}", t.name);
    assert_eq!(v["status"], json!(status.to_string()), "{}", t.name);
    assert_eq!(t.get_user(&id).await["active"], true, "{}", t.name);
}
on_both!(if_match_mismatch_is_refused);

/// An unknown id is 404 with a JSON error body whose `status` says 404 (a string
/// in a ScimError, a number in a platform ErrorBody).
async fn unknown_user_is_404(t: Target) {
    let r = t
        .send(t.http.get(format!("{}/{}", t.users, uuid::Uuid::new_v4())))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "{}", t.name);
    let v = body(r).await;
    assert!(
        v["status"] == json!("404") || v["status"] == json!(404),
        "{}: {v}",
        t.name
    );
    if v["schemas"] == json!([SCIM_ERROR]) {
        assert_eq!(v["status"], "404");
    } else {
        assert_eq!(v["code"], "not.found", "{}: {v}", t.name);
    }
}
on_both!(unknown_user_is_404);
