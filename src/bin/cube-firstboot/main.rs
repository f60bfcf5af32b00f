//! `cube-firstboot`: the table of contents. Each verb maps to one function;
//! the engine lives in the library (`cubeboot::firstboot`).

mod cli;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;

use cli::{
    ApplyArgs, Cli, Command, DevCommand, DevFetchArgs, FetchArgs, ResetArgs, RunArgs, StageArg,
    StatusArgs, UpgradeArgs,
};
use cubeboot::firstboot::host::{DryRunHost, Host, RealHost};
use cubeboot::firstboot::journal::{JournalError, JOURNAL_VERSION};
use cubeboot::firstboot::preflight::PreflightConfig;
use cubeboot::firstboot::run_state::{Failure, RunState};
use cubeboot::firstboot::runner::{self, RunEnd, RunOptions, Scope, Steps};
use cubeboot::firstboot::status::{self, exit, Status};
use cubeboot::firstboot::{fetch, image, JOURNAL_PATH, STATUS_PATH};
use cubeboot::plan::{Asset, Plan, PlanError, PLAN_PATH};
use cubeboot::transport::FetchConfig;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Status(args) => show_status(args),
        Command::Upgrade(args) => upgrade(args),
        Command::Apply(args) => apply(args),
        Command::Reset(args) => reset(args),
        Command::Dev(DevCommand::Fetch(args)) => dev_fetch(args),
    };
    std::process::exit(code);
}

/// `run`: the state machine, on the real root or as a dry run.
fn run(args: RunArgs) -> i32 {
    let real = RealHost::new(&args.root.root);
    if args.dry_run {
        let host = DryRunHost::new(real);
        let code = run_on(&host, &args);
        eprintln!(
            "cube-firstboot: dry run: {} change(s) listed above, none made",
            host.actions().len()
        );
        code
    } else {
        run_on(&real, &args)
    }
}

fn run_on(host: &dyn Host, args: &RunArgs) -> i32 {
    let loaded = match &args.plan {
        Some(path) => load_plan_file(path),
        None => runner::load_plan(host),
    };
    let (plan, digest) = match loaded {
        Ok(p) => p,
        Err(e) => return report_setup_failure(host, Failure::Plan, &e, plan_hint(&e)),
    };
    let opts = RunOptions {
        scope: args.stop_after.map_or(Scope::All, Scope::StopAfter),
        fetch: fetch_config(&args.fetch),
        preflight: PreflightConfig {
            cloud_init_timeout: Duration::from_secs(args.cloud_init_timeout),
            ..PreflightConfig::default()
        },
        retry_failed: args.retry,
        ..RunOptions::default()
    };
    match runner::run_with(host, &plan, &digest, &opts, &Steps::standard(&opts)) {
        Ok(RunEnd::Done) | Ok(RunEnd::Stopped(_)) => exit::DONE,
        Ok(RunEnd::Rebooting) => exit::REBOOTING,
        Ok(RunEnd::Failed(_)) => exit::FAILED,
        Err(e) => {
            let journal = e.chain().find_map(|c| c.downcast_ref::<JournalError>());
            let hint = match journal {
                Some(j) if j.is_unusable() => format!(
                    "the journal cannot be used (this helper writes version {JOURNAL_VERSION}); move {JOURNAL_PATH} aside to start over"
                ),
                Some(_) => format!(
                    "check that the filesystem holding {JOURNAL_PATH} is writable and not full, then `cube-firstboot run --retry`"
                ),
                None => "see `journalctl -u cube-firstboot`; fix the cause, then `cube-firstboot run --retry`"
                    .to_string(),
            };
            report_setup_failure(host, Failure::Helper, &e, hint)
        }
    }
}

fn load_plan_file(path: &Path) -> anyhow::Result<(Plan, cubeboot::digest::Sha256Digest)> {
    use anyhow::Context;
    let text =
        cubeboot::bounded_read::read_text_file_limited(path, cubeboot::bounded_read::PLAN_LIMIT)
            .with_context(|| format!("loading plan {}", path.display()))?;
    let plan =
        Plan::from_json(&text).with_context(|| format!("loading plan {}", path.display()))?;
    Ok((plan, cubeboot::digest::Sha256Digest::of(text.as_bytes())))
}

