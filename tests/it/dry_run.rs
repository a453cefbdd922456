//! Dry runs everywhere, over real parts (the simulator, PostgreSQL, moto): `run
//! --dry-run` sends no mutating request, audits only `dry_run` rows, shows a
//! future-dated termination as scheduled, prints a plan document a reviewer can
//! approve (golden file), and does not stop a later real run; the real run's
//! summary names who was not deprovisioned and the rejected records; `dispatch
//! --dry-run` enqueues nothing; `user --dry-run` prints the plan; `serve
//! --dry-run` plans what it consumes.

use std::collections::BTreeMap;
use std::time::Duration;

use deprovision::audit::{AuditStore, StoredRow};
use deprovision::domain::Outcome;
use deprovision::sim::{
    ResourceKind, RunningSim, Seed, SeedGroup, SeedGroupRef, SeedUser, SimConfig,
};

use crate::audit::fresh_postgres;
use crate::pipeline::harness::{ELEVATED, PRIMARY, aws, bin, env_for, eventually, start_sim};

const LIMIT: Duration = Duration::from_secs(120);

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
        roles: vec!["employee".to_owned()],
    }
}

/// DR1 active in two groups; DR2 active in none; DR3 already inactive but
/// still in a group; DR5 twice (ambiguous); DR6 active, terminated in the
/// future. DR4 is in the manifest only (not found).
fn directory() -> SimConfig {
    SimConfig::default()
        .with_seed(Seed {
            users: vec![
                seed_user("u-1", "DR1", true, &["g-sales", "g-support"]),
                seed_user("u-2", "DR2", true, &[]),
                seed_user("u-3", "DR3", false, &["g-sales"]),
                seed_user("u-5a", "DR5", true, &[]),
                seed_user("u-5b", "DR5", true, &[]),
                seed_user("u-6", "DR6", true, &["g-support"]),
            ],
            groups: vec![
                SeedGroup {
                    id: "g-sales".into(),
                    display_name: "Sales".into(),
                    external_id: None,
                },
                SeedGroup {
                    id: "g-support".into(),
                    display_name: "Support".into(),
                    external_id: None,
                },
            ],
        })
        .with_client(PRIMARY.0, PRIMARY.1)
        .with_elevated_client(ELEVATED.0, ELEVATED.1)
}

/// A date a few weeks ahead (never more than any sane `MAX_FUTURE_DAYS`).
fn future_date() -> String {
    (chrono::Utc::now().date_naive() + chrono::Days::new(7))
        .format("%Y-%m-%d")
        .to_string()
}

