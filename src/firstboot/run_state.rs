//! How a run stands, as a type: the `state` of the status file and the
//! `finished` of the journal. Defined with the status schema
//! (src/status_schema.rs), which the receiver reads too.

pub use crate::status_schema::{Failure, RunState, UnknownRunState};
