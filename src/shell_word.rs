//! One string as one POSIX shell word: left bare when it holds only
//! characters no shell treats specially, else single-quoted with each `'`
//! spelled `'\''`. Used for commands the helper logs and runs through
//! `sh -c`, and for the values the builder writes into upgrade.sh.

pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
