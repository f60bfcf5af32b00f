//! Property tests over the parsers that read input we do not control
//! (issue 11 item 14): grub.cfg, the kernel command-line merge, profile and
//! lock YAML, the .deb/.rpm kernel package reader and bundle tar paths;
//! issue 21's hostile set: writes through links planted under `--root`,
//! rpm signature headers `rpm -K` rejects, keys given twice.
//! Each property: no panic, and the parser's own invariant.
//!
//! `cargo test --test fault_props` runs 128 cases per property;
//! `scripts/bench-faults.sh` runs thousands, one property per process, and
//! reports faults survived, the inputs tried, the worst time per input and
//! the peak memory (timing is measured there, never asserted here).
//! `PROPTEST_CASES` sets the count; with `FAULT_STATS=FILE` a run of one
//! property keeps `FILE` = `name inputs failed worst_us` up to date.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use cubeboot::builder::diag::Diagnostic;
use cubeboot::builder::kernel_package::{read_kernel_package, PackageFormat};
use cubeboot::builder::lock::Lock;
use cubeboot::builder::profile;
use cubeboot::cmdline;
use cubeboot::firstboot::cube::bundle;
use cubeboot::firstboot::host::{Host, ScriptedHost};
use cubeboot::firstboot::kernel::grubcfg;

/// Cases per property: enough that `cargo test` catches a regression most
/// runs (a link chain escaping, with item 13's check removed, was found in
/// 3 of 5 runs of 64), few enough that the suite stays a few seconds in a
/// debug build.
const DEFAULT_CASES: u32 = 128;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // Shrinking re-runs slow inputs many times; a failure is reported
        // close to as found.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Per property: inputs tried, inputs that failed, the slowest input.
static STATS: Mutex<BTreeMap<&'static str, (u64, u64, Duration)>> = Mutex::new(BTreeMap::new());

/// Run one input of property `name`: time it and count whether it held
/// (a panic counts as a failure, then goes on to proptest as usual).
fn case(
    name: &'static str,
    body: impl FnOnce() -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let out = catch_unwind(AssertUnwindSafe(body));
    let took = start.elapsed();
    let failed = !matches!(out, Ok(Ok(())));
    {
        let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
        let entry = stats.entry(name).or_insert((0, 0, Duration::ZERO));
        entry.0 += 1;
        entry.1 += u64::from(failed);
        entry.2 = entry.2.max(took);
        if let Ok(file) = std::env::var("FAULT_STATS") {
            let _ = std::fs::write(
                file,
                format!("{name} {} {} {}\n", entry.0, entry.1, entry.2.as_micros()),
            );
        }
    }
    match out {
        Ok(r) => r,
        Err(panic) => resume_unwind(panic),
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A file of the example release (real packages built by
/// tests/fixtures/kernel/make.sh with dpkg-deb and rpmbuild).
fn fixture(prefix: &str, suffix: &str) -> Vec<u8> {
    let dir = repo("examples/release");
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .unwrap();
    std::fs::read(dir.join(name)).unwrap()
}

/// A byte mutation: overwrite, insert (including runs of one byte, for
/// nesting), or delete.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8, usize),
    Delete(usize, usize),
}

fn edits(alphabet: &'static [u8]) -> impl Strategy<Value = Vec<Edit>> {
    let byte = proptest::sample::select(alphabet);
    let edit = prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), byte, 1usize..300).prop_map(|(at, b, n)| Edit::Insert(at, b, n)),
        (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match *e {
            Edit::Set(at, b) if !bytes.is_empty() => bytes[at % len] = b,
            Edit::Set(..) => {}
            Edit::Insert(at, b, n) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, std::iter::repeat_n(b, n));
            }
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
        }
    }
    bytes
}

const YAML_BYTES: &[u8] = b"[]{}:,-'\"#|>&*!%@? \n\t ax1";

/// The longest a rendered diagnostic may be, whatever the input: a hostile
/// value is cut (src/builder/diag.rs, `cut`), never printed whole.
const MAX_DIAGNOSTIC: usize = 4096;

