//! The engine against the project's Genesys Cloud simulator, for what only
//! Genesys does: OAuth client credentials, lowercase resources, inactive users
//! hidden from lists, 403 for protected users, 429 with every `Retry-After`
//! shape, token expiry and revocation, and its PATCH answer modes. Each test
//! starts its own simulator on port 0 and reads its statistics and directory to
//! check what was sent and what changed.

use std::num::NonZeroU32;
use std::time::Duration;

use deprovision::config::{OAuthClient, ScimTarget};
use deprovision::domain::{Credential, ExternalId, Outcome, ScimUserId};
use deprovision::engine::{Deprovision, Engine, EngineOptions, Report, Request};
use deprovision::limit::{Adaptation, RateLimiter};
use deprovision::scim::{ClientOptions, ScimClient};
use deprovision::sim::{
    GroupRemoveForm, PatchReturns, ResourceKind, RetryAfterShape, RunningSim, Seed, SeedGroupRef,
    SeedUser, SimConfig, SimStats,
};
use secrecy::SecretString;

const PRIMARY: (&str, &str) = ("primary", "primary-secret");
const ELEVATED: (&str, &str) = ("elevated", "elevated-secret");

fn seed_user(id: &str, external_id: &str, active: bool, groups: &[&str]) -> SeedUser {
    SeedUser {
        id: id.to_owned(),
        user_name: format!("{id}@example.com"),
        external_id: Some(external_id.to_owned()),
        display_name: None,
        active,
        groups: groups
            .iter()
            .map(|g| SeedGroupRef::Name((*g).to_owned()))
            .collect(),
        roles: vec!["employee".to_owned(), "agent".to_owned()],
    }
}

fn config(users: Vec<SeedUser>) -> SimConfig {
    SimConfig::default()
        .with_seed(Seed {
            users,
            groups: Vec::new(),
        })
        .with_client(PRIMARY.0, PRIMARY.1)
        .with_elevated_client(ELEVATED.0, ELEVATED.1)
}

async fn start(config: SimConfig) -> RunningSim {
    RunningSim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

fn oauth((id, secret): (&str, &str)) -> OAuthClient {
    OAuthClient {
        id: id.to_owned(),
        secret: SecretString::from(secret.to_owned()),
    }
}

/// Engine settings a test can vary.
struct Setup {
    elevated: bool,
    options: ClientOptions,
    server_window: Duration,
    remove_roles: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            elevated: true,
            options: ClientOptions {
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                ..ClientOptions::default()
            },
            server_window: Duration::from_secs(60),
            remove_roles: false,
        }
    }
}

fn engine_with(sim: &RunningSim, setup: Setup) -> Engine {
    let target = ScimTarget::Genesys {
        api_base: sim.base_url(),
        login_base: sim.base_url(),
        primary: oauth(PRIMARY),
        elevated: setup.elevated.then(|| oauth(ELEVATED)),
    };
    let limiter = RateLimiter::adaptive(
        NonZeroU32::new(60_000).unwrap(),
        Adaptation {
            server_window: setup.server_window,
            ..Adaptation::default()
        },
    );
    let client = ScimClient::new(&target, limiter, setup.options).unwrap();
    Engine::new(
        client,
        EngineOptions {
            remove_roles: setup.remove_roles,
        },
    )
}

fn engine(sim: &RunningSim) -> Engine {
    engine_with(sim, Setup::default())
}

fn request(external_id: &str, user_id: Option<&str>) -> Request {
    Request {
        external_id: ExternalId::parse(external_id).unwrap(),
        user_id: user_id.map(|u| ScimUserId::parse(u).unwrap()),
        dry_run: false,
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
    }
}

fn patches(stats: &SimStats, kind: ResourceKind) -> u64 {
    stats
        .by_kind
        .get(&kind)
        .and_then(|k| k.by_method.get("PATCH"))
        .copied()
        .unwrap_or(0)
}

