//! The build-time half: profile → lock → render → build.
//!
//! Stages pass typed values; files are read and written only at the CLI edge
//! (`main.rs` and `build`).

pub mod budget;
pub mod build;
pub mod bundle_check;
pub mod bundle_classify;
pub mod bundle_inspect;
pub mod check;
pub mod cli;
pub mod diag;
pub mod json;
pub mod kernel_package;
pub mod lock;
mod manifest;
pub mod mirror;
pub mod options;
pub mod overlay;
pub mod profile;
pub mod render;
pub mod shell;
pub mod upgrade;
pub mod watch;
pub mod watch_tls;
pub mod yaml;
