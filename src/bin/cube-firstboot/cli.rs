//! Every clap type of the helper, in one place. Verbs map to one
//! function each in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use cubeboot::digest::Sha256Digest;
use cubeboot::firstboot::cube::upgrade::PinnedBundle;
use cubeboot::firstboot::upgrade::PinnedHelper;
use cubeboot::firstboot::StepId;

#[derive(Debug, Parser)]
#[command(
    name = "cube-firstboot",
    version,
    about = "Turn this server into a Cube Sandbox node over PVM, following the \
             plan cubeboot wrote (runs from cube-firstboot.service)",
    help_expected = true,
    term_width = 80
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the provisioning state machine (resumes where it stopped)
    Run(RunArgs),
    /// Show where the run stands; exit 0 done, 1 failed, 3 running
    Status(StatusArgs),
    /// Roll a finished node onto a new plan (--to), or Cube alone onto a
    /// pinned bundle (--bundle); docs/upgrades.md
    Upgrade(UpgradeArgs),
    /// Apply a stage to an image root without rebooting (image builds)
    Apply(ApplyArgs),
    /// Leave the helper's state empty for image capture
    Reset(ResetArgs),
    /// Developer tools (benchmarks, debugging)
    #[command(subcommand, hide = true)]
    Dev(DevCommand),
}

#[derive(Debug, Args)]
pub struct RootArgs {
    /// Directory that stands for / on the target
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Attempts per mirror for retriable download failures
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fetch_retries: u32,
    /// Seconds of network silence before a download attempt times out
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub fetch_timeout: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// Plan file on this machine (default: /etc/cubeboot/plan.json under
    /// the root)
    #[arg(long, value_name = "PATH")]
    pub plan: Option<PathBuf>,
    /// Print every command and file change in order without making them
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this step (resumable; for debugging and tests)
    #[arg(long, value_name = "STEP", value_parser = parse_step)]
    pub stop_after: Option<StepId>,
    /// Run again a plan whose run ended `failed`, from the failed step
    #[arg(long)]
    pub retry: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Seconds to wait for cloud-init to finish before failing preflight
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub cloud_init_timeout: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// Print the status file's JSON instead of lines for people
    #[arg(long)]
    pub json: bool,
    /// Block until the run is done or failed
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 3)
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["to", "bundle"])))]
#[command(after_long_help = UPGRADE_EXAMPLES)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub root: RootArgs,
    /// The new plan (upgrade.sh writes it to
    /// /var/lib/cubeboot/plan.next.json): what changed of helper, PVM
    /// kernel and bundle is done (trial boot and commit for a kernel),
    /// then cube-verify, harden and report; the same plan again does
    /// nothing. Exit 0 done, 1 failed, 10 rebooting (it resumes after)
    #[arg(long, value_name = "PATH")]
    pub to: Option<PathBuf>,
    /// With --to: the new helper binary on this machine, pinned by the
    /// lock's SHA-256; it replaces /usr/local/sbin/cube-firstboot
    #[arg(long, value_name = "FILE#SHA256", requires = "to", value_parser = parse_helper)]
    pub helper: Option<PinnedHelper>,
    /// With --to: print what would change, or why it is refused (exit 1),
    /// and change nothing
    #[arg(long, requires = "to")]
    pub check: bool,
    /// Only Cube: the new one-click bundle, pinned by digest: URL#SHA256
    #[arg(long, value_name = "URL#SHA256", value_parser = parse_bundle)]
    pub bundle: Option<PinnedBundle>,
    /// With --bundle: plan file on this machine (default:
    /// /etc/cubeboot/plan.json under the root)
    #[arg(long, value_name = "PATH", conflicts_with = "to")]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

fn parse_bundle(s: &str) -> Result<PinnedBundle, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn parse_helper(s: &str) -> Result<PinnedHelper, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

const UPGRADE_EXAMPLES: &str = "\
Examples:
  From the operator's machine, one node at a time (docs/upgrades.md):
    cubeboot build --lock NEW.lock --profile debian-12 --upgrade
    ssh root@NODE sh -s < out/debian-12/upgrade.sh
    cubeboot watch --expect 1 --secret-file out/webhook-secret
  What upgrade.sh runs on the node:
    cube-firstboot upgrade --to /var/lib/cubeboot/plan.next.json \\
      --helper /var/lib/cubeboot/cube-firstboot.upgrade#SHA256";

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Root of the image (`/` inside a build VM); given explicitly so the
    /// running system is never changed by accident
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Stage to apply
    #[arg(long, value_enum)]
    pub stage: StageArg,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StageArg {
    /// Install the PVM kernel, set its boot parameters, make it the default
    Kernel,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Reset for image capture: journal, status, logs, cloud-init instance
    /// data and machine-id (the only reset there is; required)
    #[arg(long, required = true)]
    pub for_image: bool,
    #[command(flatten)]
    pub root: RootArgs,
    /// Keep the verified asset cache (images built from an --offline overlay)
    #[arg(long)]
    pub keep_cache: bool,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Fetch one URL into the cache with the helper's downloader
    Fetch(DevFetchArgs),
}

#[derive(Debug, Args)]
pub struct DevFetchArgs {
    /// URL to fetch (http, https or file)
    pub url: String,
    /// Expected SHA-256 of the file
    pub sha256: Sha256Digest,
    /// Expected size in bytes
    #[arg(long, value_name = "BYTES")]
    pub size: u64,
    /// Directory that stands for / (the file lands in
    /// DIR/var/lib/cubeboot/cache/SHA256)
    #[arg(long, value_name = "DIR")]
    pub dest: PathBuf,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

fn parse_step(s: &str) -> Result<StepId, String> {
    StepId::ALL
        .into_iter()
        .find(|step| step.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = StepId::ALL.iter().map(|s| s.name()).collect();
            format!("unknown step {s:?}; steps are: {}", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_documented() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_fits_in_80_columns() {
        let mut cmd = Cli::command();
        let mut pages = vec![cmd.render_long_help().to_string()];
        for sub in ["run", "status", "upgrade", "apply", "reset", "dev"] {
            let mut c = Cli::command();
            // Settings such as term_width reach subcommands only when built.
            c.build();
            let s = c.find_subcommand_mut(sub).unwrap();
            pages.push(s.render_long_help().to_string());
        }
        for page in pages {
            for line in page.lines() {
                assert!(line.chars().count() <= 80, "too wide: {line:?}");
            }
        }
    }

    #[test]
    fn steps_parse_by_name() {
        assert_eq!(parse_step("kernel-boot"), Ok(StepId::KernelBoot));
        let err = parse_step("kernel").unwrap_err();
        assert!(err.starts_with("unknown step \"kernel\"; steps are: preflight, fetch,"));
    }
}
