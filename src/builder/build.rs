//! `cubeboot build`: profiles + lock → plan → user-data → out/<profile>/.
//!
//! Every payload is rendered, read back and budget-checked in memory first;
//! only then are files written, into a temporary directory beside the output,
//! and renamed into place when complete. A failure leaves out/ as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use super::budget::{self, Movable};
use super::bundle_check;
use super::cli::{BuildArgs, FormatArg};
use super::diag::{Report, Severity};
use super::json;
use super::lock::{AssetKind, Lock};
use super::manifest::finish_payload;
use super::options::BuildOptions;
use super::overlay;
use super::profile::{self, Profile};
use super::render::{self, Helper, HelperSource};
use super::upgrade::{self, HelperPin};
use crate::digest::Sha256Digest;
use crate::plan::Role;

pub use super::manifest::Payload;

/// The `build` verb.
pub fn run(args: BuildArgs) -> Result<()> {
    let built = build(&args);
    if args.json {
        let (fields, outcome) = match built {
            Ok(b) => (json_fields(&args, &b), Ok(())),
            Err(e) => {
                let mut fields = serde_json::Map::new();
                fields.insert("output".into(), serde_json::json!(args.output));
                fields.insert("webhook_secret_file".into(), serde_json::Value::Null);
                fields.insert("payloads".into(), serde_json::json!([]));
                (fields, Err(e))
            }
        };
        return json::emit("build", fields, Vec::new(), outcome);
    }
    let built = built?;
    for p in &built.payloads {
        if args.format == FormatArg::Overlay {
            eprintln!(
                "built {}/{}/overlay.tar.xz",
                args.output.display(),
                p.profile
            );
            continue;
        }
        let cloud = &built.options.cloud;
        eprintln!(
            "built {}/{}/user-data ({} bytes {}, {} budget {})",
            args.output.display(),
            p.profile,
            p.budget_size,
            cloud.measure,
            cloud.name,
            cloud.limit.map_or("none".to_string(), |l| l.to_string())
        );
    }
    Ok(())
}

/// What one `build` wrote.
struct Built {
    options: BuildOptions,
    secret_file: Option<PathBuf>,
    payloads: Vec<Payload>,
}

fn build(args: &BuildArgs) -> Result<Built> {
    // Step 1: inputs, validated (flags, lock, profiles).
    let mut options = BuildOptions::from_args(args)?;
    let secret_file = options.webhook.as_ref().map(|_| {
        args.webhook_secret_file
            .clone()
            .unwrap_or_else(|| args.output.join("webhook-secret"))
    });
    let mut secrets = Vec::new();
    if let Some(path) = &secret_file {
        let secret = webhook_secret(path)?;
        options.webhook_secret = Some(secret.value.clone());
        secrets.push(secret);
    }
    if args.offline && args.format != FormatArg::Overlay {
        bail!("--offline only applies to --format overlay (user-data cannot carry the assets)");
    }
    if args.upgrade && args.format == FormatArg::Overlay {
        bail!("--upgrade writes upgrade.sh for running nodes beside the user-data; an image overlay is for new machines (build without --format overlay)");
    }
    if let (FormatArg::Overlay, Some(cloud)) = (args.format, &args.cloud) {
        eprintln!("note: --cloud {cloud}: an image overlay is not user-data, so no user-data budget applies to it");
    }
    let lock = Lock::load(&args.lock)?;
    let profiles = profile::select_arch(args.dir.get(), &args.profile, args.arch)?;
    if let Some(token) = ops_token(args, &options, &lock)? {
        options.ops_token = Some(token.value.clone());
        secrets.push(token);
    }
    check_bundle(args, &lock, &profiles, &options)?;
    // Step 2: every payload in memory; any error stops before writing.
    let payloads = match args.format {
        FormatArg::UserData => build_all(&profiles, &lock, &options, args.upgrade)?,
        FormatArg::Overlay => {
            // SOURCE_DATE_EPOCH is read here, at the CLI edge.
            let mtime = overlay::mtime_from_env()?;
            build_overlays(&profiles, &lock, &options, args.offline, mtime)?
        }
    };
    // Step 3: write to a temp dir, rename into place.
    write_payloads(&args.output, &payloads)?;
    // New secrets last: a build refused above leaves no file behind.
    for secret in &secrets {
        secret.persist()?;
    }
    Ok(Built {
        options,
        secret_file,
        payloads,
    })
}

