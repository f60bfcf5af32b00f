//! The RPM-family back end: Boot Loader Specification entries
//! (`/boot/loader/entries/*.conf`) edited with grubby, the default by kernel
//! path (`grubby --set-default`), the trial boot by BLS id (`grub2-reboot`).
//! Entry parsing and search are pure; the rest goes through the host.
//!
//! The entry for a kernel is found by its `linux` line, never by file name:
//! images built elsewhere keep entries named by another machine-id
//! (docs/bootloader.md, "BLS entries and grubby"; stackhpc-kayobe-config
//! PR #878).

use anyhow::{bail, ensure, Result};

use super::{backup_once, grub_default, grubenv, Bootloader, Ctx, DEFAULT_GRUB};
use crate::cmdline;
use crate::firstboot::host::{describe_exit, on_target, tail, Host};
use crate::firstboot::Outcome;
use crate::plan::Plan;

const BLS_DIR: &str = "/boot/loader/entries";
const MACHINE_ID: &str = "/etc/machine-id";
/// kernel-install builds the initramfs too; as long as a package install.
const KERNEL_INSTALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// BLS snippets, grubby and grubenv.
pub(super) struct Bls;

impl Bootloader for Bls {
    fn pin_old_default(&self, ctx: &mut Ctx) -> Result<String> {
        record_old_default(ctx)
    }

    /// Make sure the new kernel has its entry (see [`ensure_entry`]), then
    /// undo a package scriptlet that made the new kernel the default
    /// (UPDATEDEFAULT=yes, or a fresh image whose new entry sorts first).
    fn after_package(&self, ctx: &mut Ctx) -> Result<()> {
        ensure_entry(ctx)?;
        let host = ctx.host;
        let Some(old) = ctx.journal.facts.old_default_entry.as_deref() else {
            return Ok(());
        };
        let old = old.to_string();
        let now = default_kernel(host)?;
        if now != old {
            ctx.say(&format!(
                "the package made {now} the default; restoring {old} until the trial boot passes"
            ));
            set_default(host, &old)?;
        }
        Ok(())
    }

    fn arm_trial_boot(&self, ctx: &mut Ctx, params: &[String]) -> Result<Outcome> {
        let host = ctx.host;
        let kver = ctx.plan.kernel.kver.clone();
        let bl = ctx.plan.target.bootloader.clone();
        let path = vmlinuz(&kver);

        // A run resumed after the package went in but before its entry was
        // made (the install step then skips) gets the same fallback.
        if !has_entry(host, &kver)? {
            ensure_entry(ctx)?;
        }
        let host = ctx.host;
        let all = entries(host)?;
        // The entry the package made; a dry run installed no package, so it
        // shows the id kernel-install would give it.
        let mut entry = BlsEntry::parse(&predicted_entry_id(host, &kver)?, "");
        host.check_change(&format!("the BLS entry for {path}"), &mut || {
            entry = find_by_kernel(&all, &kver)
                .map_err(|e| {
                    e.context(format!(
                        "refusing to reboot: the kernel package did not create a BLS entry for {path}"
                    ))
                })?
                .clone();
            Ok(())
        })?;

        super::refuse_unhonoured(ctx, &cmdline::merge_line(entry.options(), params), params)?;
        record_old_default(ctx)?;
        if ctx.journal.facts.old_default_entry.as_deref() == Some(path.as_str()) {
            bail!("refusing to reboot: {path} already is the default before its trial boot");
        }
        let old = ctx
            .journal
            .facts
            .old_default_entry
            .as_deref()
            .unwrap_or_default()
            .to_string();

        // Parameters: on BLS they live in the entry's options line;
        // GRUB_CMDLINE_LINUX does nothing there (docs/bootloader.md).
        if ctx.journal.facts.bls_options_before.is_none() {
            // What grubby is about to change, so it can be put back by hand.
            ctx.journal.facts.bls_options_before = Some(entry.options().to_string());
        }
        let existing = cmdline::split(entry.options());
        let displaced = cmdline::displaced(&existing, params);
        let mut update = on_target(host, "grubby").arg(format!("--update-kernel={path}"));
        if !displaced.is_empty() {
            update = update.arg(format!("--remove-args={}", displaced.join(" ")));
        }
        host.run(&update.arg(format!("--args={}", params.join(" "))))?;
        host.check_change(&format!("the options of the {kver} entry"), &mut || {
            let after = entries(host)?;
            let e = find_by_kernel(&after, &kver)?;
            if !cmdline::has_merged(e.options(), params) {
                bail!(
                    "refusing to reboot: after grubby the {} entry's options are `{}`, not the \
                     configured parameters",
                    e.id,
                    e.options()
                );
            }
            Ok(())
        })?;

        // GRUB_DEFAULT=saved is what makes grubenv's saved_entry count.
        if let Some(text) = host.read_optional(DEFAULT_GRUB)? {
            let d = grub_default::evaluate(&[(DEFAULT_GRUB.to_string(), text.clone())])?;
            if d.grub_default() != "saved" {
                backup_once(host, DEFAULT_GRUB)?;
                let edited = grub_default::set_assignment(&text, "GRUB_DEFAULT", "saved");
                host.write_atomic(DEFAULT_GRUB, edited.as_bytes(), 0o644)?;
                if let Some((program, args)) = bl.mkconfig.split_first() {
                    host.run(&on_target(host, program).args(args.iter().cloned()))?;
                }
            }
        }

        ctx.journal.facts.pvm_entry = Some(entry.id.clone());
        if let Some(why) = grubenv::unwritable(ctx.host, &ctx.plan.target.bootloader)? {
            set_default(host, &path)?;
            ctx.journal.facts.direct_default = Some(why.clone());
            let w = format!("{why}; no trial boot possible, {path} is now the default directly");
            ctx.say(&format!("warning: {w}"));
            ctx.journal.warn(w);
            return Ok(Outcome::RebootRequested(format!(
                "{path} set as the default directly ({why})"
            )));
        }
        ctx.journal.facts.direct_default = None;

        // Pin the old default explicitly (an image's saved_entry may name an
        // entry of another machine-id), then the one-shot by BLS id.
        host.run(&on_target(host, "grubby").arg(format!("--set-default={old}")))?;
        host.run(&grubenv::tool(host, &bl.reboot_once, &bl.grubenv).arg(&entry.id))?;
        host.check_change(&format!("next_entry in {}", bl.grubenv), &mut || {
            let env = grubenv::read(host, &bl.grubenv)?;
            if env.get("next_entry") != Some(&entry.id) {
                bail!(
                    "refusing to reboot: {} has next_entry={:?} after {}",
                    bl.grubenv,
                    env.get("next_entry"),
                    bl.reboot_once
                );
            }
            Ok(())
        })?;
        Ok(Outcome::RebootRequested(format!(
            "trial boot of {} armed; {old} stays the default",
            entry.id
        )))
    }

