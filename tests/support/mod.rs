//! Shared support for the helper's integration tests.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod server;
pub mod target;
pub mod tls;
