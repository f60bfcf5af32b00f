//! Every YAML read and write of the builder goes through this module.
//!
//! serde_yaml is published as `0.9.34+deprecated`: keeping it
//! behind these few functions means a swap touches this file only. Errors
//! come back as [`Diagnostic`]s naming the file, the key path and the
//! line:column, so callers never see a serde_yaml type.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::diag::Diagnostic;

/// Largest document parsed: profiles and locks are a few KiB, user-data at
/// most a cloud's 256 KiB.
pub const MAX_BYTES: usize = 1 << 20;

/// Deepest nesting (flow brackets plus block indentation levels) parsed.
/// Profiles need a handful; serde_yaml's time grows with the square of the
/// depth (100,000 `[` took minutes), so the bound is checked before parsing.
pub const MAX_DEPTH: usize = 64;

/// Parse `text` (read from `file`) into `T`, strictly: the types decide what
/// is unknown or malformed; this adds where. Oversized or too deeply nested
/// documents are refused before the parser sees them.
pub fn from_str<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, Diagnostic> {
    check_bounds(text, file)?;
    serde_yaml::from_str::<UniqueKeys>(text).map_err(|e| duplicate_key(&e, text, file))?;
    serde_yaml::from_str(text).map_err(|e| to_diagnostic(&e, text, file))
}

/// A document walked only to refuse a mapping that names a key twice:
/// YAML readers keep the last silently (`version:` twice in a lock would
/// pin whichever came second).
struct UniqueKeys;

const DUPLICATE: &str = "duplicate key ";

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_none<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<UniqueKeys, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> Result<UniqueKeys, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, a: A) -> Result<UniqueKeys, A::Error> {
        use serde::de::VariantAccess;
        let (UniqueKeys, v) = a.variant::<UniqueKeys>()?;
        v.newtype_variant::<UniqueKeys>()
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<UniqueKeys, A::Error> {
        while a.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = a.next_key::<serde_yaml::Value>()? {
            let shown = match &key {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim_end()
                    .to_string(),
            };
            if !seen.insert(shown.clone()) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}`{shown}`")));
            }
            a.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// A duplicate key, named with both lines; any other error is the real
/// parse's to report.
fn duplicate_key(err: &serde_yaml::Error, text: &str, file: &Path) -> Diagnostic {
    let message = err.to_string();
    let Some(at) = message.find(DUPLICATE) else {
        return to_diagnostic(err, text, file);
    };
    let key = message[at + DUPLICATE.len()..]
        .split(" at line ")
        .next()
        .unwrap_or("")
        .trim_matches('`')
        .to_string();
    // serde_yaml places the error at the start of the mapping holding the
    // key twice: the pair is the first, from there, of two lines naming the
    // key at one indentation with nothing between that closes the mapping
    // (a line less indented, or a new `- ` item at that indentation).
    let from = err.location().map_or(0, |l| l.line().saturating_sub(1));
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut pair = None;
    for (i, l) in text.lines().enumerate().skip(from) {
        let body = l.trim_start_matches([' ', '-']);
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = l.len() - body.len();
        let item = l.trim_start().starts_with('-');
        open.retain(|&(_, d)| d < indent || (d == indent && !item));
        let names_key = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ]
        .iter()
        .any(|k| body.starts_with(k.as_str()));
        if !names_key {
            continue;
        }
        if let Some(&(first, _)) = open.iter().find(|&&(_, d)| d == indent) {
            pair = Some((first, i + 1, indent));
            break;
        }
        open.push((i + 1, indent));
    }
    let base = to_diagnostic(err, text, file);
    match pair {
        Some((first, second, indent)) => Diagnostic::error(
            file,
            base.key.clone(),
            format!(
                "duplicate key `{key}` at lines {first} and {second}: YAML would keep only the second; remove one"
            ),
        )
        .at(text, Some((second, indent + 1))),
        None => base,
    }
}

/// Read the YAML document at `path`, never more than [`MAX_BYTES`] + 1
/// bytes (a FIFO or a 200 MiB file alike): over the limit is a diagnostic
/// at the line where the limit is crossed.
pub fn read_document(path: &Path) -> anyhow::Result<Result<String, Diagnostic>> {
    use anyhow::Context as _;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let (bytes, over) = crate::bounded_read::read_up_to(file, MAX_BYTES as u64)
        .with_context(|| format!("reading {}", path.display()))?;
    if over {
        let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
        let seen = String::from_utf8_lossy(&bytes);
        return Ok(Err(Diagnostic::error(
            path,
            "$",
            format!(
                "YAML document is more than the {} MiB limit (not read past it)",
                MAX_BYTES >> 20
            ),
        )
        .at(&seen, Some((line, 1)))));
    }
    String::from_utf8(bytes)
        .map(Ok)
        .map_err(|_| anyhow::anyhow!("reading {}: not UTF-8 text", path.display()))
}

