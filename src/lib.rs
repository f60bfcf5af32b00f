//! cubeboot: zero-touch provisioning of Cube Sandbox hosts over PVM.
//!
//! One crate, two binaries. The builder (`cubeboot`, feature `builder`) turns
//! distro profiles and a lock of release assets into first-boot payloads. The
//! helper (`cube-firstboot`) runs on the target and follows the [`plan::Plan`]
//! the builder wrote: the plan's types live here, once, for both.

pub mod archive_path;
pub mod atomic_write;
pub mod bounded_read;
pub mod bundle_facts;
pub mod cmdline;
pub mod digest;
pub mod firstboot;
pub mod layout;
pub mod plan;
pub mod printable;
pub mod signing;
pub mod status_schema;
pub mod transport;

#[cfg(feature = "builder")]
pub mod builder;

/// `cubeboot <version>`, recorded in plans, payloads and the final message.
pub fn generator() -> String {
    format!("cubeboot {}", env!("CARGO_PKG_VERSION"))
}
