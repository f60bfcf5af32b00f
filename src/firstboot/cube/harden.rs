//! Hardening (facts §14, upstream docs/guide/network-hardening.md, options
//! A + B): CubeMaster/CubeAPI bound to the private IP (written into `.env`
//! before the install, checked here), Cubelet's binds edited in config.toml
//! and Cubelet restarted, host firewall rules admitting the control ports
//! only from `allow_from`, and the generated credentials kept root-only.

use std::net::IpAddr;

use anyhow::{Context, Result};

use super::super::host::CommandSpec;
use super::super::journal::facts;
use super::super::{Ctx, Outcome, StepFailure};
use super::cidr::Ipv4Net;
use super::{envfile, real, CREDENTIALS_PATH, INSTALL_ROOT};
use crate::plan::Role;

/// Ports admitted only from `allow_from` (§14: CubeMaster, Cubelet gRPC,
/// CubeAPI, WebUI). 22, 80, 443 stay open: the policy is accept.
pub const RESTRICTED_PORTS: [u16; 4] = [8089, 9999, 3000, 12088];
pub const FIREWALL_PATH: &str = "/etc/cubeboot/firewall.nft";
pub const FIREWALL_UNIT: &str = "cubeboot-firewall.service";
pub const FIREWALL_UNIT_PATH: &str = "/etc/systemd/system/cubeboot-firewall.service";
pub const CUBELET_UNIT: &str = "cube-sandbox-cubelet.service";
pub const CUBELET_CONFIG: &str = "/usr/local/services/cubetoolbox/Cubelet/config/config.toml";

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let plan = ctx.plan;
    if !plan.cube.hardening {
        return Ok(Outcome::Skipped("hardening is off in the plan".into()));
    }
    let node_ip = ctx
        .journal
        .fact(facts::NODE_IP)
        .map_or_else(|| plan.cube.node_ip.clone(), str::to_string);
    let mut done = Vec::new();

    // Option A: binds. CubeMaster/CubeAPI came from .env at install time;
    // confirm the installer kept them.
    if plan.cube.role == Role::Control && !host.is_dry_run() {
        let env_path = format!("{INSTALL_ROOT}/.one-click.env");
        let installed = envfile::parse(&host.read_optional(&env_path)?.unwrap_or_default());
        if installed.get("CUBEMASTER_HTTP_BIND").map(String::as_str) != Some(node_ip.as_str()) {
            return Err(StepFailure::new(format!(
                "CUBEMASTER_HTTP_BIND in {env_path} is {:?}, expected {node_ip:?}",
                installed
                    .get("CUBEMASTER_HTTP_BIND")
                    .map_or("", String::as_str)
            ))
            .into());
        }
        done.push(format!("CubeMaster/CubeAPI bound to {node_ip}"));
    }
    // Cubelet's binds live in config.toml and need a restart (§14).
    if let Some(text) = host.read_optional(CUBELET_CONFIG)? {
        let edited = bind_cubelet(&text, &node_ip);
        if edited != text {
            host.write_atomic(CUBELET_CONFIG, edited.as_bytes(), 0o644)?;
            // Restart only a running Cubelet; a stopped one reads the file when it starts.
            let active = host.run(
                &CommandSpec::new("systemctl")
                    .args(["is-active", CUBELET_UNIT])
                    .allow_failure(),
            )?;
            if active.stdout.trim() == "active" {
                let out = host.run(
                    &CommandSpec::new("systemctl")
                        .args(["restart", CUBELET_UNIT])
                        .allow_failure(),
                )?;
                if !out.success() {
                    return Err(StepFailure::new(format!(
                        "restarting Cubelet after binding it to {node_ip} failed: {}",
                        out.stderr.trim()
                    ))
                    .into());
                }
            } else {
                host.say(&format!(
                    "{CUBELET_UNIT} is not running; its new binds apply when it starts"
                ));
            }
        }
        done.push(format!("Cubelet bound to {node_ip}"));
    } else {
        host.say(&format!(
            "warning: {CUBELET_CONFIG} not found; Cubelet binds unchanged"
        ));
    }

    // Option B: firewall, when the plan names the networks to admit.
    if plan.cube.allow_from.is_empty() {
        let w = "hardening: no allow_from networks in the plan, so ports 8089, 9999, 3000, 12088 stay open to every network (CubeMaster and Cubelet have no auth)";
        host.say(w);
        ctx.journal.warn(w);
    } else {
        let ruleset = firewall_ruleset(&plan.cube.allow_from)?;
        host.write_atomic(FIREWALL_PATH, ruleset.as_bytes(), 0o600)?;
        let file = real(host, FIREWALL_PATH);
        host.run(&CommandSpec::new("nft").args(["-c", "-f", &file]))?;
        host.run(&CommandSpec::new("nft").args(["-f", &file]))?;
        host.write_atomic(FIREWALL_UNIT_PATH, firewall_unit().as_bytes(), 0o644)?;
        host.run(&CommandSpec::new("systemctl").args(["enable", FIREWALL_UNIT]))?;
        done.push(format!(
            "ports {} only from {}",
            RESTRICTED_PORTS.map(|p| p.to_string()).join(","),
            plan.cube.allow_from.join(", ")
        ));
    }

    // Credentials: generated at install; here only their file's safety.
    if plan.cube.role == Role::Control && !host.is_dry_run() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(host.path(CREDENTIALS_PATH))
            .map(|m| m.permissions().mode() & 0o777)
            .with_context(|| format!("reading {CREDENTIALS_PATH}"))?;
        if mode != 0o600 {
            return Err(StepFailure::new(format!(
                "{CREDENTIALS_PATH} has mode {mode:o}, expected 600"
            ))
            .into());
        }
        done.push(format!("credentials in {CREDENTIALS_PATH}"));
    }
    Ok(Outcome::Done(done.join("; ")))
}