/// Refuse a document over [`MAX_BYTES`] (at the line crossing the limit) or
/// nested deeper than [`MAX_DEPTH`] (at the opening that crosses it).
pub fn check_bounds(text: &str, file: &Path) -> Result<(), Diagnostic> {
    check_bounds_within(text, file, MAX_BYTES)
}

fn check_bounds_within(text: &str, file: &Path, max_bytes: usize) -> Result<(), Diagnostic> {
    if text.len() > max_bytes {
        let line = text.as_bytes()[..=max_bytes]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        return Err(Diagnostic::error(
            file,
            "$",
            format!(
                "YAML document is {} bytes, more than the {} limit",
                text.len(),
                if max_bytes % (1 << 20) == 0 {
                    format!("{} MiB", max_bytes >> 20)
                } else {
                    format!("{max_bytes} bytes")
                }
            ),
        )
        .at(text, Some((line, 1))));
    }
    match deepest(text) {
        Some(position) => Err(Diagnostic::error(
            file,
            "$",
            format!("YAML nested deeper than {MAX_DEPTH} levels"),
        )
        .at(text, Some(position))),
        None => Ok(()),
    }
}

/// Where nesting first exceeds [`MAX_DEPTH`] (1-based line, column), if it
/// does. A conservative scanner, not a parser: block levels are counted by
/// indentation, flow levels by `[`/`{` outside quotes, comments and block
/// scalars (whose text, e.g. a shell script, is not YAML structure).
fn deepest(text: &str) -> Option<(usize, usize)> {
    let mut indents: Vec<usize> = Vec::new();
    // Inside a block scalar: its parent's indentation.
    let mut block_scalar: Option<usize> = None;
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = line.trim_start_matches(' ');
        if let Some(parent) = block_scalar {
            if rest.is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        if flow == 0 && quote.is_none() {
            if rest.is_empty() || rest.starts_with('#') {
                continue;
            }
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            if indents.len() > MAX_DEPTH {
                return Some((i + 1, indent + 1));
            }
        }
        let mut prev = ' ';
        for (col, c) in line.char_indices() {
            match quote {
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '#' if prev == ' ' || prev == '\t' => break,
                    '"' | '\'' if " \t[{,:-?".contains(prev) => quote = Some(c),
                    '[' | '{' => {
                        flow += 1;
                        if indents.len() + flow > MAX_DEPTH {
                            return Some((i + 1, col + 1));
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        // `key: |` or `- >-` opens a block scalar whose lines follow.
        let trimmed = line.split(" #").next().unwrap_or("").trim_end();
        let indicator =
            trimmed.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+');
        if flow == 0
            && quote.is_none()
            && (indicator.ends_with(": |")
                || indicator.ends_with(": >")
                || indicator.ends_with("- |")
                || indicator.ends_with("- >")
                || indicator == "|"
                || indicator == ">")
        {
            block_scalar = Some(indent);
        }
    }
    None
}

/// Parse any YAML document into a JSON value (for reading back what we render
/// and for peeking at a `version:` before choosing a schema).
pub fn to_json_value(text: &str, file: &Path) -> Result<serde_json::Value, Diagnostic> {
    from_str(text, file)
}

/// [`to_json_value`] for a document the builder wrote itself and knows to
/// be `extra` bytes over [`MAX_BYTES`] (a helper inlined into a NoCloud
/// seed's user-data); the depth bound still applies.
pub fn to_json_value_with_extra(
    text: &str,
    file: &Path,
    extra: usize,
) -> Result<serde_json::Value, Diagnostic> {
    check_bounds_within(text, file, MAX_BYTES + extra)?;
    serde_yaml::from_str(text).map_err(|e| to_diagnostic(&e, text, file))
}

/// Serialize `value` as a block-style YAML document.
pub fn to_string<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(value)?)
}

/// A YAML flow scalar for any string: a double-quoted JSON string, which YAML
/// reads back verbatim (JSON escapes are a subset of YAML's double-quoted ones).
pub fn quote(s: &str) -> String {
    // Serializing a &str to JSON cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// A literal block scalar (`|` or `|-`) holding `text`, its lines indented by
/// `indent` spaces. Refuses text a literal block cannot carry byte-for-byte.
pub fn literal_block(text: &str, indent: usize) -> Result<String, String> {
    if let Some(c) = text
        .chars()
        .find(|c| (c.is_control() && *c != '\n' && *c != '\t') || *c == '\u{feff}')
    {
        return Err(format!(
            "cannot put {c:?} into a YAML literal block; use an encoded field"
        ));
    }
    if text.starts_with([' ', '\n']) {
        // A leading space or blank line would need an explicit indentation
        // indicator; nothing we render needs that, so keep the rule simple.
        return Err("text starting with a space or blank line needs quoting".into());
    }
    if text.contains("\r") {
        return Err("carriage returns cannot survive a YAML literal block".into());
    }
    if text.ends_with("\n\n") {
        return Err("trailing blank lines would need `|+`".into());
    }
    let pad = " ".repeat(indent);
    let (indicator, body) = match text.strip_suffix('\n') {
        Some(body) => ("|", body),
        None => ("|-", text),
    };
    let mut out = String::from(indicator);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
    }
    Ok(out)
}

/// Turn a serde_yaml error into a diagnostic: serde_yaml prints
/// `path.to.key: message at line L column C`; split that apart.
fn to_diagnostic(err: &serde_yaml::Error, text: &str, file: &Path) -> Diagnostic {
    let position = err.location().map(|l| (l.line(), l.column()));
    let mut message = err.to_string();
    if let Some((line, col)) = position {
        // The position is shown separately; drop its copy from the text.
        message = message.replacen(&format!(" at line {line} column {col}"), "", 1);
    }
    let mut key = "$".to_string();
    if let Some((head, rest)) = message.split_once(": ") {
        // serde's own messages ("invalid type: …") contain spaces before the
        // first colon; key paths never do.
        if !head.contains(' ') && !head.is_empty() {
            key = if head.starts_with('[') {
                format!("${head}")
            } else {
                format!("$.{head}")
            };
            message = rest.to_string();
        }
    }
    // serde reports a value its type refused (a digest, a URL) at the
    // enclosing mapping; find the field holding the quoted value so the
    // diagnostic points at it.
    if let Some((field_key, field_pos)) = refine(text, &key, &message) {
        return Diagnostic::error(file, field_key, message).at(text, Some(field_pos));
    }
    Diagnostic::error(file, key, message).at(text, position)
}

/// The child of `key` whose scalar value is the last `"quoted"` string in
/// `message`, with the position of that value.
fn refine(text: &str, key: &str, message: &str) -> Option<(String, (usize, usize))> {
    let end = message.rfind('"')?;
    let start = message[..end].rfind('"')?;
    let needle = &message[start + 1..end];
    if needle.is_empty() {
        return None;
    }
    let (first, parent_indent) = if key == "$" {
        (0, None)
    } else {
        let (line, col) = locate(text, key)?;
        (line, Some(col - 1))
    };
    for (idx, raw) in text.lines().enumerate().skip(first) {
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if parent_indent.is_some_and(|p| indent <= p) {
            break;
        }
        let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some((k, v)) = body.split_once(": ") else {
            continue;
        };
        let value = v.trim().trim_matches(|c| c == '"' || c == '\'');
        if value == needle {
            let col = raw.len() - v.trim_start().len() + 1;
            return Some((format!("{}.{k}", key), (idx + 1, col)));
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Segment> {
    let mut segs = Vec::new();
    let rest = path.strip_prefix('$').unwrap_or(path);
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut key = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    key.push(n);
                    chars.next();
                }
                segs.push(Segment::Key(key));
            }
            '[' => {
                let mut num = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    num.push(n);
                }
                segs.push(Segment::Index(num.parse().unwrap_or(0)));
            }
            _ => {}
        }
    }
    segs
}

