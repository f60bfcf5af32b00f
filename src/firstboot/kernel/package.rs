//! Installing and holding the PVM kernel package (rpm / dpkg).

use std::io::{self, BufReader};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{backup_once, is_live_root, on_target, Ctx};
use crate::digest::HashingReader;
use crate::firstboot::host::{describe_exit, tail, CommandSpec, Host};
use crate::firstboot::live;
use crate::firstboot::status::run_with_progress;
use crate::firstboot::StepFailure;
use crate::plan::{KernelHold, KernelRepo, PackageFamily, Plan};

/// How long to wait for the dpkg lock (cloud-init and unattended-upgrades
/// hold it at first boot; docs/payloads.md, "cloud-init"), and how often to look.
const DPKG_LOCK_WAIT: Duration = Duration::from_secs(15 * 60);
const DPKG_LOCK_POLL: Duration = Duration::from_secs(5);
/// A kernel package install takes about 3 minutes (docs/pvm-kernel.md).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(super) const DNF_CONF: &str = "/etc/dnf/dnf.conf";
/// The repository id the helper gives the plan's kernel repository.
const REPO_ID: &str = "cubeboot-kernel";
/// Where dnf downloads the repository kernel's packages for verification.
const REPO_DOWNLOADS: &str = "/var/cache/cubeboot/kernel-repo";
const SYSCONFIG_KERNEL: &str = "/etc/sysconfig/kernel";

/// Whether the plan's package is installed at its version, with its kernel.
pub(super) fn is_installed(ctx: &Ctx) -> Result<bool> {
    let k = &ctx.plan.kernel;
    Ok(installed(
        ctx.host,
        ctx.plan.target.family,
        &k.package,
        &k.package_version,
    )? && ctx.host.exists(&format!("/boot/vmlinuz-{}", k.kver)))
}

/// Verify the cached package and install it.
pub(super) fn install_package(ctx: &mut Ctx) -> Result<()> {
    let host = ctx.host;
    let k = &ctx.plan.kernel;
    let family = ctx.plan.target.family;
    if family == PackageFamily::Rpm {
        // Before the package's scriptlets run.
        keep_default_on_updates(host)?;
    }

    if let Some(repo) = &k.repo {
        install_from_repo(ctx, repo)?;
        return check_kernel_image(ctx);
    }

    // Re-verify the cached bytes right before the package manager sees them.
    let asset = &ctx.plan.assets.kernel;
    let cached = ctx.asset_path(asset);
    let local = host.path(&cached).to_string_lossy().into_owned();
    if host.exists(&cached) {
        verify_cached(host, &cached, asset)?;
    } else {
        // The fetch step decided native KVM and skipped the package, and
        // the machine changed its mind since (e.g. kvm_intel unloaded).
        crate::firstboot::fetch::verified_asset(ctx, "kernel", asset)?;
        host.check_change(&format!("{cached} against {}", asset.sha256), &mut || {
            verify_cached(host, &cached, asset)
        })?;
    }

    match family {
        PackageFamily::Rpm => {
            // -i, never -U: upgrading a package named `kernel` can remove the
            // distro kernels; --oldpackage because the PVM kernel (6.6) is
            // older than theirs (docs/pvm-kernel.md, #161).
            let cmd = rpm(host)
                .args(["-ivh", "--oldpackage", local.as_str()])
                .timeout(INSTALL_TIMEOUT);
            let phase = "installing the kernel package";
            run_with_progress(host, &ctx.progress, &cmd, phase, "rpm")?;
        }
        PackageFamily::Deb => {
            let ((), host_only) = super::initramfs::host_only_while(host, || {
                dpkg_install(host, &ctx.progress, &local)
            })?;
            if let Some(what) = host_only {
                host.say(&what);
            }
        }
    }
    check_kernel_image(ctx)
}

