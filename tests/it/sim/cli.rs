//! `deprovision simulate` as a process: the issue's command line serves, prints
//! its URL, and stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn simulate_command_serves_the_issue_configuration_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deprovision"))
        .args([
            "simulate",
            "--users",
            "100",
            "--groups",
            "5",
            "--client",
            "primary:primary-secret",
            "--elevated-client",
            "elevated:elevated-secret",
            "--rate-limit-per-minute",
            "3000",
            "--port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the deprovision binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the URL is printed")
        .unwrap()
        .expect("a line");
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{url}oauth/token"))
        .basic_auth("elevated", Some("elevated-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .get(format!("{url}api/v2/scim/v2/users"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .query(&[("count", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["inin-ratelimit-allowed"], "3000");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["totalResults"], 100);
    let stats: Value = http
        .get(format!("{url}_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["state"]["groups"], 5);

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