/// Best-effort 1-based line:column of a key path such as
/// `$.assets.bundle.urls[1]` in a block-style YAML document (what `lock`
/// writes and what profiles use). Returns the deepest ancestor found when the
/// exact node is not (flow collections, odd layouts).
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    // (indent, content) per line; comment and blank lines are skipped.
    let mut lines: Vec<Option<(usize, String)>> = text
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                None
            } else {
                Some((l.len() - trimmed.len(), trimmed.to_string()))
            }
        })
        .collect();
    let mut found = None;
    let (mut start, mut end, mut parent_indent) = (0usize, lines.len(), -1isize);
    for seg in parse_path(path) {
        let child_indent = lines[start..end]
            .iter()
            .flatten()
            .map(|(i, _)| *i)
            .find(|i| *i as isize > parent_indent)?;
        let mut hit = None;
        let mut seen = 0usize;
        for (idx, line) in lines.iter().enumerate().take(end).skip(start) {
            let Some((indent, content)) = line else {
                continue;
            };
            if *indent != child_indent {
                continue;
            }
            let matched = match &seg {
                Segment::Key(k) => {
                    content.starts_with(&format!("{k}:"))
                        || content.starts_with(&format!("\"{k}\":"))
                }
                Segment::Index(n) => {
                    if content == "-" || content.starts_with("- ") {
                        seen += 1;
                        seen == n + 1
                    } else {
                        false
                    }
                }
            };
            if matched {
                hit = Some(idx);
                break;
            }
        }
        let idx = hit?;
        found = Some((idx + 1, child_indent + 1));
        // The node's block runs until the next line at or above its indent.
        let block_end = (idx + 1..end)
            .find(|j| matches!(&lines[*j], Some((i, _)) if *i <= child_indent))
            .unwrap_or(end);
        if let Segment::Index(_) = seg {
            // Treat the item's first line as a mapping line two columns in.
            if let Some((i, c)) = &mut lines[idx] {
                *i += 2;
                *c = c.get(2..).unwrap_or("").to_string();
            }
            start = idx;
        } else {
            start = idx + 1;
        }
        end = block_end;
        parent_indent = child_indent as isize;
    }
    found
}