    fn commit(&self, ctx: &mut Ctx) -> Result<String> {
        let path = vmlinuz(&ctx.plan.kernel.kver);
        set_default(ctx.host, &path)?;
        Ok(format!(
            "committed {path} as the default (grubby --default-kernel)"
        ))
    }

    fn roll_back(&self, ctx: &mut Ctx) -> Result<()> {
        let Some(old) = ctx.journal.facts.old_default_entry.as_deref() else {
            bail!("the journal has no old default entry (fact kernel.old-default-entry)");
        };
        set_default(ctx.host, old)
    }

    fn is_image_default(&self, host: &dyn Host, plan: &Plan) -> Result<bool> {
        let out = host.run(
            &on_target(host, "grubby")
                .arg("--default-kernel")
                .allow_failure(),
        )?;
        Ok(out.success() && out.stdout.trim() == vmlinuz(&plan.kernel.kver))
    }

    fn make_image_default(
        &self,
        host: &dyn Host,
        plan: &Plan,
        _pvm_entry: Option<&str>,
    ) -> Result<String> {
        let bl = &plan.target.bootloader;
        let path = vmlinuz(&plan.kernel.kver);
        set_default(host, &path)?;
        // grubby sets saved_entry only; the trial boot's next_entry would be
        // spent on the first power-on, but an armed one-shot in a captured
        // image is a surprise.
        if host.exists(&bl.grubenv) {
            grubenv::unset(host, bl, "next_entry")?;
        }
        let env = grubenv::read(host, &bl.grubenv)?;
        ensure!(
            !env.contains_key("next_entry"),
            "{} still has next_entry={:?} after {} unset",
            bl.grubenv,
            env.get("next_entry"),
            bl.editenv
        );
        Ok(format!("{path} is the image's default kernel"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    /// File stem: the id GRUB's blscfg and `grub2-reboot` use.
    pub id: String,
    /// `key value` lines in file order.
    pub fields: Vec<(String, String)>,
}

impl BlsEntry {
    pub fn parse(id: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| match l.split_once(char::is_whitespace) {
                Some((k, v)) => (k.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        Self {
            id: id.to_string(),
            fields,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn linux(&self) -> Option<&str> {
        self.get("linux")
    }

    pub fn options(&self) -> &str {
        self.get("options").unwrap_or("")
    }
}

/// Kernel path as the entry's `linux` line names it: `/vmlinuz-KVER` when
/// /boot is its own filesystem, `/boot/vmlinuz-KVER` otherwise.
fn names_kernel(linux: &str, kver: &str) -> bool {
    let want = format!("vmlinuz-{kver}");
    linux == format!("/{want}") || linux == format!("/boot/{want}")
}

/// The entry booting kernel `kver`. Several (a copy left by another
/// machine-id) → the first by id order, which is what GRUB lists first.
pub fn find_by_kernel<'a>(entries: &'a [BlsEntry], kver: &str) -> Result<&'a BlsEntry> {
    let mut hits: Vec<&BlsEntry> = entries
        .iter()
        .filter(|e| e.linux().is_some_and(|l| names_kernel(l, kver)))
        .collect();
    hits.sort_by(|a, b| a.id.cmp(&b.id));
    match hits.first() {
        Some(e) => Ok(e),
        None => bail!(
            "no BLS entry whose linux line is /boot/vmlinuz-{kver} (entries: {})",
            if entries.is_empty() {
                "none".to_string()
            } else {
                entries
                    .iter()
                    .map(|e| format!("{} ({})", e.id, e.linux().unwrap_or("no linux line")))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    }
}

/// RPM kernels put themselves in /boot and make their BLS entry in their
/// scriptlets (`kernel-install add` from %posttrans; binrpm-pkg kernels via
/// /sbin/installkernel, which is kernel-install on RHEL 9). When that did
/// not happen (no scriptlet ran, no plugin wrote an entry), do what the
/// scriptlet would: `kernel-install add`, which also builds the initramfs;
/// and if that leaves no entry either, `grubby --add-kernel` with the
/// default entry's arguments (grubby(8), `--copy-default`).
fn ensure_entry(ctx: &mut Ctx) -> Result<()> {
    let host = ctx.host;
    // It repairs what the package's scriptlets left undone: a dry run
    // installed no package, so there is nothing to look at yet.
    host.check_change("the package's boot entry", &mut || add_missing_entry(ctx))
}

fn add_missing_entry(ctx: &mut Ctx) -> Result<()> {
    let host = ctx.host;
    let kver = ctx.plan.kernel.kver.clone();
    let vmlinuz = format!("/boot/vmlinuz-{kver}");
    if host.exists(&vmlinuz) && has_entry(host, &kver)? {
        return Ok(());
    }
    // The image kernel-core ships (RHEL style), else the one in /boot.
    let image = [format!("/lib/modules/{kver}/vmlinuz"), vmlinuz.clone()]
        .into_iter()
        .find(|p| host.exists(p));
    let Some(image) = image else {
        bail!(
            "the kernel package is installed, but neither /lib/modules/{kver}/vmlinuz nor {vmlinuz} exists: it is not the kernel {kver} the plan names"
        );
    };
    ctx.say(&format!(
        "the package's scriptlets made no boot entry for {kver}; running kernel-install add as they would"
    ));
    let out = host.run(
        &on_target(host, "kernel-install")
            .args(["add", kver.as_str(), image.as_str()])
            .timeout(KERNEL_INSTALL_TIMEOUT)
            .allow_failure(),
    )?;
    if !out.success() {
        ctx.say(&format!(
            "kernel-install add failed ({}): {}",
            describe_exit(&out),
            tail(&out.stderr, 3)
        ));
    }
    if host.exists(&vmlinuz) && has_entry(host, &kver)? {
        return Ok(());
    }
    if !host.exists(&vmlinuz) {
        bail!(
            "kernel-install add {kver} did not put {vmlinuz} in place; no boot entry can name it"
        );
    }
    ctx.say(&format!(
        "still no BLS entry for {vmlinuz}; adding one with grubby --add-kernel"
    ));
    let mut add = on_target(host, "grubby")
        .arg(format!("--add-kernel={vmlinuz}"))
        .arg(format!("--title=PVM host kernel ({kver})"))
        .arg("--copy-default");
    let initrd = format!("/boot/initramfs-{kver}.img");
    if host.exists(&initrd) {
        add = add.arg(format!("--initrd={initrd}"));
    }
    host.run(&add)?;
    if !has_entry(host, &kver)? {
        bail!("grubby --add-kernel={vmlinuz} left no BLS entry naming it");
    }
    Ok(())
}

/// Whether a BLS entry boots /boot/vmlinuz-KVER.
fn has_entry(host: &dyn Host, kver: &str) -> Result<bool> {
    if !host.exists(BLS_DIR) {
        return Ok(false);
    }
    Ok(find_by_kernel(&entries(host)?, kver).is_ok())
}

fn vmlinuz(kver: &str) -> String {
    format!("/boot/vmlinuz-{kver}")
}

pub(super) fn entries(host: &dyn Host) -> Result<Vec<BlsEntry>> {
    let mut out = Vec::new();
    for name in host.list_dir(BLS_DIR)? {
        if let Some(stem) = name.strip_suffix(".conf") {
            let text = host.read_string(&format!("{BLS_DIR}/{name}"))?;
            out.push(BlsEntry::parse(stem, &text));
        }
    }
    Ok(out)
}

fn default_kernel(host: &dyn Host) -> Result<String> {
    Ok(host
        .run(
            &on_target(host, "grubby")
                .arg("--default-kernel")
                .read_only(),
        )?
        .stdout
        .trim()
        .to_string())
}

/// The default entry before anything changes, by kernel path (BLS ids
/// can name another machine); recorded once.
fn record_old_default(ctx: &mut Ctx) -> Result<String> {
    if let Some(old) = ctx.journal.facts.old_default_entry.as_deref() {
        return Ok(format!("old default {old}"));
    }
    let old = default_kernel(ctx.host)?;
    if old.is_empty() {
        bail!("grubby --default-kernel printed nothing: no default entry to fall back to");
    }
    ctx.journal.facts.old_default_entry = Some(old.clone());
    Ok(format!("old default {old}"))
}

/// `grubby --set-default PATH`, checked with `grubby --default-kernel`: the
/// one way this back end changes the default (commit, image, roll back).
fn set_default(host: &dyn Host, path: &str) -> Result<()> {
    host.run(&on_target(host, "grubby").arg(format!("--set-default={path}")))?;
    host.check_change(&format!("grubby's default is {path}"), &mut || {
        let now = default_kernel(host)?;
        if now != path {
            bail!("grubby --set-default={path} did not take: grubby --default-kernel says {now}");
        }
        Ok(())
    })
}

/// The id kernel-install gives a new entry: `MACHINE_ID-KVER`
/// (systemd: src/kernel-install/90-loaderentry.install.in).
fn predicted_entry_id(host: &dyn Host, kver: &str) -> Result<String> {
    let machine_id = host.read_optional(MACHINE_ID)?.unwrap_or_default();
    Ok(format!("{}-{kver}", machine_id.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_ID: &str = "0123456789abcdef0123456789abcdef";

    fn entry(kver: &str, machine_id: &str, linux_prefix: &str) -> BlsEntry {
        BlsEntry::parse(
            &format!("{machine_id}-{kver}"),
            &format!(
                "title Rocky Linux ({kver}) 9.4 (Blue Onyx)\nversion {kver}\nlinux {linux_prefix}/vmlinuz-{kver}\ninitrd {linux_prefix}/initramfs-{kver}.img $tuned_initrd\noptions root=UUID=abc ro crashkernel=1G-4G:192M console=ttyS0,115200n8 $tuned_params\ngrub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rocky\n"
            ),
        )
    }

    #[test]
    fn entry_found_by_linux_line_even_under_another_machine_id() {
        let pvm = "6.6.69-opencloudos9.cubesandbox.pvm.host-gfixture1";
        let entries = vec![
            entry(
                "5.14.0-427.13.1.el9_4.x86_64",
                "feedfacefeedfacefeedfacefeedface",
                "/boot",
            ),
            entry(pvm, OLD_ID, "/boot"),
            BlsEntry::parse(
                "feedfacefeedfacefeedfacefeedface-0-rescue",
                "title rescue\nlinux /boot/vmlinuz-0-rescue-feedface\noptions ro\n",
            ),
        ];
        let e = find_by_kernel(&entries, pvm).unwrap();
        assert_eq!(e.id, format!("{OLD_ID}-{pvm}"));
        assert!(e.options().contains("console=ttyS0,115200n8"));
        assert_eq!(e.get("grub_arg"), Some("--unrestricted"));
    }

    #[test]
    fn separate_boot_paths_match_and_prefixes_do_not() {
        let entries = vec![entry("6.1.0-2", OLD_ID, "")];
        assert!(find_by_kernel(&entries, "6.1.0-2").is_ok());
        let err = find_by_kernel(&entries, "6.1.0").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no BLS entry whose linux line is /boot/vmlinuz-6.1.0 (entries: {OLD_ID}-6.1.0-2 (/vmlinuz-6.1.0-2))"
            )
        );
    }
}
