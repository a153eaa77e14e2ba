//! The integration tests: one binary, a module per area, each test against the real Postgres and
//! RabbitMQ with its own database and queue prefix (see `webhook_tests::TestContext`), so that
//! any subset runs alone: `cargo nextest run -p webhook-tests -E 'test(name)'`, or one area with
//! `cargo nextest run -p webhook-tests --test it worker::`.

mod billing;
mod billing_model;
mod broker;
mod chaos;
mod clients;
mod cluster;
mod ctl;
mod faults;
mod hostile;
mod ingest;
mod lifecycle;
mod recovery;
mod sandbox_api;
mod worker;