/// Position of the key path, or of its deepest located ancestor.
pub fn locate_or_parent(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut p = path.to_string();
    loop {
        if let Some(pos) = locate(text, &p) {
            return Some(pos);
        }
        let cut = p.rfind(['.', '['])?;
        p.truncate(cut);
        if p.is_empty() || p == "$" {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_bounded_before_parsing() {
        let deep = |n: usize| format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert_eq!(deepest(&deep(63)), None);
        assert_eq!(deepest(&deep(64)), Some((1, 67)));
        // Brackets in quotes, comments and block scalars are not structure.
        let s = "a: \"[[[[\"\n# [[[[\nb: |\n  [[[[[ \"\n  x\nc: '[{'\n";
        let many = s.replace("[[[[", &"[".repeat(100));
        assert_eq!(deepest(&many), None);
        let v: serde_json::Value = from_str(&many, Path::new("x")).unwrap();
        assert_eq!(v["c"], "[{");
        // Block nesting counts too.
        let mut block = String::new();
        for i in 0..70 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert_eq!(deepest(&block), Some((65, 65)));
        let err = from_str::<serde_json::Value>(&block, Path::new("x.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("error[$]: YAML nested deeper than 64 levels\n  --> x.yaml:65:65"),
            "{err}"
        );
    }

    const DOC: &str = "# c\nversion: 1\nassets:\n  bundle:\n    name: b\n    urls:\n      - https://a\n      - https://b\n  helper:\n    sha256: x\nlist:\n  - name: one\n    v: 1\n  - name: two\n    v: 2\n";

    #[test]
    fn locates_nested_keys_and_items() {
        assert_eq!(locate(DOC, "$.version"), Some((2, 1)));
        assert_eq!(locate(DOC, "$.assets.bundle.name"), Some((5, 5)));
        assert_eq!(locate(DOC, "$.assets.bundle.urls[1]"), Some((8, 7)));
        assert_eq!(locate(DOC, "$.assets.helper.sha256"), Some((10, 5)));
        assert_eq!(locate(DOC, "$.list[1].v"), Some((15, 5)));
        assert_eq!(locate(DOC, "$.list[1].name"), Some((14, 5)));
        assert_eq!(locate(DOC, "$.assets.nope"), None);
        assert_eq!(locate_or_parent(DOC, "$.assets.nope"), Some((3, 1)));
    }

    #[test]
    fn literal_block_round_trips() {
        for text in ["{\n  \"a\": \"b: c\"\n}\n", "no newline", "x\n\n  y\n"] {
            let block = literal_block(text, 4).unwrap();
            let doc = format!("k: {block}\n");
            let v: serde_json::Value = serde_yaml::from_str(&doc).unwrap();
            assert_eq!(v["k"], text, "{doc}");
        }
        assert!(literal_block(" lead", 2).is_err());
        assert!(literal_block("a\u{7}", 2).is_err());
    }

    #[test]
    fn quote_round_trips_awkward_strings() {
        for s in [
            "0600", "yes", "a: b", "- x", "#c", "'\"\\", "ünï", "null", "@x",
        ] {
            let doc = format!("k: {}\n", quote(s));
            let v: serde_json::Value = serde_yaml::from_str(&doc).unwrap();
            assert_eq!(v["k"], s);
        }
    }

    #[test]
    fn errors_carry_key_path_and_position() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)] // fields exist to be parsed
        struct Inner {
            url: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)] // fields exist to be parsed
        struct Outer {
            assets: std::collections::BTreeMap<String, Inner>,
        }
        let text = "assets:\n  kernel:\n    url: x\n    sha265: y\n";
        let d = from_str::<Outer>(text, Path::new("f.yaml")).unwrap_err();
        assert_eq!(d.key, "$.assets.kernel");
        assert_eq!(d.message, "unknown field `sha265`, expected `url`");
        assert_eq!(d.location(), "f.yaml:4:5");
    }
}
