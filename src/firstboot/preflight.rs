//! The preflight step: is this the machine the plan was built for, and is it
//! fit to become a Cube node? Nothing is changed here, so a failure leaves the
//! machine exactly as it was. Every check reads through the host, so tests
//! lay out /proc/meminfo, /etc/os-release and /run/cloud-init under a root.
//!
//! All checks run and all failures are reported together: an operator fixing
//! the image should see every problem in one go.

use std::time::Duration;

use anyhow::Result;

use super::host::Host;
use super::{kernel, Ctx, Outcome, StepFailure};
use crate::arch::Arch;
use crate::plan::Target;

/// The one-click installer refuses less (`CUBE_MIN_MEMORY_KB` default,
/// docs/cube-installer.md, "What the host must bring"). It would only find
/// out after the kernel switch and the reboot, so the helper refuses before
/// touching anything.
pub const MIN_MEMORY_KB: u64 = 7_500_000;

/// Free space wanted on `/` before the kernel and Cube land
/// (docs/cube-installer.md, "What the host must bring").
pub const MIN_ROOT_FREE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

const MEMINFO: &str = "/proc/meminfo";
const OS_RELEASE: &[&str] = &["/etc/os-release", "/usr/lib/os-release"];
const CLOUD_INIT_RESULT: &str = "/run/cloud-init/result.json";
const CLOUD_INIT_RUN_DIR: &str = "/run/cloud-init";
const CLOUD_INIT_CONFIG: &str = "/etc/cloud/cloud.cfg";
const CLOUD_INIT_DISABLED: &[&str] =
    &["/etc/cloud/cloud-init.disabled", "/run/cloud-init/disabled"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightConfig {
    /// How long to wait for cloud-init to finish. Bounded on purpose:
    /// `cloud-init status --wait` can hang forever (cloud-init #4505) and has
    /// no timeout (#4059), so the helper polls `result.json` itself.
    pub cloud_init_timeout: Duration,
    pub poll_interval: Duration,
}

impl Default for PreflightConfig {
    fn default() -> Self {
        Self {
            cloud_init_timeout: Duration::from_secs(15 * 60),
            poll_interval: Duration::from_secs(5),
        }
    }
}

pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    run_with(ctx, &PreflightConfig::default())
}

