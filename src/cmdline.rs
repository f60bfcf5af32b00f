//! Kernel command-line merging. Pure: the builder previews it, the helper
//! applies it to GRUB drop-ins and BLS entries.
//!
//! The merge rule is upstream's fixed one (docs/pvm-kernel.md, "Boot
//! parameters"): for each configured key, drop the existing parameters with
//! that key once, then append every configured value in order. Multi-value keys survive
//! (`console=ttyS0,115200 console=tty0` both stay), and merging twice gives the
//! same line as merging once.

use std::fmt;
use std::str::FromStr;

/// The key of a parameter: the part before the first `=` (`console` for
/// `console=tty0`), or the whole token for a flag (`nopti`).
pub fn key(param: &str) -> &str {
    match param.find('=') {
        Some(i) => &param[..i],
        None => param,
    }
}

/// Split a command line into parameters the way the kernel does: on
/// whitespace, except inside double quotes (`foo="a b"` is one parameter).
pub fn split(line: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    params.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        params.push(current);
    }
    params
}

/// Merge `configured` into `existing` by the rule above.
pub fn merge<S: AsRef<str>>(existing: &[S], configured: &[S]) -> Vec<String> {
    let keys: Vec<&str> = configured.iter().map(|p| key(p.as_ref())).collect();
    let mut out: Vec<String> = existing
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| !keys.contains(&key(p)))
        .map(str::to_string)
        .collect();
    out.extend(configured.iter().map(|p| p.as_ref().to_string()));
    out
}

/// [`merge`] on command-line strings.
pub fn merge_line<S: AsRef<str>>(existing: &str, configured: &[S]) -> String {
    let configured: Vec<&str> = configured.iter().map(AsRef::as_ref).collect();
    merge(
        &split(existing)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &configured,
    )
    .join(" ")
}

/// Existing parameters that [`merge`] would drop: same key as a configured
/// one, but not itself configured (what `grubby --remove-args` needs).
pub fn displaced<S: AsRef<str>>(existing: &[S], configured: &[S]) -> Vec<String> {
    let keys: Vec<&str> = configured.iter().map(|p| key(p.as_ref())).collect();
    existing
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| keys.contains(&key(p)) && !configured.iter().any(|c| c.as_ref() == *p))
        .map(str::to_string)
        .collect()
}

/// Parameters of `required` missing from `line` (e.g. /proc/cmdline).
/// Empty means every required parameter is present.
pub fn missing<S: AsRef<str>>(line: &str, required: &[S]) -> Vec<String> {
    let present = split(line);
    required
        .iter()
        .map(AsRef::as_ref)
        .filter(|r| !present.iter().any(|p| p == r))
        .map(str::to_string)
        .collect()
}

/// Whether, for every configured key, the values in `line` are exactly the
/// configured ones in order (what a correct merge leaves behind).
pub fn has_merged<S: AsRef<str>>(line: &str, configured: &[S]) -> bool {
    let present = split(line);
    let mut keys: Vec<&str> = Vec::new();
    for p in configured {
        let k = key(p.as_ref());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.iter().all(|k| {
        let want: Vec<&str> = configured
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| key(p) == *k)
            .collect();
        let have: Vec<&str> = present
            .iter()
            .map(String::as_str)
            .filter(|p| key(p) == *k)
            .collect();
        want == have
    })
}

