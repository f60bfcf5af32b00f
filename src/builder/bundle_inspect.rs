//! Reading a one-click bundle the way `cubeboot lock` reads a kernel
//! package: one bounded pass over the tar.gz (and the
//! `assets/package/sandbox-package.tar.gz` nested in it, where upstream
//! ships its systemd units and start scripts) keeps only the small text
//! files that say what the bundle needs and opens; `bundle_classify` turns
//! them into facts. `cubeboot inspect BUNDLE` prints those facts.
//! docs/cube-installer.md, "What lock reads out of a bundle".

use std::cell::Cell;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

use anyhow::{bail, Context, Result};

use super::bundle_classify::{BundleFiles, TextFile};
use crate::archive_path::normal_parts;
use crate::bundle_facts::BundleFacts;

/// The nested package, by its path under the bundle's top directory
/// (CubeSandbox: deploy/one-click/build-release-bundle.sh).
pub const NESTED_PACKAGE: &str = "assets/package/sandbox-package.tar.gz";

/// Longest text file kept: scripts and manifests are a few KiB upstream.
pub const MAX_TEXT_BYTES: u64 = 1 << 20;
/// All text files kept together.
pub const MAX_TEXT_TOTAL: u64 = 16 << 20;
/// Archive entries, outer and nested together.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Bytes unpacked, outer and nested together: a release bundle is a few GiB
/// unpacked; anything far past that is a decompression bomb.
pub const MAX_UNPACKED: u64 = 64 << 30;

/// Programs whose ELF header is read (the first 20 bytes each): upstream's
/// nested package has about ten (`Cubelet/bin/cubelet`, `CubeAPI/bin/cube-api`).
pub const MAX_PROGRAMS: usize = 256;
/// The part of an ELF header that names the machine (`e_machine`).
const ELF_HEADER_BYTES: u64 = 20;

/// Whether a file at `rel` is a program the bundle installs: anything in a
/// `bin/` directory (CubeSandbox: deploy/one-click/build-release-bundle.sh
/// puts each component's programs in `<Component>/bin/`).
fn is_program(rel: &str) -> bool {
    rel.rsplit_once('/')
        .is_some_and(|(dir, _)| dir == "bin" || dir.ends_with("/bin"))
}

/// Whether a file at `rel` says something about the bundle.
fn wanted(rel: &str) -> bool {
    matches!(
        rel,
        "release-manifest.json"
            | "VERSION.txt"
            | "env.example"
            | "install.sh"
            | "install-compute.sh"
            | "lib/common.sh"
    ) || (rel.starts_with("scripts/") && rel.ends_with(".sh"))
        || (rel.starts_with("systemd/") && (rel.ends_with(".service") || rel.ends_with(".target")))
}

/// Counts unpacked bytes against one budget shared by every layer.
struct Counted<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let left = self.left.get();
        if n as u64 > left {
            return Err(io::Error::other(format!(
                "more than {MAX_UNPACKED} bytes unpacked; not a bundle cubeboot reads"
            )));
        }
        self.left.set(left - n as u64);
        Ok(n)
    }
}

struct Walk {
    files: BundleFiles,
    kept: u64,
    entries: u64,
    budget: Rc<Cell<u64>>,
}

/// Read the text files out of a bundle's tar.gz stream. Reads only as far
/// as the end of the tar archive; the caller hashes whatever is left.
pub fn read_bundle_files<R: Read>(reader: R) -> Result<BundleFiles> {
    let budget = Rc::new(Cell::new(MAX_UNPACKED));
    let mut gz = Counted {
        inner: flate2::read::GzDecoder::new(reader),
        left: budget.clone(),
    };
    let mut walk = Walk {
        files: BundleFiles::default(),
        kept: 0,
        entries: 0,
        budget,
    };
    let mut archive = tar::Archive::new(&mut gz as &mut dyn Read);
    walk.archive(&mut archive, None)?;
    Ok(walk.files)
}

