//! What `check` and `build` refuse before any server is bought, from the
//! facts `cubeboot lock` read out of the bundle: each diagnostic names the
//! bundle, the fact and the fix, and points at the fact's line in the lock.
//! Warnings become errors under `--strict`.

use std::collections::BTreeSet;

use super::diag::{Diagnostic, Severity};
use super::lock::{Lock, LockedKernel};
use super::profile::{KernelSource, Profile};
use crate::arch::Arch;
use crate::bundle_facts::{BundleFacts, BundleRole};
use crate::plan::Role;

/// The key a CubeOps-era bundle's compute nodes cannot start without
/// (CubeSandbox: scripts/systemd/prepare-compute-role.sh).
pub const OPS_TOKEN_KEY: &str = "CUBE_OPS_OPSAGENT_TOKEN";

const FACTS: &str = "$.assets.bundle.bundle";

/// The bundle's name and the facts the lock records for it.
pub fn locked_facts(lock: &Lock) -> Option<(&str, &BundleFacts)> {
    let asset = lock.file.assets.bundle.as_ref()?;
    Some((asset.name.as_str(), asset.bundle.as_ref()?))
}

/// Whether the locked bundle needs the cluster's ops-agent token on any role.
pub fn needs_ops_token(lock: &Lock) -> bool {
    locked_facts(lock).is_some_and(|(_, f)| {
        f.requires(OPS_TOKEN_KEY, BundleRole::Compute)
            || f.requires(OPS_TOKEN_KEY, BundleRole::Control)
    })
}

fn warning(d: Diagnostic) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        ..d
    }
}

/// The host kernel a profile's build takes: the first source the lock pins
/// (as `BuildOptions::plan` chooses).
fn host_kernel<'a>(lock: &'a Lock, p: &Profile) -> Option<&'a LockedKernel> {
    p.kernel_sources.iter().find_map(|s| match s {
        KernelSource::Release => lock
            .file
            .assets
            .get(p.kernel_asset)
            .and_then(|a| a.kernel.as_ref()),
        KernelSource::Repo => lock.file.kernel_repo.as_ref().map(|r| &r.kernel),
    })
}

/// A `pvm_version` that names a kernel release (`6.6.69-1.2.cubesandbox`)
/// rather than a release tag or digest, which cannot be compared.
fn is_kernel_release(v: &str) -> bool {
    v.as_bytes().first().is_some_and(u8::is_ascii_digit) && v.contains('.')
}

/// Diagnostics for the locked bundle against the profiles to be built for
/// `arch` (one payload per architecture, docs/arm64.md).
pub fn diagnostics(lock: &Lock, profiles: &[&Profile], arch: Arch) -> Vec<Diagnostic> {
    let Some((name, facts)) = locked_facts(lock) else {
        return Vec::new();
    };
    let name = name.escape_debug().to_string();
    let mut out = Vec::new();
    // The bundle's binaries run on the nodes: its arch is the build's.
    let want = arch.bundle();
    if facts.arch != want && facts.arch != "unknown" && !profiles.is_empty() {
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        let nodes = match arch {
            Arch::X86_64 => "installs an x86_64 PVM host kernel".to_string(),
            Arch::Aarch64 => "is built for aarch64 nodes (--arch aarch64)".to_string(),
        };
        out.push(lock.diag(
            &format!("{FACTS}.arch"),
            format!(
                "bundle {name}: arch {}, but profile {} {nodes}; lock the -{want} bundle of the same release",
                facts.arch.escape_debug(),
                names.join(", ")
            ),
        ));
    }
    // The guest kernel and the host kernel move together upstream; an
    // aarch64 node boots no PVM host kernel, so there is nothing to compare.
    if let Some(pvm) = facts
        .pvm_version
        .as_deref()
        .filter(|v| is_kernel_release(v) && arch == Arch::X86_64)
    {
        let mut seen = BTreeSet::new();
        for p in profiles {
            let Some(k) = host_kernel(lock, p) else {
                continue;
            };
            if k.kver.starts_with(pvm) || k.version.starts_with(pvm) || !seen.insert(&k.kver) {
                continue;
            }
            out.push(warning(lock.diag(
                &format!("{FACTS}.pvm_version"),
                format!(
                    "bundle {name}: its PVM guest kernel is pvm_version {}, but profile {} boots host kernel {} ({} {}); upstream moves host and guest kernels together: lock the host kernel of the bundle's release, or the bundle made for this kernel",
                    pvm.escape_debug(),
                    p.name,
                    k.kver,
                    k.package,
                    k.version
                ),
            )));
        }
    }
    for u in &facts.unknown {
        out.push(warning(lock.diag(
            &format!("{FACTS}.unknown"),
            format!(
                "bundle {name}: {}: this cubeboot has no model for it (a newer bundle?); use a cubeboot that knows this bundle, or accept the risk (not with --strict)",
                u.escape_debug()
            ),
        )));
    }
    out
}

/// A payload for `role` without the token the bundle requires for it.
pub fn missing_token(lock: &Lock, role: Role, token: Option<&str>) -> Option<Diagnostic> {
    let (name, facts) = locked_facts(lock)?;
    let bundle_role = match role {
        Role::Control => BundleRole::Control,
        Role::Compute => BundleRole::Compute,
    };
    if token.is_some() || !facts.requires(OPS_TOKEN_KEY, bundle_role) {
        return None;
    }
    let source = facts
        .required_env
        .iter()
        .find(|r| r.key == OPS_TOKEN_KEY)
        .map_or("its scripts", |r| r.source.as_str());
    Some(lock.diag(
        &format!("{FACTS}.required_env"),
        format!(
            "bundle {}: {} requires {OPS_TOKEN_KEY} on a {} node, and this payload has none; give the cluster's token file with --ops-token-file (the control payload's)",
            name.escape_debug(),
            source.escape_debug(),
            role.as_str()
        ),
    ))
}
