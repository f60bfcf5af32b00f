//! Build options: `cubeboot build` flags, checked once, then mapped into the
//! plan for each profile.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

use super::budget::{Cloud, DEFAULT_CLOUD};
use super::cli::{BuildArgs, KvmArg, OnOff, RebootArg, RoleArg};
use super::lock::{AssetKind, Lock, LockedAsset, LockedKernel, LockedKernelRepo, Url};
use super::profile::{KernelSource, Profile};
use crate::arch::Arch;
use crate::cmdline::TrialPanic;
use crate::net::{Cidr, Ipv4Net};
use crate::plan::{
    boot_params, Asset, Assets, ControlPlaneAddr, CubePlan, DataDisk, InstallerMirror, KernelPlan,
    KernelRepo, KvmMode, NodeIp, Plan, RebootMode, RepoPackage, ReportPlan, Role, S3Settings,
    PLAN_VERSION,
};

/// Which download channel goes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    Github,
    Cn,
    /// A base URL where the user hosts every asset.
    Base(String),
}

impl Mirror {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "github" => Ok(Self::Github),
            "cn" => Ok(Self::Cn),
            _ => {
                let url: Url = s.parse().map_err(|e: String| {
                    anyhow::anyhow!("--mirror must be github, cn or an http(s) base URL: {e}")
                })?;
                if url.as_str().starts_with("file://") {
                    bail!("--mirror must be github, cn or an http(s) base URL, got {s:?}");
                }
                Ok(Self::Base(url.as_str().trim_end_matches('/').to_string()))
            }
        }
    }

    /// The asset's URLs, this mirror's first, each once.
    pub fn order(&self, asset: &LockedAsset) -> Result<Vec<String>> {
        let first = match self {
            Self::Github => asset
                .mirrors
                .get("github")
                .map_or_else(|| asset.url.to_string(), Url::to_string),
            Self::Cn => asset
                .mirrors
                .get("cn")
                .map(Url::to_string)
                .with_context(|| {
                    format!(
                        "--mirror cn: the lock has no cn mirror for {} (lock it with --tag or a GitHub URL)",
                        asset.name
                    )
                })?,
            // Where `cubeboot mirror` put it: under its URL's path.
            Self::Base(base) => Url::join(base, asset.url.path())
                .map_err(anyhow::Error::msg)?
                .to_string(),
        };
        let mut urls = vec![first];
        let rest = std::iter::once(asset.url.to_string())
            .chain(asset.mirrors.get("github").map(Url::to_string))
            .chain(asset.mirrors.get("cn").map(Url::to_string))
            .chain(asset.mirrors.values().map(Url::to_string));
        for u in rest {
            if !urls.contains(&u) {
                urls.push(u);
            }
        }
        Ok(urls)
    }
}

/// Everything `build` was asked for, validated.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub role: Role,
    pub control_plane_ip: Option<ControlPlaneAddr>,
    pub node_ip: NodeIp,
    pub mirror: Mirror,
    pub boot_params: Vec<String>,
    /// `pvm`, `minimal`, `tencent` or `custom`, for the manifest.
    pub boot_params_label: String,
    pub webhook: Option<String>,
    /// The fleet's webhook signing key; set by `build` at the CLI edge from
    /// `--webhook-secret-file` (read or created there).
    pub webhook_secret: Option<String>,
    pub cloud: Cloud,
    pub embed_helper: bool,
    pub kvm: KvmMode,
    /// `--arch`: the nodes' machine architecture (docs/arm64.md).
    pub arch: Arch,
    pub reboot: RebootMode,
    pub data_disk: DataDisk,
    pub allow_from: Vec<Cidr>,
    pub hardening: bool,
    pub budgets: Budgets,
    pub s3: Option<S3Settings>,
    /// The cluster's ops-agent token; set by `build` at the CLI edge from
    /// `--ops-token-file` when the locked bundle requires one.
    pub ops_token: Option<String>,
    /// `--cluster-cidr`, validated.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// Time budgets the helper keeps (plan `cube.*_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub install_timeout_secs: u64,
    pub verify_budget_secs: u64,
    pub control_plane_wait_secs: u64,
}

