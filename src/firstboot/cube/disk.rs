//! /data/cubelet on XFS (docs/cube-installer.md, "What the host must bring";
//! CubeSandbox #311, #245). In order:
//! already XFS → keep; the planned disk, or with `data_disk: auto` the one
//! empty, unpartitioned, unmounted extra disk → `mkfs.xfs -m reflink=1`,
//! mounted by UUID from /etc/fstab; otherwise a sparse loopback XFS image
//! mounted at boot from /etc/fstab. A disk with a partition table, a
//! filesystem signature or a mount is never formatted.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::super::host::{CommandSpec, Host};
use super::super::{Ctx, Outcome, StepFailure};
use super::{real, CUBELET_DIR};
use crate::plan::DataDisk;

/// The loopback image (the Helm chart's equivalent is /data/cubelet-xfs.img, §12).
pub const LOOPBACK_IMAGE: &str = "/data/cubelet.img";
pub const FSTAB: &str = "/etc/fstab";
/// Marks the fstab line we own.
const FSTAB_COMMENT: &str = "# cubeboot: /data/cubelet on XFS for Cube Sandbox";

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let plan = ctx.plan;

    // Already XFS (a dedicated disk, or an XFS root on the RHEL family): keep.
    if let Some(m) = mount_for(host, CUBELET_DIR)? {
        if m.fstype == "xfs" {
            return Ok(Outcome::Skipped(format!(
                "{CUBELET_DIR} is already on XFS ({} at {})",
                m.source, m.mountpoint
            )));
        }
        // Someone mounted another filesystem right there: mounting ours over
        // it would hide their data, so stop.
        if m.mountpoint == CUBELET_DIR {
            return Err(StepFailure::new(format!(
                "{CUBELET_DIR} is a mounted {} filesystem ({}); Cube needs XFS there",
                m.fstype, m.source
            ))
            .hint(
                "unmount it and remove its /etc/fstab line, or reformat that disk as XFS yourself",
            )
            .into());
        }
    }

    // A previous attempt wrote our fstab line but did not get to mount it.
    let fstab = host.read_optional(FSTAB)?.unwrap_or_default();
    if fstab.lines().any(|l| l.trim() == FSTAB_COMMENT) {
        if let Some(line) = fstab_line_for(&fstab, CUBELET_DIR) {
            host.say(&format!("{FSTAB} already has {line:?}; mounting it"));
            mount_and_check(host, &line)?;
            return Ok(Outcome::Done(format!("mounted {CUBELET_DIR} from {FSTAB}")));
        }
    }

    let device = match &plan.cube.data_disk {
        DataDisk::Loopback => None,
        DataDisk::Device(dev) => {
            let devices = lsblk(host)?;
            check_named(&devices, dev).map_err(|why| {
                StepFailure::new(format!("refusing to format {dev}: {why}"))
                    .hint("name an empty disk in the plan, or use data_disk: loopback")
            })?;
            Some(dev.clone())
        }
        DataDisk::Auto => {
            let devices = lsblk(host)?;
            match select_auto(&devices) {
                AutoChoice::Disk(d) => Some(d),
                AutoChoice::None => None,
                AutoChoice::Ambiguous(names) => {
                    let w = format!(
                        "several empty disks ({}); not guessing, /data/cubelet is a loopback image",
                        names.join(", ")
                    );
                    host.say(&w);
                    ctx.journal.warn(w);
                    None
                }
            }
        }
    };

    match device {
        Some(dev) => {
            prove_empty(host, &dev)?;
            format_disk(host, &dev)
        }
        None => {
            // Sparse: fine now, but Cube's writes fail later if /data fills.
            let size = plan.cube.loopback_size_gib;
            let free = host.free_bytes("/").unwrap_or(u64::MAX);
            if !host.exists(LOOPBACK_IMAGE) && free < size << 30 {
                // `auto` only falls back to a loopback image; one the root
                // cannot back would fill it under Cube later. Asked for
                // explicitly (`loopback`), it is the operator's call: warn.
                if plan.cube.data_disk == DataDisk::Auto {
                    return Err(StepFailure::new(format!(
                        "auto found no single empty disk for {CUBELET_DIR}, and a {size} GiB loopback image does not fit the root filesystem ({} GiB free)",
                        free >> 30
                    ))
                    .hint("attach one empty disk (auto formats it), or build with --data-disk loopback to accept a loopback image that can fill the root filesystem")
                    .into());
                }
                let w = format!(
                    "{LOOPBACK_IMAGE} may grow to {size} GiB but its filesystem has {} GiB free",
                    free >> 30
                );
                host.say(&format!("warning: {w}"));
                ctx.journal.warn(w);
            }
            loopback(host, size)
        }
    }
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub mountpoint: String,
    pub fstype: String,
}

