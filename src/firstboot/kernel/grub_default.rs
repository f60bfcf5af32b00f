//! `/etc/default/grub` and its drop-ins, evaluated the way update-grub does:
//! the base file, then `/etc/default/grub.d/*.cfg` in name order, each
//! sourced as shell assignments, later ones overriding (and able to extend,
//! `GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX x"`) earlier ones. Ubuntu cloud
//! images keep their console settings in `50-cloudimg-settings.cfg`, so
//! reading only the base file would drop them.
//!
//! Pure: a small evaluator for the assignment subset these files use. A
//! variable this stage depends on that is set by something it cannot
//! evaluate (command substitution, a conditional) is an error naming the file
//! and line, never a guess.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// The variables whose values the kernel stage needs exactly.
pub const RELEVANT: &[&str] = &[
    "GRUB_CMDLINE_LINUX",
    "GRUB_CMDLINE_LINUX_DEFAULT",
    "GRUB_DEFAULT",
    "GRUB_DISABLE_SUBMENU",
];

/// The drop-in this stage writes (after the distro's and cloud's drop-ins).
pub const DROPIN_NAME: &str = "99-cubeboot-pvm.cfg";

/// The evaluated settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubDefaults {
    vars: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Known(String),
    /// Set by something the evaluator does not run; where it was set.
    Unknown(String),
}

impl GrubDefaults {
    /// Value of a variable (empty when unset, as in the shell).
    pub fn get(&self, name: &str) -> &str {
        match self.vars.get(name) {
            Some(Value::Known(v)) => v,
            _ => "",
        }
    }

    pub fn is_set(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// `GRUB_DEFAULT`, `0` when unset (grub-mkconfig's default).
    pub fn grub_default(&self) -> &str {
        if self.is_set("GRUB_DEFAULT") {
            self.get("GRUB_DEFAULT")
        } else {
            "0"
        }
    }
}

/// Evaluate `files` (name, content) in order.
pub fn evaluate(files: &[(String, String)]) -> Result<GrubDefaults> {
    let mut d = GrubDefaults::default();
    for (name, text) in files {
        // Compound statements (if/case/loops/functions) run conditionally: an
        // assignment inside one cannot be evaluated without a shell.
        let mut depth = 0usize;
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{name}:{}", i + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line
                .split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or("");
            match first {
                "if" | "case" | "for" | "while" | "until" | "{" => depth += 1,
                "fi" | "esac" | "done" | "}" => depth = depth.saturating_sub(1),
                _ if line.ends_with('{') => depth += 1,
                _ => {}
            }
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            if depth > 0 {
                if let Some((var, _)) = split_assignment(line) {
                    if RELEVANT.contains(&var) {
                        bail!(
                            "{at}: {var} is set inside a conditional or function this helper \
                             cannot evaluate (only plain assignments are supported)"
                        );
                    }
                    d.vars.insert(var.to_string(), Value::Unknown(at));
                    continue;
                }
            }
            match split_assignment(line) {
                Some((var, rest)) => match parse_value(rest, &d) {
                    Ok(Some(v)) => {
                        d.vars.insert(var.to_string(), Value::Known(v));
                    }
                    Ok(None) | Err(_) if !RELEVANT.contains(&var) => {
                        d.vars.insert(var.to_string(), Value::Unknown(at));
                    }
                    Ok(None) => bail!(
                        "{at}: cannot evaluate the value of {var} (command substitution or \
                         parameter expansion); set it to a plain string"
                    ),
                    Err(e) => bail!("{at}: {var}: {e}"),
                },
                None => {
                    if let Some(var) = RELEVANT.iter().find(|v| line.contains(*v)) {
                        bail!(
                            "{at}: {var} is used in a shell statement this helper cannot \
                             evaluate (only plain assignments are supported)"
                        );
                    }
                }
            }
        }
    }
    Ok(d)
}

/// `NAME=rest` when `line` starts with a shell assignment.
fn split_assignment(line: &str) -> Option<(&str, &str)> {
    let eq = line.find('=')?;
    let name = &line[..eq];
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then(|| (name, &line[eq + 1..]))
}