/// The installed packages hold the plan's kernel: /boot/vmlinuz-KVER, or
/// (RHEL-style kernel-core, whose scriptlet copies it to /boot) the image
/// under /lib/modules/KVER. A missing boot entry is the bootloader back
/// end's to handle (`after_package`).
fn check_kernel_image(ctx: &Ctx) -> Result<()> {
    let host = ctx.host;
    let kver = &ctx.plan.kernel.kver;
    let vmlinuz = format!("/boot/vmlinuz-{kver}");
    let modules = format!("/lib/modules/{kver}/vmlinuz");
    host.check_change(&format!("{vmlinuz} or {modules}"), &mut || {
        if !host.exists(&vmlinuz) && !host.exists(&modules) {
            bail!(
                "{} installed, but neither {vmlinuz} nor {modules} exists: the package is not the kernel {kver} the plan names",
                ctx.plan.kernel.package
            );
        }
        Ok(())
    })
}

/// `dnf` with the plan's kernel repository added (the distro's own
/// repositories stay enabled for dependencies). gpgcheck is off for this
/// repository id only: every file is checked against the lock's SHA-256
/// before it is installed, which pins the exact bytes (a signature would
/// admit any package the key ever signed).
fn dnf_with_repo(host: &dyn Host, repo: &KernelRepo) -> CommandSpec {
    on_target(host, "dnf").args([
        "-y".to_string(),
        format!("--repofrompath={REPO_ID},{}", repo.baseurl),
        format!("--setopt={REPO_ID}.gpgcheck=0"),
    ])
}

/// The OpenCloudOS 9 way (upstream's recommendation there): dnf installs the
/// split kernel from the repository. Nothing reaches rpm unverified: dnf
/// downloads the pinned NEVRAs, each file must match the lock's SHA-256,
/// dnf installs exactly those files, and the installed headers must match
/// the lock too, all before any reboot is armed.
fn install_from_repo(ctx: &mut Ctx, repo: &KernelRepo) -> Result<()> {
    let host = ctx.host;
    let nevras: Vec<&str> = repo.packages.iter().map(|p| p.nevra.as_str()).collect();
    // Step 1: download only; a stale copy of another build must not count.
    host.remove_dir_all(REPO_DOWNLOADS)?;
    host.create_dir_all(REPO_DOWNLOADS)?;
    host.run(
        &dnf_with_repo(host, repo)
            .args(["install", "--downloadonly"])
            .arg(format!("--downloaddir={REPO_DOWNLOADS}"))
            .args(nevras.iter().copied())
            .timeout(INSTALL_TIMEOUT),
    )?;
    // Step 2: each file against the lock.
    let mut files = Vec::new();
    for p in &repo.packages {
        let path = format!("{REPO_DOWNLOADS}/{}", p.file_name());
        files.push(path.clone());
        let asset = crate::plan::Asset {
            name: p.nevra.clone(),
            urls: vec![format!(
                "{}/{}",
                repo.baseurl.trim_end_matches('/'),
                p.location
            )],
            sha256: p.sha256,
            size: p.size,
        };
        // dnf downloaded it just now: a dry run has no file to look at.
        host.check_change(&format!("{path} against {}", p.sha256), &mut || {
            verify_cached(host, &path, &asset).map_err(|e| {
                e.context(format!(
                    "{} from {} is not the package the lock pins",
                    p.nevra, repo.baseurl
                ))
            })
        })?;
    }
    // Step 3: install exactly the verified files.
    host.run(
        &dnf_with_repo(host, repo)
            .arg("install")
            .args(files.iter().cloned())
            .timeout(INSTALL_TIMEOUT),
    )?;
    // Step 4: what rpm now has installed is what the lock pinned.
    let out = host.run(
        &rpm(host)
            .args(["-q", "--qf", "%{NEVRA} %{SHA256HEADER}\n"])
            .args(nevras.iter().copied())
            .read_only(),
    )?;
    host.check_change("the installed rpm headers against the lock", &mut || {
        check_installed_headers(&out.stdout, repo)
    })
}

