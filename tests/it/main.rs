//! The one integration-test binary. Each module is one capability, driven through
//! real parts (PostgreSQL, moto's S3/SQS, scim2-server, the simulator) that
//! `scripts/test.sh` starts; `support` finds them through the environment.

mod audit;
mod claims;
mod dotenv_file;
mod dry_run;
mod engine;
mod exit_codes;
mod holds;
mod manifest;
mod operator_rails;
mod pipeline;
mod rails;
mod replay;
mod report;
mod report_integrity;
mod sim;
mod support;
mod telemetry;
mod telemetry_e2e;
