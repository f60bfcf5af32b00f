//! The build-time half: profile → lock → render → package.
//!
//! Stages pass typed values; files are read and written only at the CLI edge
//! (`main.rs` and `package`).

pub mod budget;
pub mod check;
pub mod cli;
pub mod diag;
pub mod inspect;
pub mod lock;
pub mod options;
pub mod overlay;
pub mod package;
pub mod profile;
pub mod render;
pub mod yaml;
