//! Every clap type of the builder, in one place.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, StringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::arch::Arch;

#[derive(Debug, Parser)]
#[command(
    name = "cubeboot",
    version,
    about = "Build first-boot payloads that make cloud servers Cube Sandbox hosts over PVM",
    help_expected = true,
    term_width = 80
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up; boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the distro profiles
    Profiles(ProfilesArgs),
    /// Validate profiles and a lock file
    Check(CheckArgs),
    /// Pin release assets (kernel packages, bundle, helper) by SHA-256
    Lock(LockArgs),
    /// Build payloads for one or all profiles from a lock
    Build(BuildArgs),
    /// Print the facts of a bundle or kernel package, or list an overlay
    Inspect(InspectArgs),
    /// Watch a fleet come up: receive the helpers' signed webhook posts
    Watch(WatchArgs),
    /// Copy every pinned asset into a directory to serve as a mirror
    Mirror(MirrorArgs),
    /// Print shell completions
    Completions(CompletionsArgs),
    /// Print the man page (roff)
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ProfileDirArgs {
    /// Read the distro profiles from DIR instead of the ones built in
    #[arg(long, value_name = "DIR")]
    pub profiles_dir: Option<PathBuf>,
}

impl ProfileDirArgs {
    /// `--profiles-dir`, or `None` for the built-in profiles.
    pub fn get(&self) -> Option<&std::path::Path> {
        self.profiles_dir.as_deref()
    }
}

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    #[command(flatten)]
    pub dir: ProfileDirArgs,
    /// Write the profiles into DIR (to edit, then use with --profiles-dir)
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Print the profiles as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the result and every diagnostic as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dir: ProfileDirArgs,
    /// Lock file to validate against the profiles
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// Treat warnings as errors
    #[arg(long)]
    pub strict: bool,
    /// Check the lock against this profile only (a one-distro fleet), or `all`
    #[arg(long, value_name = "NAME", default_value = "all", value_parser = ProfileName, hide_possible_values = true)]
    pub profile: String,
    /// Check the locked bundle as `build --arch` would use it
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Local asset to pin (hashed while read); repeatable
    #[arg(long = "asset", value_name = "PATH")]
    pub assets: Vec<PathBuf>,
    /// Asset URL to download and pin in one streaming pass; repeatable
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// GitHub-release-style JSON listing (`assets[].name`,
    /// `browser_download_url`, optional `digest`)
    #[arg(long, value_name = "FILE")]
    pub release_json: Option<PathBuf>,
    /// Release tag used to derive GitHub and CN mirror URLs for local assets
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Base URL where the assets will be served (overrides the GitHub pattern)
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// No longer needed (kernels are judged by their kvm-pvm module); accepted
    /// and ignored so older scripts keep working
    #[arg(long, hide = true)]
    pub allow_non_pvm_kernel: bool,
    /// Repository (dnf baseurl) serving a split PVM kernel to pin package by
    /// package, e.g. OpenCloudOS 9's
    #[arg(long, value_name = "URL")]
    pub kernel_repo: Option<String>,
    /// A package of that kernel: its URL under --kernel-repo, or a local copy
    /// of a file at the repository's top; repeatable
    #[arg(long = "repo-rpm", value_name = "URL|PATH")]
    pub repo_rpms: Vec<String>,
    /// Where to write the lock file
    #[arg(short, long, value_name = "FILE", default_value = "cubeboot.lock")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub dir: ProfileDirArgs,
    /// Lock file pinning the release assets
    #[arg(long, value_name = "FILE", default_value = "cubeboot.lock")]
    pub lock: PathBuf,
    /// Profile name, or `all`
    #[arg(long, value_name = "NAME", default_value = "all", value_parser = ProfileName, hide_possible_values = true)]
    pub profile: String,
    /// Node role
    #[arg(long, value_enum, default_value_t = RoleArg::Control)]
    pub role: RoleArg,
    /// Control plane IP (required for --role compute)
    #[arg(long, value_name = "IP")]
    pub control_plane_ip: Option<String>,
    /// Node IP passed to the installer: `auto` or an IPv4 address
    #[arg(long, value_name = "IP", default_value = "auto")]
    pub node_ip: String,
    /// Where the target downloads assets: github, cn, or the base URL of a
    /// `cubeboot mirror` directory (each asset under its URL's path)
    #[arg(long, value_name = "MIRROR", default_value = "github")]
    pub mirror: String,
    /// Boot parameters: pvm (upstream's PVM parameters), minimal (nopti
    /// pti=off), tencent (upstream's whole list), or a quoted custom list
    #[arg(long, value_name = "SET", default_value = "pvm")]
    pub boot_params: String,
    /// URL that receives a signed JSON POST on each step change
    /// (`cubeboot watch` listens for them)
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// The fleet's webhook signing secret: read if the file exists, else
    /// created (0600) with a new random one; default OUTPUT/webhook-secret
    #[arg(long, value_name = "FILE", requires = "webhook")]
    pub webhook_secret_file: Option<PathBuf>,
    /// The cluster's ops-agent token (CUBE_OPS_OPSAGENT_TOKEN), for bundles
    /// that require one: read if the file exists, else created (0600) with a
    /// new random one by a control build; a compute build needs the file the
    /// control payload was built with. Default OUTPUT/ops-token
    #[arg(long, value_name = "FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// The sandbox network every node of the cluster uses
    /// (CUBE_SANDBOX_NETWORK_CIDR): a private IPv4 CIDR, /16 to /24
    #[arg(long, value_name = "CIDR")]
    pub cluster_cidr: Option<String>,
    /// Refuse on warnings about the locked bundle too (unknown facts, a
    /// guest kernel that differs from the host kernel)
    #[arg(long)]
    pub strict: bool,
    /// Cloud whose user-data budget the payload must fit [default: aws]
    #[arg(long, value_name = "NAME", value_parser = cloud_names(), hide_possible_values = true)]
    pub cloud: Option<String>,
    /// Inline the helper binary as gz+b64 instead of downloading it: only
    /// with --cloud none (a NoCloud seed); it fits no cloud's budget
    #[arg(long)]
    pub embed_helper: bool,
    /// Payload format
    #[arg(long, value_enum, default_value_t = FormatArg::UserData)]
    pub format: FormatArg,
    /// With --format overlay: put every pinned asset in the overlay's cache
    #[arg(long)]
    pub offline: bool,
    /// Also write OUTPUT/<profile>/upgrade.sh: rolls a running node onto
    /// this lock (`ssh root@NODE sh -s < upgrade.sh`; docs/upgrades.md)
    #[arg(long)]
    pub upgrade: bool,
    /// `auto` uses native /dev/kvm when present; `pvm` always switches kernel
    #[arg(long, value_enum, default_value_t = KvmArg::Auto)]
    pub kvm: KvmArg,
    /// Machine architecture of the nodes: one payload per architecture,
    /// aarch64 ones in OUTPUT/<profile>-aarch64 (docs/arm64.md)
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    pub arch: Arch,
    /// How the trial boot starts the PVM kernel: kexec (the firmware reboot
    /// when kexec is missing or refuses) or firmware (docs/bootloader.md)
    #[arg(long, value_enum, default_value_t = RebootArg::Kexec)]
    pub reboot: RebootArg,
    /// Data disk for /data/cubelet: auto, loopback, or a device path
    #[arg(long, value_name = "DISK", default_value = "auto")]
    pub data_disk: String,
    /// Networks admitted to Cube's internal ports when hardening (repeatable)
    #[arg(long = "allow-from", value_name = "CIDR")]
    pub allow_from: Vec<String>,
    /// Hardening of binds, firewall and credentials
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub hardening: OnOff,
    /// Compute: the control node's CUBE_S3_* lines (KEY=value file)
    #[arg(long, value_name = "FILE")]
    pub s3_env: Option<PathBuf>,
    /// Seconds the Cube installer may run before it is stopped
    #[arg(long, value_name = "SECS", default_value_t = crate::plan::DEFAULT_INSTALL_TIMEOUT_SECS)]
    pub install_timeout: u64,
    /// Seconds cube-verify waits for services to answer
    #[arg(long, value_name = "SECS", default_value_t = crate::plan::DEFAULT_VERIFY_BUDGET_SECS)]
    pub verify_budget: u64,
    /// Compute: seconds to wait for the control plane to answer
    #[arg(long, value_name = "SECS", default_value_t = crate::plan::DEFAULT_CONTROL_PLANE_WAIT_SECS)]
    pub control_plane_wait: u64,
    /// Output directory
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub output: PathBuf,
    /// Print what was written (files, sizes, budgets) as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// Lock file pinning the assets
    #[arg(long, value_name = "FILE", default_value = "cubeboot.lock")]
    pub lock: PathBuf,
    /// Directory to fill: each asset under its URL's path
    /// (DIR/TencentCloud/CubeSandbox/releases/download/TAG/NAME), where
    /// `build --mirror URL` looks
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per verb into DIR instead of the main page to stdout
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A one-click bundle (`.tar.gz`: the facts `lock` records), a kernel
    /// package (`.rpm`, `.deb`) or an image overlay (`.tar.xz`, listed)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print a bundle's or kernel package's facts as JSON (shape versioned by
    /// its `inspect` field; docs/cube-installer.md)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_long_help = super::watch::args::exit_status_help())]
