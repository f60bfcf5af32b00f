//! The plan: the only contract between the builder and the first-boot helper.
//!
//! The builder writes it as JSON into the user-data (or an image overlay); the
//! helper reads it at `/etc/cubeboot/plan.json`. It is versioned like a
//! Butane spec: the helper reads `{"version": N}` first and refuses versions
//! it does not know, so an old helper never misreads a newer plan.
//!
//! This file is the whole plan, its versioning and its assets; the parts
//! with rules of their own are beside it: `target.rs` (the distro),
//! `kernel.rs` (the PVM kernel and its boot parameters), `cube.rs` (the Cube
//! node). Their types are re-exported here, so `crate::plan::X` names any.

mod cube;
mod kernel;
mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use serde::{Deserialize, Serialize};

pub use self::cube::*;
pub use self::kernel::*;
pub use self::target::*;
use crate::digest::Sha256Digest;

/// Plan versions this build understands.
pub const PLAN_VERSION: u32 = 1;
pub const SUPPORTED_PLAN_VERSIONS: &[u32] = &[1];

/// Where the builder's user-data puts the plan on the target.
pub use crate::layout::PLAN_PATH;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub version: u32,
    /// `cubeboot <version>` that produced this plan; shown in status and final message.
    pub generator: String,
    pub target: Target,
    pub assets: Assets,
    pub kernel: KernelPlan,
    pub cube: CubePlan,
    #[serde(default)]
    pub report: ReportPlan,
    /// Reboots the helper may perform in one run; a machine never loops.
    #[serde(default = "default_max_reboots")]
    pub max_reboots: u32,
    /// How the helper downloads; left out of the JSON while it has the
    /// defaults, so plans written before it existed stay byte-identical.
    #[serde(default, skip_serializing_if = "DownloadPlan::is_default")]
    pub download: DownloadPlan,
    /// How the trial boot starts the PVM kernel (docs/bootloader.md,
    /// "Trial boot by kexec"); left out, the firmware reboot plans written
    /// before it existed meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootMode>,
}

/// The trial boot's way into the PVM kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootMode {
    /// `kexec` straight into the PVM entry's kernel, initramfs and command
    /// line; the firmware reboot when kexec is missing or refuses.
    Kexec,
    /// A reboot through the firmware and GRUB.
    Firmware,
}

impl Plan {
    /// The plan's reboot mode; absent means the firmware reboot.
    pub fn reboot_mode(&self) -> RebootMode {
        self.reboot.unwrap_or(RebootMode::Firmware)
    }
}

fn default_max_reboots() -> u32 {
    1
}

/// Download settings the helper applies to every asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadPlan {
    /// A mirror delivering fewer bytes per second than this, averaged over
    /// `min_rate_window_secs`, is left for the next mirror (a trickling
    /// mirror never goes silent, so an idle timeout alone never fires).
    #[serde(default = "default_min_bytes_per_sec")]
    pub min_bytes_per_sec: u64,
    #[serde(default = "default_min_rate_window_secs")]
    pub min_rate_window_secs: u64,
}

fn default_min_bytes_per_sec() -> u64 {
    16 * 1024
}

fn default_min_rate_window_secs() -> u64 {
    60
}

impl Default for DownloadPlan {
    fn default() -> Self {
        Self {
            min_bytes_per_sec: default_min_bytes_per_sec(),
            min_rate_window_secs: default_min_rate_window_secs(),
        }
    }
}