fn plan_hint(e: &anyhow::Error) -> String {
    let plan_error = e.chain().find_map(|c| c.downcast_ref::<PlanError>());
    match plan_error {
        Some(PlanError::UnknownVersion { .. }) => {
            "the plan is newer than this helper: build payload and helper with the same cubeboot release".into()
        }
        Some(PlanError::Syntax(_)) => format!(
            "{PLAN_PATH} is damaged or truncated: the user-data may exceed the cloud's size limit; rebuild the payload (the gzip variant is smaller)"
        ),
        Some(PlanError::MissingVersion) | Some(PlanError::Invalid(_)) => {
            "the plan does not match this helper's format: build payload and helper with the same cubeboot release".into()
        }
        None => format!(
            "the payload did not deliver {PLAN_PATH}: check the user-data and `cloud-init status --long`"
        ),
    }
}

/// A failure before or around the state machine (no plan, unusable
/// journal): still say it on the console and in the status file.
fn report_setup_failure(host: &dyn Host, why: Failure, e: &anyhow::Error, hint: String) -> i32 {
    let code = match why {
        Failure::Plan => exit::USAGE,
        _ => exit::FAILED,
    };
    let state = RunState::Failed(why);
    let message = format!("{e:#}");
    host.say(&format!("{state}: {message}"));
    host.say(&format!("hint: {hint}"));
    let line = format!("{state}: {}", message.lines().next().unwrap_or(""));
    let mut st = Status {
        state,
        last_error: Some(message.clone()),
        hints: vec![hint],
        message: line,
        ..Status::default()
    };
    if let Err(w) = st.write(host) {
        host.say(&format!("could not write {STATUS_PATH}: {w:#}"));
    }
    code
}

/// `status`: print the status; the exit code says done/failed/running.
fn show_status(args: StatusArgs) -> i32 {
    let host = RealHost::new(&args.root.root);
    let found = if args.wait {
        // No --timeout: wait as long as it takes (a century is "forever").
        let timeout = Duration::from_secs(args.timeout.unwrap_or(100 * 365 * 86_400));
        status::wait(&host, timeout, Duration::from_secs(1))
    } else {
        Status::current(&host)
    };
    match found {
        Ok(Some(s)) => {
            if args.json {
                print!("{}", s.to_json());
            } else {
                print!("{}", s.human());
            }
            s.exit_code()
        }
        Ok(None) => {
            eprintln!(
                "cube-firstboot: no run on this machine yet ({STATUS_PATH} and {JOURNAL_PATH} are absent)"
            );
            exit::RUNNING
        }
        Err(e) => {
            eprintln!("cube-firstboot: {e:#}");
            exit::USAGE
        }
    }
}

/// `upgrade --bundle URL#SHA256`: the Cube installer in upgrade mode on a
/// finished node, then verify and harden again (logic in
/// `cubeboot::firstboot::cube::upgrade`).
fn upgrade(args: UpgradeArgs) -> i32 {
    let host = RealHost::new(&args.root.root);
    let Some(bundle) = &args.bundle else {
        return upgrade_to(&host, &args);
    };
    let loaded = match &args.plan {
        Some(path) => load_plan_file(path),
        None => runner::load_plan(&host),
    };
    let (plan, digest) = match loaded {
        Ok(p) => p,
        Err(e) => return report_setup_failure(&host, Failure::Plan, &e, plan_hint(&e)),
    };
    let cfg = fetch_config(&args.fetch);
    match cubeboot::firstboot::cube::upgrade::run(&host, &plan, &digest.to_hex(), bundle, &cfg) {
        Ok(_) => exit::DONE,
        Err(e) => {
            eprintln!("cube-firstboot: upgrade failed: {e:#}");
            exit::FAILED
        }
    }
}

