//! Where Cube's services listen: one table, read by the helper's install
//! (what to pass the installer), verify (where to probe) and harden (what
//! to bind or firewall). Adding a Cube port is a row here.
//! docs/cube-installer.md ("Services, binds and the installer's own
//! checks") names the upstream file behind each row.

/// Which nodes run a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRole {
    Control,
    Compute,
    /// Every node (Cubelet runs on both roles).
    All,
}

/// One TCP listener of a Cube service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// The service as upstream names it.
    pub name: &'static str,
    pub port: u16,
    pub role: ServiceRole,
    /// The `.env` key (or config key) that sets its bind address, if any.
    pub bind_key: Option<&'static str>,
    /// Dropped by harden's firewall unless the source is in `allow_from`.
    pub restricted: bool,
    /// Only in bundles with CubeOps (the plan's bundle facts say so).
    pub cube_ops_era: bool,
}

const fn service(
    name: &'static str,
    port: u16,
    role: ServiceRole,
    bind_key: Option<&'static str>,
    restricted: bool,
) -> Service {
    Service {
        name,
        port,
        role,
        bind_key,
        restricted,
        cube_ops_era: false,
    }
}

/// A row of the CubeOps era.
const fn since_cube_ops(service: Service) -> Service {
    Service {
        cube_ops_era: true,
        ..service
    }
}

use crate::bundle_facts::BundleFacts;
use ServiceRole::{All, Control};

/// CubeMaster's HTTP; compute nodes talk to it (upstream fixes 8089 for
/// `ONE_CLICK_CONTROL_PLANE_IP`, lib/common.sh).
pub const CUBEMASTER: Service = service(
    "CubeMaster",
    8089,
    Control,
    Some("CUBEMASTER_HTTP_BIND"),
    true,
);
/// CubeAPI (docs/guide/network-hardening.md).
pub const CUBE_API: Service = service("CubeAPI", 3000, Control, Some("CUBE_API_BIND"), true);
/// Cubelet's gRPC, HTTP and debug listeners (Cubelet/config/config.toml).
pub const CUBELET_GRPC: Service =
    service("Cubelet gRPC", 9999, All, Some("[grpc] tcp_address"), true);
pub const CUBELET_HTTP: Service = service("Cubelet HTTP", 9998, All, Some("[http] address"), true);
pub const CUBELET_DEBUG: Service =
    service("Cubelet debug", 9966, All, Some("[debug] address"), true);
/// The WebUI (Docker publishes it on every address).
pub const WEBUI: Service = service("WebUI", 12088, Control, None, true);
/// MinIO (bundled object storage; compute nodes reach it for S3).
pub const MINIO: Service = service("MinIO", 9000, Control, None, true);
/// CubeOps (scripts/systemd/cubeops-start.sh: `CUBE_OPS_BIND`, default
/// 0.0.0.0:3010). It stays on every address: the WebUI container reaches it
/// through host.docker.internal:3010 and the WebUI's start probes
/// 127.0.0.1:3010, so harden firewalls it. Compute nodes register with it.
pub const CUBE_OPS: Service = since_cube_ops(service(
    "CubeOps",
    3010,
    Control,
    Some("CUBE_OPS_BIND"),
    true,
));
/// ops-agent on every node that runs Cubelet: prepare-compute-role.sh
/// rewrites its config with `listen_addr: "0.0.0.0:8890"` before each
/// Cubelet start, so only a firewall holds; CubeOps pushes to it.
pub const OPS_AGENT: Service = since_cube_ops(service("ops-agent", 8890, All, None, true));
/// cube-lifecycle-manager, a host-network container on the control node
/// (`:8083`).
pub const LIFECYCLE_MANAGER: Service =
    since_cube_ops(service("cube-lifecycle-manager", 8083, Control, None, true));
/// cube-proxy's ports: open by design (the sandboxes' public entry;
/// `CUBE_PROXY_HTTP_PORT`, `CUBE_PROXY_HTTPS_PORT` in env.example), even
/// when a bundle's facts list them among its listeners.
pub const CUBE_PROXY: Service = service("cube-proxy", 9090, Control, None, false);
pub const CUBE_PROXY_HTTP: Service = service("cube-proxy HTTP", 80, Control, None, false);
pub const CUBE_PROXY_HTTPS: Service = service("cube-proxy HTTPS", 443, Control, None, false);

/// Every Cube listener cubeboot knows, in the firewall's order.
pub const SERVICES: [Service; 13] = [
    CUBEMASTER,
    CUBELET_GRPC,
    CUBELET_HTTP,
    CUBE_API,
    WEBUI,
    MINIO,
    CUBELET_DEBUG,
    CUBE_OPS,
    OPS_AGENT,
    LIFECYCLE_MANAGER,
    CUBE_PROXY,
    CUBE_PROXY_HTTP,
    CUBE_PROXY_HTTPS,
];

/// The ports harden's firewall admits only from `allow_from` for a bundle
/// with these facts (none: a bundle from before CubeOps): the table's,
/// then each further listener the facts name (a newer bundle's service
/// cubeboot has no row for yet), each once, in the table's order.
pub fn restricted_ports_for(facts: Option<&BundleFacts>) -> Vec<u16> {
    let cube_ops = facts.is_some_and(|f| f.cube_ops.is_some());
    let mut ports = restricted_ports(
        facts
            .iter()
            .flat_map(|f| f.listeners.iter().map(|l| l.port)),
    );
    if !cube_ops {
        ports.retain(|p| !SERVICES.iter().any(|s| s.port == *p && s.cube_ops_era));
    }
    ports
}

/// [`restricted_ports_for`] a bundle with CubeOps, plus `extra`.
pub fn restricted_ports(extra: impl IntoIterator<Item = u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = SERVICES
        .iter()
        .filter(|s| s.restricted)
        .map(|s| s.port)
        .collect();
    for p in extra {
        let open = SERVICES.iter().any(|s| s.port == p && !s.restricted);
        if !open && !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_is_one_row() {
        for (i, s) in SERVICES.iter().enumerate() {
            assert!(
                SERVICES[i + 1..].iter().all(|o| o.port != s.port),
                "{} twice",
                s.port
            );
        }
    }

    #[test]
    fn bundle_listeners_extend_the_restricted_set_once() {
        let base = restricted_ports([]);
        assert_eq!(
            base,
            [8089, 9999, 9998, 3000, 12088, 9000, 9966, 3010, 8890, 8083]
        );
        // Before CubeOps, the set harden always had.
        assert_eq!(
            restricted_ports_for(None),
            [8089, 9999, 9998, 3000, 12088, 9000, 9966]
        );
        // cube-proxy's public ports stay open whatever the facts list.
        assert_eq!(restricted_ports([80, 443, 9090]), base);
        let more = restricted_ports([9966, 8090, 9090, 8090]);
        assert_eq!(more[..base.len()], base[..]);
        assert_eq!(more[base.len()..], [8090]);
    }
}
