//! Durable holds of future-dated terminations (issue 6, items 1 and 6): the
//! holds store on both backends (`store`), and the pipeline end to end through
//! moto's SQS, PostgreSQL and the simulator with an injected clock (`pipeline`):
//! two consumer pools and two releasers, a restart between hold and release,
//! `MAX_FUTURE_DAYS`, `report pending`, `run` holding, and a replay skipping a
//! termination superseded by a rehire.

mod pipeline;
mod store;
