//! Behaviour switches: requires-elevated, denied + allow, rate limit and the
//! Retry-After shapes, latency, error rate, ignore-active-patch.

use std::time::{Duration, Instant, SystemTime};

use deprovision::sim::{ResourceKind, RetryAfterShape, Seed, SimConfig};
use reqwest::StatusCode;
use serde_json::json;

use super::{Sim, assert_platform_error, body, config, gid, patch_op, uid};

fn remove_member(user: &str) -> serde_json::Value {
    patch_op(json!([{ "op": "remove", "path": format!("members[value eq \"{user}\"]") }]))
}

#[tokio::test]
async fn requires_elevated_refuses_the_primary_client_and_admits_the_elevated_one() {
    let s = Sim::start(
        config()
            .with_seed(Seed::generate(2, 1))
            .with_requires_elevated(uid(1)),
    )
    .await;
    let primary = s.primary().await;
    let elevated = s.elevated().await;

    let r = s.deactivate(&primary, &uid(1)).await;
    assert_eq!(
        assert_platform_error(r, 403).await,
        "missing.any.permissions"
    );
    let r = s
        .patch(
            &primary,
            &format!("groups/{}", gid(1)),
            &remove_member(&uid(1)),
        )
        .await;
    assert_eq!(
        assert_platform_error(r, 403).await,
        "missing.any.permissions"
    );
    assert!(s.sim.user(&uid(1)).unwrap().active);
    assert_eq!(s.sim.user(&uid(1)).unwrap().groups, [gid(1)]);

    // Others are unaffected for the primary client.
    assert_eq!(
        s.deactivate(&primary, &uid(2)).await.status(),
        StatusCode::OK
    );

    assert_eq!(
        s.deactivate(&elevated, &uid(1)).await.status(),
        StatusCode::OK
    );
    let r = s
        .patch(
            &elevated,
            &format!("groups/{}", gid(1)),
            &remove_member(&uid(1)),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.sim.user(&uid(1)).unwrap().groups.is_empty());

    let st = s.sim.stats();
    assert_eq!(st.client_count("primary", "PATCH", ResourceKind::User), 2);
    assert_eq!(st.client_count("elevated", "PATCH", ResourceKind::User), 1);
    assert_eq!(st.by_client["primary"].by_status.get(&403), Some(&2));
}

#[tokio::test]
async fn denied_users_are_refused_to_every_client_until_allowed() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 1)).with_denied(uid(1))).await;
    let primary = s.primary().await;
    let elevated = s.elevated().await;
    for t in [&primary, &elevated] {
        let r = s.deactivate(t, &uid(1)).await;
        assert_eq!(assert_platform_error(r, 403).await, "not.authorized");
        let r = s
            .patch(t, &format!("groups/{}", gid(1)), &remove_member(&uid(1)))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // Reads still work: the engine must be able to resolve the user.
    assert_eq!(
        s.get(&primary, &format!("users/{}", uid(1))).await.status(),
        StatusCode::OK
    );

    let r = s
        .http
        .post(s.url(&format!("/_sim/allow/{}", uid(1))))
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await["wasDenied"], true);
    assert_eq!(
        s.deactivate(&primary, &uid(1)).await.status(),
        StatusCode::OK
    );
    assert!(!s.sim.user(&uid(1)).unwrap().active);
}

fn limited(shape: RetryAfterShape) -> SimConfig {
    let mut cfg = config()
        .with_seed(Seed::generate(1, 0))
        .with_rate_limit(3, Duration::from_secs(60));
    cfg.retry_after = shape;
    cfg
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_headers_on_every_response() {
    let s = Sim::start(limited(RetryAfterShape::Seconds)).await;
    let t = s.primary().await;
    for n in 1..=3 {
        let r = s.get(&t, "users").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["inin-ratelimit-count"], n.to_string().as_str());
        assert_eq!(r.headers()["inin-ratelimit-allowed"], "3");
        let reset: u64 = r.headers()["inin-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset));
    }
    let r = s.get(&t, "users").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert!(r.headers().contains_key("inin-ratelimit-reset"));
    let v = body(r).await;
    assert_eq!(v["code"], "too.many.requests.retry.after");
    assert_eq!(v["status"], 429);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("[{retry}]"))
    );

    // The limit is per client: the elevated client still has its own budget.
    let e = s.elevated().await;
    assert_eq!(s.get(&e, "users").await.status(), StatusCode::OK);
    assert_eq!(s.sim.stats().rate_limited, 1);
}

