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
    let contents = match format {
        PackageFormat::Deb => read_deb(reader)?,
        PackageFormat::Rpm => read_rpm(reader)?,
    };
    contents.into_facts()
}

/// Refuse what is not a PVM host kernel with its module (facts §8: detect with
/// the substring `pvm.host`, exclude `pvm.guest`). `allow_non_pvm` relaxes
/// only the name rule, for test fixtures built from stock kernels; the module
/// is always required because the helper loads it after the reboot.
pub fn check_pvm_host(name: &str, facts: &KernelFacts, allow_non_pvm: bool) -> Result<()> {
    let kver = &facts.kver;
    if facts.module.is_none() {
        bail!(
            "{name}: kernel {kver} has no kvm-pvm module (looked for lib/modules/{kver}/**/kvm-pvm.ko or kvm_pvm.ko, optionally .xz/.zst/.gz)"
        );
    }
    if allow_non_pvm {
        return Ok(());
    }
    if kver.contains("pvm.guest") {
        bail!("{name}: kernel release {kver} is a PVM guest kernel (`pvm.guest`); hosts need a `pvm.host` kernel");
    }
    if !kver.contains("pvm.host") {
        bail!("{name}: kernel release {kver} does not contain `pvm.host`, so it is not a PVM host kernel (pass --allow-non-pvm-kernel for test fixtures only)");
    }
    Ok(())
}

/// What a package scan found.
#[derive(Debug, Default)]
struct Contents {
    package: Option<String>,
    version: Option<String>,
    /// (path, KVER) for each vmlinuz found.
    kernels: Vec<(String, String)>,
    /// (path, KVER directory) for each kvm-pvm module found.
    modules: Vec<(String, String)>,
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

/// Read one header structure (signature or main). Returns it and its size.
fn read_rpm_header<R: Read>(r: &mut R, what: &str) -> Result<(RpmHeader, usize)> {
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
    Ok((header, 16 + count * 16 + data_len))
}

fn read_rpm<R: Read>(reader: R) -> Result<Contents> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let mut lead = [0u8; 96];
    r.read_exact(&mut lead).context("reading the rpm lead")?;
    if lead[..4] != RPM_LEAD_MAGIC {
        bail!("not an rpm: bad lead magic");
    }
    // The signature header is padded to a multiple of 8 bytes.
    let (_, sig_len) = read_rpm_header(&mut r, "signature")?;
    let pad = (8 - sig_len % 8) % 8;
    let mut skip = vec![0u8; pad];
    r.read_exact(&mut skip)?;
    let (header, _) = read_rpm_header(&mut r, "main")?;

    let mut contents = Contents {
        package: header.string(TAG_NAME).map(str::to_string),
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
    match check_pvm_host(&name, &facts, false) {
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
        check_pvm_host("k.rpm", &f, false).unwrap();
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
    fn refusals_have_exact_messages() {
        let f = KernelFacts {
            kver: "6.1.0-26-amd64".into(),
            package: "linux-image-6.1.0-26-amd64".into(),
            version: "6.1.112-1".into(),
            module: Some("lib/modules/6.1.0-26-amd64/extra/kvm-pvm.ko".into()),
        };
        assert_eq!(
            check_pvm_host("a.deb", &f, false).unwrap_err().to_string(),
            "a.deb: kernel release 6.1.0-26-amd64 does not contain `pvm.host`, so it is not a PVM host kernel (pass --allow-non-pvm-kernel for test fixtures only)"
        );
        check_pvm_host("a.deb", &f, true).unwrap();
        let guest = KernelFacts {
            kver: "6.6.69-cube.pvm.guest.005".into(),
            ..f.clone()
        };
        assert_eq!(
            check_pvm_host("g.deb", &guest, false).unwrap_err().to_string(),
            "g.deb: kernel release 6.6.69-cube.pvm.guest.005 is a PVM guest kernel (`pvm.guest`); hosts need a `pvm.host` kernel"
        );
        let nomod = KernelFacts { module: None, ..f };
        assert_eq!(
            check_pvm_host("n.deb", &nomod, true).unwrap_err().to_string(),
            "n.deb: kernel 6.1.0-26-amd64 has no kvm-pvm module (looked for lib/modules/6.1.0-26-amd64/**/kvm-pvm.ko or kvm_pvm.ko, optionally .xz/.zst/.gz)"
        );
    }

    #[test]
    fn not_a_package_is_refused() {
        let junk = [b'x'; 200];
        let err = read_kernel_package(&junk[..], PackageFormat::Rpm).unwrap_err();
        assert_eq!(err.to_string(), "not an rpm: bad lead magic");
    }
}
