//! What a one-click bundle says about itself, read out of it at lock time
//! (`cubeboot lock`, `cubeboot inspect BUNDLE`), recorded in the lock and
//! carried in the plan, so the helper acts on the bundle's own facts (which
//! keys to send, which ports to harden, where to verify registration)
//! instead of assumptions about one upstream release. A plan without facts
//! (older builders, older locks) means a bundle from before CubeOps: the
//! behaviour cubeboot had before it read bundles. docs/cube-installer.md
//! names the upstream file behind each fact.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFacts {
    /// `release-manifest.json`'s version, else `VERSION.txt`, else the name's.
    pub version: String,
    /// The bundle's architecture as upstream names it (`amd64`, `arm64`).
    pub arch: String,
    /// The guest kernel's `pvm_version` from `release-manifest.json`, when
    /// the bundle records one; the host kernel should match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvm_version: Option<String>,
    /// Compute nodes register with CubeOps (3010) rather than CubeMaster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cube_ops: Option<CubeOpsFacts>,
    /// Environment keys the bundle's scripts refuse to run without, per role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_env: Vec<RequiredEnv>,
    /// Every TCP listener the bundle's units and start scripts open that is
    /// not loopback-only by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// Facts seen in the bundle that this cubeboot has no model for
    /// (a newer shape): `check` warns, `--strict` refuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CubeOpsFacts {
    /// CubeOps' port (upstream default 3010).
    pub port: u16,
    /// Where the bundle's quickcheck looks for a compute node's
    /// registration, with `{ip}` for the node's address
    /// (`/internal/v1/nodes/{ip}` in the CubeOps era).
    pub registration_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BundleRole {
    Control,
    Compute,
    /// Both roles (a listener every node runs, a key every node needs).
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredEnv {
    pub key: String,
    pub role: BundleRole,
    /// The bundle file that refuses to run without it.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// The service as upstream names it (`CubeOps`, `ops-agent`, …).
    pub service: String,
    pub port: u16,
    pub role: BundleRole,
    /// The `.env` key that sets its bind address, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_env: Option<String>,
}

impl BundleFacts {
    pub fn requires(&self, key: &str, role: BundleRole) -> bool {
        self.required_env
            .iter()
            .any(|r| r.key == key && (r.role == role || r.role == BundleRole::All))
    }
}