/// The filesystem holding `path` (nearest mounted ancestor, as `df -T` on the
/// nearest existing ancestor finds it), from /proc/self/mounts.
pub fn mount_for(host: &dyn Host, path: &str) -> Result<Option<Mount>> {
    let text = match host.read_optional("/proc/self/mounts")? {
        Some(t) => t,
        None => host.read_optional("/proc/mounts")?.unwrap_or_default(),
    };
    Ok(containing_mount(&parse_mounts(&text), path))
}

pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Mount {
                source: unescape(f.next()?),
                mountpoint: unescape(f.next()?),
                fstype: f.next()?.to_string(),
            })
        })
        .collect()
}

/// The last-mounted filesystem whose mount point is `path` or its ancestor.
pub fn containing_mount(mounts: &[Mount], path: &str) -> Option<Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        let mp = m.mountpoint.trim_end_matches('/');
        let inside = mp.is_empty() || path == mp || path.starts_with(&format!("{mp}/"));
        if inside && best.is_none_or(|b| mp.len() >= b.mountpoint.trim_end_matches('/').len()) {
            best = Some(m);
        }
    }
    best.cloned()
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A block device as `lsblk -J -b -o NAME,TYPE,SIZE,FSTYPE,MOUNTPOINT,PTTYPE` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub fstype: Option<String>,
    pub mountpoint: Option<String>,
    pub pttype: Option<String>,
    pub children: Vec<BlockDevice>,
}

impl BlockDevice {
    /// Why this device must not be formatted, if anything speaks against it.
    pub fn why_not_empty(&self) -> Option<String> {
        if let Some(mp) = self.mounts().first() {
            return Some(format!("it is mounted ({mp})"));
        }
        if let Some(pt) = &self.pttype {
            return Some(format!("it has a partition table ({pt})"));
        }
        if let Some(c) = self.children.first() {
            return Some(format!("it has partitions or holders ({})", c.name));
        }
        if let Some(fs) = &self.fstype {
            return Some(format!("it has a filesystem signature ({fs})"));
        }
        None
    }

    fn mounts(&self) -> Vec<String> {
        let mut out: Vec<String> = self.mountpoint.iter().cloned().collect();
        for c in &self.children {
            out.extend(c.mounts().into_iter().map(|m| format!("{} at {m}", c.name)));
        }
        out
    }
}

pub fn parse_lsblk(json: &str) -> Result<Vec<BlockDevice>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(json).context("parsing lsblk output")?;
    let list = v["blockdevices"]
        .as_array()
        .context("lsblk output has no \"blockdevices\" list")?;
    list.iter().map(device_from).collect()
}

