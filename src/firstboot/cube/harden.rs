//! Hardening (upstream docs/guide/network-hardening.md, options A + B):
//! CubeMaster/CubeAPI bound to the private IP (passed to the installer
//! before the install), Cubelet's binds edited in config.toml and Cubelet
//! restarted, host firewall rules admitting the internal ports only from
//! `allow_from`, and the generated credentials kept root-only. Each is
//! checked by its result: the sockets that listen (/proc/net/tcp{,6}) and
//! the rules nft reports, not the keys an installer version writes.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result};

use super::super::host::{unix_secs, CommandSpec, Host};
use super::super::{Ctx, Outcome, StepFailure};
use super::cidr::Ipv4Net;
use super::install::{CUBEMASTER_PORT, CUBE_API_PORT};
use super::listeners::{self, Listener};
use super::{real, CREDENTIALS_PATH};
use crate::plan::Role;

/// Ports admitted only from `allow_from` (network-hardening.md: CubeMaster,
/// Cubelet gRPC and HTTP, CubeAPI, WebUI, MinIO; Cubelet's debug listener).
/// 22, 80, 443 and 9090 (cube-proxy) stay open: the policy is accept.
pub const RESTRICTED_PORTS: [u16; 7] = [8089, 9999, 9998, 3000, 12088, 9000, 9966];
pub const FIREWALL_PATH: &str = "/etc/cubeboot/firewall.nft";
pub const FIREWALL_UNIT: &str = "cubeboot-firewall.service";
pub const FIREWALL_UNIT_PATH: &str = "/etc/systemd/system/cubeboot-firewall.service";
pub const CUBELET_UNIT: &str = "cube-sandbox-cubelet.service";
pub const CUBELET_CONFIG: &str = "/usr/local/services/cubetoolbox/Cubelet/config/config.toml";
/// Cubelet's TCP listeners (CubeSandbox: Cubelet/config/config.toml).
pub const CUBELET_HTTP_PORT: u16 = 9998;
pub const CUBELET_GRPC_PORT: u16 = 9999;
pub const CUBELET_DEBUG_PORT: u16 = 9966;
/// How long a restarted Cubelet may take to listen again.
pub const CUBELET_RESTART_BUDGET: Duration = Duration::from_secs(60);
const LISTEN_POLL: Duration = Duration::from_secs(2);

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let plan = ctx.plan;
    if !plan.cube.hardening {
        return Ok(Outcome::Skipped("hardening is off in the plan".into()));
    }
    let node_ip = ctx
        .journal
        .facts
        .node_ip
        .as_deref()
        .map_or_else(|| plan.cube.node_ip.clone(), str::to_string);
    let mut done = Vec::new();

    // Option A: CubeMaster and CubeAPI got their binds at install time;
    // judge by where they listen.
    if plan.cube.role == Role::Control {
        host.check_change("where CubeMaster and CubeAPI listen", &mut || {
            let listening = listeners::read(host)?;
            let mut open = Vec::new();
            let mut where_ = Vec::new();
            for (name, port) in [("CubeMaster", CUBEMASTER_PORT), ("CubeAPI", CUBE_API_PORT)] {
                let here = listeners::on_port(&listening, port);
                if here.iter().any(Listener::is_wildcard) {
                    open.push(format!("{name} listens on {}", listeners::describe(&here)));
                } else {
                    where_.push(format!("{name} on {}", listeners::describe(&here)));
                }
            }
            if !open.is_empty() {
                return Err(StepFailure::new(format!(
                    "hardening: {}, expected {node_ip} or loopback",
                    open.join("; ")
                ))
                .hint("the installer did not apply CUBEMASTER_HTTP_BIND/CUBE_API_BIND; see the diagnostics")
                .into());
            }
            done.push(where_.join(", "));
            Ok(())
        })?;
    }

    // Cubelet's binds live in config.toml and need a restart.
    done.push(harden_cubelet(host, &node_ip)?);

    // Option B: firewall, when the plan names the networks to admit.
    if plan.cube.allow_from.is_empty() {
        let exposed = exposed_ports(host)?;
        let w = if exposed.is_empty() {
            "hardening: no allow_from networks in the plan, so no firewall rules; none of Cube's internal ports listens beyond loopback and the node IP".to_string()
        } else {
            open_ports_warning(&exposed)
        };
        host.say(&w);
        ctx.journal.warn(w);
    } else {
        let ruleset = firewall_ruleset(&plan.cube.allow_from)?;
        host.write_atomic(FIREWALL_PATH, ruleset.as_bytes(), 0o600)?;
        let file = real(host, FIREWALL_PATH);
        host.run(&CommandSpec::new("nft").args(["-c", "-f", &file]))?;
        host.run(&CommandSpec::new("nft").args(["-f", &file]))?;
        host.write_atomic(FIREWALL_UNIT_PATH, firewall_unit().as_bytes(), 0o644)?;
        host.run(&CommandSpec::new("systemctl").args(["enable", FIREWALL_UNIT]))?;
        // The rules the kernel holds now, not the file we wrote.
        host.check_change("the loaded firewall rules", &mut || {
            let loaded = host.run(
                &CommandSpec::new("nft")
                    .args(["list", "table", "inet", "cubeboot"])
                    .read_only(),
            )?;
            let missing = unguarded_ports(&loaded.stdout);
            if !missing.is_empty() {
                return Err(StepFailure::new(format!(
                    "firewall: nft list table inet cubeboot shows no drop rule for port(s) {}",
                    missing
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
            Ok(())
        })?;
        done.push(format!(
            "ports {} only from {}",
            RESTRICTED_PORTS.map(|p| p.to_string()).join(","),
            plan.cube.allow_from.join(", ")
        ));
    }

    // Credentials: generated at install; here only their file's safety.
    if plan.cube.role == Role::Control {
        host.check_change(&format!("the mode of {CREDENTIALS_PATH}"), &mut || {
            let mode = host
                .metadata(CREDENTIALS_PATH)?
                .with_context(|| format!("reading {CREDENTIALS_PATH}: no such file"))?
                .mode
                & 0o777;
            if mode != 0o600 {
                return Err(StepFailure::new(format!(
                    "{CREDENTIALS_PATH} has mode {mode:o}, expected 600"
                ))
                .into());
            }
            done.push(format!("credentials in {CREDENTIALS_PATH}"));
            Ok(())
        })?;
    }
    Ok(Outcome::Done(done.join("; ")))
}

/// Rebind Cubelet, restart it if it runs, and prove the result by its
/// listeners: HTTP and gRPC on the node IP, debug on loopback.
fn harden_cubelet(host: &dyn Host, node_ip: &str) -> Result<String> {
    let Some(text) = host.read_optional(CUBELET_CONFIG)? else {
        host.say(&format!(
            "warning: {CUBELET_CONFIG} not found; Cubelet binds unchanged"
        ));
        return Ok("no Cubelet config".into());
    };
    let edited = bind_cubelet(&text, node_ip);
    if edited != text {
        host.write_atomic(CUBELET_CONFIG, edited.as_bytes(), 0o644)?;
    }
    // Restart only a running Cubelet; a stopped one reads the file when it starts.
    let active = host.run(
        &CommandSpec::new("systemctl")
            .args(["is-active", CUBELET_UNIT])
            .read_only()
            .allow_failure(),
    )?;
    let running = active.stdout.trim() == "active";
    if running && edited != text {
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
    }
    let mut result = format!("Cubelet bound to {node_ip}");
    host.check_change(&format!("Cubelet's listeners for {node_ip}"), &mut || {
        result = cubelet_listening(host, node_ip, running)?;
        Ok(())
    })?;
    Ok(result)
}

/// Wait (bounded) until Cubelet listens where its new binds say.
fn cubelet_listening(host: &dyn Host, node_ip: &str, running: bool) -> Result<String> {
    if !running {
        host.say(&format!(
            "{CUBELET_UNIT} is not running; its new binds apply when it starts"
        ));
    }
    let ip: IpAddr = node_ip
        .parse()
        .with_context(|| format!("node IP {node_ip:?}"))?;
    let want = [
        (CUBELET_HTTP_PORT, ip),
        (CUBELET_GRPC_PORT, ip),
        (CUBELET_DEBUG_PORT, IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    // A restarted Cubelet takes a moment to listen again.
    let start = unix_secs(host.now());
    loop {
        let listening = listeners::read(host)?;
        let wrong = cubelet_misplaced(&listening, &want, running);
        if wrong.is_empty() {
            return Ok(if running {
                format!("Cubelet listens on {node_ip}:{CUBELET_HTTP_PORT},{CUBELET_GRPC_PORT} and 127.0.0.1:{CUBELET_DEBUG_PORT}")
            } else {
                format!("Cubelet config bound to {node_ip} (not running)")
            });
        }
        if unix_secs(host.now()).saturating_sub(start) + LISTEN_POLL.as_secs()
            > CUBELET_RESTART_BUDGET.as_secs()
        {
            return Err(StepFailure::new(format!(
                "Cubelet after rebinding: {}",
                wrong.join("; ")
            ))
            .hint("Cubelet kept its old binds; check Cubelet/config/config.toml and the Cubelet log in the diagnostics")
            .into());
        }
        host.sleep(LISTEN_POLL);
    }
}

/// What is wrong with Cubelet's listeners against `want`: a port open on
/// all interfaces, or (when Cubelet runs) not on the intended address.
fn cubelet_misplaced(listening: &[Listener], want: &[(u16, IpAddr)], running: bool) -> Vec<String> {
    let mut wrong = Vec::new();
    for (port, addr) in want {
        let here = listeners::on_port(listening, *port);
        let everywhere = here.iter().any(Listener::is_wildcard);
        let elsewhere = running && !here.iter().any(|l| l.addr == *addr);
        if everywhere || elsewhere {
            wrong.push(format!(
                "port {port} listens on {}, expected {}",
                listeners::describe(&here),
                listeners::host_port(*addr, *port)
            ));
        }
    }
    wrong
}

/// Restricted ports that listen beyond loopback.
fn exposed_ports(host: &dyn Host) -> Result<Vec<(u16, String)>> {
    let listening = listeners::read(host)?;
    Ok(RESTRICTED_PORTS
        .iter()
        .filter(|p| !listeners::exposed(&listening, **p).is_empty())
        .map(|p| (*p, listeners::describe(&listeners::exposed(&listening, *p))))
        .collect())
}

/// Who listens on a restricted port, and when it takes requests without
/// credentials (CubeSandbox: docs/guide/network-hardening.md; CubeAPI
/// checks none unless AUTH_CALLBACK_URL is set, MinIO wants its keys).
fn restricted_service(port: u16) -> (&'static str, Option<&'static str>) {
    match port {
        8089 => ("CubeMaster", Some("CubeMaster")),
        9999 => ("Cubelet gRPC", Some("Cubelet gRPC")),
        9998 => ("Cubelet HTTP", Some("Cubelet HTTP")),
        9966 => ("Cubelet debug", Some("Cubelet debug")),
        3000 => ("CubeAPI", Some("CubeAPI unless AUTH_CALLBACK_URL is set")),
        12088 => ("WebUI", Some("WebUI")),
        9000 => ("MinIO", None),
        _ => ("a Cube service", None),
    }
}

/// The warning for restricted ports left open, each named by its service.
fn open_ports_warning(exposed: &[(u16, String)]) -> String {
    let named: Vec<String> = exposed
        .iter()
        .map(|(port, at)| format!("{} on {at}", restricted_service(*port).0))
        .collect();
    let no_auth: Vec<&str> = exposed
        .iter()
        .filter_map(|(port, _)| restricted_service(*port).1)
        .collect();
    let mut w = format!(
        "hardening: no allow_from networks in the plan, so {} stay open to every network",
        named.join(", ")
    );
    if !no_auth.is_empty() {
        w.push_str(&format!(" (no auth: {})", no_auth.join(", ")));
    }
    w
}

/// Restricted ports that `nft list` output does not drop.
pub fn unguarded_ports(nft_list: &str) -> Vec<u16> {
    let drops: Vec<&str> = nft_list
        .lines()
        .filter(|l| l.contains("tcp dport") && l.trim_end().ends_with("drop"))
        .collect();
    RESTRICTED_PORTS
        .iter()
        .copied()
        .filter(|p| {
            !drops.iter().any(|l| {
                l.split(|c: char| !c.is_ascii_digit())
                    .any(|w| w == p.to_string())
            })
        })
        .collect()
}

/// Point Cubelet's TCP listeners that take every address (upstream writes
/// port-only `":9998"`; `"0.0.0.0:9998"` and `"[::]:9998"` mean the same)
/// at the node IP, and the `[debug]` listener at loopback. Unix socket
/// paths and everything else stay as they are.
pub fn bind_cubelet(config: &str, node_ip: &str) -> String {
    let mut out = String::new();
    let mut section = String::new();
    for line in config.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            section = t.trim_end().to_string();
        }
        let key = ["tcp_address", "address"].into_iter().find(|k| {
            t.strip_prefix(k)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        let value = key.and_then(|_| {
            let (_, v) = t.split_once('=')?;
            let v = v.trim().strip_prefix('"')?.split('"').next()?;
            Some(v.to_string())
        });
        let port = value.as_deref().and_then(|v| {
            ["", "0.0.0.0", "[::]"]
                .iter()
                .find_map(|w| v.strip_prefix(&format!("{w}:")))
                .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                .map(str::to_string)
        });
        match (key, value, port) {
            (Some(_), Some(v), Some(port)) => {
                let to = if section == "[debug]" {
                    "127.0.0.1"
                } else {
                    node_ip
                };
                out.push_str(&line.replacen(&format!("\"{v}\""), &format!("\"{to}:{port}\""), 1));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// An nftables ruleset in its own table (other rules stay untouched):
/// accept by default, drop the restricted ports unless the source is in
/// `allow_from`, loopback, or a Docker bridge (the WebUI container reaches
/// CubeAPI through host.docker.internal, network-hardening.md).
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
    fn open_ports_are_named_by_their_service() {
        // Port 3000 is CubeAPI's, not Cubelet's (issue 22 §12).
        assert_eq!(
            open_ports_warning(&[(3000, "10.0.2.15:3000".into())]),
            "hardening: no allow_from networks in the plan, so CubeAPI on 10.0.2.15:3000 stay open to every network (no auth: CubeAPI unless AUTH_CALLBACK_URL is set)"
        );
        assert_eq!(
            open_ports_warning(&[(9998, "10.0.2.15:9998".into()), (9000, "10.0.2.15:9000".into())]),
            "hardening: no allow_from networks in the plan, so Cubelet HTTP on 10.0.2.15:9998, MinIO on 10.0.2.15:9000 stay open to every network (no auth: Cubelet HTTP)"
        );
    }

    #[test]
    fn cubelet_binds_move_to_the_node_ip() {
        let cfg = "eth_name = \"eth0\"\ntcp_address = \"0.0.0.0:9999\"\n\n[http]\naddress = \"0.0.0.0:9998\"\nother_address = \"0.0.0.0:1\"\n";
        assert_eq!(
            bind_cubelet(cfg, "10.0.0.5"),
            "eth_name = \"eth0\"\ntcp_address = \"10.0.0.5:9999\"\n\n[http]\naddress = \"10.0.0.5:9998\"\nother_address = \"0.0.0.0:1\"\n"
        );
    }

    #[test]
    fn upstream_port_only_binds_move_too_and_sockets_stay() {
        // As CubeSandbox: Cubelet/config/config.toml writes them.
        let cfg = "[http]\n  address = \":9998\"\n[grpc]\n  address = \"/data/cubelet/cubelet.sock\"\n  tcp_address = \":9999\"\n[debug]\n  address = \":9966\"\n[x]\n  address = \"[::]:7\"\n";
        assert_eq!(
            bind_cubelet(cfg, "10.0.0.5"),
            "[http]\n  address = \"10.0.0.5:9998\"\n[grpc]\n  address = \"/data/cubelet/cubelet.sock\"\n  tcp_address = \"10.0.0.5:9999\"\n[debug]\n  address = \"127.0.0.1:9966\"\n[x]\n  address = \"10.0.0.5:7\"\n"
        );
    }

    #[test]
    fn nft_listing_must_drop_every_internal_port() {
        let rs = firewall_ruleset(&["10.0.0.0/24".into()]).unwrap();
        assert!(unguarded_ports(&rs).is_empty(), "{rs}");
        let old = "    tcp dport { 8089, 9999, 3000, 12088 } drop\n";
        assert_eq!(unguarded_ports(old), [9998, 9000, 9966]);
    }

    #[test]
    fn ruleset_admits_only_the_planned_networks() {
        let rs = firewall_ruleset(&["10.0.0.7/24".into(), "fd00::/64".into()]).unwrap();
        assert!(rs.contains("elements = { 10.0.0.0/24 }"), "{rs}");
        assert!(rs.contains("elements = { fd00::/64 }"), "{rs}");
        assert!(rs.contains(
            "ip saddr @allow_v4 tcp dport { 8089, 9999, 9998, 3000, 12088, 9000, 9966 } accept"
        ));
        assert!(rs.ends_with(
            "    tcp dport { 8089, 9999, 9998, 3000, 12088, 9000, 9966 } drop\n  }\n}\n"
        ));
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
