//! The fleet table's columns at a given width. STEP and the state (the
//! start of STATUS) always show; the wide columns give way first: NODE
//! narrows, IP goes, PROGRESS shortens, ROLE goes, NODE narrows again,
//! ELAPSED goes. A failed node's hint is a line of its own under its row.

use crate::printable::escape;
use crate::status_schema::StepId;

/// One node's cells, before fitting (text from the node, not yet escaped).
pub(super) struct Row {
    pub name: String,
    pub ip: String,
    pub role: String,
    pub step: String,
    /// PROGRESS, longest first: bar with size, bar, share or steps alone.
    pub progress: [String; 3],
    pub elapsed: String,
    pub status: String,
    /// A failed node's hint, shown on the line below.
    pub hint: Option<String>,
}

/// The widest "failed", "running", "rebooting": the state always shows.
const STATE_WIDTH: usize = 9;
const ROLE_WIDTH: usize = 8;
const ELAPSED_WIDTH: usize = 7;
const PROGRESS_WIDTHS: [usize; 3] = [24, 17, 5];

/// Column widths; `None` for a column that gave way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Columns {
    name: usize,
    ip: Option<usize>,
    role: Option<usize>,
    step: usize,
    /// Which form of PROGRESS, and its width.
    progress: (usize, usize),
    elapsed: Option<usize>,
}

impl Columns {
    /// The widest layout of `rows` whose fixed columns leave STATUS room
    /// for the state within `width` characters.
    pub(super) fn fit(rows: &[&Row], width: usize) -> Self {
        let longest = |f: fn(&Row) -> &str| {
            rows.iter()
                .map(|r| escape(f(r)).chars().count())
                .max()
                .unwrap_or(0)
        };
        let name = longest(|r| &r.name).clamp(4, 32);
        let ip = longest(|r| &r.ip).clamp(2, 15);
        let step = StepId::ALL
            .iter()
            .map(|s| s.name().len())
            .max()
            .unwrap_or(14);
        let mut c = Self {
            name,
            ip: Some(ip),
            role: Some(ROLE_WIDTH),
            step,
            progress: (0, PROGRESS_WIDTHS[0]),
            elapsed: Some(ELAPSED_WIDTH),
        };
        // Each step gives up a little more, widest first.
        let steps: [fn(&mut Self); 8] = [
            |c| c.name = c.name.min(16),
            |c| c.ip = None,
            |c| c.progress = (1, PROGRESS_WIDTHS[1]),
            |c| c.name = c.name.min(12),
            |c| c.role = None,
            |c| c.progress = (2, PROGRESS_WIDTHS[2]),
            |c| c.name = c.name.min(8),
            |c| c.elapsed = None,
        ];
        for give_way in steps {
            if c.fixed() + STATE_WIDTH <= width {
                break;
            }
            give_way(&mut c);
        }
        c
    }

    /// Characters before STATUS, separators included.
    fn fixed(&self) -> usize {
        let cols = [
            Some(self.name),
            self.ip,
            self.role,
            Some(self.step),
            Some(self.progress.1),
            self.elapsed,
        ];
        cols.iter().flatten().map(|w| w + 1).sum::<usize>() + 1
    }

    pub(super) fn title(&self) -> String {
        self.line(
            "NODE", "IP", "ROLE", "STEP", "PROGRESS", "ELAPSED", "STATUS",
        )
    }

    /// A row's line, and its hint's line when it has one.
    pub(super) fn lines(&self, row: &Row) -> Vec<String> {
        let mut lines = vec![self.line(
            &row.name,
            &row.ip,
            &row.role,
            &row.step,
            &row.progress[self.progress.0],
            &row.elapsed,
            &row.status,
        )];
        if let Some(hint) = &row.hint {
            lines.push(format!("  hint: {}", escape(hint)));
        }
        lines
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &self,
        name: &str,
        ip: &str,
        role: &str,
        step: &str,
        progress: &str,
        elapsed: &str,
        status: &str,
    ) -> String {
        let mut out = cell(name, self.name);
        for (text, width) in [(ip, self.ip), (role, self.role)] {
            if let Some(w) = width {
                out.push(' ');
                out.push_str(&cell(text, w));
            }
        }
        out.push(' ');
        out.push_str(&cell(step, self.step));
        out.push(' ');
        out.push_str(&cell(progress, self.progress.1));
        if let Some(w) = self.elapsed {
            out.push_str(&format!(" {:>w$}", cell(elapsed, w).trim_end()));
        }
        out.push_str("  ");
        out.push_str(&escape(status));
        out
    }
}

/// `text` escaped, cut or padded to exactly `width` characters.
fn cell(text: &str, width: usize) -> String {
    let text = escape(text);
    let n = text.chars().count();
    if n > width {
        // Cut with a mark, so a cut name is not taken for another node's.
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('~');
        cut
    } else {
        format!("{text}{}", " ".repeat(width - n))
    }
}
