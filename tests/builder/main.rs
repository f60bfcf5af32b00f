//! Integration tests of the `cubeboot` builder binary: lock, build, check,
//! every bad-input class with its exact message, reproducibility, real
//! `cloud-init schema` on every payload, and the README's first command.

mod support;

mod bootstrap;
mod build;
mod errors;
mod lock;
mod readme;
mod schema;