fn client_status(stats: &SimStats, client: &str, status: u16) -> u64 {
    stats
        .by_client
        .get(client)
        .and_then(|c| c.by_status.get(&status))
        .copied()
        .unwrap_or(0)
}

fn grants(stats: &SimStats, client: &str) -> u64 {
    stats.token_grants.get(client).copied().unwrap_or(0)
}

fn assert_gone(sim: &RunningSim, id: &str) {
    let u = sim.user(id).expect("user exists");
    assert!(!u.active, "{id} is still active");
    assert!(u.groups.is_empty(), "{id} is still in {:?}", u.groups);
}

fn user_id(report: &Report) -> Option<&str> {
    report.user_id.as_ref().map(ScimUserId::as_str)
}

#[tokio::test]
async fn deactivates_and_strips_groups_whether_patch_answers_200_or_204() {
    for (mode, status) in [
        (PatchReturns::Ok200, 200),
        (PatchReturns::NoContent204, 204),
    ] {
        let mut cfg = config(vec![
            seed_user("u-1", "E1", true, &["Sales", "Support"]),
            seed_user("u-2", "E2", true, &["Sales"]),
        ]);
        cfg.patch_returns = mode;
        let sim = start(cfg).await;

        let report = engine(&sim).deprovision(&request("E1", Some("u-1"))).await;

        assert_eq!(report.outcome, Outcome::Deactivated, "{mode:?}: {report:?}");
        assert_eq!(report.credential, Some(Credential::Primary));
        assert_eq!(report.status_code, Some(status), "{mode:?}");
        assert_eq!(report.groups_removed.len(), 2, "{mode:?}");
        assert_eq!(
            report.correlation_ids.len() as u32,
            report.requests,
            "every response's ININ-Correlation-Id is kept"
        );
        assert_gone(&sim, "u-1");
        let other = sim.user("u-2").unwrap();
        assert!(other.active && other.groups.len() == 1, "{other:?}");
        let stats = sim.stats();
        assert_eq!(patches(&stats, ResourceKind::User), 1);
        assert_eq!(grants(&stats, PRIMARY.0), 1);
        assert_eq!(grants(&stats, ELEVATED.0), 0);
    }
}

#[tokio::test]
async fn an_inactive_user_hidden_from_lists_is_found_and_ungrouped() {
    let sim = start(config(vec![seed_user("u-1", "E1", false, &["Leftover"])])).await;
    let groups = sim.user("u-1").unwrap().groups;
    assert_eq!(groups.len(), 1);

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::AlreadyInactive, "{report:?}");
    let removed: Vec<String> = report.groups_removed.iter().map(|g| g.id.clone()).collect();
    assert_eq!(removed, groups);
    assert_gone(&sim, "u-1");
    assert_eq!(
        patches(&sim.stats(), ResourceKind::User),
        0,
        "an inactive user needs no user PATCH"
    );
}

#[tokio::test]
async fn a_403_switches_this_termination_to_the_elevated_credential_once() {
    let sim = start(
        config(vec![seed_user("u-1", "E1", true, &["Sales", "Admins"])])
            .with_requires_elevated("u-1"),
    )
    .await;

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_eq!(report.credential, Some(Credential::Elevated));
    assert_gone(&sim, "u-1");
    let stats = sim.stats();
    assert_eq!(
        client_status(&stats, PRIMARY.0, 403),
        1,
        "one 403, then elevated"
    );
    assert_eq!(grants(&stats, ELEVATED.0), 1);
    assert_eq!(client_status(&stats, ELEVATED.0, 403), 0);
}

#[tokio::test]
async fn a_403_from_both_credentials_is_forbidden_after_one_escalation() {
    let sim =
        start(config(vec![seed_user("u-1", "E1", true, &["Sales"])]).with_denied("u-1")).await;

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Forbidden, "{report:?}");
    assert_eq!(report.status_code, Some(403));
    let stats = sim.stats();
    assert_eq!(
        patches(&stats, ResourceKind::User),
        2,
        "primary once, elevated once"
    );
    assert_eq!(client_status(&stats, PRIMARY.0, 403), 1);
    assert_eq!(client_status(&stats, ELEVATED.0, 403), 1);
    assert_eq!(
        patches(&stats, ResourceKind::Group),
        0,
        "nothing after forbidden"
    );
    assert!(sim.user("u-1").unwrap().active);
}