/// `build --json`'s own keys (docs/json.md).
fn json_fields(args: &BuildArgs, built: &Built) -> serde_json::Map<String, serde_json::Value> {
    let written: Vec<_> = built
        .payloads
        .iter()
        .map(|p| {
            let files: BTreeMap<&str, _> = p
                .files
                .iter()
                .map(|(name, bytes)| {
                    let f = serde_json::json!({
                        "size": bytes.len(),
                        "sha256": Sha256Digest::of(bytes).to_hex(),
                    });
                    (name.as_str(), f)
                })
                .collect();
            let budget = (args.format == FormatArg::UserData).then(|| {
                serde_json::json!({
                    "cloud": built.options.cloud.name,
                    "measured_on": built.options.cloud.measure.to_string(),
                    "limit": built.options.cloud.limit,
                    "size": p.budget_size,
                })
            });
            serde_json::json!({
                "profile": p.profile,
                "directory": args.output.join(&p.profile),
                "files": files,
                "budget": budget,
            })
        })
        .collect();
    json::object(serde_json::json!({
        "output": args.output,
        "webhook_secret_file": built.secret_file,
        "payloads": written,
    }))
}

/// The fleet secret in `path`, or a new one written there (0600). Reusing the
/// file keeps rebuilds byte-identical and every node of a fleet on one key.
pub fn webhook_secret(path: &Path) -> Result<Secret> {
    let hint = "give it to `cubeboot watch --secret-file`";
    secret_file(path, "webhook secret", Some(hint))?
        .context("webhook secret file missing after creation")
}

/// A secret a build uses: read from its file, or new and written there only
/// once the payloads are ([`Secret::persist`]), so a build that fails
/// leaves no new file behind.
pub struct Secret {
    pub value: String,
    new_file: Option<(PathBuf, &'static str, &'static str)>,
}

impl Secret {
    /// Write a new secret's file (0600, never overwriting one), printing
    /// its path and what to do with it, never the secret.
    pub fn persist(&self) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let Some((path, what, hint)) = &self.new_file else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {what} {}", path.display()))?;
        writeln!(f, "{}", self.value)
            .with_context(|| format!("writing {what} {}", path.display()))?;
        eprintln!("created {what} {} (0600): {hint}", path.display());
        Ok(())
    }
}