/// One shell word with `$NAME`/`${NAME}` expansion. `Ok(None)` for constructs
/// not evaluated here (backticks, `$(…)`, `${x:-y}`).
fn parse_value(rest: &str, d: &GrubDefaults) -> Result<Option<String>> {
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    let mut unknown = false;
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ';' => break,
            '\'' => {
                chars.next();
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == '\'' {
                        closed = true;
                        break;
                    }
                    out.push(d);
                }
                if !closed {
                    bail!("unterminated single quote");
                }
            }
            '"' => {
                chars.next();
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.peek() {
                            Some(&e @ ('"' | '\\' | '$' | '`')) => {
                                out.push(e);
                                chars.next();
                            }
                            Some('\n') => {
                                chars.next();
                            }
                            _ => out.push('\\'),
                        },
                        '$' => unknown |= !expand(&mut chars, d, &mut out),
                        '`' => unknown = true,
                        q => out.push(q),
                    }
                }
                if !closed {
                    bail!("unterminated double quote");
                }
            }
            '\\' => {
                chars.next();
                if let Some(e) = chars.next() {
                    out.push(e);
                }
            }
            '$' => {
                chars.next();
                unknown |= !expand(&mut chars, d, &mut out);
            }
            '`' => {
                chars.next();
                unknown = true;
            }
            c => {
                out.push(c);
                chars.next();
            }
        }
    }
    // Whatever follows must be a comment or nothing: `A=1 B=2` or `A=1; cmd`
    // would need a shell.
    let tail: String = chars.collect();
    let tail = tail.trim();
    if !(tail.is_empty() || tail.starts_with('#') || tail == ";") {
        return Ok(None);
    }
    Ok((!unknown).then_some(out))
}

