//! Text from outside (a node's hostname, an error it quotes, a step name
//! from a newer helper) made safe to print: every character that would act
//! on a terminal instead of showing is written as an escape. A leaf, for
//! builder and helper alike.

use std::borrow::Cow;

/// `text` with control and invisible formatting characters escaped:
/// C0 (ESC, CR, LF, NUL, BEL, ...), DEL and C1 (U+0080..U+009F, where
/// U+009B is CSI on some terminals), the bidi marks, embeddings, overrides
/// and isolates (U+061C, U+200E/F, U+202A..U+202E, U+2066..U+2069) that
/// reorder what is shown, zero-width and other format characters, and the
/// Unicode line and paragraph separators. Newline, CR, tab and NUL become
/// `\n`, `\r`, `\t`, `\0`; the rest `\u{XX}`. Everything else is kept, so
/// ordinary text (and any language's letters) prints as it was.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if acts_on_terminal(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` would do something on a terminal rather than show as itself.
pub fn acts_on_terminal(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// Unicode's format characters (category Cf) and the line and paragraph
/// separators (Zl, Zp): invisible, and some reorder the text around them.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_would_act_on_a_terminal_is_escaped_and_the_rest_kept() {
        assert!(matches!(escape("node-01 café 节点"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\x1b[2J\r\n\0\t\u{7f}\u{9b}\u{202e}\u{2066}\u{200f}\u{61c}\u{feff}z"),
            "a\\u{1b}[2J\\r\\n\\0\\t\\u{7f}\\u{9b}\\u{202e}\\u{2066}\\u{200f}\\u{61c}\\u{feff}z"
        );
        // Escaping is idempotent: printed text escaped again is unchanged.
        let once = escape("x\x07\u{2069}").into_owned();
        assert_eq!(escape(&once), once);
    }
}