fn diagnostics_are_short(ds: &[Diagnostic]) -> Result<(), TestCaseError> {
    for d in ds {
        let shown = d.to_string();
        prop_assert!(
            shown.len() <= MAX_DIAGNOSTIC,
            "a {}-byte diagnostic",
            shown.len()
        );
    }
    Ok(())
}

/// Start of an rpm's main header: lead, signature header, its padding
/// (rpm: lib/signature.c, the signature header's "8-byte pad").
fn rpm_main_header_start(b: &[u8]) -> usize {
    let be = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let sig = 16 + 16 * be(96 + 8) + be(96 + 12);
    96 + sig + (8 - sig % 8) % 8
}

/// grub.cfg lines of the shapes grub-mkconfig emits, and broken ones.
fn grub_line() -> impl Strategy<Value = String> {
    let word = proptest::sample::select(vec![
        "menuentry 'Debian' --class debian $menuentry_id_option 'gnulinux-6.6.69-pvm.host-advanced-u1' {",
        "menuentry 'x' ${menuentry_id_option} \"gnulinux-6.6.69-pvm.host-u2\"",
        "submenu 'Advanced' $menuentry_id_option 'gnulinux-advanced-u1' {",
        "submenu 'NoId' {",
        "{",
        "}",
        "\tlinux /boot/vmlinuz-6.6.69-pvm.host root=UUID=u1 ro quiet",
        "\tlinux /vmlinuz-6.1.0 root=/dev/sda1 \"quoted arg\"",
        "\tinitrd /boot/initrd.img-6.6.69-pvm.host",
        "menuentry",
        "'unterminated",
        "\"",
        "\\",
        "# comment {",
        "if [ x$feature_menuentry_id = xy ]; then",
        "fi",
    ]);
    prop_oneof![
        4 => word.prop_map(str::to_string),
        1 => "[ -~]{0,40}",
    ]
}

const KVER: &str = "6.6.69-pvm.host";

/// One generated menu entry: its kernel and, when it has one, its id's
/// kernel and root UUID.
#[derive(Debug, Clone)]
struct GenEntry {
    id: Option<(&'static str, &'static str)>,
    kernel: &'static str,
    boot_dir: &'static str,
}

