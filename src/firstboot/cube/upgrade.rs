//! `cube-firstboot upgrade --bundle URL#SHA256`: a newer one-click bundle on
//! a node whose first run is done, keeping the node (docs/cube-installer.md,
//! "Invocation"). The bundle is fetched and verified like the plan's, the
//! installer runs with `--mode=upgrade` (never without `--mode`: that would
//! leave the choice to whether `.one-click.env` exists), then cube-verify
//! and harden run again, and the journal and status roll forward to the new
//! bundle.

use std::str::FromStr;

use anyhow::{bail, Context, Result};

use super::super::fetch::{self, HostNet};
use super::super::host::Host;
use super::super::journal::{Journal, StepState};
use super::super::run_state::{Failure, RunState};
use super::super::status::Status;
use super::super::{Ctx, Outcome, StepFailure, StepId};
use super::install::Mode;
use crate::digest::Sha256Digest;
use crate::plan::{Asset, Plan};
use crate::transport::{self, FetchConfig};

/// A bundle pinned by digest: `https://…/cube-sandbox-one-click-….tar.gz#<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedBundle {
    pub url: String,
    pub name: String,
    pub sha256: Sha256Digest,
}

impl FromStr for PinnedBundle {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((url, digest)) = s.rsplit_once('#') else {
            bail!("expected URL#SHA256 (the bundle's SHA-256 after a '#'), got {s:?}");
        };
        let sha256: Sha256Digest = digest
            .parse()
            .map_err(|e| anyhow::anyhow!("{s:?}: the part after '#' is not a SHA-256: {e}"))?;
        if !["http://", "https://", "file://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            bail!("{url:?} is not an http(s) or file URL");
        }
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| n.starts_with("cube-sandbox-one-click-") && n.ends_with(".tar.gz"))
            .with_context(|| {
                format!("{url:?} does not name a cube-sandbox-one-click-*.tar.gz bundle")
            })?;
        Ok(Self {
            url: url.to_string(),
            name: name.to_string(),
            sha256,
        })
    }
}

/// Upgrade this node to `bundle`. The plan stays the contract for
/// everything else (role, node IP, hardening); only the bundle changes.
pub fn run(
    host: &dyn Host,
    plan: &Plan,
    plan_sha256: &str,
    bundle: &PinnedBundle,
    cfg: &FetchConfig,
) -> Result<Outcome> {
    run_with_probe(host, plan, plan_sha256, bundle, cfg, &super::http::get)
}

/// [`run`] with cube-verify's HTTP GET supplied (tests answer from a model).
pub fn run_with_probe(
    host: &dyn Host,
    plan: &Plan,
    plan_sha256: &str,
    bundle: &PinnedBundle,
    cfg: &FetchConfig,
    get: &dyn Fn(&str) -> Result<String>,
) -> Result<Outcome> {
    let mut journal = Journal::load(host, plan_sha256)?;
    if !journal.is_complete(StepId::Harden) {
        return Err(StepFailure::new(
            "upgrade needs a node whose first run is done (harden not complete)",
        )
        .hint("finish the first run (cube-firstboot status; run --retry) before upgrading")
        .into());
    }

    // The bundle, verified against its pin before anything uses it. Its size
    // comes from the server; the digest is what binds.
    let size = transport::open(&HostNet(host), &bundle.url, 0, cfg)
        .map_err(|e| anyhow::anyhow!("reaching {}: {e}", bundle.url))?
        .total
        .with_context(|| format!("{} did not say the bundle's size", bundle.url))?;
    let asset = Asset {
        name: bundle.name.clone(),
        urls: vec![bundle.url.clone()],
        sha256: bundle.sha256,
        size,
    };
    fetch::fetch_asset(host, "bundle", &asset, cfg).map_err(|e| {
        let hint = e.hint();
        StepFailure::new(e.to_string()).hint(hint)
    })?;
    let mut upgraded = plan.clone();
    upgraded.assets.bundle = asset;

    // Install in upgrade mode, then judge the node again by its state.
    let result = {
        let mut ctx = Ctx::new(host, &upgraded, &mut journal);
        steps(&mut ctx, get)
    };
    let (state, message) = match &result {
        Ok(detail) => {
            journal.facts.bundle_url = Some(bundle.url.clone());
            journal.facts.bundle_sha256 = Some(bundle.sha256.to_string());
            journal.last_error = None;
            (
                RunState::Done,
                format!("upgraded to {}: {detail}", bundle.name),
            )
        }
        Err(e) => {
            journal.last_error = Some(format!("{e:#}"));
            (
                RunState::Failed(Failure::Upgrade),
                format!("upgrade to {} failed: {e:#}", bundle.name),
            )
        }
    };
    journal.save(host)?;
    let mut status = Status::from_journal(host, Some(&upgraded), &journal, state, None);
    status.message = message.clone();
    // The new plan's secrets too (write scrubs every value the host knows).
    super::super::report::plan_secrets(&upgraded)
        .iter()
        .for_each(|v| host.secrets().add(v));
    status.write(host)?;
    host.say(&message);
    result.map(|_| Outcome::Done(message))
}

/// cube-install (`--mode=upgrade`), cube-verify, harden; each recorded in
/// the journal as the first run records them.
fn steps(ctx: &mut Ctx, get: &dyn Fn(&str) -> Result<String>) -> Result<String> {
    let mut done = Vec::new();
    for step in [StepId::CubeInstall, StepId::CubeVerify, StepId::Harden] {
        let f = |c: &mut Ctx| -> Result<Outcome> {
            match step {
                StepId::CubeInstall => {
                    super::with_diagnostics(c, |c| super::install::run_mode(c, Mode::Upgrade))
                }
                StepId::CubeVerify => {
                    super::with_diagnostics(c, |c| super::verify::run_with_probe(c, get))
                }
                _ => super::harden(c),
            }
        };
        ctx.journal
            .mark(ctx.host, step, StepState::Started, "upgrade");
        match f(ctx) {
            Ok(Outcome::Done(d)) => {
                ctx.journal.mark(ctx.host, step, StepState::Done, &d);
                done.push(d);
            }
            Ok(Outcome::Skipped(d)) => {
                ctx.journal.mark(ctx.host, step, StepState::Skipped, &d);
            }
            Ok(other) => bail!(
                "{}: unexpected outcome during upgrade: {other:?}",
                step.name()
            ),
            Err(e) => {
                ctx.journal
                    .mark(ctx.host, step, StepState::Failed, &format!("{e:#}"));
                return Err(e);
            }
        }
    }
    Ok(done.first().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_bad_ones_say_why() {
        let sha = "a".repeat(64);
        let p: PinnedBundle =
            format!("https://example.com/r/cube-sandbox-one-click-v0.7.2-amd64.tar.gz#{sha}")
                .parse()
                .unwrap();
        assert_eq!(p.name, "cube-sandbox-one-click-v0.7.2-amd64.tar.gz");
        assert_eq!(p.sha256.to_string(), sha);
        let err = |s: &str| s.parse::<PinnedBundle>().unwrap_err().to_string();
        assert_eq!(
            err("https://example.com/b.tar.gz"),
            "expected URL#SHA256 (the bundle's SHA-256 after a '#'), got \"https://example.com/b.tar.gz\""
        );
        assert_eq!(
            err(&format!("https://example.com/other.tar.gz#{sha}")),
            "\"https://example.com/other.tar.gz\" does not name a cube-sandbox-one-click-*.tar.gz bundle"
        );
        assert!(err("https://e/cube-sandbox-one-click-x.tar.gz#abc").contains("not a SHA-256"));
    }
}
