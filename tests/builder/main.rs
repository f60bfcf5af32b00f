//! Integration tests of the `cubeboot` builder binary: lock, build, check,
//! every bad-input class with its exact message, reproducibility, real
//! `cloud-init schema` on every payload, and the README's first command.

mod support;
// The helper tests' 127.0.0.1 server with failure knobs; the builder's
// downloads share the helper's transport and face the same faults.
#[path = "../support/server.rs"]
#[allow(dead_code)]
mod server;

mod arch;
mod bootstrap;
mod build;
mod bundle;
mod citations;
mod errors;
mod json;
mod lock;
mod operator;
mod readme;
mod schema;
mod shell;
mod troubleshooting;
mod upgrade;
