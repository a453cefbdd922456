//! `/api/v2/scim/v2/users` and `/users/{id}`: listing rules, filters, PatchOp
//! validation, versions, create/replace/delete, media types.

use deprovision::sim::Seed;
use reqwest::StatusCode;
use serde_json::json;

use super::{Sim, assert_platform_error, assert_scim_error, body, config, gid, ids, patch_op, uid};

#[tokio::test]
async fn inactive_users_are_hidden_from_lists_unless_the_filter_asks_for_them() {
    let s = Sim::start(config().with_seed(Seed::generate(3, 1))).await;
    let t = s.primary().await;
    assert_eq!(s.deactivate(&t, &uid(2)).await.status(), StatusCode::OK);

    let all = body(s.list_users(&t, None, &[]).await).await;
    assert_eq!(ids(&all), [uid(1), uid(3)]);
    assert_eq!(all["totalResults"], 2);

    let by_ext = body(
        s.list_users(&t, Some(r#"externalId eq "EMP00002""#), &[])
            .await,
    )
    .await;
    assert_eq!(by_ext["totalResults"], 0, "active-only lookup misses it");

    let inactive = body(
        s.list_users(
            &t,
            Some(r#"externalId eq "EMP00002" and active eq false"#),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(ids(&inactive), [uid(2)]);
    assert_eq!(inactive["Resources"][0]["active"], false);

    let all_inactive = body(s.list_users(&t, Some("active eq false"), &[]).await).await;
    assert_eq!(ids(&all_inactive), [uid(2)]);

    // A read by id still finds it.
    let one = body(s.get(&t, &format!("users/{}", uid(2))).await).await;
    assert_eq!(one["active"], false);
}

#[tokio::test]
async fn paging_is_one_based_and_count_zero_gives_only_the_total() {
    let s = Sim::start(config().with_seed(Seed::generate(30, 0))).await;
    let t = s.primary().await;
    let page = body(
        s.list_users(&t, None, &[("startIndex", "26"), ("count", "10")])
            .await,
    )
    .await;
    assert_eq!(page["totalResults"], 30);
    assert_eq!(page["startIndex"], 26);
    assert_eq!(page["itemsPerPage"], 5);
    assert_eq!(ids(&page).first(), Some(&uid(26)));
    let default = body(s.list_users(&t, None, &[]).await).await;
    assert_eq!(default["itemsPerPage"], 25, "count defaults to 25");
    let zero = body(s.list_users(&t, None, &[("count", "0")]).await).await;
    assert_eq!(zero["totalResults"], 30);
    assert_eq!(zero["Resources"], json!([]));
    let r = s.list_users(&t, None, &[("count", "ten")]).await;
    assert_eq!(
        assert_platform_error(r, 400).await,
        "invalid.query.param.value"
    );
}

#[tokio::test]
async fn pages_over_25_need_trimmed_attributes() {
    let s = Sim::start(config().with_seed(Seed::generate(40, 0))).await;
    let t = s.primary().await;
    let r = s.list_users(&t, None, &[("count", "40")]).await;
    assert_eq!(assert_platform_error(r, 429).await, "too.many.requests");
    let trimmed = body(
        s.list_users(
            &t,
            None,
            &[("count", "40"), ("attributes", "id,externalId")],
        )
        .await,
    )
    .await;
    assert_eq!(trimmed["itemsPerPage"], 40);
    let first = &trimmed["Resources"][0];
    assert!(first.get("roles").is_none(), "trimmed: {first}");
    assert_eq!(first["externalId"], "EMP00001");
    for always in ["id", "userName", "active", "meta"] {
        assert!(first.get(always).is_some(), "{always} is always returned");
    }
    let excluded = body(
        s.list_users(
            &t,
            None,
            &[("count", "30"), ("excludedAttributes", "roles")],
        )
        .await,
    )
    .await;
    assert_eq!(excluded["itemsPerPage"], 30);
    assert!(excluded["Resources"][0].get("roles").is_none());
    assert!(excluded["Resources"][0].get("externalId").is_some());
}

#[tokio::test]
async fn filters_on_id_username_and_external_id_match_exactly() {
    let s = Sim::start(config().with_seed(Seed::generate(5, 0))).await;
    let t = s.primary().await;
    let by_id = body(
        s.list_users(&t, Some(&format!(r#"id eq "{}""#, uid(3))), &[])
            .await,
    )
    .await;
    assert_eq!(ids(&by_id), [uid(3)]);
    // userName is not case-exact (RFC 7643 §4.1.1); externalId is.
    let by_name = body(
        s.list_users(&t, Some(r#"userName eq "USER00004@example.com""#), &[])
            .await,
    )
    .await;
    assert_eq!(ids(&by_name), [uid(4)]);
    let wrong_case = body(
        s.list_users(&t, Some(r#"externalId eq "emp00004""#), &[])
            .await,
    )
    .await;
    assert_eq!(wrong_case["totalResults"], 0);
    let both = body(
        s.list_users(
            &t,
            Some(r#"externalId eq "EMP00004" AND userName eq "user00005@example.com""#),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(both["totalResults"], 0, "and requires both");
}

#[tokio::test]
async fn unsupported_filters_are_400_invalid_filter() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    for bad in [
        r#"userName co "user""#,
        r#"userName eq "a" or userName eq "b""#,
        "externalId eq EMP00001",
        r#"nickName eq "x""#,
        r#"active eq "false""#,
        r#"emails[type eq "work"]"#,
        r#"externalId eq "unterminated"#,
    ] {
        let r = s.list_users(&t, Some(bad), &[]).await;
        assert_eq!(
            assert_scim_error(r, 400).await.as_deref(),
            Some("invalidFilter"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn duplicate_external_ids_from_a_seed_file_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.json");
    std::fs::write(
        &path,
        r#"{"users":[
            {"id":"u-1","userName":"a@example.com","externalId":"DUP","groups":["Sales"],"roles":["agent"]},
            {"id":"u-2","userName":"b@example.com","externalId":"DUP"},
            {"id":"u-3","userName":"c@example.com","externalId":"DUP","active":false}
        ]}"#,
    )
    .unwrap();
    let mut cfg = deprovision::sim::SimConfig::from_seed_file(&path).unwrap();
    cfg = cfg.with_client("primary", "primary-secret");
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let v = body(s.list_users(&t, Some(r#"externalId eq "DUP""#), &[]).await).await;
    assert_eq!(ids(&v), ["u-1", "u-2"]);
    let inactive = body(
        s.list_users(&t, Some(r#"externalId eq "DUP" and active eq false"#), &[])
            .await,
    )
    .await;
    assert_eq!(ids(&inactive), ["u-3"]);
    let u1 = body(s.get(&t, "users/u-1").await).await;
    assert_eq!(u1["roles"], json!([{ "value": "agent" }]));
    assert_eq!(u1["groups"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn patch_active_false_returns_200_with_the_user_and_a_new_version() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 1))).await;
    let t = s.primary().await;
    let before = s.get(&t, &format!("users/{}", uid(1))).await;
    let etag_before = before.headers()["etag"].to_str().unwrap().to_owned();
    let before = body(before).await;
    assert_eq!(
        before["meta"]["version"],
        json!(etag_before),
        "meta.version equals ETag"
    );
    let r = s.deactivate(&t, &uid(1)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag_after = r.headers()["etag"].to_str().unwrap().to_owned();
    let v = body(r).await;
    assert_eq!(v["active"], false);
    assert_ne!(etag_after, etag_before);
    assert_eq!(v["meta"]["version"], json!(etag_after));
    assert!(!s.sim.user(&uid(1)).unwrap().active);
    // Unchanged by a repeat: no new version.
    let again = s.deactivate(&t, &uid(1)).await;
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag_after);
}

#[tokio::test]
async fn patch_validation_refuses_malformed_operations_with_scim_errors() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let path = format!("users/{}", uid(1));
    let cases = [
        (
            json!({ "Operations": [{ "op": "replace", "path": "active", "value": false }] }),
            "invalidSyntax",
        ),
        (
            patch_op(json!([{ "op": "deactivate", "path": "active", "value": false }])),
            "invalidValue",
        ),
        (
            patch_op(json!([{ "op": "replace", "path": "active", "value": "false" }])),
            "invalidValue",
        ),
        (patch_op(json!([{ "op": "remove" }])), "noTarget"),
        (patch_op(json!([])), "invalidSyntax"),
        (
            patch_op(json!([{ "op": "remove", "path": "memberships" }])),
            "invalidPath",
        ),
        (
            patch_op(json!([{ "op": "add", "path": "groups", "value": [{ "value": "g" }] }])),
            "mutability",
        ),
    ];
    for (bad, scim_type) in cases {
        let r = s.patch(&t, &path, &bad).await;
        assert_eq!(
            assert_scim_error(r, 400).await.as_deref(),
            Some(scim_type),
            "{bad}"
        );
    }
    let u = s.sim.user(&uid(1)).unwrap();
    assert!(u.active, "nothing applied");
    assert_eq!(u.version, "\"1\"");
}

#[tokio::test]
async fn a_failing_operation_applies_none_of_the_patch() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let r = s
        .patch(
            &t,
            &format!("users/{}", uid(1)),
            &patch_op(json!([
                { "op": "replace", "path": "active", "value": false },
                { "op": "replace", "path": "nonsense", "value": 1 }
            ])),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(s.sim.user(&uid(1)).unwrap().active);
}

#[tokio::test]
async fn roles_are_writable_and_removable() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let path = format!("users/{}", uid(1));
    let r = s
        .patch(&t, &path, &patch_op(json!([
            { "op": "add", "path": "roles", "value": [{ "value": "supervisor" }, { "value": "admin" }] }
        ])))
        .await;
    assert_eq!(
        body(r).await["roles"],
        json!([{ "value": "employee" }, { "value": "supervisor" }, { "value": "admin" }])
    );
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(json!([
                { "op": "remove", "path": "roles[value eq \"admin\"]" }
            ])),
        )
        .await;
    assert_eq!(
        body(r).await["roles"],
        json!([{ "value": "employee" }, { "value": "supervisor" }])
    );
    let r = s
        .patch(
            &t,
            &path,
            &patch_op(json!([{ "op": "remove", "path": "roles" }])),
        )
        .await;
    assert_eq!(body(r).await["roles"], json!([]));
    assert!(s.sim.user(&uid(1)).unwrap().roles.is_empty());
}

#[tokio::test]
async fn pathless_replace_with_an_object_is_applied() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let r = s
        .patch(
            &t,
            &format!("users/{}", uid(1)),
            &patch_op(json!([{ "op": "Replace", "value": { "active": false, "title": "Gone" } }])),
        )
        .await;
    let v = body(r).await;
    assert_eq!(v["active"], false);
    assert_eq!(v["title"], "Gone");
}

#[tokio::test]
async fn user_groups_reflect_membership_held_on_groups() {
    let s = Sim::start(config().with_seed(Seed::generate(4, 2))).await;
    let t = s.primary().await;
    let u4 = body(s.get(&t, &format!("users/{}", uid(4))).await).await;
    let groups: Vec<&str> = u4["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["value"].as_str().unwrap())
        .collect();
    assert_eq!(groups, [gid(1), gid(2)]);
    let r = s
        .patch(
            &t,
            &format!("groups/{}", gid(2)),
            &patch_op(
                json!([{ "op": "remove", "path": format!("members[value eq \"{}\"]", uid(4)) }]),
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let u4 = body(s.get(&t, &format!("users/{}", uid(4))).await).await;
    assert_eq!(u4["groups"].as_array().unwrap().len(), 1);
    assert_eq!(u4["groups"][0]["value"], json!(gid(1)));
}

#[tokio::test]
async fn omit_user_groups_leaves_groups_out_of_users() {
    let mut cfg = config().with_seed(Seed::generate(1, 1));
    cfg.omit_user_groups = true;
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let u = body(s.get(&t, &format!("users/{}", uid(1))).await).await;
    assert!(u.get("groups").is_none(), "{u}");
    assert_eq!(
        s.sim.user(&uid(1)).unwrap().groups,
        [gid(1)],
        "membership still held"
    );
}

#[tokio::test]
async fn if_match_must_match_the_current_version() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let body_ = patch_op(json!([{ "op": "replace", "path": "active", "value": false }]));
    let send = |etag: &'static str| {
        s.http
            .patch(s.scim(&format!("users/{}", uid(1))))
            .bearer_auth(&t)
            .header("content-type", "application/scim+json")
            .header("if-match", etag)
            .body(body_.to_string())
            .send()
    };
    let r = send("\"7\"").await.unwrap();
    assert_eq!(assert_scim_error(r, 409).await, None);
    assert!(s.sim.user(&uid(1)).unwrap().active);
    let r = send("W/\"1\"").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!s.sim.user(&uid(1)).unwrap().active);
}

#[tokio::test]
async fn if_match_mismatch_shapes_are_switchable() {
    use deprovision::sim::VersionMismatch;
    for (mode, status, scim_type) in [
        (VersionMismatch::InvalidVers, 400, Some("invalidVers")),
        (VersionMismatch::Precondition, 412, None),
    ] {
        let mut cfg = config().with_seed(Seed::generate(1, 0));
        cfg.version_mismatch = mode;
        let s = Sim::start(cfg).await;
        let t = s.primary().await;
        let r = s
            .http
            .patch(s.scim(&format!("users/{}", uid(1))))
            .bearer_auth(&t)
            .header("content-type", "application/scim+json")
            .header("if-match", "\"99\"")
            .body(
                patch_op(json!([{ "op": "replace", "path": "active", "value": false }]))
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(assert_scim_error(r, status).await.as_deref(), scim_type);
    }
}

#[tokio::test]
async fn if_none_match_on_a_current_version_is_304() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let r = s
        .http
        .get(s.scim(&format!("users/{}", uid(1))))
        .bearer_auth(&t)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn patch_returns_204_when_switched() {
    let mut cfg = config().with_seed(Seed::generate(1, 1));
    cfg.patch_returns = deprovision::sim::PatchReturns::NoContent204;
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let r = s.deactivate(&t, &uid(1)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["etag"], "\"2\"");
    assert!(r.text().await.unwrap().is_empty());
    assert!(!s.sim.user(&uid(1)).unwrap().active);
    let r = s
        .patch(
            &t,
            &format!("groups/{}", gid(1)),
            &patch_op(json!([{ "op": "remove", "path": "members" }])),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn create_replace_and_soft_delete_users() {
    let s = Sim::start(config().with_seed(Seed::generate(0, 1))).await;
    let t = s.primary().await;
    let r = s
        .http
        .post(s.scim("users"))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(
            json!({ "userName": "new@example.com", "displayName": "New", "externalId": "N1",
                      "roles": [{ "value": "agent" }] })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created = body(r).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["active"], true);
    assert!(location.ends_with(&format!("/api/v2/scim/v2/users/{id}")));

    // userName is unique among live users.
    let r = s
        .http
        .post(s.scim("users"))
        .bearer_auth(&t)
        .header("content-type", "application/scim+json")
        .body(json!({ "userName": "NEW@example.com", "displayName": "Dup" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_scim_error(r, 409).await.as_deref(),
        Some("uniqueness")
    );

    // Add to the group, then replace the user.
    let r = s
        .patch(
            &t,
            &format!("groups/{}", gid(1)),
            &patch_op(json!([{ "op": "add", "path": "members", "value": [{ "value": id }] }])),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .http
        .put(s.scim(&format!("users/{id}")))
        .bearer_auth(&t)
        .header("content-type", "application/scim+json")
        .body(json!({ "userName": "new@example.com", "displayName": "Renamed", "active": false, "externalId": "N1" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = body(r).await;
    assert_eq!(v["displayName"], "Renamed");
    assert_eq!(v["active"], false);
    assert_eq!(v["roles"], json!([]), "PUT clears absent roles");

    let r = s
        .http
        .delete(s.scim(&format!("users/{id}")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.get(&t, &format!("users/{id}")).await;
    assert_eq!(assert_platform_error(r, 404).await, "not.found");
    assert!(s.sim.group(&gid(1)).unwrap().members.is_empty());
    let listed = body(
        s.list_users(&t, Some(r#"externalId eq "N1" and active eq false"#), &[])
            .await,
    )
    .await;
    assert_eq!(listed["totalResults"], 0, "deleted users are not listed");
    assert_eq!(s.sim.stats().state.deleted_users, 1);
}

#[tokio::test]
async fn request_media_types_are_checked_and_response_type_follows_accept() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let ops = patch_op(json!([{ "op": "replace", "path": "title", "value": "x" }])).to_string();
    let send = |ct: &'static str, accept: &'static str| {
        s.http
            .patch(s.scim(&format!("users/{}", uid(1))))
            .bearer_auth(&t)
            .header("content-type", ct)
            .header("accept", accept)
            .body(ops.clone())
            .send()
    };
    let r = send("application/json; charset=utf-8", "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = send("application/scim+json", "application/scim+json")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/scim+json");
    let r = send("text/plain", "*/*").await.unwrap();
    assert_eq!(
        assert_platform_error(r, 415).await,
        "unsupported.media.type"
    );
}

#[tokio::test]
async fn every_response_carries_a_correlation_id() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    let mut seen = std::collections::HashSet::new();
    for r in [
        s.get(&t, "users").await,
        s.get(&t, "users/missing").await,
        s.get("bad", "users").await,
        s.http.get(s.url("/nowhere")).send().await.unwrap(),
        s.http.get(s.url("/_sim/stats")).send().await.unwrap(),
        s.http.post(s.url("/oauth/token")).send().await.unwrap(),
    ] {
        let id = r.headers()["inin-correlation-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id} is a UUID");
        assert!(seen.insert(id), "ids are per response");
    }
}

#[tokio::test]
async fn from_records_seeds_one_active_user_per_manifest_person() {
    use deprovision::domain::{ExternalId, ScimUserId};
    let seed = Seed::from_records([
        (
            ExternalId::parse("HR-1").unwrap(),
            Some(ScimUserId::parse("given-id").unwrap()),
        ),
        (ExternalId::parse("HR-2").unwrap(), None),
    ]);
    let s = Sim::start(config().with_seed(seed)).await;
    let t = s.primary().await;
    let v = body(s.list_users(&t, Some(r#"externalId eq "HR-1""#), &[]).await).await;
    assert_eq!(ids(&v), ["given-id"]);
    let two = s.sim.users_by_external_id("HR-2");
    assert_eq!(two.len(), 1);
    assert!(two[0].active);
    assert!((1..=2).contains(&two[0].groups.len()));
}
