//! "A failing audit write leaves the termination unacknowledged", end to end with
//! the real store: `deprovision serve` consumes from moto's SQS against the
//! simulator while PostgreSQL itself refuses the audit insert for one externalId
//! (a test-only BEFORE INSERT trigger, created as superuser in the test's own
//! database). That message stays on the queue and comes back; the others are
//! audited and deleted. Once the trigger is gone, a restarted service finishes it
//! exactly once.

use std::time::Duration;

use deprovision::domain::Outcome;

use super::harness::*;
use crate::audit::{Raw, fresh_postgres};

const LIMIT: Duration = Duration::from_secs(180);

const VICTIM: &str = "AW0002";

/// Refuses every audit row for `VICTIM`, counting the refusals in a sequence
/// (`nextval` survives the rollback of the refused insert).
const REFUSE: &str = "CREATE SEQUENCE refused_audit_writes; \
    CREATE FUNCTION refuse_victim() RETURNS trigger LANGUAGE plpgsql AS $$ \
    BEGIN \
      IF NEW.external_id = 'AW0002' THEN \
        PERFORM nextval('refused_audit_writes'); \
        RAISE EXCEPTION 'injected audit write failure for AW0002'; \
      END IF; \
      RETURN NEW; \
    END $$; \
    CREATE TRIGGER refuse_victim BEFORE INSERT ON scim_audit_log \
      FOR EACH ROW EXECUTE FUNCTION refuse_victim();";

async fn scalar(raw: &Raw, sql: &str) -> i64 {
    match raw {
        Raw::Pg(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(p)
            .await
            .expect("query"),
        Raw::Sqlite(_) => unreachable!("pipeline tests use PostgreSQL"),
    }
}

async fn refused(raw: &Raw) -> i64 {
    scalar(
        raw,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM refused_audit_writes",
    )
    .await
}

#[tokio::test]
async fn a_refused_audit_write_keeps_the_message_until_the_store_accepts_it() {
    let aws = aws().await;
    let db = fresh_postgres().await;
    // Many receives allowed: the refused message must come back, not be
    // dead-lettered, while the test watches it.
    let queues = aws.queues(50, 5).await;
    let bucket = aws.bucket_notifying(&queues.events).await;
    let recs = records("AW", 4);
    let (config, seed) = sim_config(&recs);
    let victim_id = user_id_of(&seed, VICTIM);
    let sim = start_sim(config).await;
    db.raw
        .exec(REFUSE)
        .await
        .expect("install the refusing trigger");

    let env = env_for(&sim, &db.url, &queues);
    let service = Service::start(&env);
    aws.put(&bucket, "audit-failure.json", json_manifest(&recs))
        .await;
    eventually(
        "the other three audited, and the victim's audit refused on three receives",
        LIMIT,
        || async {
            let done = terminal_by_key(&db.store).await;
            done.len() == 3 && !done.contains_key(&key_of(VICTIM)) && refused(&db.raw).await >= 3
        },
    )
    .await;
    assert!(
        sim.user(&victim_id).is_some_and(|u| !u.active),
        "the SCIM side was done; only its evidence is missing"
    );
    assert_eq!(
        aws.depth(&queues.terminations).await,
        1,
        "the refused termination is still on the queue, the others are deleted"
    );
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);
    assert_eq!(
        scalar(
            &db.raw,
            "SELECT count(*) FROM scim_audit_log WHERE external_id = 'AW0002'"
        )
        .await,
        0
    );
    assert!(service.terminate().await.success());
    assert_eq!(
        aws.depth(&queues.terminations).await,
        1,
        "a drain does not acknowledge it either"
    );

    db.raw
        .exec("DROP TRIGGER refuse_victim ON scim_audit_log")
        .await
        .expect("drop the refusing trigger");
    let service = Service::start(&env);
    eventually("the victim audited and the queue empty", LIMIT, || async {
        terminal_by_key(&db.store).await.len() == 4 && aws.depth(&queues.terminations).await == 0
    })
    .await;
    assert!(service.terminate().await.success());

    let by_key = terminal_by_key(&db.store).await;
    for r in &recs {
        let e = r.external_id.as_str();
        let outcomes = by_key.get(&key_of(e)).expect("audited");
        if e == VICTIM {
            assert_eq!(outcomes.len(), 1, "exactly one terminal row: {outcomes:?}");
            assert!(
                matches!(outcomes[0], Outcome::Deactivated | Outcome::AlreadyInactive),
                "{outcomes:?}"
            );
        } else {
            assert_eq!(outcomes, &[Outcome::Deactivated], "{e}");
        }
    }
    assert_eq!(aws.depth(&queues.dead_letter).await, 0);
    let report = db.store.verify().await.expect("verify");
    assert!(report.passes(), "{report:?}");
}
