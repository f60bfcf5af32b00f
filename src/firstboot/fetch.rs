//! The fetch step: every asset the plan needs lands in the cache named by its
//! SHA-256 (/var/lib/cubeboot/cache/<sha256>), verified, before anything is
//! installed. The kernel package and the one-click bundle download in
//! parallel, so the bundle is ready before the reboot.
//!
//! Here the steps (`fetch`, `bundle`) and what other steps call before they
//! use a cached file ([`verified_asset`]); one asset's verify-then-rename
//! download is [`engine`]'s, the bundle's download beside the kernel stage
//! [`beside`]'s.

use anyhow::{Context, Result};

pub mod beside;
mod engine;

pub use engine::{
    fetch_asset, fetch_asset_reporting, human_bytes, FetchError, Fetched, HostNet, MirrorFailure,
};

use super::host::Host;
use super::journal::KvmInUse;
use super::{cache_path, live, Ctx, Outcome, StepFailure, CACHE_DIR};
use crate::plan::{Asset, Plan};
use crate::transport::{FetchConfig, MinRate};
use std::time::Duration;

/// Room left over on the cache filesystem after the downloads, so the
/// package manager and journal still have space to work.
const SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// The step with default download settings (the step table uses
/// [`run_with`] and the CLI's settings).
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    run_with(ctx, &FetchConfig::default())
}

/// Every asset the plan needs, in parallel.
pub fn run_with(ctx: &mut Ctx, cfg: &FetchConfig) -> Result<Outcome> {
    run_assets(ctx, cfg, true)
}

/// The fetch step as the runner takes it: every asset but the bundle, whose
/// download the runner started beside this step and keeps going while the
/// kernel stage works ([`beside`], the `bundle` step). The space
/// check still counts the bundle, so a full disk fails here, early.
pub fn run_without_bundle(ctx: &mut Ctx, cfg: &FetchConfig) -> Result<Outcome> {
    run_assets(ctx, cfg, false)
}

/// The bundle's download beside the steps that do not need it: the same
/// space check (for the bundle) and the same resumable, verified download
/// as the fetch step's, reporting through the run's relay (`progress`).
pub fn bundle_beside(
    host: &dyn Host,
    progress: &live::Handle,
    plan: &Plan,
    cfg: &FetchConfig,
) -> Result<Fetched> {
    let bundle = &plan.assets.bundle;
    host.create_dir_all(CACHE_DIR)?;
    check_space(host, &[("bundle", bundle)])?;
    let cfg = with_plan(cfg, plan);
    Ok(fetch_asset_reporting(
        host, progress, "bundle", bundle, &cfg,
    )?)
}

/// The `bundle` step: the bundle verified in the cache (the download the
/// runner started beside the kernel stage has ended by now; a reboot may
/// have cut it, and this resumes it by Range).
pub fn bundle_step(ctx: &mut Ctx, cfg: &FetchConfig) -> Result<Outcome> {
    let bundle = &ctx.plan.assets.bundle;
    ctx.host.create_dir_all(CACHE_DIR)?;
    check_space(ctx.host, &[("bundle", bundle)])?;
    let cfg = with_plan(cfg, ctx.plan);
    let fetched = fetch_asset_reporting(ctx.host, &ctx.progress, "bundle", bundle, &cfg)
        .map_err(failed_step)?;
    Ok(Outcome::Done(format!(
        "bundle {}",
        fetched.describe(bundle)
    )))
}

