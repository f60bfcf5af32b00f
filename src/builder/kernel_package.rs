//! Read kernel packages in their real formats at lock time, so the lock
//! records the exact kernel release (KVER) the target will boot, and a package
//! that is not a PVM host kernel is refused before it reaches any server.
//!
//! - `.deb`: an `ar` archive; `control.tar.*` names the package, `data.tar.*`
//!   (xz, gz, zst or plain) holds the files.
//! - `.rpm`: a 96-byte lead, a signature header (padded to 8 bytes), the main
//!   header (NAME, VERSION, RELEASE, payload compressor), then a compressed
//!   newc cpio payload (gzip, xz/lzma or zstd).
//!
//! Everything is read as a stream: the caller hashes the same bytes in the
//! same pass (`digest::HashingReader`).

use std::io::{self, BufReader, Read};

use anyhow::{bail, Context, Result};

use crate::digest::Sha256Digest;

/// Kernel facts recorded in the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFacts {
    /// `uname -r` of the kernel in the package (from `/boot/vmlinuz-KVER`).
    pub kver: String,
    /// Package name as the package manager knows it.
    pub package: String,
    /// deb `Version`, or rpm `[EPOCH:]VERSION-RELEASE`.
    pub version: String,
    /// Path of the kvm-pvm module inside the package (no leading `/`).
    pub module: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageFormat {
    Deb,
    Rpm,
}

/// Read a kernel package and collect its facts. Does not judge them; see
/// [`check_pvm_host`].
pub fn read_kernel_package<R: Read>(reader: R, format: PackageFormat) -> Result<KernelFacts> {
    read_package(reader, format)?.into_facts()
}

/// Read any package of a kernel set (a split RPM kernel's `kernel`,
/// `kernel-core`, `kernel-modules`): its identity and the kernel files it
/// carries, without requiring a vmlinuz in each.
pub fn read_package<R: Read>(reader: R, format: PackageFormat) -> Result<Contents> {
    match format {
        PackageFormat::Deb => read_deb(reader),
        PackageFormat::Rpm => read_rpm(reader),
    }
}

/// The facts of a kernel split over several packages (RHEL style: the
/// vmlinuz in `kernel-core`, kvm-pvm.ko in `kernel-modules` or
/// `kernel-core`): one KVER across the set, the module looked for in every
/// package. `package`/`version` name the package that pulls in the rest
/// (`kernel` when the set has it), which is what holds and "already
/// installed" checks use.
pub fn set_facts(set: &[Contents]) -> Result<KernelFacts> {
    let mut all = Contents::default();
    for c in set {
        all.kernels.extend(c.kernels.iter().cloned());
        all.modules.extend(c.modules.iter().cloned());
    }
    let top = set
        .iter()
        .find(|c| c.package.as_deref() == Some("kernel"))
        .or_else(|| set.iter().find(|c| !c.kernels.is_empty()))
        .context("an empty package set")?;
    all.package = top.package.clone();
    all.version = top.version.clone();
    all.into_facts()
}

/// Refuse what is not a PVM host kernel. The package contents decide:
/// a host kernel carries the kvm-pvm module for its own KVER (the helper
/// loads it after the reboot). The name is no proof either way: upstream's
/// release strings changed (`cube.pvm.host`, `cubesandbox.pvm.host`) and the
/// OpenCloudOS 9 repository's kernel (`kernel-6.6.69-1.1.cubesandbox.oc9`)
/// need not say `pvm.host` at all (docs/pvm-kernel.md). A `pvm.guest`
/// release is still refused: it is the guest half of the pair.
pub fn check_pvm_host(name: &str, facts: &KernelFacts) -> Result<()> {
    let kver = &facts.kver;
    if kver.contains("pvm.guest") {
        bail!("{name}: kernel release {kver} is a PVM guest kernel (`pvm.guest`); hosts need the host kernel, which carries kvm-pvm.ko");
    }
    if facts.module.is_none() {
        bail!(
            "{name}: kernel {kver} has no kvm-pvm module, so it is not a PVM host kernel (looked for lib/modules/{kver}/**/kvm-pvm.ko or kvm_pvm.ko, optionally .xz/.zst/.gz)"
        );
    }
    Ok(())
}

