//! A node joining its cluster (docs/cube-installer.md, "Naming the control
//! plane"): the values every node shares (the ops-agent token, the sandbox
//! CIDR), and for a compute node where CubeMaster and, in bundles with
//! CubeOps, CubeOps are; what the installer is told; what must answer
//! before the install starts; where the node's registration is read back.
//! Bundles from before CubeOps (no facts in the plan) keep the CubeMaster-
//! only join.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::super::host::Host;
use super::super::StepFailure;
use super::cidr::{HostNetwork, Ipv4Net};
use super::http;
use crate::bundle_facts::{BundleRole, CubeOpsFacts};
use crate::layout::{CUBEMASTER, CUBE_OPS};
use crate::plan::{ControlPlaneAddr, CubePlan, Role};

const CONTROL_PLANE_POLL: Duration = Duration::from_secs(10);
/// Overrides the CubeOps address a compute node derives from
/// `ONE_CLICK_CONTROL_PLANE_IP` (docs/guide/multi-node-deploy.md).
pub const CUBEOPS_ADDR_KEY: &str = "ONE_CLICK_CONTROL_PLANE_CUBEOPS_ADDR";

/// The cluster's ops-agent token (CubeSandbox: scripts/systemd/
/// prepare-compute-role.sh, the ops-agent README).
pub const OPS_TOKEN_KEY: &str = "CUBE_OPS_OPSAGENT_TOKEN";

/// The ops-agent token for `.env` (a secret: never in the environment or
/// on a command line). Upstream's prepare-compute-role.sh reads it from
/// `.one-click.env`, which the installer copies from the bundle's `.env`;
/// install.sh neither generates nor replaces it, so the control node's
/// CubeOps and every compute node's ops-agent get the one planned value.
/// A bundle whose facts require it, without one in the plan (or the
/// operator's `extra_env`), stops here rather than in the installer.
pub fn ops_token(cube: &CubePlan) -> Result<BTreeMap<String, String>> {
    let mut secrets = BTreeMap::new();
    if let Some(token) = &cube.ops_token {
        secrets.insert(OPS_TOKEN_KEY.to_string(), token.clone());
        return Ok(secrets);
    }
    let role = match cube.role {
        Role::Control => BundleRole::Control,
        Role::Compute => BundleRole::Compute,
    };
    let required = cube.bundle.as_ref().and_then(|b| {
        b.required_env
            .iter()
            .find(|r| r.key == OPS_TOKEN_KEY && (r.role == role || r.role == BundleRole::All))
    });
    match required {
        Some(r) if !cube.extra_env.contains_key(OPS_TOKEN_KEY) => Err(StepFailure::new(format!(
            "this bundle's {} requires {OPS_TOKEN_KEY} for the {} role, and the plan has no cube.ops_token",
            r.source,
            cube.role.as_str()
        ))
        .hint("build the payload with the cluster's ops-agent token (the same value for the control node and every compute node)")
        .into()),
        _ => Ok(secrets),
    }
}

/// The plan's cluster CIDR, refused when it overlaps anything on this host
/// (every node must use the same one, so there is no other to pick).
pub fn cluster_cidr_fits(planned: &Ipv4Net, host: &HostNetwork) -> Result<String> {
    let conflicts = host.conflicts(planned);
    if !conflicts.is_empty() {
        return Err(StepFailure::new(format!(
            "cube.cluster_cidr {planned} overlaps {} on this host",
            conflicts.join(", ")
        ))
        .hint("every node of the cluster uses the cluster CIDR: build the payloads with one that no node's addresses, routes or nameservers overlap")
        .into());
    }
    Ok(format!("sandbox network: the cluster's {planned}"))
}

/// Where a compute node's control plane is: the plan's `control_plane_ip`,
/// as `IP` (CubeMaster on 8089) or `IP:PORT`, and for bundles with CubeOps
/// the CubeOps address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub ip: String,
    pub port: u16,
    /// CubeOps' `host:port` with where its quickcheck reads a node's
    /// registration; `None` for bundles from before CubeOps.
    pub cube_ops: Option<(String, CubeOpsFacts)>,
}

impl ControlPlane {
    /// CubeMaster's address alone (a bundle from before CubeOps), on
    /// CubeMaster's port unless the plan names another.
    pub fn from_planned(planned: Option<ControlPlaneAddr>) -> Result<Self> {
        let Some(addr) = planned else {
            return Err(
                StepFailure::new("cube.control_plane_ip is required for the compute role").into(),
            );
        };
        Ok(Self {
            ip: addr.ip.to_string(),
            port: addr.port.unwrap_or(CUBEMASTER.port),
            cube_ops: None,
        })
    }

