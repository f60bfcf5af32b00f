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
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::digest::Sha256Digest;

mod deb;
mod entries;
mod rpm;
use deb::read_deb;
use rpm::read_rpm;

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
/// [`check_pvm_host`]. A package that is cut short or corrupted is refused:
/// every ar member must be as long as its header says, every compressed
/// stream must reach its verified end, and an RPM must match its own
/// SHA-256 header and payload digests.
pub fn read_kernel_package<R: Read>(reader: R, format: PackageFormat) -> Result<KernelFacts> {
    read_package(reader, format)?.into_facts()
}

/// Read any package of a kernel set (a split RPM kernel's `kernel`,
/// `kernel-core`, `kernel-modules`): its identity and the kernel files it
/// carries, without requiring a vmlinuz in each. Checked as
/// [`read_kernel_package`] describes.
pub fn read_package<R: Read>(reader: R, format: PackageFormat) -> Result<Contents> {
    read_package_with(reader, format, &Limits::default())
}

/// [`read_package`] with explicit resource limits.
pub fn read_package_with<R: Read>(
    reader: R,
    format: PackageFormat,
    limits: &Limits,
) -> Result<Contents> {
    let budget = Budget::new(limits.max_output);
    match format {
        PackageFormat::Deb => read_deb(reader, limits, &budget),
        PackageFormat::Rpm => read_rpm(reader, limits, &budget),
    }
}

/// What reading one package may cost: a hostile package (a 1.5 MB .deb
/// expanding to 10 GiB with a 1.5 GiB xz dictionary) must fail fast with a
/// clear error instead of taking a gigabyte of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// liblzma's memory limit for one xz/lzma stream. `xz -9` needs 65 MiB
    /// to decompress; kernel packages use far less.
    pub xz_memory: u64,
    /// Largest zstd window accepted, as a power of two (27: 128 MiB, zstd's
    /// own default limit for decoders).
    pub zstd_window_log: u32,
    /// Decompressed bytes across all members of one package. Kernel
    /// packages expand to a few hundred MiB.
    pub max_output: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            xz_memory: 128 << 20,
            zstd_window_log: 27,
            max_output: 4 << 30,
        }
    }
}

/// Decompressed bytes still allowed for this package, shared by its members.
struct Budget {
    left: std::cell::Cell<u64>,
    max: u64,
}

impl Budget {
    fn new(max: u64) -> Self {
        Self {
            left: std::cell::Cell::new(max),
            max,
        }
    }
}

/// A decompressor's output, counted against the package's [`Budget`], with
/// the decompressors' own limit errors turned into sentences naming `what`.
struct Bounded<'b, R> {
    inner: R,
    what: String,
    budget: &'b Budget,
    limits: Limits,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| self.explain(e))?;
        let left = self.budget.left.get();
        if n as u64 > left {
            return Err(io::Error::other(format!(
                "{} expands past the {} KiB limit on decompressed data for one package",
                self.what,
                self.budget.max >> 10
            )));
        }
        self.budget.left.set(left - n as u64);
        Ok(n)
    }
}

impl<R> Bounded<'_, R> {
    fn explain(&self, e: io::Error) -> io::Error {
        let xz_limit = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<xz2::stream::Error>())
            .is_some_and(|x| matches!(x, xz2::stream::Error::MemLimit));
        let text = e.to_string();
        if xz_limit {
            io::Error::other(format!(
                "{} needs more than {} MiB of memory to decompress (its xz dictionary is too large for a kernel package)",
                self.what,
                self.limits.xz_memory >> 20
            ))
        } else if text.contains("Frame requires too much memory") {
            io::Error::other(format!(
                "{} needs a zstd window over {} KiB to decompress",
                self.what,
                (1u64 << self.limits.zstd_window_log) >> 10
            ))
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                e.kind(),
                format!(
                    "{} is truncated: its compressed stream ends early",
                    self.what
                ),
            )
        } else {
            io::Error::new(e.kind(), format!("{}: {e}", self.what))
        }
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

