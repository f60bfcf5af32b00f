//! The journal's facts: what steps record for later steps, each typed,
//! under the keys version 1 used. A value outside its type is refused
//! naming its key.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize};

use crate::cmdline::TrialPanic;
use crate::net::Ipv4Net;

/// Facts recorded by steps for later steps, under the keys version 1 used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// Which /dev/kvm the Cube stage installs for.
    #[serde(rename = "kvm.mode", default, skip_serializing_if = "Option::is_none")]
    pub kvm_mode: Option<KvmInUse>,
    /// The kernel release that was running/default before the switch.
    #[serde(
        rename = "kernel.old",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub old_kernel: Option<String>,
    /// The GRUB entry id (DEB) or kernel path (BLS) of the old default.
    #[serde(
        rename = "kernel.old-default-entry",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub old_default_entry: Option<String>,
    /// The entry id or path chosen for the PVM kernel.
    #[serde(
        rename = "kernel.pvm-entry",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pvm_entry: Option<String>,
    /// Why grubenv could not be written and a direct default was used.
    #[serde(
        rename = "kernel.direct-default",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_default: Option<String>,
    /// The PVM kernel release found already running with its parameters.
    #[serde(
        rename = "kernel.already-running",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub already_running: Option<String>,
    /// The `panic=` the trial boot was armed with and whose it is, e.g.
    /// `panic=10 in force (the operator's, from the running command line)`.
    #[serde(
        rename = "kernel.trial-panic",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trial_panic: Option<TrialPanic>,
    /// What the reboot step loaded with kexec for the trial boot (kernel,
    /// initramfs, command line); absent: the trial boot goes through the
    /// firmware (src/firstboot/kernel/kexec.rs).
    #[serde(
        rename = "kernel.trial-kexec",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trial_kexec: Option<String>,
    /// The BLS entry's options before the helper changed them.
    #[serde(
        rename = "kernel.bls-options-before",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bls_options_before: Option<String>,
    /// Our GRUB drop-in before this run first changed it ("" when there
    /// was none): what a rollback restores the command line from.
    #[serde(
        rename = "kernel.grub-dropin-before",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub grub_dropin_before: Option<String>,
    /// Node IP the Cube stage installed with.
    #[serde(
        rename = "cube.node-ip",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "node_ip"
    )]
    pub node_ip: Option<Ipv4Addr>,
    /// CUBE_SANDBOX_NETWORK_CIDR chosen when the default conflicted.
    #[serde(
        rename = "cube.network-cidr",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "network_cidr"
    )]
    pub network_cidr: Option<Ipv4Net>,
    /// From cube-prereqs: why dnsmasq was installed, so cube-install asks
    /// for its standalone mode.
    #[serde(
        rename = "cube.dnsmasq-mode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dnsmasq_mode: Option<DnsmasqMode>,
    /// The installer's own quickcheck verdict.
    #[serde(
        rename = "cube.installer-quickcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub installer_quickcheck: Option<Quickcheck>,
    /// The bundle `cube-firstboot upgrade` installed last, and its digest.
    #[serde(
        rename = "cube.bundle-url",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bundle_url: Option<String>,
    #[serde(
        rename = "cube.bundle-sha256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bundle_sha256: Option<String>,
    /// Set by `cube-firstboot upgrade --to`: the plan (SHA-256) this node
    /// ran before; cube-install then runs the installer in upgrade mode
    /// (docs/upgrades.md).
    #[serde(
        rename = "upgrade.from-plan",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub upgrade_from: Option<String>,
    /// Diagnostics tarball written on failure.
    #[serde(
        rename = "diagnostics",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub diagnostics: Option<String>,
    /// The one-line final message of a finished run (shown again later).
    #[serde(
        rename = "report.final-message",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub final_message: Option<String>,
}

impl Facts {
    /// `key=value` lines, in key order (for the diagnostics tarball).
    pub fn lines(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = String::new();
        if let Some(map) = value.as_object() {
            for (k, v) in map {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmInUse {
    /// The PVM kernel provides /dev/kvm (nested in a cloud VM).
    Pvm,
    /// The machine's own KVM works; no PVM kernel.
    Native,
}

impl KvmInUse {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pvm => "pvm",
            Self::Native => "native",
        }
    }
}

fn node_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    parsed_fact(d, "cube.node-ip")
}

fn network_cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    parsed_fact(d, "cube.network-cidr")
}

/// A fact written as text, parsed; a bad value names the fact's key.
fn parsed_fact<'de, D, T>(d: D, key: &str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    Option::<String>::deserialize(d)?
        .map(|s| {
            s.parse()
                .map_err(|e| de::Error::custom(format!("{key}: {s:?}: {e}")))
        })
        .transpose()
}

/// Why cube-prereqs installed dnsmasq (fact `cube.dnsmasq-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum DnsmasqMode {
    /// The host has no resolvectl or NetworkManager: the installer's DNS
    /// setup needs dnsmasq's standalone mode.
    Standalone,
    /// A NetworkManager host, where the installer's default NetworkManager
    /// mode has failed in the field (CubeSandbox #519): standalone where
    /// the bundle supports it.
    PreferStandalone,
}

impl DnsmasqMode {
    pub const ALL: [Self; 2] = [Self::Standalone, Self::PreferStandalone];

    /// The fact's value in the journal.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::PreferStandalone => "prefer-standalone",
        }
    }
}

impl TryFrom<String> for DnsmasqMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of("cube.dnsmasq-mode", &s, &Self::ALL, |m| m.name())
    }
}

/// The one-click installer's own verdict, from its quickcheck's last line
/// (fact `cube.installer-quickcheck`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum Quickcheck {
    /// It printed `[quickcheck] OK`.
    #[serde(rename = "ok")]
    Ok,
    /// It ran and did not print OK.
    #[serde(rename = "failed")]
    Failed,
    /// The output has no quickcheck at all.
    #[serde(rename = "not run")]
    NotRun,
}

impl Quickcheck {
    pub const ALL: [Self; 3] = [Self::Ok, Self::Failed, Self::NotRun];

    /// The fact's value in the journal.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::NotRun => "not run",
        }
    }
}

impl TryFrom<String> for Quickcheck {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        one_of("cube.installer-quickcheck", &s, &Self::ALL, |q| q.name())
    }
}

/// The value of `all` named `text`, or an error naming the fact's key.
fn one_of<T: Copy>(
    key: &str,
    text: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|v| format!("{:?}", name(*v))).collect();
            format!("{key}: {text:?} is not one of {}", names.join(", "))
        })
}
