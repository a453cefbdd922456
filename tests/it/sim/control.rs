//! `/_sim/*` and the discovery resources.

use deprovision::sim::{ResourceKind, Seed, SimStats};
use reqwest::StatusCode;
use serde_json::json;

use super::{Sim, body, config, gid, patch_op, uid};

#[tokio::test]
async fn stats_count_by_method_kind_status_and_client_and_summarise_state() {
    let s = Sim::start(config().with_seed(Seed::generate(4, 2))).await;
    let t = s.primary().await;
    s.deactivate(&t, &uid(1)).await;
    s.patch(
        &t,
        &format!("groups/{}", gid(1)),
        &patch_op(json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", uid(1)) }])),
    )
    .await;
    s.get(&t, "users/missing").await;
    s.get("bad-token", "users").await;

    let r = s.http.get(s.url("/_sim/stats")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let over_http: SimStats = r.json().await.unwrap();
    let in_process = s.sim.stats();
    assert_eq!(over_http, in_process, "same data both ways");

    assert_eq!(in_process.requests, 5, "token + 4 SCIM; /_sim not counted");
    assert_eq!(in_process.user_patches(), 1);
    assert_eq!(in_process.group_patches(), 1);
    assert_eq!(in_process.count(ResourceKind::Token, "POST"), 1);
    assert_eq!(in_process.count_status(ResourceKind::User, "GET", 404), 1);
    assert_eq!(in_process.count_status(ResourceKind::Users, "GET", 401), 1);
    assert_eq!(in_process.by_method["PATCH"], 2);
    assert_eq!(in_process.by_status[&200], 3);
    assert_eq!(in_process.grants("primary"), 1);
    assert_eq!(in_process.by_client["primary"].requests, 3);
    assert_eq!(in_process.state.users, 4);
    assert_eq!(in_process.state.active_users, 3);
    assert_eq!(in_process.state.inactive_users, 1);
    assert_eq!(in_process.state.groups, 2);
    // 4 users, one in two groups (user 4), minus the removal.
    assert_eq!(in_process.state.memberships, 4);

    let raw: serde_json::Value = body(s.http.get(s.url("/_sim/stats")).send().await.unwrap()).await;
    assert_eq!(raw["by_kind"]["user"]["by_method"]["PATCH"], 1);
    assert_eq!(raw["token_grants"]["primary"], 1);
}

#[tokio::test]
async fn reset_restores_the_seed_and_zeroes_counters_but_keeps_tokens() {
    let s = Sim::start(config().with_seed(Seed::generate(2, 1))).await;
    let t = s.primary().await;
    s.deactivate(&t, &uid(1)).await;
    assert!(!s.sim.user(&uid(1)).unwrap().active);
    let r = s.http.post(s.url("/_sim/reset")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.sim.user(&uid(1)).unwrap().active);
    assert_eq!(s.sim.stats().requests, 0);
    assert_eq!(s.get(&t, "users").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn deny_at_run_time_then_allow() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    s.http
        .post(s.url(&format!("/_sim/deny/{}", uid(1))))
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.deactivate(&t, &uid(1)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert!(s.sim.allow(&uid(1)));
    assert_eq!(s.deactivate(&t, &uid(1)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn discovery_resources_describe_the_service() {
    let s = Sim::start(config()).await;
    let t = s.primary().await;
    let spc = body(s.get(&t, "serviceproviderconfig").await).await;
    assert_eq!(spc["patch"]["supported"], true);
    assert_eq!(spc["etag"]["supported"], true);
    assert_eq!(spc["bulk"]["supported"], false);
    assert_eq!(spc["authenticationSchemes"][0]["type"], "oauthbearertoken");
    let schemas = body(s.get(&t, "schemas").await).await;
    assert_eq!(schemas["totalResults"], 2);
    let user_schema = body(
        s.get(&t, "schemas/urn:ietf:params:scim:schemas:core:2.0:User")
            .await,
    )
    .await;
    let groups_attr = user_schema["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "groups")
        .unwrap()
        .clone();
    assert_eq!(groups_attr["mutability"], "readOnly");
    let types = body(s.get(&t, "resourcetypes").await).await;
    assert_eq!(types["Resources"][0]["endpoint"], "/users");
    assert_eq!(
        body(s.get(&t, "resourcetypes/Group").await).await["endpoint"],
        "/groups"
    );
    assert_eq!(
        s.get(&t, "resourcetypes/Nope").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.http.get(s.scim("schemas")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "discovery needs a token too"
    );
}
