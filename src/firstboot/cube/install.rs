//! Run the one-click installer (facts §2, §3, §6, §17 step 4): from a fresh
//! extraction of the re-verified bundle, with `--node-ip` and
//! `--mode=install`, the planned environment, the `.env` pitfall defused
//! (it is sourced OVER the environment, §3.1), a free sandbox CIDR, and an
//! overall timeout (#1753: installs can hang for hours).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::super::host::{CommandSpec, Host};
use super::super::journal::facts;
use super::super::{cache_path, Ctx, Outcome, StepFailure};
use super::cidr::{self, CidrChoice, HostNetwork};
use super::{
    bundle, envfile, http, pvm_enabled, real, CREDENTIALS_PATH, DNSMASQ_MODE_FACT, INSTALL_LOG,
};
use crate::plan::Role;

/// CubeMaster's port; compute nodes talk to it (multi-node-deploy.md, §2.4).
pub const CUBEMASTER_PORT: u16 = 8089;
/// CubeAPI's port (§14).
pub const CUBE_API_PORT: u16 = 3000;
/// How long a compute node waits for its control plane before giving up.
pub const CONTROL_PLANE_WAIT: Duration = Duration::from_secs(20 * 60);
const CONTROL_PLANE_POLL: Duration = Duration::from_secs(10);
/// Grace after the timeout's TERM before KILL, and our own backstop beyond it.
const KILL_AFTER_SECS: u64 = 30;
/// Keys of the generated credentials (facts §14), control role only.
pub const CREDENTIAL_KEYS: [&str; 4] = [
    "CUBE_SANDBOX_MYSQL_ROOT_PASSWORD",
    "CUBE_SANDBOX_MYSQL_PASSWORD",
    "CUBE_SANDBOX_REDIS_PASSWORD",
    "E2B_API_KEY",
];

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let plan = ctx.plan;

    // The host's network, read once: node IP and CIDR both come from it.
    let network = read_network(host)?;
    // A dry run does not run `ip`, so it may not know the address.
    let node_ip = match resolve_node_ip(&plan.cube.node_ip, &network) {
        Err(_) if host.is_dry_run() => "<node-ip>".to_string(),
        other => other?,
    };
    ctx.journal.set_fact(facts::NODE_IP, node_ip.clone());

    // A compute node installs only once its control plane answers.
    let control_plane = match plan.cube.role {
        Role::Control => None,
        Role::Compute => Some(ControlPlane::parse(plan.cube.control_plane_ip.as_deref())?),
    };
    if control_plane.is_some() && !plan.cube.extra_env.contains_key("CUBE_S3_ENDPOINT") {
        // Newer installers refuse a compute node without S3 (facts §2.3).
        ctx.journal.warn(
            "compute role without CUBE_S3_ENDPOINT in the plan's extra_env: newer Cube installers require it",
        );
    }
    if let Some(cp) = &control_plane {
        if host.is_dry_run() {
            host.say(&format!("dry run: would wait for {}", cp.health_url()));
        } else {
            wait_for_control_plane(host, cp, CONTROL_PLANE_WAIT)?;
        }
    }

    // A sandbox CIDR that overlaps nothing on the host (§4.2 step 9).
    let cidr = if plan
        .cube
        .extra_env
        .contains_key("CUBE_SANDBOX_NETWORK_CIDR")
    {
        None
    } else {
        match cidr::choose_cidr(&network.parsed)? {
            CidrChoice::Default => None,
            CidrChoice::Alternative { cidr, reason } => {
                host.say(&format!("sandbox network: {reason}; using {cidr}"));
                ctx.journal.set_fact(facts::NETWORK_CIDR, cidr.to_string());
                Some(cidr.to_string())
            }
        }
    };

    // The bundle: re-verified, then extracted fresh (no leftovers, no old .env).
    let asset = &plan.assets.bundle;
    let cached = cache_path(asset);
    bundle::verify(host, &cached, &asset.sha256)?;
    let dir = bundle::extract_dir(&asset.sha256);
    host.remove_dir_all(&dir)?;
    let stem = bundle::stem(&asset.name);
    let top = if host.is_dry_run() {
        stem.to_string()
    } else {
        bundle::extract_verified(host, &cached, &asset.sha256, &dir)?
    };
    if top != stem {
        // online-install.sh refuses this too (§1).
        return Err(StepFailure::new(format!(
            "bundle {} extracts to {top:?}, expected a directory named {stem:?}",
            asset.name
        ))
        .into());
    }
    let bundle_dir = format!("{dir}/{top}");
    let install_sh = format!("{bundle_dir}/install.sh");
    if !host.exists(&install_sh) && !host.is_dry_run() {
        return Err(StepFailure::new(format!("bundle {} has no install.sh", asset.name)).into());
    }

    // The environment, and the same values in .env, which wins over it.
    let env = planned_env(ctx, &node_ip, control_plane.as_ref(), cidr.as_deref());
    let dotenv = format!("{bundle_dir}/.env");
    let had_dotenv = host.exists(&dotenv);
    let mut dotenv_values = env.clone();
    if plan.cube.hardening && plan.cube.role == Role::Control {
        // Secrets go to .env only: the environment shows up in command logs.
        for (k, v) in ensure_credentials(ctx)? {
            if !plan.cube.extra_env.contains_key(&k) {
                dotenv_values.insert(k, v);
            }
        }
    }
    if had_dotenv || plan.cube.hardening {
        let old = host.read_optional(&dotenv)?.unwrap_or_default();
        host.write_atomic(
            &dotenv,
            envfile::upsert(&old, &dotenv_values).as_bytes(),
            0o600,
        )?;
        if had_dotenv {
            host.say(
                "bundle ships .env (it overrides the environment): planned values written into it",
            );
        }
    }

    // Run it under an overall timeout; `timeout` signals the whole process
    // group, so the installer's children die with it.
    // `timeout 0` would mean no timeout at all.
    let secs = plan.cube.install_timeout_secs.max(1);
    let mut cmd = CommandSpec::new("timeout")
        .args([
            format!("--kill-after={KILL_AFTER_SECS}"),
            secs.to_string(),
            "bash".into(),
            "-c".into(),
            // One stream, in order, like the console shows it.
            "exec bash \"$0\" \"$@\" 2>&1".into(),
            real(host, &install_sh),
            format!("--node-ip={node_ip}"),
            "--mode=install".into(),
        ])
        .cwd(bundle_dir.clone())
        .timeout(Duration::from_secs(secs + KILL_AFTER_SECS + 30))
        .allow_failure();
    for (k, v) in &env {
        cmd = cmd.env(k.clone(), v.clone());
    }
    host.say(&format!(
        "running the Cube installer ({} role, node IP {node_ip}, CUBE_PVM_ENABLE={}, timeout {secs} s)",
        plan.cube.role.as_str(),
        env.get("CUBE_PVM_ENABLE").map_or("?", String::as_str)
    ));
    // Streamed to the console as it runs; kept whole in the log.
    let out = host.run_streaming(&cmd, &mut |line| host.say(&format!("install | {line}")))?;
    let output = format!("{}{}", out.stdout, out.stderr);
    let log = format!("# cubeboot: {}\n{output}", cmd.display());
    host.write_atomic(INSTALL_LOG, log.as_bytes(), 0o600)?;

    // coreutils timeout exits 124 on TERM, 137 when it had to KILL.
    if out.timed_out || matches!(out.code, Some(124 | 137)) {
        return Err(StepFailure::new(format!(
            "cube installer timed out after {secs} s; log: {INSTALL_LOG}"
        ))
        .hint("the installer hung (CubeSandbox #1753: services that never start); see the diagnostics")
        .into());
    }
    if !out.success() {
        let last = output
            .lines()
            .rev()
            .find(|l| l.contains("ERROR"))
            .or_else(|| output.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output")
            .trim()
            .to_string();
        return Err(StepFailure::new(format!(
            "cube installer failed ({}): {last}; log: {INSTALL_LOG}",
            out.code
                .map_or("killed by a signal".into(), |c| format!("exit {c}"))
        ))
        .into());
    }
    Ok(Outcome::Done(format!(
        "installed the {} role at {node_ip} (CUBE_PVM_ENABLE={})",
        plan.cube.role.as_str(),
        env.get("CUBE_PVM_ENABLE").map_or("?", String::as_str)
    )))
}

