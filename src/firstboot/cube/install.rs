//! Run the one-click installer (docs/cube-installer.md): from a fresh
//! extraction of the re-verified bundle, with `--node-ip` and an explicit
//! `--mode`, the planned environment, the `.env` pitfall defused (it is
//! sourced OVER the environment), a free sandbox CIDR, and an overall
//! timeout (CubeSandbox #1753: installs can hang for hours).
//!
//! [`run`] reads the host, then: [`prepare`] (pure: what to pass), [`stage`]
//! (bundle and `.env` on disk), [`run_installer`] (the one long command), and
//! [`verdict`] (pure: what its exit and output mean).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::super::host::{CommandSpec, Host};
use super::super::journal::{DnsmasqMode, Quickcheck};
use super::super::{cache_path, Ctx, Outcome, StepFailure};
pub use super::bundle::{bundle_egress_bootstraps_from_cubelet, bundle_supports_standalone_dns};
use super::cidr::{self, CidrChoice, HostNetwork};
use super::join::{cluster_cidr_fits, ops_token, wait_for_control_plane, ControlPlane};
use super::{bundle, envfile, pvm_enabled, real, CREDENTIALS_PATH, INSTALL_LOG};
use crate::layout::{CUBELET_HTTP, CUBEMASTER, CUBE_API};
use crate::net::Ipv4Net;
use crate::plan::{CubePlan, NodeIp, Role};

/// Grace after the timeout's TERM before KILL, and our own backstop beyond it.
const KILL_AFTER_SECS: u64 = 30;
/// Keys of the generated credentials (network-hardening.md), control role only.
pub const CREDENTIAL_KEYS: [&str; 4] = [
    "CUBE_SANDBOX_MYSQL_ROOT_PASSWORD",
    "CUBE_SANDBOX_MYSQL_PASSWORD",
    "CUBE_SANDBOX_REDIS_PASSWORD",
    "E2B_API_KEY",
];
/// What upstream's quickcheck prints last on success (scripts/one-click/quickcheck.sh).
pub const QUICKCHECK_OK: &str = "[quickcheck] OK";

/// `--mode` for the installer: always explicit, because without it an
/// existing install silently turns the run into a config-merging upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    Upgrade,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Upgrade => "upgrade",
        }
    }
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    run_mode(ctx, Mode::Install)
}

/// The whole step, for a fresh install or an upgrade of this node.
pub fn run_mode(ctx: &mut Ctx, mode: Mode) -> Result<Outcome> {
    let host = ctx.host;
    let plan = ctx.plan;

    // Read the host: its network (node IP, CIDR) and what earlier steps found.
    let network = read_network(host)?;
    let input = Input {
        cube: &plan.cube,
        pvm: pvm_enabled(ctx),
        dnsmasq: ctx.journal.facts.dnsmasq_mode,
    };
    let prepared = prepare(&input, &network)?;
    ctx.journal.facts.node_ip = Some(prepared.node_ip);
    for w in &prepared.warnings {
        ctx.journal.warn(w.clone());
    }
    if let Some(c) = &prepared.cidr_note {
        host.say(c);
        ctx.journal.facts.network_cidr = prepared.cidr;
    }

    // A compute node installs only once its control plane answers.
    if let Some(cp) = &prepared.control_plane {
        // Stays: a dry run's sleeps are no-ops, so polling would spin for the budget.
        if host.is_dry_run() {
            host.say(&format!("dry run: would wait for {}", cp.health_url()));
        } else {
            let budget = Duration::from_secs(plan.cube.control_plane_wait_secs);
            let s3 = prepared
                .secrets
                .get(S3_ENDPOINT_KEY)
                .or(prepared.env.get(S3_ENDPOINT_KEY));
            wait_for_control_plane(host, cp, s3.map(String::as_str), budget)?;
        }
    }

    let staged = stage(ctx, prepared)?;
    let timeout = plan.cube.install_timeout_secs;
    let run = run_installer(host, &ctx.progress, &staged, mode, timeout)?;
    ctx.journal.facts.installer_quickcheck = Some(run.quickcheck());
    verdict(&run, &staged, mode).map_err(Into::into)
}

