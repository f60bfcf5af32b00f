//! Where things live on the target, and where Cube's services listen: one
//! leaf module both halves read, so `plan.json` and this file are the whole
//! contract between the builder and the helper.
//!
//! - Paths: where the builder's user-data and overlay put the plan, the
//!   helper and its unit, and where the helper keeps its state, cache, log
//!   and status (docs/payloads.md, "cloud-init").
//! - Units: the names and templates of the systemd units that start the
//!   helper, and the links `systemctl enable` makes for them.
//! - Ports: one table, read by the helper's install (what to pass the
//!   installer), verify (where to probe) and harden (what to bind or
//!   firewall). Adding a Cube port is a row here. docs/cube-installer.md
//!   ("Services, binds and the installer's own checks") names the upstream
//!   file behind each row.

/// Where the builder's user-data (or an image overlay) puts the plan.
pub const PLAN_PATH: &str = "/etc/cubeboot/plan.json";
/// The helper binary; the unit's `ExecStart=` runs it.
pub const HELPER_PATH: &str = "/usr/local/sbin/cube-firstboot";
/// Where the bootstrap downloads the helper (or user-data writes an inline
/// one) before checking its SHA-256 and installing it at [`HELPER_PATH`].
pub const HELPER_DOWNLOAD_PATH: &str = "/var/lib/cubeboot/cube-firstboot.download";

/// Where the helper keeps durable state on the target.
pub const STATE_DIR: &str = "/var/lib/cubeboot";
pub const JOURNAL_PATH: &str = "/var/lib/cubeboot/state.json";
/// Verified downloads, each named by its SHA-256 (an overlay built with
/// `--offline` fills it).
pub const CACHE_DIR: &str = "/var/lib/cubeboot/cache";
pub const STATUS_PATH: &str = "/run/cubeboot/status.json";
pub const LOG_DIR: &str = "/var/log/cubeboot";

/// Where unit files and their enable links go.
pub const SYSTEMD_DIR: &str = "/etc/systemd/system";

/// The unit that runs the helper after cloud-init on the first boot.
pub const UNIT_NAME: &str = "cube-firstboot.service";
pub const UNIT_PATH: &str = "/etc/systemd/system/cube-firstboot.service";
/// Its file, as user-data and overlays install it (why each line: see the
/// file).
pub const UNIT_FILE: &str = include_str!("../templates/cube-firstboot.service");
/// Where its `WantedBy=cloud-init.target` links it (the builder's overlay
/// and `systemctl enable` make this link).
pub const MAIN_LINK: &str = "/etc/systemd/system/cloud-init.target.wants/cube-firstboot.service";

/// The unit the helper hands over to right before its reboot: it starts
/// the helper as soon as the network is up.
pub const RESUME_UNIT_NAME: &str = "cube-firstboot-resume.service";
pub const RESUME_UNIT_PATH: &str = "/etc/systemd/system/cube-firstboot-resume.service";
pub const RESUME_UNIT_FILE: &str = include_str!("../templates/cube-firstboot-resume.service");
pub const RESUME_LINK: &str =
    "/etc/systemd/system/multi-user.target.wants/cube-firstboot-resume.service";

/// The links `systemctl enable` would create for `unit_name`, from the unit's
/// `[Install]` section: `WantedBy=` → `<target>.wants/`, `RequiredBy=` →
/// `<target>.requires/`, each in [`SYSTEMD_DIR`].
pub fn wants_links(unit: &str, unit_name: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut in_install = false;
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let suffix = match key.trim() {
            "WantedBy" => "wants",
            "RequiredBy" => "requires",
            _ => continue,
        };
        for target in value.split_whitespace() {
            let link = format!("{SYSTEMD_DIR}/{target}.{suffix}/{unit_name}");
            if !links.contains(&link) {
                links.push(link);
            }
        }
    }
    links
}

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
    fn unit_paths_and_links_agree_with_their_parts() {
        assert_eq!(UNIT_PATH, format!("{SYSTEMD_DIR}/{UNIT_NAME}"));
        assert_eq!(
            RESUME_UNIT_PATH,
            format!("{SYSTEMD_DIR}/{RESUME_UNIT_NAME}")
        );
        assert_eq!(wants_links(UNIT_FILE, UNIT_NAME), [MAIN_LINK]);
        assert_eq!(
            wants_links(RESUME_UNIT_FILE, RESUME_UNIT_NAME),
            [RESUME_LINK]
        );
        for dir in [JOURNAL_PATH, CACHE_DIR, HELPER_DOWNLOAD_PATH] {
            assert!(dir.starts_with(&format!("{STATE_DIR}/")), "{dir}");
        }
    }

    #[test]
    fn unit_templates_run_the_helper_where_the_builder_puts_it() {
        for unit in [UNIT_FILE, RESUME_UNIT_FILE] {
            let line = |key: &str| {
                unit.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(line("ExecStart="), format!("{HELPER_PATH} run"));
            assert_eq!(line("ConditionPathExists="), PLAN_PATH);
        }
    }

    #[test]
    fn wants_links_follow_the_install_section_only() {
        let unit = "[Unit]\nWantedBy=ignored.target\n[Service]\nExecStart=/x\n\n[Install]\n# WantedBy=commented.target\nWantedBy=cloud-init.target multi-user.target\nRequiredBy = other.target\nWantedBy=cloud-init.target\n";
        assert_eq!(
            wants_links(unit, "cube-firstboot.service"),
            vec![
                "/etc/systemd/system/cloud-init.target.wants/cube-firstboot.service",
                "/etc/systemd/system/multi-user.target.wants/cube-firstboot.service",
                "/etc/systemd/system/other.target.requires/cube-firstboot.service",
            ]
        );
        assert!(wants_links("[Service]\nExecStart=/x\n", "u.service").is_empty());
    }

    #[test]
    fn shipped_unit_is_enabled_for_cloud_init_target() {
        // The unit the builder embeds starts after cloud-init (docs/payloads.md,
        // "cloud-init").
        assert_eq!(
            wants_links(UNIT_FILE, UNIT_NAME),
            vec!["/etc/systemd/system/cloud-init.target.wants/cube-firstboot.service"]
        );
    }

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