#[tokio::test]
async fn without_an_elevated_client_a_403_is_forbidden() {
    let sim =
        start(config(vec![seed_user("u-1", "E1", true, &[])]).with_requires_elevated("u-1")).await;
    let e = engine_with(
        &sim,
        Setup {
            elevated: false,
            ..Setup::default()
        },
    );

    let report = e.deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Forbidden, "{report:?}");
    assert_eq!(report.credential, Some(Credential::Primary));
    assert_eq!(patches(&sim.stats(), ResourceKind::User), 1);
}

/// Spends the primary client's rate-limit window with requests of its own, so
/// the engine's next request is answered 429.
async fn exhaust_window(sim: &RunningSim, allowed: u32) {
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(sim.base_url().join("oauth/token").unwrap())
        .basic_auth(PRIMARY.0, Some(PRIMARY.1))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let url = sim.base_url().join("api/v2/scim/v2/users").unwrap();
    for _ in 0..allowed {
        let status = http
            .get(url.clone())
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn a_429_is_waited_out_whatever_shape_its_retry_after_has() {
    for shape in [
        RetryAfterShape::Seconds,
        RetryAfterShape::HttpDate,
        RetryAfterShape::PastDate,
        RetryAfterShape::Missing,
        RetryAfterShape::Garbage,
    ] {
        let mut cfg = config(vec![seed_user("u-1", "E1", true, &["Sales"])])
            .with_rate_limit(3, Duration::from_secs(2));
        cfg.retry_after = shape;
        let sim = start(cfg).await;
        exhaust_window(&sim, 3).await;
        let e = engine_with(
            &sim,
            Setup {
                server_window: Duration::from_secs(2),
                ..Setup::default()
            },
        );

        let report = e.deprovision(&request("E1", None)).await;

        assert_eq!(
            report.outcome,
            Outcome::Deactivated,
            "{shape:?}: {report:?}"
        );
        assert_gone(&sim, "u-1");
        let stats = sim.stats();
        assert!(stats.rate_limited >= 1, "{shape:?}: no 429 was served");
        assert_eq!(grants(&stats, ELEVATED.0), 0, "{shape:?}: a 429 escalated");
        assert!(
            e.client().limiter().current_per_minute() < 60_000,
            "{shape:?}: the shared limiter did not slow down"
        );
    }
}

#[tokio::test]
async fn exhausted_429_retries_ask_for_a_retry_and_never_use_the_elevated_credential() {
    let sim = start(
        config(vec![seed_user("u-1", "E1", true, &[])])
            .with_rate_limit(1, Duration::from_secs(120)),
    )
    .await;
    exhaust_window(&sim, 1).await;
    let mut req = request("E1", None);
    req.deadline = tokio::time::Instant::now() + Duration::from_secs(5);

    let report = engine(&sim).deprovision(&req).await;

    assert_eq!(report.outcome, Outcome::Retrying, "{report:?}");
    assert_eq!(report.status_code, Some(429));
    let wait = report.retry_after.expect("the server's wait is passed on");
    assert!(wait > Duration::from_secs(5), "{wait:?}");
    let stats = sim.stats();
    assert_eq!(grants(&stats, ELEVATED.0), 0);
    assert!(!stats.by_client.contains_key(ELEVATED.0));
    assert!(sim.user("u-1").unwrap().active);
}

#[tokio::test]
async fn concurrent_workers_share_one_budget_under_429s() {
    let users: Vec<SeedUser> = (0..6)
        .map(|i| seed_user(&format!("u-{i}"), &format!("E{i}"), true, &["Sales"]))
        .collect();
    let sim = start(config(users).with_rate_limit(4, Duration::from_secs(1))).await;
    let e = engine_with(
        &sim,
        Setup {
            server_window: Duration::from_secs(1),
            ..Setup::default()
        },
    );

    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { e.deprovision(&request(&format!("E{i}"), None)).await })
        })
        .collect();
    for t in tasks {
        let report = t.await.unwrap();
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    }
    for i in 0..6 {
        assert_gone(&sim, &format!("u-{i}"));
    }
    // The server announced 4 a second: every worker now paces at that budget.
    assert!(
        e.client().limiter().current_per_minute() <= 240,
        "limiter at {} a minute",
        e.client().limiter().current_per_minute()
    );
}