impl DownloadPlan {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Every release asset the helper may fetch, pinned by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assets {
    pub kernel: Asset,
    pub bundle: Asset,
}

impl Assets {
    pub fn all(&self) -> [(&'static str, &Asset); 2] {
        [("kernel", &self.kernel), ("bundle", &self.bundle)]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// File name as released, e.g. `kernel-6.6.69_...x86_64.rpm`.
    pub name: String,
    /// Tried in order: the first is preferred, the rest are mirrors.
    pub urls: Vec<String>,
    pub sha256: Sha256Digest,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportPlan {
    /// JSON POST on each step change and at the end; carries no secrets.
    #[serde(default)]
    pub webhook: Option<String>,
    /// The fleet's HMAC key: each post is signed with it (src/signing.rs).
    /// It stays in this file (0600 on the target); the helper redacts it
    /// from status, logs and posts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("plan is not valid JSON: {0}")]
    Syntax(serde_json::Error),
    #[error("plan has no \"version\" field")]
    MissingVersion,
    #[error("plan version {found} is not supported by this helper (supported: {supported:?})")]
    UnknownVersion {
        found: u64,
        supported: &'static [u32],
    },
    #[error("plan: {0}")]
    Invalid(serde_json::Error),
}

impl Plan {
    /// Parse a plan, checking its version before its shape.
    pub fn from_json(text: &str) -> Result<Self, PlanError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u64>,
        }
        let head: Versioned = serde_json::from_str(text).map_err(PlanError::Syntax)?;
        let found = head.version.ok_or(PlanError::MissingVersion)?;
        if !SUPPORTED_PLAN_VERSIONS
            .iter()
            .any(|v| u64::from(*v) == found)
        {
            return Err(PlanError::UnknownVersion {
                found,
                supported: SUPPORTED_PLAN_VERSIONS,
            });
        }
        serde_json::from_str(text).map_err(PlanError::Invalid)
    }

    /// Canonical JSON: stable field order and a trailing newline, so the same
    /// inputs always give the same bytes.
    pub fn to_json(&self) -> String {
        // Serializing plain structs and BTreeMaps to a String cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Whether this machine is meant to end on the PVM kernel.
    pub fn role_label(&self) -> String {
        format!("{} ({})", self.target.profile, self.cube.role.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    pub use super::testing::sample_plan;
    use super::*;

    #[test]
    fn plan_round_trips_through_json() {
        let plan = sample_plan();
        let text = plan.to_json();
        assert_eq!(Plan::from_json(&text).unwrap(), plan);
    }

    #[test]
    fn unknown_version_is_refused_before_shape() {
        let err = Plan::from_json(r#"{"version": 9, "whatever": true}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plan version 9 is not supported by this helper (supported: [1])"
        );
        let err = Plan::from_json(r#"{"generator": "x"}"#).unwrap_err();
        assert_eq!(err.to_string(), "plan has no \"version\" field");
    }

    #[test]
    fn download_settings_are_optional_and_left_out_while_default() {
        // A plan written before `download` existed still parses, with the
        // defaults, and writing it back adds nothing.
        let mut v: serde_json::Value = serde_json::from_str(&sample_plan().to_json()).unwrap();
        assert!(v.get("download").is_none(), "{v}");
        let plan = Plan::from_json(&v.to_string()).unwrap();
        assert_eq!(plan.download, DownloadPlan::default());
        assert_eq!(plan.download.min_bytes_per_sec, 16 * 1024);
        assert_eq!(plan.download.min_rate_window_secs, 60);
        // One key given, the other defaulted; a changed value is written.
        v["download"] = serde_json::json!({"min_bytes_per_sec": 1024});
        let plan = Plan::from_json(&v.to_string()).unwrap();
        assert_eq!(plan.download.min_bytes_per_sec, 1024);
        assert_eq!(plan.download.min_rate_window_secs, 60);
        assert!(plan.to_json().contains("\"min_bytes_per_sec\": 1024"));
        // A misspelt key is an error, not a silent default.
        v["download"] = serde_json::json!({"min_byte_per_sec": 1024});
        assert!(Plan::from_json(&v.to_string()).is_err());
    }

    /// `node_ip`, `allow_from` and `cluster_cidr` are types once read, and
    /// write back the text they were read from, byte for byte.
    #[test]
    fn addresses_and_networks_round_trip_byte_for_byte() {
        let mut plan = sample_plan();
        plan.cube.node_ip = "10.0.0.9".parse().unwrap();
        plan.cube.allow_from = ["10.0.0.7/24", "192.0.2.1", "fd00:0::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        plan.cube.cluster_cidr = Some("10.100.0.0/18".parse().unwrap());
        plan.cube.control_plane_ip = Some("10.0.0.5:18089".parse().unwrap());
        let text = plan.to_json();
        for line in [
            "    \"node_ip\": \"10.0.0.9\",\n",
            "    \"control_plane_ip\": \"10.0.0.5:18089\",\n",
            "    \"allow_from\": [\n      \"10.0.0.7/24\",\n      \"192.0.2.1\",\n      \"fd00:0::/64\"\n    ],\n",
            "    \"cluster_cidr\": \"10.100.0.0/18\"\n",
        ] {
            assert!(text.contains(line), "{text}");
        }
        let read = Plan::from_json(&text).unwrap();
        assert_eq!(read, plan);
        assert_eq!(read.cube.node_ip, NodeIp::Addr(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(read.to_json(), text);
        assert!(sample_plan()
            .to_json()
            .contains("    \"node_ip\": \"auto\",\n"));
    }

    /// A value that is not what its key holds is refused when the plan is
    /// read, naming the key (and the entry of a list).
    #[test]
    fn a_bad_address_or_network_names_its_key() {
        let with = |key: &str, value: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(&sample_plan().to_json()).unwrap();
            v["cube"][key] = value;
            Plan::from_json(&v.to_string()).unwrap_err().to_string()
        };
        for (key, value, why) in [
            (
                "node_ip",
                serde_json::json!("eth0"),
                "cube.node_ip \"eth0\" is neither \"auto\" nor an IPv4 address",
            ),
            (
                "allow_from",
                serde_json::json!(["10.0.0.0/8", "example.com"]),
                "cube.allow_from[1]: \"example.com\" is not an IP network",
            ),
            (
                "allow_from",
                serde_json::json!(["10.0.0.0/40"]),
                "cube.allow_from[0]: \"10.0.0.0/40\" has an invalid prefix length",
            ),
            (
                "control_plane_ip",
                serde_json::json!("10.0.0.5:x"),
                "cube.control_plane_ip \"10.0.0.5:x\" is not an IPv4 address (optionally with :port)",
            ),
            (
                "cluster_cidr",
                serde_json::json!("10.100.0.0"),
                "cube.cluster_cidr: \"10.100.0.0\" has no prefix length",
            ),
        ] {
            let err = with(key, value);
            assert!(err.starts_with(&format!("plan: {why} at line ")), "{err}");
        }
    }

    #[test]
    fn reboot_mode_is_optional_and_left_out_while_absent() {
        // Plans from before the field: the firmware reboot, and the same bytes.
        let text = sample_plan().to_json();
        assert!(!text.contains("\"reboot\""), "{text}");
        let plan = Plan::from_json(&text).unwrap();
        assert_eq!(plan.reboot_mode(), RebootMode::Firmware);
        assert_eq!(plan.to_json(), text);
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["reboot"] = serde_json::json!("kexec");
        let plan = Plan::from_json(&v.to_string()).unwrap();
        assert_eq!(plan.reboot_mode(), RebootMode::Kexec);
        assert!(plan.to_json().contains("\"reboot\": \"kexec\""));
        v["reboot"] = serde_json::json!("firmware");
        assert_eq!(
            Plan::from_json(&v.to_string()).unwrap().reboot_mode(),
            RebootMode::Firmware
        );
        v["reboot"] = serde_json::json!("warm");
        assert!(Plan::from_json(&v.to_string()).is_err());
    }

    #[test]
    fn truncated_plan_is_a_syntax_error() {
        let text = sample_plan().to_json();
        let err = Plan::from_json(&text[..text.len() / 2]).unwrap_err();
        assert!(matches!(err, PlanError::Syntax(_)), "{err}");
    }
}
