//! cubeboot: zero-touch provisioning of Cube Sandbox hosts over PVM.
//!
//! One crate, two binaries. The builder (`cubeboot`, feature `builder`) turns
//! distro profiles and a lock of release assets into first-boot payloads. The
//! helper (`cube-firstboot`) runs on the target and follows the [`plan::Plan`]
//! the builder wrote: the plan's types live here, once, for both.

/// Serde through the type's text: `TryFrom<String>` by its `FromStr`,
/// `String` from its `Display`, for `#[serde(try_from = "String", into =
/// "String")]` (the plan's and the journal's values that are text on the wire).
macro_rules! serde_as_text {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = <$t as std::str::FromStr>::Err;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> Self {
                v.to_string()
            }
        }
    };
}

pub mod arch;
pub mod archive_path;
pub mod atomic_write;
pub mod bounded_read;
pub mod bundle_facts;
pub mod cmdline;
pub mod digest;
pub mod firstboot;
pub mod layout;
pub mod net;
pub mod plan;
pub mod printable;
pub mod shell_word;
pub mod signing;
pub mod status_schema;
pub mod transport;

#[cfg(feature = "builder")]
pub mod builder;

/// `cubeboot <version>`, recorded in plans, payloads and the final message.
pub fn generator() -> String {
    format!("cubeboot {}", env!("CARGO_PKG_VERSION"))
}