/// What [`prepare`] needs besides the network.
pub struct Input<'a> {
    pub cube: &'a CubePlan,
    pub pvm: bool,
    /// The `cube-prereqs` finding about DNS (journal fact `cube.dnsmasq-mode`).
    pub dnsmasq: Option<DnsmasqMode>,
}

/// Everything decided before touching the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub node_ip: Ipv4Addr,
    pub control_plane: Option<ControlPlane>,
    /// For the environment and `.env`.
    pub env: BTreeMap<String, String>,
    /// For `.env` only (secrets stay off command lines and logs).
    pub secrets: BTreeMap<String, String>,
    /// The sandbox network passed as `CUBE_SANDBOX_NETWORK_CIDR`, when
    /// cubeboot chose it (the cluster's, or a free one).
    pub cidr: Option<Ipv4Net>,
    pub cidr_note: Option<String>,
    pub warnings: Vec<String>,
}

/// Decide node IP, control plane, CIDR and the installer's environment.
pub fn prepare(input: &Input<'_>, network: &Network) -> Result<Prepared> {
    let cube = input.cube;
    // A dry run runs `ip` too (read-only), so the address is the real one.
    let node_ip = resolve_node_ip(cube.node_ip, network)?;
    let control_plane = match cube.role {
        Role::Control => None,
        Role::Compute => Some(ControlPlane::for_plan(cube)?),
    };
    let mut warnings = Vec::new();
    let mut secrets = ops_token(cube)?;
    if control_plane.is_some() {
        match &cube.s3 {
            Some(s3) => secrets.extend(s3.env()),
            None if !cube.extra_env.contains_key(S3_ENDPOINT_KEY) => warnings.push(
                "compute role without the control node's CUBE_S3_* (optional upstream): this node will have no S3 volume plugin (cubeboot build --s3-env)".to_string(),
            ),
            None => {}
        }
    }

    // A sandbox CIDR that overlaps nothing on the host: the cluster's, or
    // one picked here.
    let mut cidr = None;
    let mut cidr_note = None;
    if cube.extra_env.contains_key("CUBE_SANDBOX_NETWORK_CIDR") {
        // The operator's own value, passed as given.
    } else if let Some(c) = &cube.cluster_cidr {
        cidr_note = Some(cluster_cidr_fits(c, &network.parsed)?);
        cidr = Some(*c);
    } else if let CidrChoice::Alternative { cidr: c, reason } = cidr::choose_cidr(&network.parsed)?
    {
        cidr_note = Some(format!("sandbox network: {reason}; using {c}"));
        cidr = Some(c);
    }
    let env = planned_env(input, node_ip, control_plane.as_ref(), cidr);
    Ok(Prepared {
        node_ip,
        control_plane,
        env,
        secrets,
        cidr,
        cidr_note,
        warnings,
    })
}

/// The installer's key for the object storage endpoint (`CUBE_S3_*`).
const S3_ENDPOINT_KEY: &str = "CUBE_S3_ENDPOINT";

/// The bundle extracted and its `.env` written: ready to run.
#[derive(Debug)]
pub struct Staged {
    pub prepared: Prepared,
    pub bundle_dir: String,
    pub install_sh: String,
    pub role: Role,
}

