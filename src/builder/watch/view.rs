//! What `cubeboot watch` shows: one JSON line per event (no terminal, or
//! `--json`), or a table redrawn in place on a terminal. The receiver and
//! the fleet's state are the parent module's; this only renders them.

use std::io::{self, Write as _};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::layout::{Columns, Row};
use super::{Expect, Fleet, Node, Receiver, REDRAW_EVERY};
use crate::plan::Role;
use crate::printable::escape;
use crate::status_schema::{DownloadProgress, Failure, Progress, Status, StepId};

/// One JSON line per event (docs/watch.md). Field names are a stable
/// interface: add, never rename.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event<'a> {
    Node {
        node: &'a str,
        ip: &'a str,
        role: &'a str,
        profile: &'a str,
        state: String,
        step: &'a str,
        progress: &'a Progress,
        download: Option<&'a DownloadProgress>,
        phase: &'a str,
        elapsed_secs: u64,
        last_error: Option<&'a str>,
        hint: Option<&'a str>,
        message: &'a str,
        updated_at: u64,
        /// The node's whole status, as its helper posted it (the fields
        /// above are kept for the scripts that read them).
        status: &'a Status,
    },
    Rejected {
        peer: &'a str,
        reason: &'a str,
    },
    Finished {
        outcome: &'a str,
        exit_code: u8,
        done: usize,
        failed: usize,
        other: usize,
        rejected: usize,
        message: &'a str,
    },
}