/// A secret read from `path`, checked; when the file does not exist, a new
/// one (written by [`Secret::persist`]) if `create_hint` is given, else
/// `None`.
pub fn secret_file(
    path: &Path,
    what: &'static str,
    create_hint: Option<&'static str>,
) -> Result<Option<Secret>> {
    use std::io::Read as _;
    match crate::bounded_read::read_text_file_limited(path, crate::bounded_read::SECRET_FILE_LIMIT)
    {
        Ok(text) => {
            let secret = text.trim().to_string();
            crate::signing::check_secret(&secret)
                .map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
            return Ok(Some(Secret {
                value: secret,
                new_file: None,
            }));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {what} {}", path.display())),
    }
    let Some(hint) = create_hint else {
        return Ok(None);
    };
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .with_context(|| format!("reading 32 random bytes from /dev/urandom for the {what}"))?;
    Ok(Some(Secret {
        value: crate::signing::secret_from_entropy(&bytes),
        new_file: Some((path.to_path_buf(), what, hint)),
    }))
}

/// The cluster's ops-agent token when the locked bundle requires one: a
/// control build reads or creates the file; a compute build only reads it,
/// since upstream's control node owns the token and every compute node must
/// carry the same value (docs/cube-installer.md).
fn ops_token(args: &BuildArgs, options: &BuildOptions, lock: &Lock) -> Result<Option<Secret>> {
    let path = ops_token_path(args);
    if !bundle_check::needs_ops_token(lock) {
        if args.ops_token_file.is_some() {
            eprintln!(
                "note: the locked bundle uses no ops-agent token; --ops-token-file {} is not used",
                path.display()
            );
        }
        return Ok(None);
    }
    let hint = "build every node of the cluster with this --ops-token-file";
    let create = (options.role == Role::Control).then_some(hint);
    secret_file(&path, "ops-agent token", create)
}

fn ops_token_path(args: &BuildArgs) -> PathBuf {
    args.ops_token_file
        .clone()
        .unwrap_or_else(|| args.output.join("ops-token"))
}

/// Refuse, before anything is written, what the locked bundle cannot do
/// with these profiles and options; print the warnings (errors with
/// `--strict`).
fn check_bundle(
    args: &BuildArgs,
    lock: &Lock,
    profiles: &[Profile],
    options: &BuildOptions,
) -> Result<()> {
    let mut report = Report(bundle_check::diagnostics(
        lock,
        &profiles.iter().collect::<Vec<_>>(),
        options.arch,
    ));
    let token = options.ops_token.as_deref();
    if let Some(mut d) = bundle_check::missing_token(lock, options.role, token) {
        d.message.push_str(&format!(
            "; {} does not exist, and only a control build makes one",
            ops_token_path(args).display()
        ));
        report.push(d);
    }
    let strict = args.strict;
    if report.errors() > 0 || (strict && report.warnings() > 0) {
        if strict {
            for d in &mut report.0 {
                d.severity = Severity::Error;
            }
        }
        return Err(report.into());
    }
    if !report.is_empty() {
        eprintln!("{report}\n");
    }
    Ok(())
}

/// Build every selected profile's payload in memory; `with_upgrade` adds
/// each profile's upgrade.sh (src/builder/upgrade.rs).
pub fn build_all(
    profiles: &[Profile],
    lock: &Lock,
    options: &BuildOptions,
    with_upgrade: bool,
) -> Result<Vec<Payload>> {
    let pinned = lock.pinned(AssetKind::helper(options.arch), "the user-data bootstrap")?;
    // A running node downloads the helper by URL, embedded or not.
    let upgrade = with_upgrade
        .then(|| -> Result<HelperPin> {
            Ok(HelperPin {
                sha256: pinned.sha256,
                urls: options.mirror.order(pinned.asset)?,
            })
        })
        .transpose()?;
    let helper = Helper {
        sha256: pinned.sha256,
        source: if options.embed_helper {
            let binary = lock.read_local(&pinned)?;
            let gz_b64 = render::gzip_base64(&binary)?;
            budget::check_embedded_helper(&options.cloud, binary.len() as u64, &gz_b64)
                .map_err(anyhow::Error::msg)?;
            HelperSource::Embedded { gz_b64 }
        } else {
            HelperSource::Urls(options.mirror.order(pinned.asset)?)
        },
    };
    let lock_sha = Sha256Digest::of(lock.text.as_bytes());
    profiles
        .iter()
        .map(|p| {
            build_one(p, lock, lock_sha, options, &helper, upgrade.as_ref())
                .with_context(|| format!("building profile {}", p.name))
        })
        .collect()
}

/// Image overlays (tar.xz) instead of user-data: helper, unit, plan and,
/// with `offline`, the pinned kernel and bundle in the helper's cache.
pub fn build_overlays(
    profiles: &[Profile],
    lock: &Lock,
    options: &BuildOptions,
    offline: bool,
    mtime: u64,
) -> Result<Vec<Payload>> {
    let pinned = lock.pinned(AssetKind::helper(options.arch), "an image overlay")?;
    // The helper goes into the image, so its local copy must match the pin.
    let helper = lock.read_local(&pinned)?;
    let lock_sha = Sha256Digest::of(lock.text.as_bytes());
    profiles
        .iter()
        .map(|profile| {
            let plan = options.plan(profile, lock)?;
            let mut cached_assets = Vec::new();
            if offline {
                if plan.kernel.repo.is_some() {
                    bail!(
                        "--offline: profile {} takes its kernel from the lock's kernel-repo, which dnf installs online; lock the release kernel without --kernel-repo for offline images",
                        profile.name
                    );
                }
                let pvm_kernel = Some(profile.kernel_asset).filter(|_| plan.target.arch.is_x86_64());
                for kind in pvm_kernel.into_iter().chain([AssetKind::Bundle]) {
                    let p = lock.pinned(kind, &format!("profile {}", profile.name))?;
                    let path = lock.local_path(p.asset);
                    if !path.is_file() {
                        bail!(
                            "--offline needs {} next to the lock ({}); it is not there",
                            p.asset.name,
                            path.display()
                        );
                    }
                    cached_assets.push((
                        p.sha256,
                        overlay::Content::Pinned {
                            path,
                            size: p.asset.size,
                            sha256: p.sha256,
                        },
                    ));
                }
            }
            let plan_json = plan.to_json();
            let composed = overlay::compose(overlay::OverlayInputs {
                plan_json: plan_json.clone(),
                helper: overlay::Content::Bytes(helper.clone()),
                unit: crate::layout::UNIT_FILE.to_string(),
                cached_assets,
                mtime,
            })?;
            let archive = overlay::write_overlay(&composed)?;
            let mut files = BTreeMap::new();
            files.insert("plan.json".to_string(), plan_json.into_bytes());
            files.insert("overlay.tar.xz".to_string(), archive);
            finish_payload(profile, &plan, options, lock_sha, files, None)
        })
        .collect::<Result<Vec<_>>>()
        .context("building image overlays")
}

fn build_one(
    profile: &Profile,
    lock: &Lock,
    lock_sha: Sha256Digest,
    options: &BuildOptions,
    helper: &Helper,
    upgrade: Option<&HelperPin>,
) -> Result<Payload> {
    // Plan, then user-data.
    let plan = options.plan(profile, lock)?;
    let rendered = render::user_data(&plan, helper)?;
    let user_data = rendered.user_data.into_bytes();
    // Budget, measured after the cloud's own encoding.
    let movable = [
        Movable {
            what: "the embedded helper".into(),
            bytes: rendered.embedded_helper_bytes,
            how:
                "drop --embed-helper; the target downloads it by URL and checks the pinned SHA-256"
                    .into(),
        },
        Movable {
            what: "the boot parameter list".into(),
            bytes: if options.boot_params_label == "minimal" {
                0
            } else {
                plan.kernel
                    .boot_params
                    .iter()
                    .map(|p| p.len() as u64 + 8)
                    .sum()
            },
            how: "use --boot-params minimal (nopti pti=off)".into(),
        },
    ];
    let budget_size = budget::check(&options.cloud, &profile.name, &user_data, &movable)
        .map_err(anyhow::Error::msg)?;
    // The other files.
    let gz_b64 = base64::engine::general_purpose::STANDARD
        .encode(render::gzip(&user_data)?)
        .into_bytes();
    let mut files = BTreeMap::new();
    files.insert("plan.json".to_string(), rendered.plan_json.into_bytes());
    files.insert("user-data.gz.b64".to_string(), gz_b64);
    files.insert("user-data".to_string(), user_data);
    if let Some(pin) = upgrade {
        let script = upgrade::script(&plan, pin).into_bytes();
        files.insert(upgrade::FILE.to_string(), script);
    }
    finish_payload(profile, &plan, options, lock_sha, files, Some(budget_size))
}

/// Write payloads under `out`: all into `out/.cubeboot-tmp-<pid>/`, then one
/// rename per profile directory (the old one moved aside first, removed last).
pub fn write_payloads(out: &Path, payloads: &[Payload]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tmp = out.join(format!(".cubeboot-tmp-{}", std::process::id()));
    let result = write_into(&tmp, payloads).and_then(|()| swap_in(out, &tmp, payloads));
    // Whatever happened, no temp directory is left behind.
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn write_into(tmp: &Path, payloads: &[Payload]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_dir_all(tmp);
    for p in payloads {
        let dir = tmp.join(&p.profile);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, bytes) in &p.files {
            let path = dir.join(name);
            // Everything but the checksums and manifest holds the plan.
            let holds_secret = p.secret && name != "manifest.json" && name != "SHA256SUMS";
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(if holds_secret { 0o600 } else { 0o644 })
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            // No fsync per file: rename-into-place already keeps failed
            // builds from leaving half-written payloads, and 45 fsyncs cost
            // more than the whole build (a build is rerun, not recovered).
            f.write_all(bytes)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

fn swap_in(out: &Path, tmp: &Path, payloads: &[Payload]) -> Result<()> {
    let old = tmp.join(".old");
    std::fs::create_dir_all(&old)?;
    for p in payloads {
        let dest: PathBuf = out.join(&p.profile);
        if dest.exists() {
            std::fs::rename(&dest, old.join(&p.profile))
                .with_context(|| format!("moving aside {}", dest.display()))?;
        }
        std::fs::rename(tmp.join(&p.profile), &dest)
            .with_context(|| format!("renaming into {}", dest.display()))?;
    }
    Ok(())
}