/// A top-level entry, or a submenu (with or without an id) of entries.
#[derive(Debug, Clone)]
enum GenBlock {
    Entry(GenEntry),
    Submenu(Option<&'static str>, Vec<GenEntry>),
}

fn gen_entry() -> impl Strategy<Value = GenEntry> {
    let kver = proptest::sample::select(vec![KVER, "6.1.0-28-amd64", "6.6.69"]);
    let uuid = proptest::sample::select(vec!["u1", "u2"]);
    (
        proptest::option::weighted(0.8, (kver.clone(), uuid)),
        kver,
        proptest::sample::select(vec!["/boot", ""]),
    )
        .prop_map(|(id, kernel, boot_dir)| GenEntry {
            id,
            kernel,
            boot_dir,
        })
}

fn gen_blocks() -> impl Strategy<Value = Vec<GenBlock>> {
    let block = prop_oneof![
        gen_entry().prop_map(GenBlock::Entry),
        (
            proptest::option::weighted(0.8, proptest::sample::select(vec!["u1", "u2"])),
            proptest::collection::vec(gen_entry(), 0..4),
        )
            .prop_map(|(id, es)| GenBlock::Submenu(id, es)),
    ];
    proptest::collection::vec(block, 0..5)
}

/// The text `/etc/grub.d/10_linux` writes for these blocks (grub:
/// util/grub.d/10_linux.in, `linux_entry`: `menuentry '<title>' ${CLASS}
/// \$menuentry_id_option 'gnulinux-<version>-advanced-<uuid>' {`, the
/// `linux` line tab-indented, submenus the same with `gnulinux-advanced-`).
fn render_grub(blocks: &[GenBlock]) -> String {
    let entry = |e: &GenEntry, indent: &str| {
        let id = match e.id {
            Some((k, u)) => format!(" $menuentry_id_option 'gnulinux-{k}-advanced-{u}'"),
            None => String::new(),
        };
        format!(
            "{indent}menuentry 'Linux {k}' --class gnu-linux --class gnu --class os{id} {{\n\
             {indent}\tload_video\n\
             {indent}\tlinux\t{d}/vmlinuz-{k} root=UUID=u1 ro quiet\n\
             {indent}\tinitrd\t{d}/initrd.img-{k}\n\
             {indent}}}\n",
            k = e.kernel,
            d = e.boot_dir,
        )
    };
    let mut out = String::from("### BEGIN /etc/grub.d/10_linux ###\n");
    for b in blocks {
        match b {
            GenBlock::Entry(e) => out.push_str(&entry(e, "")),
            GenBlock::Submenu(id, es) => {
                let id = id
                    .map(|u| format!(" $menuentry_id_option 'gnulinux-advanced-{u}'"))
                    .unwrap_or_default();
                out.push_str(&format!("submenu 'Advanced options'{id} {{\n"));
                for e in es {
                    out.push_str(&entry(e, "\t"));
                }
                out.push_str("}\n");
            }
        }
    }
    out
}

fn param() -> impl Strategy<Value = String> {
    "[a-c]{1,2}(=[x-z0-9,\"]{0,3})?"
}

/// One tar entry with a hostile-capable path: written straight into the
/// header, so `..` and absolute paths survive (tar::Builder refuses them).
#[derive(Debug, Clone)]
struct TarEntry {
    path: String,
    kind: u8,
    link: String,
    mode: u32,
}

/// Mostly plain paths under the one top-level directory a bundle has, so
/// an extraction gets far and links chain through each other (`top/a/b ->
/// ..`, then `top/a/a -> b/../..`); now and then an absolute, `..`-led or
/// top-less one. Extraction stops at the first refused entry, so hostile
/// shapes stay rare within one archive.
fn tar_path() -> impl Strategy<Value = String> {
    // Two names only, so links and entries often meet.
    let part = prop_oneof![20 => Just("a"), 20 => Just("b"), 1 => Just(".."), 1 => Just(".")];
    let rest = proptest::collection::vec(part, 1..4).prop_map(|p| p.join("/"));
    prop_oneof![
        60 => rest.clone().prop_map(|r| format!("top/{r}")),
        1 => rest.clone().prop_map(|r| format!("/{r}")),
        1 => rest,
    ]
}

/// What a link points at: any mix of names, `.` and `..`, or absolute.
fn link_target() -> impl Strategy<Value = String> {
    let part = proptest::sample::select(vec!["a", "b", "..", "..", ".", "top"]);
    let rel = proptest::collection::vec(part, 1..5).prop_map(|p| p.join("/"));
    prop_oneof![
        10 => rel.clone(),
        1 => rel.prop_map(|r| format!("/{r}")),
    ]
}

fn tar_entries() -> impl Strategy<Value = Vec<TarEntry>> {
    // Symlink, file, directory, hard link, character device.
    let kind = prop_oneof![
        24 => Just(b'2'), 8 => Just(b'0'), 8 => Just(b'5'), 4 => Just(b'1'), 1 => Just(b'3'),
    ];
    let mode = prop_oneof![
        40 => Just(0o755u32), 40 => Just(0o644), 1 => Just(0o4755), 1 => Just(0o2755),
        1 => Just(0o777), 1 => Just(0o1777),
    ];
    let entry =
        (tar_path(), kind, link_target(), mode).prop_map(|(path, kind, link, mode)| TarEntry {
            path,
            kind,
            link,
            mode,
        });
    proptest::collection::vec(entry, 1..10)
}

/// Symlinks only, at distinct places none of which lies beneath another
/// (so each archive extracts unless a link is refused): the chains of
/// issue 11 item 13, e.g. `top/a -> ..` then `top/b -> a/..`.
fn link_chains() -> impl Strategy<Value = Vec<TarEntry>> {
    let part = proptest::sample::select(vec!["a", "b"]);
    let at = proptest::collection::vec(part, 1..3).prop_map(|p| format!("top/{}", p.join("/")));
    let target = proptest::sample::select(vec!["a", "b", "..", "..", ".", "top"]);
    let target = proptest::collection::vec(target, 1..4).prop_map(|p| p.join("/"));
    proptest::collection::vec((at, target), 2..8).prop_map(|links| {
        let mut kept: Vec<TarEntry> = vec![TarEntry {
            path: "top/".into(),
            kind: b'5',
            link: String::new(),
            mode: 0o755,
        }];
        for (path, link) in links {
            let clash = kept.iter().skip(1).any(|k| {
                path == k.path
                    || path.starts_with(&format!("{}/", k.path))
                    || k.path.starts_with(&format!("{path}/"))
            });
            if !clash {
                kept.push(TarEntry {
                    path,
                    kind: b'2',
                    link,
                    mode: 0o777,
                });
            }
        }
        kept
    })
}

fn tar_gz(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        let path = e.path.as_bytes();
        let n = path.len().min(99);
        old.name[..n].copy_from_slice(&path[..n]);
        let link = e.link.as_bytes();
        let n = link.len().min(99);
        old.linkname[..n].copy_from_slice(&link[..n]);
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(e.mode);
        let body: &[u8] = if e.kind == b'0' { b"data" } else { b"" };
        h.set_size(body.len() as u64);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

/// Where a dangling link would point: its directory (links resolved), then
/// its target read lexically.
fn dangling(link: &Path) -> PathBuf {
    let target = std::fs::read_link(link).unwrap();
    let mut at = link.parent().unwrap().canonicalize().unwrap();
    for c in target.components() {
        match c {
            std::path::Component::RootDir => at = PathBuf::from("/"),
            std::path::Component::ParentDir => {
                at.pop();
            }
            std::path::Component::Normal(p) => at.push(p),
            _ => {}
        }
    }
    at
}

/// Every path under `dir`, relative, without following links.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn grub_cfg_reader_never_panics(lines in proptest::collection::vec(grub_line(), 0..30)) {
        let cfg = lines.join("\n");
        case("grub_cfg", || {
            let entries = grubcfg::entries(&cfg);
            for e in &entries {
                let _ = e.id_path();
            }
            if let Ok(e) = grubcfg::find_kernel_entry(&cfg, KVER) {
                // Whatever the text, only an id naming the kernel is chosen.
                let id = e.id.unwrap_or_default();
                prop_assert!(id.starts_with(&format!("gnulinux-{KVER}-advanced-")), "{}", id);
            }
            let _ = grubcfg::parse_grubenv(&cfg);
            Ok(())
        })?;
    }