/// What a package scan found.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    pub package: Option<String>,
    /// deb `Version`, or rpm `[EPOCH:]VERSION-RELEASE`.
    pub version: Option<String>,
    /// rpm `ARCH` (`x86_64`, `noarch`).
    pub arch: Option<String>,
    /// SHA-256 of the rpm's main header, what `rpm -q --qf '%{SHA256HEADER}'`
    /// prints for the installed package: it covers the file digests, so it
    /// identifies the installed payload.
    pub header_sha256: Option<Sha256Digest>,
    /// (path, KVER) for each vmlinuz found.
    pub kernels: Vec<(String, String)>,
    /// (path, KVER directory) for each kvm-pvm module found.
    pub modules: Vec<(String, String)>,
}

impl Contents {
    fn note_path(&mut self, raw: &str) {
        let path = raw.trim_start_matches("./").trim_start_matches('/');
        if let Some(kver) = path.strip_prefix("boot/vmlinuz-") {
            if !kver.is_empty() && !kver.contains('/') {
                self.kernels.push((path.to_string(), kver.to_string()));
            }
            return;
        }
        let under_modules = path
            .strip_prefix("usr/lib/modules/")
            .or_else(|| path.strip_prefix("lib/modules/"));
        let Some(rest) = under_modules else {
            return;
        };
        let Some((kver, inner)) = rest.split_once('/') else {
            return;
        };
        if inner == "vmlinuz" {
            // Fedora/RHEL style: kernel-install copies it to /boot later.
            self.kernels.push((path.to_string(), kver.to_string()));
            return;
        }
        let file = inner.rsplit('/').next().unwrap_or(inner);
        let base = ["", ".xz", ".zst", ".gz"]
            .iter()
            .find_map(|ext| file.strip_suffix(&format!(".ko{ext}")));
        if matches!(base, Some("kvm-pvm" | "kvm_pvm")) {
            self.modules.push((path.to_string(), kver.to_string()));
        }
    }

    fn into_facts(self) -> Result<KernelFacts> {
        let mut kvers: Vec<&String> = self.kernels.iter().map(|(_, k)| k).collect();
        kvers.sort();
        kvers.dedup();
        let kver = match kvers.as_slice() {
            [one] => (*one).clone(),
            [] => bail!("no /boot/vmlinuz-KVER (or lib/modules/KVER/vmlinuz) in the package; is this a kernel image package?"),
            many => bail!(
                "the package holds several kernels ({}); lock one kernel per package",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        };
        let module = self
            .modules
            .iter()
            .find(|(_, k)| *k == kver)
            .map(|(p, _)| p.clone());
        Ok(KernelFacts {
            package: self.package.context("the package metadata has no name")?,
            version: self
                .version
                .context("the package metadata has no version")?,
            kver,
            module,
        })
    }
}

/// Pick a decompressor from a member name's or compressor's suffix.
fn decompressor<'a, R: Read + 'a>(kind: &str, inner: R) -> Result<Box<dyn Read + 'a>> {
    Ok(match kind {
        "" | "tar" | "none" => Box::new(inner),
        "gz" | "gzip" => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        "xz" | "lzma" => Box::new(xz2::read::XzDecoder::new_multi_decoder(inner)),
        "zst" | "zstd" => Box::new(zstd::stream::read::Decoder::new(inner)?),
        other => bail!("unsupported compression {other:?}"),
    })
}