impl BuildOptions {
    pub fn from_args(args: &BuildArgs) -> Result<Self> {
        let role = match args.role {
            RoleArg::Control => Role::Control,
            RoleArg::Compute => Role::Compute,
        };
        let control_plane_ip = match (role, &args.control_plane_ip) {
            (Role::Compute, None) => bail!(
                "--role compute needs --control-plane-ip IP: a compute node joins an existing control plane (ONE_CLICK_CONTROL_PLANE_IP)"
            ),
            (Role::Control, Some(_)) => {
                bail!("--control-plane-ip only applies to --role compute")
            }
            (_, Some(ip)) => Some(ControlPlaneAddr {
                ip: ipv4(ip, "--control-plane-ip")?,
                port: None,
            }),
            (_, None) => None,
        };
        let node_ip = if args.node_ip == "auto" {
            NodeIp::Auto
        } else {
            NodeIp::Addr(ipv4(&args.node_ip, "--node-ip")?)
        };
        let (boot_params, boot_params_label) = parse_boot_params(&args.boot_params)?;
        let webhook = match &args.webhook {
            None => None,
            Some(w) => {
                let url: Url = w
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--webhook: {e}"))?;
                if url.as_str().starts_with("file://") {
                    bail!("--webhook must be an http(s) URL, got {w:?}");
                }
                Some(url.to_string())
            }
        };
        let data_disk = match args.data_disk.as_str() {
            "auto" => DataDisk::Auto,
            "loopback" => DataDisk::Loopback,
            dev if dev.starts_with("/dev/") && !dev.contains(char::is_whitespace) => {
                DataDisk::Device(dev.to_string())
            }
            other => bail!("--data-disk must be auto, loopback or a /dev/ path, got {other:?}"),
        };
        // PVM is x86_64 only (docs/pvm-kernel.md): there is no kernel to
        // force on aarch64, whose nodes run on their own KVM.
        if args.arch == Arch::Aarch64 && args.kvm == KvmArg::Pvm {
            bail!(
                "--kvm pvm: PVM is x86_64 only, and --arch aarch64 payloads run Cube on the node's own KVM; drop --kvm pvm (aarch64 uses --kvm auto)"
            );
        }
        let allow_from = args
            .allow_from
            .iter()
            .map(|c| cidr(c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            role,
            control_plane_ip,
            node_ip,
            mirror: Mirror::parse(&args.mirror)?,
            boot_params,
            boot_params_label,
            webhook,
            webhook_secret: None,
            cloud: Cloud::by_name(args.cloud.as_deref().unwrap_or(DEFAULT_CLOUD))
                .map_err(|e| anyhow::anyhow!("--cloud: {e}"))?,
            embed_helper: args.embed_helper,
            kvm: match args.kvm {
                KvmArg::Auto => KvmMode::Auto,
                KvmArg::Pvm => KvmMode::Pvm,
            },
            arch: args.arch,
            reboot: match args.reboot {
                RebootArg::Kexec => RebootMode::Kexec,
                RebootArg::Firmware => RebootMode::Firmware,
            },
            data_disk,
            allow_from,
            hardening: args.hardening == OnOff::On,
            budgets: budgets(args)?,
            s3: match &args.s3_env {
                None => None,
                Some(_) if role == Role::Control => bail!(
                    "--s3-env only applies to --role compute (a control node fills CUBE_S3_* from its own MinIO)"
                ),
                Some(path) => {
                    let text = crate::bounded_read::read_text_file_limited(
                        path,
                        crate::bounded_read::SECRET_FILE_LIMIT,
                    )
                    .with_context(|| format!("reading {}", path.display()))?;
                    Some(s3_settings(&text, &path.display().to_string())?)
                }
            },
            ops_token: None,
            cluster_cidr: args
                .cluster_cidr
                .as_deref()
                .map(cluster_cidr)
                .transpose()?,
        })
    }

