//! The Cube part of the plan: the node's role, its address and the
//! networks hardening admits, its data disk, the installer's budgets and
//! environment, and what a node shares with its cluster. Addresses and
//! networks are types, checked when the plan is read.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize};

use crate::net::{Cidr, Ipv4Net};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CubePlan {
    pub role: Role,
    /// Required for `compute`.
    #[serde(default)]
    pub control_plane_ip: Option<ControlPlaneAddr>,
    pub node_ip: NodeIp,
    /// `MIRROR=cn` for the installer when set to `cn`.
    #[serde(default)]
    pub mirror: Option<InstallerMirror>,
    #[serde(default = "default_install_timeout")]
    pub install_timeout_secs: u64,
    pub data_disk: DataDisk,
    #[serde(default = "default_loopback_gib")]
    pub loopback_size_gib: u64,
    #[serde(default = "default_true")]
    pub hardening: bool,
    /// Networks admitted to the restricted Cube ports (src/layout.rs) when hardening.
    #[serde(default, deserialize_with = "allow_from")]
    pub allow_from: Vec<Cidr>,
    /// Extra environment for the installer (sorted, so plans are reproducible).
    #[serde(default)]
    pub extra_env: BTreeMap<String, String>,
    /// Budget for cube-verify's probes (services may still be starting).
    #[serde(default = "default_verify_budget")]
    pub verify_budget_secs: u64,
    /// How long a compute node waits for its control plane to answer.
    #[serde(default = "default_control_plane_wait")]
    pub control_plane_wait_secs: u64,
    /// The control node's object storage (`CUBE_S3_*`), for compute nodes:
    /// optional upstream, but without it a compute node has no S3 volume plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Settings>,
    /// The facts `cubeboot lock` read out of the bundle; absent means a
    /// bundle from before CubeOps (src/bundle_facts.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<crate::bundle_facts::BundleFacts>,
    /// The cluster's ops-agent token (`CUBE_OPS_OPSAGENT_TOKEN`): one value
    /// for the control node and every compute node. A secret like
    /// `webhook_secret`: 0600 on the target, redacted from every output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_token: Option<String>,
    /// The sandbox network every node of the cluster uses
    /// (`CUBE_SANDBOX_NETWORK_CIDR`), still checked against each host's routes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "cluster_cidr"
    )]
    pub cluster_cidr: Option<Ipv4Net>,
}

/// The address the Cube installer is given (`--node-ip`): `auto` (found on
/// the target, as the installer's `detect_node_ip` would) or an IPv4
/// address. In JSON it is that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NodeIp {
    Auto,
    Addr(Ipv4Addr),
}

impl NodeIp {
    /// The planned address, `None` for `auto`.
    pub fn addr(self) -> Option<Ipv4Addr> {
        match self {
            Self::Auto => None,
            Self::Addr(a) => Some(a),
        }
    }
}

impl fmt::Display for NodeIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl FromStr for NodeIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Addr)
            .map_err(|_| format!("cube.node_ip {s:?} is neither \"auto\" nor an IPv4 address"))
    }
}

serde_as_text!(NodeIp);

/// A compute node's control plane as the plan names it: CubeMaster's IPv4
/// address, with its port when not the default (`IP` or `IP:PORT`). In
/// JSON it is that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ControlPlaneAddr {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
}

impl fmt::Display for ControlPlaneAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl FromStr for ControlPlaneAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, port) = match s.rsplit_once(':') {
            Some((ip, port)) => (ip, port.parse::<u16>().map(Some)),
            None => (s, Ok(None)),
        };
        match (ip.parse::<Ipv4Addr>(), port) {
            (Ok(ip), Ok(port)) => Ok(Self { ip, port }),
            _ => Err(format!(
                "cube.control_plane_ip {s:?} is not an IPv4 address (optionally with :port)"
            )),
        }
    }
}

serde_as_text!(ControlPlaneAddr);

/// `cube.allow_from`, each entry parsed, a bad one named by its index.
fn allow_from<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Cidr::parse(s).map_err(|e| de::Error::custom(format!("cube.allow_from[{i}]: {e}")))
        })
        .collect()
}

/// `cube.cluster_cidr`: an IPv4 network written with its prefix length.
fn cluster_cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let net = if s.contains('/') {
        s.parse::<Ipv4Net>()
    } else {
        Err(format!("{s:?} has no prefix length"))
    };
    net.map(Some)
        .map_err(|e| de::Error::custom(format!("cube.cluster_cidr: {e}")))
}

/// Object storage settings as upstream's installer reads them
/// (`CUBE_S3_*`, CubeSandbox: docs/guide/multi-node-deploy.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3fs_extra_opts: Option<String>,
}

impl S3Settings {
    /// The installer's variable for each setting.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: &str| {
            env.insert(format!("CUBE_S3_{k}"), v.to_string());
        };
        set("ENDPOINT", &self.endpoint);
        set("ACCESS_KEY_ID", &self.access_key_id);
        set("SECRET_ACCESS_KEY", &self.secret_access_key);
        set("BUCKET", &self.bucket);
        if let Some(r) = &self.region {
            set("REGION", r);
        }
        if let Some(o) = &self.s3fs_extra_opts {
            set("S3FS_EXTRA_OPTS", o);
        }
        env
    }
}

/// Cold starts have run past 45 minutes (CubeSandbox #924, #1753).
pub const DEFAULT_INSTALL_TIMEOUT_SECS: u64 = 60 * 60;
pub const DEFAULT_VERIFY_BUDGET_SECS: u64 = 300;
pub const DEFAULT_CONTROL_PLANE_WAIT_SECS: u64 = 20 * 60;

fn default_install_timeout() -> u64 {
    DEFAULT_INSTALL_TIMEOUT_SECS
}

fn default_verify_budget() -> u64 {
    DEFAULT_VERIFY_BUDGET_SECS
}

fn default_control_plane_wait() -> u64 {
    DEFAULT_CONTROL_PLANE_WAIT_SECS
}

fn default_loopback_gib() -> u64 {
    50
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Control,
    Compute,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Compute => "compute",
        }
    }

    /// The role named `name` as the plan and the status write it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Control, Self::Compute]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode", content = "device")]
pub enum DataDisk {
    /// The one empty, unpartitioned, unmounted extra disk; else a loopback image.
    Auto,
    /// This device, which must be empty.
    Device(String),
    /// Always a loopback XFS image.
    Loopback,
}

/// The installer's `MIRROR=` value: the one upstream mirror it knows
/// (docs/cube-installer.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallerMirror {
    Cn,
}

impl InstallerMirror {
    /// The value the installer reads from `MIRROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cn => "cn",
        }
    }
}