#[tokio::test]
async fn fifty_concurrent_terminations_across_a_token_expiry_make_one_token_request() {
    let users: Vec<SeedUser> = (0..51)
        .map(|i| seed_user(&format!("u-{i}"), &format!("E{i}"), true, &["Sales"]))
        .collect();
    let mut cfg = config(users);
    cfg.token_lifetime = Duration::from_secs(4);
    let sim = start(cfg).await;
    let e = engine(&sim);

    let first = e.deprovision(&request("E0", None)).await;
    assert_eq!(first.outcome, Outcome::Deactivated, "{first:?}");
    assert_eq!(grants(&sim.stats(), PRIMARY.0), 1);
    // Past the token's useful life (its lifetime less a tenth).
    tokio::time::sleep(Duration::from_millis(3700)).await;

    let tasks: Vec<_> = (1..51)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { e.deprovision(&request(&format!("E{i}"), None)).await })
        })
        .collect();
    for t in tasks {
        let report = t.await.unwrap();
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    }
    let stats = sim.stats();
    assert_eq!(grants(&stats, PRIMARY.0), 2, "one token request for the 50");
    assert_eq!(
        stats.by_status.get(&401),
        None,
        "no request used an expired token"
    );
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_for_all_workers() {
    let users: Vec<SeedUser> = (0..11)
        .map(|i| seed_user(&format!("u-{i}"), &format!("E{i}"), true, &[]))
        .collect();
    let sim = start(config(users)).await;
    let e = engine(&sim);
    assert_eq!(
        e.deprovision(&request("E0", None)).await.outcome,
        Outcome::Deactivated
    );
    assert_eq!(sim.revoke_tokens(), 1);

    let tasks: Vec<_> = (1..11)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { e.deprovision(&request(&format!("E{i}"), None)).await })
        })
        .collect();
    for t in tasks {
        let report = t.await.unwrap();
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    }
    let stats = sim.stats();
    assert!(
        client_status_any(&stats, 401) >= 1,
        "the revoked token was not used"
    );
    assert_eq!(grants(&stats, PRIMARY.0), 2, "one replacement token");
}

