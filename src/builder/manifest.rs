//! manifest.json and SHA256SUMS: what a profile's directory holds, by
//! name, size and SHA-256, and how the payload was built.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::options::BuildOptions;
use super::profile::Profile;
use crate::digest::Sha256Digest;

/// One profile's output files, by name, for OUTPUT/`profile` (`debian-12-aarch64` on aarch64).
#[derive(Debug, Clone)]
pub struct Payload {
    pub profile: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Size as the chosen cloud counts it.
    pub budget_size: u64,
    /// The plan carries a secret (the webhook secret, the ops-agent token):
    /// files holding it are written 0600.
    pub secret: bool,
}

/// Add manifest.json and SHA256SUMS to a profile's files.
pub(super) fn finish_payload(
    profile: &Profile,
    plan: &crate::plan::Plan,
    options: &BuildOptions,
    lock_sha: Sha256Digest,
    mut files: BTreeMap<String, Vec<u8>>,
    budget_size: Option<u64>,
) -> Result<Payload> {
    let manifest = Manifest {
        generator: crate::generator(),
        profile: profile.name.clone(),
        arch: plan.target.arch,
        role: plan.cube.role.as_str().to_string(),
        boot_params: options.boot_params_label.clone(),
        helper: if files.contains_key("overlay.tar.xz") {
            "in-overlay"
        } else if options.embed_helper {
            "embedded"
        } else {
            "url"
        }
        .to_string(),
        first_url: plan.assets.bundle.urls.first().cloned().unwrap_or_default(),
        lock_sha256: lock_sha.to_hex(),
        cloud: budget_size.map(|size| ManifestCloud {
            name: options.cloud.name.to_string(),
            measured_on: options.cloud.measure.to_string(),
            limit: options.cloud.limit,
            size,
        }),
        files: files
            .iter()
            .map(|(name, bytes)| {
                (
                    name.clone(),
                    ManifestFile {
                        sha256: Sha256Digest::of(bytes).to_hex(),
                        size: bytes.len() as u64,
                    },
                )
            })
            .collect(),
    };
    let mut manifest_json = serde_json::to_string_pretty(&manifest)?;
    manifest_json.push('\n');
    files.insert("manifest.json".to_string(), manifest_json.into_bytes());
    // SHA256SUMS last, sorted by name (BTreeMap order), in sha256sum format.
    let sums: String = files
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", Sha256Digest::of(bytes)))
        .collect();
    files.insert("SHA256SUMS".to_string(), sums.into_bytes());
    Ok(Payload {
        profile: profile.out_dir(plan.target.arch),
        files,
        budget_size: budget_size.unwrap_or(0),
        secret: plan.report.webhook_secret.is_some() || plan.cube.ops_token.is_some(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Manifest {
    generator: String,
    profile: String,
    #[serde(skip_serializing_if = "crate::arch::Arch::is_x86_64")]
    arch: crate::arch::Arch,
    role: String,
    boot_params: String,
    helper: String,
    first_url: String,
    lock_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud: Option<ManifestCloud>,
    files: BTreeMap<String, ManifestFile>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ManifestCloud {
    name: String,
    measured_on: String,
    limit: Option<u64>,
    size: u64,
}

#[derive(Serialize)]
struct ManifestFile {
    sha256: String,
    size: u64,
}
