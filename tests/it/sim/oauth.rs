//! `POST /oauth/token` and token checking on SCIM calls.

use std::time::Duration;

use deprovision::sim::{ResourceKind, Seed};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Sim, assert_platform_error, body, config};

#[tokio::test]
async fn basic_auth_grant_returns_a_bearer_token_that_scim_accepts() {
    let s = Sim::start(config().with_seed(Seed::generate(2, 1))).await;
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .basic_auth("primary", Some("primary-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("inin-correlation-id"));
    let v = body(r).await;
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 86_400);
    let token = v["access_token"].as_str().unwrap();
    assert!(token.len() >= 32);
    assert_eq!(s.get(token, "users").await.status(), StatusCode::OK);
    assert_eq!(s.sim.stats().grants("primary"), 1);
}

#[tokio::test]
async fn client_secret_post_is_accepted_and_tokens_are_distinct() {
    let s = Sim::start(config()).await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let r = s
            .http
            .post(s.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "elevated"),
                ("client_secret", "elevated-secret"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        tokens.push(body(r).await["access_token"].as_str().unwrap().to_owned());
    }
    assert_ne!(tokens[0], tokens[1], "tokens are random, not derived");
    assert_eq!(s.sim.stats().grants("elevated"), 2);
    assert_eq!(s.sim.stats().grants("primary"), 0);
}

#[tokio::test]
async fn bad_clients_get_oauth_style_errors() {
    let s = Sim::start(config()).await;
    let post = |id: &'static str, secret: &'static str, grant: &'static str| {
        s.http
            .post(s.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", grant)])
            .send()
    };
    let r = post("primary", "wrong", "client_credentials")
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v = body(r).await;
    assert_eq!(v["error"], "invalid_client");
    assert!(v["error_description"].is_string());
    assert!(!v.to_string().contains("primary-secret"));

    let r = post("nobody", "x", "client_credentials").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = post("primary", "primary-secret", "password").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(r).await["error"], "unsupported_grant_type");

    let r = s
        .http
        .post(s.url("/oauth/token"))
        .basic_auth("primary", Some("primary-secret"))
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(r).await["error"], "invalid_request");

    let r = s
        .http
        .post(s.url("/oauth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body(r).await["error"], "invalid_client");

    let stats = s.sim.stats();
    assert_eq!(stats.token_grants.values().sum::<u64>(), 0);
    assert_eq!(stats.token_refusals.get("primary"), Some(&1));
}

#[tokio::test]
async fn scim_calls_without_or_with_a_bad_token_get_401_platform_bodies() {
    let s = Sim::start(config()).await;
    let r = s.http.get(s.scim("users")).send().await.unwrap();
    assert_eq!(
        assert_platform_error(r, 401).await,
        "authentication.required"
    );
    let r = s.get("not-a-token", "users").await;
    assert_eq!(assert_platform_error(r, 401).await, "bad.credentials");
    let r = s
        .http
        .get(s.scim("users"))
        .basic_auth("primary", Some("primary-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.sim.stats().count_status(ResourceKind::Users, "GET", 401),
        3
    );
}

#[tokio::test]
async fn expired_tokens_are_refused_and_expires_in_follows_the_lifetime() {
    let mut cfg = config();
    cfg.token_lifetime = Duration::ZERO;
    let s = Sim::start(cfg).await;
    let r = s
        .http
        .post(s.url("/oauth/token"))
        .basic_auth("primary", Some("primary-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let v: Value = body(r).await;
    assert_eq!(v["expires_in"], json!(0));
    let token = v["access_token"].as_str().unwrap();
    let r = s.get(token, "users").await;
    assert_eq!(assert_platform_error(r, 401).await, "bad.credentials");
}

#[tokio::test]
async fn revoking_tokens_makes_them_401_until_a_new_grant() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let old = s.primary().await;
    assert_eq!(s.get(&old, "users").await.status(), StatusCode::OK);
    let r = s
        .http
        .post(s.url("/_sim/revoke-tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["revoked"], 1);
    assert_eq!(
        s.get(&old, "users").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let new = s.primary().await;
    assert_eq!(s.get(&new, "users").await.status(), StatusCode::OK);
    assert_eq!(s.sim.stats().grants("primary"), 2);
}