    /// The plan's control plane, with CubeOps where the bundle's facts say
    /// compute nodes register there: the operator's
    /// `ONE_CLICK_CONTROL_PLANE_CUBEOPS_ADDR` if set (it takes precedence
    /// upstream too), else the control plane's IP on the bundle's CubeOps port.
    pub fn for_plan(cube: &CubePlan) -> Result<Self> {
        let mut cp = Self::from_planned(cube.control_plane_ip)?;
        if let Some(ops) = cube.bundle.as_ref().and_then(|b| b.cube_ops.as_ref()) {
            let addr = cube
                .extra_env
                .get(CUBEOPS_ADDR_KEY)
                .cloned()
                .unwrap_or_else(|| format!("{}:{}", cp.ip, ops.port));
            cp.cube_ops = Some((addr, ops.clone()));
        }
        Ok(cp)
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn health_url(&self) -> String {
        format!("http://{}/notify/health", self.addr())
    }

    /// Where the bundle's own quickcheck reads this node's registration,
    /// and the field its answer must carry: CubeOps' record for bundles
    /// with CubeOps (scripts/one-click/quickcheck.sh,
    /// check_node_registration: `"IP":"<ip>"`), CubeMaster's before.
    pub fn registration(&self, node_ip: &str) -> (String, String) {
        let url = match &self.cube_ops {
            Some((addr, ops)) => format!(
                "http://{addr}{}",
                ops.registration_path.replace("{ip}", node_ip)
            ),
            None => format!("http://{}{CUBEMASTER_NODES}{node_ip}", self.addr()),
        };
        let needle = registration_needle(&url, node_ip);
        (url, needle)
    }

    /// The installer's names for this control plane. Upstream's compute
    /// preflight (lib/common.sh, check_compute_control_plane_preflight)
    /// needs the IP or CubeMaster's address and dies when both are set and
    /// the address is not `<ip>:8089`, so exactly one of them; the IP also
    /// expands to `<ip>:3010` for CubeOps, so CubeOps' address is sent only
    /// when that expansion would be wrong or there is no IP to expand.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let ip_sent = self.port == CUBEMASTER.port;
        if ip_sent {
            env.insert("ONE_CLICK_CONTROL_PLANE_IP".into(), self.ip.clone());
        } else {
            env.insert(
                "ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR".into(),
                self.addr(),
            );
        }
        if let Some((addr, _)) = &self.cube_ops {
            if !ip_sent || *addr != format!("{}:{}", self.ip, CUBE_OPS.port) {
                env.insert(CUBEOPS_ADDR_KEY.into(), addr.clone());
            }
        }
        env
    }

    /// What must answer before the compute install starts: CubeMaster;
    /// with CubeOps also CubeOps (Cubelet registers there) and the control
    /// node's bundled MinIO when the node's object storage is that MinIO
    /// (the endpoint is on the control plane's IP).
    pub fn prerequisites(&self, s3_endpoint: Option<&str>) -> Vec<(&'static str, String)> {
        let mut want = vec![("CubeMaster", self.health_url())];
        if let Some((addr, _)) = &self.cube_ops {
            want.push(("CubeOps", format!("http://{addr}/health")));
            let minio = s3_endpoint
                .and_then(|e| e.strip_prefix("http://"))
                .map(|e| e.trim_end_matches('/'))
                .filter(|hostport| {
                    hostport.split_once(':').map_or(*hostport, |(h, _)| h) == self.ip
                });
            if let Some(hostport) = minio {
                want.push(("MinIO", format!("http://{hostport}/minio/health/live")));
            }
        }
        want
    }
}

/// CubeMaster's node registry (bundles from before CubeOps).
const CUBEMASTER_NODES: &str = "/internal/meta/nodes/";

/// What a registration answer at `url` must contain for this node:
/// CubeMaster's record names it `host_ip`, CubeOps' `IP`.
pub fn registration_needle(url: &str, node_ip: &str) -> String {
    if url.contains(CUBEMASTER_NODES) {
        format!("\"host_ip\":\"{node_ip}\"")
    } else {
        format!("\"IP\":\"{node_ip}\"")
    }
}