/// `rpm`, pointed at the target's database with `--root` unless the
/// target is this machine (rpm then stays inside the root by itself).
pub(super) fn rpm(host: &dyn Host) -> CommandSpec {
    let cmd = CommandSpec::new("rpm");
    if is_live_root(host) {
        return cmd;
    }
    cmd.arg("--root")
        .arg(host.root().to_string_lossy())
        .within_root()
}

/// Compare `rpm -q --qf '%{NEVRA} %{SHA256HEADER}\n'` output with the lock.
fn check_installed_headers(rpm_out: &str, repo: &KernelRepo) -> Result<()> {
    for p in &repo.packages {
        let seen = rpm_out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{} ", p.nevra)))
            .map(str::trim);
        match seen {
            Some(h) if h == p.header_sha256.to_hex() => {}
            Some(h) => {
                return Err(StepFailure::new(format!(
                    "installed {} has header sha256 {h}, but the lock pins {}; not rebooting into it",
                    p.nevra, p.header_sha256
                ))
                .hint("remove the package (dnf remove) and run the helper again, or re-lock the repository")
                .into())
            }
            None => bail!("rpm does not list {} as installed after dnf install", p.nevra),
        }
    }
    Ok(())
}

/// Stream the cached file through SHA-256 and compare with the plan.
fn verify_cached(host: &dyn Host, cached: &str, asset: &crate::plan::Asset) -> Result<()> {
    let file = host
        .open(cached)
        .with_context(|| format!("opening cached kernel package {cached}"))?;
    let mut reader = HashingReader::new(BufReader::new(file));
    io::copy(&mut reader, &mut io::sink())
        .with_context(|| format!("reading cached kernel package {cached}"))?;
    let (digest, size) = reader.finish();
    if digest != asset.sha256 || size != asset.size {
        return Err(StepFailure::new(format!(
            "kernel package {} in {cached} does not match the plan: expected sha256 {} ({} bytes), \
             computed {digest} ({size} bytes); refusing to install it",
            asset.name, asset.sha256, asset.size
        ))
        .hint("the cache was modified after it was fetched; delete the file and run again")
        .into());
    }
    Ok(())
}

/// Whether `package` is installed at `version`.
fn installed(host: &dyn Host, family: PackageFamily, package: &str, version: &str) -> Result<bool> {
    let out = match family {
        PackageFamily::Deb => {
            let mut cmd = CommandSpec::new("dpkg-query");
            if !is_live_root(host) {
                cmd = cmd.arg(format!(
                    "--admindir={}",
                    host.path("/var/lib/dpkg").to_string_lossy()
                ));
            }
            host.run(
                &cmd.args(["-W", "-f", "${Status}\t${Version}\n", package])
                    .read_only()
                    .allow_failure(),
            )?
        }
        PackageFamily::Rpm => host.run(
            &rpm(host)
                .args(["-q", "--qf", "%{VERSION}-%{RELEASE}\n", package])
                .read_only()
                .allow_failure(),
        )?,
    };
    if !out.success() {
        return Ok(false);
    }
    Ok(out.stdout.lines().any(|l| match family {
        // `install ok installed\t<version>`; `hold ok installed` counts too.
        PackageFamily::Deb => l
            .split_once('\t')
            .is_some_and(|(st, v)| st.ends_with(" installed") && v == version),
        PackageFamily::Rpm => l.trim() == version,
    }))
}

/// dpkg on the target, never asking.
pub(super) fn dpkg(host: &dyn Host) -> CommandSpec {
    let cmd = CommandSpec::new("dpkg").env("DEBIAN_FRONTEND", "noninteractive");
    if is_live_root(host) {
        return cmd;
    }
    cmd.arg(format!("--root={}", host.root().to_string_lossy()))
        .within_root()
}