pub struct WatchArgs {
    /// Address and port to listen on (e.g. 0.0.0.0:8740 for a fleet)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8740")]
    pub listen: String,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; with --tls-cert)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The fleet's webhook secret (what `build` wrote or was given)
    #[arg(long, value_name = "FILE", default_value = "out/webhook-secret")]
    pub secret_file: PathBuf,
    /// Exit 0 once this many nodes report done
    #[arg(long, value_name = "N", conflicts_with = "nodes",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub expect: Option<u64>,
    /// Exit 0 once these nodes (hostnames or IPs) report done
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Keep watching after a node fails; exit 1 when the rest are finished
    /// (or the time is up)
    #[arg(long)]
    pub keep_going: bool,
    /// Give up (exit 3) after this long: seconds, or with s, m or h
    #[arg(long, value_name = "DURATION", default_value = "2h",
          value_parser = super::watch::args::parse_duration)]
    pub timeout: std::time::Duration,
    /// One JSON line per event even on a terminal
    #[arg(long)]
    pub json: bool,
    /// Print post handling times at the end (for scripts/bench-watch.sh)
    #[arg(long, hide = true)]
    pub stats: bool,
}

/// The clouds of the budget table (docs/payloads.md), for completion and
/// for a clap error that lists them.
fn cloud_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        super::budget::CLOUDS
            .iter()
            .map(|c| PossibleValue::new(c.name).help(c.source)),
    )
}

