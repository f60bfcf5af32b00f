//! Diagnostics that point at a file, a YAML key path and a line:column,
//! printed rustc-style (after `coreos/butane: internal/report`).
//!
//! ```text
//! error[$.assets.bundle.sha256]: expected 64 hex digits, got 6 characters: "abc123"
//!   --> examples/release/cubeboot.lock:9:13
//!    |
//!  9 |     sha256: abc123
//!    |             ^
//! ```
//!
//! Colour is never used: the same text goes to a terminal, a CI log and journald.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// One problem in one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// JSONPath-like key path, `$` for the document root.
    pub key: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    pub message: String,
    /// The offending source line, for the caret display (boxed to keep
    /// `Result<_, Diagnostic>` small).
    pub source_line: Option<Box<str>>,
}

impl Diagnostic {
    pub fn error(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.to_path_buf(),
            key: key.into(),
            position: None,
            message: message.into(),
            source_line: None,
        }
    }

    pub fn warning(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, key, message)
        }
    }

    /// Attach a position and the source line it falls on.
    pub fn at(mut self, text: &str, position: Option<(usize, usize)>) -> Self {
        self.position = position;
        self.source_line = position
            .and_then(|(line, _)| text.lines().nth(line.saturating_sub(1)))
            .map(Box::from);
        self
    }

    /// `file:line:column`, or just the file when the position is unknown.
    pub fn location(&self) -> String {
        match self.position {
            Some((line, col)) => format!("{}:{line}:{col}", self.file.display()),
            None => self.file.display().to_string(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]: {}\n  --> {}",
            self.severity.label(),
            cut(&self.key, MAX_SHOWN),
            cut(&self.message, MAX_SHOWN),
            self.location()
        )?;
        if let (Some((line, col)), Some(src)) = (self.position, &self.source_line) {
            let num = line.to_string();
            let pad = " ".repeat(num.len());
            let (src, caret) = around(src, col.saturating_sub(1), SOURCE_WINDOW);
            write!(
                f,
                "\n{pad} |\n{num} | {src}\n{pad} | {}^",
                " ".repeat(caret)
            )?;
        }
        Ok(())
    }
}

/// Longest key or message shown: a hostile value (a 50 MB string) quoted in
/// an error would otherwise be printed whole, twice.
const MAX_SHOWN: usize = 400;

/// Characters of a long source line shown on each side of the caret.
const SOURCE_WINDOW: usize = 60;

/// `s`, or its start and end around a note of how much was cut.
pub fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut head = max / 2;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - max / 4;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}… ({} bytes cut) …{}",
        &s[..head],
        tail - head,
        &s[tail..]
    )
    .into()
}

/// A source line cut to `window` characters either side of the 0-based
/// character column `col`, and the caret's column in what is shown.
fn around(line: &str, col: usize, window: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= 2 * window + 1 {
        return (line.to_string(), col);
    }
    let start = col.saturating_sub(window);
    let end = (col + window + 1).min(chars.len());
    let mut shown: String = chars[start..end].iter().collect();
    let mut caret = col - start;
    if start > 0 {
        shown.insert(0, '…');
        caret += 1;
    }
    if end < chars.len() {
        shown.push('…');
    }
    (shown, caret)
}

impl std::error::Error for Diagnostic {}

/// Several diagnostics reported together (errors first, in input order).
#[derive(Debug, Clone, Default)]
pub struct Report(pub Vec<Diagnostic>);

impl Report {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn errors(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.0.len() - self.errors()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

/// Text for an error reaching `main`: diagnostics rustc-style, with any
/// context added around them on a first `error:` line; other errors as their
/// full context chain.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut contexts = Vec::new();
    for cause in err.chain() {
        let shown = cause
            .downcast_ref::<Diagnostic>()
            .map(ToString::to_string)
            .or_else(|| cause.downcast_ref::<Report>().map(ToString::to_string));
        if let Some(shown) = shown {
            if contexts.is_empty() {
                return shown;
            }
            return format!("error: {}\n{shown}", contexts.join(": "));
        }
        contexts.push(cause.to_string());
    }
    format!("error: {}", cut(&format!("{err:#}"), 4 * MAX_SHOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rustc_style_with_caret() {
        let text = "version: 1\nassets:\n  bundle:\n    sha256: abc123\n";
        let d = Diagnostic::error(
            Path::new("x.lock"),
            "$.assets.bundle.sha256",
            "expected 64 hex digits",
        )
        .at(text, Some((4, 13)));
        assert_eq!(
            d.to_string(),
            "error[$.assets.bundle.sha256]: expected 64 hex digits\n  --> x.lock:4:13\n  |\n4 |     sha256: abc123\n  |             ^"
        );
    }

    #[test]
    fn long_messages_and_lines_are_cut() {
        let long = "y".repeat(10_000);
        let text = format!("family: {long}\n");
        let d = Diagnostic::error(Path::new("p.yaml"), "$.family", format!("bad `{long}`"))
            .at(&text, Some((1, 5_000)));
        let shown = d.to_string();
        assert!(shown.len() < 1000, "{shown}");
        assert!(shown.contains("bytes cut"), "{shown}");
        // The caret still sits under the reported column.
        let lines: Vec<&str> = shown.lines().collect();
        let src = lines[3].split_once("| ").unwrap().1;
        let caret = lines[4].split_once("| ").unwrap().1;
        assert_eq!(src.chars().count(), 2 * SOURCE_WINDOW + 3);
        assert_eq!(caret.chars().count(), SOURCE_WINDOW + 2);
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("héllo wörld", 6), "hé… (9 bytes cut) …d");
    }

    #[test]
    fn renders_without_position() {
        let d = Diagnostic::warning(Path::new("p.yaml"), "$", "odd");
        assert_eq!(d.to_string(), "warning[$]: odd\n  --> p.yaml");
    }
}
