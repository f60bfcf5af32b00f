//! Render a plan into `#cloud-config` user-data with minijinja.
//!
//! Rules (prior-art §2.3, STYLE §5): the template fails on any undefined
//! variable; values reach YAML only through the `yaml_quote` / `yaml_block`
//! filters (never pasted); values reach the shell only as positional
//! arguments of the bootstrap; nothing reboots from runcmd. The result is
//! parsed back and compared with what we meant to write.

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::yaml;
use crate::digest::Sha256Digest;
use crate::plan::Plan;

const USER_DATA_TEMPLATE: &str = include_str!("../../templates/user-data.yaml.j2");
/// The bootstrap runcmd runs; it takes `SHA256 [URL...]` as arguments.
pub const BOOTSTRAP: &str = include_str!("../../templates/bootstrap.sh");
/// The unit cube-firstboot runs under.
pub const UNIT: &str = include_str!("../../templates/builder-default.service");

/// How the target gets the helper binary.
#[derive(Debug, Clone)]
pub enum HelperSource {
    /// Downloaded from these URLs, in order.
    Urls(Vec<String>),
    /// Inlined (the raw binary; rendered gz+b64).
    Embedded(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Helper {
    pub sha256: Sha256Digest,
    pub source: HelperSource,
}

/// Rendered user-data plus the sizes of its parts (for budget advice).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub user_data: String,
    pub plan_json: String,
    /// Bytes the inline helper takes in the user-data (0 when downloaded).
    pub embedded_helper_bytes: u64,
}

#[derive(Serialize)]
struct Context_ {
    generator: String,
    plan_json: String,
    plan_gz_b64: String,
    unit: String,
    bootstrap: String,
    helper_sha256: String,
    helper_urls: Vec<String>,
    helper_gz_b64: String,
    final_message: String,
}

/// Render one plan.
pub fn user_data(plan: &Plan, helper: &Helper) -> Result<Rendered> {
    // Step 1: the values, each to be encoded by a filter in the template.
    let plan_json = plan.to_json();
    let (helper_urls, helper_gz_b64) = match &helper.source {
        HelperSource::Urls(urls) => (urls.clone(), String::new()),
        HelperSource::Embedded(bytes) => (Vec::new(), gzip_base64(bytes)?),
    };
    let ctx = Context_ {
        generator: plan.generator.clone(),
        plan_json: plan_json.clone(),
        // Encoded for size (the plain plan is out/<profile>/plan.json);
        // cloud-init writes the decoded bytes, Plan::to_json exactly.
        plan_gz_b64: gzip_base64(plan_json.as_bytes())?,
        unit: UNIT.to_string(),
        bootstrap: BOOTSTRAP.to_string(),
        helper_sha256: helper.sha256.to_hex(),
        helper_urls,
        helper_gz_b64: helper_gz_b64.clone(),
        // No `$` or braces: cloud-init templates final_message.
        final_message: format!(
            "{} payload for {} handed over to cube-firstboot.service; watch it with: cube-firstboot status --wait",
            plan.generator,
            plan.role_label()
        ),
    };
    // Step 2: render with strict undefined.
    let env = environment()?;
    let user_data = env
        .get_template("user-data.yaml.j2")
        .and_then(|t| t.render(&ctx))
        .context("rendering template user-data.yaml.j2")?;
    // Step 3: read it back as cloud-init would and compare.
    verify(&user_data, &ctx).context("checking the rendered user-data")?;
    Ok(Rendered {
        embedded_helper_bytes: helper_gz_b64.len() as u64,
        user_data,
        plan_json,
    })
}

fn environment() -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_filter("yaml_quote", |s: String| yaml::quote(&s));
    env.add_filter(
        "yaml_block",
        |s: String, indent: usize| -> Result<String, minijinja::Error> {
            yaml::literal_block(&s, indent)
                .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e))
        },
    );
    env.add_filter(
        "yaml_comment",
        |s: String| -> Result<String, minijinja::Error> {
            if s.contains(['\n', '\r']) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "a YAML comment cannot hold a line break",
                ));
            }
            Ok(s)
        },
    );
    // The template is part of the binary: builds never depend on the cwd.
    env.add_template("user-data.yaml.j2", USER_DATA_TEMPLATE)
        .context("loading template user-data.yaml.j2")?;
    Ok(env)
}

/// gzip with a fixed header (mtime 0, no file name, OS byte 3 = Unix) so the
/// same input always gives the same bytes (prior-art §11), then base64.
pub fn gzip_base64(bytes: &[u8]) -> Result<String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(gzip(bytes)?))
}

pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// Parse the user-data back and check it says what we meant (STYLE §5,
/// Butane's ErrInvalidGeneratedConfig).
fn verify(user_data: &str, ctx: &Context_) -> Result<()> {
    if !user_data.starts_with("#cloud-config\n") {
        bail!("does not start with #cloud-config");
    }
    let doc = yaml::to_json_value(user_data, std::path::Path::new("user-data"))?;
    let files = doc["write_files"]
        .as_array()
        .context("write_files is not a list")?;
    let content = |path: &str| {
        files
            .iter()
            .find(|f| f["path"] == path)
            .and_then(|f| f["content"].as_str())
    };
    let plan = content("/etc/cubeboot/plan.json").context("no plan in write_files")?;
    let plan = base64::engine::general_purpose::STANDARD.decode(plan)?;
    let mut decoded = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&plan[..]), &mut decoded)?;
    if decoded != ctx.plan_json {
        bail!("the plan does not read back byte-for-byte");
    }
    if content("/etc/systemd/system/cube-firstboot.service") != Some(ctx.unit.as_str()) {
        bail!("the unit does not read back byte-for-byte");
    }
    let run = doc["runcmd"][0]
        .as_array()
        .context("runcmd[0] is not a list")?;
    let mut want = vec![
        "sh".to_string(),
        "-c".to_string(),
        ctx.bootstrap.clone(),
        "cube-bootstrap".to_string(),
        ctx.helper_sha256.clone(),
    ];
    want.extend(ctx.helper_urls.iter().cloned());
    if run.iter().map(|v| v.as_str()).collect::<Vec<_>>()
        != want.iter().map(|s| Some(s.as_str())).collect::<Vec<_>>()
    {
        bail!("the runcmd bootstrap does not read back as written");
    }
    if !ctx.helper_gz_b64.is_empty()
        && content("/var/lib/cubeboot/cube-firstboot.download") != Some(ctx.helper_gz_b64.as_str())
    {
        bail!("the embedded helper does not read back");
    }
    if doc["final_message"].as_str() != Some(ctx.final_message.as_str()) {
        bail!("final_message does not read back");
    }
    if doc.get("power_state").is_some() {
        bail!("user-data must never reboot (power_state)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::sample_plan;

    fn helper() -> Helper {
        Helper {
            sha256: Sha256Digest::of(b"helper"),
            source: HelperSource::Urls(vec![
                "https://example.invalid/cube-firstboot".into(),
                "https://mirror.invalid/a b'\"c".into(),
            ]),
        }
    }

    #[test]
    fn renders_and_reads_back() {
        let r = user_data(&sample_plan(), &helper()).unwrap();
        assert!(r.user_data.starts_with("#cloud-config\n"));
        assert!(r
            .user_data
            .contains("systemctl start --no-block cube-firstboot.service"));
        assert!(r
            .user_data
            .contains("final_message: \"cubeboot 0.0.0-test payload"));
        assert_eq!(r.embedded_helper_bytes, 0);
        // sha256sum runs before install in the bootstrap.
        let check = BOOTSTRAP.find("sha256sum -c").unwrap();
        let install = BOOTSTRAP.find("install -m 0755").unwrap();
        assert!(check < install);
        assert!(!BOOTSTRAP.contains("reboot"));
    }

    #[test]
    fn hostile_values_stay_data() {
        let mut plan = sample_plan();
        plan.target.profile = "x\n  - path: /etc/shadow\n#".into();
        plan.cube
            .extra_env
            .insert("K".into(), "v: [1, {\"a\": '2'}]\n- x".into());
        let r = user_data(&plan, &helper()).unwrap();
        // verify() inside user_data already compared every value; the
        // injected path must not have become a key.
        assert!(!r.user_data.contains("\n  - path: /etc/shadow"));
    }

    #[test]
    fn embedded_helper_is_gz_b64_and_decodes() {
        let bytes = b"\x7fELF fake helper".to_vec();
        let h = Helper {
            sha256: Sha256Digest::of(&bytes),
            source: HelperSource::Embedded(bytes.clone()),
        };
        let r = user_data(&sample_plan(), &h).unwrap();
        assert!(r.user_data.contains("encoding: gz+b64"));
        let doc: serde_json::Value = serde_yaml::from_str(&r.user_data).unwrap();
        let b64 = doc["write_files"][2]["content"].as_str().unwrap();
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
        assert_eq!(out, bytes);
        // Fixed header: magic, deflate, no flags, mtime 0, xfl 2 (best), OS 3.
        assert_eq!(
            &gzip(b"x").unwrap()[..10],
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]
        );
    }
}
