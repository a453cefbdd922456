//! `/api/v2/scim/v2/groups` and `/groups/{id}`: required filter, member
//! filters, both member removal forms and the switch between them.

use deprovision::sim::{GroupRemoveForm, Seed};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Sim, assert_platform_error, assert_scim_error, body, config, gid, ids, patch_op, uid};

fn members(group: &Value) -> Vec<String> {
    group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_owned())
        .collect()
}

async fn list_groups(s: &Sim, token: &str, filter: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(s.scim("groups")).bearer_auth(token);
    if let Some(f) = filter {
        req = req.query(&[("filter", f)]);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn listing_groups_requires_a_filter() {
    let s = Sim::start(config().with_seed(Seed::generate(2, 2))).await;
    let t = s.primary().await;
    let r = list_groups(&s, &t, None).await;
    assert_eq!(assert_platform_error(r, 400).await, "bad.request");
    let v = body(list_groups(&s, &t, Some(r#"displayName eq "group 2""#)).await).await;
    assert_eq!(ids(&v), [gid(2)]);
}

#[tokio::test]
async fn members_value_filter_finds_a_users_groups() {
    let s = Sim::start(config().with_seed(Seed::generate(4, 3))).await;
    let t = s.primary().await;
    // Generated user 4 is in groups 1 and 2 (every fourth user has two).
    let v =
        body(list_groups(&s, &t, Some(&format!(r#"members.value eq "{}""#, uid(4)))).await).await;
    assert_eq!(ids(&v), [gid(1), gid(2)]);
    let g = body(s.get(&t, &format!("groups/{}", gid(1))).await).await;
    assert!(members(&g).contains(&uid(4)));
    assert_eq!(g["members"][0]["type"], "User");
    let r = list_groups(&s, &t, Some(r#"members.display eq "x""#)).await;
    assert_eq!(
        assert_scim_error(r, 400).await.as_deref(),
        Some("invalidFilter")
    );
}

#[tokio::test]
async fn remove_by_member_filter_and_by_value_array_both_work_by_default() {
    let s = Sim::start(config().with_seed(Seed::generate(3, 1))).await;
    let t = s.primary().await;
    let path = format!("groups/{}", gid(1));
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(
                json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", uid(1)) }]),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(members(&body(r).await), [uid(2), uid(3)]);
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(
                json!([{ "op": "remove", "path": "members", "value": [{ "value": uid(2) }] }]),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(members(&body(r).await), [uid(3)]);
    // Removing a non-member succeeds and changes nothing.
    let version = s.sim.group(&gid(1)).unwrap().version;
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(json!([{ "op": "remove", "path": "members[value eq \"nobody\"]" }])),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.sim.group(&gid(1)).unwrap().version, version);
    assert_eq!(s.sim.stats().group_patches(), 3);
}

#[tokio::test]
async fn value_array_only_refuses_the_filter_form() {
    let mut cfg = config().with_seed(Seed::generate(2, 1));
    cfg.group_remove_form = GroupRemoveForm::ValueArray;
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let path = format!("groups/{}", gid(1));
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(
                json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", uid(1)) }]),
            ),
        )
        .await;
    assert_eq!(
        assert_scim_error(r, 400).await.as_deref(),
        Some("invalidPath")
    );
    assert_eq!(s.sim.group(&gid(1)).unwrap().members.len(), 2);
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(
                json!([{ "op": "remove", "path": "members", "value": [{ "value": uid(1) }] }]),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.sim.group(&gid(1)).unwrap().members, [uid(2)]);
}

#[tokio::test]
async fn filter_only_refuses_the_value_array_form() {
    let mut cfg = config().with_seed(Seed::generate(2, 1));
    cfg.group_remove_form = GroupRemoveForm::Filter;
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let path = format!("groups/{}", gid(1));
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(
                json!([{ "op": "remove", "path": "members", "value": [{ "value": uid(1) }] }]),
            ),
        )
        .await;
    assert_eq!(
        assert_scim_error(r, 400).await.as_deref(),
        Some("invalidValue")
    );
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(
                json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", uid(1)) }]),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.sim.group(&gid(1)).unwrap().members, [uid(2)]);
}

#[tokio::test]
async fn adding_members_requires_existing_users_and_display_name_is_read_only() {
    let s = Sim::start(config().with_seed(Seed::generate(2, 2))).await;
    let t = s.primary().await;
    let path = format!("groups/{}", gid(2));
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(json!([{ "op": "add", "path": "members", "value": [{ "value": uid(1) }] }])),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.sim.user(&uid(1)).unwrap().groups, [gid(1), gid(2)]);
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(json!([{ "op": "add", "path": "members", "value": [{ "value": "ghost" }] }])),
        )
        .await;
    assert_eq!(
        assert_scim_error(r, 400).await.as_deref(),
        Some("invalidValue")
    );
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(json!([{ "op": "replace", "path": "displayName", "value": "Renamed" }])),
        )
        .await;
    assert_eq!(
        assert_scim_error(r, 400).await.as_deref(),
        Some("mutability")
    );
}

#[tokio::test]
async fn unknown_group_is_404() {
    let s = Sim::start(config()).await;
    let t = s.primary().await;
    let r = s.get(&t, "groups/none").await;
    assert_eq!(assert_platform_error(r, 404).await, "not.found");
    let r = s
        .patch(
            &t,
            "groups/none",
            &patch_op(json!([{ "op": "remove", "path": "members" }])),
        )
        .await;
    assert_eq!(assert_platform_error(r, 404).await, "not.found");
}
