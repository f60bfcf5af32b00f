//! The `--json` document of `build`, `check` and `profiles` (docs/json.md):
//! one object on stdout, versioned, printed on success and on failure, so
//! scripts never parse the text on stderr.

use serde_json::{json, Map, Value};

use super::diag::{render_error, Diagnostic, Report, Severity};

/// Bumped when a key changes meaning or goes away (adding keys keeps it).
pub const VERSION: u32 = 1;

/// One diagnostic as docs/json.md describes it.
pub fn diagnostic(d: &Diagnostic) -> Value {
    json!({
        "severity": if d.severity == Severity::Error { "error" } else { "warning" },
        "file": d.file,
        "key": d.key,
        "line": d.position.map(|p| p.0),
        "column": d.position.map(|p| p.1),
        "message": d.message,
    })
}

/// The diagnostics an error carries: those of the first [`Report`] or
/// [`Diagnostic`] in its chain, else one error with no place.
pub fn error_diagnostics(err: &anyhow::Error) -> Vec<Value> {
    for cause in err.chain() {
        if let Some(r) = cause.downcast_ref::<Report>() {
            return r.0.iter().map(diagnostic).collect();
        }
        if let Some(d) = cause.downcast_ref::<Diagnostic>() {
            return vec![diagnostic(d)];
        }
    }
    vec![json!({
        "severity": "error",
        "file": null,
        "key": null,
        "line": null,
        "column": null,
        "message": format!("{err:#}"),
    })]
}

/// Print `verb`'s document: the common keys, then `fields`. With `outcome`
/// an error, `ok` is false and `error` its text; its diagnostics are listed
/// when the verb has none of its own (`check`'s error only sums up those it
/// lists). The outcome is handed back so the exit status is unchanged.
pub fn emit(
    verb: &str,
    fields: Map<String, Value>,
    mut diagnostics: Vec<Value>,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let error = outcome.as_ref().err().map(|e| {
        if diagnostics.is_empty() {
            diagnostics = error_diagnostics(e);
        }
        render_error(e)
    });
    let mut doc = Map::new();
    doc.insert("format".into(), "cubeboot-json".into());
    doc.insert("version".into(), VERSION.into());
    doc.insert("verb".into(), verb.into());
    doc.insert("ok".into(), outcome.is_ok().into());
    doc.insert("error".into(), error.into());
    doc.insert("diagnostics".into(), diagnostics.into());
    doc.extend(fields);
    // Printing JSON of owned values cannot fail to serialize.
    println!("{:#}", Value::Object(doc));
    outcome
}

/// A `json!({...})` object literal as the map it is.
pub fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