/// Expand after a `$`; false when the expansion is not a plain variable.
fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    d: &GrubDefaults,
    out: &mut String,
) -> bool {
    let braced = chars.peek() == Some(&'{');
    if braced {
        chars.next();
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if braced {
        if chars.peek() != Some(&'}') {
            // `${x:-y}` and friends.
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
            return false;
        }
        chars.next();
    }
    if name.is_empty() {
        if braced {
            return false;
        }
        // A lone `$` (or `$(`): `$(` is command substitution.
        if chars.peek() == Some(&'(') {
            return false;
        }
        out.push('$');
        return true;
    }
    match d.vars.get(&name) {
        Some(Value::Known(v)) => {
            out.push_str(v);
            true
        }
        Some(Value::Unknown(_)) => false,
        None => true,
    }
}

/// Quote a value for a double-quoted shell string.
pub fn shell_double_quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The drop-in that makes update-grub produce the merged command line.
/// `grub_default`: `saved` for trial boots, an entry id path when grubenv
/// cannot be written (direct default), or `None` to leave it alone.
pub fn render_dropin(
    cmdline_linux: &str,
    cmdline_default: &str,
    grub_default: Option<&str>,
) -> String {
    let mut s = String::from(
        "# Generated by cubeboot (cube-firstboot); do not edit.\n\
         # PVM host kernel boot parameters, merged into what /etc/default/grub and the\n\
         # drop-ins before this one set. Undo: remove this file and run update-grub.\n",
    );
    s.push_str(&format!(
        "GRUB_CMDLINE_LINUX={}\n",
        shell_double_quote(cmdline_linux)
    ));
    s.push_str(&format!(
        "GRUB_CMDLINE_LINUX_DEFAULT={}\n",
        shell_double_quote(cmdline_default)
    ));
    if let Some(def) = grub_default {
        s.push_str(&format!("GRUB_DEFAULT={}\n", shell_double_quote(def)));
    }
    s
}

/// `text` with `var` set to `value`: the last active assignment is replaced
/// (later ones win in the shell), or one is appended.
pub fn set_assignment(text: &str, var: &str, value: &str) -> String {
    let prefix = format!("{var}=");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let new_line = format!("{var}={}", shell_double_quote(value));
    let last = lines.iter().rposition(|l| {
        let t = l.trim_start();
        t.strip_prefix("export ").unwrap_or(t).starts_with(&prefix)
    });
    match last {
        Some(i) => lines[i] = new_line,
        None => lines.push(new_line),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn later_dropins_override_and_extend() {
        let d = evaluate(&files(&[
            (
                "/etc/default/grub",
                "GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\nGRUB_CMDLINE_LINUX=\"\"\n",
            ),
            (
                "/etc/default/grub.d/50-cloudimg-settings.cfg",
                "# Set the default commandline\nGRUB_CMDLINE_LINUX_DEFAULT=\"console=tty1 console=ttyS0\"\nGRUB_TERMINAL=console\n",
            ),
            (
                "/etc/default/grub.d/60-x.cfg",
                "export GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX nvme_core.io_timeout=4294967295\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"${GRUB_CMDLINE_LINUX_DEFAULT} earlyprintk=ttyS0\" # trailing\n",
            ),
        ]))
        .unwrap();
        assert_eq!(
            d.get("GRUB_CMDLINE_LINUX"),
            " nvme_core.io_timeout=4294967295"
        );
        assert_eq!(
            d.get("GRUB_CMDLINE_LINUX_DEFAULT"),
            "console=tty1 console=ttyS0 earlyprintk=ttyS0"
        );
        assert_eq!(d.grub_default(), "0");
        assert_eq!(d.get("GRUB_DISABLE_SUBMENU"), "");
    }

    #[test]
    fn quoting_forms() {
        let d = evaluate(&files(&[(
            "f",
            "GRUB_DEFAULT='gnulinux-advanced-U>gnulinux-6.1-advanced-U'\nGRUB_CMDLINE_LINUX=a\\ b\"c d\"'$e'\nGRUB_DISABLE_SUBMENU=y\n",
        )]))
        .unwrap();
        assert_eq!(
            d.grub_default(),
            "gnulinux-advanced-U>gnulinux-6.1-advanced-U"
        );
        assert_eq!(d.get("GRUB_CMDLINE_LINUX"), "a bc d$e");
        assert_eq!(d.get("GRUB_DISABLE_SUBMENU"), "y");
    }

    #[test]
    fn unevaluable_relevant_values_are_errors_with_file_and_line() {
        let err = evaluate(&files(&[(
            "/etc/default/grub.d/10-x.cfg",
            "\nGRUB_CMDLINE_LINUX=\"$(cat /proc/cmdline)\"\n",
        )]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/default/grub.d/10-x.cfg:2: cannot evaluate the value of GRUB_CMDLINE_LINUX \
             (command substitution or parameter expansion); set it to a plain string"
        );
        let err = evaluate(&files(&[(
            "/etc/default/grub",
            "if [ -e /x ]; then\n  GRUB_CMDLINE_LINUX=a\nfi\n",
        )]))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/default/grub:2: GRUB_CMDLINE_LINUX is set inside a conditional"),
            "{err}"
        );
        let err = evaluate(&files(&[("h", "[ -e /x ] && GRUB_CMDLINE_LINUX=a\n")])).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("h:1: GRUB_CMDLINE_LINUX is used in a shell statement"));
        // After the compound statement ends, plain assignments count again.
        let d = evaluate(&files(&[(
            "i",
            "if true; then\n  X=1\nfi\nGRUB_DEFAULT=saved\n",
        )]))
        .unwrap();
        assert_eq!(d.grub_default(), "saved");
        let err = evaluate(&files(&[("g", "GRUB_CMDLINE_LINUX=\"open\n")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "g:1: GRUB_CMDLINE_LINUX: unterminated double quote"
        );
        // An unknown value flowing into a relevant one is caught too.
        let err =
            evaluate(&files(&[("g", "X=`foo`\nGRUB_CMDLINE_LINUX=\"$X ro\"\n")])).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("g:2: cannot evaluate the value of GRUB_CMDLINE_LINUX"));
    }

    #[test]
    fn set_assignment_replaces_the_last_active_line() {
        let text = "GRUB_DEFAULT=0\n#GRUB_DEFAULT=1\nGRUB_TIMEOUT=5\nGRUB_DEFAULT=2";
        assert_eq!(
            set_assignment(text, "GRUB_DEFAULT", "saved"),
            "GRUB_DEFAULT=0\n#GRUB_DEFAULT=1\nGRUB_TIMEOUT=5\nGRUB_DEFAULT=\"saved\"\n"
        );
        assert_eq!(
            set_assignment("A=1\n", "GRUB_DEFAULT", "saved"),
            "A=1\nGRUB_DEFAULT=\"saved\"\n"
        );
    }

    #[test]
    fn dropin_round_trips_through_the_evaluator() {
        let text = render_dropin(r#"a "b" $c `d` \e"#, "console=tty0", Some("saved"));
        let d = evaluate(&files(&[("d", &text)])).unwrap();
        assert_eq!(d.get("GRUB_CMDLINE_LINUX"), r#"a "b" $c `d` \e"#);
        assert_eq!(d.get("GRUB_CMDLINE_LINUX_DEFAULT"), "console=tty0");
        assert_eq!(d.grub_default(), "saved");
    }
}
