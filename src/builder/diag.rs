//! Diagnostics that point at a file, a YAML key path and a line:column,
//! printed rustc-style (STYLE.md §6, after Butane's `internal/report`).
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
            self.key,
            self.message,
            self.location()
        )?;
        if let (Some((line, col)), Some(src)) = (self.position, &self.source_line) {
            let num = line.to_string();
            let pad = " ".repeat(num.len());
            write!(
                f,
                "\n{pad} |\n{num} | {src}\n{pad} | {}^",
                " ".repeat(col.saturating_sub(1))
            )?;
        }
        Ok(())
    }
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
    format!("error: {err:#}")
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
    fn renders_without_position() {
        let d = Diagnostic::warning(Path::new("p.yaml"), "$", "odd");
        assert_eq!(d.to_string(), "warning[$]: odd\n  --> p.yaml");
    }
}