/// `ip -j addr`, `ip -j route` and resolv.conf, parsed.
pub struct Network {
    pub addrs: Vec<(String, cidr::Ipv4Net)>,
    pub default_dev: Option<String>,
    pub parsed: HostNetwork,
}

pub fn read_network(host: &dyn Host) -> Result<Network> {
    let addr_json = host
        .run(&CommandSpec::new("ip").args(["-j", "addr"]))?
        .stdout;
    let route_json = host
        .run(&CommandSpec::new("ip").args(["-j", "route"]))?
        .stdout;
    let resolv = host.read_optional("/etc/resolv.conf")?.unwrap_or_default();
    Ok(Network {
        addrs: cidr::parse_ip_addr(&addr_json)?,
        default_dev: cidr::default_route_dev(&route_json)?,
        parsed: HostNetwork::parse(&addr_json, &route_json, &resolv)?,
    })
}

/// The planned IP, or for `auto` the first IPv4 of the default-route
/// interface, else the first global IPv4 (the installer's `detect_node_ip`,
/// §2.4, done here so the IP is known, recorded and passed explicitly).
pub fn resolve_node_ip(planned: &str, net: &Network) -> Result<String> {
    if planned != "auto" {
        planned.parse::<Ipv4Addr>().map_err(|_| {
            StepFailure::new(format!(
                "cube.node_ip {planned:?} is neither \"auto\" nor an IPv4 address"
            ))
        })?;
        return Ok(planned.to_string());
    }
    let on_default = net
        .default_dev
        .as_ref()
        .and_then(|dev| net.addrs.iter().find(|(i, _)| i == dev));
    on_default
        .or_else(|| net.addrs.first())
        .map(|(_, a)| a.addr.to_string())
        .ok_or_else(|| {
            StepFailure::new("cannot find the node IP: no IPv4 address on the default-route interface or any other")
                .hint("set node_ip in the plan (cubeboot build --node-ip)")
                .into()
        })
}

