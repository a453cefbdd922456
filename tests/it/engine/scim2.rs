//! The engine against scim2-server: every test has its own tenant
//! (`$TEST_SCIM2_URL/<tenant>/`), seeds it over HTTP, runs the engine with the
//! static bearer token, and reads the server back to check what changed.

use std::num::NonZeroU32;
use std::time::Duration;

use deprovision::config::ScimTarget;
use deprovision::domain::{Credential, ExternalId, Outcome, ScimUserId};
use deprovision::engine::{Deprovision, Engine, EngineOptions, Request, Subject};
use deprovision::limit::RateLimiter;
use deprovision::scim::{ClientOptions, ScimClient};
use secrecy::SecretString;
use serde_json::{Value, json};
use url::Url;

use crate::support::required_env;

/// One scim2-server tenant and a plain HTTP client to seed and inspect it.
struct Tenant {
    base: Url,
    token: String,
    http: reqwest::Client,
}

impl Tenant {
    fn new() -> Self {
        let root = required_env("TEST_SCIM2_URL");
        let token = required_env("TEST_SCIM2_TOKEN");
        let base = Url::parse(&format!(
            "{}/engine-{}/",
            root.trim_end_matches('/'),
            uuid::Uuid::new_v4().simple()
        ))
        .unwrap();
        Self {
            base,
            token,
            http: reqwest::Client::new(),
        }
    }

    fn engine_with(&self, token: &str, options: EngineOptions) -> Engine {
        let client = ScimClient::new(
            &ScimTarget::Static {
                base: self.base.clone(),
                token: SecretString::from(token.to_owned()),
            },
            RateLimiter::per_minute(NonZeroU32::new(60_000).unwrap()),
            ClientOptions::default(),
        )
        .unwrap();
        Engine::new(client, options)
    }

    fn engine(&self) -> Engine {
        self.engine_with(&self.token, EngineOptions::default())
    }