fn run_assets(ctx: &mut Ctx, cfg: &FetchConfig, with_bundle: bool) -> Result<Outcome> {
    let host = ctx.host;
    // The runner records native KVM or PVM before this step (see
    // `kernel::decide_kvm`): a host whose own /dev/kvm is used needs no
    // kernel package (tens of MiB on a slow link).
    let kvm = ctx.journal.facts.kvm_mode;
    let mut summary = Vec::new();
    let cfg = &with_plan(cfg, ctx.plan);
    // Assets with the same digest are one file: fetch it once.
    let mut wanted: Vec<(&'static str, &Asset)> = Vec::new();
    for (label, asset) in ctx.plan.assets.all() {
        if label == "kernel" && kvm == Some(KvmInUse::Native) {
            summary.push("kernel not needed (native /dev/kvm, kvm: auto)".to_string());
            continue;
        }
        if !wanted.iter().any(|(_, a)| a.sha256 == asset.sha256) {
            wanted.push((label, asset));
        }
    }

    // Fail before the first byte when the cache filesystem cannot hold
    // what is still missing (a full disk mid-download helps nobody).
    host.create_dir_all(CACHE_DIR)?;
    check_space(host, &wanted)?;
    if !with_bundle {
        let bundle = &ctx.plan.assets.bundle.sha256;
        wanted.retain(|(label, asset)| *label == "kernel" || asset.sha256 != *bundle);
    }

    // Download in parallel: one thread per asset, sharing the host seam
    // and the step's progress channel.
    let progress = &ctx.progress;
    let results: Vec<(&str, &Asset, Result<Fetched, FetchError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = wanted
            .iter()
            .map(|&(label, asset)| {
                let handle =
                    s.spawn(move || fetch_asset_reporting(host, progress, label, asset, cfg));
                (label, asset, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(label, asset, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(FetchError::Local {
                        asset: label.into(),
                        message: "download thread panicked".into(),
                    })
                });
                (label, asset, r)
            })
            .collect()
    });

    let mut failures = Vec::new();
    for (label, asset, r) in results {
        match r {
            Ok(f) => summary.push(format!("{label} {}", f.describe(asset))),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        return Ok(Outcome::Done(summary.join(", ")));
    }
    let failures = FetchFailures(failures);
    Err(StepFailure::new(failures.to_string())
        .hint(failures.hint())
        .caused_by(failures)
        .into())
}

/// Every asset that could not be fetched in one run of the step: what the
/// step's [`StepFailure`] carries as its typed cause.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct FetchFailures(pub Vec<FetchError>);

impl FetchFailures {
    /// The first failure's hint: it names what to fix first.
    pub fn hint(&self) -> String {
        self.0.first().map(FetchError::hint).unwrap_or_default()
    }
}

/// The cached path of `asset`, verified now: what the kernel and Cube
/// stages call right before handing the file to dpkg, rpm or tar. Re-hashes
/// the cached file (cheap next to installing it) and downloads it again if a
/// crash tore it, so no step ever acts on bytes that do not match the plan.
pub fn verified_asset(ctx: &Ctx, label: &str, asset: &Asset) -> Result<String> {
    let path = cache_path(asset);
    let cfg = with_plan(&FetchConfig::default(), ctx.plan);
    fetch_asset_reporting(ctx.host, &ctx.progress, label, asset, &cfg).map_err(failed_step)?;
    Ok(path)
}

/// One asset's failure as the step's, with its hint and the typed error.
fn failed_step(e: FetchError) -> StepFailure {
    let hint = e.hint();
    StepFailure::new(e.to_string()).hint(hint).caused_by(e)
}

/// `base` with the plan's download settings: the minimum throughput every
/// download of the plan's assets must keep (0 bytes/s turns it off; a
/// window is at least a second).
pub fn with_plan(base: &FetchConfig, plan: &Plan) -> FetchConfig {
    let dl = &plan.download;
    FetchConfig {
        min_rate: (dl.min_bytes_per_sec > 0).then(|| MinRate {
            bytes_per_sec: dl.min_bytes_per_sec,
            window: Duration::from_secs(dl.min_rate_window_secs.max(1)),
        }),
        ..base.clone()
    }
}

fn check_space(host: &dyn Host, wanted: &[(&str, &Asset)]) -> Result<()> {
    let mut needed = 0u64;
    for (_, asset) in wanted {
        let final_path = cache_path(asset);
        if host.exists(&final_path) {
            continue;
        }
        let have = host
            .open(&format!("{final_path}.partial"))
            .and_then(|f| f.metadata())
            .map(|m| m.len())
            .unwrap_or(0);
        needed += asset.size.saturating_sub(have);
    }
    if needed == 0 {
        return Ok(());
    }
    let free = host
        .free_bytes(CACHE_DIR)
        .with_context(|| format!("checking free space in {CACHE_DIR}"))?;
    if free < needed + SPACE_MARGIN {
        return Err(StepFailure::new(format!(
            "not enough free space in {CACHE_DIR}: the downloads need {} (+{} margin), {} is free",
            human_bytes(needed),
            human_bytes(SPACE_MARGIN),
            human_bytes(free)
        ))
        .hint("free space on the filesystem holding /var/lib/cubeboot or grow the disk, then `cube-firstboot run --retry`")
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::engine::tests::asset;
    use super::*;
    use crate::digest::Sha256Digest;
    use crate::firstboot::host::ScriptedHost;
    use crate::transport::DownloadError;

    #[test]
    fn a_torn_cache_file_is_fetched_again_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let mut plan = crate::plan::tests::sample_plan();
        let data = vec![9u8; 100_000];
        host.put("/srv/k.deb", &data);
        plan.assets.kernel = asset(&data, "file:///srv/k.deb");
        let mut journal = crate::firstboot::journal::Journal::new("x");
        let ctx = Ctx::new(&host, &plan, &mut journal);
        let path = verified_asset(&ctx, "kernel", &plan.assets.kernel).unwrap();
        assert_eq!(path, cache_path(&plan.assets.kernel));
        // Power cut after the rename, before writeback: an empty file.
        host.put(&path, b"");
        verified_asset(&ctx, "kernel", &plan.assets.kernel).unwrap();
        assert_eq!(host.read(&path).unwrap(), data);
        // Unrepairable: the source changed too. The error names both digests.
        host.put(&path, b"torn");
        host.put("/srv/k.deb", vec![8u8; 100_000]);
        let err = verified_asset(&ctx, "kernel", &plan.assets.kernel).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("expected sha256 {}", Sha256Digest::of(&data))),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("computed {}", Sha256Digest::of(&[8u8; 100_000]))),
            "{msg}"
        );
        assert!(!host.exists(&path));
    }

    #[test]
    fn a_failed_step_keeps_the_typed_fetch_error_and_its_hint() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        host.set_free_bytes(Some(u64::MAX / 2));
        let mut plan = crate::plan::tests::sample_plan();
        plan.assets.kernel = asset(b"k", "file:///srv/missing-kernel");
        plan.assets.bundle = asset(b"b", "file:///srv/missing-bundle");
        let mut journal = crate::firstboot::journal::Journal::new("x");
        let mut ctx = Ctx::new(&host, &plan, &mut journal);
        let err = run(&mut ctx).unwrap_err();
        let failure = err.downcast_ref::<StepFailure>().unwrap();
        let typed = failure.cause::<FetchFailures>().unwrap();
        assert!(matches!(
            typed.0[0],
            FetchError::AllMirrorsFailed { ref attempts, .. }
                if matches!(attempts[0], MirrorFailure::Download(DownloadError::NotFound { .. }))
        ));
        assert_eq!(failure.hint.as_deref(), Some(typed.hint().as_str()));
        assert!(typed
            .hint()
            .starts_with("the asset is not at any of its URLs"));
    }
}