/// `dpkg -i`, waiting for the lock another frontend holds.
fn dpkg_install(host: &dyn Host, progress: &live::Handle, deb: &str) -> Result<()> {
    let cmd = dpkg(host)
        .args(["-i", deb])
        .timeout(INSTALL_TIMEOUT)
        .allow_failure();
    let started = host.now();
    loop {
        let phase = "installing the kernel package";
        let out = run_with_progress(host, progress, &cmd, phase, "dpkg")?;
        if out.success() {
            return Ok(());
        }
        let waited = host.now().duration_since(started).unwrap_or_default();
        if is_dpkg_lock_error(&out.stderr) {
            if waited < DPKG_LOCK_WAIT {
                host.say(&format!(
                    "dpkg is locked by another process (cloud-init or unattended-upgrades?); \
                     waited {}s, retrying",
                    waited.as_secs()
                ));
                host.sleep(DPKG_LOCK_POLL);
                continue;
            }
            bail!(
                "dpkg stayed locked for {} s: {}\n{}",
                waited.as_secs(),
                cmd.display(),
                tail(&out.stderr, 5)
            );
        }
        bail!(
            "command failed ({}): {}\n{}",
            describe_exit(&out),
            cmd.display(),
            tail(&out.stderr, 20)
        );
    }
}

/// dpkg's messages when the frontend or database lock is held
/// (dpkg 1.21: "dpkg frontend lock was locked by another process with pid N";
/// older: "dpkg status database is locked by another process").
fn is_dpkg_lock_error(stderr: &str) -> bool {
    stderr.contains("locked by another process") || stderr.contains("lock was locked")
}

/// Hold the package as the plan says. Later distro kernels do not take the
/// default anyway (it is pinned by id/path), but nothing should replace or
/// remove this one.
pub(super) fn hold(ctx: &mut Ctx) -> Result<String> {
    let host = ctx.host;
    let k = &ctx.plan.kernel;
    match ctx.plan.target.packages.hold {
        KernelHold::AptMarkHold => {
            host.run(&on_target(host, "apt-mark").args(["hold", k.package.as_str()]))?;
            Ok(format!("held with apt-mark hold {}", k.package))
        }
        KernelHold::DnfVersionlock => {
            let spec = format!("{}-{}", k.package, k.package_version);
            let out = host.run(
                &on_target(host, "dnf")
                    .args(["versionlock", "add", spec.as_str()])
                    .allow_failure(),
            )?;
            keep_default_on_updates(host)?;
            if out.success() {
                return Ok(format!("held with dnf versionlock add {spec}"));
            }
            let w = format!(
                "dnf versionlock failed ({}); excluding {} updates in {DNF_CONF} instead",
                out.stderr.trim(),
                k.package
            );
            ctx.say(&format!("warning: {w}"));
            ctx.journal.warn(w);
            dnf_exclude(host, ctx.plan)
        }
        KernelHold::DnfExclude => {
            keep_default_on_updates(host)?;
            dnf_exclude(host, ctx.plan)
        }
    }
}

/// The names of the packages this stage installs: the repository set's
/// (`kernel`, `kernel-core`, `kernel-modules`) or the one release package.
/// The hold names exactly these: a `kernel*` pattern would also hide the
/// distribution's kernel-headers, -devel and -tools, and a later
/// `dnf install gcc` (glibc-devel needs kernel-headers) would fail.
pub(super) fn installed_names(plan: &Plan) -> Vec<String> {
    match &plan.kernel.repo {
        Some(r) => r.packages.iter().map(|p| rpm_name(&p.nevra)).collect(),
        None => vec![plan.kernel.package.clone()],
    }
}

/// `name` of `name-[epoch:]version-release.arch`.
fn rpm_name(nevra: &str) -> String {
    let nevr = nevra.rsplit_once('.').map_or(nevra, |(n, _)| n);
    let nev = nevr.rsplit_once('-').map_or(nevr, |(n, _)| n);
    nev.rsplit_once('-').map_or(nev, |(n, _)| n).to_string()
}

