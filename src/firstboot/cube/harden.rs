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
use super::firewall;
use super::listeners::{self, Listener};
use super::CREDENTIALS_PATH;
use crate::layout::{self, CUBELET_DEBUG, CUBELET_GRPC, CUBELET_HTTP, CUBEMASTER, CUBE_API};
use crate::plan::Role;
pub const CUBELET_UNIT: &str = "cube-sandbox-cubelet.service";
pub const CUBELET_CONFIG: &str = "/usr/local/services/cubetoolbox/Cubelet/config/config.toml";
/// How long a restarted Cubelet may take to listen again.
pub const CUBELET_RESTART_BUDGET: Duration = Duration::from_secs(60);
const LISTEN_POLL: Duration = Duration::from_secs(2);

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let plan = ctx.plan;
    if !plan.cube.hardening {
        return Ok(Outcome::Skipped("hardening is off in the plan".into()));
    }
    let node_ip = super::installed_node_ip(ctx)?;
    let mut done = Vec::new();
    let ports = layout::restricted_ports_for(plan.cube.bundle.as_ref());

    // Option A: CubeMaster and CubeAPI got their binds at install time;
    // judge by where they listen.
    if plan.cube.role == Role::Control {
        host.check_change("where CubeMaster and CubeAPI listen", &mut || {
            let listening = listeners::read(host)?;
            let mut open = Vec::new();
            let mut where_ = Vec::new();
            for (name, port) in [(CUBEMASTER.name, CUBEMASTER.port), (CUBE_API.name, CUBE_API.port)] {
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
    done.push(harden_cubelet(host, node_ip)?);

    // Option B: firewall, when the plan names the networks to admit.
    if plan.cube.allow_from.is_empty() {
        let exposed = exposed_ports(host, &ports)?;
        let w = if exposed.is_empty() {
            "hardening: no allow_from networks in the plan, so no firewall rules; none of Cube's internal ports listens beyond loopback and the node IP".to_string()
        } else {
            open_ports_warning(&exposed)
        };
        host.say(&w);
        ctx.journal.warn(w);
    } else {
        let mut loaded = firewall::load(host, &plan.cube.allow_from, &ports)?;
        // By behaviour: a client outside allow_from must be refused on every
        // restricted port, those Docker publishes included (issue 21).
        let mut warning = None;
        host.check_change("the firewall from outside allow_from", &mut || {
            warning = firewall::prove_closed(host, node_ip, &plan.cube.allow_from, &ports)?;
            if warning.is_none() {
                loaded.push_str(" (probed: refused from outside)");
            }
            Ok(())
        })?;
        done.push(loaded);
        if let Some(w) = warning {
            host.say(&w);
            ctx.journal.warn(w);
        }
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
fn harden_cubelet(host: &dyn Host, node_ip: Ipv4Addr) -> Result<String> {
    let Some(text) = host.read_optional(CUBELET_CONFIG)? else {
        host.say(&format!(
            "warning: {CUBELET_CONFIG} not found; Cubelet binds unchanged"
        ));
        return Ok("no Cubelet config".into());
    };
    let edited = bind_cubelet(&text, &node_ip.to_string());
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
fn cubelet_listening(host: &dyn Host, node_ip: Ipv4Addr, running: bool) -> Result<String> {
    if !running {
        host.say(&format!(
            "{CUBELET_UNIT} is not running; its new binds apply when it starts"
        ));
    }
    let ip = IpAddr::V4(node_ip);
    let want = [
        (CUBELET_HTTP.port, ip),
        (CUBELET_GRPC.port, ip),
        (CUBELET_DEBUG.port, IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    // A restarted Cubelet takes a moment to listen again.
    let start = unix_secs(host.now());
    loop {
        let listening = listeners::read(host)?;
        let wrong = cubelet_misplaced(&listening, &want, running);
        if wrong.is_empty() {
            return Ok(if running {
                format!(
                    "Cubelet listens on {node_ip}:{},{} and 127.0.0.1:{}",
                    CUBELET_HTTP.port, CUBELET_GRPC.port, CUBELET_DEBUG.port
                )
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
fn exposed_ports(host: &dyn Host, ports: &[u16]) -> Result<Vec<(u16, String)>> {
    let listening = listeners::read(host)?;
    Ok(ports
        .iter()
        .filter(|p| !listeners::exposed(&listening, **p).is_empty())
        .map(|p| (*p, listeners::describe(&listeners::exposed(&listening, *p))))
        .collect())
}

/// Who listens on a restricted port, and when it takes requests without
/// credentials (CubeSandbox: docs/guide/network-hardening.md; CubeAPI
/// checks none unless AUTH_CALLBACK_URL is set, MinIO wants its keys).
fn restricted_service(port: u16) -> (&'static str, Option<&'static str>) {
    let name = layout::SERVICES
        .iter()
        .find(|s| s.port == port)
        .map_or("a Cube service", |s| s.name);
    let no_auth = match port {
        3000 => Some("CubeAPI unless AUTH_CALLBACK_URL is set"),
        8089 | 9999 | 9998 | 9966 | 12088 => Some(name),
        _ => None,
    };
    (name, no_auth)
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
}