fn client_status_any(stats: &SimStats, status: u16) -> u64 {
    stats.by_status.get(&status).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_token_rejected_twice_is_a_permanent_failure() {
    let mut cfg = config(vec![seed_user("u-1", "E1", true, &[])]);
    // Tokens that are expired when issued: every one is refused.
    cfg.token_lifetime = Duration::ZERO;
    let sim = start(cfg).await;

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert_eq!(report.status_code, Some(401));
    assert_eq!(report.requests, 2, "one replay, no loop");
    assert_eq!(grants(&sim.stats(), PRIMARY.0), 2);
}

#[tokio::test]
async fn awkward_external_ids_are_found_exactly() {
    let awkward = [
        "quo\"te",
        "back\\slash",
        "two words",
        "plus+sign",
        "Jürgen-Øre",
        "amp&er=sand",
    ];
    let mut users: Vec<SeedUser> = awkward
        .iter()
        .enumerate()
        .map(|(i, ext)| seed_user(&format!("u-{i}"), ext, true, &["Sales"]))
        .collect();
    users.push(seed_user("decoy-1", "plus sign", true, &["Sales"]));
    users.push(seed_user("decoy-2", "backslash", true, &["Sales"]));
    users.push(seed_user("decoy-3", "jürgen-øre", true, &["Sales"]));
    let sim = start(config(users)).await;
    let e = engine(&sim);

    for (i, ext) in awkward.iter().enumerate() {
        let report = e.deprovision(&request(ext, None)).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{ext:?}: {report:?}");
        let want = format!("u-{i}");
        assert_eq!(user_id(&report), Some(want.as_str()), "{ext:?}");
    }
    for decoy in ["decoy-1", "decoy-2", "decoy-3"] {
        assert!(sim.user(decoy).unwrap().active, "{decoy} was deactivated");
    }
}

#[tokio::test]
async fn an_active_and_an_inactive_user_sharing_an_external_id_are_ambiguous() {
    let sim = start(config(vec![
        seed_user("u-1", "E1", true, &["Sales"]),
        seed_user("u-2", "E1", false, &["Sales"]),
    ]))
    .await;

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Ambiguous, "{report:?}");
    let stats = sim.stats();
    assert_eq!(patches(&stats, ResourceKind::User), 0);
    assert_eq!(patches(&stats, ResourceKind::Group), 0);
    assert!(sim.user("u-1").unwrap().active);
}

#[tokio::test]
async fn a_user_id_whose_external_id_differs_is_an_identity_mismatch() {
    let sim = start(config(vec![
        seed_user("u-1", "E1", true, &["Sales"]),
        seed_user("u-2", "E2", true, &["Sales"]),
    ]))
    .await;

    let report = engine(&sim).deprovision(&request("E1", Some("u-2"))).await;

    assert_eq!(report.outcome, Outcome::IdentityMismatch, "{report:?}");
    let stats = sim.stats();
    assert_eq!(patches(&stats, ResourceKind::User), 0);
    assert_eq!(patches(&stats, ResourceKind::Group), 0);
    assert!(sim.user("u-1").unwrap().active && sim.user("u-2").unwrap().active);
}

#[tokio::test]
async fn a_200_that_leaves_the_user_active_is_not_success() {
    for mode in [PatchReturns::Ok200, PatchReturns::NoContent204] {
        let mut cfg = config(vec![seed_user("u-1", "E1", true, &[])]);
        cfg.ignore_active_patch = true;
        cfg.patch_returns = mode;
        let sim = start(cfg).await;

        let report = engine(&sim).deprovision(&request("E1", None)).await;

        assert_eq!(report.outcome, Outcome::Failed, "{mode:?}: {report:?}");
        assert!(
            report.detail.as_deref().unwrap().contains("still active"),
            "{report:?}"
        );
    }
}

#[tokio::test]
async fn a_dry_run_sends_no_patch() {
    let sim = start(config(vec![seed_user(
        "u-1",
        "E1",
        true,
        &["Sales", "Support"],
    )]))
    .await;
    let mut req = request("E1", None);
    req.dry_run = true;

    let report = engine_with(
        &sim,
        Setup {
            remove_roles: true,
            ..Setup::default()
        },
    )
    .deprovision(&req)
    .await;

    assert_eq!(report.outcome, Outcome::DryRun, "{report:?}");
    assert_eq!(report.groups_removed.len(), 2);
    assert_eq!(report.roles_removed, vec!["employee", "agent"]);
    let stats = sim.stats();
    assert_eq!(stats.by_method.get("PATCH"), None, "{stats:?}");
    let u = sim.user("u-1").unwrap();
    assert!(u.active && u.groups.len() == 2);
}

#[tokio::test]
async fn member_removal_falls_back_to_the_value_array_form_and_remembers_it() {
    let mut cfg = config(vec![seed_user(
        "u-1",
        "E1",
        true,
        &["Sales", "Support", "Ops"],
    )]);
    cfg.group_remove_form = GroupRemoveForm::ValueArray;
    let sim = start(cfg).await;

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_gone(&sim, "u-1");
    let group = &sim.stats().by_kind[&ResourceKind::Group];
    assert_eq!(
        group.by_method_status.get("PATCH 400"),
        Some(&1),
        "{group:?}"
    );
    assert_eq!(
        group.by_method_status.get("PATCH 200"),
        Some(&3),
        "{group:?}"
    );
}