fn dnf_exclude(host: &dyn Host, plan: &Plan) -> Result<String> {
    let names = installed_names(plan);
    let text = host
        .read_optional(DNF_CONF)?
        .unwrap_or_else(|| "[main]\n".into());
    let edited = names
        .iter()
        .fold(text.clone(), |t, n| add_dnf_exclude(&t, n));
    if edited != text {
        backup_once(host, DNF_CONF)?;
        host.write_atomic(DNF_CONF, edited.as_bytes(), 0o644)?;
    }
    Ok(format!(
        "held with exclude={} in {DNF_CONF}",
        names.join(" ")
    ))
}

/// RHEL's kernel packages make each new kernel the default when
/// /etc/sysconfig/kernel says UPDATEDEFAULT=yes.
fn keep_default_on_updates(host: &dyn Host) -> Result<()> {
    let Some(text) = host.read_optional(SYSCONFIG_KERNEL)? else {
        return Ok(());
    };
    let edited = super::grub_default::set_assignment(&text, "UPDATEDEFAULT", "no");
    if edited != text {
        backup_once(host, SYSCONFIG_KERNEL)?;
        host.write_atomic(SYSCONFIG_KERNEL, edited.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// dnf.conf with `pattern` in the `[main]` section's `exclude=` (added or
/// extended); unchanged when already there.
pub fn add_dnf_exclude(conf: &str, pattern: &str) -> String {
    let mut lines: Vec<String> = conf.lines().map(str::to_string).collect();
    let mut section = String::new();
    let mut main_at = None;
    let mut exclude_at = None;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.to_string();
            if section == "[main]" {
                main_at = Some(i);
            }
            continue;
        }
        if section == "[main]" {
            if let Some((k, _)) = t.split_once('=') {
                if matches!(k.trim(), "exclude" | "excludepkgs") {
                    exclude_at = Some(i);
                }
            }
        }
    }
    match (exclude_at, main_at) {
        (Some(i), _) => {
            let (k, v) = lines[i].split_once('=').unwrap_or((lines[i].as_str(), ""));
            let mut items: Vec<&str> = v
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            if items.contains(&pattern) {
                return conf.to_string();
            }
            items.push(pattern);
            lines[i] = format!("{}={}", k.trim_end(), items.join(" "));
        }
        (None, Some(i)) => lines.insert(i + 1, format!("exclude={pattern}")),
        (None, None) => {
            lines.insert(0, "[main]".into());
            lines.insert(1, format!("exclude={pattern}"));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_names_come_from_nevras() {
        assert_eq!(
            rpm_name("kernel-core-6.6.69-1.2.cubesandbox.oc9.x86_64"),
            "kernel-core"
        );
        assert_eq!(rpm_name("kernel-0:6.6.69-1.2.oc9.x86_64"), "kernel");
    }

    #[test]
    fn dnf_exclude_is_added_extended_and_idempotent() {
        let rocky = "[main]\ngpgcheck=1\ninstallonly_limit=3\n";
        let once = add_dnf_exclude(rocky, "kernel*");
        assert_eq!(
            once,
            "[main]\nexclude=kernel*\ngpgcheck=1\ninstallonly_limit=3\n"
        );
        assert_eq!(add_dnf_exclude(&once, "kernel*"), once);
        assert_eq!(
            add_dnf_exclude("[main]\nexclude=foo, bar\n[x]\nexclude=y\n", "kernel*"),
            "[main]\nexclude=foo bar kernel*\n[x]\nexclude=y\n"
        );
        assert_eq!(add_dnf_exclude("", "kernel*"), "[main]\nexclude=kernel*\n");
    }

    #[test]
    fn dpkg_lock_messages_are_recognised() {
        assert!(is_dpkg_lock_error(
            "dpkg: error: dpkg frontend lock was locked by another process with pid 812\n"
        ));
        assert!(is_dpkg_lock_error(
            "dpkg: error: dpkg status database is locked by another process\n"
        ));
        assert!(!is_dpkg_lock_error(
            "dpkg: error: cannot access archive 'x': No such file"
        ));
    }
}
