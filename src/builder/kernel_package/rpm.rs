//! `.rpm` kernel packages: a 96-byte lead, the signature header (padded to
//! 8 bytes), the main header, then the compressed cpio payload, read as one
//! stream and checked against the package's own digests.

use std::io::{self, BufReader, Read};

use anyhow::{bail, Context, Result};

use super::{decompressor, to_end, Budget, Contents, Limits};
use crate::digest::{HashingReader, Sha256Digest};

const RPM_LEAD_MAGIC: [u8; 4] = [0xed, 0xab, 0xee, 0xdb];
const RPM_HEADER_MAGIC: [u8; 3] = [0x8e, 0xad, 0xe8];
const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_PAYLOADFORMAT: u32 = 1124;
const TAG_PAYLOADCOMPRESSOR: u32 = 1125;
/// Signature header: SHA-256 (hex) of the main header (rpm `RPMSIGTAG_SHA256`).
const SIGTAG_SHA256: u32 = 273;
/// Main header: digests (hex) of the compressed payload, and their algorithm
/// (rpm `RPMTAG_PAYLOADDIGEST`, `RPMTAG_PAYLOADDIGESTALGO`; 8 is SHA-256).
const TAG_PAYLOADDIGEST: u32 = 5092;
const TAG_PAYLOADDIGESTALGO: u32 = 5093;
const PGPHASHALGO_SHA256: u32 = 8;

/// The tags of one RPM header we care about.
#[derive(Debug, Default)]
struct RpmHeader {
    strings: Vec<(u32, String)>,
    ints: Vec<(u32, u32)>,
}

impl RpmHeader {
    fn string(&self, tag: u32) -> Option<&str> {
        self.strings
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, s)| s.as_str())
    }

    fn int(&self, tag: u32) -> Option<u32> {
        self.ints.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
    }
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    // Callers bound `at + 4 <= buf.len()`.
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Read one header structure (signature or main). Returns it, its size and
/// the SHA-256 of its bytes (magic included, as rpm computes SHA256HEADER).
fn read_rpm_header<R: Read>(r: &mut R, what: &str) -> Result<(RpmHeader, usize, Sha256Digest)> {
    let mut intro = [0u8; 16];
    r.read_exact(&mut intro)
        .with_context(|| format!("reading the rpm {what} header"))?;
    if intro[..3] != RPM_HEADER_MAGIC {
        bail!("not an rpm: bad {what} header magic");
    }
    let count = read_u32(&intro, 8) as usize;
    let data_len = read_u32(&intro, 12) as usize;
    // Real headers are far below these; refuse absurd sizes before allocating.
    if count > 1 << 20 || data_len > 256 << 20 {
        bail!("rpm {what} header is implausibly large ({count} tags, {data_len} bytes)");
    }
    let mut index = vec![0u8; count * 16];
    r.read_exact(&mut index)
        .with_context(|| format!("reading the rpm {what} header: the file is truncated"))?;
    let mut data = vec![0u8; data_len];
    r.read_exact(&mut data)
        .with_context(|| format!("reading the rpm {what} header: the file is truncated"))?;
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(intro);
        h.update(&index);
        h.update(&data);
        Sha256Digest::from_bytes(h.finalize().into())
    };
    let mut header = RpmHeader::default();
    for entry in index.chunks_exact(16) {
        let (tag, kind, offset, n) = (
            read_u32(entry, 0),
            read_u32(entry, 4),
            read_u32(entry, 8) as usize,
            read_u32(entry, 12),
        );
        match kind {
            // STRING, I18NSTRING (first entry), STRING_ARRAY (first entry).
            6 | 8 | 9 if offset < data.len() => {
                let end = data[offset..]
                    .iter()
                    .position(|b| *b == 0)
                    .map_or(data.len(), |p| offset + p);
                header.strings.push((
                    tag,
                    String::from_utf8_lossy(&data[offset..end]).into_owned(),
                ));
            }
            4 if n >= 1 && offset + 4 <= data.len() => {
                header.ints.push((tag, read_u32(&data, offset)))
            }
            _ => {}
        }
    }
    Ok((header, 16 + count * 16 + data_len, digest))
}