/// Why `param` cannot be a custom boot parameter, if it cannot. The GRUB
/// manual ("Shell-like scripting", lexical structure) names `{ } | & $ ; < >`
/// as metacharacters that end a word, quotes and `\` as quoting, and `#` at
/// the start of a word as a comment: in a `linux` line of grub.cfg or a BLS
/// `options` line any of them changes what the kernel gets or what GRUB runs.
/// Control characters would break the line itself.
pub fn unsafe_param(param: &str) -> Option<String> {
    if param.starts_with('#') {
        return Some(format!(
            "{param:?} starts with `#`, which makes the rest of the line a GRUB comment"
        ));
    }
    if let Some(c) = param
        .chars()
        .find(|c| matches!(c, '|' | '&' | '<' | '>' | ';' | '{' | '}' | '$'))
    {
        return Some(format!("{param:?} contains `{c}`, a GRUB metacharacter"));
    }
    if let Some(c) = param.chars().find(|c| matches!(c, '"' | '\'' | '\\' | '`')) {
        return Some(format!(
            "{param:?} contains `{c}`, which GRUB and the kernel quote differently"
        ));
    }
    non_printing(param)
}

/// Why `param` holds a character that is not printable ASCII, if it does:
/// control and bidi characters (U+202E) make what an operator reads differ
/// from what the kernel gets, and nothing on a kernel command line needs
/// more than ASCII.
fn non_printing(param: &str) -> Option<String> {
    let c = param.chars().find(|c| !matches!(c, '!'..='~'))?;
    let what = if c.is_control() {
        "a control character"
    } else if c.is_ascii() || c.is_whitespace() {
        "whitespace inside a parameter"
    } else {
        "a non-printing or non-ASCII character (bidi controls such as U+202E included)"
    };
    Some(format!(
        "{} contains U+{:04X}, {what}; parameters are printable ASCII",
        param.escape_default(),
        c as u32
    ))
}

/// The longest command line x86 passes on: `COMMAND_LINE_SIZE` is 2,048
/// bytes with the final NUL, and the kernel cuts what is longer silently.
pub const COMMAND_LINE_MAX: usize = 2047;

/// Whether the kernel will run with kernel page-table isolation, reading
/// `params` as it does (arch/x86/mm/pti.c in Linux): `nopti`, `pti=off`,
/// `pti=on` and `pti=auto` each set the mode and the last one wins (another
/// `pti=` value is rejected and changes nothing); the last valid
/// `mitigations=` (`off`, `auto`, `auto,nosmt`) of `off` turns it off
/// whatever the mode. Without either it is up to the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kpti {
    Off,
    On,
    /// `pti=auto` or nothing: on wherever the CPU has Meltdown.
    Auto,
}

pub fn kpti<S: AsRef<str>>(params: &[S]) -> Kpti {
    let mut mode = Kpti::Auto;
    let mut mitigations_off = false;
    for p in params.iter().map(AsRef::as_ref) {
        match p {
            "nopti" | "pti=off" => mode = Kpti::Off,
            "pti=on" => mode = Kpti::On,
            "pti=auto" => mode = Kpti::Auto,
            "mitigations=off" => mitigations_off = true,
            "mitigations=auto" | "mitigations=auto,nosmt" => mitigations_off = false,
            _ => {}
        }
    }
    if mitigations_off {
        Kpti::Off
    } else {
        mode
    }
}

/// Why the kernel will not leave KPTI off with `params`, if it will not.
pub fn kpti_problem<S: AsRef<str>>(params: &[S]) -> Option<String> {
    let last = params
        .iter()
        .map(AsRef::as_ref)
        .rfind(|p| *p == "nopti" || key(p) == "pti");
    match (kpti(params), last) {
        (Kpti::Off, _) => None,
        (Kpti::On, Some(p)) => Some(format!(
            "KPTI stays on: the last of the KPTI parameters is `{p}`, and the kernel honours the \
             last one; kvm_pvm does not support KPTI (use pti=off or nopti, last)"
        )),
        (_, Some(p)) => Some(format!(
            "KPTI is left to the CPU by `{p}`, the last of the KPTI parameters; kvm_pvm does \
             not support KPTI (use pti=off or nopti, last)"
        )),
        (_, None) => Some(
            "nothing turns KPTI off (pti=off or nopti): kvm_pvm does not support KPTI".to_string(),
        ),
    }
}

