//! The rows of docs/troubleshooting.md, built into the helper so that
//! `cube-firstboot status` points a failure at the row that explains it.

/// The document, as the repository has it.
const DOC: &str = include_str!("../../docs/troubleshooting.md");

/// One row: `| symptom | `message` | `test file` `test fn` | where | fix |`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    pub symptom: &'a str,
    /// A fragment of the message the helper prints for this failure.
    pub message: &'a str,
    /// The test that makes the helper print it.
    pub test_file: &'a str,
    pub test_fn: &'a str,
}

/// The table rows of `doc` (rows that do not have that shape are skipped;
/// tests/builder/troubleshooting.rs checks every row has it).
pub fn parse(doc: &str) -> Vec<Row<'_>> {
    doc.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| symptom"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let (message, test) = (ticked(cells.get(1)?), ticked(cells.get(2)?));
            match (message.as_slice(), test.as_slice()) {
                ([message], [test_file, test_fn]) => Some(Row {
                    symptom: cells[0].trim_start_matches("| "),
                    message,
                    test_file,
                    test_fn,
                }),
                _ => None,
            }
        })
        .collect()
}

/// The `code` spans of a table cell.
fn ticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The row whose message `error` contains, if any.
pub fn row_for(error: &str) -> Option<Row<'static>> {
    parse(DOC).into_iter().find(|r| error.contains(r.message))
}
