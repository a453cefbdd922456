//! A `.env` file fails closed (issue 6, protected accounts; tester's report): a
//! `.env` that exists but has a malformed line stops every command at start-up,
//! naming the file, the line and the variable, never the value, before any
//! request is made; a well-formed one with a quoted `PROTECTED_GROUPS="Group 1"`
//! is honoured. Runs the real binary in a temporary directory against the
//! simulator, with an environment holding nothing but `PATH`.

use deprovision::sim::{ResourceKind, RunningSim, SeedGroupRef};

use crate::pipeline::harness::{PRIMARY, bin, records, sim_config, start_sim};

/// A simulator whose `DE0001` is a member of "Group 1".
async fn directory() -> RunningSim {
    let recs = records("DE", 2);
    let (config, mut seed) = sim_config(&recs);
    let member = seed
        .users
        .iter_mut()
        .find(|u| u.external_id.as_deref() == Some("DE0001"))
        .expect("DE0001");
    member.groups.push(SeedGroupRef::Name("Group 1".into()));
    start_sim(config.with_seed(seed)).await
}

/// The first four lines of the tester's `.env`: the simulator, its client and a
/// SQLite audit database inside `dir`.
fn head(sim: &RunningSim, dir: &std::path::Path) -> String {
    format!(
        "GENESYS_API_URL={}\nPRIMARY_CLIENT_ID={}\nPRIMARY_CLIENT_SECRET={}\nDATABASE_URL=sqlite://{}/audit.db\n",
        sim.base_url(),
        PRIMARY.0,
        PRIMARY.1,
        dir.display()
    )
}

/// Runs the binary in `dir` with only `PATH` in its environment.
async fn run_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .expect("run deprovision");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each bad shape from the report, on line 5, before a `PROTECTED_*` line: exit
/// 78 naming `.env` and line 5, no value echoed, not one request to Genesys (not
/// even a token), no audit database created, the user still active.
#[tokio::test]
async fn a_malformed_env_line_stops_start_up_before_anything_is_done() {
    let sim = directory().await;
    // (line 5, the variable it names, text of the value that must not be echoed)
    let cases = [
        (
            "PROTECTED_GROUPS=Group 1",
            Some("PROTECTED_GROUPS"),
            "Group 1",
        ),
        ("NOTE=it's fine", Some("NOTE"), "fine"),
        ("KEY=va\"lue", Some("KEY"), "va\"l"),
        ("FOO=${BAR", Some("FOO"), "BAR"),
        ("this is not valid", None, "not valid"),
    ];
    for (bad, name, value) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let env = format!(
            "{}{bad}\nPROTECTED_USERS=DE0001\nPROTECTED_GROUPS=\"Group 1\"\n",
            head(&sim, dir.path())
        );
        std::fs::write(dir.path().join(".env"), env).expect("write .env");
        for args in [
            &["user", "--external-id", "DE0001", "--dry-run"][..],
            &["user", "--external-id", "DE0001"][..],
        ] {
            let (code, out, err) = run_in(dir.path(), args).await;
            assert_eq!(code, Some(78), "{bad}: {args:?}\n{out}\n{err}");
            assert!(out.is_empty(), "{bad}: nothing on stdout: {out}");
            assert!(err.contains(".env, line 5"), "{bad}: {err}");
            if let Some(name) = name {
                assert!(err.contains(&format!("line 5 ({name})")), "{bad}: {err}");
            }
            assert!(err.contains("quote values"), "{bad}: the hint: {err}");
            assert!(!err.contains(value), "{bad}: the value is echoed: {err}");
        }
        assert!(
            !dir.path().join("audit.db").exists(),
            "{bad}: no audit database is opened"
        );
    }
    let stats = sim.stats();
    assert_eq!(
        stats.count(ResourceKind::Token, "POST"),
        0,
        "no token request"
    );
    assert_eq!(stats.count(ResourceKind::Users, "GET"), 0, "no lookup");
    assert!(sim.users_by_external_id("DE0001")[0].active);
}

/// A well-formed `.env` with the value quoted is honoured: the member of
/// "Group 1" is protected (plan and real run), the other user is not.
#[tokio::test]
async fn a_quoted_protected_group_in_env_is_honoured() {
    let sim = directory().await;
    let dir = tempfile::tempdir().expect("dir");
    let env = format!(
        "{}# break-glass admins\nexport PROTECTED_GROUPS=\"Group 1\"\nNOTE='it is fine'\n",
        head(&sim, dir.path())
    );
    std::fs::write(dir.path().join(".env"), env).expect("write .env");

    let (code, out, err) = run_in(
        dir.path(),
        &[
            "user",
            "--external-id",
            "DE0001",
            "--dry-run",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(code.is_some(), "{err}");
    assert!(
        out.contains("protected"),
        "the plan shows protected: {out}\n{err}"
    );

    let (code, out, err) = run_in(
        dir.path(),
        &["user", "--external-id", "DE0001", "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(1), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["outcome"], "protected", "{out}");
    assert!(sim.users_by_external_id("DE0001")[0].active);

    let (code, out, err) = run_in(
        dir.path(),
        &["user", "--external-id", "DE0002", "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!sim.users_by_external_id("DE0002")[0].active);
}
