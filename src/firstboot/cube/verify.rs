//! Success by state, not by log text (docs/cube-installer.md: log lines
//! differ between installer versions). Every check is recorded in the
//! journal's named checks, which the status file and the diagnostics show;
//! the step succeeds only when all hold. Services are probed where they
//! actually listen (`/proc/net/tcp{,6}`), not where an env file says.

use std::time::Duration;

use anyhow::Result;

use super::super::host::{unix_secs, Host};
use super::super::journal::{CheckName, Quickcheck};
use super::super::{Ctx, Outcome, StepFailure};
use super::join::{registration_needle, ControlPlane};
use super::listeners::{self, Listener};
use super::{envfile, http, pvm_enabled, INSTALL_ROOT};
use crate::arch::Arch;
use crate::layout::{CUBEMASTER, CUBE_API};
use crate::plan::{CubePlan, Role};

const HEALTH_POLL: Duration = Duration::from_secs(5);

/// The HTTP endpoints to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// CubeAPI `/health` (control).
    pub cube_api: Option<String>,
    /// CubeMaster `/notify/health` (control).
    pub cube_master: Option<String>,
    /// The control plane's record of this node (compute).
    pub registration: Option<String>,
    pub node_ip: String,
}

impl Endpoints {
    /// Where to reach this node's services: on loopback when they listen on
    /// every address or on loopback, else on the address they are bound to
    /// (the node IP when hardened); the default address when nothing
    /// listens yet, so the probe fails naming it.
    pub fn from_listeners(cube: &CubePlan, node_ip: &str, listening: &[Listener]) -> Result<Self> {
        let at = |port: u16, path: &str| {
            let host = listeners::probe_addr(listening, port).map_or_else(
                || format!("127.0.0.1:{port}"),
                |a| listeners::host_port(a, port),
            );
            format!("http://{host}{path}")
        };
        Ok(match cube.role {
            Role::Control => Self {
                cube_api: Some(at(CUBE_API.port, "/health")),
                cube_master: Some(at(CUBEMASTER.port, "/notify/health")),
                registration: None,
                node_ip: node_ip.into(),
            },
            Role::Compute => {
                // Where the bundle's own quickcheck reads it (join.rs).
                let (registration, _) = ControlPlane::for_plan(cube)?.registration(node_ip);
                Self {
                    cube_api: None,
                    cube_master: None,
                    registration: Some(registration),
                    node_ip: node_ip.into(),
                }
            }
        })
    }
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    run_with_probe(ctx, &http::get)
}

/// [`run`] with the HTTP GET supplied (tests answer from a model network).
pub fn run_with_probe(ctx: &mut Ctx, get: &dyn Fn(&str) -> Result<String>) -> Result<Outcome> {
    // The whole step checks what cube-install made; a dry run made nothing.
    let host = ctx.host;
    let mut outcome = Outcome::Skipped("dry run: nothing installed to check".into());
    host.check_change("Cube's listeners and health endpoints", &mut || {
        outcome = check_install(ctx, get)?;
        Ok(())
    })?;
    Ok(outcome)
}

fn check_install(ctx: &mut Ctx, get: &dyn Fn(&str) -> Result<String>) -> Result<Outcome> {
    let node_ip = super::installed_node_ip(ctx)?.to_string();
    let budget = Duration::from_secs(ctx.plan.cube.verify_budget_secs);
    let start = unix_secs(ctx.host.now());
    let listening = wait_for_listeners(ctx.host, ctx.plan.cube.role, budget)?;
    let spent = unix_secs(ctx.host.now()).saturating_sub(start);
    let endpoints = Endpoints::from_listeners(&ctx.plan.cube, &node_ip, &listening)?;
    let left = Duration::from_secs(budget.as_secs().saturating_sub(spent));
    verify_with_probe(ctx, &endpoints, left, get)
}

/// Read the listening sockets until the control role's CubeAPI and
/// CubeMaster ports appear (services may still be starting) or `budget` ends.
fn wait_for_listeners(host: &dyn Host, role: Role, budget: Duration) -> Result<Vec<Listener>> {
    let wanted: &[u16] = match role {
        Role::Control => &[CUBE_API.port, CUBEMASTER.port],
        Role::Compute => &[],
    };
    let found = http::poll(
        host,
        budget,
        HEALTH_POLL,
        |_, _| {},
        || {
            let ls = listeners::read(host)?;
            match wanted
                .iter()
                .find(|p| listeners::on_port(&ls, **p).is_empty())
            {
                Some(p) => anyhow::bail!("nothing listens on port {p}"),
                None => Ok(ls),
            }
        },
    );
    match found {
        Ok(ls) => Ok(ls),
        // Probe anyway: the failed probes name the missing service.
        Err(_) => listeners::read(host),
    }
}