/// Rewrite `address`/`tcp_address` values bound to all addresses onto the
/// node IP, keeping ports and everything else.
pub fn bind_cubelet(config: &str, node_ip: &str) -> String {
    let mut out = String::new();
    for line in config.lines() {
        let t = line.trim_start();
        let is_bind = ["tcp_address", "address"].iter().any(|k| {
            t.strip_prefix(k)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        if is_bind && line.contains("\"0.0.0.0:") {
            out.push_str(&line.replacen("\"0.0.0.0:", &format!("\"{node_ip}:"), 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// An nftables ruleset in its own table (other rules stay untouched):
/// accept by default, drop the restricted ports unless the source is in
/// `allow_from`, loopback, or a Docker bridge (the WebUI container reaches
/// CubeAPI through host.docker.internal, §14).
pub fn firewall_ruleset(allow_from: &[String]) -> Result<String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (i, net) in allow_from.iter().enumerate() {
        let (addr, prefix) = net.split_once('/').unwrap_or((net.as_str(), ""));
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {
                let n = Ipv4Net::parse(net)
                    .map_err(|e| StepFailure::new(format!("cube.allow_from[{i}]: {e:#}")))?;
                v4.push(n.network().to_string());
            }
            Ok(IpAddr::V6(_))
                if prefix.is_empty() || prefix.parse::<u8>().is_ok_and(|p| p <= 128) =>
            {
                v6.push(net.clone());
            }
            _ => {
                return Err(StepFailure::new(format!(
                    "cube.allow_from[{i}]: {net:?} is not an IP network"
                ))
                .into())
            }
        }
    }
    let ports = RESTRICTED_PORTS.map(|p| p.to_string()).join(", ");
    let mut s = String::from(
        "# Generated by cubeboot; do not edit.\n\
         # Cube Sandbox control ports only from the plan's allow_from (network-hardening.md).\n\
         table inet cubeboot\n\
         delete table inet cubeboot\n\
         table inet cubeboot {\n",
    );
    if !v4.is_empty() {
        s.push_str(&format!(
            "  set allow_v4 {{\n    type ipv4_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n",
            v4.join(", ")
        ));
    }
    if !v6.is_empty() {
        s.push_str(&format!(
            "  set allow_v6 {{\n    type ipv6_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n",
            v6.join(", ")
        ));
    }
    s.push_str(
        "  chain input {\n    type filter hook input priority filter - 1; policy accept;\n    iif \"lo\" accept\n    iifname { \"docker0\", \"br-*\" } accept\n",
    );
    if !v4.is_empty() {
        s.push_str(&format!(
            "    ip saddr @allow_v4 tcp dport {{ {ports} }} accept\n"
        ));
    }
    if !v6.is_empty() {
        s.push_str(&format!(
            "    ip6 saddr @allow_v6 tcp dport {{ {ports} }} accept\n"
        ));
    }
    s.push_str(&format!("    tcp dport {{ {ports} }} drop\n  }}\n}}\n"));
    Ok(s)
}

/// Loads the ruleset at every boot, before the network comes up.
pub fn firewall_unit() -> String {
    format!(
        "# Generated by cubeboot; do not edit.\n\
         [Unit]\n\
         Description=cubeboot: Cube Sandbox port restrictions\n\
         DefaultDependencies=no\n\
         Before=network-pre.target\n\
         Wants=network-pre.target\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/usr/sbin/nft -f {FIREWALL_PATH}\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubelet_binds_move_to_the_node_ip() {
        let cfg = "eth_name = \"eth0\"\ntcp_address = \"0.0.0.0:9999\"\n\n[http]\naddress = \"0.0.0.0:9998\"\nother_address = \"0.0.0.0:1\"\n";
        assert_eq!(
            bind_cubelet(cfg, "10.0.0.5"),
            "eth_name = \"eth0\"\ntcp_address = \"10.0.0.5:9999\"\n\n[http]\naddress = \"10.0.0.5:9998\"\nother_address = \"0.0.0.0:1\"\n"
        );
    }

    #[test]
    fn ruleset_admits_only_the_planned_networks() {
        let rs = firewall_ruleset(&["10.0.0.7/24".into(), "fd00::/64".into()]).unwrap();
        assert!(rs.contains("elements = { 10.0.0.0/24 }"), "{rs}");
        assert!(rs.contains("elements = { fd00::/64 }"), "{rs}");
        assert!(rs.contains("ip saddr @allow_v4 tcp dport { 8089, 9999, 3000, 12088 } accept"));
        assert!(rs.ends_with("    tcp dport { 8089, 9999, 3000, 12088 } drop\n  }\n}\n"));
        assert!(!rs.contains(" 22") && !rs.contains("443"));
    }

    #[test]
    fn bad_networks_name_their_index() {
        let err = firewall_ruleset(&["10.0.0.0/8".into(), "example.com".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cube.allow_from[1]: \"example.com\" is not an IP network"
        );
        let err = firewall_ruleset(&["10.0.0.0/40".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cube.allow_from[0]: \"10.0.0.0/40\" has an invalid prefix length"
        );
    }
}