    /// The plan for one profile: the profile's target, the lock's pins and
    /// facts, and these options.
    pub fn plan(&self, profile: &Profile, lock: &Lock) -> Result<Plan> {
        let needed_by = format!("profile {}", profile.name);
        let bundle = lock.pinned(AssetKind::Bundle, &needed_by)?;
        let asset = |p: &super::lock::Pinned<'_>| -> Result<Asset> {
            Ok(Asset {
                name: p.asset.name.clone(),
                urls: self.mirror.order(p.asset)?,
                sha256: p.sha256,
                size: p.asset.size,
            })
        };
        // The first kernel source of the profile that the lock pins.
        let source = profile
            .kernel_sources
            .iter()
            .copied()
            .find(|s| match s {
                KernelSource::Release => lock.file.assets.get(profile.kernel_asset).is_some(),
                KernelSource::Repo => lock.file.kernel_repo.is_some(),
            })
            .unwrap_or(profile.kernel_sources[0]);
        let (kernel_asset, facts, repo) = match source {
            KernelSource::Release => {
                let kernel = lock.pinned(profile.kernel_asset, &needed_by)?;
                // Lock::parse refused kernel packages without facts.
                let facts = kernel
                    .asset
                    .kernel
                    .clone()
                    .context("kernel asset without facts")?;
                (asset(&kernel)?, facts, None)
            }
            KernelSource::Repo => {
                let r = lock.kernel_repo(&needed_by)?;
                repo_kernel(r)?
            }
        };
        let plan = Plan {
            version: PLAN_VERSION,
            generator: crate::generator(),
            target: crate::plan::Target {
                arch: self.arch,
                ..profile.target.clone()
            },
            assets: Assets {
                kernel: kernel_asset,
                bundle: asset(&bundle)?,
            },
            kernel: KernelPlan {
                kver: facts.kver.clone(),
                package: facts.package.clone(),
                package_version: facts.version.clone(),
                kvm: self.kvm,
                boot_params: self.boot_params.clone(),
                panic_seconds: 30,
                repo,
            },
            cube: CubePlan {
                role: self.role,
                control_plane_ip: self.control_plane_ip,
                node_ip: self.node_ip,
                mirror: (self.mirror == Mirror::Cn).then_some(InstallerMirror::Cn),
                install_timeout_secs: self.budgets.install_timeout_secs,
                data_disk: self.data_disk.clone(),
                loopback_size_gib: 50,
                hardening: self.hardening,
                allow_from: self.allow_from.clone(),
                extra_env: BTreeMap::new(),
                verify_budget_secs: self.budgets.verify_budget_secs,
                control_plane_wait_secs: self.budgets.control_plane_wait_secs,
                s3: self.s3.clone(),
                bundle: bundle.asset.bundle.clone(),
                ops_token: self.ops_token.clone(),
                cluster_cidr: self.cluster_cidr,
            },
            report: ReportPlan {
                webhook: self.webhook.clone(),
                webhook_secret: self.webhook_secret.clone(),
            },
            max_reboots: 1,
            download: Default::default(),
            // Firmware is what a plan without the field means: left out,
            // so such a plan is byte-identical to one from before it.
            reboot: (self.reboot == RebootMode::Kexec).then_some(RebootMode::Kexec),
        };
        // What the build knows the kernel will be handed: its image path and
        // the list with the trial boot's default panic=; the node's own
        // parameters (an operator's panic= among them) are added and judged
        // on the target (docs/pvm-kernel.md).
        let panic = TrialPanic::default_secs(plan.kernel.panic_seconds);
        let known = format!(
            "BOOT_IMAGE=/boot/vmlinuz-{} {}",
            plan.kernel.kver,
            plan.kernel.trial_params(panic).join(" ")
        );
        if let Some(why) = crate::cmdline::over_limit(&known) {
            bail!("--boot-params: {why}");
        }
        Ok(plan)
    }
}

fn budgets(args: &BuildArgs) -> Result<Budgets> {
    for (flag, v) in [
        ("--install-timeout", args.install_timeout),
        ("--verify-budget", args.verify_budget),
        ("--control-plane-wait", args.control_plane_wait),
    ] {
        if v == 0 {
            bail!("{flag}: must be at least 1 second");
        }
    }
    Ok(Budgets {
        install_timeout_secs: args.install_timeout,
        verify_budget_secs: args.verify_budget,
        control_plane_wait_secs: args.control_plane_wait,
    })
}

