//! Throughput of the deprovisioning engine (SCIM client, token cache, limiter,
//! engine) against the in-process Genesys Cloud simulator: 100 terminations, 16
//! at a time, each user in two groups (find ×2, PATCH user, PATCH group ×2 per
//! termination). The simulator answers instantly, so this measures our own
//! overhead per termination, not Genesys's latency.
//!
//! Run: `cargo bench --bench engine`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deprovision::config::{OAuthClient, ScimTarget};
use deprovision::domain::{ExternalId, Outcome};
use deprovision::engine::{Deprovision, Engine, EngineOptions, Request};
use deprovision::limit::RateLimiter;
use deprovision::scim::{ClientOptions, ScimClient};
use deprovision::sim::{RunningSim, Seed, SimConfig};
use futures::StreamExt;
use secrecy::SecretString;

const USERS: usize = 100;
const CONCURRENCY: usize = 16;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Generated users, each put in two of eleven groups.
    let mut seed = Seed::generate(USERS, 0);
    for (i, u) in seed.users.iter_mut().enumerate() {
        u.groups = vec![
            deprovision::sim::SeedGroupRef::Name(format!("team-{}", i % 8)),
            deprovision::sim::SeedGroupRef::Name(format!("site-{}", i % 3)),
        ];
    }
    let externals: Vec<String> = seed
        .users
        .iter()
        .filter_map(|u| u.external_id.clone())
        .collect();
    let sim = rt.block_on(async {
        RunningSim::start(
            SimConfig::default()
                .with_seed(seed)
                .with_client("primary", "secret"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
        .expect("simulator")
    });
    let target = ScimTarget::Genesys {
        api_base: sim.base_url(),
        login_base: sim.base_url(),
        primary: OAuthClient {
            id: "primary".into(),
            secret: SecretString::from("secret"),
        },
        elevated: None,
    };

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(USERS as u64));
    group.sample_size(10);
    group.bench_function("deprovision_100_users_16_concurrent", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                sim.reset().expect("reset");
                let _guard = rt.enter();
                let client = ScimClient::new(
                    &target,
                    RateLimiter::per_minute(NonZeroU32::new(1_000_000).expect("nz")),
                    ClientOptions::default(),
                )
                .expect("client");
                let engine = Engine::new(client, EngineOptions::default());
                let start = Instant::now();
                let outcomes: Vec<Outcome> = rt.block_on(async {
                    futures::stream::iter(externals.iter())
                        .map(|e| {
                            let engine = engine.clone();
                            async move {
                                let req = Request {
                                    external_id: ExternalId::parse(e).expect("id"),
                                    user_id: None,
                                    dry_run: false,
                                    deadline: tokio::time::Instant::now() + Duration::from_secs(60),
                                };
                                engine.deprovision(&req).await.outcome
                            }
                        })
                        .buffer_unordered(CONCURRENCY)
                        .collect()
                        .await
                });
                total += start.elapsed();
                assert!(outcomes.iter().all(|o| *o == Outcome::Deactivated));
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