fn read_deb<R: Read>(reader: R) -> Result<Contents> {
    let mut contents = Contents::default();
    let mut archive = ar::Archive::new(reader);
    let mut saw_magic = false;
    while let Some(entry) = archive.next_entry() {
        let entry = entry.context("reading the .deb ar archive")?;
        let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let id = id.trim_end_matches('/').to_string();
        if id == "debian-binary" {
            saw_magic = true;
        } else if let Some(comp) = id.strip_prefix("control.tar") {
            let comp = comp.trim_start_matches('.');
            let mut tar = tar::Archive::new(decompressor(comp, entry)?);
            for file in tar.entries().context("reading control.tar")? {
                let mut file = file.context("reading control.tar")?;
                let path = file.path()?.to_string_lossy().into_owned();
                if path.trim_start_matches("./") == "control" {
                    let mut text = String::new();
                    file.read_to_string(&mut text)
                        .context("reading the control file")?;
                    for line in text.lines() {
                        if let Some(v) = line.strip_prefix("Package:") {
                            contents.package = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("Version:") {
                            contents.version = Some(v.trim().to_string());
                        }
                    }
                }
            }
        } else if let Some(comp) = id.strip_prefix("data.tar") {
            let comp = comp.trim_start_matches('.');
            let mut tar = tar::Archive::new(decompressor(comp, entry)?);
            for file in tar.entries().with_context(|| format!("reading {id}"))? {
                let file = file.with_context(|| format!("reading {id}"))?;
                contents.note_path(&file.path()?.to_string_lossy());
            }
        }
    }
    if !saw_magic {
        bail!("not a .deb: no debian-binary member");
    }
    Ok(contents)
}

const RPM_LEAD_MAGIC: [u8; 4] = [0xed, 0xab, 0xee, 0xdb];
const RPM_HEADER_MAGIC: [u8; 3] = [0x8e, 0xad, 0xe8];
const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_PAYLOADFORMAT: u32 = 1124;
const TAG_PAYLOADCOMPRESSOR: u32 = 1125;

/// The tags of one RPM header we care about.
#[derive(Debug, Default)]
struct RpmHeader {
    strings: Vec<(u32, String)>,
    ints: Vec<(u32, u32)>,
}

impl RpmHeader {
    fn string(&self, tag: u32) -> Option<&str> {
        self.strings
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, s)| s.as_str())
    }
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    // Callers bound `at + 4 <= buf.len()`.
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Read one header structure (signature or main). Returns it, its size and
/// the SHA-256 of its bytes (magic included, as rpm computes SHA256HEADER).
fn read_rpm_header<R: Read>(r: &mut R, what: &str) -> Result<(RpmHeader, usize, Sha256Digest)> {
    let mut intro = [0u8; 16];
    r.read_exact(&mut intro)
        .with_context(|| format!("reading the rpm {what} header"))?;
    if intro[..3] != RPM_HEADER_MAGIC {
        bail!("not an rpm: bad {what} header magic");
    }
    let count = read_u32(&intro, 8) as usize;
    let data_len = read_u32(&intro, 12) as usize;
    // Real headers are far below these; refuse absurd sizes before allocating.
    if count > 1 << 20 || data_len > 256 << 20 {
        bail!("rpm {what} header is implausibly large ({count} tags, {data_len} bytes)");
    }
    let mut index = vec![0u8; count * 16];
    r.read_exact(&mut index)?;
    let mut data = vec![0u8; data_len];
    r.read_exact(&mut data)?;
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(intro);
        h.update(&index);
        h.update(&data);
        Sha256Digest::from_bytes(h.finalize().into())
    };
    let mut header = RpmHeader::default();
    for entry in index.chunks_exact(16) {
        let (tag, kind, offset, n) = (
            read_u32(entry, 0),
            read_u32(entry, 4),
            read_u32(entry, 8) as usize,
            read_u32(entry, 12),
        );
        match kind {
            // STRING, I18NSTRING (first entry), STRING_ARRAY (first entry).
            6 | 8 | 9 if offset < data.len() => {
                let end = data[offset..]
                    .iter()
                    .position(|b| *b == 0)
                    .map_or(data.len(), |p| offset + p);
                header.strings.push((
                    tag,
                    String::from_utf8_lossy(&data[offset..end]).into_owned(),
                ));
            }
            4 if n >= 1 && offset + 4 <= data.len() => {
                header.ints.push((tag, read_u32(&data, offset)))
            }
            _ => {}
        }
    }
    Ok((header, 16 + count * 16 + data_len, digest))
}