#[tokio::test]
async fn rate_limit_window_resets() {
    let s = Sim::start(
        config()
            .with_seed(Seed::generate(1, 0))
            .with_rate_limit(1, Duration::from_millis(300)),
    )
    .await;
    let t = s.primary().await;
    assert_eq!(s.get(&t, "users").await.status(), StatusCode::OK);
    let r = s.get(&t, "users").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.headers()["retry-after"],
        "1",
        "rounded up to whole seconds"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.get(&t, "users").await.status(), StatusCode::OK);
}

async fn first_429(shape: RetryAfterShape) -> reqwest::Response {
    let s = Sim::start(limited(shape)).await;
    let t = s.primary().await;
    for _ in 0..3 {
        assert_eq!(s.get(&t, "users").await.status(), StatusCode::OK);
    }
    let r = s.get(&t, "users").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    r
}

#[tokio::test]
async fn retry_after_can_be_an_http_date_in_the_future() {
    let r = first_429(RetryAfterShape::HttpDate).await;
    let at = httpdate::parse_http_date(r.headers()["retry-after"].to_str().unwrap()).unwrap();
    assert!(at > SystemTime::now() - Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_can_be_a_date_in_the_past() {
    let r = first_429(RetryAfterShape::PastDate).await;
    let at = httpdate::parse_http_date(r.headers()["retry-after"].to_str().unwrap()).unwrap();
    assert!(at < SystemTime::now());
}

#[tokio::test]
async fn retry_after_can_be_missing_with_the_reset_header_still_sent() {
    let r = first_429(RetryAfterShape::Missing).await;
    assert!(!r.headers().contains_key("retry-after"));
    let reset: u64 = r.headers()["inin-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset >= 1);
    assert_eq!(body(r).await["code"], "too.many.requests");
}

#[tokio::test]
async fn retry_after_can_be_garbage() {
    let r = first_429(RetryAfterShape::Garbage).await;
    let v = r.headers()["retry-after"].to_str().unwrap();
    assert!(v.parse::<u64>().is_err());
    assert!(httpdate::parse_http_date(v).is_err());
}

#[tokio::test]
async fn error_rate_one_answers_every_scim_request_with_500_or_503() {
    let mut cfg = config().with_seed(Seed::generate(1, 0));
    cfg.error_rate = 1.0;
    let s = Sim::start(cfg).await;
    let t = s.primary().await; // the token endpoint is not affected
    for _ in 0..10 {
        let r = s.deactivate(&t, &uid(1)).await;
        let status = r.status().as_u16();
        assert!(status == 500 || status == 503, "{status}");
        let code = assert_platform_error(r, status).await;
        assert!(code == "internal.server.error" || code == "service.unavailable");
    }
    assert!(
        s.sim.user(&uid(1)).unwrap().active,
        "no injected error changes state"
    );
    assert_eq!(s.sim.stats().injected_errors, 10);
}

#[tokio::test]
async fn error_rate_zero_injects_nothing() {
    let s = Sim::start(config().with_seed(Seed::generate(1, 0))).await;
    let t = s.primary().await;
    for _ in 0..20 {
        assert_eq!(s.get(&t, "users").await.status(), StatusCode::OK);
    }
    assert_eq!(s.sim.stats().injected_errors, 0);
}

#[tokio::test]
async fn latency_delays_responses_by_at_least_half_the_mean() {
    // A lower bound only: the sleep guarantees it, so this cannot flake. The
    // upper bound of the jitter is a unit test of the draw.
    let mut cfg = config().with_seed(Seed::generate(1, 0));
    cfg.latency = Duration::from_millis(200);
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let started = Instant::now();
    assert_eq!(s.get(&t, "users").await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn ignore_active_patch_answers_200_but_leaves_the_user_active() {
    let mut cfg = config().with_seed(Seed::generate(1, 0));
    cfg.ignore_active_patch = true;
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let r = s.deactivate(&t, &uid(1)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        body(r).await["active"],
        true,
        "the response tells the truth"
    );
    let v = body(s.get(&t, &format!("users/{}", uid(1))).await).await;
    assert_eq!(v["active"], true);
}

#[tokio::test]
async fn not_found_body_can_be_a_scim_error() {
    let mut cfg = config();
    cfg.not_found_body = deprovision::sim::NotFoundBody::Scim;
    let s = Sim::start(cfg).await;
    let t = s.primary().await;
    let r = s.get(&t, "users/none").await;
    assert_eq!(super::assert_scim_error(r, 404).await, None);
}
