//! The integration tests of the node, in one test binary: each module was a test file of its
//! own, and every test binary links libav, sled and the whole node, so one binary builds and
//! links once. `cargo test --test api <module>` runs one area.
//!
//! The hostile-media mutation run (whose counters are read exactly), the SIGKILL drill and the
//! browser test keep binaries of their own: `make fuzz` and `make chaos` run them alone.

#[path = "../common/mod.rs"]
mod common;

mod auth_api;
mod aws_outage;
mod durability;
mod health_api;
mod hostile_clients;
mod layers;
mod metrics;
mod migrate;
mod other_clients;
mod outbox;
mod overload;
mod pipeline;
mod public_api;
mod queue;
mod roles;
mod s3_blobs;
mod secrets;
mod sqs_queue;
mod streaming;
mod supervision;
mod systemd_unit;
mod transcode;
mod tus;
mod upload_limits;
mod videos_api;