/// `CUBE_S3_*=value` lines, as `grep '^CUBE_S3_' .one-click.env` prints them
/// on the control node (upstream's advice for compute nodes,
/// CubeSandbox: docs/guide/multi-node-deploy.md). Other lines are refused.
pub fn s3_settings(text: &str, file: &str) -> Result<S3Settings> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            bail!("{file}:{}: expected KEY=value, got {t:?}", i + 1);
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
            .unwrap_or(v);
        match k.strip_prefix("CUBE_S3_") {
            Some(
                "ENDPOINT" | "ACCESS_KEY_ID" | "SECRET_ACCESS_KEY" | "BUCKET" | "REGION"
                | "S3FS_EXTRA_OPTS",
            ) => {
                found.insert(k.to_string(), v.to_string());
            }
            _ => bail!(
                "{file}:{}: {k} is not a CUBE_S3_* setting the installer reads",
                i + 1
            ),
        }
    }
    let mut take = |k: &str| -> Result<String> {
        found
            .remove(&format!("CUBE_S3_{k}"))
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{file}: CUBE_S3_{k} is missing or empty"))
    };
    Ok(S3Settings {
        endpoint: take("ENDPOINT")?,
        access_key_id: take("ACCESS_KEY_ID")?,
        secret_access_key: take("SECRET_ACCESS_KEY")?,
        bucket: take("BUCKET")?,
        region: take("REGION").ok(),
        s3fs_extra_opts: take("S3FS_EXTRA_OPTS").ok(),
    })
}

/// The plan's view of a repository kernel: every package pinned, and as
/// `assets.kernel` the package that pulls in the rest (fetched and verified
/// early, so an unreachable repository fails before anything changes).
fn repo_kernel(r: &LockedKernelRepo) -> Result<(Asset, LockedKernel, Option<KernelRepo>)> {
    let base = r.baseurl.as_str().trim_end_matches('/');
    let top_prefix = format!("{}-{}.", r.kernel.package, r.kernel.version);
    let top = r
        .packages
        .iter()
        .find(|p| p.nevra.starts_with(&top_prefix))
        .or_else(|| r.packages.first())
        .context("kernel-repo pins no packages")?;
    let asset = Asset {
        name: top
            .location
            .rsplit('/')
            .next()
            .unwrap_or(&top.location)
            .to_string(),
        urls: vec![format!("{base}/{}", top.location)],
        sha256: top.sha256,
        size: top.size,
    };
    let repo = KernelRepo {
        baseurl: r.baseurl.as_str().to_string(),
        packages: r
            .packages
            .iter()
            .map(|p| RepoPackage {
                nevra: p.nevra.clone(),
                location: p.location.clone(),
                sha256: p.sha256,
                size: p.size,
                header_sha256: p.header_sha256,
            })
            .collect(),
    };
    Ok((asset, r.kernel.clone(), Some(repo)))
}

fn ipv4(s: &str, flag: &str) -> Result<Ipv4Addr> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag}: {s:?} is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        bail!("{flag}: {s} cannot be a node address");
    }
    Ok(ip)
}

/// `--allow-from`: an IPv4 network (a plan may also name IPv6 ones).
fn cidr(s: &str) -> Result<Cidr> {
    match Cidr::parse(s) {
        Ok(c) if c.v4().is_some() => Ok(c),
        _ => bail!("--allow-from: {s:?} is not an IPv4 CIDR such as 10.0.0.0/24"),
    }
}

/// `--cluster-cidr`: what upstream's installer accepts for
/// `CUBE_SANDBOX_NETWORK_CIDR` (CubeSandbox: env.example): a private IPv4
/// network, mask /16 to /24, given by its network address.
pub fn cluster_cidr(s: &str) -> Result<Ipv4Net> {
    let bad = |why: &str| anyhow::anyhow!("--cluster-cidr: {s:?} {why}");
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| bad("is not an IPv4 CIDR such as 10.100.0.0/18"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| bad("is not an IPv4 CIDR such as 10.100.0.0/18"))?;
    let len: u32 = len
        .parse()
        .map_err(|_| bad("is not an IPv4 CIDR such as 10.100.0.0/18"))?;
    if !(16..=24).contains(&len) {
        return Err(bad(
            "has a mask outside /16 to /24, which the installer refuses",
        ));
    }
    if !ip.is_private() {
        return Err(bad(
            "is not a private network (10/8, 172.16/12, 192.168/16)",
        ));
    }
    // 16..=24 fits a u8.
    let net = Ipv4Net::new(ip, u8::try_from(len).unwrap_or(24));
    if net.network() != net {
        return Err(bad(&format!(
            "has host bits set; the network is {}",
            net.network()
        )));
    }
    Ok(net)
}