    /// Every entry grub-mkconfig writes is read back with its id, submenu
    /// path and kernel.
    #[test]
    fn grub_cfg_reads_what_grub_mkconfig_writes(blocks in gen_blocks()) {
        let cfg = render_grub(&blocks);
        case("grub_mkconfig_forms", || {
            let got = grubcfg::entries(&cfg);
            let mut want = Vec::new();
            for b in &blocks {
                match b {
                    GenBlock::Entry(e) => want.push((vec![], e)),
                    GenBlock::Submenu(id, es) => {
                        let sub = id.map(|u| format!("gnulinux-advanced-{u}"));
                        want.extend(es.iter().map(|e| (vec![sub.clone()], e)));
                    }
                }
            }
            prop_assert_eq!(got.len(), want.len());
            for (g, (subs, w)) in got.iter().zip(&want) {
                prop_assert_eq!(&g.submenu_ids, subs);
                let id = w.id.map(|(k, u)| format!("gnulinux-{k}-advanced-{u}"));
                prop_assert_eq!(&g.id, &id);
                let kernel = format!("{}/vmlinuz-{}", w.boot_dir, w.kernel);
                prop_assert_eq!(g.kernel.as_deref(), Some(kernel.as_str()));
            }
            Ok(())
        })?;
    }

    /// Issue 11 item 4: the kernel's entry is chosen only when exactly one
    /// entry has its id, that entry's linux line boots vmlinuz-KVER, and
    /// GRUB can address it by ids (no path starting with `>`).
    #[test]
    fn grub_entry_choice_refuses_ambiguity(blocks in gen_blocks()) {
        let cfg = render_grub(&blocks);
        case("grub_ambiguity", || {
            let matching: Vec<_> = grubcfg::entries(&cfg)
                .into_iter()
                .filter(|e| {
                    e.id.as_deref()
                        .is_some_and(|id| id.starts_with(&format!("gnulinux-{KVER}-advanced-")))
                })
                .collect();
            // One entry for the kernel, booting it, reachable by ids.
            let sound = matches!(&matching[..], [e] if e
                .kernel
                .as_deref()
                .is_some_and(|k| k.ends_with(&format!("/vmlinuz-{KVER}")))
                && e.submenu_ids.iter().all(Option::is_some));
            match grubcfg::find_kernel_entry(&cfg, KVER) {
                Ok(e) => {
                    let path = e.id_path().unwrap_or_default();
                    prop_assert_eq!(
                        matching.len(), 1,
                        "{} chosen among {} entries for {}", path, matching.len(), KVER
                    );
                    let kernel = e.kernel.clone().unwrap_or_default();
                    prop_assert!(
                        kernel.ends_with(&format!("/vmlinuz-{KVER}")),
                        "{} chosen, but its linux line boots {}", path, kernel
                    );
                    prop_assert!(!path.starts_with('>'), "{} chosen: a path without its submenu's id", path);
                }
                Err(e) => prop_assert!(!sound, "the one sound entry was refused: {:#}", e),
            }
            Ok(())
        })?;
    }

