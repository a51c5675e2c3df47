//! End-to-end tests of the `strata` binary against real parts: the tansu Kafka broker,
//! moto's S3 server, the Python `deltalake` reader. `scripts/test.sh` installs them.

mod gdpr_support;
mod server;
mod support;

mod analysts;
mod api;
mod attack;
mod attack_http;
mod demo;
mod gdpr;
mod gdpr_race;

mod bad_config;
mod budgets;
mod cli;
mod config;
mod kafka_ingest;
mod maintenance;
mod prometheus;
mod s3;
mod scale_out;
mod scheduler;
mod soak;