/// Re-verify and extract the bundle, settle the DNS mode against what the
/// bundle supports, and write the planned values into its `.env`.
pub fn stage(ctx: &mut Ctx, mut prepared: Prepared) -> Result<Staged> {
    let host = ctx.host;
    let plan = ctx.plan;
    // The bundle: re-verified, then extracted fresh (no leftovers, no old .env).
    // Unpacked ahead, beside the kernel stage, in this run: used once as it
    // is (nothing has run from it yet).
    let asset = &plan.assets.bundle;
    let cached = cache_path(asset);
    let dir = bundle::extract_dir(&asset.sha256);
    let stem = bundle::stem(&asset.name);
    let top = match bundle::take_extracted_ahead(host, &asset.sha256)? {
        Some(top) => {
            host.say(&format!(
                "bundle {} was unpacked beside the kernel stage",
                asset.name
            ));
            top
        }
        None => {
            bundle::verify(host, &cached, &asset.sha256)?;
            host.remove_dir_all(&dir)?;
            // Stays: unpacking through a dry-run host would list every bundle entry.
            if host.is_dry_run() {
                stem.to_string()
            } else {
                bundle::extract_verified(host, &cached, &asset.sha256, &dir)?
            }
        }
    };
    if top != stem {
        // online-install.sh refuses this too.
        return Err(StepFailure::new(format!(
            "bundle {} extracts to {top:?}, expected a directory named {stem:?}",
            asset.name
        ))
        .into());
    }
    let bundle_dir = format!("{dir}/{top}");
    let install_sh = format!("{bundle_dir}/install.sh");
    host.check_change(&format!("{install_sh} in the unpacked bundle"), &mut || {
        if !host.exists(&install_sh) {
            return Err(
                StepFailure::new(format!("bundle {} has no install.sh", asset.name)).into(),
            );
        }
        Ok(())
    })?;

    // dnsmasq's standalone mode only where this bundle knows it: bundles
    // older than the mode die on an unknown CUBE_PROXY_DNSMASQ_MODE.
    if let Some(want) = ctx.journal.facts.dnsmasq_mode {
        if bundle_supports_standalone_dns(host, &bundle_dir)? {
            prepared
                .env
                .insert("CUBE_PROXY_DNSMASQ_MODE".into(), "standalone".into());
        } else if want == DnsmasqMode::Standalone {
            let w = "no resolvectl or NetworkManager, and this bundle has no standalone dnsmasq mode: the installer's DNS setup may fail";
            host.say(w);
            ctx.journal.warn(w);
        }
    }

    // Harden moves Cubelet's HTTP off loopback. Where this bundle's
    // cube-egress fetches its policies from it there, on every start, its
    // units read where it moved from .one-click.env; older bundles fetch
    // them from the network agent, which harden leaves alone.
    if plan.cube.hardening && bundle_egress_bootstraps_from_cubelet(host, &bundle_dir)? {
        prepared.env.insert(
            "CUBE_EGRESS_BOOTSTRAP_URL".into(),
            format!(
                "http://{}:{}/v1/policies/dump",
                prepared.node_ip, CUBELET_HTTP.port
            ),
        );
    }

    // The same values in .env, which wins over the environment.
    let dotenv = format!("{bundle_dir}/.env");
    let had_dotenv = host.exists(&dotenv);
    let mut dotenv_values = prepared.env.clone();
    // Known as secrets before the installer can echo them.
    prepared
        .secrets
        .values()
        .for_each(|v| host.secrets().add(v));
    dotenv_values.extend(prepared.secrets.clone());
    if plan.cube.hardening && plan.cube.role == Role::Control {
        // Secrets go to .env only: the environment shows up in command logs.
        for (k, v) in ensure_credentials(ctx)? {
            if !plan.cube.extra_env.contains_key(&k) {
                dotenv_values.insert(k, v);
            }
        }
    }
    // Hardening also needs a .env: the installer keeps only .env's values
    // (and a few keys of its own) in .one-click.env, which upstream's later
    // runs of quickcheck and its units read (CubeSandbox:
    // deploy/one-click/scripts/one-click/common.sh), e.g. where Cubelet's
    // HTTP moved.
    if had_dotenv || dotenv_values.len() > prepared.env.len() || plan.cube.hardening {
        let old = host.read_optional(&dotenv)?.unwrap_or_default();
        // The bundle's own .env may carry credentials the installer echoes.
        let shipped = envfile::parse(&old);
        host.secrets()
            .add_env(shipped.iter().map(|(k, v)| (k.as_str(), v.as_str())));
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
    Ok(Staged {
        prepared,
        bundle_dir,
        install_sh,
        role: plan.cube.role,
    })
}

/// What the installer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallerRun {
    pub code: Option<i32>,
    pub timed_out: bool,
    pub output: String,
    pub timeout_secs: u64,
}