/// `pvm` (the default), `minimal`, `tencent`, or a quoted custom list
/// (docs/pvm-kernel.md, "Boot parameters").
pub fn parse_boot_params(s: &str) -> Result<(Vec<String>, String)> {
    let owned = |set: &[&str]| set.iter().map(|p| p.to_string()).collect();
    match s {
        "pvm" => return Ok((boot_params::pvm(), "pvm".into())),
        "minimal" => return Ok((owned(boot_params::MINIMAL), "minimal".into())),
        "tencent" => return Ok((owned(boot_params::TENCENT), "tencent".into())),
        _ => {}
    }
    let params: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    if params.is_empty() {
        bail!("--boot-params: empty list; use pvm, minimal, tencent or a quoted list");
    }
    for p in &params {
        if let Some(why) = crate::cmdline::unsafe_param(p) {
            bail!("--boot-params: {why}");
        }
    }
    // kvm_pvm does not support KPTI: boot fails with it on (docs/pvm-kernel.md).
    // The list goes after the node's own parameters, so the kernel reads it
    // last; the node's line is judged again on the target.
    if let Some(why) = crate::cmdline::kpti_problem(&params)
        .or_else(|| crate::cmdline::over_limit(&params.join(" ")))
    {
        bail!("--boot-params: {why}");
    }
    Ok((params, "custom".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_settings_come_from_the_control_nodes_lines() {
        // What `grep '^CUBE_S3_' .one-click.env` prints on the control node.
        let text = "CUBE_S3_ENDPOINT=http://10.0.0.5:9000\nCUBE_S3_ACCESS_KEY_ID=cubeminio\nCUBE_S3_SECRET_ACCESS_KEY='p w'\nCUBE_S3_BUCKET=\"cube-volumes\"\nCUBE_S3_S3FS_EXTRA_OPTS=-ouse_path_request_style\n";
        let s3 = s3_settings(text, "s3.env").unwrap();
        assert_eq!(s3.secret_access_key, "p w");
        assert_eq!(s3.bucket, "cube-volumes");
        assert_eq!(s3.region, None);
        assert_eq!(
            s3.env()["CUBE_S3_S3FS_EXTRA_OPTS"],
            "-ouse_path_request_style"
        );
        assert_eq!(
            s3_settings(
                "CUBE_S3_ENDPOINT=x\nCUBE_SANDBOX_MINIO_ENABLED=1\n",
                "s3.env"
            )
            .unwrap_err()
            .to_string(),
            "s3.env:2: CUBE_SANDBOX_MINIO_ENABLED is not a CUBE_S3_* setting the installer reads"
        );
        assert_eq!(
            s3_settings("CUBE_S3_ENDPOINT=x\n", "s3.env")
                .unwrap_err()
                .to_string(),
            "s3.env: CUBE_S3_ACCESS_KEY_ID is missing or empty"
        );
    }

    #[test]
    fn boot_param_presets_and_custom() {
        assert_eq!(
            parse_boot_params("minimal").unwrap().0,
            ["nopti", "pti=off"]
        );
        assert_eq!(parse_boot_params("tencent").unwrap().0.len(), 26);
        // The default preset: upstream's PVM parameters, a subset of its list
        // plus the Helm chart's `nopti`.
        let (pvm, label) = parse_boot_params("pvm").unwrap();
        assert_eq!(label, "pvm");
        assert!(pvm.len() > 2, "{pvm:?}");
        for p in &pvm {
            assert!(
                p == "nopti" || boot_params::TENCENT.contains(&p.as_str()),
                "{p} is not upstream's"
            );
        }
        assert_eq!(
            parse_boot_params("pti=off  console=ttyS0,115200")
                .unwrap()
                .0,
            ["pti=off", "console=ttyS0,115200"]
        );
        assert_eq!(
            parse_boot_params("quiet").unwrap_err().to_string(),
            "--boot-params: nothing turns KPTI off (pti=off or nopti): kvm_pvm does not support KPTI"
        );
        assert!(parse_boot_params("pti=off a;reboot").is_err());
        // GRUB metacharacters are refused with the token that has them.
        assert_eq!(
            parse_boot_params("pti=off a|b").unwrap_err().to_string(),
            "--boot-params: \"a|b\" contains `|`, a GRUB metacharacter"
        );
        assert_eq!(
            parse_boot_params("#pti=off nopti").unwrap_err().to_string(),
            "--boot-params: \"#pti=off\" starts with `#`, which makes the rest of the line a GRUB comment"
        );
        for bad in ["x&y", "x<y", "x>y", "{", "}"] {
            let err = parse_boot_params(&format!("nopti {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("--boot-params: {bad:?} contains `")),
                "{err}"
            );
        }
    }

    /// Issue 21 item 3: what the kernel will not honour is refused at build
    /// time, judged as the kernel reads the list.
    #[test]
    fn boot_params_the_kernel_would_not_honour_are_refused() {
        // The later pti=on wins in the kernel.
        assert_eq!(
            parse_boot_params("nopti pti=on").unwrap_err().to_string(),
            "--boot-params: KPTI stays on: the last of the KPTI parameters is `pti=on`, and the \
             kernel honours the last one; kvm_pvm does not support KPTI (use pti=off or nopti, last)"
        );
        assert!(parse_boot_params("pti=on nopti").is_ok());
        assert!(parse_boot_params("pti=off pti=auto").is_err());
        // mitigations=off turns KPTI off in the kernel too.
        assert!(parse_boot_params("pti=on mitigations=off").is_ok());
        // Bidi and other non-printing characters.
        assert_eq!(
            parse_boot_params("nopti x=\u{202e}ffo")
                .unwrap_err()
                .to_string(),
            "--boot-params: x=\\u{202e}ffo contains U+202E, a non-printing or non-ASCII \
             character (bidi controls such as U+202E included); parameters are printable ASCII"
        );
        assert!(parse_boot_params("nopti a\u{7f}").is_err());
        assert!(parse_boot_params("nopti x=\u{200b}").is_err());
        // One long parameter, or many: over x86's 2,047 bytes.
        let long = format!("nopti x={}", "a".repeat(70_000));
        let err = parse_boot_params(&long).unwrap_err().to_string();
        assert!(
            err.starts_with("--boot-params: the kernel command line would be 70008 bytes, over x86's 2047-byte limit by 67961"),
            "{err}"
        );
        let many: Vec<String> = (0..5000).map(|i| format!("p{i}")).collect();
        assert!(parse_boot_params(&format!("nopti {}", many.join(" "))).is_err());
    }

    #[test]
    fn mirror_order_puts_the_choice_first() {
        let asset = LockedAsset {
            name: "b.tar.gz".into(),
            url: "https://github.com/x/b.tar.gz".parse().unwrap(),
            mirrors: [(
                "cn".to_string(),
                "https://cnb.cool/x/b.tar.gz".parse().unwrap(),
            )]
            .into(),
            size: 1,
            sha256: None,
            kernel: None,
            bundle: None,
        };
        assert_eq!(
            Mirror::parse("cn").unwrap().order(&asset).unwrap(),
            [
                "https://cnb.cool/x/b.tar.gz",
                "https://github.com/x/b.tar.gz"
            ]
        );
        assert_eq!(
            Mirror::parse("github").unwrap().order(&asset).unwrap(),
            [
                "https://github.com/x/b.tar.gz",
                "https://cnb.cool/x/b.tar.gz"
            ]
        );
        assert_eq!(
            Mirror::parse("http://10.0.2.2:8080/rel/")
                .unwrap()
                .order(&asset)
                .unwrap(),
            [
                "http://10.0.2.2:8080/rel/x/b.tar.gz",
                "https://github.com/x/b.tar.gz",
                "https://cnb.cool/x/b.tar.gz"
            ]
        );
        assert!(Mirror::parse("ftp://x").is_err());
    }
}
