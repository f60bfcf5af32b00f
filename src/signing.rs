//! Webhook signatures, shared by the helper (signs) and `cubeboot watch`
//! (verifies). Described for receivers in docs/watch.md.
//!
//! The MAC is HMAC-SHA256 keyed with the fleet secret over
//! `"<timestamp>.<body>"`, sent as `X-Cubeboot-Signature: sha256=<hex>` with
//! the timestamp (Unix seconds) in `X-Cubeboot-Timestamp`. Covering the
//! timestamp means a captured post cannot be re-dated; a receiver refuses
//! timestamps more than [`MAX_SKEW_SECS`] away from its clock, and exact
//! repeats inside that window.

use hex::FromHex;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "X-Cubeboot-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Cubeboot-Timestamp";

/// How far a post's timestamp may be from the receiver's clock.
pub const MAX_SKEW_SECS: u64 = 300;

/// Shortest secret accepted from a file: 128 bits as hex.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a post was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unsigned: no {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")]
    Unsigned,
    #[error("malformed signature headers: {0}")]
    Malformed(String),
    #[error("forged: the signature does not match the body and the fleet secret")]
    Forged,
    #[error("stale: timestamp {timestamp} is {skew} s from this clock (limit {MAX_SKEW_SECS} s)")]
    Stale { timestamp: u64, skew: u64 },
    #[error("replayed: this exact signed post was already received")]
    Replayed,
}

/// The `X-Cubeboot-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("sha256={}", hex::encode(tag))
}

/// Check the headers of a post against its body: the signature must be ours
/// and the timestamp within [`MAX_SKEW_SECS`] of `now`. Replays inside the
/// window are the receiver's to catch (it keeps the signatures it saw).
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<u64, Rejection> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(Rejection::Unsigned);
    };
    let ts: u64 = timestamp.trim().parse().map_err(|_| {
        Rejection::Malformed(format!("timestamp {timestamp:?} is not Unix seconds"))
    })?;
    let hex_tag = signature
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| Rejection::Malformed("signature does not start with sha256=".into()))?;
    let tag = <[u8; 32]>::from_hex(hex_tag)
        .map_err(|_| Rejection::Malformed("signature is not 64 hex digits".into()))?;
    // Constant-time comparison (hmac's verify_slice) before anything else is
    // said about the post, so a forger learns nothing from timing.
    mac(secret, ts, body)
        .verify_slice(&tag)
        .map_err(|_| Rejection::Forged)?;
    let skew = now.abs_diff(ts);
    if skew > MAX_SKEW_SECS {
        return Err(Rejection::Stale {
            timestamp: ts,
            skew,
        });
    }
    Ok(ts)
}

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // Invariant: HMAC takes keys of any length (RFC 2104 §2), so hmac's
    // new_from_slice never returns InvalidLength for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Check a fleet secret read from a file: printable, no spaces, long enough.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret has {} characters; at least {MIN_SECRET_LEN} are needed",
            secret.len()
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the secret must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// A new fleet secret: 32 bytes from the OS, as 64 hex digits.
pub fn secret_from_entropy(bytes: &[u8; 32]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_post_verifies_and_any_change_is_forged() {
        let body = br#"{"state":"done"}"#;
        let sig = sign(SECRET, 1_000, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 71, "{sig}");
        assert_eq!(
            verify(SECRET, Some("1000"), Some(&sig), body, 1_010),
            Ok(1_000)
        );
        // Another body, another timestamp, another secret: all forged.
        assert_eq!(
            verify(
                SECRET,
                Some("1000"),
                Some(&sig),
                br#"{"state":"failed"}"#,
                1_010
            ),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(SECRET, Some("1001"), Some(&sig), body, 1_010),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(
                &SECRET.replace('0', "1"),
                Some("1000"),
                Some(&sig),
                body,
                1_010
            ),
            Err(Rejection::Forged)
        );
    }

    #[test]
    fn unsigned_malformed_and_stale_posts_are_named() {
        let body = b"{}";
        assert_eq!(
            verify(SECRET, None, None, body, 0),
            Err(Rejection::Unsigned)
        );
        assert_eq!(
            verify(SECRET, Some("5"), None, body, 0),
            Err(Rejection::Unsigned)
        );
        assert!(matches!(
            verify(SECRET, Some("x"), Some("sha256=00"), body, 0),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            verify(SECRET, Some("5"), Some("md5=00"), body, 0),
            Err(Rejection::Malformed(_))
        ));
        let sig = sign(SECRET, 1_000, body);
        assert_eq!(
            verify(
                SECRET,
                Some("1000"),
                Some(&sig),
                body,
                1_000 + MAX_SKEW_SECS + 1
            ),
            Err(Rejection::Stale {
                timestamp: 1_000,
                skew: MAX_SKEW_SECS + 1
            })
        );
        assert_eq!(
            verify(
                SECRET,
                Some("1000"),
                Some(&sig),
                body,
                1_000 + MAX_SKEW_SECS
            ),
            Ok(1_000)
        );
    }

    #[test]
    fn secrets_from_files_are_checked() {
        assert!(check_secret(SECRET).is_ok());
        assert!(check_secret("short").is_err());
        assert!(check_secret(&format!("{SECRET} x")).is_err());
        assert_eq!(secret_from_entropy(&[0xab; 32]).len(), 64);
    }
}