/// `upgrade --to PLAN [--helper FILE#SHA256]`: the node onto a new plan,
/// doing only what changed (logic in `cubeboot::firstboot::upgrade`).
fn upgrade_to(host: &dyn Host, args: &UpgradeArgs) -> i32 {
    use cubeboot::firstboot::upgrade::{self, Upgraded};
    let Some(path) = &args.to else {
        return exit::USAGE;
    };
    let text = match cubeboot::bounded_read::read_text_file_limited(
        path,
        cubeboot::bounded_read::PLAN_LIMIT,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cube-firstboot: upgrade: reading {}: {e}", path.display());
            return exit::USAGE;
        }
    };
    let opts = RunOptions {
        fetch: fetch_config(&args.fetch),
        ..RunOptions::default()
    };
    let ran = if args.check {
        upgrade::check(host, &text, args.helper.as_ref()).map(|what| {
            println!("{what}");
            Upgraded::NothingToDo(what)
        })
    } else {
        upgrade::run(host, &text, args.helper.as_ref(), &opts)
    };
    match ran {
        Ok(Upgraded::NothingToDo(_)) | Ok(Upgraded::Ran(RunEnd::Done | RunEnd::Stopped(_))) => {
            exit::DONE
        }
        Ok(Upgraded::Ran(RunEnd::Rebooting)) => exit::REBOOTING,
        Ok(Upgraded::Ran(RunEnd::Failed(_))) => exit::FAILED,
        Err(e) => {
            let hint = e
                .chain()
                .find_map(|c| c.downcast_ref::<cubeboot::firstboot::StepFailure>())
                .and_then(|f| f.hint.clone());
            eprintln!("cube-firstboot: upgrade refused: {e:#}");
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            exit::FAILED
        }
    }
}

/// `apply --root DIR --stage kernel`: the kernel stage on an image root,
/// no reboot (logic in `cubeboot::firstboot::image`).
fn apply(args: ApplyArgs) -> i32 {
    let host = RealHost::new(&args.root);
    let StageArg::Kernel = args.stage;
    match image::apply(&host, image::Stage::Kernel, &fetch_config(&args.fetch)) {
        Ok(report) => {
            println!("{report}");
            exit::DONE
        }
        Err(e) => {
            eprintln!("cube-firstboot: apply --stage kernel failed: {e:#}");
            exit::FAILED
        }
    }
}

/// `reset --for-image`: empty state and per-instance identity before capture.
fn reset(args: ResetArgs) -> i32 {
    let host = RealHost::new(&args.root.root);
    let opts = image::ResetOptions {
        keep_cache: args.keep_cache,
    };
    match image::reset_for_image(&host, opts) {
        Ok(report) => {
            println!("{report}");
            exit::DONE
        }
        Err(e) => {
            eprintln!("cube-firstboot: reset --for-image failed: {e:#}");
            exit::FAILED
        }
    }
}

/// `dev fetch`: one asset through the production downloader (benchmarks).
fn dev_fetch(args: DevFetchArgs) -> i32 {
    let host = RealHost::new(&args.dest);
    let name = args
        .url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("asset")
        .to_string();
    let asset = Asset {
        name,
        urls: vec![args.url.clone()],
        sha256: args.sha256,
        size: args.size,
    };
    let started = Instant::now();
    match fetch::fetch_asset(&host, "dev", &asset, &fetch_config(&args.fetch)) {
        Ok(how) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{} {:?} {:.3}s {:.1} MiB/s",
                host.path(&cubeboot::firstboot::cache_path(&asset))
                    .display(),
                how,
                secs,
                asset.size as f64 / 1024.0 / 1024.0 / secs.max(1e-9)
            );
            exit::DONE
        }
        Err(e) => {
            eprintln!("cube-firstboot: {e}");
            exit::FAILED
        }
    }
}

fn fetch_config(args: &FetchArgs) -> FetchConfig {
    FetchConfig {
        attempts_per_mirror: args.fetch_retries,
        idle_timeout: Duration::from_secs(args.fetch_timeout),
        connect_timeout: Duration::from_secs(args.fetch_timeout.min(30)),
        user_agent: format!("cube-firstboot/{}", env!("CARGO_PKG_VERSION")),
        ..FetchConfig::default()
    }
}
