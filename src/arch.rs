//! The machine architectures cubeboot builds for (docs/arm64.md): one payload
//! per architecture. The builder's `--arch`, the profiles' `arch:` lists,
//! the lock's helper pins and the plan's `target.arch` all use this type,
//! and each name the outside world uses for it is here once: `uname -m`,
//! upstream's bundle suffix, the ELF `e_machine` of a helper binary.

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// PVM hosts, and x86_64 hosts with native KVM (`kvm: auto`)
    #[default]
    #[value(name = "x86_64")]
    X86_64,
    /// Native KVM only: PVM exists for x86_64 alone (docs/pvm-kernel.md)
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub const ALL: [Self; 2] = [Self::X86_64, Self::Aarch64];

    /// What `uname -m` prints on such a machine (and what the flags and
    /// profiles spell).
    pub fn uname(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// Upstream's name in bundle file names (`cube-sandbox-one-click-*-arm64.tar.gz`).
    pub fn bundle(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    pub fn is_x86_64(&self) -> bool {
        *self == Self::X86_64
    }

    /// The architecture of an ELF executable from its first 20 bytes: a
    /// 64-bit little-endian ELF whose `e_machine` is EM_X86_64 (62) or
    /// EM_AARCH64 (183). Anything else is an error saying what it is.
    pub fn of_elf(header: &[u8]) -> Result<Self, String> {
        if header.len() < 20 || header[..4] != *b"\x7fELF" {
            return Err("not an ELF executable".into());
        }
        if header[4] != 2 || header[5] != 1 {
            return Err(format!(
                "an ELF file of class {} and data encoding {}, not 64-bit little-endian",
                header[4], header[5]
            ));
        }
        match u16::from_le_bytes([header[18], header[19]]) {
            62 => Ok(Self::X86_64),
            183 => Ok(Self::Aarch64),
            other => Err(format!(
                "an ELF executable for machine {other}, neither x86_64 (62) nor aarch64 (183)"
            )),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.uname())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.uname() == s)
            .ok_or_else(|| format!("unknown architecture {s:?}; expected x86_64 or aarch64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, machine: u16) -> Vec<u8> {
        let mut h = b"\x7fELF".to_vec();
        h.extend([class, 1, 1, 0]);
        h.extend([0; 10]);
        h.extend(machine.to_le_bytes());
        h
    }

    #[test]
    fn elf_machine_names_the_arch() {
        assert_eq!(Arch::of_elf(&header(2, 62)), Ok(Arch::X86_64));
        assert_eq!(Arch::of_elf(&header(2, 183)), Ok(Arch::Aarch64));
        assert_eq!(
            Arch::of_elf(&header(2, 40)).unwrap_err(),
            "an ELF executable for machine 40, neither x86_64 (62) nor aarch64 (183)"
        );
        assert_eq!(
            Arch::of_elf(&header(1, 62)).unwrap_err(),
            "an ELF file of class 1 and data encoding 1, not 64-bit little-endian"
        );
        assert_eq!(
            Arch::of_elf(b"#!/bin/sh\n").unwrap_err(),
            "not an ELF executable"
        );
    }

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.uname().parse::<Arch>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        assert_eq!(Arch::Aarch64.bundle(), "arm64");
        assert!("arm64".parse::<Arch>().is_err());
    }
}