fn read_rpm<R: Read>(reader: R) -> Result<Contents> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let mut lead = [0u8; 96];
    r.read_exact(&mut lead).context("reading the rpm lead")?;
    if lead[..4] != RPM_LEAD_MAGIC {
        bail!("not an rpm: bad lead magic");
    }
    // The signature header is padded to a multiple of 8 bytes.
    let (_, sig_len, _) = read_rpm_header(&mut r, "signature")?;
    let pad = (8 - sig_len % 8) % 8;
    let mut skip = vec![0u8; pad];
    r.read_exact(&mut skip)?;
    let (header, _, header_sha256) = read_rpm_header(&mut r, "main")?;

    let mut contents = Contents {
        package: header.string(TAG_NAME).map(str::to_string),
        arch: header.string(TAG_ARCH).map(str::to_string),
        header_sha256: Some(header_sha256),
        ..Contents::default()
    };
    if let (Some(v), Some(rel)) = (header.string(TAG_VERSION), header.string(TAG_RELEASE)) {
        let epoch = header
            .ints
            .iter()
            .find(|(t, _)| *t == TAG_EPOCH)
            .map(|(_, e)| format!("{e}:"))
            .unwrap_or_default();
        contents.version = Some(format!("{epoch}{v}-{rel}"));
    }
    let format = header.string(TAG_PAYLOADFORMAT).unwrap_or("cpio");
    if format != "cpio" {
        bail!("unsupported rpm payload format {format:?} (expected cpio)");
    }
    let compressor = header.string(TAG_PAYLOADCOMPRESSOR).unwrap_or("gzip");
    let mut payload = decompressor(compressor, &mut r)?;
    loop {
        let entry = cpio::NewcReader::new(&mut payload).context("reading the rpm cpio payload")?;
        if entry.entry().is_trailer() {
            break;
        }
        contents.note_path(entry.entry().name());
        entry.finish().context("reading the rpm cpio payload")?;
    }
    drop(payload);
    // Leave nothing unread for the caller's hash: consume the rest.
    io::copy(&mut r, &mut io::sink())?;
    Ok(contents)
}