/// Pick a decompressor from a member name's or compressor's suffix, bounded
/// by `limits` and the package's output budget.
fn decompressor<'a, R: Read + 'a>(
    kind: &str,
    inner: R,
    what: &str,
    limits: &Limits,
    budget: &'a Budget,
) -> Result<Box<dyn Read + 'a>> {
    let raw: Box<dyn Read + 'a> = match kind {
        "" | "tar" | "none" => Box::new(inner),
        "gz" | "gzip" => Box::new(flate2::read::MultiGzDecoder::new(inner)),
        "xz" | "lzma" => {
            // The auto decoder reads .xz and legacy .lzma (rpm's "lzma").
            let stream =
                xz2::stream::Stream::new_auto_decoder(limits.xz_memory, xz2::stream::CONCATENATED)
                    .context("starting the xz decoder")?;
            Box::new(xz2::read::XzDecoder::new_stream(inner, stream))
        }
        "zst" | "zstd" => {
            let mut d = zstd::stream::read::Decoder::new(inner)?;
            d.window_log_max(limits.zstd_window_log)?;
            Box::new(d)
        }
        other => bail!("unsupported compression {other:?}"),
    };
    Ok(Box::new(Bounded {
        inner: raw,
        what: what.to_string(),
        budget,
        limits: *limits,
    }))
}

/// Read a decompressed stream to its end: past the tar end-of-archive
/// blocks, so the decompressor reaches and checks its own end (xz and zstd
/// checksums, gzip CRC32); a stream cut short fails here.
fn to_end(mut stream: impl Read, what: &str) -> Result<()> {
    io::copy(&mut stream, &mut io::sink()).with_context(|| format!("reading {what} to its end"))?;
    Ok(())
}

/// `cubeboot inspect FILE`: for a kernel package, what the lock would record;
/// anything else is listed as an image overlay by the overlay reader.
pub fn inspect(path: &Path) -> Result<()> {
    let name = path.display().to_string();
    let format = if name.ends_with(".rpm") {
        PackageFormat::Rpm
    } else if name.ends_with(".deb") {
        PackageFormat::Deb
    } else if name.ends_with(".tar.xz") {
        return super::overlay::inspect(path);
    } else {
        bail!("{name}: inspect reads overlays (.tar.xz) and .rpm and .deb kernel packages");
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {name}"))?;
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

    /// A .deb built in memory: control.tar.gz, and data.tar.`comp` holding
    /// a kernel and `zeros` bytes of zeros.
    fn deb(comp: &str, zeros: usize) -> Vec<u8> {
        let tar_of = |files: &[(&str, Vec<u8>)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (path, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            b.into_inner().unwrap()
        };
        let gz = |raw: Vec<u8>| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &raw).unwrap();
            e.finish().unwrap()
        };
        let control = gz(tar_of(&[(
            "./control",
            b"Package: linux-image-1\nVersion: 1\n".to_vec(),
        )]));
        let data = tar_of(&[
            ("./boot/vmlinuz-6.1.0-pvm.host", b"k".to_vec()),
            ("./zeros", vec![0u8; zeros]),
        ]);
        let data = match comp {
            "gz" => gz(data),
            "zst" => zstd::encode_all(&data[..], 3).unwrap(),
            _ => unreachable!(),
        };
        let mut ar = ar::Builder::new(Vec::new());
        for (name, body) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", control),
            (&format!("data.tar.{comp}")[..], data),
        ] {
            let h = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
            ar.append(&h, &body[..]).unwrap();
        }
        ar.into_inner().unwrap()
    }

    #[test]
    fn decompressed_output_is_capped_per_package() {
        let bytes = deb("gz", 2 << 20);
        let limits = Limits {
            max_output: 1 << 20,
            ..Limits::default()
        };
        let err = read_package_with(&bytes[..], PackageFormat::Deb, &limits).unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("data.tar.gz expands past the 1024 KiB limit on decompressed data"),
            "{err:#}"
        );
        // Under the default limits the same package reads.
        let f = read_kernel_package(&bytes[..], PackageFormat::Deb).unwrap();
        assert_eq!(f.kver, "6.1.0-pvm.host");
    }

    #[test]
    fn zstd_windows_are_capped() {
        let bytes = deb("zst", 1 << 20);
        let limits = Limits {
            zstd_window_log: 10,
            ..Limits::default()
        };
        let err = read_package_with(&bytes[..], PackageFormat::Deb, &limits).unwrap_err();
        assert!(
            format!("{err:#}").contains("data.tar.zst needs a zstd window over 1 KiB"),
            "{err:#}"
        );
        read_kernel_package(&bytes[..], PackageFormat::Deb).unwrap();
    }

    #[test]
    fn not_a_package_is_refused() {
        let junk = [b'x'; 200];
        let err = read_kernel_package(&junk[..], PackageFormat::Rpm).unwrap_err();
        assert_eq!(err.to_string(), "not an rpm: bad lead magic");
    }
}