/// The manifest: 8 records = 6 terminations + 1 rejected (line 7) + 1 duplicate.
fn manifest(future: &str) -> String {
    [
        r#"{"externalId": "DR1", "terminationDate": "2026-01-05"}"#.to_owned(),
        r#"{"externalId": "DR2", "userId": "u-2", "terminationDate": "2026-01-05"}"#.into(),
        r#"{"externalId": "DR3", "terminationDate": "2026-01-05"}"#.into(),
        r#"{"externalId": "DR4", "terminationDate": "2026-01-05"}"#.into(),
        r#"{"externalId": "DR5", "terminationDate": "2026-01-05"}"#.into(),
        format!(r#"{{"externalId": "DR6", "terminationDate": "{future}"}}"#),
        r#"{"externalId": "DR7", "terminationDate": "03/02/2026"}"#.into(),
        r#"{"externalId": "DR1", "terminationDate": "2026-01-05"}"#.into(),
    ]
    .join("\n")
        + "\n"
}

fn env_of(sim: &RunningSim, database_url: &str) -> Vec<(String, String)> {
    [
        ("GENESYS_API_URL", sim.base_url().to_string()),
        ("PRIMARY_CLIENT_ID", PRIMARY.0.into()),
        ("PRIMARY_CLIENT_SECRET", PRIMARY.1.into()),
        ("ELEVATED_CLIENT_ID", ELEVATED.0.into()),
        ("ELEVATED_CLIENT_SECRET", ELEVATED.1.into()),
        ("DATABASE_URL", database_url.into()),
        ("REMOVE_ROLES", "true".into()),
        ("HR_TIMEZONE", "UTC".into()),
        ("RATE_LIMIT_PER_MINUTE", "60000".into()),
        ("RUST_LOG", "warn".into()),
        // Each manifest here is most of the simulator's org; the breaker has its
        // own tests (tests/it/rails.rs).
        ("MAX_TERMINATIONS_SHARE", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs the binary; returns exit code and standard output.
async fn run(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(env.iter().cloned())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .expect("run deprovision");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Requests that could change anything: every method but GET on users and
/// groups (token requests are POSTs to `/oauth/token`, a different kind).
fn mutations(sim: &RunningSim) -> u64 {
    let stats = sim.stats();
    [
        ResourceKind::Users,
        ResourceKind::User,
        ResourceKind::Groups,
        ResourceKind::Group,
    ]
    .into_iter()
    .flat_map(|k| ["PATCH", "PUT", "POST", "DELETE"].map(|m| stats.count(k, m)))
    .sum()
}

/// (active, groups) of every seeded user.
fn snapshot(sim: &RunningSim) -> BTreeMap<String, (bool, Vec<String>)> {
    ["u-1", "u-2", "u-3", "u-5a", "u-5b", "u-6"]
        .into_iter()
        .map(|id| {
            let u = sim.user(id).expect("seeded");
            (id.to_owned(), (u.active, u.groups))
        })
        .collect()
}

async fn rows(store: &AuditStore) -> Vec<StoredRow> {
    store.termination_rows(None, None).await.expect("rows")
}

/// The plan with what changes between runs replaced by placeholders.
fn normalized(plan: &serde_json::Value, future: &str, path: &str, sim: &RunningSim) -> String {
    let mut plan = plan.clone();
    plan["generatedAt"] = "<generated at>".into();
    plan["settings"]["audit"] = "<audit database>".into();
    // The manifest holds a date relative to today, so its digest changes daily
    // (checked against the file above).
    plan["manifest"]["sha256"] = "<sha256 of the manifest>".into();
    let text = serde_json::to_string_pretty(&plan).expect("json");
    text.replace(path, "<manifest path>")
        .replace(sim.base_url().as_str(), "<simulator>/")
        .replace(&format!("{future}T00:00:00Z"), "<future date>")
}

#[tokio::test]
async fn run_dry_run_plans_everyone_changes_nothing_and_a_real_run_follows() {
    let db = fresh_postgres().await;
    let sim = start_sim(directory()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("terminations.ndjson");
    let future = future_date();
    std::fs::write(&path, manifest(&future)).expect("write manifest");
    let path_text = path.display().to_string();
    let env = env_of(&sim, &db.url);
    let before = snapshot(&sim);

    let (code, out) = run(&["run", &path_text, "--dry-run", "--format", "json"], &env).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        mutations(&sim),
        0,
        "a dry run sent a mutating request: {:?}",
        sim.stats()
    );
    assert_eq!(snapshot(&sim), before, "a dry run changed the directory");

    let plan: serde_json::Value = serde_json::from_str(&out).expect("plan JSON");
    assert_eq!(plan["kind"], "deprovision-plan");
    assert_eq!(plan["reconciled"], true);
    let bytes = std::fs::read(&path).expect("read manifest");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(
        plan["manifest"]["sha256"],
        sha.as_str(),
        "the digest of the file planned"
    );
    insta::assert_snapshot!(
        "run_dry_run_plan",
        normalized(&plan, &future, &path_text, &sim)
    );

    // The audit holds the plan, as dry_run rows only, in words.
    let planned = rows(&db.store).await;
    assert!(
        planned.iter().all(|r| r.entry.outcome == Outcome::DryRun),
        "{planned:?}"
    );
    let text_of = |id: &str| {
        planned
            .iter()
            .find(|r| r.entry.external_id.as_deref() == Some(id))
            .and_then(|r| r.entry.error_message.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        text_of("DR1"),
        "dry run: would deactivate user u-1; would remove it from 2 group(s): g-sales, g-support; would remove role(s): employee"
    );
    assert!(
        text_of("DR6").starts_with(&format!(
            "dry run: scheduled for {future}T00:00:00Z (not due); when due, would deactivate user u-6"
        )),
        "{}",
        text_of("DR6")
    );
    assert!(text_of("DR4").starts_with("dry run: would be not_found"));
    assert!(text_of("DR7").starts_with("dry run: would reject record 6 (line 7)"));

    // A later real run is not suppressed by the plan's rows.
    let (code, out) = run(&["run", &path_text], &env).await;
    assert_eq!(code, Some(1), "DR5 is ambiguous, so the run fails:\n{out}");
    assert!(!sim.user("u-1").expect("u-1").active);
    assert!(sim.user("u-1").expect("u-1").groups.is_empty());
    assert!(!sim.user("u-2").expect("u-2").active);
    assert!(sim.user("u-3").expect("u-3").groups.is_empty());
    assert!(sim.user("u-6").expect("u-6").active, "not before its date");
    assert!(out.contains("not deprovisioned (needs review):"), "{out}");
    for (id, outcome) in [
        ("DR4", "not_found"),
        ("DR5", "ambiguous"),
        ("DR6", "scheduled"),
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{out}"));
        assert!(line.contains(outcome), "{line}");
    }
    assert!(
        out.contains("no user, active or inactive, has externalId \"DR4\""),
        "reason in words, not Debug:\n{out}"
    );
    assert!(out.contains("rejected records:"), "{out}");
    assert!(
        out.contains("record 6 (line 7)  DR7") && out.contains("ambiguous date format"),
        "{out}"
    );
    assert!(!out.contains("ExternalId(\""), "{out}");
}

#[tokio::test]
async fn the_run_summary_lists_twenty_people_and_counts_the_rest() {
    let db = fresh_postgres().await;
    let sim = start_sim(directory()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("unknown.csv");
    let mut csv = String::from("externalId,terminationDate\n");
    for i in 1..=25 {
        csv.push_str(&format!("NOBODY{i:02},2026-01-05\n"));
    }
    std::fs::write(&path, csv).expect("write manifest");
    let path_text = path.display().to_string();
    let env = env_of(&sim, &db.url);

    let (code, out) = run(&["run", &path_text], &env).await;
    assert_eq!(code, Some(0), "not_found is informational:\n{out}");
    let listed = out
        .lines()
        .filter(|l| l.starts_with("  NOBODY") && l.contains("not_found"))
        .count();
    assert_eq!(listed, 20, "{out}");
    assert!(out.contains("… and 5 more"), "{out}");

    // Run again in JSON: everything is already done, nothing is acted on, and
    // the people still not deprovisioned are listed again, saying so.
    let (code, out) = run(&["run", &path_text, "--format", "json"], &env).await;
    assert_eq!(code, Some(0));
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(summary["tally"]["already_done"], 25);
    let again = summary["not_deprovisioned"].as_array().expect("list");
    assert_eq!(again.len(), 25);
    assert_eq!(again[0]["outcome"], "not_found");
    assert_eq!(
        again[0]["reason"],
        "finished by an earlier run as not_found; not acted on again"
    );

    // A fresh database: the JSON summary lists all 25 with their reasons.
    let db = fresh_postgres().await;
    let env = env_of(&sim, &db.url);
    let (_, out) = run(&["run", &path_text, "--format", "json"], &env).await;
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json");
    let people = summary["not_deprovisioned"].as_array().expect("list");
    assert_eq!(people.len(), 25);
    assert_eq!(summary["not_deprovisioned_more"], 0);
    assert_eq!(people[0]["externalId"], "NOBODY01");
    assert_eq!(people[0]["outcome"], "not_found");
    assert_eq!(people[0]["index"], 0);
    assert!(
        people[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("\"NOBODY01\"")),
        "{}",
        people[0]
    );
}

#[tokio::test]
async fn the_text_dry_run_names_the_planned_action_not_dry_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = start_sim(directory()).await;
    let path = dir.path().join("m.ndjson");
    let future = future_date();
    std::fs::write(&path, manifest(&future)).expect("write manifest");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let (code, out) = run(
        &["run", &path.display().to_string(), "--dry-run"],
        &env_of(&sim, &url),
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(mutations(&sim), 0);
    assert!(!out.contains("dry_run"), "{out}");
    for (label, n) in [
        ("would deactivate", 2),
        ("already inactive", 1),
        ("not found", 1),
        ("ambiguous", 1),
        ("scheduled (not due)", 1),
    ] {
        let expected = format!("  {label:<24} {n:>7}\n");
        assert!(out.contains(&expected), "missing {expected:?}:\n{out}");
    }
    assert!(
        out.contains(&format!(
            "scheduled for {future}T00:00:00Z; when due: would deactivate"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn dispatch_dry_run_validates_and_enqueues_nothing() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket("dry-manifests").await;
    let future = future_date();
    aws.put(&bucket, "in/terminations.ndjson", manifest(&future))
        .await;
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db.url.clone()),
        ("TERMINATIONS_QUEUE_URL", queues.terminations.clone()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let (code, out) = run(
        &[
            "dispatch",
            &format!("s3://{bucket}/in/terminations.ndjson"),
            "--dry-run",
        ],
        &env,
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["would_enqueue"], 6);
    assert_eq!(report["enqueued"], 0);
    assert_eq!(report["summary"]["rejected"], 1);
    assert_eq!(report["summary"]["duplicates"], 1);
    assert_eq!(report["rejected_records"][0]["index"], 6);
    assert_eq!(report["rejected_records"][0]["line"], 7);
    assert_eq!(report["rejected_records"][0]["externalId"], "DR7");
    assert_eq!(report["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(aws.depth(&queues.terminations).await, 0, "nothing enqueued");
    let audited = rows(&db.store).await;
    assert_eq!(audited.len(), 1, "the rejected record, as dry_run");
    assert_eq!(audited[0].entry.outcome, Outcome::DryRun);

    // A local file is accepted in a dry run.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("local.ndjson");
    std::fs::write(&path, manifest(&future)).expect("write");
    let (code, out) = run(
        &["dispatch", &path.display().to_string(), "--dry-run"],
        &env,
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"would_enqueue\": 6"), "{out}");
    assert_eq!(aws.depth(&queues.terminations).await, 0);
}

#[tokio::test]
async fn user_dry_run_prints_and_audits_the_plan() {
    let sim = start_sim(directory()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let env = env_of(&sim, &url);
    let (code, out) = run(&["user", "--external-id", "DR1", "--dry-run"], &env).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("plan:            would deactivate"), "{out}");
    assert!(out.contains("roles to remove: employee"), "{out}");
    let (code, out) = run(&["user", "--external-id", "DR4", "--dry-run"], &env).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("plan:            not found"), "{out}");
    assert_eq!(mutations(&sim), 0);

    let store = AuditStore::connect(&url).await.expect("store");
    let audited = rows(&store).await;
    let outcomes: Vec<Outcome> = audited.iter().map(|r| r.entry.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::DryRun, Outcome::DryRun],
        "even not_found is only a plan"
    );
    assert_eq!(
        audited[1].entry.error_message.as_deref(),
        Some("dry run: would be not_found: no user, active or inactive, has externalId \"DR4\"")
    );
}

#[tokio::test]
async fn serve_dry_run_plans_what_it_consumes_and_changes_nothing() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let queues = aws.queues(5, 30).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let sim = start_sim(directory()).await;
    let before = snapshot(&sim);
    let env = env_for(&sim, &db.url, &queues);
    let mut service = tokio::process::Command::new(bin())
        .args(["serve", "--dry-run"])
        .envs(env.iter().cloned())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve --dry-run");
    let future = future_date();
    aws.put(&bucket, "hr/terminations.ndjson", manifest(&future))
        .await;
    eventually("every termination is planned", LIMIT, || async {
        rows(&db.store)
            .await
            .iter()
            .filter(|r| r.entry.idempotency_key.is_some())
            .count()
            == 6
    })
    .await;
    let pid = service.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(90), service.wait())
        .await
        .expect("serve exits after SIGTERM")
        .expect("wait for serve");
    assert!(status.success(), "{status:?}");
    assert_eq!(mutations(&sim), 0);
    assert_eq!(snapshot(&sim), before);
    assert!(
        rows(&db.store)
            .await
            .iter()
            .all(|r| r.entry.outcome == Outcome::DryRun)
    );
    assert_eq!(aws.depth(&queues.terminations).await, 0);
    assert_eq!(
        aws.depth(&queues.dead_letter).await,
        0,
        "a plan dead-letters nobody"
    );
}
