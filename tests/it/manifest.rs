//! Manifests as HR drops them, through real S3 and SQS (moto): the three formats
//! with their quirks fanned out by `deprovision dispatch s3://…`, and a file broken
//! as a whole rejected before anything is enqueued.

use std::collections::BTreeSet;

use deprovision::queue::TerminationMessage;

use crate::audit::fresh_postgres;
use crate::pipeline::harness::{Aws, Queues, aws, run_bin};

async fn bucket(aws: &Aws) -> String {
    aws.bucket("hr-dispatch").await
}

fn env(db: &str, queues: &Queues) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.into()),
        ("TERMINATIONS_QUEUE_URL".into(), queues.terminations.clone()),
        ("HR_TIMEZONE".into(), "America/New_York".into()),
        (
            "MESSAGE_SIGNING_KEYS".into(),
            crate::pipeline::harness::SIGNING_KEYS.into(),
        ),
        ("MAX_TERMINATIONS_SHARE".into(), "1".into()),
    ]
}

async fn enqueued(aws: &Aws, queues: &Queues) -> Vec<TerminationMessage> {
    aws.peek_all(&queues.terminations)
        .await
        .into_iter()
        .map(|(body, _)| TerminationMessage::decode(&body).expect("v1 message"))
        .collect()
}

#[tokio::test]
async fn csv_ndjson_and_json_manifests_fan_out_one_message_per_termination() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let bucket = bucket(&aws).await;
    let cases = [
        (
            "hr/export.csv",
            "\u{FEFF}Employee Name,External ID,Termination Date\r\n\"Doe, Jane\",C1,2026-03-02\r\nBob,C2,2026-03-02T17:00:00-05:00\r\nBob,C2,2026-03-02T17:00:00-05:00\r\nNobody,,2026-03-02\r\n",
            (4, 2, 1, 1),
        ),
        (
            "hr/export.ndjson",
            "{\"externalId\":\"N1\",\"terminationDate\":\"2026-03-02\"}\n\n{\"externalId\":\"N2\",\"userId\":\"8a4b1c2d-0000-4000-8000-000000000002\",\"terminationDate\":\"2026-03-02\"}\n",
            (2, 2, 0, 0),
        ),
        (
            "hr/export with spaces.json",
            "[{\"externalId\":\"J1\",\"terminationDate\":\"2026-03-02\"},{\"externalId\":\"J2\",\"terminationDate\":\"2026-02-30\"}]",
            (2, 1, 1, 0),
        ),
    ];
    for (key, content, (records, valid, rejected, duplicates)) in cases {
        let queues = aws.queues(5, 30).await;
        aws.put(&bucket, key, content).await;
        let (status, out) = run_bin(
            &["dispatch", &format!("s3://{bucket}/{key}")],
            &env(&db.url, &queues),
        )
        .await;
        assert!(status.success(), "{key}: {status:?}\n{out}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
        let s = &report["summary"];
        assert_eq!(
            (
                s["records"].as_u64(),
                s["valid"].as_u64(),
                s["rejected"].as_u64(),
                s["duplicates"].as_u64()
            ),
            (Some(records), Some(valid), Some(rejected), Some(duplicates)),
            "{key}: {report}"
        );
        let messages = enqueued(&aws, &queues).await;
        assert_eq!(messages.len() as u64, valid, "{key}");
        for m in &messages {
            assert_eq!(m.origin.bucket, bucket);
            assert_eq!(m.origin.key, key);
            assert!(m.origin.version.is_some(), "ETag recorded");
            assert_eq!(m.idempotency_key, m.record.idempotency_key());
        }
        if key.ends_with(".csv") {
            let ids: BTreeSet<_> = messages
                .iter()
                .map(|m| m.record.external_id.to_string())
                .collect();
            assert_eq!(ids, BTreeSet::from(["C1".to_owned(), "C2".to_owned()]));
            let c1 = messages
                .iter()
                .find(|m| m.record.external_id.as_str() == "C1")
                .expect("C1");
            // A date-only termination starts that day in the HR time zone.
            assert_eq!(c1.effective_at.to_rfc3339(), "2026-03-02T05:00:00+00:00");
        }
    }
}

#[tokio::test]
async fn a_manifest_broken_as_a_whole_enqueues_nothing_and_is_audited() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    let bucket = bucket(&aws).await;
    let queues = aws.queues(5, 30).await;
    let mut body = String::from("[\n");
    for i in 0..50 {
        body.push_str(&format!(
            "{{\"externalId\":\"B{i}\",\"terminationDate\":\"2026-03-02\"}},\n"
        ));
    }
    body.push_str("{\"externalId\":\"B50\" \"terminationDate\":\"2026-03-02\"}\n]");
    aws.put(&bucket, "broken.json", body).await;
    let (status, out) = run_bin(
        &["dispatch", &format!("s3://{bucket}/broken.json")],
        &env(&db.url, &queues),
    )
    .await;
    assert_eq!(status.code(), Some(2), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    let reason = report["rejected_file"].as_str().expect("rejected");
    assert!(reason.contains("line 52"), "{reason}");
    assert_eq!(
        aws.depth(&queues.terminations).await,
        0,
        "nothing enqueued from a broken file"
    );
    let rows = db.store.termination_rows(None, None).await.expect("rows");
    assert!(rows.is_empty(), "no termination rows for a rejected file");
}

/// `deprovision run --sandbox s3://…`: the embedded path reads the manifest from
/// S3 (both for seeding the simulator and for dispatch) and reconciles.
#[tokio::test]
async fn run_sandbox_reads_an_s3_manifest() {
    let aws = aws().await;
    let bucket = bucket(&aws).await;
    // S3 is future-dated, within MAX_FUTURE_DAYS (90 by default).
    let soon = (chrono::Utc::now() + chrono::Duration::days(30)).date_naive();
    aws.put(
        &bucket,
        "hr/today.ndjson",
        format!("{{\"externalId\":\"S1\",\"terminationDate\":\"2026-01-02\"}}\n{{\"externalId\":\"S2\",\"terminationDate\":\"2026-01-02\"}}\n{{\"externalId\":\"S2\",\"terminationDate\":\"2026-01-02\"}}\n{{\"externalId\":\"S3\",\"terminationDate\":\"{soon}\"}}\n"),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("sandbox.db").display());
    let (status, out) = run_bin(
        &[
            "run",
            "--sandbox",
            "--sandbox-database-url",
            &db,
            "--format",
            "json",
            &format!("s3://{bucket}/hr/today.ndjson"),
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{status:?}\n{out}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("json summary");
    assert_eq!(summary["reconciled"], true, "{summary}");
    assert_eq!(summary["manifest"]["summary"]["duplicates"], 1);
    assert_eq!(
        summary["tally"]["outcomes"],
        serde_json::json!([["deactivated", 2]])
    );
    // The future-dated one is held as scheduled, not attempted.
    assert_eq!(summary["tally"]["not_due"], 1);
    assert_eq!(
        summary["next_due"],
        format!("{soon}T00:00:00Z"),
        "{summary}"
    );
}
