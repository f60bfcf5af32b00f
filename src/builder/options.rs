//! Build options: `cubeboot build` flags, checked once, then mapped into the
//! plan for each profile.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

use super::budget::Cloud;
use super::cli::{BuildArgs, KvmArg, OnOff, RoleArg};
use super::lock::{AssetKind, Lock, LockedAsset, Url};
use super::profile::Profile;
use crate::plan::{
    boot_params, Asset, Assets, CubePlan, DataDisk, KernelPlan, KvmMode, Plan, ReportPlan, Role,
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
            Self::Base(base) => Url::join(base, &asset.name)
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
    pub control_plane_ip: Option<String>,
    pub node_ip: String,
    pub mirror: Mirror,
    pub boot_params: Vec<String>,
    /// `minimal`, `tencent` or `custom`, for the manifest.
    pub boot_params_label: String,
    pub webhook: Option<String>,
    pub cloud: Cloud,
    pub embed_helper: bool,
    pub kvm: KvmMode,
    pub data_disk: DataDisk,
    pub allow_from: Vec<String>,
    pub hardening: bool,
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
            (_, Some(ip)) => Some(ipv4(ip, "--control-plane-ip")?),
            (_, None) => None,
        };
        let node_ip = if args.node_ip == "auto" {
            "auto".to_string()
        } else {
            ipv4(&args.node_ip, "--node-ip")?
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
            cloud: Cloud::by_name(&args.cloud).map_err(|e| anyhow::anyhow!("--cloud: {e}"))?,
            embed_helper: args.embed_helper,
            kvm: match args.kvm {
                KvmArg::Auto => KvmMode::Auto,
                KvmArg::Pvm => KvmMode::Pvm,
            },
            data_disk,
            allow_from,
            hardening: args.hardening == OnOff::On,
        })
    }

    /// The plan for one profile: the profile's target, the lock's pins and
    /// facts, and these options.
    pub fn plan(&self, profile: &Profile, lock: &Lock) -> Result<Plan> {
        let needed_by = format!("profile {}", profile.name);
        let kernel = lock.pinned(profile.kernel_asset, &needed_by)?;
        let bundle = lock.pinned(AssetKind::Bundle, &needed_by)?;
        // Lock::parse refused kernel packages without facts.
        let facts = kernel
            .asset
            .kernel
            .as_ref()
            .context("kernel asset without facts")?;
        let asset = |p: &super::lock::Pinned<'_>| -> Result<Asset> {
            Ok(Asset {
                name: p.asset.name.clone(),
                urls: self.mirror.order(p.asset)?,
                sha256: p.sha256,
                size: p.asset.size,
            })
        };
        Ok(Plan {
            version: PLAN_VERSION,
            generator: crate::generator(),
            target: profile.target.clone(),
            assets: Assets {
                kernel: asset(&kernel)?,
                bundle: asset(&bundle)?,
            },
            kernel: KernelPlan {
                kver: facts.kver.clone(),
                package: facts.package.clone(),
                package_version: facts.version.clone(),
                kvm: self.kvm,
                boot_params: self.boot_params.clone(),
                panic_seconds: 30,
            },
            cube: CubePlan {
                role: self.role,
                control_plane_ip: self.control_plane_ip.clone(),
                node_ip: self.node_ip.clone(),
                mirror: (self.mirror == Mirror::Cn).then(|| "cn".to_string()),
                install_timeout_secs: 45 * 60,
                data_disk: self.data_disk.clone(),
                loopback_size_gib: 50,
                hardening: self.hardening,
                allow_from: self.allow_from.clone(),
                extra_env: BTreeMap::new(),
            },
            report: ReportPlan {
                webhook: self.webhook.clone(),
            },
            max_reboots: 1,
        })
    }
}

fn ipv4(s: &str, flag: &str) -> Result<String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag}: {s:?} is not an IPv4 address"))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        bail!("{flag}: {s} cannot be a node address");
    }
    Ok(ip.to_string())
}

fn cidr(s: &str) -> Result<String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ok = ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|n| n <= 32);
    if !ok {
        bail!("--allow-from: {s:?} is not an IPv4 CIDR such as 10.0.0.0/24");
    }
    Ok(s.to_string())
}

/// `minimal`, `tencent`, or a quoted custom list (facts §9).
pub fn parse_boot_params(s: &str) -> Result<(Vec<String>, String)> {
    let owned = |set: &[&str]| set.iter().map(|p| p.to_string()).collect();
    match s {
        "minimal" => return Ok((owned(boot_params::MINIMAL), "minimal".into())),
        "tencent" => return Ok((owned(boot_params::TENCENT), "tencent".into())),
        _ => {}
    }
    let params: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    if params.is_empty() {
        bail!("--boot-params: empty list; use minimal, tencent or a quoted list");
    }
    for p in &params {
        if p.chars()
            .any(|c| c.is_control() || matches!(c, '"' | '\'' | '\\' | '`' | '$' | ';'))
        {
            bail!("--boot-params: {p:?} has characters a kernel command line cannot carry safely");
        }
    }
    // kvm_pvm does not support KPTI: boot fails with it on (facts §9, Helm chart).
    if !params.iter().any(|p| p == "pti=off" || p == "nopti") {
        bail!("--boot-params: the list must turn KPTI off (pti=off or nopti): kvm_pvm does not support KPTI");
    }
    Ok((params, "custom".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_param_presets_and_custom() {
        assert_eq!(
            parse_boot_params("minimal").unwrap().0,
            ["nopti", "pti=off"]
        );
        assert_eq!(parse_boot_params("tencent").unwrap().0.len(), 26);
        assert_eq!(
            parse_boot_params("pti=off  console=ttyS0,115200")
                .unwrap()
                .0,
            ["pti=off", "console=ttyS0,115200"]
        );
        assert_eq!(
            parse_boot_params("quiet").unwrap_err().to_string(),
            "--boot-params: the list must turn KPTI off (pti=off or nopti): kvm_pvm does not support KPTI"
        );
        assert!(parse_boot_params("pti=off a;reboot").is_err());
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
                "http://10.0.2.2:8080/rel/b.tar.gz",
                "https://github.com/x/b.tar.gz",
                "https://cnb.cool/x/b.tar.gz"
            ]
        );
        assert!(Mirror::parse("ftp://x").is_err());
    }
}