/// Why `line` is over x86's command-line limit, if it is.
pub fn over_limit(line: &str) -> Option<String> {
    (line.len() > COMMAND_LINE_MAX).then(|| {
        format!(
            "the kernel command line would be {} bytes, over x86's {COMMAND_LINE_MAX}-byte limit \
             by {} (the kernel cuts the rest silently): `{}…`",
            line.len(),
            line.len() - COMMAND_LINE_MAX,
            line.chars().take(80).collect::<String>().escape_default()
        )
    })
}

/// Why the kernel would not honour `configured` on `line`, the whole command
/// line it will be handed after the merge: a configured parameter that is
/// not printable ASCII, KPTI not off as the kernel reads it, or over the
/// length limit.
pub fn refusal<S: AsRef<str>>(line: &str, configured: &[S]) -> Option<String> {
    configured
        .iter()
        .find_map(|p| non_printing(p.as_ref()))
        .or_else(|| kpti_problem(&split(line)))
        .or_else(|| over_limit(line))
}

/// The `panic=` a trial boot runs with when the plan sets none, and whose
/// it is. Either way a panicking kernel reboots by itself. The journal
/// keeps it (fact `kernel.trial-panic`) as the sentence [`fmt::Display`]
/// writes, e.g. `panic=10 in force (the operator's, from the running
/// command line)`, so later steps check what was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrialPanic {
    pub secs: u64,
    pub whose: PanicSource,
}

/// Where a trial boot's `panic=` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSource {
    /// The operator's own `panic=N` (N > 0) on the running command line.
    Operator,
    /// The plan's `panic_seconds`.
    Default,
}

const OPERATORS: &str = " in force (the operator's, from the running command line)";
const DEFAULT: &str = " in force (cubeboot's default)";

impl TrialPanic {
    /// The plan's default, `panic=default_secs`.
    pub fn default_secs(default_secs: u32) -> Self {
        Self {
            secs: u64::from(default_secs),
            whose: PanicSource::Default,
        }
    }

    /// The operator's own `panic=N` with N > 0 on `line` (the running
    /// command line), the last one winning as in the kernel's parser;
    /// otherwise `panic=default_secs`.
    pub fn decide(line: &str, default_secs: u32) -> Self {
        let operator = split(line)
            .into_iter()
            .rfind(|p| key(p) == "panic")
            .and_then(|p| p.strip_prefix("panic=")?.parse::<i64>().ok());
        match operator.and_then(|n| u64::try_from(n).ok()) {
            Some(secs) if secs > 0 => Self {
                secs,
                whose: PanicSource::Operator,
            },
            _ => Self::default_secs(default_secs),
        }
    }

    /// The parameter itself, `panic=N`.
    pub fn param(&self) -> String {
        format!("panic={}", self.secs)
    }

    pub fn is_operators(&self) -> bool {
        self.whose == PanicSource::Operator
    }
}

impl fmt::Display for TrialPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.whose {
            PanicSource::Operator => OPERATORS,
            PanicSource::Default => DEFAULT,
        };
        write!(f, "{}{whose}", self.param())
    }
}

impl FromStr for TrialPanic {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("kernel.trial-panic: {s:?} is not `panic=N{DEFAULT}` or `panic=N{OPERATORS}`")
        };
        let (param, whose) = if let Some(p) = s.strip_suffix(OPERATORS) {
            (p, PanicSource::Operator)
        } else if let Some(p) = s.strip_suffix(DEFAULT) {
            (p, PanicSource::Default)
        } else {
            return Err(bad());
        };
        let secs = param
            .strip_prefix("panic=")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(bad)?;
        Ok(Self { secs, whose })
    }
}

serde_as_text!(TrialPanic);