fn json_line(event: &Event) -> Result<()> {
    let mut out = io::stdout().lock();
    let mut json = serde_json::Serializer::with_formatter(&mut out, PrintableAscii);
    event.serialize(&mut json)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Compact JSON in printable ASCII: every other character of a string
/// (a node's ESC, U+202E, ...) as a `\uXXXX` escape, so the lines are safe
/// on a terminal and still carry the exact text.
struct PrintableAscii;

impl serde_json::ser::Formatter for PrintableAscii {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(at) = rest.find(|c: char| !c.is_ascii() || c.is_ascii_control()) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

fn node_event(n: &Node) -> Event<'_> {
    Event::Node {
        node: &n.name,
        ip: &n.ip,
        role: n.post.role.map_or("", Role::as_str),
        profile: &n.post.profile,
        state: n.post.state.to_string(),
        step: n.post.step.map_or("", StepId::name),
        progress: &n.post.progress,
        download: n.post.download.as_ref(),
        phase: &n.post.phase,
        elapsed_secs: n.last_seen.duration_since(n.first_seen).as_secs(),
        last_error: n.post.last_error.as_deref(),
        hint: n.post.is_failed().then(|| n.post.first_hint()).flatten(),
        message: &n.post.message,
        updated_at: n.post.updated_at,
        status: &n.post,
    }
}

pub(super) enum View {
    Json,
    Table(Table),
}

impl View {
    pub(super) fn node(&mut self, node: &Node) -> Result<()> {
        match self {
            Self::Json => json_line(&node_event(node)),
            Self::Table(t) => {
                t.dirty = true;
                Ok(())
            }
        }
    }

    pub(super) fn rejected(&mut self, peer: &str, reason: &str) -> Result<()> {
        match self {
            Self::Json => json_line(&Event::Rejected { peer, reason }),
            Self::Table(t) => {
                t.last_rejection = escape(&format!("{peer}: {reason}")).into_owned();
                t.dirty = true;
                Ok(())
            }
        }
    }

    pub(super) fn tick(&mut self, fleet: &Fleet, receiver: &Receiver, force: bool) -> Result<()> {
        match self {
            Self::Json => Ok(()),
            Self::Table(t) => t.draw(fleet, receiver, force),
        }
    }

    pub(super) fn finish(
        &mut self,
        fleet: &Fleet,
        receiver: &Receiver,
        outcome: &str,
        code: u8,
        message: &str,
    ) -> Result<()> {
        let (done, failed, other) = fleet.counts();
        match self {
            Self::Json => json_line(&Event::Finished {
                outcome,
                exit_code: code,
                done,
                failed,
                other,
                rejected: receiver.rejected,
                message,
            }),
            Self::Table(t) => t.draw(fleet, receiver, true),
        }
    }
}

/// The terminal view: a header, then one line per node, redrawn in place.
pub(super) struct Table {
    listen: String,
    started: Instant,
    drawn_lines: usize,
    last_draw: Option<Instant>,
    dirty: bool,
    last_rejection: String,
    /// The terminal's size at the last draw.
    size: (u16, u16),
}

impl Table {
    pub(super) fn new(listen: String) -> Self {
        Self {
            listen,
            started: Instant::now(),
            drawn_lines: 0,
            last_draw: None,
            dirty: true,
            last_rejection: String::new(),
            size: (0, 0),
        }
    }

    fn draw(&mut self, fleet: &Fleet, receiver: &Receiver, force: bool) -> Result<()> {
        let now = Instant::now();
        // The clock column ticks once a second even without posts.
        let stale = self
            .last_draw
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        let due = self
            .last_draw
            .is_none_or(|t| now.duration_since(t) >= REDRAW_EVERY);
        if !(force || stale || (self.dirty && due)) {
            return Ok(());
        }
        let (rows, cols) = console::Term::stdout().size();
        let lines = table_lines(
            fleet,
            receiver,
            &self.listen,
            &self.last_rejection,
            now.duration_since(self.started),
            usize::from(rows),
            usize::from(cols),
            now,
        );
        let mut frame = String::new();
        if self.drawn_lines > 0 && (rows, cols) != self.size {
            // The terminal reflowed the last frame to its new width, so
            // climbing back its line count would land inside it and leave
            // rows above the header: start again from the top instead.
            frame.push_str("\x1b[H\x1b[2J");
        } else if self.drawn_lines > 0 {
            frame.push_str(&format!("\x1b[{}A", self.drawn_lines));
        }
        self.size = (rows, cols);
        for line in &lines {
            frame.push_str("\r\x1b[2K");
            frame.push_str(line);
            frame.push('\n');
        }
        // Clear what a longer previous frame left below.
        frame.push_str("\x1b[J");
        let mut out = io::stdout().lock();
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        self.drawn_lines = lines.len();
        self.last_draw = Some(now);
        self.dirty = false;
        Ok(())
    }
}

/// The lines of the terminal view, each cut to `cols - 1` characters so no
/// line wraps, and no more than `rows - 1` of them so the cursor can always
/// climb back to the first (a taller frame would scroll and garble).
#[allow(clippy::too_many_arguments)]
pub(super) fn table_lines(
    fleet: &Fleet,
    receiver: &Receiver,
    listen: &str,
    last_rejection: &str,
    running_for: Duration,
    rows_on_screen: usize,
    cols: usize,
    now: Instant,
) -> Vec<String> {
    let width = cols.saturating_sub(1).max(20);
    let (done, failed, other) = fleet.counts();
    let waiting_names: Vec<&String> = match &fleet.expect {
        Expect::Names(names) => names.iter().filter(|n| fleet.find(n).is_none()).collect(),
        _ => Vec::new(),
    };
    let expected = match &fleet.expect {
        Expect::Count(n) => format!(" of {n} expected"),
        Expect::Names(names) => format!(" of {} expected", names.len()),
        Expect::Nothing => String::new(),
    };
    let mut header = vec![format!(
        "cubeboot watch {listen} {}: {done} done, {failed} failed, {other} in progress{expected}",
        clock(running_for)
    )];
    if receiver.rejected > 0 {
        header.push(format!(
            "rejected {} posts; last from {last_rejection}",
            receiver.rejected
        ));
    }
    let mut rows: Vec<(u8, Row)> = fleet
        .nodes
        .values()
        .map(|n| {
            let rank = if n.post.is_failed() {
                0
            } else if n.post.is_done() {
                2
            } else {
                1
            };
            (rank, node_row(n, now))
        })
        .collect();
    rows.extend(waiting_names.iter().map(|name| {
        let row = Row {
            name: name.to_string(),
            ip: "-".into(),
            role: "-".into(),
            step: "-".into(),
            progress: Default::default(),
            elapsed: String::new(),
            status: "waiting for a first post".into(),
            hint: None,
        };
        (1, row)
    }));
    let columns = Columns::fit(&rows.iter().map(|(_, r)| r).collect::<Vec<_>>(), width);
    header.push(columns.title());
    let room = rows_on_screen.saturating_sub(1 + header.len()).max(1);
    let count: usize = rows
        .iter()
        .map(|(_, r)| 1 + usize::from(r.hint.is_some()))
        .sum();
    let mut body: Vec<String> = Vec::new();
    if count > room {
        // Failed first, then those still working; the done ones are counted.
        rows.sort_by_key(|(rank, _)| *rank);
        let mut shown = 0;
        for (_, row) in &rows {
            let lines = columns.lines(row);
            if body.len() + lines.len() > room - 1 {
                break;
            }
            body.extend(lines);
            shown += 1;
        }
        let hidden = rows.len() - shown;
        body.push(format!("… {hidden} more not shown (enlarge the window)"));
    } else {
        body = rows.iter().flat_map(|(_, r)| columns.lines(r)).collect();
    }
    header
        .into_iter()
        .chain(body)
        .map(|l| cut(&l, width))
        .collect()
}

/// A node's cells: the text as the node sent it (escaped when laid out).
fn node_row(n: &Node, now: Instant) -> Row {
    let p = &n.post;
    let steps = format!("{}/{}", p.progress.done, p.progress.total);
    let progress = match &p.download {
        Some(d) if d.total > 0 && !p.is_done() => {
            let share = (d.bytes.min(d.total) as f64 / d.total as f64).clamp(0.0, 1.0);
            let filled = (share * 10.0).round() as usize;
            let bar = format!(
                "[{}{}] {:>3}%",
                "#".repeat(filled),
                "-".repeat(10 - filled),
                (share * 100.0).floor() as u64,
            );
            let percent = format!("{:>3}%", (share * 100.0).floor() as u64);
            [format!("{bar} {}", mib(d.total)), bar, percent]
        }
        _ => [format!("{steps} steps"), format!("{steps} steps"), steps],
    };
    // The phase of a long install (the kernel package, the Cube installer)
    // goes in the last column, whose width is free.
    let status = if !p.phase.is_empty() && !p.is_done() && !p.is_failed() {
        format!("{}: {}", p.state, p.phase)
    } else {
        p.state.to_string()
    };
    // A node still working shows the time it has taken so far.
    let until = if p.is_done() || p.is_failed() {
        n.last_seen
    } else {
        now
    };
    // The failing step shows even when the status file named none.
    let step = p.step.or(match p.state.failure() {
        Some(Failure::Step(s) | Failure::Interrupted(s)) => Some(*s),
        _ => None,
    });
    Row {
        name: n.name.clone(),
        ip: n.ip.clone(),
        role: p.role.map_or("", Role::as_str).to_string(),
        step: step.map_or("", StepId::name).to_string(),
        progress,
        elapsed: clock(until.duration_since(n.first_seen)),
        status,
        hint: p
            .is_failed()
            .then(|| p.first_hint().map(str::to_string))
            .flatten(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}M", bytes as f64 / (1024.0 * 1024.0))
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// At most `width` characters, with no control characters (a hostname or
/// error text must not move the cursor).
fn cut(line: &str, width: usize) -> String {
    escape(line).chars().take(width).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_schema::RunState;

    fn node(step: &str, phase: &str, download: Option<DownloadProgress>) -> Node {
        let now = Instant::now();
        Node {
            name: "node-01".into(),
            ip: "10.0.1.21".into(),
            post: Status {
                hostname: "node-01".into(),
                role: Some(Role::Compute),
                state: RunState::Running,
                step: StepId::from_name(step),
                phase: phase.into(),
                download,
                progress: Progress { done: 4, total: 15 },
                ..Status::default()
            },
            first_seen: now,
            last_seen: now,
        }
    }

    #[test]
    fn every_long_install_shows_its_phase_and_the_columns_stay_in_line() {
        let bundle = DownloadProgress {
            asset: "bundle".into(),
            bytes: 150 << 20,
            total: 300 << 20,
        };
        let lines: Vec<String> = [
            node(
                "kernel-install",
                "installing the kernel package",
                Some(bundle),
            ),
            node(
                "cube-install",
                "running the Cube installer (--mode=compute)",
                None,
            ),
            node("kernel-verify", "", None),
        ]
        .iter()
        .map(|n| node_row(n, n.first_seen))
        .collect::<Vec<Row>>()
        .iter()
        .map(|r| {
            let columns = Columns::fit(&[r], 200);
            columns.lines(r).remove(0)
        })
        .collect();
        assert!(
            lines[0].ends_with("running: installing the kernel package"),
            "{}",
            lines[0]
        );
        // The bundle's download beside the kernel stage shows as a bar.
        assert!(lines[0].contains("[#####-----]  50% 300M"), "{}", lines[0]);
        assert!(lines[1].ends_with("running: running the Cube installer (--mode=compute)"));
        assert!(lines[2].ends_with("  running"), "{}", lines[2]);
        // Every column after STEP starts where the header's does.
        let at = |line: &str, what: &str| line.find(what).unwrap();
        let elapsed = at(&lines[2], "0m00s");
        for line in &lines {
            assert_eq!(at(line, "0m00s"), elapsed, "{lines:#?}");
        }
    }

    #[test]
    fn state_and_step_show_at_80_100_and_160_columns() {
        let t = Instant::now();
        let mut fleet = Fleet::new(Expect::Count(3), true);
        let mut failed = node("cube-install", "", None).post;
        failed.hostname = "compute-node-with-a-long-name-07".into();
        failed.state = "failed: cube-install".parse().unwrap();
        failed.hints = vec!["see /var/log/cube-install.log for the installer's own words".into()];
        fleet.update("203.0.113.250", failed, t);
        let mut running = node("kernel-install", "installing the kernel package", None).post;
        running.hostname = "node-02".into();
        running.download = Some(DownloadProgress {
            asset: "bundle".into(),
            bytes: 1,
            total: 2 << 30,
        });
        fleet.update("10.0.1.22", running, t);
        let receiver = Receiver::new("x".repeat(32));
        for cols in [80, 100, 160] {
            let lines = table_lines(
                &fleet,
                &receiver,
                "127.0.0.1:1",
                "",
                Duration::ZERO,
                40,
                cols,
                t,
            );
            let text = lines.join("\n");
            for l in &lines {
                assert!(l.chars().count() < cols, "{cols}: {l:?}");
            }
            let row = |start: &str| {
                lines
                    .iter()
                    .position(|l| l.starts_with(start))
                    .unwrap_or_else(|| panic!("{cols}: no {start}\n{text}"))
            };
            let f = row("compute-node");
            assert!(lines[f].contains(" cube-install "), "{cols}: {text}");
            assert!(lines[f].contains("  failed"), "{cols}: {text}");
            assert!(
                lines[f + 1].starts_with("  hint: see /var/log/cube-install.log"),
                "{cols}: {text}"
            );
            let r = row("node-02");
            assert!(lines[r].contains(" kernel-install "), "{cols}: {text}");
            assert!(lines[r].contains("  running"), "{cols}: {text}");
            if cols >= 160 {
                // Wide enough for every column, whole.
                assert!(
                    lines[f].starts_with("compute-node-with-a-long-name-07 203.0.113.250"),
                    "{text}"
                );
                assert!(
                    text.contains("running: installing the kernel package"),
                    "{text}"
                );
                assert!(text.contains("the installer's own words"), "{text}");
            }
        }
    }
}