    #[test]
    fn cmdline_merge_is_idempotent_and_keeps_each_key_once(
        existing in proptest::collection::vec(param(), 0..8),
        configured in proptest::collection::vec(param(), 0..5),
    ) {
        case("cmdline_merge", || {
            let once = cmdline::merge(&existing, &configured);
            let twice = cmdline::merge(&once, &configured);
            prop_assert_eq!(&once, &twice);
            // Every configured parameter is there exactly as often as it is
            // configured (once, unless configured twice: `console=` may be).
            for p in &configured {
                let k = cmdline::key(p);
                let want = configured.iter().filter(|q| cmdline::key(q) == k).count();
                let got = once.iter().filter(|q| cmdline::key(q) == k).count();
                prop_assert_eq!(got, want, "key {} in {:?}", k, once);
            }
            // Parameters of other keys stay, in their order.
            let keys: Vec<&str> = configured.iter().map(|p| cmdline::key(p)).collect();
            let kept: Vec<&String> = existing.iter().filter(|p| !keys.contains(&cmdline::key(p))).collect();
            let others: Vec<&String> = once.iter().filter(|p| !keys.contains(&cmdline::key(p))).collect();
            prop_assert_eq!(kept, others);
            // Without quotes, the string form agrees, and reads as merged.
            if !existing.iter().chain(&configured).any(|p| p.contains('"')) {
                let line = cmdline::merge_line(&existing.join(" "), &configured);
                prop_assert_eq!(&cmdline::split(&line), &once);
                prop_assert!(cmdline::has_merged(&line, &configured), "{}", line);
            }
            Ok(())
        })?;
    }