    async fn post(&self, resource: &str, body: Value) -> Value {
        let res = self
            .http
            .post(self.base.join(resource).unwrap())
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            201,
            "seeding {resource}: {:?}",
            res.text().await
        );
        res.json().await.unwrap()
    }

    async fn user(&self, user_name: &str, external_id: &str, active: bool) -> String {
        let u = self
            .post(
                "Users",
                json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": user_name,
                    "externalId": external_id,
                    "active": active,
                }),
            )
            .await;
        u["id"].as_str().unwrap().to_owned()
    }

    async fn group(&self, name: &str, members: &[&str]) -> String {
        let members: Vec<Value> = members.iter().map(|m| json!({ "value": m })).collect();
        let g = self
            .post(
                "Groups",
                json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": name,
                    "members": members,
                }),
            )
            .await;
        g["id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        let res = self
            .http
            .get(self.base.join(path).unwrap())
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "reading {path}");
        res.json().await.unwrap()
    }

    async fn active(&self, user_id: &str) -> bool {
        self.get(&format!("Users/{user_id}")).await["active"]
            .as_bool()
            .unwrap()
    }

    async fn members(&self, group_id: &str) -> Vec<String> {
        let g = self.get(&format!("Groups/{group_id}")).await;
        g["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["value"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn request(external_id: &str, user_id: Option<&str>) -> Request {
    Request {
        external_id: ExternalId::parse(external_id).unwrap(),
        user_id: user_id.map(|u| ScimUserId::parse(u).unwrap()),
        dry_run: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_user_in_two_groups_is_deactivated_and_leaves_both() {
    let t = Tenant::new();
    let user = t.user("bjensen", "E-100", true).await;
    let colleague = t.user("colleague", "E-101", true).await;
    let sales = t.group("Sales", &[&user, &colleague]).await;
    let admins = t.group("Admins", &[&user]).await;

    let report = t.engine().deprovision(&request("E-100", None)).await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_eq!(
        report.user_id.as_ref().map(|u| u.as_str()),
        Some(user.as_str())
    );
    assert_eq!(report.credential, Some(Credential::Static));
    let mut removed: Vec<&str> = report
        .groups_removed
        .iter()
        .map(|g| g.id.as_str())
        .collect();
    removed.sort();
    let mut expected = vec![sales.as_str(), admins.as_str()];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(
        report.status_code,
        Some(204),
        "scim2-server answers PATCH with 204"
    );
    assert!(report.detail.is_none(), "{report:?}");

    assert!(!t.active(&user).await, "the user is still active");
    assert_eq!(t.members(&sales).await, vec![colleague.clone()]);
    assert!(t.members(&admins).await.is_empty());
    assert!(t.active(&colleague).await, "the colleague was touched");
}

#[tokio::test]
async fn a_user_id_with_another_external_id_is_an_identity_mismatch() {
    let t = Tenant::new();
    let user = t.user("someone", "E-200", true).await;
    let group = t.group("Team", &[&user]).await;

    let report = t.engine().deprovision(&request("E-999", Some(&user))).await;

    assert_eq!(report.outcome, Outcome::IdentityMismatch, "{report:?}");
    assert!(report.detail.as_deref().unwrap().contains("E-200"));
    assert!(t.active(&user).await, "a different person was deactivated");
    assert_eq!(t.members(&group).await, vec![user]);
}

#[tokio::test]
async fn two_users_with_one_external_id_are_ambiguous_and_untouched() {
    let t = Tenant::new();
    let a = t.user("twin-a", "E-300", true).await;
    let b = t.user("twin-b", "E-300", true).await;

    let report = t.engine().deprovision(&request("E-300", None)).await;

    assert_eq!(report.outcome, Outcome::Ambiguous, "{report:?}");
    assert!(t.active(&a).await && t.active(&b).await);
}

#[tokio::test]
async fn an_unknown_external_id_is_not_found() {
    let t = Tenant::new();
    t.user("present", "E-400", true).await;
    let report = t.engine().deprovision(&request("E-404", None)).await;
    assert_eq!(report.outcome, Outcome::NotFound, "{report:?}");
    assert_eq!(report.user_id, None);
}

#[tokio::test]
async fn a_user_id_that_is_gone_falls_back_to_the_external_id() {
    let t = Tenant::new();
    let user = t.user("moved", "E-500", true).await;

    let report = t
        .engine()
        .deprovision(&request("E-500", Some("00000000000000000000000000000000")))
        .await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_eq!(
        report.user_id.as_ref().map(|u| u.as_str()),
        Some(user.as_str())
    );
    assert!(!t.active(&user).await);
}

#[tokio::test]
async fn an_inactive_user_still_in_a_group_is_removed_from_it() {
    let t = Tenant::new();
    let user = t.user("gone", "E-600", false).await;
    let group = t.group("Leftover", &[&user]).await;

    let report = t.engine().deprovision(&request("E-600", None)).await;

    assert_eq!(report.outcome, Outcome::AlreadyInactive, "{report:?}");
    assert_eq!(report.groups_removed.len(), 1);
    assert_eq!(
        report.groups_removed[0].display.as_deref(),
        Some("Leftover")
    );
    assert!(t.members(&group).await.is_empty());
    assert!(!t.active(&user).await);
}

#[tokio::test]
async fn a_dry_run_plans_and_changes_nothing() {
    let t = Tenant::new();
    let user = t.user("planned", "E-700", true).await;
    let group = t.group("Kept", &[&user]).await;
    let mut req = request("E-700", Some(&user));
    req.dry_run = true;

    let report = t.engine().deprovision(&req).await;

    assert_eq!(report.outcome, Outcome::DryRun, "{report:?}");
    assert_eq!(report.groups_removed.len(), 1, "the plan lists the group");
    assert!(t.active(&user).await, "a dry run deactivated");
    assert_eq!(t.members(&group).await, vec![user]);
}

#[tokio::test]
async fn external_ids_with_quotes_backslashes_spaces_plus_and_accents_are_found_exactly() {
    let t = Tenant::new();
    let awkward = [
        "quo\"te",
        "back\\slash",
        "two words",
        "plus+sign",
        "Jürgen-Øre",
        "amp&er=sand",
    ];
    let mut ids = Vec::new();
    for (i, ext) in awkward.iter().enumerate() {
        ids.push(t.user(&format!("user{i}"), ext, true).await);
    }
    // Decoys that a sloppy encoding would match instead: `+` read as a space,
    // a backslash dropped.
    let decoy_space = t.user("decoy1", "plus sign", true).await;
    let decoy_slash = t.user("decoy2", "backslash", true).await;

    let engine = t.engine();
    for (ext, id) in awkward.iter().zip(&ids) {
        let report = engine.deprovision(&request(ext, None)).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{ext:?}: {report:?}");
        assert_eq!(
            report.user_id.as_ref().map(|u| u.as_str()),
            Some(id.as_str()),
            "{ext:?} resolved to the wrong user"
        );
    }
    assert!(t.active(&decoy_space).await && t.active(&decoy_slash).await);
}

#[tokio::test]
async fn an_operator_can_name_the_account_by_user_id_alone() {
    let t = Tenant::new();
    let user = t.user("no-hr-id", "E-800", true).await;
    let report = t
        .engine()
        .deprovision_subject(
            &Subject::UserId(ScimUserId::parse(&user).unwrap()),
            false,
            tokio::time::Instant::now() + Duration::from_secs(60),
        )
        .await;
    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert!(!t.active(&user).await);
}

#[tokio::test]
async fn a_rejected_static_token_fails_without_changing_anything() {
    let t = Tenant::new();
    let user = t.user("guarded", "E-900", true).await;
    let engine = t.engine_with("not-the-token", EngineOptions::default());

    let report = engine.deprovision(&request("E-900", None)).await;

    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert_eq!(report.status_code, Some(401));
    assert_eq!(report.requests, 1, "a static token cannot be refetched");
    assert!(t.active(&user).await);
}

#[tokio::test]
async fn a_deadline_already_past_sends_nothing_and_asks_for_a_retry() {
    let t = Tenant::new();
    let user = t.user("later", "E-1000", true).await;
    let mut req = request("E-1000", None);
    req.deadline = tokio::time::Instant::now();

    let report = t.engine().deprovision(&req).await;

    assert_eq!(report.outcome, Outcome::Retrying, "{report:?}");
    assert_eq!(report.requests, 0);
    assert!(t.active(&user).await);
}

#[tokio::test]
async fn role_removal_goes_in_the_deactivating_patch() {
    let t = Tenant::new();
    let user = t
        .post(
            "Users",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "roled",
                "externalId": "E-1100",
                "active": true,
                "roles": [{"value": "supervisor"}, {"value": "agent"}],
            }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let engine = t.engine_with(&t.token, EngineOptions { remove_roles: true });

    let report = engine.deprovision(&request("E-1100", None)).await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_eq!(report.roles_removed, vec!["supervisor", "agent"]);
    let back = t.get(&format!("Users/{user}")).await;
    assert_eq!(back["active"], json!(false));
    assert!(
        back.get("roles")
            .is_none_or(|r| r.as_array().is_some_and(|a| a.is_empty())),
        "{back}"
    );
}
