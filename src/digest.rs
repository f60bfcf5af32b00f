//! SHA-256 digests as a parsed type, and the streaming hasher both binaries use.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Parsing checks length and alphabet, so a digest that
/// made it into a plan or lock is always well-formed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestParseError {
    #[error("expected 64 hex digits, got {len} characters: {shown:?}")]
    Length { len: usize, shown: String },
    #[error("expected 64 hex digits, found non-hex character {ch:?} in {shown:?}")]
    NotHex { ch: char, shown: String },
}

impl Sha256Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hash all of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown: String = s.chars().take(80).collect();
        if s.len() != 64 {
            return Err(DigestParseError::Length {
                len: s.chars().count(),
                shown,
            });
        }
        if let Some(ch) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(DigestParseError::NotHex { ch, shown });
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).expect("64 hex digits, checked above");
        Ok(Self(out))
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = DigestParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> Self {
        d.to_hex()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

/// A reader adapter that hashes and counts everything read through it, so a
/// file is hashed in the same pass that copies or inspects it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Finish hashing; returns the digest and byte count.
    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.hasher.finalize().into()), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Hash a whole stream with a large buffer; returns digest and length.
pub fn hash_reader<R: Read>(reader: R) -> io::Result<(Sha256Digest, u64)> {
    let mut hashing = HashingReader::new(reader);
    // 256 KiB keeps syscalls rare without growing the helper's peak RSS.
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if hashing.read(&mut buf)? == 0 {
            break;
        }
    }
    Ok(hashing.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d: Sha256Digest = hex.parse().unwrap();
        assert_eq!(d.to_hex(), hex);
        assert_eq!(d, Sha256Digest::of(b""));
    }

    #[test]
    fn rejects_bad_digests_with_exact_messages() {
        let cases = [
            (
                "abc123",
                "expected 64 hex digits, got 6 characters: \"abc123\"",
            ),
            (
                "g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "expected 64 hex digits, found non-hex character 'g' in \"g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"",
            ),
        ];
        for (input, msg) in cases {
            let err = input.parse::<Sha256Digest>().unwrap_err();
            assert_eq!(err.to_string(), msg, "input {input}");
        }
    }

    #[test]
    fn hashing_reader_matches_one_shot_hash() {
        let data = vec![7u8; 1_000_003];
        let (d, n) = hash_reader(&data[..]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Sha256Digest::of(&data));
    }
}