pub fn run_with(ctx: &mut Ctx, cfg: &PreflightConfig) -> Result<Outcome> {
    let host = ctx.host;
    let mut problems: Vec<Problem> = Vec::new();
    let mut found: Vec<String> = Vec::new();

    // Root: the unit runs the helper as root; by hand it needs sudo.
    if host.euid() != 0 {
        problems.push(Problem::new(
            "must run as root",
            "run `sudo cube-firstboot run`",
        ));
    }

    match arch_problem(host, ctx.plan.target.arch) {
        Ok(Some(fact)) => found.push(fact),
        Ok(None) => {}
        Err(p) => problems.push(p),
    }

    match memory_kb(host) {
        Ok(kb) if kb < MIN_MEMORY_KB => problems.push(Problem::new(
            format!("{kb} kB of memory; Cube Sandbox needs at least {MIN_MEMORY_KB} kB"),
            "choose an instance type with at least 8 GB of memory",
        )),
        Ok(kb) => found.push(format!("{} GiB RAM", kb / 1024 / 1024)),
        Err(msg) => problems.push(Problem::new(msg, "is /proc mounted?")),
    }

    match host.free_bytes("/") {
        Ok(free) if free < MIN_ROOT_FREE_BYTES => problems.push(Problem::new(
            format!(
                "{} MiB free on /; at least {} MiB are needed for the kernel and Cube",
                free / 1024 / 1024,
                MIN_ROOT_FREE_BYTES / 1024 / 1024
            ),
            "grow the root disk or free space, then `cube-firstboot run --retry`",
        )),
        Ok(free) => found.push(format!("{} GiB free on /", free / 1024 / 1024 / 1024)),
        Err(e) => problems.push(Problem::new(format!("{e:#}"), "is / mounted?")),
    }

    match read_os_release(host) {
        Some(text) => match distro_matches(&text, &ctx.plan.target, "this machine") {
            Ok(os) => found.push(os),
            Err(p) => problems.push(p),
        },
        None => problems.push(Problem::new(
            "cannot read /etc/os-release",
            "this helper needs a systemd-era distribution",
        )),
    }

    match wait_for_cloud_init(host, cfg) {
        Ok(CloudInit::Finished { errors }) => {
            if !errors.is_empty() {
                ctx.journal.warn(format!(
                    "cloud-init finished with errors: {}",
                    errors.join("; ")
                ));
            }
            found.push("cloud-init finished".into());
        }
        Ok(CloudInit::Absent) => found.push("cloud-init not in use".into()),
        Err(p) => problems.push(p),
    }

    if problems.is_empty() {
        return Ok(Outcome::Done(found.join(", ")));
    }
    let message = if problems.len() == 1 {
        format!("preflight: {}", problems[0].message)
    } else {
        format!(
            "preflight found {} problems:\n{}",
            problems.len(),
            problems
                .iter()
                .map(|p| format!("  - {}", p.message))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    if host.is_dry_run() {
        // Stays: a dry run goes on past what would stop a real run, to show the rest.
        host.say(&format!("dry run: {message}"));
        return Ok(Outcome::Done(format!("dry run; {message}")));
    }
    let hint = problems
        .iter()
        .map(|p| p.hint.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Err(StepFailure::new(message).hint(hint).into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: String,
}

impl Problem {
    fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// One payload per architecture (docs/arm64.md): the machine must be the
/// plan's. PVM exists for x86_64 only (docs/pvm-kernel.md), so an aarch64
/// machine must bring a /dev/kvm that answers, and nothing is fetched
/// before that is known. Ok carries what to report, if anything.
fn arch_problem(host: &dyn Host, want: Arch) -> Result<Option<String>, Problem> {
    let arch = host.arch();
    if arch != want.uname() {
        let shown = crate::printable::escape(&arch);
        let hint = match arch.parse::<Arch>() {
            Ok(a) => format!(
                "build the payload with `cubeboot build --arch {a}`, or boot an {want} instance"
            ),
            Err(_) => format!("boot an {want} instance"),
        };
        return Err(Problem::new(
            format!("this machine is {shown} (uname -m), the plan was built for {want}"),
            hint,
        ));
    }
    if want != Arch::Aarch64 {
        return Ok(None);
    }
    match kernel::kvm_device_answers(host) {
        Ok(()) => Ok(Some(
            "aarch64 with /dev/kvm answering API version 12".into(),
        )),
        Err(why) => {
            let refusal = kernel::aarch64_without_kvm(&why);
            Err(Problem::new(
                refusal.message,
                refusal.hint.unwrap_or_default(),
            ))
        }
    }
}

/// `MemTotal` from /proc/meminfo, in kB.
fn memory_kb(host: &dyn Host) -> Result<u64, String> {
    let text = host
        .read_optional(MEMINFO)
        .map_err(|e| format!("{e:#}"))?
        .ok_or_else(|| format!("cannot read {MEMINFO}"))?;
    parse_meminfo_total(&text).ok_or_else(|| format!("{MEMINFO} has no MemTotal line"))
}

pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The text of os-release(5): /etc/os-release, else /usr/lib/os-release.
pub fn read_os_release(host: &dyn Host) -> Option<String> {
    OS_RELEASE
        .iter()
        .find_map(|p| host.read_optional(p).ok().flatten())
}

/// The distro must be one the plan's profile was built for: `ID` exactly
/// (ID_LIKE is not enough: a Debian plan must not run on Ubuntu) and
/// `VERSION_ID` equal to the plan's or a point release of it. `subject` names
/// what is checked ("this machine", "the image"); Ok is `ID VERSION_ID`.
pub fn distro_matches(os_release: &str, target: &Target, subject: &str) -> Result<String, Problem> {
    let os = parse_os_release(os_release);
    let id = os.get("ID").cloned().unwrap_or_default();
    let version = os.get("VERSION_ID").cloned().unwrap_or_default();
    let want = target;
    let id_ok = want.os_ids.iter().any(|w| w == &id);
    let version_ok =
        version == want.version_id || version.starts_with(&format!("{}.", want.version_id));
    if id_ok && version_ok {
        return Ok(format!("{id} {version}"));
    }
    Err(Problem::new(
        format!(
            "{subject} runs {id} {version}, the plan was built for profile {} ({} {})",
            want.profile,
            want.os_ids.join("/"),
            want.version_id
        ),
        format!(
            "build the payload with the profile for {id} {version}, or boot a {} {} image",
            want.os_ids.first().map(String::as_str).unwrap_or("?"),
            want.version_id
        ),
    ))
}

/// os-release is shell-like `KEY=value` with optional quotes.
pub fn parse_os_release(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum CloudInit {
    Finished {
        errors: Vec<String>,
    },
    /// Not installed, or disabled on this boot.
    Absent,
}

/// Wait (bounded) until cloud-init has written its result: the helper must
/// not reboot while cloud-init runs (cloud-init #5699) and must not race its
/// package installs for the dpkg lock (docs/payloads.md, "cloud-init").
fn wait_for_cloud_init(host: &dyn Host, cfg: &PreflightConfig) -> Result<CloudInit, Problem> {
    if CLOUD_INIT_DISABLED.iter().any(|p| host.exists(p)) {
        return Ok(CloudInit::Absent);
    }
    if !host.exists(CLOUD_INIT_RUN_DIR) && !host.exists(CLOUD_INIT_CONFIG) {
        return Ok(CloudInit::Absent);
    }
    let started = host.now();
    // Counted as well as timed, so a clock that does not move cannot hang us.
    let max_polls =
        (cfg.cloud_init_timeout.as_millis() / cfg.poll_interval.as_millis().max(1)).max(1);
    let mut announced = false;
    for _ in 0..=max_polls {
        if let Some(text) = host.read_optional(CLOUD_INIT_RESULT).ok().flatten() {
            return Ok(CloudInit::Finished {
                errors: cloud_init_errors(&text),
            });
        }
        let waited = host.now().duration_since(started).unwrap_or_default();
        if waited >= cfg.cloud_init_timeout {
            break;
        }
        if !announced {
            host.say(&format!(
                "waiting up to {}s for cloud-init to finish ({CLOUD_INIT_RESULT})",
                cfg.cloud_init_timeout.as_secs()
            ));
            announced = true;
        }
        host.sleep(cfg.poll_interval);
    }
    Err(Problem::new(
        format!(
            "cloud-init did not finish within {}s ({CLOUD_INIT_RESULT} missing)",
            cfg.cloud_init_timeout.as_secs()
        ),
        "see `cloud-init status --long` and /var/log/cloud-init.log; the helper retries on its next start",
    ))
}

/// `{"v1": {"errors": [...]}}` → the error strings; unreadable JSON counts
/// as one error so it is not silently ignored.
fn cloud_init_errors(text: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v
            .pointer("/v1/errors")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        Err(e) => vec![format!("{CLOUD_INIT_RESULT} is not JSON: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_kb() {
        let text = "MemTotal:       16303916 kB\nMemFree:         1 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(16_303_916));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn os_release_values_lose_their_quotes() {
        let os = parse_os_release(
            "# comment\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID='12'\nPRETTY_NAME=\"a \\\"b\\\"\"\n",
        );
        assert_eq!(os["ID"], "debian");
        assert_eq!(os["VERSION_ID"], "12");
        assert_eq!(os["NAME"], "Debian GNU/Linux");
        assert_eq!(os["PRETTY_NAME"], "a \"b\"");
    }

    #[test]
    fn distro_check_names_both_sides() {
        let target = crate::plan::testing::sample_plan().target;
        for ok in [
            "ID=debian\nVERSION_ID=\"12\"\n",
            "ID=\"debian\"\nVERSION_ID=12.5\n",
        ] {
            assert_eq!(
                distro_matches(ok, &target, "the image")
                    .unwrap()
                    .split(' ')
                    .next(),
                Some("debian")
            );
        }
        let err =
            distro_matches("ID=ubuntu\nVERSION_ID=\"22.04\"\n", &target, "the image").unwrap_err();
        assert_eq!(
            err.message,
            "the image runs ubuntu 22.04, the plan was built for profile debian-12 (debian 12)"
        );
        // 120 is not a point release of 12.
        let err =
            distro_matches("ID=debian\nVERSION_ID=\"120\"\n", &target, "this machine").unwrap_err();
        assert_eq!(
            err.message,
            "this machine runs debian 120, the plan was built for profile debian-12 (debian 12)"
        );
    }

    #[test]
    fn cloud_init_result_errors_are_listed() {
        assert_eq!(
            cloud_init_errors(r#"{"v1": {"datasource": "DataSourceNoCloud", "errors": []}}"#),
            Vec::<String>::new()
        );
        assert_eq!(
            cloud_init_errors(r#"{"v1": {"errors": ["module runcmd failed"]}}"#),
            vec!["module runcmd failed"]
        );
        assert_eq!(cloud_init_errors("{").len(), 1);
    }
}