impl Walk {
    fn archive(
        &mut self,
        archive: &mut tar::Archive<&mut dyn Read>,
        nested: Option<&str>,
    ) -> Result<()> {
        let within = |rel: &str| match nested {
            Some(outer) => format!("{outer}:{rel}"),
            None => rel.to_string(),
        };
        let what = nested.unwrap_or("the bundle");
        for entry in archive
            .entries()
            .with_context(|| format!("reading {what} as tar"))?
        {
            let mut entry = entry.with_context(|| format!("reading {what} as tar"))?;
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                bail!("more than {MAX_ENTRIES} archive entries; not a bundle cubeboot reads");
            }
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let parts = normal_parts(Path::new(&shown)).map_err(|e| {
                anyhow::anyhow!(
                    "{}: entry {:?} {e}",
                    what,
                    crate::builder::diag::cut(&shown, 200)
                )
            })?;
            // Everything sits under one top directory (the bundle's stem,
            // or `sandbox-package/`).
            if parts.len() < 2 || !entry.header().entry_type().is_file() {
                continue;
            }
            let rel = parts[1..].join("/");
            if nested.is_none() && rel == NESTED_PACKAGE {
                let mut gz = Counted {
                    inner: flate2::read::GzDecoder::new(&mut entry),
                    left: self.budget.clone(),
                };
                let mut inner = tar::Archive::new(&mut gz as &mut dyn Read);
                self.archive(&mut inner, Some(NESTED_PACKAGE))?;
                continue;
            }
            let source = within(&rel);
            if is_program(&rel) && self.files.programs.len() < MAX_PROGRAMS {
                let mut header = Vec::with_capacity(ELF_HEADER_BYTES as usize);
                (&mut entry)
                    .take(ELF_HEADER_BYTES)
                    .read_to_end(&mut header)
                    .with_context(|| format!("reading {source}"))?;
                // Scripts live in bin/ too; only ELF files name a machine.
                if header.starts_with(b"\x7fELF") {
                    let machine = crate::arch::Arch::of_elf(&header);
                    self.files.programs.insert(source, machine);
                }
                continue;
            }
            if !wanted(&rel) || self.files.text.contains_key(&rel) {
                continue;
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > MAX_TEXT_BYTES {
                bail!("{source}: {size} bytes; cubeboot reads a bundle's scripts and manifests up to {MAX_TEXT_BYTES} bytes each");
            }
            self.kept += size;
            if self.kept > MAX_TEXT_TOTAL {
                bail!("{source}: the bundle's scripts and manifests pass {MAX_TEXT_TOTAL} bytes together; not a bundle cubeboot reads");
            }
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(MAX_TEXT_BYTES + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {source}"))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            self.files.text.insert(rel, TextFile { source, text });
        }
        Ok(())
    }
}

/// Read a bundle stream and classify it; `name` is its released file name.
pub fn read_bundle<R: Read>(reader: R, name: &str) -> Result<BundleFacts> {
    let files = read_bundle_files(reader).with_context(|| format!("inspecting bundle {name}"))?;
    super::bundle_classify::classify(name, &files)
        .with_context(|| format!("inspecting bundle {name}"))
}

/// Version of `cubeboot inspect --json`'s shape (docs/cube-installer.md).
pub const INSPECT_JSON_VERSION: u32 = 1;

/// `cubeboot inspect`: bundles here, kernel packages and overlays as before.
pub fn inspect(args: super::cli::InspectArgs) -> Result<()> {
    let name = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.file.display().to_string());
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        let mut hashing = crate::digest::HashingReader::new(io::BufReader::new(file));
        let facts = read_bundle(&mut hashing, &name)?;
        io::copy(&mut hashing, &mut io::sink())
            .with_context(|| format!("reading {}", args.file.display()))?;
        let (sha256, size) = hashing.finish();
        if args.json {
            let out = serde_json::json!({
                "inspect": INSPECT_JSON_VERSION,
                "kind": "bundle",
                "name": name,
                "size": size,
                "sha256": sha256.to_hex(),
                "bundle": facts,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            print!("{}", facts_text(&name, &facts));
        }
        return Ok(());
    }
    if args.json {
        return kernel_json(&args.file, &name);
    }
    super::kernel_package::inspect(&args.file)
}

/// `inspect --json` of a kernel package, in the same envelope.
fn kernel_json(path: &Path, name: &str) -> Result<()> {
    use super::kernel_package::{check_pvm_host, read_kernel_package, PackageFormat};
    let format = if name.ends_with(".rpm") {
        PackageFormat::Rpm
    } else if name.ends_with(".deb") {
        PackageFormat::Deb
    } else {
        bail!("{name}: inspect --json reads bundles (.tar.gz) and kernel packages (.rpm, .deb)");
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let facts = read_kernel_package(io::BufReader::new(file), format)
        .with_context(|| format!("inspecting {name}"))?;
    let pvm_host = check_pvm_host(name, &facts).err().map(|e| e.to_string());
    let out = serde_json::json!({
        "inspect": INSPECT_JSON_VERSION,
        "kind": "kernel",
        "name": name,
        "kernel": {
            "package": facts.package,
            "version": facts.version,
            "kver": facts.kver,
            "module": facts.module,
            "pvm_host": pvm_host.is_none(),
            "pvm_host_problem": pvm_host,
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// A string from the bundle, made safe to print on a terminal.
fn shown(s: &str) -> String {
    s.escape_debug().to_string()
}

/// `inspect`'s text form: one fact per line, lists indented.
pub fn facts_text(name: &str, f: &BundleFacts) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "bundle:       {}", shown(name));
    let _ = writeln!(out, "version:      {}", shown(&f.version));
    let _ = writeln!(out, "arch:         {}", shown(&f.arch));
    let _ = writeln!(
        out,
        "pvm_version:  {}",
        f.pvm_version
            .as_deref()
            .map_or("(not recorded)".into(), shown)
    );
    match &f.cube_ops {
        Some(ops) => {
            let _ = writeln!(
                out,
                "cube_ops:     port {}, compute registration at {}",
                ops.port,
                shown(&ops.registration_path)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "cube_ops:     none (compute nodes register with CubeMaster: a bundle from before CubeOps)"
            );
        }
    }
    let role = |r: crate::bundle_facts::BundleRole| match r {
        crate::bundle_facts::BundleRole::Control => "control",
        crate::bundle_facts::BundleRole::Compute => "compute",
        crate::bundle_facts::BundleRole::All => "all roles",
    };
    let _ = writeln!(
        out,
        "required_env:{}",
        if f.required_env.is_empty() {
            " (none)"
        } else {
            ""
        }
    );
    for r in &f.required_env {
        let _ = writeln!(
            out,
            "  {} ({}) from {}",
            shown(&r.key),
            role(r.role),
            shown(&r.source)
        );
    }
    let _ = writeln!(
        out,
        "listeners:{}",
        if f.listeners.is_empty() {
            " (none)"
        } else {
            ""
        }
    );
    for l in &f.listeners {
        let bind = l
            .bind_env
            .as_deref()
            .map_or(String::new(), |b| format!(", bind {}", shown(b)));
        let _ = writeln!(
            out,
            "  {} :{} ({}{bind})",
            shown(&l.service),
            l.port,
            role(l.role)
        );
    }
    let _ = writeln!(
        out,
        "unknown:{}",
        if f.unknown.is_empty() { " (none)" } else { "" }
    );
    for u in &f.unknown {
        let _ = writeln!(out, "  {}", shown(u));
    }
    out
}