    #[test]
    fn profile_yaml_never_panics(e in edits(YAML_BYTES)) {
        let text = std::fs::read(repo("profiles/debian-12.yaml")).unwrap();
        let text = String::from_utf8_lossy(&apply(text, &e)).into_owned();
        case("profile_yaml", || {
            match profile::parse(&text, Path::new("debian-12.yaml")) {
                Ok((_, warnings)) => diagnostics_are_short(&warnings),
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    diagnostics_are_short(&errors)
                }
            }
        })?;
    }

    /// Deep nesting is refused before parsing, at its line (issue 11
    /// item 10: 100,000 `[` once took serde_yaml minutes).
    #[test]
    fn deep_yaml_nesting_is_refused_with_its_line(
        depth in 65usize..100_000,
        open in proptest::sample::select(vec!['[', '{']),
        line in 1usize..20,
    ) {
        let text = format!("{}version: 1\nx: {}\n", "# pad\n".repeat(line - 1), open.to_string().repeat(depth));
        case("yaml_nesting", || {
            let err = profile::parse(&text, Path::new("deep.yaml")).err().unwrap_or_default();
            prop_assert_eq!(err.len(), 1);
            prop_assert!(err[0].message.contains("nested deeper than 64"), "{}", err[0].message);
            prop_assert_eq!(err[0].position.map(|p| p.0), Some(line + 1));
            diagnostics_are_short(&err)
        })?;
    }

    /// A huge value in a wrong place is reported, not printed whole.
    #[test]
    fn long_yaml_values_are_cut_in_errors(n in 1_000usize..300_000, key in proptest::bool::ANY) {
        let long = "a".repeat(n);
        let text = std::fs::read_to_string(repo("profiles/debian-12.yaml")).unwrap();
        let text = if key {
            format!("{text}{long}: 1\n")
        } else {
            text.replace("family: deb", &format!("family: {long}"))
        };
        case("yaml_long_values", || {
            let err = profile::parse(&text, Path::new("long.yaml")).err().unwrap_or_default();
            prop_assert!(!err.is_empty());
            diagnostics_are_short(&err)
        })?;
    }

    #[test]
    fn lock_yaml_never_panics(e in edits(YAML_BYTES)) {
        let text = std::fs::read(repo("examples/release/cubeboot.lock")).unwrap();
        let text = String::from_utf8_lossy(&apply(text, &e)).into_owned();
        case("lock_yaml", || {
            if let Err(report) = Lock::parse(&text, Path::new("cubeboot.lock")) {
                prop_assert!(!report.0.is_empty());
                diagnostics_are_short(&report.0)?;
            }
            Ok(())
        })?;
    }

    #[test]
    fn deb_reader_never_panics(e in edits(b"\0\x01\x7f\xff0 /`!<arch>\n"), cut in any::<usize>()) {
        let mut bytes = apply(fixture("linux-image-", ".deb"), &e);
        if cut % 3 == 0 {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        case("deb_reader", || {
            let _ = read_kernel_package(&bytes[..], PackageFormat::Deb);
            Ok(())
        })?;
    }

    /// Issue 11 item 12: a .deb cut short anywhere is refused, never pinned.
    #[test]
    fn deb_reader_refuses_every_truncation(keep in any::<usize>()) {
        let good = fixture("linux-image-", ".deb");
        let keep = keep % good.len();
        case("deb_truncated", || {
            let got = read_kernel_package(&good[..keep], PackageFormat::Deb);
            prop_assert!(got.is_err(), "the first {} of {} bytes were accepted", keep, good.len());
            Ok(())
        })?;
    }

    /// Issue 11 item 12: a flipped bit in the main header or the payload of
    /// an rpm is refused (the header's SHA-256 and the payload digest).
    #[test]
    fn rpm_reader_refuses_every_flip_its_digests_cover(at in any::<usize>(), bit in 0u8..8) {
        let good = fixture("kernel-", ".rpm");
        let main = rpm_main_header_start(&good);
        let mut bytes = good.clone();
        let at = main + at % (good.len() - main);
        bytes[at] ^= 1 << bit;
        case("rpm_flips", || {
            let got = read_kernel_package(&bytes[..], PackageFormat::Rpm);
            prop_assert!(got.is_err(), "flip at byte {} bit {} was accepted", at, bit);
            Ok(())
        })?;
    }

    /// And one cut short anywhere.
    #[test]
    fn rpm_reader_refuses_every_truncation(keep in any::<usize>()) {
        let good = fixture("kernel-", ".rpm");
        let keep = keep % good.len();
        case("rpm_truncated", || {
            let got = read_kernel_package(&good[..keep], PackageFormat::Rpm);
            prop_assert!(got.is_err(), "the first {} of {} bytes were accepted", keep, good.len());
            Ok(())
        })?;
    }

    #[test]
    fn rpm_reader_never_panics(e in edits(b"\0\x01\x7f\xff\x8e\xad\xe8"), cut in any::<usize>()) {
        let mut bytes = apply(fixture("kernel-", ".rpm"), &e);
        if cut % 3 == 0 {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        case("rpm_reader", || {
            let _ = read_kernel_package(&bytes[..], PackageFormat::Rpm);
            Ok(())
        })?;
    }

    /// Issue 21 item 4: a flipped bit in the signature header (index or
    /// data) that makes `rpm -K` report BAD is refused at lock time too.
    #[test]
    fn rpm_signature_header_flips_rpm_rejects_are_refused(at in any::<usize>(), bit in 0u8..8) {
        let good = fixture("kernel-", ".rpm");
        let be = |i: usize| u32::from_be_bytes(good[i..i + 4].try_into().unwrap()) as usize;
        let sig_end = 96 + 16 + 16 * be(96 + 8) + be(96 + 12);
        let at = 96 + 16 + at % (sig_end - 96 - 16);
        let mut bytes = good.clone();
        bytes[at] ^= 1 << bit;
        case("rpm_signature_flips", || {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("k.rpm");
            std::fs::write(&path, &bytes).unwrap();
            let Ok(out) = std::process::Command::new("rpm").arg("-Kv").arg(&path).output() else {
                return Ok(()); // no rpm here: nothing to agree with
            };
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let rpm_refuses = !out.status.success() || said.contains("BAD");
            let got = read_kernel_package(&bytes[..], PackageFormat::Rpm);
            prop_assert!(
                !rpm_refuses || got.is_err(),
                "flip at byte {} bit {}: rpm -K says {:?}, but it was pinned", at, bit, said
            );
            Ok(())
        })?;
    }

    /// Issue 21 item 1: whatever links an image holds (absolute, relative,
    /// chains), no write the host seam makes changes anything outside the
    /// root.
    #[test]
    fn host_writes_stay_beneath_the_root(
        links in proptest::collection::vec((0usize..6, 0usize..6), 1..6),
        ops in proptest::collection::vec((0usize..11, 0usize..6, 0usize..6), 1..12),
    ) {
        case("root_confinement", || root_confinement_holds(&links, &ops))?;
    }

    /// Issue 21 item 7: a mapping naming a key twice is refused; one that
    /// does not is read.
    #[test]
    fn duplicate_yaml_keys_are_refused(keys in proptest::collection::vec((0usize..6, 0usize..3, any::<bool>()), 1..12)) {
        // Each key at the top, or inside `nested:` (indented).
        let names = ["version", "name", "url", "size", "sha256", "family"];
        let mut top = Vec::new();
        let mut inner = Vec::new();
        for (k, v, nested) in &keys {
            if *nested { inner.push((names[*k], v)) } else { top.push((names[*k], v)) }
        }
        let mut text = String::new();
        for (k, v) in &top {
            text.push_str(&format!("{k}: {v}\n"));
        }
        if !inner.is_empty() {
            text.push_str("nested:\n");
            for (k, v) in &inner {
                text.push_str(&format!("  {k}: {v}\n"));
            }
        }
        let dup = |l: &[(&str, &usize)]| {
            let mut seen: Vec<&str> = l.iter().map(|(k, _)| *k).collect();
            seen.sort();
            seen.windows(2).any(|w| w[0] == w[1])
        };
        let has_dup = dup(&top) || dup(&inner);
        case("yaml_duplicate_keys", || {
            let got = cubeboot::builder::yaml::from_str::<serde_json::Value>(&text, Path::new("x.yaml"));
            match got {
                Ok(_) => prop_assert!(!has_dup, "a duplicate was read:\n{}", text),
                Err(d) => {
                    prop_assert!(has_dup, "refused without a duplicate: {}\n{}", d.message, text);
                    prop_assert!(d.message.starts_with("duplicate key `"), "{}", d.message);
                }
            }
            Ok(())
        })?;
    }

    /// Bundle extraction (issue 11 item 13): nothing lands or points outside
    /// the destination, through any chain of links; no setuid/setgid file
    /// and no world-writable directory comes out.
    #[test]
    fn bundle_tar_paths_stay_inside(entries in tar_entries()) {
        case("tar_paths", || extracts_inside(&entries))?;
    }

    /// The same for archives of links only, where every chain is tried.
    #[test]
    fn bundle_link_chains_stay_inside(entries in link_chains()) {
        case("tar_link_chains", || extracts_inside(&entries))?;
    }
}

/// Extract `entries` (as a gzip'd tar) into an empty destination and check
/// what came out: nothing beside it, no link leading out of it, no
/// setuid/setgid file, no world-writable directory.
fn extracts_inside(entries: &[TarEntry]) -> Result<(), TestCaseError> {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let host = ScriptedHost::new(base.path());
    std::fs::create_dir(base.path().join("dest")).unwrap();
    let _ = bundle::extract_into(&host, &tar_gz(entries)[..], "/dest");
    let outside: Vec<PathBuf> = tree(base.path())
        .into_iter()
        .filter(|p| !p.starts_with("dest"))
        .collect();
    prop_assert!(outside.is_empty(), "{:?} from {:?}", outside, entries);
    let dest = host.path("/dest");
    let root = dest.canonicalize().unwrap();
    for p in tree(&dest) {
        let full = dest.join(&p);
        let Ok(meta) = full.symlink_metadata() else {
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            // It resolves inside, or dangles inside.
            let real = full.canonicalize().unwrap_or_else(|_| dangling(&full));
            prop_assert!(
                real.starts_with(&root),
                "{:?} -> {:?} from {:?}",
                p,
                real,
                entries
            );
        } else {
            prop_assert!(mode & 0o6000 == 0, "{:?} has mode {:o}", p, mode);
            prop_assert!(
                !meta.is_dir() || mode & 0o002 == 0,
                "{:?} is world-writable",
                p
            );
        }
    }
    Ok(())
}

/// Plant `links` (name index, target index: absolute or relative, out of
/// the root or inside it) in a fresh root, run `ops` (write kind, path,
/// second path) through the real host, and compare the outside directory.
fn root_confinement_holds(
    links: &[(usize, usize)],
    ops: &[(usize, usize, usize)],
) -> Result<(), TestCaseError> {
    use cubeboot::firstboot::host::RealHost;
    use std::io::Write;
    let names = ["a", "b", "a/b", "c", "a/b/c", "d"];
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x"), b"outside").unwrap();
    std::fs::create_dir(outside.path().join("a")).unwrap();
    let out = outside.path().to_string_lossy().into_owned();
    let up = "../".repeat(root.path().components().count() + 2);
    let targets = [
        out.clone(),
        format!("{out}/x"),
        format!("{up}{}", out.trim_start_matches('/')),
        "/".to_string(),
        "../../../..".to_string(),
        "a".to_string(),
    ];
    for (n, t) in links {
        let at = root.path().join(names[*n]);
        if let Some(parent) = at.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::os::unix::fs::symlink(&targets[*t], &at);
    }
    let before = tree_with_contents(outside.path());
    let host = RealHost::new(root.path());
    for (kind, p, q) in ops {
        let (p, q) = (format!("/{}/x", names[*p]), format!("/{}", names[*q]));
        let _ = match kind {
            0 => host
                .create(&p, 0o644)
                .and_then(|mut w| Ok(w.write_all(b"w")?)),
            1 => host.append(&p).and_then(|mut w| Ok(w.write_all(b"w")?)),
            2 => host.write_atomic(&p, b"w", 0o644),
            3 => host.create_dir_all(&p),
            4 => host.set_mode(&q, 0o4777),
            5 => host.symlink("/etc/passwd", &p),
            6 => host.hard_link(&q, &p),
            7 => host.rename(&p, &q),
            8 => host.remove_file(&p),
            9 => host.remove_dir_all(&q),
            _ => host.write_in_place(&p, b"w"),
        };
    }
    let after = tree_with_contents(outside.path());
    prop_assert_eq!(after, before, "links {:?}, ops {:?}", links, ops);
    Ok(())
}

/// Every path under `dir` with its mode and content (or link target).
fn tree_with_contents(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut paths = tree(dir);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let full = dir.join(&p);
            let m = std::fs::symlink_metadata(&full).unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&full)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if m.is_file() {
                std::fs::read(&full).unwrap()
            } else {
                Vec::new()
            };
            (p, m.permissions().mode(), content)
        })
        .collect()
}
