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

use crate::digest::{HashingReader, Sha256Digest};

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

fn read_deb<R: Read>(reader: R, limits: &Limits, budget: &Budget) -> Result<Contents> {
    let mut contents = Contents::default();
    let mut archive = ar::Archive::new(Counted {
        inner: reader,
        n: 0,
    });
    let mut saw_magic = false;
    // The archive's length by its own headers: magic, then each member's
    // header, data and padding to an even offset.
    let mut expected = 8u64;
    while let Some(entry) = archive.next_entry() {
        let entry = entry.context("reading the .deb ar archive")?;
        let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let id = id.trim_end_matches('/').to_string();
        let size = entry.header().size();
        expected += 60 + size + size % 2;
        // Count what the member really holds: a file cut short gives fewer
        // bytes than the ar header promises, and the ar reader does not say.
        let mut member = Counted { inner: entry, n: 0 };
        if id == "debian-binary" {
            saw_magic = true;
        } else if let Some(comp) = id.strip_prefix("control.tar") {
            let comp = comp.trim_start_matches('.');
            let mut tar = tar::Archive::new(decompressor(comp, &mut member, &id, limits, budget)?);
            for file in tar.entries().context("reading control.tar")? {
                let mut file = file.context("reading control.tar")?;
                let path = file.path()?.to_string_lossy().into_owned();
                if path.trim_start_matches("./") == "control" {
                    // A control file is a few KiB; 1 MiB is far past any.
                    let text = crate::bounded_read::read_text_limited(&mut file, 1 << 20)
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
            to_end(tar.into_inner(), &id)?;
        } else if let Some(comp) = id.strip_prefix("data.tar") {
            let comp = comp.trim_start_matches('.');
            let mut tar = tar::Archive::new(decompressor(comp, &mut member, &id, limits, budget)?);
            for file in tar.entries().with_context(|| format!("reading {id}"))? {
                let file = file.with_context(|| format!("reading {id}"))?;
                contents.note_path(&file.path()?.to_string_lossy());
            }
            to_end(tar.into_inner(), &id)?;
        }
        // Whatever follows the compressed stream inside the member.
        io::copy(&mut member, &mut io::sink()).with_context(|| format!("reading {id}"))?;
        if member.n != size {
            bail!(
                "the .deb is truncated: ar member {id} should be {size} bytes, but the file ends after {}",
                member.n
            );
        }
    }
    if !saw_magic {
        bail!("not a .deb: no debian-binary member");
    }
    let mut rest = archive.into_inner().context("reading the .deb")?;
    io::copy(&mut rest, &mut io::sink()).context("reading the .deb")?;
    if rest.n < expected {
        bail!(
            "the .deb is truncated: its ar headers add up to {expected} bytes, but the file ends after {}",
            rest.n
        );
    }
    Ok(contents)
}

/// Read a decompressed stream to its end: past the tar end-of-archive
/// blocks, so the decompressor reaches and checks its own end (xz and zstd
/// checksums, gzip CRC32); a stream cut short fails here.
fn to_end(mut stream: impl Read, what: &str) -> Result<()> {
    io::copy(&mut stream, &mut io::sink()).with_context(|| format!("reading {what} to its end"))?;
    Ok(())
}

/// A reader that counts the bytes it passed on.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
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
/// Signature header: SHA-256 (hex) of the main header (rpm `RPMSIGTAG_SHA256`).
const SIGTAG_SHA256: u32 = 273;
/// Main header: digests (hex) of the compressed payload, and their algorithm
/// (rpm `RPMTAG_PAYLOADDIGEST`, `RPMTAG_PAYLOADDIGESTALGO`; 8 is SHA-256).
const TAG_PAYLOADDIGEST: u32 = 5092;
const TAG_PAYLOADDIGESTALGO: u32 = 5093;
const PGPHASHALGO_SHA256: u32 = 8;

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

    fn int(&self, tag: u32) -> Option<u32> {
        self.ints.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
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
    r.read_exact(&mut index)
        .with_context(|| format!("reading the rpm {what} header: the file is truncated"))?;
    let mut data = vec![0u8; data_len];
    r.read_exact(&mut data)
        .with_context(|| format!("reading the rpm {what} header: the file is truncated"))?;
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

fn read_rpm<R: Read>(reader: R, limits: &Limits, budget: &Budget) -> Result<Contents> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let mut lead = [0u8; 96];
    r.read_exact(&mut lead).context("reading the rpm lead")?;
    if lead[..4] != RPM_LEAD_MAGIC {
        bail!("not an rpm: bad lead magic");
    }
    // The signature header is padded to a multiple of 8 bytes.
    let (signature, sig_len, _) = read_rpm_header(&mut r, "signature")?;
    let pad = (8 - sig_len % 8) % 8;
    let mut skip = vec![0u8; pad];
    r.read_exact(&mut skip)
        .context("reading the rpm signature header: the file is truncated")?;
    let (header, _, header_sha256) = read_rpm_header(&mut r, "main")?;

    // The package's own digests, checked before anything is pinned: a bit
    // flipped anywhere in the main header or the payload changes one.
    let want_header = signature.string(SIGTAG_SHA256).context(
        "the rpm signature header carries no SHA-256 header digest (RPMSIGTAG_SHA256); refusing to pin an unverifiable package",
    )?;
    if !want_header.eq_ignore_ascii_case(&header_sha256.to_hex()) {
        bail!(
            "the rpm main header does not match its SHA-256 digest: the signature header says {want_header}, computed {header_sha256}; the package is corrupted"
        );
    }
    let want_payload = header.string(TAG_PAYLOADDIGEST).context(
        "the rpm header carries no payload digest (RPMTAG_PAYLOADDIGEST, rpm 4.14 and later); refusing to pin an unverifiable package",
    )?;
    let algo = header
        .int(TAG_PAYLOADDIGESTALGO)
        .unwrap_or(PGPHASHALGO_SHA256);
    if algo != PGPHASHALGO_SHA256 {
        bail!("the rpm payload digest uses hash algorithm {algo}; only SHA-256 (8) is checked");
    }
    let want_payload = want_payload.to_string();

    let mut contents = Contents {
        package: header.string(TAG_NAME).map(str::to_string),
        arch: header.string(TAG_ARCH).map(str::to_string),
        header_sha256: Some(header_sha256),
        ..Contents::default()
    };
    if let (Some(v), Some(rel)) = (header.string(TAG_VERSION), header.string(TAG_RELEASE)) {
        let epoch = header
            .int(TAG_EPOCH)
            .map(|e| format!("{e}:"))
            .unwrap_or_default();
        contents.version = Some(format!("{epoch}{v}-{rel}"));
    }
    let format = header.string(TAG_PAYLOADFORMAT).unwrap_or("cpio");
    if format != "cpio" {
        bail!("unsupported rpm payload format {format:?} (expected cpio)");
    }
    let compressor = header.string(TAG_PAYLOADCOMPRESSOR).unwrap_or("gzip");
    // The payload digest covers the compressed bytes to the end of the file.
    let mut raw = HashingReader::new(&mut r);
    let mut payload = decompressor(compressor, &mut raw, "the rpm payload", limits, budget)?;
    loop {
        let entry = cpio::NewcReader::new(&mut payload).context("reading the rpm cpio payload")?;
        if entry.entry().is_trailer() {
            break;
        }
        contents.note_path(entry.entry().name());
        entry.finish().context("reading the rpm cpio payload")?;
    }
    to_end(payload, "the rpm payload")?;
    // Leave nothing unread for the caller's hash: consume the rest.
    io::copy(&mut raw, &mut io::sink())?;
    let (payload_digest, _) = raw.finish();
    if !want_payload.eq_ignore_ascii_case(&payload_digest.to_hex()) {
        bail!(
            "the rpm payload does not match its SHA-256 digest: the header says {want_payload}, computed {payload_digest}; the package is corrupted or truncated"
        );
    }
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