fn device_from(v: &Value) -> Result<BlockDevice> {
    // Older util-linux prints every value as a string, newer ones numbers and null.
    let text =
        |k: &str| -> Option<String> { v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string) };
    let size = match &v["size"] {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    };
    Ok(BlockDevice {
        name: text("name").context("lsblk entry without a name")?,
        kind: text("type").unwrap_or_default(),
        size,
        fstype: text("fstype"),
        mountpoint: text("mountpoint"),
        pttype: text("pttype"),
        children: v["children"]
            .as_array()
            .map(|c| c.iter().map(device_from).collect::<Result<Vec<_>>>())
            .transpose()?
            .unwrap_or_default(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoChoice {
    Disk(String),
    None,
    Ambiguous(Vec<String>),
}

/// The one whole disk with nothing on it (`/dev/<name>`).
pub fn select_auto(devices: &[BlockDevice]) -> AutoChoice {
    let empty: Vec<String> = devices
        .iter()
        .filter(|d| d.kind == "disk" && d.size > 0 && d.why_not_empty().is_none())
        .map(|d| format!("/dev/{}", d.name))
        .collect();
    match empty.len() {
        0 => AutoChoice::None,
        1 => AutoChoice::Disk(empty[0].clone()),
        _ => AutoChoice::Ambiguous(empty),
    }
}

/// Whether the planned device may be formatted; the reason if not.
pub fn check_named(devices: &[BlockDevice], dev: &str) -> Result<(), String> {
    let name = dev.strip_prefix("/dev/").unwrap_or(dev);
    let Some(d) = devices.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        return Err(format!(
            "it is not a whole disk lsblk knows (found: {})",
            names.join(", ")
        ));
    };
    if d.kind != "disk" {
        return Err(format!("it is a {}, not a disk", d.kind));
    }
    match d.why_not_empty() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

fn lsblk(host: &dyn Host) -> Result<Vec<BlockDevice>> {
    let out = host.run(
        &CommandSpec::new("lsblk")
            .args(["-J", "-b", "-o", "NAME,TYPE,SIZE,FSTYPE,MOUNTPOINT,PTTYPE"])
            .read_only(),
    )?;
    parse_lsblk(&out.stdout)
}

/// lsblk reads udev's cache; probe the device itself before writing to it.
fn prove_empty(host: &dyn Host, dev: &str) -> Result<()> {
    let out = host.run(
        &CommandSpec::new("blkid")
            .args(["-p", "-o", "export", dev])
            .read_only()
            .allow_failure(),
    )?;
    match out.code {
        // blkid exits 2 when it finds nothing.
        Some(2) => {}
        Some(0) => {
            let found: Vec<&str> = out
                .stdout
                .lines()
                .filter(|l| l.starts_with("TYPE=") || l.starts_with("PTTYPE="))
                .collect();
            return Err(StepFailure::new(format!(
                "refusing to format {dev}: blkid found {}",
                found.join(" ")
            ))
            .hint("name an empty disk in the plan, or use data_disk: loopback")
            .into());
        }
        _ => bail!("blkid -p {dev} failed: {}", out.stderr.trim()),
    }
    let out = host.run(&CommandSpec::new("wipefs").args(["-n", dev]).read_only())?;
    if !out.stdout.trim().is_empty() {
        return Err(StepFailure::new(format!(
            "refusing to format {dev}: wipefs found signatures:\n{}",
            out.stdout.trim_end()
        ))
        .hint("name an empty disk in the plan, or use data_disk: loopback")
        .into());
    }
    Ok(())
}

fn format_disk(host: &dyn Host, dev: &str) -> Result<Outcome> {
    // The UUID is ours, not mkfs's, so the fstab line is known before the
    // disk is touched (and a dry run shows the real line).
    let uuid = new_uuid(host)?;
    // No -f: mkfs.xfs itself refuses a device with a signature, a second guard.
    host.run(&CommandSpec::new("mkfs.xfs").args([
        "-m",
        "reflink=1",
        "-L",
        "cubelet",
        "-m",
        &format!("uuid={uuid}"),
        dev,
    ]))?;
    host.check_change(&format!("that {dev} has UUID {uuid}"), &mut || {
        let out = host.run(
            &CommandSpec::new("blkid")
                .args(["-s", "UUID", "-o", "value", dev])
                .read_only(),
        )?;
        let found = out.stdout.trim();
        if found != uuid {
            bail!("blkid shows UUID {found:?} for {dev} after mkfs.xfs -m uuid={uuid}");
        }
        Ok(())
    })?;
    let line = format!("UUID={uuid} {CUBELET_DIR} xfs defaults,nofail 0 2");
    write_fstab(host, &line)?;
    mount_and_check(host, &line)?;
    Ok(Outcome::Done(format!(
        "formatted {dev} as XFS (UUID {uuid}) at {CUBELET_DIR}"
    )))
}

/// A random (version 4) UUID, from the kernel's random bytes.
fn new_uuid(host: &dyn Host) -> Result<String> {
    let mut b = host.random_bytes(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

fn loopback(host: &dyn Host, size_gib: u64) -> Result<Outcome> {
    host.create_dir_all("/data")?;
    let img = real(host, LOOPBACK_IMAGE);
    if host.exists(LOOPBACK_IMAGE) {
        let probe = host.run(
            &CommandSpec::new("blkid")
                .args(["-p", "-o", "value", "-s", "TYPE", &img])
                .read_only()
                .allow_failure(),
        )?;
        match (probe.code, probe.stdout.trim()) {
            (Some(0), "xfs") => {
                host.say(&format!("{LOOPBACK_IMAGE} already holds XFS; reusing it"))
            }
            // blkid exits 2 when it finds nothing: an empty image to format.
            (Some(2), _) => mkfs_image(host, &img)?,
            (_, found) => {
                return Err(StepFailure::new(format!(
                    "refusing to format {LOOPBACK_IMAGE}: it exists and holds {}",
                    if found.is_empty() {
                        "something blkid cannot read"
                    } else {
                        found
                    }
                ))
                .hint("move the file away or use a data disk")
                .into())
            }
        }
    } else {
        // Sparse: blocks are allocated as Cube writes, not now.
        host.run(&CommandSpec::new("truncate").args(["-s", &format!("{size_gib}G"), &img]))?;
        mkfs_image(host, &img)?;
    }
    let line = format!("{LOOPBACK_IMAGE} {CUBELET_DIR} xfs loop,defaults,nofail 0 0");
    write_fstab(host, &line)?;
    mount_and_check(host, &line)?;
    Ok(Outcome::Done(format!(
        "loopback XFS image {LOOPBACK_IMAGE} ({size_gib} GiB, sparse) mounted at {CUBELET_DIR}"
    )))
}

fn mkfs_image(host: &dyn Host, img: &str) -> Result<()> {
    host.run(&CommandSpec::new("mkfs.xfs").args(["-m", "reflink=1", "-L", "cubelet", img]))?;
    Ok(())
}

/// Our line replaces any other line for /data/cubelet (a stale entry would
/// shadow ours at boot).
fn write_fstab(host: &dyn Host, line: &str) -> Result<()> {
    let old = host.read_optional(FSTAB)?.unwrap_or_default();
    let mut out = String::new();
    for l in old.lines() {
        if l.trim() == FSTAB_COMMENT || fstab_mountpoint(l) == Some(CUBELET_DIR) {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(FSTAB_COMMENT);
    out.push('\n');
    out.push_str(line);
    out.push('\n');
    host.write_atomic(FSTAB, out.as_bytes(), 0o644)
}

fn fstab_mountpoint(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.starts_with('#') {
        return None;
    }
    t.split_whitespace().nth(1)
}

/// After the reboot: if our fstab line is there but /data/cubelet is not on
/// XFS (a `nofail` mount the new kernel could not make, or one undone since),
/// mount it again before anything is written there. Nothing to do when the
/// data-disk step kept an existing XFS and wrote no line.
pub fn remount_after_reboot(host: &dyn Host) -> Result<()> {
    let fstab = host.read_optional(FSTAB)?.unwrap_or_default();
    if !fstab.lines().any(|l| l.trim() == FSTAB_COMMENT) {
        return Ok(());
    }
    let Some(line) = fstab_line_for(&fstab, CUBELET_DIR) else {
        return Ok(());
    };
    if mount_for(host, CUBELET_DIR)?.is_some_and(|m| m.fstype == "xfs") {
        return Ok(());
    }
    host.say(&format!(
        "{CUBELET_DIR} is not mounted after the reboot; mounting {line:?}"
    ));
    mount_and_check(host, &line)
}

fn fstab_line_for(fstab: &str, mountpoint: &str) -> Option<String> {
    fstab
        .lines()
        .find(|l| fstab_mountpoint(l) == Some(mountpoint))
        .map(str::to_string)
}

fn mount_and_check(host: &dyn Host, line: &str) -> Result<()> {
    host.create_dir_all(CUBELET_DIR)?;
    // systemd regenerates mount units from fstab; mount(8) reads fstab itself.
    host.run(
        &CommandSpec::new("systemctl")
            .arg("daemon-reload")
            .allow_failure(),
    )?;
    host.run(&CommandSpec::new("mount").arg(CUBELET_DIR))?;
    host.check_change(
        &format!("that {CUBELET_DIR} is mounted XFS"),
        &mut || match mount_for(host, CUBELET_DIR)? {
            Some(m) if m.fstype == "xfs" && m.mountpoint == CUBELET_DIR => Ok(()),
            other => Err(StepFailure::new(format!(
                "{CUBELET_DIR} is not on XFS after mounting {line:?} (found {})",
                other.map_or("no mount".into(), |m| format!(
                    "{} on {}",
                    m.fstype, m.mountpoint
                ))
            ))
            .into()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LSBLK: &str = r#"{"blockdevices": [
      {"name":"vda","type":"disk","size":21474836480,"fstype":null,"mountpoint":null,"pttype":"gpt","children":[
        {"name":"vda1","type":"part","size":21473787392,"fstype":"ext4","mountpoint":"/","pttype":"gpt"}]},
      {"name":"vdb","type":"disk","size":107374182400,"fstype":null,"mountpoint":null,"pttype":null},
      {"name":"vdc","type":"disk","size":"107374182400","fstype":"ext4","mountpoint":null,"pttype":null},
      {"name":"vdd","type":"disk","size":107374182400,"fstype":null,"mountpoint":null,"pttype":"dos"},
      {"name":"vde","type":"disk","size":107374182400,"fstype":"xfs","mountpoint":"/srv","pttype":null},
      {"name":"vdf","type":"disk","size":107374182400,"fstype":"LVM2_member","mountpoint":null,"pttype":null,"children":[
        {"name":"vg-data","type":"lvm","size":107374182400,"fstype":"ext4","mountpoint":"/var/lib/data","pttype":null}]},
      {"name":"sr0","type":"rom","size":374784,"fstype":"iso9660","mountpoint":null,"pttype":null},
      {"name":"loop0","type":"loop","size":0,"fstype":null,"mountpoint":null,"pttype":null}
    ]}"#;

    #[test]
    fn disks_with_data_are_refused_with_the_reason() {
        let devices = parse_lsblk(LSBLK).unwrap();
        let table = [
            ("/dev/vda", Err("it is mounted (vda1 at /)".to_string())),
            ("/dev/vdb", Ok(())),
            ("/dev/vdc", Err("it has a filesystem signature (ext4)".into())),
            ("/dev/vdd", Err("it has a partition table (dos)".into())),
            ("/dev/vde", Err("it is mounted (/srv)".into())),
            ("/dev/vdf", Err("it is mounted (vg-data at /var/lib/data)".into())),
            ("/dev/sr0", Err("it is a rom, not a disk".into())),
            ("vdz", Err("it is not a whole disk lsblk knows (found: vda, vdb, vdc, vdd, vde, vdf, sr0, loop0)".into())),
        ];
        for (dev, want) in table {
            assert_eq!(check_named(&devices, dev), want, "{dev}");
        }
    }

    #[test]
    fn auto_takes_the_one_empty_disk_only() {
        let devices = parse_lsblk(LSBLK).unwrap();
        assert_eq!(select_auto(&devices), AutoChoice::Disk("/dev/vdb".into()));
        let only_used: Vec<_> = devices
            .iter()
            .filter(|d| d.name != "vdb")
            .cloned()
            .collect();
        assert_eq!(select_auto(&only_used), AutoChoice::None);
        let mut two = devices.clone();
        let mut extra = devices[1].clone();
        extra.name = "vdg".into();
        two.push(extra);
        assert_eq!(
            select_auto(&two),
            AutoChoice::Ambiguous(vec!["/dev/vdb".into(), "/dev/vdg".into()])
        );
    }

    #[test]
    fn nearest_mount_decides_the_filesystem() {
        let mounts = parse_mounts(
            "/dev/vda1 / ext4 rw 0 0\n/dev/vdb /data xfs rw 0 0\n/dev/vdc /data/cubelet\\040old ext4 rw 0 0\n",
        );
        assert_eq!(
            containing_mount(&mounts, "/data/cubelet").unwrap().fstype,
            "xfs"
        );
        assert_eq!(
            containing_mount(&mounts, "/var/lib").unwrap().mountpoint,
            "/"
        );
        assert_eq!(
            containing_mount(&mounts, "/data/cubelet old/x")
                .unwrap()
                .source,
            "/dev/vdc"
        );
    }
}
