//! The Cube stage: from a PVM (or native KVM) host to a verified, hardened
//! Cube Sandbox node (docs/cube-stage.md, docs/cube-installer.md):
//!
//! 1. [`prereqs`]: host packages the installer needs but does not install,
//!    Docker CE where the distro lacks it, the cgroup `cpu` fix (#366), a DNS
//!    stack for the control role.
//! 2. [`data_disk`]: /data/cubelet on XFS (kept, an empty disk, or a loopback
//!    image); never a disk with data on it.
//! 3. [`install`]: the one-click installer from a fresh extraction of the
//!    verified bundle, with the `.env` pitfall defused, a free sandbox CIDR,
//!    the node IP, and an overall timeout.
//! 4. [`verify`]: success judged by state, each check recorded
//!    in the journal's named checks (shown by the status file).
//! 5. [`harden`]: binds, firewall, credentials (network-hardening.md).
//!
//! On failure, [`diagnostics`] gathers one tarball under /var/log/cubeboot/
//! and names it in the error and in the journal fact `diagnostics`.

pub mod bundle;
pub mod cidr;
pub mod diagnostics;
pub mod disk;
pub mod envfile;
pub mod firewall;
pub mod harden;
pub mod http;
pub mod install;
pub mod join;
pub mod listeners;
pub mod prereqs;
pub mod upgrade;
pub mod verify;

use std::net::Ipv4Addr;

use anyhow::Result;

use super::journal::KvmInUse;
use super::{Ctx, Outcome, StepFailure};

/// Where the installer puts Cube (readonly in newer `lib/common.sh`).
pub const INSTALL_ROOT: &str = "/usr/local/services/cubetoolbox";
/// Cubelet's data directory; must be XFS (check_cubelet_fs_preflight, #311).
pub const CUBELET_DIR: &str = "/data/cubelet";
/// The installer's output, kept for the operator and the diagnostics.
pub const INSTALL_LOG: &str = "/var/log/cubeboot/install.log";
/// Generated credentials, root-only; reported only as this path.
pub const CREDENTIALS_PATH: &str = "/etc/cubeboot/credentials.env";

pub fn prereqs(ctx: &mut Ctx) -> Result<Outcome> {
    prereqs::run(ctx)
}

pub fn data_disk(ctx: &mut Ctx) -> Result<Outcome> {
    disk::run(ctx)
}

pub fn install(ctx: &mut Ctx) -> Result<Outcome> {
    with_diagnostics(ctx, |ctx| {
        // data-disk ran before the reboot; its fstab line is `nofail`, so a
        // boot that could not mount it went on without.
        disk::remount_after_reboot(ctx.host)?;
        // The firewall needs nothing from the install: up before CubeMaster
        // and CubeAPI first listen, not from harden on (issue 21).
        let ports = crate::layout::restricted_ports_for(ctx.plan.cube.bundle.as_ref());
        firewall::load_before_install(ctx, &ports)?;
        install::run_mode(ctx, install_mode(ctx))
    })
}

/// A node rolled onto a new plan by `cube-firstboot upgrade --to` keeps its
/// Cube: the installer upgrades it (docs/upgrades.md); a first run installs.
pub fn install_mode(ctx: &Ctx) -> install::Mode {
    match ctx.journal.facts.upgrade_from {
        Some(_) => install::Mode::Upgrade,
        None => install::Mode::Install,
    }
}

pub fn verify(ctx: &mut Ctx) -> Result<Outcome> {
    with_diagnostics(ctx, verify::run)
}

pub fn harden(ctx: &mut Ctx) -> Result<Outcome> {
    with_diagnostics(ctx, harden::run)
}

/// The node IP cube-install gave the installer (journal fact
/// `cube.node-ip`), else the plan's address; unknown only while the plan
/// says `auto` and cube-install has not run.
pub fn installed_node_ip(ctx: &Ctx) -> Result<Ipv4Addr> {
    ctx.journal
        .facts
        .node_ip
        .or(ctx.plan.cube.node_ip.addr())
        .ok_or_else(|| {
            StepFailure::new(
                "the node IP is unknown: the plan says auto and cube-install has not recorded the address it found",
            )
            .into()
        })
}

/// Run a step; on failure gather the diagnostics tarball and name it in the
/// error (kept a [`StepFailure`] with its hint, so the status shows both).
pub fn with_diagnostics(
    ctx: &mut Ctx,
    step: impl FnOnce(&mut Ctx) -> Result<Outcome>,
) -> Result<Outcome> {
    let err = match step(ctx) {
        Ok(o) => return Ok(o),
        Err(e) => e,
    };
    let message = format!("{err:#}");
    let path = match diagnostics::collect(ctx, &message) {
        Ok(p) => p,
        Err(e) => {
            ctx.host
                .say(&format!("collecting diagnostics failed: {e:#}"));
            return Err(err);
        }
    };
    let hint = err
        .downcast_ref::<StepFailure>()
        .and_then(|f| f.hint.clone());
    let mut failure = StepFailure::new(format!("{message} (diagnostics: {path})"));
    failure.hint = hint;
    Err(failure.into())
}

/// Whether the Cube stage installs for PVM: everything but a recorded
/// `native` (the kernel stage records `kvm.mode`).
pub fn pvm_enabled(ctx: &Ctx) -> bool {
    ctx.journal.facts.kvm_mode != Some(KvmInUse::Native)
}

/// The target path of a command's argument, as a path on this machine (the
/// same string on a real target whose root is `/`).
pub(crate) fn real(ctx_host: &dyn super::host::Host, target: &str) -> String {
    ctx_host.path(target).to_string_lossy().into_owned()
}