pub(super) fn read_rpm<R: Read>(reader: R, limits: &Limits, budget: &Budget) -> Result<Contents> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let mut lead = [0u8; 96];
    r.read_exact(&mut lead).context("reading the rpm lead")?;
    if lead[..4] != RPM_LEAD_MAGIC {
        bail!("not an rpm: bad lead magic");
    }
    // The signature header is padded to a multiple of 8 bytes.
    let (signature, sig_len, _) = read_rpm_header(&mut r, "signature")?;
    let pad = (8 - sig_len % 8) % 8;
    let mut skip = vec![0u8; pad];
    r.read_exact(&mut skip)
        .context("reading the rpm signature header: the file is truncated")?;
    let (header, _, header_sha256) = read_rpm_header(&mut r, "main")?;

    // The package's own digests, checked before anything is pinned: a bit
    // flipped anywhere in the main header or the payload changes one.
    let want_header = signature.string(SIGTAG_SHA256).context(
        "the rpm signature header carries no SHA-256 header digest (RPMSIGTAG_SHA256); refusing to pin an unverifiable package",
    )?;
    if !want_header.eq_ignore_ascii_case(&header_sha256.to_hex()) {
        bail!(
            "the rpm main header does not match its SHA-256 digest: the signature header says {want_header}, computed {header_sha256}; the package is corrupted"
        );
    }
    let want_payload = header.string(TAG_PAYLOADDIGEST).context(
        "the rpm header carries no payload digest (RPMTAG_PAYLOADDIGEST, rpm 4.14 and later); refusing to pin an unverifiable package",
    )?;
    let algo = header
        .int(TAG_PAYLOADDIGESTALGO)
        .unwrap_or(PGPHASHALGO_SHA256);
    if algo != PGPHASHALGO_SHA256 {
        bail!("the rpm payload digest uses hash algorithm {algo}; only SHA-256 (8) is checked");
    }
    let want_payload = want_payload.to_string();

    let mut contents = Contents {
        package: header.string(TAG_NAME).map(str::to_string),
        arch: header.string(TAG_ARCH).map(str::to_string),
        header_sha256: Some(header_sha256),
        ..Contents::default()
    };
    if let (Some(v), Some(rel)) = (header.string(TAG_VERSION), header.string(TAG_RELEASE)) {
        let epoch = header
            .int(TAG_EPOCH)
            .map(|e| format!("{e}:"))
            .unwrap_or_default();
        contents.version = Some(format!("{epoch}{v}-{rel}"));
    }
    let format = header.string(TAG_PAYLOADFORMAT).unwrap_or("cpio");
    if format != "cpio" {
        bail!("unsupported rpm payload format {format:?} (expected cpio)");
    }
    let compressor = header.string(TAG_PAYLOADCOMPRESSOR).unwrap_or("gzip");
    // The payload digest covers the compressed bytes to the end of the file.
    let mut raw = HashingReader::new(&mut r);
    let mut payload = decompressor(compressor, &mut raw, "the rpm payload", limits, budget)?;
    loop {
        let entry = cpio::NewcReader::new(&mut payload).context("reading the rpm cpio payload")?;
        if entry.entry().is_trailer() {
            break;
        }
        contents.note_path(entry.entry().name());
        entry.finish().context("reading the rpm cpio payload")?;
    }
    to_end(payload, "the rpm payload")?;
    // Leave nothing unread for the caller's hash: consume the rest.
    io::copy(&mut raw, &mut io::sink())?;
    let (payload_digest, _) = raw.finish();
    if !want_payload.eq_ignore_ascii_case(&payload_digest.to_hex()) {
        bail!(
            "the rpm payload does not match its SHA-256 digest: the header says {want_payload}, computed {payload_digest}; the package is corrupted or truncated"
        );
    }
    Ok(contents)
}