/// Where a compute node's CubeMaster is: the plan's `control_plane_ip`, as
/// `IP` (port 8089) or `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub ip: String,
    pub port: u16,
}

impl ControlPlane {
    pub fn parse(planned: Option<&str>) -> Result<Self> {
        let Some(s) = planned.filter(|s| !s.is_empty()) else {
            return Err(
                StepFailure::new("cube.control_plane_ip is required for the compute role").into(),
            );
        };
        let (ip, port) = match s.rsplit_once(':') {
            Some((ip, port)) => (ip, port.parse::<u16>().ok()),
            None => (s, Some(CUBEMASTER_PORT)),
        };
        match (ip.parse::<Ipv4Addr>(), port) {
            (Ok(_), Some(port)) => Ok(Self {
                ip: ip.to_string(),
                port,
            }),
            _ => Err(StepFailure::new(format!(
                "cube.control_plane_ip {s:?} is not an IPv4 address (optionally with :port)"
            ))
            .into()),
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn health_url(&self) -> String {
        format!("http://{}/notify/health", self.addr())
    }
}

/// Wait (bounded, reported) until CubeMaster on the control plane answers.
pub fn wait_for_control_plane(host: &dyn Host, cp: &ControlPlane, budget: Duration) -> Result<()> {
    let url = cp.health_url();
    host.say(&format!("waiting for the control plane at {url}"));
    http::poll(
        host,
        budget,
        CONTROL_PLANE_POLL,
        |e, waited| {
            host.say(&format!(
                "control plane not answering yet ({e:#}); waited {waited} s of {} s",
                budget.as_secs()
            ));
        },
        || http::get(&url),
    )
    .map_err(|e| {
        StepFailure::new(format!(
            "control plane {url} did not answer within {} s: {e:#}",
            budget.as_secs()
        ))
        .hint("install the control node first; compute nodes need 8089/tcp to it")
    })?;
    host.say(&format!("control plane {url} answers"));
    Ok(())
}

/// What the installer must see, in the environment and in `.env`.
pub fn planned_env(
    ctx: &Ctx,
    node_ip: &str,
    control_plane: Option<&ControlPlane>,
    cidr: Option<&str>,
) -> BTreeMap<String, String> {
    let plan = ctx.plan;
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set("CUBE_PVM_ENABLE", if pvm_enabled(ctx) { "1" } else { "0" });
    set("ONE_CLICK_DEPLOY_ROLE", plan.cube.role.as_str());
    set("CUBE_SANDBOX_NODE_IP", node_ip);
    if let Some(cp) = control_plane {
        set("ONE_CLICK_CONTROL_PLANE_IP", &cp.ip);
        if cp.port != CUBEMASTER_PORT {
            set("ONE_CLICK_CONTROL_PLANE_CUBEMASTER_ADDR", &cp.addr());
        }
    }
    if let Some(m) = &plan.cube.mirror {
        set("MIRROR", m);
    }
    if let Some(c) = cidr {
        set("CUBE_SANDBOX_NETWORK_CIDR", c);
    }
    if ctx.journal.fact(DNSMASQ_MODE_FACT) == Some("standalone") {
        set("CUBE_PROXY_DNSMASQ_MODE", "standalone");
    }
    // Hardening option A (§14): CubeMaster and CubeAPI on the private IP,
    // not 127.0.0.1 (the WebUI container reaches CubeAPI from outside).
    if plan.cube.hardening && plan.cube.role == Role::Control {
        set("CUBEMASTER_HTTP_BIND", node_ip);
        set("CUBE_API_BIND", &format!("{node_ip}:{CUBE_API_PORT}"));
        set(
            "CUBE_API_HEALTH_ADDR",
            &format!("{node_ip}:{CUBE_API_PORT}"),
        );
    }
    for (k, v) in &plan.cube.extra_env {
        set(k, v);
    }
    env
}

/// Random credentials for the control role, generated once and kept
/// root-only at [`CREDENTIALS_PATH`] so a re-run installs the same ones.
pub fn ensure_credentials(ctx: &Ctx) -> Result<BTreeMap<String, String>> {
    let host = ctx.host;
    if let Some(text) = host.read_optional(CREDENTIALS_PATH)? {
        let existing = envfile::parse(&text);
        if CREDENTIAL_KEYS.iter().all(|k| existing.contains_key(*k)) {
            return Ok(existing);
        }
    }
    let mut creds = BTreeMap::new();
    for k in CREDENTIAL_KEYS {
        let bytes = host.random_bytes(20).context("generating credentials")?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let value = if k == "E2B_API_KEY" {
            format!("e2b_{hex}")
        } else {
            hex
        };
        creds.insert(k.to_string(), value);
    }
    let text = format!(
        "# Generated by cubeboot; do not edit. Cube Sandbox credentials (root only).\n{}",
        envfile::upsert("", &creds).replace(&format!("{}\n", envfile::MARKER), "")
    );
    host.write_atomic(CREDENTIALS_PATH, text.as_bytes(), 0o600)?;
    Ok(creds)
}