/// Wait (bounded by one budget, reported) until everything `cp` needs
/// answers, in order.
pub fn wait_for_control_plane(
    host: &dyn Host,
    cp: &ControlPlane,
    s3_endpoint: Option<&str>,
    budget: Duration,
) -> Result<()> {
    let start = super::super::host::unix_secs(host.now());
    for (name, url) in cp.prerequisites(s3_endpoint) {
        let spent = super::super::host::unix_secs(host.now()).saturating_sub(start);
        let left = Duration::from_secs(budget.as_secs().saturating_sub(spent));
        host.say(&format!("waiting for the control plane's {name} at {url}"));
        http::poll(
            host,
            left,
            CONTROL_PLANE_POLL,
            |e, waited| {
                host.say(&format!(
                    "control plane not answering yet ({e:#}); waited {} s of {} s",
                    spent + waited,
                    budget.as_secs()
                ));
            },
            || http::get(&url),
        )
        .map_err(|e| {
            let ports = if cp.cube_ops.is_some() {
                "8089, 3010 and 9000/tcp"
            } else {
                "8089/tcp"
            };
            StepFailure::new(format!(
                "control plane {url} did not answer within {} s: {e:#}",
                budget.as_secs()
            ))
            .hint(format!(
                "install the control node first; compute nodes need {ports} to it"
            ))
        })?;
        host.say(&format!("control plane {url} answers"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle_facts::BundleFacts;

    fn plan(control_plane_ip: &str, ops_port: Option<u16>) -> CubePlan {
        let mut cube = crate::plan::testing::sample_plan().cube;
        cube.control_plane_ip = Some(control_plane_ip.parse().unwrap());
        cube.bundle = ops_port.map(|port| BundleFacts {
            version: "v0.6.0".into(),
            arch: "amd64".into(),
            pvm_version: None,
            cube_ops: Some(CubeOpsFacts {
                port,
                registration_path: "/internal/v1/nodes/{ip}".into(),
            }),
            required_env: Vec::new(),
            listeners: Vec::new(),
            unknown: Vec::new(),
        });
        cube
    }

    fn env_of(cube: &CubePlan) -> Vec<(String, String)> {
        ControlPlane::for_plan(cube)
            .unwrap()
            .env()
            .into_iter()
            .collect()
    }

    #[test]
    fn default_ports_send_the_ip_alone() {
        for ops in [None, Some(3010)] {
            assert_eq!(
                env_of(&plan("10.0.0.5", ops)),
                [("ONE_CLICK_CONTROL_PLANE_IP".into(), "10.0.0.5".into())]
            );
        }
    }

    #[test]
    fn custom_ports_send_the_addresses_the_ip_would_get_wrong() {
        assert_eq!(
            env_of(&plan("10.0.0.5", Some(3011))),
            [
                (
                    "ONE_CLICK_CONTROL_PLANE_CUBEOPS_ADDR".into(),
                    "10.0.0.5:3011".into()
                ),
                ("ONE_CLICK_CONTROL_PLANE_IP".into(), "10.0.0.5".into()),
            ]
        );
        // No IP to expand: CubeOps' address even on its default port.
        assert_eq!(
            env_of(&plan("10.0.0.5:8090", Some(3010))),
            [
                (
                    "ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR".into(),
                    "10.0.0.5:8090".into()
                ),
                (
                    "ONE_CLICK_CONTROL_PLANE_CUBEOPS_ADDR".into(),
                    "10.0.0.5:3010".into()
                ),
            ]
        );
        // Before CubeOps, as before.
        assert_eq!(
            env_of(&plan("10.0.0.5:8090", None)),
            [(
                "ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR".into(),
                "10.0.0.5:8090".into()
            )]
        );
        // The operator's own CubeOps address wins, and is what we wait for.
        let mut cube = plan("10.0.0.5", Some(3010));
        cube.extra_env
            .insert(CUBEOPS_ADDR_KEY.into(), "10.0.0.6:3010".into());
        let cp = ControlPlane::for_plan(&cube).unwrap();
        assert_eq!(cp.env()[CUBEOPS_ADDR_KEY], "10.0.0.6:3010");
        assert_eq!(cp.prerequisites(None)[1].1, "http://10.0.0.6:3010/health");
    }

    #[test]
    fn registration_is_read_where_the_bundles_quickcheck_reads_it() {
        let ops = ControlPlane::for_plan(&plan("10.0.0.5", Some(3010))).unwrap();
        assert_eq!(
            ops.registration("10.0.0.9"),
            (
                "http://10.0.0.5:3010/internal/v1/nodes/10.0.0.9".into(),
                "\"IP\":\"10.0.0.9\"".into()
            )
        );
        let old = ControlPlane::for_plan(&plan("10.0.0.5", None)).unwrap();
        assert_eq!(
            old.registration("10.0.0.9").0,
            "http://10.0.0.5:8089/internal/meta/nodes/10.0.0.9"
        );
    }

    #[test]
    fn the_control_nodes_minio_is_waited_for_only_when_it_is_the_object_storage() {
        let cp = ControlPlane::for_plan(&plan("10.0.0.5", Some(3010))).unwrap();
        let names = |s3| -> Vec<&str> { cp.prerequisites(s3).iter().map(|p| p.0).collect() };
        assert_eq!(names(None), ["CubeMaster", "CubeOps"]);
        assert_eq!(
            names(Some("https://cos.example.com")),
            ["CubeMaster", "CubeOps"]
        );
        assert_eq!(
            cp.prerequisites(Some("http://10.0.0.5:9000"))[2],
            ("MinIO", "http://10.0.0.5:9000/minio/health/live".into())
        );
        let old = ControlPlane::for_plan(&plan("10.0.0.5", None)).unwrap();
        assert_eq!(old.prerequisites(Some("http://10.0.0.5:9000")).len(), 1);
    }
}