impl InstallerRun {
    /// The installer's own verdict: ok when its quickcheck printed OK.
    pub fn quickcheck(&self) -> Quickcheck {
        if self.output.lines().any(|l| l.trim() == QUICKCHECK_OK) {
            Quickcheck::Ok
        } else if self.output.contains("[quickcheck]") {
            Quickcheck::Failed
        } else {
            Quickcheck::NotRun
        }
    }
}

/// Run install.sh under an overall timeout; `timeout` signals the whole
/// process group, so the installer's children die with it.
pub fn run_installer(
    host: &dyn Host,
    progress: &crate::firstboot::live::Handle,
    staged: &Staged,
    mode: Mode,
    timeout_secs: u64,
) -> Result<InstallerRun> {
    let node_ip = &staged.prepared.node_ip;
    // `timeout 0` would mean no timeout at all.
    let secs = timeout_secs.max(1);
    let mut cmd = CommandSpec::new("timeout")
        .args([
            format!("--kill-after={KILL_AFTER_SECS}"),
            secs.to_string(),
            "bash".into(),
            "-c".into(),
            // One stream, in order, like the console shows it.
            "exec bash \"$0\" \"$@\" 2>&1".into(),
            real(host, &staged.install_sh),
            format!("--node-ip={node_ip}"),
            format!("--mode={}", mode.as_str()),
        ])
        .cwd(staged.bundle_dir.clone())
        .timeout(Duration::from_secs(secs + KILL_AFTER_SECS + 30))
        .allow_failure();
    for (k, v) in &staged.prepared.env {
        cmd = cmd.env(k.clone(), v.clone());
    }
    host.say(&format!(
        "running the Cube installer (--mode={}, {} role, node IP {node_ip}, CUBE_PVM_ENABLE={}, timeout {secs} s)",
        mode.as_str(),
        staged.role.as_str(),
        pvm_flag(&staged.prepared.env)
    ));
    // Streamed to the console as it runs (rate-limited); kept whole in the log.
    let out = crate::firstboot::status::run_with_progress(
        host,
        progress,
        &cmd,
        &format!("running the Cube installer (--mode={})", mode.as_str()),
        "install",
    )?;
    let output = format!("{}{}", out.stdout, out.stderr);
    let log = format!("# cubeboot: {}\n{output}", cmd.display());
    host.write_atomic(INSTALL_LOG, log.as_bytes(), 0o600)?;
    Ok(InstallerRun {
        code: out.code,
        timed_out: out.timed_out,
        output,
        timeout_secs: secs,
    })
}