/// Run every check against `endpoints`, health probes (`get`, in
/// production `http::get`) retried within `budget`.
pub fn verify_with_probe(
    ctx: &mut Ctx,
    endpoints: &Endpoints,
    budget: Duration,
    get: &dyn Fn(&str) -> Result<String>,
) -> Result<Outcome> {
    let host = ctx.host;
    let pvm = pvm_enabled(ctx);
    let mut checks: Vec<(CheckName, Result<String, String>)> = vec![
        (CheckName::OneClickEnv, check_env_file(host, pvm)),
        (CheckName::GuestKernel, check_guest_kernel(host, pvm)),
        (
            CheckName::KvmModule,
            check_kvm_module(host, pvm, ctx.plan.target.arch),
        ),
        (
            CheckName::DevKvm,
            if host.exists("/dev/kvm") {
                Ok("/dev/kvm present".into())
            } else {
                Err("/dev/kvm is missing".into())
            },
        ),
    ];

    let start = unix_secs(host.now());
    let mut probe = |name: CheckName, url: &str, expect: Option<String>| {
        let spent = unix_secs(host.now()).saturating_sub(start);
        let left = Duration::from_secs(budget.as_secs().saturating_sub(spent));
        let r = http::poll(
            host,
            left,
            HEALTH_POLL,
            |_, _| {},
            || {
                let body = get(url)?;
                match &expect {
                    Some(needle) if !body.replace(' ', "").contains(needle) => {
                        anyhow::bail!("answer does not contain {needle}")
                    }
                    _ => Ok(()),
                }
            },
        );
        checks.push((
            name,
            match r {
                Ok(()) => Ok(format!("{url} answers")),
                Err(e) => Err(format!("{url}: {e:#}")),
            },
        ));
    };
    if let Some(url) = &endpoints.cube_api {
        probe(CheckName::CubeApi, url, None);
    }
    if let Some(url) = &endpoints.cube_master {
        probe(CheckName::CubeMaster, url, None);
    }
    if let Some(url) = &endpoints.registration {
        probe(
            CheckName::Registered,
            url,
            Some(registration_needle(url, &endpoints.node_ip)),
        );
    }

    let mut failed = Vec::new();
    for (name, result) in &checks {
        let (ok, detail) = match result {
            Ok(d) => (true, d.clone()),
            Err(d) => {
                failed.push(name.as_str());
                (false, d.clone())
            }
        };
        host.say(&format!(
            "check {name}: {} {detail}",
            if ok { "ok:" } else { "FAIL:" }
        ));
        ctx.journal.record_check(*name, ok, detail);
    }
    if failed.is_empty() {
        return Ok(Outcome::Done(format!("{} checks passed", checks.len())));
    }
    // Two verdicts that disagree are both worth reading.
    let theirs = match ctx.journal.facts.installer_quickcheck {
        Some(Quickcheck::Ok) => "; the installer's own quickcheck passed (see install.log)",
        _ => "",
    };
    Err(StepFailure::new(format!(
        "cube verification failed: {}{theirs}",
        failed.join(", ")
    ))
    .hint("the status file's checks say what was found")
    .into())
}

fn check_env_file(host: &dyn Host, pvm: bool) -> Result<String, String> {
    let path = format!("{INSTALL_ROOT}/.one-click.env");
    let text = host
        .read_optional(&path)
        .map_err(|e| format!("{e:#}"))?
        .ok_or_else(|| format!("{path} is missing"))?;
    let want = if pvm { "1" } else { "0" };
    match envfile::parse(&text).get("CUBE_PVM_ENABLE") {
        Some(v) if v == want => Ok(format!("CUBE_PVM_ENABLE={want}")),
        Some(v) => Err(format!("CUBE_PVM_ENABLE={v}, expected {want}")),
        // Some installer versions copy the bundle's .env without adding the
        // key; the guest kernel check then shows what was selected.
        None => Ok(format!(
            "no CUBE_PVM_ENABLE in {path}; the guest-kernel check decides"
        )),
    }
}

/// Newer installers link `vmlinux` to `vmlinux-pvm`/`-bm`; older ones copy.
fn check_guest_kernel(host: &dyn Host, pvm: bool) -> Result<String, String> {
    let dir = format!("{INSTALL_ROOT}/cube-kernel-scf");
    let vmlinux = format!("{dir}/vmlinux");
    let want = if pvm { "vmlinux-pvm" } else { "vmlinux-bm" };
    if let Some(link) = host.read_link(&vmlinux).map_err(|e| format!("{e:#}"))? {
        let base = link.rsplit('/').next().unwrap_or(&link);
        return if base == want {
            Ok(format!("vmlinux -> {link}"))
        } else {
            Err(format!("vmlinux -> {link}, expected {want}"))
        };
    }
    let Ok(actual) = host.read(&vmlinux) else {
        return Err(format!("{vmlinux} is missing"));
    };
    match host.read(&format!("{dir}/{want}")) {
        Ok(w) if w == actual => Ok(format!("vmlinux is a copy of {want}")),
        Ok(_) => Err(format!("vmlinux differs from {want}")),
        // An older native install ships only vmlinux: fine unless PVM is wanted.
        Err(_) if !pvm => Ok("vmlinux present".into()),
        Err(_) => Err(format!("{dir}/{want} is missing")),
    }
}

/// The module that provides /dev/kvm: kvm_pvm under PVM, the vendor module
/// on x86_64; on aarch64 KVM is part of the kernel (Debian's arm64 kernels
/// have CONFIG_KVM=y, docs/arm64.md), which /sys/module/kvm shows.
fn check_kvm_module(host: &dyn Host, pvm: bool, arch: Arch) -> Result<String, String> {
    let modules = host
        .read_optional("/proc/modules")
        .map_err(|e| format!("{e:#}"))?
        .unwrap_or_default();
    let loaded: Vec<&str> = modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let wanted: &[&str] = match (pvm, arch) {
        (true, _) => &["kvm_pvm"],
        (false, Arch::X86_64) => &["kvm_intel", "kvm_amd"],
        (false, Arch::Aarch64) => &["kvm"],
    };
    match wanted.iter().find(|m| loaded.contains(m)) {
        Some(m) => Ok(format!("{m} loaded")),
        None if arch == Arch::Aarch64 && !pvm && host.exists("/sys/module/kvm") => {
            Ok("kvm built into the kernel".into())
        }
        None if arch == Arch::Aarch64 && !pvm => Err(
            "kvm is neither in /proc/modules nor built into the kernel (/sys/module/kvm)".into(),
        ),
        None => Err(format!("{} not in /proc/modules", wanted.join(" or "))),
    }
}