#[tokio::test]
async fn groups_left_out_of_the_user_are_found_through_the_groups_filter() {
    let mut cfg = config(vec![seed_user("u-1", "E1", true, &["Sales", "Support"])]);
    cfg.omit_user_groups = true;
    let sim = start(cfg).await;

    let report = engine(&sim).deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_eq!(report.groups_removed.len(), 2);
    assert_gone(&sim, "u-1");
}

#[tokio::test]
async fn roles_go_in_the_same_patch_as_active() {
    let sim = start(config(vec![seed_user("u-1", "E1", true, &[])])).await;
    let e = engine_with(
        &sim,
        Setup {
            remove_roles: true,
            ..Setup::default()
        },
    );

    let report = e.deprovision(&request("E1", None)).await;

    assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
    assert_eq!(report.roles_removed, vec!["employee", "agent"]);
    let u = sim.user("u-1").unwrap();
    assert!(!u.active && u.roles.is_empty(), "{u:?}");
    assert_eq!(patches(&sim.stats(), ResourceKind::User), 1);
}

#[tokio::test]
async fn injected_server_errors_are_retried_with_backoff() {
    let users: Vec<SeedUser> = (0..5)
        .map(|i| seed_user(&format!("u-{i}"), &format!("E{i}"), true, &["Sales"]))
        .collect();
    let mut cfg = config(users);
    cfg.error_rate = 0.3;
    let sim = start(cfg).await;
    let e = engine_with(
        &sim,
        Setup {
            options: ClientOptions {
                transient_attempts: 15,
                min_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(50),
                ..ClientOptions::default()
            },
            ..Setup::default()
        },
    );

    for i in 0..5 {
        let report = e.deprovision(&request(&format!("E{i}"), None)).await;
        assert_eq!(report.outcome, Outcome::Deactivated, "{report:?}");
        assert_gone(&sim, &format!("u-{i}"));
    }
    assert!(sim.stats().injected_errors > 0);
}

#[tokio::test]
async fn a_server_too_slow_for_the_deadline_asks_for_a_retry() {
    let mut cfg = config(vec![seed_user("u-1", "E1", true, &[])]);
    cfg.latency = Duration::from_millis(1500);
    let sim = start(cfg).await;
    let e = engine_with(
        &sim,
        Setup {
            options: ClientOptions {
                timeout: Duration::from_millis(200),
                transient_attempts: 2,
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                ..ClientOptions::default()
            },
            ..Setup::default()
        },
    );
    let mut req = request("E1", None);
    req.deadline = tokio::time::Instant::now() + Duration::from_secs(3);

    let report = e.deprovision(&req).await;

    assert_eq!(report.outcome, Outcome::Retrying, "{report:?}");
    let detail = report.detail.unwrap_or_default();
    assert!(
        detail.contains("timed out") || detail.contains("deadline"),
        "{detail}"
    );
    assert!(sim.user("u-1").unwrap().active);
}

/// The `deprovision` binary, configured for `sim` through the environment, with
/// its audit in `audit_db` (a SQLite file).
fn cli_with_audit(sim: &RunningSim, audit_db: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovision"));
    cmd.env_clear()
        .env("DATABASE_URL", format!("sqlite://{}", audit_db.display()))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GENESYS_API_URL", sim.base_url().as_str())
        .env("PRIMARY_CLIENT_ID", PRIMARY.0)
        .env("PRIMARY_CLIENT_SECRET", PRIMARY.1)
        .env("ELEVATED_CLIENT_ID", ELEVATED.0)
        .env("ELEVATED_CLIENT_SECRET", ELEVATED.1)
        .env("RUST_LOG", "warn")
        .current_dir(std::env::temp_dir());
    cmd
}

