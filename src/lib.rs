//! showcase: the video platform of the ANB Rising Stars Showcase in one binary.
//!
//! The binary (`src/main.rs`) is a thin command line over this library; tests and benchmarks
//! drive the same [`app::Application`] the binary runs. See `ARCHITECTURE.md` for the map.

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod engine;
pub mod events;
pub mod faults;
pub mod health;
pub mod http;
pub mod load;
pub mod media;
pub mod node;
pub mod notify;
pub mod panics;
pub mod rate_limit;
pub mod resumable;
pub mod sandbox;
pub mod signed_url;
pub mod system;
pub mod upload;
mod upload_file;