/// Human warnings for parameters with side effects a user should know about
/// before the reboot (docs/pvm-kernel.md, "Boot parameters").
pub fn warnings<S: AsRef<str>>(params: &[S]) -> Vec<String> {
    let mut out = Vec::new();
    for p in params.iter().map(AsRef::as_ref) {
        let why = match p {
            "net.ifnames=0" | "biosdevname=0" => Some(
                "renames network interfaces to eth0… on the next boot; netplan/NetworkManager \
                 profiles matched by interface name may stop working",
            ),
            "ipv6.disable=1" => Some("disables IPv6 on the host"),
            "module.sig_enforce=1" => Some("refuses unsigned (e.g. DKMS) kernel modules"),
            _ => None,
        };
        if let Some(why) = why {
            out.push(format!("boot parameter {p} {why}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::boot_params;

    fn v(s: &str) -> Vec<String> {
        split(s)
    }

    #[test]
    fn merge_table() {
        // (existing, configured, expected)
        let cases: &[(&str, &str, &str)] = &[
            ("", "nopti pti=off", "nopti pti=off"),
            ("ro quiet", "nopti pti=off", "ro quiet nopti pti=off"),
            // Existing value of a configured key is replaced, not duplicated.
            ("ro pti=on quiet", "nopti pti=off", "ro quiet nopti pti=off"),
            // Multi-value keys: both configured consoles survive, old ones go.
            (
                "console=tty1 console=ttyS0 ro",
                "console=ttyS0,115200 console=tty0",
                "ro console=ttyS0,115200 console=tty0",
            ),
            // Alibaba ECS Ubuntu 24.04 style line (upstream: deploy/pvm/grub/fixtures/README.md).
            (
                "net.ifnames=0 console=tty0 console=ttyS0,115200n8 noibrs nvme_core.io_timeout=4294967295",
                "console=ttyS0,115200 console=tty0 pti=off",
                "net.ifnames=0 noibrs nvme_core.io_timeout=4294967295 console=ttyS0,115200 console=tty0 pti=off",
            ),
            // A flag configured twice stays twice (configured order is the user's).
            ("quiet", "quiet", "quiet"),
            // Quoted values are one parameter.
            (
                r#"dyndbg="file x.c +p" ro"#,
                "ro",
                r#"dyndbg="file x.c +p" ro"#,
            ),
        ];
        for (existing, configured, expected) in cases {
            let got = merge_line(existing, &v(configured));
            assert_eq!(&got, expected, "merging {configured:?} into {existing:?}");
            // Idempotent.
            assert_eq!(
                merge_line(&got, &v(configured)),
                got,
                "second merge of {configured:?}"
            );
            assert!(has_merged(&got, &v(configured)));
        }
    }

    #[test]
    fn full_tencent_set_merges_idempotently_over_a_cloud_line() {
        let tencent: Vec<String> = boot_params::TENCENT.iter().map(|s| s.to_string()).collect();
        let once = merge_line(
            "BOOT_IMAGE=/vmlinuz ro console=tty1 console=ttyS0 quiet",
            &tencent,
        );
        assert_eq!(merge_line(&once, &tencent), once);
        assert!(once.starts_with(
            "BOOT_IMAGE=/vmlinuz ro quiet elevator=noop console=ttyS0,115200 console=tty0 "
        ));
        assert_eq!(once.matches("console=").count(), 2);
        assert!(missing(&once, &tencent).is_empty());
    }

    /// docs/pvm-kernel.md's table names every upstream parameter once, and
    /// its "default" column is what the `pvm` preset holds.
    #[test]
    fn the_docs_table_matches_the_default_set() {
        let doc = include_str!("../docs/pvm-kernel.md");
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .skip_while(|l| !l.starts_with("| Parameter | What it does |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert!(!rows.is_empty(), "no parameter table in docs/pvm-kernel.md");
        let mut keys: Vec<&str> = boot_params::TENCENT.iter().map(|p| key(p)).collect();
        keys.dedup();
        for k in keys {
            let row = rows
                .iter()
                .find(|r| r[0].contains(&format!("`{k}=")) || r[0].contains(&format!("`{k}`")))
                .unwrap_or_else(|| panic!("docs/pvm-kernel.md has no row for {k}"));
            let in_default = boot_params::pvm().iter().any(|p| key(p) == k);
            assert_eq!(
                row[3].starts_with("yes"),
                in_default,
                "{k}: the table says {:?}",
                row[3]
            );
        }
    }

    #[test]
    fn kpti_is_read_as_the_kernel_reads_it() {
        for (line, want) in [
            ("", Kpti::Auto),
            ("nopti", Kpti::Off),
            ("pti=off", Kpti::Off),
            // The last of nopti/pti= wins.
            ("nopti pti=on", Kpti::On),
            ("pti=on nopti", Kpti::Off),
            ("pti=off pti=auto", Kpti::Auto),
            // An unknown pti= value is rejected and changes nothing.
            ("nopti pti=maybe", Kpti::Off),
            // mitigations=off turns KPTI off whatever pti= says; the last
            // valid mitigations= counts; `on` is not a value 6.6 accepts.
            ("pti=on mitigations=off", Kpti::Off),
            ("mitigations=off mitigations=auto pti=on", Kpti::On),
            ("mitigations=off mitigations=on pti=on", Kpti::Off),
            ("nopti mitigations=auto,nosmt", Kpti::Off),
        ] {
            assert_eq!(kpti(&v(line)), want, "{line:?}");
        }
    }

    #[test]
    fn refusal_names_what_the_kernel_would_not_honour() {
        let ok = "BOOT_IMAGE=/boot/vmlinuz-6.6 root=/dev/vda1 ro nopti pti=off panic=30";
        assert_eq!(refusal(ok, &v("nopti pti=off")), None);
        // The node's own pti=on after ours (GRUB_CMDLINE_LINUX_DEFAULT).
        assert!(refusal("ro nopti pti=on", &v("nopti"))
            .unwrap()
            .starts_with("KPTI stays on: the last of the KPTI parameters is `pti=on`"));
        let long = format!("{ok} x={}", "a".repeat(2047 - ok.len() - 3));
        assert_eq!(long.len(), 2047);
        assert_eq!(refusal(&long, &v("nopti")), None);
        let over = format!("{long}b");
        assert!(refusal(&over, &v("nopti")).unwrap().starts_with(
            "the kernel command line would be 2048 bytes, over x86's 2047-byte limit by 1"
        ));
        assert_eq!(
            refusal(ok, &["nopti", "a\u{202e}b"]).unwrap(),
            "a\\u{202e}b contains U+202E, a non-printing or non-ASCII character (bidi controls \
             such as U+202E included); parameters are printable ASCII"
        );
        assert!(unsafe_param("a\tb")
            .unwrap()
            .contains("U+0009, a control character"));
        assert!(unsafe_param("a\u{a0}b").unwrap().contains("U+00A0"));
    }

    #[test]
    fn displaced_lists_only_replaced_values() {
        assert_eq!(
            displaced(
                &v("ro console=tty1 pti=off quiet"),
                &v("console=tty0 pti=off")
            ),
            vec!["console=tty1"]
        );
    }

    #[test]
    fn missing_and_has_merged_detect_incomplete_lines() {
        let want = v("nopti pti=off panic=30");
        assert_eq!(missing("ro nopti panic=30", &want), vec!["pti=off"]);
        assert!(missing("BOOT_IMAGE=/x ro nopti pti=off panic=30\n", &want).is_empty());
        // A stray second value of a configured key means the merge did not happen.
        assert!(!has_merged("pti=on nopti pti=off", &v("nopti pti=off")));
        assert!(!has_merged(
            "console=tty0 console=ttyS0",
            &v("console=ttyS0 console=tty0")
        ));
    }

    #[test]
    fn grub_metacharacters_are_named_with_their_token() {
        for (param, why) in [
            ("a|b", "\"a|b\" contains `|`, a GRUB metacharacter"),
            (
                "x=1&&reboot",
                "\"x=1&&reboot\" contains `&`, a GRUB metacharacter",
            ),
            (
                "console=<tty>",
                "\"console=<tty>\" contains `<`, a GRUB metacharacter",
            ),
            ("quiet;", "\"quiet;\" contains `;`, a GRUB metacharacter"),
            ("}", "\"}\" contains `}`, a GRUB metacharacter"),
            ("{", "\"{\" contains `{`, a GRUB metacharacter"),
            ("x=$root", "\"x=$root\" contains `$`, a GRUB metacharacter"),
            (
                "#nopti",
                "\"#nopti\" starts with `#`, which makes the rest of the line a GRUB comment",
            ),
            (
                "dyndbg=\"x\"",
                "\"dyndbg=\\\"x\\\"\" contains `\"`, which GRUB and the kernel quote differently",
            ),
            (
                "a='b'",
                "\"a='b'\" contains `'`, which GRUB and the kernel quote differently",
            ),
        ] {
            assert_eq!(unsafe_param(param).as_deref(), Some(why), "{param}");
        }
        // `#` inside a word is not a comment; ordinary parameters pass.
        for ok in [
            "pti=off",
            "console=ttyS0,115200n8",
            "a#b",
            "mitigations=off",
            "x=-1",
        ] {
            assert_eq!(unsafe_param(ok), None, "{ok}");
        }
    }

    #[test]
    fn trial_panic_keeps_the_operators_positive_value() {
        let trial_panic = |line: &str, secs: u32| {
            let p = TrialPanic::decide(line, secs);
            (p.param(), p.is_operators())
        };
        assert_eq!(trial_panic("ro quiet", 30), ("panic=30".into(), false));
        assert_eq!(
            trial_panic("ro panic=10 quiet", 30),
            ("panic=10".into(), true)
        );
        // The kernel's parser: the last panic= wins.
        assert_eq!(
            trial_panic("panic=5 panic=120", 30),
            ("panic=120".into(), true)
        );
        // 0 waits forever; a negative value reboots at once, before anyone
        // could read the console: only N > 0 is kept.
        assert_eq!(trial_panic("panic=0", 30), ("panic=30".into(), false));
        assert_eq!(trial_panic("panic=-1", 30), ("panic=30".into(), false));
        assert_eq!(trial_panic("panic=soon", 30), ("panic=30".into(), false));
    }

    /// The journal's `kernel.trial-panic` reads back as the value written,
    /// in the sentence earlier helpers wrote; anything else names the key.
    #[test]
    fn trial_panic_round_trips_through_its_sentence() {
        for (text, want) in [
            (
                "\"panic=10 in force (the operator's, from the running command line)\"",
                TrialPanic {
                    secs: 10,
                    whose: PanicSource::Operator,
                },
            ),
            (
                "\"panic=30 in force (cubeboot's default)\"",
                TrialPanic::default_secs(30),
            ),
        ] {
            let read: TrialPanic = serde_json::from_str(text).unwrap();
            assert_eq!(read, want);
            assert_eq!(serde_json::to_string(&read).unwrap(), text);
        }
        let err = serde_json::from_str::<TrialPanic>("\"panic=10 because\"").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kernel.trial-panic: \"panic=10 because\" is not"),
            "{err}"
        );
        assert!("panic=x in force (cubeboot's default)"
            .parse::<TrialPanic>()
            .is_err());
    }

    #[test]
    fn warnings_name_nic_renames_and_ipv6() {
        let w = warnings(&v("nopti net.ifnames=0 ipv6.disable=1 biosdevname=0"));
        assert_eq!(w.len(), 3);
        assert!(w[0].starts_with("boot parameter net.ifnames=0 renames network interfaces"));
        assert_eq!(
            w[1],
            "boot parameter ipv6.disable=1 disables IPv6 on the host"
        );
        assert!(warnings(&v("nopti pti=off")).is_empty());
    }
}