/// Success or the failure to report, from the installer's exit and output.
pub fn verdict(run: &InstallerRun, staged: &Staged, mode: Mode) -> Result<Outcome, StepFailure> {
    let secs = run.timeout_secs;
    // coreutils timeout exits 124 on TERM, 137 when it had to KILL.
    if run.timed_out || matches!(run.code, Some(124 | 137)) {
        return Err(StepFailure::new(format!(
            "cube installer timed out after {secs} s; log: {INSTALL_LOG}"
        ))
        .hint("the installer hung (CubeSandbox #1753: services that never start); see the diagnostics"));
    }
    if run.code != Some(0) {
        let last = run
            .output
            .lines()
            .rev()
            .find(|l| l.contains("ERROR"))
            .or_else(|| run.output.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output")
            .trim()
            .to_string();
        return Err(StepFailure::new(format!(
            "cube installer failed ({}): {last}; log: {INSTALL_LOG}",
            run.code
                .map_or("killed by a signal".into(), |c| format!("exit {c}"))
        )));
    }
    let verb = match mode {
        Mode::Install => "installed",
        Mode::Upgrade => "upgraded",
    };
    Ok(Outcome::Done(format!(
        "{verb} the {} role at {} (CUBE_PVM_ENABLE={})",
        staged.role.as_str(),
        staged.prepared.node_ip,
        pvm_flag(&staged.prepared.env)
    )))
}

fn pvm_flag(env: &BTreeMap<String, String>) -> &str {
    env.get("CUBE_PVM_ENABLE").map_or("?", String::as_str)
}

/// `ip -j addr`, `ip -j route` and resolv.conf, parsed.
pub struct Network {
    pub addrs: Vec<(String, cidr::Ipv4Net)>,
    pub default_dev: Option<String>,
    pub parsed: HostNetwork,
}

pub fn read_network(host: &dyn Host) -> Result<Network> {
    let addr_json = host
        .run(&CommandSpec::new("ip").args(["-j", "addr"]).read_only())?
        .stdout;
    let route_json = host
        .run(&CommandSpec::new("ip").args(["-j", "route"]).read_only())?
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
/// docs/cube-installer.md, done here so the IP is known, recorded and passed explicitly).
pub fn resolve_node_ip(planned: NodeIp, net: &Network) -> Result<Ipv4Addr> {
    if let NodeIp::Addr(ip) = planned {
        return Ok(ip);
    }
    let on_default = net
        .default_dev
        .as_ref()
        .and_then(|dev| net.addrs.iter().find(|(i, _)| i == dev));
    on_default
        .or_else(|| net.addrs.first())
        .map(|(_, a)| a.addr)
        .ok_or_else(|| {
            StepFailure::new("cannot find the node IP: no IPv4 address on the default-route interface or any other")
                .hint("set node_ip in the plan (cubeboot build --node-ip)")
                .into()
        })
}

/// What the installer must see, in the environment and in `.env`.
pub fn planned_env(
    input: &Input<'_>,
    node_ip: Ipv4Addr,
    control_plane: Option<&ControlPlane>,
    cidr: Option<Ipv4Net>,
) -> BTreeMap<String, String> {
    let cube = input.cube;
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set("CUBE_PVM_ENABLE", if input.pvm { "1" } else { "0" });
    set("ONE_CLICK_DEPLOY_ROLE", cube.role.as_str());
    set("CUBE_SANDBOX_NODE_IP", &node_ip.to_string());
    // The control plane's names (join.rs: exactly what the preflight takes).
    for (k, v) in control_plane.map(ControlPlane::env).unwrap_or_default() {
        set(&k, &v);
    }
    if let Some(m) = cube.mirror {
        set("MIRROR", m.as_str());
    }
    if let Some(c) = cidr {
        set("CUBE_SANDBOX_NETWORK_CIDR", &c.to_string());
    }
    // Hardening option A (network-hardening.md): CubeMaster and CubeAPI on
    // the private IP, not 127.0.0.1 (the WebUI container reaches CubeAPI from
    // outside). The installer's post-install check and quickcheck probe
    // CubeMaster at ${CUBEMASTER_ADDR:-127.0.0.1:8089}, which a CubeMaster
    // bound to the node IP does not answer: point them at the node IP too.
    if cube.hardening && cube.role == Role::Control {
        set("CUBEMASTER_HTTP_BIND", &node_ip.to_string());
        set("CUBEMASTER_ADDR", &format!("{node_ip}:{}", CUBEMASTER.port));
        set("CUBE_API_BIND", &format!("{node_ip}:{}", CUBE_API.port));
        set(
            "CUBE_API_HEALTH_ADDR",
            &format!("{node_ip}:{}", CUBE_API.port),
        );
    }
    // Harden moves Cubelet's HTTP to the node IP on either role; newer
    // upstream quickcheck (scripts/one-click/quickcheck.sh, re-run by
    // up.sh and smoke.sh) probes it at 127.0.0.1:9998 unless told where.
    // The node IP answers both before harden (":9998" is every address)
    // and after.
    if cube.hardening {
        set(
            "CUBELET_EGRESS_DUMP_URL",
            &format!("http://{node_ip}:{}/v1/policies/dump", CUBELET_HTTP.port),
        );
    }
    for (k, v) in &cube.extra_env {
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
            existing.values().for_each(|v| host.secrets().add(v));
            return Ok(existing);
        }
    }
    let mut creds = BTreeMap::new();
    for k in CREDENTIAL_KEYS {
        let bytes = host.random_bytes(20).context("generating credentials")?;
        let hex = hex::encode(&bytes);
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
    // Known as secrets before anything can print them.
    creds.values().for_each(|v| host.secrets().add(v));
    host.write_atomic(CREDENTIALS_PATH, text.as_bytes(), 0o600)?;
    Ok(creds)
}