/// `cubeboot inspect FILE`: for a kernel package, what the lock would record;
/// anything else is listed as an image overlay by the overlay reader.
pub fn inspect(args: super::cli::InspectArgs) -> Result<()> {
    let name = args.file.display().to_string();
    let format = if name.ends_with(".rpm") {
        PackageFormat::Rpm
    } else if name.ends_with(".deb") {
        PackageFormat::Deb
    } else if name.ends_with(".tar.xz") {
        return super::overlay::inspect(args);
    } else {
        bail!("{name}: inspect reads overlays (.tar.xz) and .rpm and .deb kernel packages");
    };
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {name}"))?;
    let facts = read_kernel_package(BufReader::new(file), format)
        .with_context(|| format!("inspecting {name}"))?;
    println!("package: {}", facts.package);
    println!("version: {}", facts.version);
    println!("kver:    {}", facts.kver);
    println!("module:  {}", facts.module.as_deref().unwrap_or("(none)"));
    match check_pvm_host(&name, &facts) {
        Ok(()) => println!("pvm-host: yes"),
        Err(e) => println!("pvm-host: no ({e})"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_kernels_and_modules_in_all_layouts() {
        let mut c = Contents {
            package: Some("kernel".into()),
            version: Some("1-1".into()),
            ..Contents::default()
        };
        for p in [
            "./boot/vmlinuz-6.6.69-x.pvm.host-g1",
            "./boot/System.map-6.6.69-x.pvm.host-g1",
            "./lib/modules/6.6.69-x.pvm.host-g1/kernel/arch/x86/kvm/kvm-pvm.ko.xz",
            "./lib/modules/6.6.69-x.pvm.host-g1/kernel/arch/x86/kvm/kvm.ko",
        ] {
            c.note_path(p);
        }
        let f = c.into_facts().unwrap();
        assert_eq!(f.kver, "6.6.69-x.pvm.host-g1");
        assert_eq!(
            f.module.as_deref(),
            Some("lib/modules/6.6.69-x.pvm.host-g1/kernel/arch/x86/kvm/kvm-pvm.ko.xz")
        );
        check_pvm_host("k.rpm", &f).unwrap();
    }

    #[test]
    fn usr_lib_vmlinuz_and_underscore_module() {
        let mut c = Contents {
            package: Some("kernel-core".into()),
            version: Some("1-1".into()),
            ..Contents::default()
        };
        c.note_path("usr/lib/modules/6.1.0-pvm.host/vmlinuz");
        c.note_path("usr/lib/modules/6.1.0-pvm.host/extra/kvm_pvm.ko.zst");
        let f = c.into_facts().unwrap();
        assert_eq!(f.kver, "6.1.0-pvm.host");
        assert!(f.module.is_some());
    }

    #[test]
    fn the_module_decides_not_the_name() {
        // The OpenCloudOS 9 repository's release string has no `pvm.host`.
        let f = KernelFacts {
            kver: "6.6.69-1.1.cubesandbox.oc9.x86_64".into(),
            package: "kernel".into(),
            version: "6.6.69-1.1.cubesandbox.oc9".into(),
            module: Some(
                "lib/modules/6.6.69-1.1.cubesandbox.oc9.x86_64/kernel/arch/x86/kvm/kvm-pvm.ko"
                    .into(),
            ),
        };
        check_pvm_host("kernel-6.6.69-1.1.cubesandbox.oc9", &f).unwrap();
        let nomod = KernelFacts {
            module: None,
            ..f.clone()
        };
        assert_eq!(
            check_pvm_host("n.rpm", &nomod).unwrap_err().to_string(),
            "n.rpm: kernel 6.6.69-1.1.cubesandbox.oc9.x86_64 has no kvm-pvm module, so it is not a PVM host kernel (looked for lib/modules/6.6.69-1.1.cubesandbox.oc9.x86_64/**/kvm-pvm.ko or kvm_pvm.ko, optionally .xz/.zst/.gz)"
        );
        // A guest kernel is refused even when something put the module in.
        let guest = KernelFacts {
            kver: "6.6.69-cube.pvm.guest.005".into(),
            ..f
        };
        assert_eq!(
            check_pvm_host("g.deb", &guest).unwrap_err().to_string(),
            "g.deb: kernel release 6.6.69-cube.pvm.guest.005 is a PVM guest kernel (`pvm.guest`); hosts need the host kernel, which carries kvm-pvm.ko"
        );
    }

    #[test]
    fn a_split_kernel_is_judged_across_its_packages() {
        let kver = "6.6.69-1.1.cubesandbox.oc9.x86_64";
        let pkg = |name: &str, paths: &[String]| {
            let mut c = Contents {
                package: Some(name.into()),
                version: Some("6.6.69-1.1.cubesandbox.oc9".into()),
                ..Contents::default()
            };
            for p in paths {
                c.note_path(p);
            }
            c
        };
        let core = pkg(
            "kernel-core",
            &[
                format!("/lib/modules/{kver}/vmlinuz"),
                format!("/lib/modules/{kver}/kernel/arch/x86/kvm/kvm.ko"),
            ],
        );
        let modules = pkg(
            "kernel-modules",
            &[format!(
                "/lib/modules/{kver}/kernel/arch/x86/kvm/kvm-pvm.ko"
            )],
        );
        let meta = pkg("kernel", &[]);
        // kernel-core alone has no module: not a host kernel by itself.
        let alone = set_facts(std::slice::from_ref(&core)).unwrap();
        assert!(check_pvm_host("kernel-core", &alone).is_err());
        let f = set_facts(&[meta.clone(), core.clone(), modules]).unwrap();
        assert_eq!(f.kver, kver);
        assert_eq!(f.package, "kernel");
        assert_eq!(
            f.module.as_deref(),
            Some(format!("lib/modules/{kver}/kernel/arch/x86/kvm/kvm-pvm.ko").as_str())
        );
        check_pvm_host("kernel", &f).unwrap();
        // Without kernel-core there is no vmlinuz in the set.
        assert!(set_facts(&[meta]).is_err());
    }

    #[test]
    fn not_a_package_is_refused() {
        let junk = [b'x'; 200];
        let err = read_kernel_package(&junk[..], PackageFormat::Rpm).unwrap_err();
        assert_eq!(err.to_string(), "not an rpm: bad lead magic");
    }
}