/// [`cli_with_audit`] with a throw-away audit database.
fn cli(sim: &RunningSim) -> tokio::process::Command {
    let db = std::env::temp_dir().join(format!("deprovision-engine-{}.db", uuid::Uuid::new_v4()));
    cli_with_audit(sim, &db)
}

#[tokio::test]
async fn a_user_id_with_a_slash_or_dot_segment_is_refused_before_any_request() {
    let sim = start(config(vec![seed_user("u-1", "E1", true, &["Sales"])])).await;
    for bad in ["u-1/../u-2", "..", "a/b", "u-1%2F"] {
        let out = cli(&sim)
            .args(["user", "--external-id", "E1", "--user-id", bad])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("userId"), "{bad:?}: {stderr}");
    }
    let stats = sim.stats();
    assert_eq!(stats.requests, 0, "a request was sent: {stats:?}");
    assert!(sim.user("u-1").unwrap().active);
}

#[tokio::test]
async fn deprovision_user_prints_the_outcome_and_evidence() {
    let sim = start(config(vec![seed_user("u-1", "E1", true, &["Sales"])])).await;
    let group = sim.user("u-1").unwrap().groups.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let cli = |sim: &RunningSim| cli_with_audit(sim, &db);

    let dry = cli(&sim)
        .args(["user", "--external-id", "E1", "--dry-run"])
        .output()
        .await
        .unwrap();
    assert!(dry.status.success(), "{dry:?}");
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("outcome:         dry_run"), "{text}");
    assert!(text.contains(&group), "{text}");
    assert_eq!(sim.stats().by_method.get("PATCH"), None);

    let out = cli(&sim)
        .args(["user", "--external-id", "E1", "--format", "json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["outcome"], "deactivated", "{json}");
    assert_eq!(json["user_id"], "u-1");
    assert_eq!(json["credential"], "primary");
    assert_eq!(json["groups_removed"][0]["id"], group.as_str());
    assert!(!json["correlation_ids"].as_array().unwrap().is_empty());
    assert_gone(&sim, "u-1");

    let again = cli(&sim)
        .args(["user", "--user-id", "u-1"])
        .output()
        .await
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("already_inactive"));

    let missing = cli(&sim)
        .args(["user", "--external-id", "nobody"])
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stdout).contains("not_found"));

    // Every run left its audit row: the evidence shows the deactivation with its
    // credential and group, and the person who was not found.
    let store = deprovision::audit::AuditStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows = deprovision::report::evidence(&store, None, None)
        .await
        .unwrap();
    let e1 = rows
        .iter()
        .find(|r| r.external_id.as_deref() == Some("E1"))
        .unwrap_or_else(|| panic!("no evidence for E1: {rows:?}"));
    assert_eq!(e1.outcome, Outcome::Deactivated, "{e1:?}");
    assert_eq!(e1.credential, Some(Credential::Primary));
    assert_eq!(e1.groups_removed, vec![group.clone()]);
    assert!(e1.confirmed_deactivated_at.is_some());
    assert!(
        rows.iter()
            .any(|r| r.external_id.as_deref() == Some("nobody") && r.outcome == Outcome::NotFound),
        "{rows:?}"
    );
    assert!(store.verify().await.unwrap().first_broken().is_none());
}

#[tokio::test]
async fn secrets_never_reach_the_output() {
    let sim = start(config(vec![seed_user("u-1", "E1", true, &[])])).await;
    let out = cli(&sim)
        .env("PRIMARY_CLIENT_SECRET", "wrong-but-secret-value")
        .env("RUST_LOG", "debug")
        .args(["user", "--external-id", "E1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("invalid_client") || all.contains("refused"),
        "{all}"
    );
    assert!(!all.contains("wrong-but-secret-value"), "{all}");
    assert!(!all.contains("elevated-secret"), "{all}");
}
