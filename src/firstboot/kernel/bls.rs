//! Boot Loader Specification entries (`/boot/loader/entries/*.conf`, RHEL 8+
//! family with grubby). Pure parsing and search; the step lists and reads the
//! files through the host.
//!
//! The entry for a kernel is found by its `linux` line, never by file name:
//! images built elsewhere keep entries named by another machine-id
//! (prior-art.md §7, stackhpc-kayobe-config PR #878).

use anyhow::{bail, Result};

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