/// Any profile name (a --profiles-dir brings its own), offering `all` and
/// the built-in names to shell completion.
#[derive(Debug, Clone, Copy)]
pub struct ProfileName;

impl TypedValueParser for ProfileName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        let built_in = super::profile::BUILT_IN
            .iter()
            .map(|(file, _)| file.trim_end_matches(".yaml"));
        Some(Box::new(
            std::iter::once("all")
                .chain(built_in)
                .map(PossibleValue::new),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// All-in-one control node
    Control,
    /// Compute node joining a control plane
    Compute,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// cloud-init user-data (plain and gz+b64)
    UserData,
    /// An image overlay (`overlay.tar.xz`)
    Overlay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootArg {
    /// kexec into the PVM entry, skipping firmware and GRUB
    Kexec,
    /// Reboot through the firmware and GRUB
    Firmware,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvmArg {
    /// Native /dev/kvm when usable, PVM otherwise
    Auto,
    /// Always install and boot the PVM host kernel
    Pvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled
    On,
    /// Disabled
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_documented() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_fits_in_80_columns() {
        let mut cmd = Cli::command();
        let mut names = vec![String::new()];
        names.extend(cmd.get_subcommands().map(|s| s.get_name().to_string()));
        for name in names {
            let help = if name.is_empty() {
                cmd.render_long_help().to_string()
            } else {
                cmd.find_subcommand_mut(&name)
                    .map(|s| s.render_long_help().to_string())
                    .unwrap_or_default()
            };
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{name}: {line:?}");
            }
        }
    }
}
